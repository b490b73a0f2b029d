/** admin: the HTTP API for domains, users and message tracking (the `postino admin` CLI speaks to it). */
import type { Runtime, Service } from '../core/runtime.ts';
import { adminRoute } from './api.ts';

export async function start(rt: Runtime): Promise<Service> {
  const log = rt.logger.child({ service: 'admin' });
  rt.http.addRoute(adminRoute(rt.directory, rt.nats, rt.config.adminToken, log));
  log.info({ port: rt.http.port }, 'admin API on the HTTP port under /api');
  return { stop: async () => undefined };
}
