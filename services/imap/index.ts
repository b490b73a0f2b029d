/** imap: the IMAP service — the protocol core (server.ts) wired to the mailbox RPC and the directory. */
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
  });
  await server.listen(rt.config.imapPort, rt.config.bindHost);
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
