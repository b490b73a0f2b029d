/** admin: the HTTP API for domains, users and message tracking (the `postino admin` CLI speaks to it). */
import type { Runtime, Service } from '../core/runtime.ts';
import { adminRoute } from './api.ts';
import { queueRoute } from './queue.ts';
import { dkimRoute } from './dkim.ts';
import { quotaRoute } from './quota.ts';
import { mailboxAccess } from '../mailbox-store/access.ts';

export async function start(rt: Runtime): Promise<Service> {
  const log = rt.logger.child({ service: 'admin' });
  rt.http.addRoute(queueRoute(rt, log)); // before adminRoute, which answers 404 for the rest of /api
  rt.http.addRoute(dkimRoute(rt.directory, rt.config.adminToken, log)); // before adminRoute too
  const mailbox = mailboxAccess(rt, log);
  rt.http.addRoute(quotaRoute(rt.directory, mailbox, rt.config.adminToken, log)); // before adminRoute too
  rt.http.addRoute(adminRoute(rt.directory, rt.nats, rt.config.adminToken, log));
  log.info({ port: rt.http.port }, 'admin API on the HTTP port under /api');
  return { stop: async () => undefined };
}
