/**
 * Mailbox names on the wire: modified UTF-7 (RFC 3501 5.1.3), INBOX case-insensitivity
 * (RFC 9051 5.1) and LIST wildcards (RFC 9051 6.3.9). Pure.
 */

/** Hierarchy delimiter of folder names, as the store keeps them. */
export const DELIMITER = '/';

/** RFC 3501 5.1.3: printable US-ASCII except `&` stands for itself. */
function isDirect(code: number): boolean {
  return code >= 0x20 && code <= 0x7e && code !== 0x26;
}

/** Unicode name → modified UTF-7. */
export function encodeMailboxName(name: string): string {
  let out = '';
  let i = 0;
  while (i < name.length) {
    const code = name.charCodeAt(i);
    if (code === 0x26) {
      out += '&-';
      i++;
    } else if (isDirect(code)) {
      out += name[i];
      i++;
    } else {
      let j = i;
      while (j < name.length && !isDirect(name.charCodeAt(j)) && name.charCodeAt(j) !== 0x26) j++;
      const utf16 = Buffer.alloc((j - i) * 2);
      for (let k = i; k < j; k++) utf16.writeUInt16BE(name.charCodeAt(k), (k - i) * 2);
      out += '&' + utf16.toString('base64').replace(/=+$/, '').replace(/\//g, ',') + '-';
      i = j;
    }
  }
  return out;
}

/** Modified UTF-7 → Unicode; text that is not valid modified UTF-7 is returned unchanged. */
export function decodeMailboxName(wire: string): string {
  if (!wire.includes('&')) return wire;
  let out = '';
  let i = 0;
  while (i < wire.length) {
    const amp = wire.indexOf('&', i);
    if (amp < 0) {
      out += wire.slice(i);
      break;
    }
    out += wire.slice(i, amp);
    const dash = wire.indexOf('-', amp + 1);
    if (dash < 0) return wire;
    const encoded = wire.slice(amp + 1, dash);
    if (encoded === '') {
      out += '&';
    } else {
      if (!/^[A-Za-z0-9+,]+$/.test(encoded)) return wire;
      const bytes = Buffer.from(encoded.replace(/,/g, '/'), 'base64');
      if (bytes.length % 2 !== 0) return wire;
      for (let k = 0; k < bytes.length; k += 2) out += String.fromCharCode(bytes.readUInt16BE(k));
    }
    i = dash + 1;
  }
  return out;
}

/**
 * A mailbox name as received (astring bytes) → the store's name. Compliant clients send
 * modified UTF-7; some send raw UTF-8, which is taken as it is. INBOX in any case is INBOX.
 */
export function mailboxNameFromWire(bytes: Buffer): string {
  const hasEightBit = bytes.some((b) => b >= 0x80);
  const name = hasEightBit ? bytes.toString('utf8') : decodeMailboxName(bytes.toString('latin1'));
  return normalizeInbox(name);
}

/** RFC 9051 5.1: `INBOX` is case-insensitive, also as the first level of a hierarchy. */
export function normalizeInbox(name: string): string {
  if (name.toUpperCase() === 'INBOX') return 'INBOX';
  if (name.slice(0, 6).toUpperCase() === 'INBOX' + DELIMITER) return 'INBOX' + name.slice(5);
  return name;
}

/**
 * Compiles a LIST pattern (reference already joined): `*` matches anything, `%` anything
 * but the delimiter (RFC 9051 6.3.9).
 *
 * Matched by simulating the pattern's states over the name, in time linear in the name for a
 * given pattern: a regular expression such as `^.*a.*a.*a.*b$` backtracks exponentially, and
 * a client could have one LIST hold the event loop of every session on the server.
 */
export function listMatcher(pattern: string): (name: string) => boolean {
  // One token per code point; a run of wildcards is one `*` if it holds one, else one `%`.
  const tokens: string[] = [];
  for (const ch of normalizeInbox(pattern)) {
    const last = tokens[tokens.length - 1];
    if ((ch === '*' || ch === '%') && (last === '*' || last === '%')) {
      if (ch === '*') tokens[tokens.length - 1] = '*';
      continue;
    }
    tokens.push(ch);
  }
  const n = tokens.length;
  const wild = tokens.map((t) => t === '*' || t === '%');
  /** A wildcard may match nothing: its state also stands for the next one. */
  const close = (states: Uint8Array): void => {
    for (let i = 0; i < n; i++) if (states[i] && wild[i]) states[i + 1] = 1;
  };
  return (name: string) => {
    let current = new Uint8Array(n + 1);
    let next = new Uint8Array(n + 1);
    current[0] = 1;
    close(current);
    for (const ch of name) {
      next.fill(0);
      let alive = false;
      for (let i = 0; i < n; i++) {
        if (!current[i]) continue;
        const token = tokens[i];
        if (token === '*' || (token === '%' && ch !== DELIMITER)) {
          next[i] = 1;
          alive = true;
        } else if (token === ch) {
          next[i + 1] = 1;
          alive = true;
        }
      }
      if (!alive) return false;
      close(next);
      [current, next] = [next, current];
    }
    return current[n] === 1;
  };
}
