/**
 * Quotas (RFC 9208 storage and message limits) on the admin API:
 *   GET /api/users/<address>/quota      the user's limits (own or the domain's default) and usage
 *   PUT /api/users/<address>/quota      {bytes, messages}: the user's own limits (0: domain default)
 *   GET /api/domains/<name>/quota       the domain's default limits
 *   PUT /api/domains/<name>/quota       {bytes, messages}: the domain's default (0: none)
 * Usage comes from the mailbox store over its RPC. Same access rule as the rest of the API:
 * `Authorization: Bearer <ADMIN_TOKEN>`, or loopback only.
 */
import type { IncomingMessage } from 'node:http';
import type { Logger } from 'pino';
import type { Directory } from '../core/directory.ts';
import { DirectoryError } from '../core/directory.ts';
import type { Route } from '../core/http.ts';
import type { MailboxClient } from '../core/mailbox-api.ts';
import { adminAuthorizer } from './auth.ts';
import { readJsonObject, sendJson } from './json.ts';

const MAX_BODY = 4096;

const json = sendJson;

/** {bytes, messages} as non-negative integers, or null. */
async function readLimits(req: IncomingMessage): Promise<{ bytes: number; messages: number } | null> {
  const body = await readJsonObject(req, MAX_BODY).catch(() => null);
  if (!body) return null;
  const { bytes = 0, messages = 0 } = body;
  const ok = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  return ok(bytes) && ok(messages) ? { bytes, messages } : null;
}

export function quotaRoute(
  directory: Directory,
  mailbox: MailboxClient,
  token: string,
  logger: Logger,
): Route {
  const authorized = adminAuthorizer(token);
  return async (req, res, url) => {
    const m = /^\/api\/(users|domains)\/([^/]+)\/quota$/.exec(url.pathname);
    if (!m?.[1] || !m[2]) return false;
    if (!authorized(req)) return (json(res, 401, { error: 'unauthorized' }), true);
    const name = decodeURIComponent(m[2]).toLowerCase();
    const user = m[1] === 'users';
    try {
      if (req.method === 'GET') {
        if (user) {
          const limits = await directory.quotaOf(name);
          const usage = await mailbox.quota(name);
          return (
            json(res, 200, {
              user: name,
              limits,
              usage: { bytes: usage.storageUsed, messages: usage.messagesUsed },
            }),
            true
          );
        }
        if (!(await directory.isLocalDomain(name)))
          return (json(res, 404, { error: `no domain ${name}` }), true);
        return (json(res, 200, { domain: name, limits: await directory.domainQuota(name) }), true);
      }
      if (req.method === 'PUT') {
        const limits = await readLimits(req);
        if (!limits)
          return (json(res, 400, { error: 'expected {"bytes": n, "messages": n}, integers >= 0' }), true);
        if (user) await directory.setUserQuota(name, limits);
        else await directory.setDomainQuota(name, limits);
        logger.info({ [user ? 'user' : 'domain']: name, ...limits }, 'quota set');
        return (json(res, 200, { [user ? 'user' : 'domain']: name, limits }), true);
      }
      return (json(res, 405, { error: 'method not allowed' }), true);
    } catch (err) {
      if (err instanceof DirectoryError && err.code === 'NOT_FOUND')
        return (json(res, 404, { error: err.message }), true);
      logger.error({ err, name }, 'quota request failed');
      return (json(res, 500, { error: 'internal error' }), true);
    }
  };
}
