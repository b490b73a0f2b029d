/**
 * Queue control in the admin API (the `postino queue` CLI speaks to it):
 *   GET  /api/queue[?domain=d][&queue_id=q]      deferred and held messages, next attempt, last error
 *   POST /api/queue/retry    {domain?|id?|queueId?}  make them due now
 *   POST /api/queue/hold     {domain?|id?|queueId?}  park them (no attempt until released)
 *   POST /api/queue/release  {domain?|id?|queueId?}  make held ones due now
 *   POST /api/queue/delete   {domain?|id?|queueId?}  drop them without a bounce (as postsuper -d)
 * `id` is "<queue-id>:<domain>", one message's entry for one destination.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Route } from '../core/http.ts';
import { adminAuthorizer } from './auth.ts';
import { readJsonObject, sendJson } from './json.ts';
import type { Runtime } from '../core/runtime.ts';
import { QueueStore } from '../delivery/queue-store.ts';
import { BlobHolder } from '../core/blobs.ts';
import { decode, pb } from '../core/codec.ts';

/** Drops a queue entry, then its hold on the body (services/core/blobs.ts): nothing will send it now. */
async function deleteEntry(rt: Runtime, queue: QueueStore, id: string): Promise<boolean> {
  const rec = await queue.data(id);
  const removed = await queue.remove(id);
  if (removed && rec)
    await rt.blobs.release(decode(pb.OutboundDelivery, rec.data).body?.id ?? '', BlobHolder.outbound(id));
  return removed;
}

const MAX_BODY = 16 * 1024;
const ACTIONS = ['retry', 'hold', 'release', 'delete'] as const;
type Action = (typeof ACTIONS)[number];

function send(res: ServerResponse, status: number, body: unknown): true {
  sendJson(res, status, body);
  return true;
}

function body(req: IncomingMessage): Promise<Record<string, unknown> | null> {
  return readJsonObject(req, MAX_BODY).catch(() => null);
}

export function queueRoute(rt: Runtime, logger: Logger): Route {
  const queue = new QueueStore(rt.redis, rt.config.redisPrefix);
  const authorized = adminAuthorizer(rt.config.adminToken);
  return async (req, res, url) => {
    if (url.pathname !== '/api/queue' && !url.pathname.startsWith('/api/queue/')) return false;
    if (!authorized(req)) return send(res, 401, { error: 'unauthorized' });
    const action = url.pathname.slice('/api/queue/'.length) as Action;
    if (url.pathname === '/api/queue' && req.method === 'GET') {
      const entries = await queue.list({
        domain: url.searchParams.get('domain') ?? undefined,
        queueId: url.searchParams.get('queue_id') ?? undefined,
      });
      return send(res, 200, {
        entries: entries.map((e) => ({
          ...e,
          nextAttempt: e.state === 'held' ? null : new Date(e.nextAttempt).toISOString(),
          receivedAt: new Date(e.receivedAt).toISOString(),
        })),
      });
    }
    if (req.method !== 'POST' || !ACTIONS.includes(action)) {
      return send(res, 404, { error: `no route ${req.method} ${url.pathname}` });
    }
    const b = await body(req);
    if (!b) return send(res, 400, { error: 'body must be a JSON object' });
    const pick = (k: string) => (typeof b[k] === 'string' && b[k] !== '' ? (b[k] as string) : undefined);
    const id = pick('id');
    const domain = pick('domain');
    const queueId = pick('queueId');
    if (!id && !domain && !queueId) return send(res, 400, { error: 'give "id", "queueId" or "domain"' });
    const ids = id ? [id] : (await queue.list({ domain, queueId }, 100_000)).map((e) => e.id);
    let changed = 0;
    for (const one of ids) {
      const ok = action === 'delete' ? await deleteEntry(rt, queue, one) : await queue.control(one, action);
      if (ok) changed++;
    }
    logger.info({ action, id, domain, queueId, changed }, 'queue control');
    if (changed === 0 && id) return send(res, 404, { error: `no queue entry ${id} to ${action}` });
    return send(res, 200, { action, changed });
  };
}
