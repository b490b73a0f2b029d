/**
 * MTA-STS (RFC 8461): a domain publishes, through a TXT record `_mta-sts.<domain>` (`v=STSv1;
 * id=…`) and an HTTPS policy file `https://mta-sts.<domain>/.well-known/mta-sts.txt`, which MX
 * hosts may receive its mail and whether senders must then use verified TLS.
 *
 * Discovery and the fetch use the resolver delivery uses for MX lookups; the policy host's
 * certificate is verified (system roots plus DELIVERY_TLS_CA_FILE), redirects are not followed
 * (RFC 8461 3.3), the body is bounded and the request timed. Parsing and MX matching are mailauth's
 * (`mailauth/lib/mta-sts`). Fetched policies are cached in Redis, shared by the delivery replicas,
 * until max_age runs out; a changed TXT id makes a replica fetch again; a cached policy that has
 * not expired stays in force when the TXT record or the policy host cannot be reached (RFC 8461
 * 5.1). Each replica remembers the answer for a short while so that not every message asks DNS.
 */
import { request } from 'node:https';
import type { Resolver } from 'node:dns/promises';
import type { Logger } from 'pino';
import { parsePolicy, validateMx } from 'mailauth/lib/mta-sts.js';

export interface StsPolicy {
  /** The TXT record's id the policy was fetched for. */
  id: string;
  mode: 'enforce' | 'testing' | 'none';
  /** MX patterns, `*.` wildcards matching one left-most label. */
  mx: string[];
  /** Local time (ms) until which the policy applies: fetch time + max_age. */
  expires: number;
}

/** What the cache needs of a Redis client. */
export interface StsCacheStore {
  get(key: string): Promise<string | null>;
  set(key: string, value: string, px: 'PX', ms: number): Promise<unknown>;
}

export interface MtaStsOptions {
  resolver: Pick<Resolver, 'resolveTxt' | 'resolve4' | 'resolve6'>;
  store: StsCacheStore;
  prefix: string;
  logger: Logger;
  /** Trust anchors for the policy host (undefined: the system roots). */
  ca?: string[];
  /** HTTPS port of the policy host (443; RFC 8461 3.3). */
  port?: number;
  /** Overall time limit of one policy fetch. */
  fetchTimeoutMs: number;
  /** How long a replica trusts its own answer before it checks the TXT record again. */
  recheckMs: number;
}

/** RFC 8461 3.3: "senders SHOULD impose a limit on the maximum size of the response body", 64 KiB suggested. */
const MAX_POLICY_BYTES = 64 * 1024;
/** RFC 8461 3.2: max_age up to 31557600 s (one year). */
const MAX_AGE_LIMIT_S = 31_557_600;
/** A failed first fetch (no cached policy) is not retried for this long: the domain is treated as having none. */
const FAILED_FETCH_RETRY_MS = 5 * 60_000;
/** The cache entry outlives the policy a little, so that a replica still finds it at the moment of expiry. */
const CACHE_GRACE_MS = 60_000;
/** Domains a replica remembers answers for (the Redis cache holds the policies themselves). */
const MEMO_MAX = 10_000;

interface Memo {
  policy: StsPolicy | null;
  until: number;
}

/** Which of a domain's MX hosts a policy allows (RFC 8461 4.1); `testing` and `none` allow all. */
export function mxAllowed(policy: StsPolicy, host: string): boolean {
  return validateMx(host, { mode: policy.mode, mx: policy.mx }).valid;
}

export class MtaSts {
  readonly #o: MtaStsOptions;
  readonly #memo = new Map<string, Memo>();
  readonly #inflight = new Map<string, Promise<StsPolicy | null>>();

  constructor(o: MtaStsOptions) {
    this.#o = o;
  }

  /** The policy in force for a domain, null when it has none (or only `none`). */
  async policy(domain: string): Promise<StsPolicy | null> {
    const name = domain.toLowerCase().replace(/\.$/, '');
    const now = Date.now();
    const m = this.#memo.get(name);
    if (m && now < m.until && (!m.policy || now < m.policy.expires)) return m.policy;
    const running = this.#inflight.get(name);
    if (running) return running;
    const p = this.#lookup(name).then((policy) => {
      const until = Date.now() + this.#o.recheckMs;
      if (this.#memo.size >= MEMO_MAX) {
        for (const [k, v] of this.#memo) if (v.until <= Date.now()) this.#memo.delete(k);
        if (this.#memo.size >= MEMO_MAX) this.#memo.clear();
      }
      this.#memo.set(name, { policy, until });
      return policy;
    });
    this.#inflight.set(name, p);
    try {
      return await p;
    } finally {
      this.#inflight.delete(name);
    }
  }

  /** Forgets this replica's memory of the domain: the next call asks DNS (and Redis) again. */
  forget(domain: string): void {
    this.#memo.delete(domain.toLowerCase().replace(/\.$/, ''));
  }

  #key(domain: string): string {
    return `${this.#o.prefix}sts:${domain}`;
  }

  async #cached(domain: string): Promise<StsPolicy | null> {
    const raw = await this.#o.store.get(this.#key(domain)).catch(() => null);
    if (!raw) return null;
    try {
      const p = JSON.parse(raw) as StsPolicy;
      return p.expires > Date.now() ? p : null;
    } catch {
      return null;
    }
  }

  async #lookup(domain: string): Promise<StsPolicy | null> {
    const log = this.#o.logger;
    const cached = await this.#cached(domain);
    let id: string | null;
    try {
      id = await this.#discover(domain);
    } catch (err) {
      // RFC 8461 5.1: a DNS failure leaves an unexpired cached policy in force.
      if (cached) return effective(cached);
      log.debug({ domain, err }, 'MTA-STS discovery failed');
      return null;
    }
    if (id === null) {
      // No TXT record: a cached policy still applies until it expires (RFC 8461 5.1, 10.2).
      return cached ? effective(cached) : null;
    }
    // RFC 8461 3.1: the id changes when the policy does; the same id means the cached one is current.
    if (cached && cached.id === id) return effective(cached);
    try {
      const body = await this.#fetch(domain);
      const parsed = parsePolicy(body);
      const maxAge = Math.min(parsed.maxAge ?? 0, MAX_AGE_LIMIT_S);
      const policy: StsPolicy = {
        id,
        mode: parsed.mode,
        mx: parsed.mx ?? [],
        expires: Date.now() + maxAge * 1000,
      };
      const ttl = policy.expires - Date.now() + CACHE_GRACE_MS;
      await this.#o.store.set(this.#key(domain), JSON.stringify(policy), 'PX', ttl).catch(() => undefined);
      log.info({ domain, id, mode: policy.mode, mx: policy.mx, maxAge }, 'MTA-STS policy fetched');
      return effective(policy);
    } catch (err) {
      if (cached) {
        // RFC 8461 5.1: keep using the unexpired cached policy when a new one cannot be fetched.
        log.warn(
          { domain, err: String(err) },
          'MTA-STS policy fetch failed; the cached policy stays in force',
        );
        return effective(cached);
      }
      log.warn({ domain, err: String(err) }, 'MTA-STS policy fetch failed; no policy applied');
      // Treated as no policy for a while (a broken policy host must not cost a fetch per message).
      const none: StsPolicy = { id, mode: 'none', mx: [], expires: Date.now() + FAILED_FETCH_RETRY_MS };
      await this.#o.store
        .set(this.#key(domain), JSON.stringify(none), 'PX', FAILED_FETCH_RETRY_MS)
        .catch(() => undefined);
      return null;
    }
  }

  /** RFC 8461 3.1: the id of the one TXT record starting `v=STSv1;`; null when there is none. */
  async #discover(domain: string): Promise<string | null> {
    let rows: string[][];
    try {
      rows = await this.#o.resolver.resolveTxt(`_mta-sts.${domain}`);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (code === 'ENOTFOUND' || code === 'ENODATA') return null;
      throw err;
    }
    const records = rows.map((r) => r.join('')).filter((r) => /^v=STSv1[ \t]*;/.test(r));
    // RFC 8461 3.1: more than one record, or none: the domain is treated as having no policy.
    if (records.length !== 1) return null;
    for (const field of (records[0] ?? '').split(';').slice(1)) {
      const m = /^[ \t]*id=([A-Za-z0-9]{1,32})[ \t]*$/.exec(field);
      if (m?.[1]) return m[1];
    }
    return null;
  }

  /** RFC 8461 3.3: GET the policy over verified HTTPS, no redirects, bounded in size and time. */
  async #fetch(domain: string): Promise<Buffer> {
    const host = `mta-sts.${domain}`;
    const v4 = await this.#o.resolver.resolve4(host).catch(() => [] as string[]);
    const addrs = v4.length > 0 ? v4 : await this.#o.resolver.resolve6(host).catch(() => [] as string[]);
    const address = addrs[0];
    if (!address) throw new Error(`policy host ${host} has no address`);
    const path = '/.well-known/mta-sts.txt';
    return new Promise<Buffer>((resolve, reject) => {
      let settled = false;
      const finish = (err: Error | null, body?: Buffer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          req.destroy();
          reject(err);
        } else resolve(body ?? Buffer.alloc(0));
      };
      const req = request(
        {
          host: address,
          port: this.#o.port ?? 443,
          path,
          method: 'GET',
          servername: host,
          headers: { host },
          ca: this.#o.ca,
          rejectUnauthorized: true,
          // A fresh connection each time: none verified with other options is reused.
          agent: false,
          timeout: this.#o.fetchTimeoutMs,
        },
        (res) => {
          // RFC 8461 3.3: only a 200 is a policy; redirects (3xx) are not followed.
          if (res.statusCode !== 200) {
            res.resume();
            return finish(new Error(`https://${host}${path} answered HTTP ${res.statusCode}`));
          }
          const type = (res.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
          if (type !== 'text/plain') {
            res.resume();
            return finish(new Error(`https://${host}${path} is ${type || 'untyped'}, not text/plain`));
          }
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > MAX_POLICY_BYTES) finish(new Error(`policy larger than ${MAX_POLICY_BYTES} octets`));
            else chunks.push(c);
          });
          res.on('end', () => finish(null, Buffer.concat(chunks)));
          res.on('error', (err) => finish(err));
        },
      );
      const timer = setTimeout(
        () => finish(new Error(`https://${host}${path} timed out`)),
        this.#o.fetchTimeoutMs,
      );
      req.on('timeout', () => finish(new Error(`https://${host}${path} timed out`)));
      req.on('error', (err) => finish(err));
      req.end();
    });
  }
}

/** A `none` policy enforces nothing: the same as no policy (RFC 8461 5). */
function effective(p: StsPolicy): StsPolicy | null {
  return p.mode === 'none' ? null : p;
}
