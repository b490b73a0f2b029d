/** Starts Postino services in this process against the given real NATS and Redis, on free ports. */
import { loadConfig, type Config } from '../../services/core/config.ts';
import { runServices, type Running } from '../../services/core/runtime.ts';
import { SERVICES } from '../../services/services.ts';
import { freePort } from './servers.ts';

export interface Ports {
  smtp: number;
  submission: number;
  imap: number;
  pop3: number;
}

export async function testConfig(env: Record<string, string>): Promise<{ config: Config; ports: Ports }> {
  const ports: Ports = {
    smtp: await freePort(),
    submission: await freePort(),
    imap: await freePort(),
    pop3: await freePort(),
  };
  const config = loadConfig({
    POSTINO_HOSTNAME: 'mx.example.test',
    BIND_HOST: '127.0.0.1',
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: '0',
    SMTP_PORT: String(ports.smtp),
    SUBMISSION_PORT: String(ports.submission),
    IMAP_PORT: String(ports.imap),
    POP3_PORT: String(ports.pop3),
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'silent',
    SHUTDOWN_GRACE: '5s',
    ...env,
  });
  return { config, ports };
}

/** Runs the named services (default: all) in one runtime; `stop` drains them. */
export async function startServices(config: Config, names = Object.keys(SERVICES)): Promise<Running> {
  return runServices(config, names, SERVICES);
}
