/**
 * DKIM keys of hosted domains (RFC 6376), on the admin API:
 *   POST /api/domains/<name>/dkim  {selector?}  generates a new RSA-2048 key (RFC 8301 3.2) and
 *                                               returns the DNS TXT record to publish
 *   GET  /api/domains/<name>/dkim               the current record
 * smtp-ingress signs submitted mail of the domain with the key as soon as it is stored.
 * Same access rule as the rest of the API: `Authorization: Bearer <ADMIN_TOKEN>`, or loopback only.
 */
import { generateKeyPairSync } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Logger } from 'pino';
import type { Directory } from '../core/directory.ts';
import type { Route } from '../core/http.ts';
import { adminAuthorizer } from './auth.ts';
import { readJsonObject, sendJson } from './json.ts';

const MAX_BODY = 4096;

export interface DkimRecord {
  domain: string;
  selector: string;
  /** Owner name of the TXT record: <selector>._domainkey.<domain> (RFC 6376 3.6.2.1). */
  name: string;
  /** The record's text (RFC 6376 3.6.1). */
  txt: string;
  /** The same text cut into strings of at most 255 octets, as a TXT record holds it (RFC 1035 3.3.14). */
  strings: string[];
  createdAt: number;
}

/** The TXT record for a public key in PEM (SubjectPublicKeyInfo). */
export function dkimRecord(
  domain: string,
  selector: string,
  publicKeyPem: string,
  createdAt: number,
): DkimRecord {
  const p = publicKeyPem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  const txt = `v=DKIM1; k=rsa; p=${p}`;
  return {
    domain,
    selector,
    name: `${selector}._domainkey.${domain}`,
    txt,
    strings: txt.match(/.{1,255}/g) ?? [],
    createdAt,
  };
}

const json = sendJson;

async function readSelector(req: IncomingMessage): Promise<string | null> {
  const body = await readJsonObject(req, MAX_BODY).catch(() => null);
  if (!body) return null;
  const sel = body.selector;
  if (sel === undefined) return `p${new Date().toISOString().slice(0, 10).replace(/-/g, '')}`;
  // RFC 6376 3.1: a selector is one or more sub-domain labels.
  return typeof sel === 'string' && /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9-]{1,63})*$/i.test(sel)
    ? sel.toLowerCase()
    : null;
}

export function dkimRoute(directory: Directory, token: string, logger: Logger): Route {
  const authorized = adminAuthorizer(token);
  return async (req, res, url) => {
    const m = /^\/api\/domains\/([^/]+)\/dkim$/.exec(url.pathname);
    if (!m?.[1]) return false;
    if (!authorized(req)) return (json(res, 401, { error: 'unauthorized' }), true);
    const domain = decodeURIComponent(m[1]).toLowerCase();
    try {
      if (!(await directory.isLocalDomain(domain)))
        return (json(res, 404, { error: `no domain ${domain}` }), true);
      if (req.method === 'GET') {
        const key = await directory.getDkimKey(domain);
        if (!key) return (json(res, 404, { error: `no DKIM key for ${domain}` }), true);
        return (json(res, 200, dkimRecord(domain, key.selector, key.publicKey, key.createdAt)), true);
      }
      if (req.method === 'POST') {
        const selector = await readSelector(req);
        if (!selector) return (json(res, 400, { error: 'selector must be a DNS label' }), true);
        const { privateKey, publicKey } = generateKeyPairSync('rsa', {
          modulusLength: 2048,
          publicKeyEncoding: { type: 'spki', format: 'pem' },
          privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
        });
        await directory.setDkimKey(domain, { selector, privateKey, publicKey });
        logger.info({ domain, selector }, 'DKIM key generated');
        return (json(res, 201, dkimRecord(domain, selector, publicKey, Date.now())), true);
      }
      return (json(res, 405, { error: 'method not allowed' }), true);
    } catch (err) {
      logger.error({ err, domain }, 'DKIM key request failed');
      return (json(res, 500, { error: 'internal error' }), true);
    }
  };
}
