/**
 * pop3: the POP3 service — the protocol core (server.ts) wired to the mailboxes (over RPC, or
 * direct: MAILBOX_ACCESS), the directory, maildrop leases in Redis and the TLS certificate (STLS
 * on POP3_PORT, implicit TLS on POP3S_PORT).
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { proxyProtocolFor } from '../core/net.ts';
import { mailboxAccess } from '../mailbox-store/access.ts';
import { RedisMaildropLock } from '../core/lock.ts';
import { SpanKind } from '@opentelemetry/api';
import { counter, gauge } from '../core/metrics.ts';
import { ProtocolTelemetry, withSpan } from '../core/telemetry.ts';
import { COMMANDS } from './commands/index.ts';
import { createPop3Server } from './server.ts';
import { throttledAuthenticator } from '../core/auth-throttle.ts';
import { Rates } from '../smtp-ingress/rates.ts';
import { LIMITS as SMTP_LIMITS } from '../smtp-ingress/limits.ts';

const open = gauge('postino_pop3_sessions_open', 'Open POP3 sessions');
const commands = counter('postino_pop3_commands_total', 'POP3 commands handled', ['command']);
const authFailures = counter('postino_auth_failures_total', 'Failed authentications', ['protocol']);
/** postino_pop3_command_seconds{command}; `unknown` and `overlong` lines are counted as `other`. */
const telemetry = new ProtocolTelemetry('POP3', Object.keys(COMMANDS));

export async function start(rt: Runtime): Promise<Service> {
  const log = rt.logger.child({ service: 'pop3' });
  const server = createPop3Server({
    mailbox: mailboxAccess(rt, log),
    // AUTH failures share SMTP's counters per IP and per account (SMTP_AUTH_FAILURES).
    auth: throttledAuthenticator(rt.directory, new Rates(rt.redis, rt.config.redisPrefix), {
      limit: rt.config.smtpAuthFailures,
      windowMs: SMTP_LIMITS.authFailureWindowMs,
    }),
    lock: new RedisMaildropLock(rt.redis, rt.config.redisPrefix, log, rt.config.pop3LockLease),
    logger: log,
    hostname: rt.config.hostname,
    allowPlaintextAuth: rt.config.allowPlaintextAuth,
    retrSetsSeen: rt.config.retrSetsSeen,
    idleTimeoutMs: rt.config.pop3IdleTimeout,
    limits: { maxConnectionsPerIp: rt.config.pop3MaxConnectionsPerIp },
    // The provider emits 'change' when the certificate files are rotated; both ports follow it.
    tls: rt.tls,
    // PROXY protocol from the balancers in PROXY_PROTOCOL_TRUSTED (services/core/net.ts).
    proxyProtocol: {
      plain: proxyProtocolFor(rt.config, 'pop3'),
      tls: proxyProtocolFor(rt.config, 'pop3s'),
    },
    hooks: {
      // One span per command (RETR and TOP include the streaming of the body).
      command: (name, run) => {
        commands.inc({ command: name });
        const timed = telemetry.timer(name);
        return withSpan(
          `pop3 ${name}`,
          { kind: SpanKind.SERVER, attributes: { 'pop3.command': name } },
          run,
        ).finally(timed);
      },
      authFailure: () => authFailures.inc({ protocol: 'pop3' }),
    },
  });
  try {
    const port = await server.listen(rt.config.pop3Port, rt.config.bindHost);
    log.info({ port }, 'pop3 listening');
    if (rt.config.pop3sPort !== 0) {
      const tlsPort = await server.listenTls(rt.config.pop3sPort, rt.config.bindHost);
      log.info({ port: tlsPort }, 'pop3s listening');
    }
  } catch (error) {
    await server.close();
    throw error;
  }
  const sampler = setInterval(() => open.set(server.sessions()), 5000);
  sampler.unref();
  return {
    async stop() {
      clearInterval(sampler);
      await server.close();
    },
  };
}
