/** E-mail address helpers. Domains are compared lowercased; hosted local parts are case-insensitive. */

export interface ParsedAddress {
  local: string;
  domain: string;
}

/** Splits at the last '@' (a quoted local part may contain '@'). Returns null for an address without a domain. */
export function parseAddress(address: string): ParsedAddress | null {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return null;
  return {
    local: address.slice(0, at),
    domain: address
      .slice(at + 1)
      .toLowerCase()
      .replace(/\.$/, ''),
  };
}

/** Canonical form of a hosted address: the key of its user. */
export function canonicalAddress(address: string): string {
  const p = parseAddress(address.trim());
  if (!p) return address.trim().toLowerCase();
  return `${p.local.toLowerCase()}@${p.domain}`;
}

export function domainOf(address: string): string {
  return parseAddress(address)?.domain ?? '';
}

/** A NATS-subject-safe token for a user (addresses contain '.', which separates subject tokens). */
export function userToken(user: string): string {
  return Buffer.from(canonicalAddress(user)).toString('base64url');
}
