/**
 * The per-domain delivery policy table (DELIVERY_POLICY) and the smarthost (DELIVERY_SMARTHOST).
 *
 * Entries are `<domain>:<rule>`, `*` for every domain; rules: `require-tls` (STARTTLS must
 * succeed), `verify-tls` (and the certificate must be valid for the MX name, as an MTA-STS
 * "enforce" policy demands, RFC 8461 4.2), `smarthost` (relay through DELIVERY_SMARTHOST),
 * `direct` (never the smarthost, overriding `*:smarthost`).
 */
import { ConfigError } from '../core/config.ts';
import type { Endpoint } from './smtp-client.ts';

export interface DomainPolicy {
  requireTls: boolean;
  verifyTls: boolean;
  smarthost: boolean;
}

const RULES = ['require-tls', 'verify-tls', 'smarthost', 'direct'] as const;

export function parsePolicies(entries: string[]): Map<string, Set<string>> {
  const table = new Map<string, Set<string>>();
  for (const e of entries) {
    const i = e.lastIndexOf(':');
    const domain = e.slice(0, i).trim().toLowerCase();
    const rule = e
      .slice(i + 1)
      .trim()
      .toLowerCase();
    if (i <= 0 || !(RULES as readonly string[]).includes(rule)) {
      throw new ConfigError(
        `DELIVERY_POLICY: expected <domain>:<${RULES.join('|')}>, got ${JSON.stringify(e)}`,
      );
    }
    const set = table.get(domain) ?? new Set<string>();
    set.add(rule);
    table.set(domain, set);
  }
  return table;
}

/** The domain's own rules, else the `*` rules. */
export function policyFor(table: Map<string, Set<string>>, domain: string): DomainPolicy {
  const rules = table.get(domain.toLowerCase()) ?? table.get('*') ?? new Set<string>();
  const all = table.get('*') ?? new Set<string>();
  const smarthost = rules.has('smarthost') || (all.has('smarthost') && !rules.has('direct'));
  return {
    requireTls: rules.has('require-tls') || rules.has('verify-tls'),
    verifyTls: rules.has('verify-tls'),
    smarthost,
  };
}

/**
 * `smtp://[user:pass@]host[:port][?verify=false]` (port 587, STARTTLS required) or `smtps://…`
 * (port 465, implicit TLS). The certificate is verified unless `verify=false`.
 */
export function parseSmarthost(raw: string): Endpoint | null {
  if (!raw) return null;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new ConfigError(
      `DELIVERY_SMARTHOST: expected smtp://[user:pass@]host[:port], got ${JSON.stringify(raw)}`,
    );
  }
  if (u.protocol !== 'smtp:' && u.protocol !== 'smtps:') {
    throw new ConfigError(
      `DELIVERY_SMARTHOST: expected an smtp:// or smtps:// URL, got ${JSON.stringify(raw)}`,
    );
  }
  const secure = u.protocol === 'smtps:';
  const host = u.hostname.replace(/^\[|\]$/g, '');
  return {
    address: host,
    host,
    port: Number(u.port) || (secure ? 465 : 587),
    secure,
    tls: u.searchParams.get('verify') === 'false' ? 'required' : 'verify',
    auth: u.username
      ? { user: decodeURIComponent(u.username), pass: decodeURIComponent(u.password) }
      : undefined,
  };
}
