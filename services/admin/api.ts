/**
 * The admin HTTP API (JSON), served on the HTTP port under /api:
 *   GET    /api/domains                    list hosted domains
 *   POST   /api/domains        {name}      add a domain
 *   DELETE /api/domains/<name>             remove a domain (it must have no users)
 *   GET    /api/users[?domain=d]           list users
 *   POST   /api/users          {address, password}
 *   PUT    /api/users/<address>/password   {password}
 *   DELETE /api/users/<address>
 *   GET    /api/aliases[?domain=d]         list aliases with their targets
 *   POST   /api/aliases        {alias, targets[]}
 *   DELETE /api/aliases/<address>
 *   PUT    /api/domains/<name>/catch-all  {target}   ('' clears it)
 *   POST   /api/domains/<name>/aliases    {target}   make <name> a domain alias of target
 *   GET    /api/trace/<queue-id|message-id> a message's journey from the EVENTS stream
 *   POST   /api/import        NDJSON of domains, users, aliases (services/admin/import.ts)
 * Requests need `Authorization: Bearer <ADMIN_TOKEN>`; with no token configured only loopback clients are served.
 */
import type { IncomingMessage } from 'node:http';
import type { Logger } from 'pino';
import { DirectoryError, type Directory } from '../core/directory.ts';
import type { Route } from '../core/http.ts';
import { adminAuthorizer } from './auth.ts';
import { BodyError, readJsonObject, sendJson } from './json.ts';
import type { Nats } from '../core/nats.ts';
import { traceMessage } from './trace.ts';
import { ImportLineTooLong, importDirectory, ndjsonLines } from './import.ts';

const MAX_BODY = 64 * 1024;

const readJson = (req: IncomingMessage) => readJsonObject(req, MAX_BODY);

class HttpError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

const json = sendJson;

function str(body: Record<string, unknown>, key: string): string {
  const v = body[key];
  if (typeof v !== 'string' || v === '') throw new HttpError(400, `"${key}" must be a non-empty string`);
  return v;
}

const STATUS_OF: Record<DirectoryError['code'], number> = {
  EXISTS: 409,
  NOT_FOUND: 404,
  INVALID: 400,
  NOT_EMPTY: 409,
  LOOP: 422,
};

export function adminRoute(directory: Directory, nats: Nats, token: string, logger: Logger): Route {
  const authorized = adminAuthorizer(token);

  return async (req, res, url) => {
    if (!url.pathname.startsWith('/api/')) return false;
    try {
      if (!authorized(req)) throw new HttpError(401, 'unauthorized');
      const parts = url.pathname.split('/').slice(2).map(decodeURIComponent);
      const [resource, id, sub] = parts;
      const method = req.method ?? 'GET';
      if (resource === 'domains' && !id && method === 'GET')
        return (json(res, 200, { domains: await directory.listDomains() }), true);
      if (resource === 'domains' && !id && method === 'POST') {
        const name = await directory.addDomain(str(await readJson(req), 'name'));
        logger.info({ domain: name }, 'domain added');
        return (json(res, 201, { name }), true);
      }
      if (resource === 'domains' && id && method === 'DELETE') {
        await directory.removeDomain(id);
        logger.info({ domain: id }, 'domain removed');
        return (json(res, 200, { removed: id }), true);
      }
      if (resource === 'domains' && id && sub === 'catch-all' && method === 'PUT') {
        const body = await readJson(req);
        const target = typeof body.target === 'string' ? body.target : '';
        await directory.setCatchAll(id, target);
        logger.info({ domain: id, target }, 'catch-all set');
        return (json(res, 200, { domain: id, catchAll: target }), true);
      }
      if (resource === 'domains' && id && sub === 'aliases' && method === 'POST') {
        const target = str(await readJson(req), 'target');
        await directory.addDomainAlias(id, target);
        logger.info({ domain: id, target }, 'domain alias added');
        return (json(res, 201, { domain: id, aliasOf: target }), true);
      }
      if (resource === 'aliases' && !id && method === 'GET') {
        return (
          json(res, 200, {
            aliases: await directory.listAliases(url.searchParams.get('domain') ?? undefined),
          }),
          true
        );
      }
      if (resource === 'aliases' && !id && method === 'POST') {
        const body = await readJson(req);
        const targets = Array.isArray(body.targets)
          ? body.targets.filter((t): t is string => typeof t === 'string')
          : [];
        const alias = await directory.addAlias(str(body, 'alias'), targets);
        logger.info({ alias, targets }, 'alias added');
        return (json(res, 201, { alias, targets }), true);
      }
      if (resource === 'aliases' && id && method === 'DELETE') {
        await directory.removeAlias(id);
        logger.info({ alias: id }, 'alias removed');
        return (json(res, 200, { removed: id }), true);
      }
      if (resource === 'users' && !id && method === 'GET') {
        return (
          json(res, 200, { users: await directory.listUsers(url.searchParams.get('domain') ?? undefined) }),
          true
        );
      }
      if (resource === 'users' && !id && method === 'POST') {
        const body = await readJson(req);
        const address = await directory.addUser(str(body, 'address'), str(body, 'password'));
        logger.info({ user: address }, 'user added');
        return (json(res, 201, { address }), true);
      }
      if (resource === 'users' && id && sub === 'password' && method === 'PUT') {
        await directory.setPassword(id, str(await readJson(req), 'password'));
        logger.info({ user: id }, 'password changed');
        return (json(res, 200, { address: id }), true);
      }
      if (resource === 'users' && id && !sub && method === 'DELETE') {
        await directory.removeUser(id);
        logger.info({ user: id }, 'user removed');
        return (json(res, 200, { removed: id }), true);
      }
      // Bulk import (services/admin/import.ts): NDJSON streamed in, a JSON summary out.
      if (resource === 'import' && !id && method === 'POST') {
        const summary = await importDirectory(directory, ndjsonLines(req));
        logger.info({ ...summary, errors: undefined }, 'directory import');
        return (json(res, 200, summary), true);
      }
      if (resource === 'trace' && id && method === 'GET') {
        return (json(res, 200, { events: await traceMessage(nats, id) }), true);
      }
      throw new HttpError(404, `no route ${method} ${url.pathname}`);
    } catch (err) {
      if (err instanceof HttpError || err instanceof BodyError) json(res, err.status, { error: err.message });
      else if (err instanceof ImportLineTooLong) json(res, 413, { error: err.message });
      else if (err instanceof DirectoryError) json(res, STATUS_OF[err.code], { error: err.message });
      else {
        logger.error({ err }, 'admin request failed');
        json(res, 500, { error: 'internal error' });
      }
      return true;
    }
  };
}
