/**
 * Postino for the comparative benchmark: `postino up` (every service in one process, the embedded
 * default) as a child process, which starts its own nats-server (JetStream file store) and
 * redis-server (AOF) with their data in a temporary folder, on free loopback ports. Users are
 * loaded through the admin API's bulk import (POST /api/import).
 *
 * Durability (Postino defaults, unchanged): SMTP answers 250 once the body is in the blob store (a
 * JetStream object store, file storage) and the envelope is acknowledged by JetStream (file
 * storage). nats-server acknowledges a write once it is in its file store, which it fsyncs every
 * 2 minutes by default (sync_interval), not per message; one node here, no replicas. Redis
 * (mailbox state) runs with appendonly yes, appendfsync everysec.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, scrypt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hashPassword } from '../../services/core/passwords.ts';
import { POSTINO } from '../../test/helpers/postino.ts';
import { freePort, until } from '../../test/helpers/servers.ts';

export interface PostinoInstance {
  smtpPort: number;
  submissionPort: number;
  imapPort: number;
  pop3Port: number;
  httpPort: number;
  redisUrl: string;
  pid: number;
  /** Imports NDJSON lines through the admin API; throws on any error line. */
  importLines(lines: string[]): Promise<void>;
  /** SIGTERM, then resolves with the exit code once the process (and its backends) are gone. */
  stop(): Promise<number | null>;
}

/** A cheap scrypt hash (N = 2^10) in the form the directory stores: for the memory load's many logins. */
export function cheapHash(password: string): Promise<string> {
  const salt = randomBytes(16);
  return new Promise((resolve, reject) =>
    scrypt(password, salt, 32, { N: 1024, r: 8, p: 1 }, (err, key) =>
      err
        ? reject(err)
        : resolve(`$scrypt$ln=10,r=8,p=1$${salt.toString('base64')}$${key.toString('base64')}`),
    ),
  );
}

export { hashPassword };

export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

export async function startPostino(
  dataDir: string,
  extraEnv: Record<string, string> = {},
): Promise<PostinoInstance> {
  const ports = {
    smtp: await freePort(),
    submission: await freePort(),
    smtps: await freePort(),
    imap: await freePort(),
    imaps: await freePort(),
    pop3: await freePort(),
    pop3s: await freePort(),
    http: await freePort(),
    nats: await freePort(),
    redis: await freePort(),
  };
  const env: Record<string, string> = {
    POSTINO_HOSTNAME: 'mx.bench.test',
    BIND_HOST: '127.0.0.1',
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: String(ports.http),
    SMTP_PORT: String(ports.smtp),
    SUBMISSION_PORT: String(ports.submission),
    SMTPS_PORT: String(ports.smtps),
    IMAP_PORT: String(ports.imap),
    IMAPS_PORT: String(ports.imaps),
    POP3_PORT: String(ports.pop3),
    POP3S_PORT: String(ports.pop3s),
    NATS_URL: `nats://127.0.0.1:${ports.nats}`,
    REDIS_URL: `redis://127.0.0.1:${ports.redis}`,
    POSTINO_DATA_DIR: dataDir,
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
    // The loads come from one address and no DNS is reachable: what Postfix is set up for too.
    MAIL_AUTH_CHECKS: 'false',
    SMTP_CONNECTION_RATE: '1000000',
    SMTP_MESSAGE_RATE: '1000000',
    SMTP_RECIPIENT_RATE: '1000000',
    SMTP_MAX_CONNECTIONS: '20000',
    SMTP_MAX_CONNECTIONS_PER_IP: '20000',
    IMAP_MAX_CONNECTIONS_PER_IP: '20000',
    POP3_MAX_CONNECTIONS_PER_IP: '1000',
    ...extraEnv,
  };
  // POSTINO_NODE_ARGS: Node flags for `postino up` when profiling a bench run (--trace-gc,
  // --perf-basic-prof...); its standard output (where V8 traces go) is then passed through.
  const child: ChildProcess = spawn(
    process.execPath,
    [...(process.env.POSTINO_NODE_ARGS?.split(' ').filter(Boolean) ?? []), POSTINO, 'up'],
    {
      env: { ...process.env, ...env },
      stdio: ['ignore', process.env.POSTINO_NODE_ARGS ? 'inherit' : 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-20_000);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await until(
    'postino up to be ready',
    async () => {
      if (child.exitCode !== null) throw new Error(`postino up exited: ${stderr}`);
      const res = await fetch(`http://127.0.0.1:${ports.http}/readyz`).catch(() => null);
      return res?.status === 200;
    },
    120_000,
  ).catch(async (err: unknown) => {
    // Not left running (with its nats-server and redis-server) when it never became ready.
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
    throw err;
  });
  return {
    smtpPort: ports.smtp,
    submissionPort: ports.submission,
    imapPort: ports.imap,
    pop3Port: ports.pop3,
    httpPort: ports.http,
    redisUrl: env.REDIS_URL ?? '',
    pid: child.pid ?? 0,
    async importLines(lines) {
      const res = await fetch(`http://127.0.0.1:${ports.http}/api/import`, {
        method: 'POST',
        body: `${lines.join('\n')}\n`,
      });
      const body = (await res.json()) as { errorCount?: number; errors?: unknown[]; error?: string };
      if (!res.ok || body.errorCount) throw new Error(`import: ${JSON.stringify(body).slice(0, 500)}`);
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
