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
  | { kind: 'ok'; hosts: MxTarget[] }
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

  async #addresses(host: string): Promise<string[]> {
    const [v4, v6] = await Promise.allSettled([this.#resolver.resolve4(host), this.#resolver.resolve6(host)]);
    const out: string[] = [];
    if (v4.status === 'fulfilled') out.push(...v4.value);
    if (v6.status === 'fulfilled') out.push(...v6.value);
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
          const addresses = await this.#addresses(domain);
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
        const addresses = await this.#addresses(r.exchange);
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
