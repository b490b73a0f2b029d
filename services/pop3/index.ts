/** pop3: the POP3 service — the protocol core (server.ts) wired to the mailbox RPC, the directory and maildrop leases. */
import type { Runtime, Service } from '../core/runtime.ts';
import { MailboxRpcClient } from '../mailbox-store/rpc.ts';
import { RedisMaildropLock } from '../core/lock.ts';
import { gauge } from '../core/metrics.ts';
import { createPop3Server } from './server.ts';

const open = gauge('postino_pop3_sessions_open', 'Open POP3 sessions');

export async function start(rt: Runtime): Promise<Service> {
  const log = rt.logger.child({ service: 'pop3' });
  const server = createPop3Server({
    mailbox: new MailboxRpcClient(rt.nats, rt.blobs),
    auth: rt.directory,
    lock: new RedisMaildropLock(rt.redis, rt.config.redisPrefix, log),
    logger: log,
    hostname: rt.config.hostname,
    allowPlaintextAuth: rt.config.allowPlaintextAuth,
    retrSetsSeen: rt.config.retrSetsSeen,
    idleTimeoutMs: rt.config.pop3IdleTimeout,
  });
  const port = await server.listen(rt.config.pop3Port, rt.config.bindHost);
  log.info({ port }, 'pop3 listening');
  const sampler = setInterval(() => open.set(server.sessions()), 5000);
  sampler.unref();
  return {
    async stop() {
      clearInterval(sampler);
      await server.close();
    },
  };
}
