/**
 * imap: the IMAP service — the protocol core (server.ts) wired to the mailbox RPC, the directory
 * and the runtime's certificate (STARTTLS on IMAP_PORT, implicit TLS on IMAPS_PORT).
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { MailboxRpcClient } from '../mailbox-store/rpc.ts';
import { gauge } from '../core/metrics.ts';
import { createImapServer } from './server.ts';

const open = gauge('postino_imap_sessions_open', 'Open IMAP sessions');

export async function start(rt: Runtime): Promise<Service> {
  const log = rt.logger.child({ service: 'imap' });
  const server = createImapServer({
    mailbox: new MailboxRpcClient(rt.nats, rt.blobs),
    auth: rt.directory,
    logger: log,
    hostname: rt.config.hostname,
    allowPlaintextAuth: rt.config.allowPlaintextAuth,
    idleTimeoutMs: rt.config.imapIdleTimeout,
    tls: rt.tls,
    // APPENDLIMIT (RFC 7889) is the store's message size cap; a command may carry one message.
    limits: {
      maxLiteralBytes: rt.config.maxMessageSize,
      maxCommandBytes: rt.config.maxMessageSize + 256 * 1024,
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
