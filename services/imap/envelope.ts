/**
 * FETCH ENVELOPE (RFC 9051 7.5.2): date, subject, from, sender, reply-to, to, cc, bcc,
 * in-reply-to and message-id, from the message header. Pure.
 *
 * The strings are the header bytes as they are (unfolded): RFC 2047 encoded words are not
 * decoded, 8-bit bytes stay 8-bit and are then sent as literals. Addresses are
 * `(name adl mailbox host)`; a group is `(NIL NIL "name" NIL)` … `(NIL NIL NIL NIL)`.
 */
import type { ImapValue } from './response.ts';

/** A header field as ENVELOPE needs it: lower-cased name, unfolded value (mime-tree or stored). */
export interface EnvelopeField {
  name: string;
  value: Buffer;
}

/** The first field of that name, or null (as mime-tree headerValue). */
function headerValue(headers: readonly EnvelopeField[], name: string): Buffer | null {
  const field = headers.find((h) => h.name === name);
  return field ? field.value : null;
}

interface Token {
  kind: 'atom' | 'quoted' | 'comment' | 'literal' | 'special';
  /** Atom text, quoted-string content (unescaped), comment content, or the special character. */
  text: string;
  /** The token as written (quoted strings keep their quotes). */
  raw: string;
}

const SPECIALS = '<>,:;@';

/** RFC 5322 3.2: atoms, quoted strings, comments, domain literals and specials; `.` joins atoms. */
function tokenize(value: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < value.length) {
    const ch = value[i] as string;
    if (ch === ' ' || ch === '\t' || ch === '\r' || ch === '\n') {
      i++;
    } else if (ch === '"') {
      const start = i;
      let text = '';
      i++;
      while (i < value.length && value[i] !== '"') {
        if (value[i] === '\\' && i + 1 < value.length) i++;
        text += value[i];
        i++;
      }
      i++;
      tokens.push({ kind: 'quoted', text, raw: value.slice(start, i) });
    } else if (ch === '(') {
      const start = i;
      let depth = 0;
      let text = '';
      while (i < value.length) {
        const c = value[i] as string;
        if (c === '\\' && i + 1 < value.length) {
          text += value[i + 1];
          i += 2;
          continue;
        }
        if (c === '(') depth++;
        if (c === ')') depth--;
        if (depth > 1 || (depth === 1 && c !== '(')) text += c;
        i++;
        if (depth === 0) break;
      }
      tokens.push({ kind: 'comment', text, raw: value.slice(start, i) });
    } else if (ch === '[') {
      const end = value.indexOf(']', i);
      const stop = end < 0 ? value.length : end + 1;
      tokens.push({ kind: 'literal', text: value.slice(i, stop), raw: value.slice(i, stop) });
      i = stop;
    } else if (SPECIALS.includes(ch)) {
      tokens.push({ kind: 'special', text: ch, raw: ch });
      i++;
    } else {
      const start = i;
      while (i < value.length && !` \t\r\n"(<>,:;@[`.includes(value[i] as string)) i++;
      tokens.push({ kind: 'atom', text: value.slice(start, i), raw: value.slice(start, i) });
    }
  }
  return tokens;
}

/** One envelope address: name, source route (always NIL), mailbox, host. */
type Address = [string | null, null, string | null, string | null];

function isSpecial(token: Token | undefined, ch: string): boolean {
  return token !== undefined && token.kind === 'special' && token.text === ch;
}

/** RFC 5322 phrase: words joined by single spaces, quotes removed; comments dropped. */
function phrase(tokens: readonly Token[]): string | null {
  const words = tokens.filter((t) => t.kind === 'atom' || t.kind === 'quoted').map((t) => t.text);
  const text = words.join(' ').trim();
  return text === '' ? null : text;
}

/** `local@domain` → mailbox and host; a missing domain is marked as RFC 3501 clients expect. */
function splitAddress(spec: string): [string, string] | null {
  const cleaned = spec.trim();
  if (cleaned === '') return null;
  const at = cleaned.lastIndexOf('@');
  if (at < 0) return [cleaned, 'MISSING_DOMAIN'];
  return [cleaned.slice(0, at) || 'MISSING_MAILBOX', cleaned.slice(at + 1) || 'MISSING_DOMAIN'];
}

class AddressParser {
  readonly #tokens: Token[];
  #i = 0;
  readonly out: Address[] = [];

  constructor(tokens: Token[]) {
    this.#tokens = tokens;
  }

  list(inGroup: boolean): void {
    while (this.#i < this.#tokens.length) {
      const token = this.#tokens[this.#i];
      if (isSpecial(token, ',')) {
        this.#i++;
      } else if (isSpecial(token, ';')) {
        if (inGroup) return;
        this.#i++;
      } else {
        this.#item(inGroup);
      }
    }
  }

  #item(inGroup: boolean): void {
    const tokens = this.#tokens;
    const start = this.#i;
    let j = start;
    while (
      j < tokens.length &&
      !isSpecial(tokens[j], '<') &&
      !isSpecial(tokens[j], ':') &&
      !isSpecial(tokens[j], ',') &&
      !isSpecial(tokens[j], ';')
    ) {
      j++;
    }
    const stop = tokens[j];
    if (isSpecial(stop, ':') && !inGroup) {
      // RFC 5322 3.4 group: display-name ":" [group-list] ";"
      this.out.push([null, null, phrase(tokens.slice(start, j)) ?? '', null]);
      this.#i = j + 1;
      this.list(true);
      if (isSpecial(tokens[this.#i], ';')) this.#i++;
      this.out.push([null, null, null, null]);
      return;
    }
    if (isSpecial(stop, '<')) {
      let k = j + 1;
      while (k < tokens.length && !isSpecial(tokens[k], '>')) k++;
      let spec = tokens
        .slice(j + 1, k)
        .filter((t) => t.kind !== 'comment')
        .map((t) => t.raw)
        .join('');
      // RFC 5322 4.4 obs-route `@a,@b:` before the address is dropped.
      const colon = spec.lastIndexOf(':');
      if (colon >= 0) spec = spec.slice(colon + 1);
      let name = phrase(tokens.slice(start, j));
      this.#i = k + 1;
      while (
        this.#i < tokens.length &&
        !isSpecial(tokens[this.#i], ',') &&
        !isSpecial(tokens[this.#i], ';')
      ) {
        const t = tokens[this.#i] as Token;
        if (name === null && t.kind === 'comment' && t.text.trim() !== '') name = t.text.trim();
        this.#i++;
      }
      this.#push(name, spec);
      return;
    }
    // A bare addr-spec, perhaps with a comment holding the name: `a@b (Name)`.
    const part = tokens.slice(start, j);
    const spec = part
      .filter((t) => t.kind !== 'comment')
      .map((t) => t.raw)
      .join('');
    const comments = part.filter((t) => t.kind === 'comment' && t.text.trim() !== '');
    const name = comments.length > 0 ? (comments[comments.length - 1] as Token).text.trim() : null;
    this.#i = j === start ? j + 1 : j;
    this.#push(name, spec);
  }

  #push(name: string | null, spec: string): void {
    const split = splitAddress(spec);
    if (split) this.out.push([name, null, split[0], split[1]]);
  }
}

/** An address header value → the envelope's address list, NIL when there are no addresses. */
export function addressList(value: Buffer | null): ImapValue {
  if (!value || value.length === 0) return null;
  const parser = new AddressParser(tokenize(value.toString('latin1')));
  parser.list(false);
  if (parser.out.length === 0) return null;
  return parser.out.map((address) =>
    address.map((part) => (part === null ? null : Buffer.from(part, 'latin1'))),
  );
}

function nstring(value: Buffer | null): ImapValue {
  return value && value.length > 0 ? value : null;
}

/** The ENVELOPE of a message or of an encapsulated message/rfc822. */
export function envelope(headers: readonly EnvelopeField[]): ImapValue {
  const from = addressList(headerValue(headers, 'from'));
  const sender = addressList(headerValue(headers, 'sender'));
  const replyTo = addressList(headerValue(headers, 'reply-to'));
  return [
    nstring(headerValue(headers, 'date')),
    nstring(headerValue(headers, 'subject')),
    from,
    // RFC 9051 7.5.2: absent or empty Sender and Reply-To default to From.
    sender ?? from,
    replyTo ?? from,
    addressList(headerValue(headers, 'to')),
    addressList(headerValue(headers, 'cc')),
    addressList(headerValue(headers, 'bcc')),
    nstring(headerValue(headers, 'in-reply-to')),
    nstring(headerValue(headers, 'message-id')),
  ];
}
