import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import { Cluster, Redis, type Command } from 'ioredis';
import type { Logger } from 'pino';
import { SpanKind, SpanStatusCode, childSpansOff, context, trace, tracer } from './telemetry.ts';

export type { Redis };

/**
 * REDIS_URL names one server, or several (comma-separated) for a Redis Cluster: then they are the
 * seed nodes, and `?cluster=true` on a single URL asks for cluster mode with one seed. Every key of
 * a user (and of a blob) carries a hash tag, so each script touches one slot.
 */
export function isClusterUrl(url: string): boolean {
  const parts = url.split(',').filter((p) => p.trim());
  return parts.length > 1 || /[?&]cluster=(1|true|yes)\b/i.test(url);
}

/**
 * Connects to Redis (RESP2, reconnecting forever with a capped backoff). A Redis Cluster client is
 * returned under the same type: it has the same command and script API (multi-key commands must
 * stay within one hash slot).
 */
/**
 * TLS of a `rediss://` REDIS_URL (credentials ride in the URL: `rediss://user:password@host`, an
 * ACL user, or `redis://:password@host` for requirepass).
 */
export interface RedisSecurity {
  /** PEM CA bundle the server certificate must chain to (default: the system roots). */
  tlsCaFile?: string;
  /** Client certificate and key, for servers with `tls-auth-clients yes`. */
  tlsCertFile?: string;
  tlsKeyFile?: string;
}

/** The TLS options of a rediss:// URL (undefined for redis://). */
function redisTls(url: string, security: RedisSecurity): TlsConnectionOptions | undefined {
  if (!/^rediss:/i.test(url.trim())) return undefined;
  return {
    ...(security.tlsCaFile ? { ca: readFileSync(security.tlsCaFile) } : {}),
    ...(security.tlsCertFile ? { cert: readFileSync(security.tlsCertFile) } : {}),
    ...(security.tlsKeyFile ? { key: readFileSync(security.tlsKeyFile) } : {}),
  };
}

export async function connectRedis(
  url: string,
  logger: Logger,
  security: RedisSecurity = {},
): Promise<Redis> {
  const retryStrategy = (times: number) => Math.min(times * 200, 2000);
  let redis: Redis;
  if (isClusterUrl(url)) {
    const nodes = url
      .split(',')
      .map((p) => p.trim())
      .filter(Boolean)
      .map((p) => {
        const u = new URL(p);
        return { host: u.hostname, port: Number(u.port || 6379) };
      });
    const first = new URL(url.split(',')[0]?.trim() ?? '');
    const cluster = new Cluster(nodes, {
      lazyConnect: true,
      enableAutoPipelining: true,
      enableOfflineQueue: true,
      clusterRetryStrategy: retryStrategy,
      redisOptions: {
        protocol: 2,
        maxRetriesPerRequest: 3,
        username: decodeURIComponent(first.username) || undefined,
        password: decodeURIComponent(first.password) || undefined,
        tls: redisTls(first.href, security),
      },
    });
    redis = cluster as unknown as Redis;
  } else {
    redis = new Redis(url, {
      protocol: 2,
      lazyConnect: true,
      // Commands issued in the same tick go out in one write (one system call, not one each).
      enableAutoPipelining: true,
      maxRetriesPerRequest: 3,
      enableOfflineQueue: true,
      retryStrategy,
      tls: redisTls(url, security),
    });
  }
  traceCommands(redis, url.split(',')[0]?.trim() ?? '');
  let lastError = '';
  redis.on('error', (err: Error) => {
    // ioredis repeats the same error on every reconnect attempt: log each distinct one once.
    if (err.message !== lastError) logger.warn({ err }, 'redis error');
    lastError = err.message;
  });
  redis.on('ready', () => {
    lastError = '';
  });
  await redis.connect();
  return redis;
}

/**
 * Client spans for the Redis commands sent while a span is active (a command, a message being
 * processed); background work with no trace (lease renewals, polling) makes none. Attributes follow
 * the OpenTelemetry database conventions: db.system.name, db.operation.name, the script name of an
 * EVALSHA as db.stored_procedure.name, and server.address/port. No keys and no values are recorded
 * (they hold addresses, passwords and message data), so there is no db.query.text.
 */
function traceCommands(client: Redis, url: string): void {
  const scripts = new Map<string, string>();
  const define = client.defineCommand.bind(client);
  // Scripts are named by their SHA1 in EVALSHA (and by their source in the EVAL fallback).
  client.defineCommand = (name, definition) => {
    scripts.set(createHash('sha1').update(definition.lua).digest('hex'), name);
    scripts.set(definition.lua, name);
    define(name, definition);
  };
  // The first server named (only host and port: the URL's credentials never reach a span).
  const server = URL.canParse(url) ? new URL(url) : null;
  const address = server?.hostname ?? '';
  const port = Number(server?.port || 6379);
  const send = client.sendCommand;
  client.sendCommand = function (this: Redis, command: Command, ...rest: unknown[]): unknown {
    if (childSpansOff() || !trace.getSpan(context.active()))
      return Reflect.apply(send, this, [command, ...rest]);
    const operation = command.name.toUpperCase();
    const first = command.args[0];
    const script =
      (operation === 'EVALSHA' || operation === 'EVAL') && typeof first === 'string'
        ? scripts.get(first)
        : undefined;
    const span = tracer().startSpan(script ? `${operation} ${script}` : operation, {
      kind: SpanKind.CLIENT,
      attributes: {
        'db.system.name': 'redis',
        'db.operation.name': operation,
        ...(script ? { 'db.stored_procedure.name': script } : {}),
        'server.address': address,
        'server.port': port,
      },
    });
    const result: unknown = Reflect.apply(send, this, [command, ...rest]);
    command.promise.then(
      () => span.end(),
      (err: unknown) => {
        span.recordException(err as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        span.end();
      },
    );
    return result;
  };
}
