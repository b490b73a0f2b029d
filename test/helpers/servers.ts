/**
 * Real peers for tests: throwaway nats-server (JetStream), redis-server and dnsmasq instances on
 * free loopback ports, each killed when the suite ends. Nothing here is a mock.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/** Ports handed out by this process: the kernel may offer a just-closed port again. */
const handedOut = new Set<string>();

export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, host, () => {
        const addr = s.address();
        const p = typeof addr === 'object' && addr ? addr.port : 0;
        s.close(() => resolve(p));
      });
    });
    if (!handedOut.has(`${host}:${port}`)) {
      handedOut.add(`${host}:${port}`);
      return port;
    }
  }
}

export async function waitForPort(host: string, port: number, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((done) => {
      const s = connect({ host, port });
      s.once('connect', () => {
        s.destroy();
        done(true);
      });
      s.once('error', () => done(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs}ms`);
}

/** Polls until the condition holds (never a fixed sleep). */
export async function until<T>(
  what: string,
  fn: () => Promise<T | undefined | null | false>,
  timeoutMs = 20_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

function which(name: string, dirs = ['/usr/sbin', '/usr/bin', '/usr/local/bin', '/usr/local/sbin']): string {
  for (const d of [...(process.env.PATH ?? '').split(':'), ...dirs]) {
    if (d && existsSync(join(d, name))) return join(d, name);
  }
  throw new Error(`${name} is not installed (see .ci/run for the Debian packages the tests need)`);
}

export interface Proc {
  port: number;
  url: string;
  child: ChildProcess;
  /** Kills the process (SIGKILL unless told otherwise) and waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and data. */
  restart(): Promise<void>;
  cleanup(): Promise<void>;
}

async function managed(
  name: string,
  host: string,
  port: number,
  url: string,
  start: () => ChildProcess,
  dir?: string,
): Promise<Proc> {
  let child = start();
  await waitForPort(host, port);
  const kill = (signal: NodeJS.Signals = 'SIGKILL') =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill(signal);
    });
  const proc: Proc = {
    port,
    url,
    get child() {
      return child;
    },
    kill,
    async restart() {
      await kill();
      child = start();
      await waitForPort(host, port);
    },
    async cleanup() {
      await kill();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
  void name;
  return proc;
}

export async function startNats(): Promise<Proc> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'postino-nats-'));
  const bin = which('nats-server');
  return managed(
    'nats',
    '127.0.0.1',
    port,
    `nats://127.0.0.1:${port}`,
    () => spawn(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' }),
    dir,
  );
}

export async function startRedis(): Promise<Proc> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'postino-redis-'));
  const bin = which('redis-server');
  return managed(
    'redis',
    '127.0.0.1',
    port,
    `redis://127.0.0.1:${port}`,
    () =>
      spawn(
        bin,
        ['--bind', '127.0.0.1', '--port', String(port), '--dir', dir, '--save', '', '--appendonly', 'yes'],
        { stdio: 'ignore' },
      ),
    dir,
  );
}

/** A Redis Cluster of three masters (no replicas) on free loopback ports. */
export interface RedisCluster {
  /** The seed nodes, comma-separated: connectRedis() takes it as a cluster URL. */
  url: string;
  ports: number[];
  cleanup(): Promise<void>;
}

/**
 * Three redis-server processes with --cluster-enabled, joined with `redis-cli --cluster create`
 * and polled until every node reports cluster_state:ok. Keys spread over the three masters, so a
 * command or script whose keys are in different hash slots fails with CROSSSLOT, as in production.
 */
export async function startRedisCluster(): Promise<RedisCluster> {
  const run = promisify(execFile);
  const server = which('redis-server');
  const cli = which('redis-cli');
  const dir = mkdtempSync(join(tmpdir(), 'postino-rcluster-'));
  const ports = [await freePort(), await freePort(), await freePort()];
  const children: ChildProcess[] = ports.map((port) =>
    spawn(
      server,
      [
        '--bind',
        '127.0.0.1',
        '--port',
        String(port),
        '--dir',
        dir,
        '--save',
        '',
        '--appendonly',
        'no',
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        `nodes-${port}.conf`,
        '--cluster-node-timeout',
        '5000',
      ],
      { stdio: 'ignore' },
    ),
  );
  const cleanup = async () => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGKILL');
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await Promise.all(ports.map((p) => waitForPort('127.0.0.1', p)));
    await run(cli, [
      '--cluster',
      'create',
      ...ports.map((p) => `127.0.0.1:${p}`),
      '--cluster-replicas',
      '0',
      '--cluster-yes',
    ]);
    for (const p of ports) {
      await until(`cluster node ${p} ok`, async () => {
        const { stdout } = await run(cli, ['-p', String(p), 'cluster', 'info']);
        return stdout.includes('cluster_state:ok');
      });
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { url: ports.map((p) => `redis://127.0.0.1:${p}`).join(','), ports, cleanup };
}

/** The Redis deployments a suite of Redis-backed code runs against, each in its own describe(). */
export const REDIS_BACKENDS = ['single redis-server', 'three-master Redis Cluster'] as const;
export type RedisBackend = (typeof REDIS_BACKENDS)[number];

/** A fresh Redis of the kind `backend` names: its URL (connectRedis() takes both) and how to stop it. */
export function startRedisBackend(backend: RedisBackend): Promise<{ url: string; cleanup(): Promise<void> }> {
  return backend === 'single redis-server' ? startRedis() : startRedisCluster();
}

/**
 * dnsmasq as an authoritative-looking DNS server for test zones. `records` are dnsmasq options
 * such as `--mx-host=remote.test,mx.remote.test,10` and `--host-record=mx.remote.test,127.0.0.2`.
 * Names not given answer NXDOMAIN (no upstream, no /etc/hosts).
 */
export async function startDns(records: string[]): Promise<Proc> {
  const port = await freePort();
  const bin = which('dnsmasq');
  const proc = await managed('dnsmasq', '127.0.0.1', port, `127.0.0.1:${port}`, () =>
    spawn(
      bin,
      [
        '--keep-in-foreground',
        '--no-resolv',
        '--no-hosts',
        '--no-poll',
        '--bind-interfaces',
        '--listen-address=127.0.0.1',
        `--port=${port}`,
        '--user=root',
        '--pid-file=',
        '--local=/test/',
        ...records,
      ],
      { stdio: 'ignore' },
    ),
  );
  return proc;
}
