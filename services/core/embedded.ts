/**
 * The embedded default (`postino up`): use the nats-server and redis-server at NATS_URL and
 * REDIS_URL when they answer; otherwise start them from the binaries on the PATH, with their data
 * under POSTINO_DATA_DIR, and stop them when Postino stops.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { redactUrl } from './config.ts';

export function reachable(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((done) => {
    const s = connect({ host, port });
    const t = setTimeout(() => {
      s.destroy();
      done(false);
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(t);
      s.end();
      done(true);
    });
    s.once('error', () => {
      clearTimeout(t);
      done(false);
    });
  });
}

function findBinary(name: string): string | null {
  const dirs = [
    ...(process.env.PATH ?? '').split(':'),
    '/usr/sbin',
    '/usr/local/sbin',
    '/usr/bin',
    '/usr/local/bin',
  ];
  for (const d of dirs) {
    const p = join(d, name);
    if (d && existsSync(p)) return p;
  }
  return null;
}

async function waitFor(host: string, port: number, child: ChildProcess, name: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`${name} exited with code ${child.exitCode} at start`);
    if (await reachable(host, port)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} did not open ${host}:${port} within 10s`);
}

export interface Embedded {
  stop(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

export async function ensureBackends(
  natsUrl: string,
  redisUrl: string,
  dataDir: string,
  logger: Logger,
): Promise<Embedded> {
  const children: ChildProcess[] = [];
  const nats = new URL(natsUrl.split(',')[0]?.trim() ?? '');
  const natsHost = nats.hostname.replace(/^\[|\]$/g, '');
  const natsPort = Number(nats.port || 4222);
  if (!(await reachable(natsHost, natsPort))) {
    if (!LOOPBACK.has(nats.hostname)) throw new Error(`NATS at ${redactUrl(natsUrl)} does not answer`);
    const bin = findBinary('nats-server');
    if (!bin)
      throw new Error(
        'nats-server not found: install it (Debian: apt-get install nats-server) or set NATS_URL',
      );
    const dir = resolve(dataDir, 'nats');
    mkdirSync(dir, { recursive: true });
    const child = spawn(bin, ['-a', natsHost, '-p', String(natsPort), '-js', '-sd', dir], {
      stdio: 'ignore',
    });
    children.push(child);
    await waitFor(natsHost, natsPort, child, 'nats-server');
    logger.info({ pid: child.pid, port: natsPort, dir }, 'started embedded nats-server');
  }
  const redis = new URL(redisUrl);
  const redisHost = redis.hostname.replace(/^\[|\]$/g, '');
  const redisPort = Number(redis.port || 6379);
  if (!(await reachable(redisHost, redisPort))) {
    if (!LOOPBACK.has(redis.hostname)) throw new Error(`Redis at ${redactUrl(redisUrl)} does not answer`);
    const bin = findBinary('redis-server');
    if (!bin)
      throw new Error(
        'redis-server not found: install it (Debian: apt-get install redis-server) or set REDIS_URL',
      );
    const dir = resolve(dataDir, 'redis');
    mkdirSync(dir, { recursive: true });
    const child = spawn(
      bin,
      [
        '--bind',
        redisHost,
        '--port',
        String(redisPort),
        '--dir',
        dir,
        '--appendonly',
        'yes',
        '--save',
        '',
        '--daemonize',
        'no',
      ],
      { stdio: 'ignore' },
    );
    children.push(child);
    await waitFor(redisHost, redisPort, child, 'redis-server');
    logger.info({ pid: child.pid, port: redisPort, dir }, 'started embedded redis-server');
  }
  return {
    async stop() {
      await Promise.all(
        children.map(
          (c) =>
            new Promise<void>((done) => {
              if (c.exitCode !== null) return done();
              c.once('exit', () => done());
              c.kill('SIGTERM');
            }),
        ),
      );
    },
  };
}
