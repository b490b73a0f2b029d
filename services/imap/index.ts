/**
 * imap: the IMAP service — the protocol core (server.ts) wired to the mailboxes (over RPC, or
 * direct: MAILBOX_ACCESS), the directory and the runtime's certificate (STARTTLS on IMAP_PORT,
 * implicit TLS on IMAPS_PORT).
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { proxyProtocolFor } from '../core/net.ts';
import { mailboxAccess } from '../mailbox-store/access.ts';
import { gauge } from '../core/metrics.ts';
import { ProtocolTelemetry } from '../core/telemetry.ts';
import { COMMANDS } from './commands/index.ts';
import { createImapServer } from './server.ts';
import { throttledAuthenticator } from '../core/auth-throttle.ts';
import { Rates } from '../smtp-ingress/rates.ts';
import { LIMITS as SMTP_LIMITS } from '../smtp-ingress/limits.ts';

const open = gauge('postino_imap_sessions_open', 'Open IMAP sessions');
/** RFC 9051 6.4.9 and the extensions: the commands that have a UID form. */
const UID_FORMS = ['FETCH', 'STORE', 'SEARCH', 'COPY', 'MOVE', 'EXPUNGE', 'SORT', 'THREAD'];
/** `IMAP session` → `IMAP UID FETCH`... spans and postino_imap_command_seconds{command}. */
const telemetry = new ProtocolTelemetry('IMAP', [
  ...Object.keys(COMMANDS),
  ...UID_FORMS.map((name) => `UID ${name}`),
]);

export async function start(rt: Runtime): Promise<Service> {
  const log = rt.logger.child({ service: 'imap' });
  const server = createImapServer({
    mailbox: mailboxAccess(rt, log),
    // AUTH failures share SMTP's counters per IP and per account (SMTP_AUTH_FAILURES).
    auth: throttledAuthenticator(rt.directory, new Rates(rt.redis, rt.config.redisPrefix), {
      limit: rt.config.smtpAuthFailures,
      windowMs: SMTP_LIMITS.authFailureWindowMs,
    }),
    logger: log,
    hostname: rt.config.hostname,
    allowPlaintextAuth: rt.config.allowPlaintextAuth,
    idleTimeoutMs: rt.config.imapIdleTimeout,
    tls: rt.tls,
    // PROXY protocol from the balancers in PROXY_PROTOCOL_TRUSTED (services/core/net.ts).
    proxyProtocol: {
      plain: proxyProtocolFor(rt.config, 'imap'),
      tls: proxyProtocolFor(rt.config, 'imaps'),
    },
    hooks: { session: (peer) => telemetry.session(peer) },
    // APPENDLIMIT (RFC 7889) is the store's message size cap; a command may carry one message.
    limits: {
      maxLiteralBytes: rt.config.maxMessageSize,
      maxCommandBytes: rt.config.maxMessageSize + 256 * 1024,
      maxConnections: rt.config.imapMaxConnections,
      maxConnectionsPerIp: rt.config.imapMaxConnectionsPerIp,
    },
  });
  await server.listen(rt.config.imapPort, rt.config.bindHost);
  if (rt.config.imapsPort > 0) {
    try {
      await server.listenTls(rt.config.imapsPort, rt.config.bindHost);
    } catch (err) {
      // The plain port (with STARTTLS) still serves; a busy 993 must not take IMAP down with it.
      log.error({ err, port: rt.config.imapsPort }, 'imaps port unavailable; serving STARTTLS only');
    }
  }
  open.reset();
  const sampler = setInterval(() => open.set(server.sessions()), 5000);
  sampler.unref();
  return {
    async stop() {
      clearInterval(sampler);
      await server.close();
    },
  };
}
