/** Starts Postino services against real NATS and Redis on free ports: in this process, or as `postino run` child processes. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type Config } from '../../services/core/config.ts';
import { runServices, type Running } from '../../services/core/runtime.ts';
import { SERVICES } from '../../services/services.ts';
import { freePort, until } from './servers.ts';

export const ROOT = join(import.meta.dirname, '..', '..');
export const POSTINO = join(ROOT, 'bin', 'postino.ts');

export interface Ports {
  smtp: number;
  submission: number;
  imap: number;
  pop3: number;
  /** POP3 with implicit TLS (POP3S_PORT). */
  pop3s: number;
  /** SMTP submission with implicit TLS (SMTPS_PORT). */
  smtps: number;
  /** IMAP with implicit TLS (IMAPS_PORT). */
  imaps: number;
}

export async function testConfig(
  env: Record<string, string>,
): Promise<{ config: Config; ports: Ports; env: Record<string, string> }> {
  const ports: Ports = {
    smtp: await freePort(),
    submission: await freePort(),
    imap: await freePort(),
    pop3: await freePort(),
    pop3s: await freePort(),
    smtps: await freePort(),
    imaps: await freePort(),
  };
  const full: Record<string, string> = {
    POSTINO_HOSTNAME: 'mx.example.test',
    BIND_HOST: '127.0.0.1',
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: '0',
    SMTP_PORT: String(ports.smtp),
    SUBMISSION_PORT: String(ports.submission),
    IMAP_PORT: String(ports.imap),
    POP3_PORT: String(ports.pop3),
    POP3S_PORT: String(ports.pop3s),
    SMTPS_PORT: String(ports.smtps),
    IMAPS_PORT: String(ports.imaps),
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'silent',
    SHUTDOWN_GRACE: '5s',
    POSTINO_DATA_DIR: mkdtempSync(join(tmpdir(), 'postino-data-')),
    ...env,
  };
  return { config: loadConfig(full), ports, env: full };
}

/** Runs the named services (default: all) in one runtime; `stop` drains them. */
export async function startServices(config: Config, names = Object.keys(SERVICES)): Promise<Running> {
  return runServices(config, names, SERVICES);
}

export interface ServiceProcess {
  child: ChildProcess;
  httpPort: number;
  /** Sends the signal and resolves with the exit code (null if killed by a signal). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * `postino run <names>` as a separate process, ready when its /readyz answers 200. The wait is long
 * (a loaded CI machine starts a process slowly), and the child is killed if it never gets ready, so
 * that no process outlives the suite.
 */
export async function spawnServices(
  env: Record<string, string>,
  names: string[],
  readyWithinMs = 60_000,
): Promise<ServiceProcess> {
  const httpPort = await freePort();
  const child = spawn(process.execPath, [POSTINO, 'run', ...names], {
    env: { ...process.env, ...env, HTTP_PORT: String(httpPort) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  try {
    await until(
      `postino run ${names.join(' ')} to be ready`,
      async () => {
        if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}: ${stderr}`);
        const res = await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => null);
        return res?.status === 200;
      },
      readyWithinMs,
    );
  } catch (error) {
    await stop('SIGKILL');
    throw error;
  }
  return { child, httpPort, stop };
}
