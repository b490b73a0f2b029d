/**
 * Process wiring: parse the configuration once, build the clients, start the requested services,
 * and drain them on SIGTERM/SIGINT within the grace period (invariant 6).
 */
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Redis } from 'ioredis';
import type { Config } from './config.ts';
import { createLogger } from './log.ts';
import { startTelemetry, stopTelemetry } from './telemetry.ts';
import { connectNats, provision, retryJetStream, type Nats } from './nats.ts';
import { connectRedis } from './redis.ts';
import { BlobRecords, BlobStore } from './blobs.ts';
import { Directory } from './directory.ts';
import { Health, startHttp, type HttpServer, type MetricSources } from './http.ts';
import { TlsProvider } from './tls.ts';
import { registerDependencyMetric, registerQueueMetrics } from './queue-metrics.ts';
import { setEventNode } from './events.ts';

/** Everything a service is given at start. */
export interface Runtime {
  config: Config;
  logger: Logger;
  nats: Nats;
  redis: Redis;
  blobs: BlobStore;
  directory: Directory;
  health: Health;
  http: HttpServer;
  /** Certificate and key of every TLS port, reloaded when the files change. */
  tls: TlsProvider;
  /** Name of this instance (lease owner, logs). */
  node: string;
}

export interface Service {
  /** Stop accepting, finish or hand back what is in flight. */
  stop(): Promise<void>;
}

export type ServiceStart = (rt: Runtime) => Promise<Service>;

export interface Running {
  runtime: Runtime;
  stop(): Promise<void>;
}

/** How this runtime shares its process with others (services/core/threads.ts). */
export interface RuntimeOptions {
  /** Set on a worker thread of `postino up`: no HTTP port and no process-wide metrics of its own. */
  thread?: string;
  /** On the main thread of a threaded `postino up`: the other threads' metrics, summed on /metrics. */
  gatherMetrics?: MetricSources;
  /** On the main thread of a threaded `postino up`: adds the other threads' readiness to /readyz. */
  addReadiness?: (health: Health) => void;
}

/** A worker thread's stand-in for the HTTP port the main thread holds: routes are for the main thread. */
function noHttp(thread: string): HttpServer {
  return {
    server: null as unknown as HttpServer['server'],
    port: 0,
    addRoute: () => {
      throw new Error(`thread ${thread} has no HTTP port: HTTP routes belong on the main thread`);
    },
    close: async () => undefined,
  };
}

export async function startRuntime(
  config: Config,
  names: string[],
  opts: RuntimeOptions = {},
): Promise<Runtime> {
  const node = config.nodeName || `${hostname()}-${process.pid}`;
  startTelemetry(names.length === 1 ? `postino-${names[0]}` : 'postino');
  const logger = createLogger(config.logLevel, {
    node,
    services: names.join(','),
    ...(opts.thread ? { thread: opts.thread } : {}),
  });
  const nats = await connectNats(config.natsUrl, `postino-${names.join('+')}-${node}`, logger, {
    user: config.natsUser,
    password: config.natsPassword,
    credsFile: config.natsCredsFile,
    nkeySeedFile: config.natsNkeySeedFile,
    tlsCaFile: config.natsTlsCaFile,
    tlsCertFile: config.natsTlsCertFile,
    tlsKeyFile: config.natsTlsKeyFile,
  });
  await provision(nats, config.natsReplicas);
  const redis = await connectRedis(config.redisUrl, logger, {
    tlsCaFile: config.redisTlsCaFile,
    tlsCertFile: config.redisTlsCertFile,
    tlsKeyFile: config.redisTlsKeyFile,
  });
  const blobs = await retryJetStream(() =>
    BlobStore.open(nats, config.natsReplicas, new BlobRecords(redis, config.redisPrefix)),
  );
  setEventNode(node);
  const health = new Health();
  health.add('nats', () => (nats.nc.isClosed() ? 'closed' : nats.nc.isDraining() ? 'draining' : null));
  health.add('redis', () => (redis.status === 'ready' ? null : redis.status));
  if (!opts.thread) {
    registerQueueMetrics(nats);
    registerDependencyMetric(health);
    opts.addReadiness?.(health);
  }
  const http = opts.thread
    ? noHttp(opts.thread)
    : await startHttp(config.httpHost, config.httpPort, health, opts.gatherMetrics);
  const tls = await TlsProvider.load(
    {
      certFile: config.tlsCertFile,
      keyFile: config.tlsKeyFile,
      hostname: config.hostname,
      dataDir: config.dataDir,
    },
    logger,
  );
  const directory = new Directory(redis, config.redisPrefix, { loginCacheTtlMs: config.authCacheTtl });
  // Routing answers stay in memory until an admin write announces a change (core/directory.ts).
  await directory.followChanges(redis.duplicate());
  return {
    tls,
    config,
    logger,
    nats,
    redis,
    blobs,
    directory,
    health,
    http,
    node,
  };
}

export async function runServices(
  config: Config,
  names: string[],
  table: Record<string, ServiceStart>,
  opts: RuntimeOptions = {},
): Promise<Running> {
  const rt = await startRuntime(config, names, opts);
  const started: { name: string; svc: Service }[] = [];
  // Not ready (readiness probe) until every service of this process has started.
  let starting = true;
  rt.health.add('startup', () => (starting ? 'starting services' : null));
  try {
    for (const name of names) {
      const start = table[name];
      if (!start) throw new Error(`unknown service ${name}`);
      started.push({ name, svc: await start(rt) });
      rt.logger.info({ service: name }, 'service started');
    }
  } catch (err) {
    await stopAll(rt, started);
    throw err;
  }
  starting = false;
  return { runtime: rt, stop: () => stopAll(rt, started) };
}

async function stopAll(rt: Runtime, started: { name: string; svc: Service }[]): Promise<void> {
  rt.health.drain();
  for (const { name, svc } of [...started].reverse()) {
    await svc.stop().catch((err: unknown) => rt.logger.error({ err, service: name }, 'stop failed'));
  }
  await rt.http.close();
  rt.tls.close();
  await rt.nats.nc.drain().catch(() => rt.nats.nc.close());
  rt.directory.close();
  rt.redis.disconnect();
  await stopTelemetry();
}

/**
 * Stops on SIGTERM/SIGINT; exits non-zero if draining overruns the grace period. Installed before
 * start-up finishes, so a signal that arrives while services are starting still drains them.
 */
export function stopOnSignals(
  running: Promise<Running>,
  graceMs: number,
  onStopped?: () => Promise<void>,
): void {
  let stopping = false;
  const handler = (signal: string) => {
    if (stopping) return;
    stopping = true;
    const timer = setTimeout(() => {
      process.stderr.write(
        'postino: grace period over; exiting with work in flight (JetStream will redeliver it)\n',
      );
      process.exit(1);
    }, graceMs);
    timer.unref();
    void running
      .then(
        (r) => {
          r.runtime.logger.info({ signal, graceMs }, 'stopping');
          return r.stop();
        },
        () => undefined,
      )
      .then(() => onStopped?.())
      .then(() => process.exit(0));
  };
  process.on('SIGTERM', () => handler('SIGTERM'));
  process.on('SIGINT', () => handler('SIGINT'));
}
