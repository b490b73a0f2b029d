/**
 * MX resolution as RFC 5321 section 5.1 says: MX hosts by preference, random order among equal
 * preferences, the implicit MX (the domain's own A/AAAA) when there is no MX, null MX (RFC 7505)
 * refused at once. NXDOMAIN is permanent; SERVFAIL, timeouts and refusals are temporary.
 */
import { Resolver } from 'node:dns/promises';

export interface MxTarget {
  host: string;
  preference: number;
  addresses: string[];
}

export type MxResult =
  /** `ttl`: seconds the answer may be cached (the shortest TTL of the address records used). */
  | { kind: 'ok'; hosts: MxTarget[]; ttl?: number }
  | { kind: 'permanent'; code: string; reason: string }
  | { kind: 'temporary'; reason: string };

const PERMANENT_DNS = new Set(['ENOTFOUND']);
const NO_DATA = new Set(['ENODATA', 'ENOTFOUND']);

export class MxResolver {
  readonly #resolver: Resolver;

  constructor(servers: string[], timeoutMs = 5000) {
    this.#resolver = new Resolver({ timeout: timeoutMs, tries: 2 });
    if (servers.length > 0) this.#resolver.setServers(servers);
  }

  /** `acc.ttl` keeps the shortest TTL seen during one resolve() (seconds). */
  async #addresses(host: string, acc: { ttl: number }): Promise<string[]> {
    const [v4, v6] = await Promise.allSettled([
      this.#resolver.resolve4(host, { ttl: true }),
      this.#resolver.resolve6(host, { ttl: true }),
    ]);
    const out: string[] = [];
    for (const r of [v4, v6]) {
      if (r.status !== 'fulfilled') continue;
      for (const a of r.value) {
        out.push(a.address);
        acc.ttl = Math.min(acc.ttl, a.ttl);
      }
    }
    const errs = [v4, v6]
      .filter((r) => r.status === 'rejected')
      .map((r) => (r as PromiseRejectedResult).reason as NodeJS.ErrnoException);
    if (out.length === 0 && errs.some((e) => !NO_DATA.has(e.code ?? ''))) {
      throw Object.assign(
        new Error(`address lookup of ${host} failed: ${errs.map((e) => e.code).join(', ')}`),
        { temporary: true },
      );
    }
    return out;
  }

  async resolve(domain: string): Promise<MxResult> {
    const acc = { ttl: Infinity };
    const r = await this.#resolve(domain, acc);
    return r.kind === 'ok' && Number.isFinite(acc.ttl) ? { ...r, ttl: acc.ttl } : r;
  }

  async #resolve(domain: string, acc: { ttl: number }): Promise<MxResult> {
    let records: { exchange: string; priority: number }[];
    try {
      records = await this.#resolver.resolveMx(domain);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (PERMANENT_DNS.has(code)) {
        return {
          kind: 'permanent',
          code: '5.1.2',
          reason: `Host or domain name not found: ${domain} (NXDOMAIN)`,
        };
      }
      if (code === 'ENODATA') {
        // RFC 5321 5.1: no MX records → the domain itself is the implicit MX.
        try {
          const addresses = await this.#addresses(domain, acc);
          if (addresses.length === 0) {
            return { kind: 'permanent', code: '5.1.2', reason: `${domain} has no MX and no address records` };
          }
          return { kind: 'ok', hosts: [{ host: domain, preference: 0, addresses }] };
        } catch (e) {
          return { kind: 'temporary', reason: (e as Error).message };
        }
      }
      return {
        kind: 'temporary',
        reason: `MX lookup of ${domain} failed: ${code || (err as Error).message}`,
      };
    }
    // RFC 7505: a single MX of "." with preference 0 says the domain takes no mail.
    if (records.length === 1 && (records[0]?.exchange === '' || records[0]?.exchange === '.')) {
      return { kind: 'permanent', code: '5.1.10', reason: `${domain} does not accept mail (null MX)` };
    }
    const ordered = orderMx(records.filter((r) => r.exchange !== '' && r.exchange !== '.'));
    const hosts: MxTarget[] = [];
    let temporary = '';
    for (const r of ordered) {
      try {
        const addresses = await this.#addresses(r.exchange, acc);
        if (addresses.length > 0) hosts.push({ host: r.exchange, preference: r.priority, addresses });
      } catch (e) {
        temporary = (e as Error).message;
      }
    }
    if (hosts.length === 0) {
      return temporary
        ? { kind: 'temporary', reason: temporary }
        : { kind: 'permanent', code: '5.4.4', reason: `no MX host of ${domain} has an address` };
    }
    return { kind: 'ok', hosts };
  }
}

/** Sorts by preference, shuffling hosts of equal preference (RFC 5321 5.1) to spread the load. */
export function orderMx<T extends { priority: number }>(
  records: T[],
  random: () => number = Math.random,
): T[] {
  const shuffled = records.map((r) => ({ r, k: random() }));
  shuffled.sort((a, b) => a.r.priority - b.r.priority || a.k - b.k);
  return shuffled.map((x) => x.r);
}

/** Bounds of the shared cache (seconds): answers are kept for their TTL within these. */
const CACHE_MIN_TTL_S = 5;
const CACHE_MAX_TTL_S = 3600;
/** Negative answers (NXDOMAIN, null MX) for this long (RFC 2308 5: a bounded negative cache). */
const NEGATIVE_TTL_S = 300;

/** What the cache needs of a Redis client. */
export interface MxCacheStore {
  get(key: string): Promise<string | null>;
  set(key: string, value: string, px: 'PX', ms: number): Promise<unknown>;
}

/**
 * MX answers cached in Redis, shared by every router and delivery replica, for the TTL of the
 * answer. Temporary failures (SERVFAIL, timeouts) are never cached: the next lookup asks again.
 * Node's MX query does not expose the MX record's own TTL, so the shortest TTL of the address
 * records used stands for the answer's TTL.
 */
export class CachedMxResolver {
  readonly #resolver: MxResolver;
  readonly #store: MxCacheStore;
  readonly #prefix: string;
  readonly #inflight = new Map<string, Promise<MxResult>>();

  constructor(resolver: MxResolver, store: MxCacheStore, prefix: string) {
    this.#resolver = resolver;
    this.#store = store;
    this.#prefix = prefix;
  }

  async resolve(domain: string): Promise<MxResult> {
    const name = domain.toLowerCase().replace(/\.$/, '');
    const key = `${this.#prefix}dns:mx:${name}`;
    const cached = await this.#store.get(key).catch(() => null);
    if (cached) {
      try {
        return JSON.parse(cached) as MxResult;
      } catch {
        // A damaged entry is looked up again and overwritten.
      }
    }
    // One lookup per name at a time in this process.
    const running = this.#inflight.get(name);
    if (running) return running;
    const p = this.#resolver.resolve(name).then(async (r) => {
      const ttl =
        r.kind === 'ok'
          ? Math.max(CACHE_MIN_TTL_S, Math.min(CACHE_MAX_TTL_S, r.ttl ?? CACHE_MIN_TTL_S))
          : r.kind === 'permanent'
            ? NEGATIVE_TTL_S
            : 0;
      if (ttl > 0) await this.#store.set(key, JSON.stringify(r), 'PX', ttl * 1000).catch(() => undefined);
      return r;
    });
    this.#inflight.set(name, p);
    try {
      return await p;
    } finally {
      this.#inflight.delete(name);
    }
  }
}
