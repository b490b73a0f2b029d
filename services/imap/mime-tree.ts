/**
 * The MIME structure of a message as byte offsets into its raw bytes, for BODYSTRUCTURE,
 * ENVELOPE, body sections and SEARCH. Pure; bounded by depth and part count.
 *
 * RFC 2045/2046: headers end at the first empty line; a multipart body is split on lines
 * `--boundary` (the line break before a delimiter belongs to the delimiter), `--boundary--`
 * closes it; a message/rfc822 body is itself a message. Bare LF line ends are tolerated.
 */

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const TAB = 0x09;
const COLON = 0x3a;

/** One header field: the raw bytes of all its lines, and its unfolded value. */
export interface HeaderField {
  /** Lower-cased field name. */
  name: string;
  /** The field as it is in the message, folded lines and final line break included. */
  raw: Buffer;
  /** The value after the colon, unfolded and trimmed; bytes as in the message. */
  value: Buffer;
}

export interface ContentType {
  /** Lower-cased, e.g. `text`. */
  type: string;
  /** Lower-cased, e.g. `plain`. */
  subtype: string;
  /** Parameters in order: lower-cased name, value unquoted but otherwise as in the message. */
  params: Array<[string, Buffer]>;
}

export interface MimeNode {
  /** Offsets into the whole message: [start, bodyStart) is the header, [bodyStart, end) the body. */
  start: number;
  bodyStart: number;
  end: number;
  headers: HeaderField[];
  contentType: ContentType;
  /** Parts of a multipart entity. */
  children: MimeNode[];
  /** The encapsulated message of a message/rfc822 entity. */
  message: MimeNode | null;
}

export interface MimeLimits {
  maxMimeDepth: number;
  maxMimeParts: number;
}

export interface ParsedMessage {
  raw: Buffer;
  root: MimeNode;
}

/** Parses a whole message. */
export function parseMessage(raw: Buffer, limits: MimeLimits): ParsedMessage {
  const budget = { parts: limits.maxMimeParts, depth: limits.maxMimeDepth };
  return { raw, root: parseEntity(raw, 0, raw.length, false, 0, budget) };
}

/** Rough heap cost of one parsed header field or node (objects, views, name string). */
const PARSED_ITEM_BYTES = 320;

/**
 * What a parsed message costs in memory, for caches: its bytes plus its parsed fields and parts.
 * A message of 100 000 short header lines is 2.6 MiB of bytes but ~30 MiB parsed.
 */
export function parsedWeight(msg: ParsedMessage): number {
  let items = 0;
  const stack: MimeNode[] = [msg.root];
  for (let node = stack.pop(); node; node = stack.pop()) {
    items += 1 + node.headers.length;
    stack.push(...node.children);
    if (node.message) stack.push(node.message);
  }
  return msg.raw.length + items * PARSED_ITEM_BYTES;
}

function parseEntity(
  raw: Buffer,
  start: number,
  end: number,
  inDigest: boolean,
  depth: number,
  budget: { parts: number; depth: number },
): MimeNode {
  budget.parts--;
  const bodyStart = findBodyStart(raw, start, end);
  const headers = parseHeaders(raw.subarray(start, bodyStart));
  const declared = parseContentType(headerValue(headers, 'content-type'));
  const defaultType: ContentType = inDigest
    ? { type: 'message', subtype: 'rfc822', params: [] }
    : { type: 'text', subtype: 'plain', params: [['charset', Buffer.from('US-ASCII')]] };
  let contentType = declared ?? defaultType;
  const node: MimeNode = { start, bodyStart, end, headers, contentType, children: [], message: null };
  const tooDeep = depth >= budget.depth || budget.parts <= 0;

  if (contentType.type === 'multipart') {
    const boundary = param(contentType, 'boundary');
    const ranges = boundary && !tooDeep ? splitMultipart(raw, bodyStart, end, boundary) : [];
    if (ranges.length === 0) {
      // A multipart without a usable boundary or over the limits is treated as opaque data.
      contentType = { type: 'application', subtype: 'octet-stream', params: [] };
      node.contentType = contentType;
      return node;
    }
    const digest = contentType.subtype === 'digest';
    for (const [s, e] of ranges) {
      if (budget.parts <= 0) break;
      node.children.push(parseEntity(raw, s, e, digest, depth + 1, budget));
    }
  } else if (isMessageRfc822(contentType) && !tooDeep && isIdentityEncoding(headers)) {
    node.message = parseEntity(raw, bodyStart, end, false, depth + 1, budget);
  }
  return node;
}

/** message/rfc822 (and the RFC 6532 message/global) carry a message to parse. */
export function isMessageRfc822(ct: ContentType): boolean {
  return ct.type === 'message' && (ct.subtype === 'rfc822' || ct.subtype === 'global');
}

/** RFC 2046 5.2.1: an encapsulated message may not be encoded beyond 7bit/8bit/binary. */
function isIdentityEncoding(headers: HeaderField[]): boolean {
  const cte = headerValue(headers, 'content-transfer-encoding');
  if (!cte) return true;
  const value = cte.toString('latin1').trim().toLowerCase();
  return value === '7bit' || value === '8bit' || value === 'binary';
}

/** Offset just after the empty line that ends the header, or `end` if there is none. */
function findBodyStart(raw: Buffer, start: number, end: number): number {
  let lineStart = start;
  while (lineStart < end) {
    if (raw[lineStart] === LF) return lineStart + 1;
    if (raw[lineStart] === CR && raw[lineStart + 1] === LF) return lineStart + 2;
    const lf = raw.indexOf(LF, lineStart);
    if (lf < 0 || lf >= end) return end;
    lineStart = lf + 1;
  }
  return end;
}

/** Splits a header block into fields; continuation lines start with SP or TAB. */
export function parseHeaders(block: Buffer): HeaderField[] {
  const fields: HeaderField[] = [];
  let pos = 0;
  let current: { start: number; end: number } | null = null;
  const flush = (): void => {
    if (!current) return;
    const raw = block.subarray(current.start, current.end);
    const colon = raw.indexOf(COLON);
    if (colon > 0) {
      const name = raw.subarray(0, colon).toString('latin1').trim().toLowerCase();
      fields.push({ name, raw, value: unfold(raw.subarray(colon + 1)) });
    }
    current = null;
  };
  while (pos < block.length) {
    const lf = block.indexOf(LF, pos);
    const next = lf < 0 ? block.length : lf + 1;
    const isBlank = next - pos <= 2 && (block[pos] === LF || (block[pos] === CR && block[pos + 1] === LF));
    if (isBlank) break;
    const first = block[pos];
    if (current && (first === SP || first === TAB)) {
      current.end = next;
    } else {
      flush();
      current = { start: pos, end: next };
    }
    pos = next;
  }
  flush();
  return fields;
}

/** RFC 5322 2.2.3: unfolding removes the CRLF before whitespace; then trim. */
function unfold(value: Buffer): Buffer {
  let s = 0;
  let e = value.length;
  const blank = (b: number | undefined): boolean => b === SP || b === TAB || b === CR || b === LF;
  while (s < e && blank(value[s])) s++;
  while (e > s && blank(value[e - 1])) e--;
  // Most fields are one line: a view of the message's own bytes, no copy (a message of 100 000
  // header lines would otherwise hold 100 000 small buffers in the parsed-message cache).
  const trimmed = value.subarray(s, e);
  if (!trimmed.includes(CR) && !trimmed.includes(LF)) return trimmed;
  // A Buffer, not an array of numbers: a header field can be megabytes long.
  const out = Buffer.alloc(value.length);
  let n = 0;
  for (let i = 0; i < value.length; i++) {
    const b = value[i] as number;
    if (b !== CR && b !== LF) out[n++] = b;
  }
  s = 0;
  e = n;
  while (s < e && (out[s] === SP || out[s] === TAB)) s++;
  while (e > s && (out[e - 1] === SP || out[e - 1] === TAB)) e--;
  return out.subarray(s, e);
}

/** The first field of that name, or null. */
export function headerValue(headers: readonly HeaderField[], name: string): Buffer | null {
  const field = headers.find((h) => h.name === name);
  return field ? field.value : null;
}

export function param(ct: ContentType, name: string): string | null {
  const found = ct.params.find(([k]) => k === name);
  return found ? found[1].toString('latin1') : null;
}

/** Lines `--boundary`: returns the [start, end) range of each part. */
function splitMultipart(raw: Buffer, start: number, end: number, boundary: string): Array<[number, number]> {
  const delimiter = Buffer.from('--' + boundary, 'latin1');
  const ranges: Array<[number, number]> = [];
  let partStart = -1;
  let pos = start;
  // Searches stop at the entity's end, not the message's: a thousand nested parts whose
  // boundary never comes would otherwise each scan the rest of the message.
  const region = raw.subarray(0, end);
  while (pos < end) {
    const at = region.indexOf(delimiter, pos);
    if (at < 0 || at + delimiter.length > end) break;
    const atLineStart = at === start || raw[at - 1] === LF;
    if (!atLineStart) {
      // Look for the line end only at a line start: a long line full of `--boundary` would
      // otherwise be scanned to its end once per occurrence (quadratic time).
      pos = at + delimiter.length;
      continue;
    }
    const lf = region.indexOf(LF, at);
    const lineEnd = lf < 0 ? end : lf + 1;
    const rest = raw.subarray(at + delimiter.length, lineEnd).toString('latin1');
    const closing = rest.startsWith('--');
    // RFC 2046 5.1.1: only whitespace (transport padding) may follow the boundary.
    if (!closing && rest.trim() !== '') {
      pos = lineEnd;
      continue;
    }
    if (partStart >= 0) {
      let partEnd = at;
      // The line break before the delimiter is part of the delimiter.
      if (partEnd > partStart && raw[partEnd - 1] === LF) partEnd--;
      if (partEnd > partStart && raw[partEnd - 1] === CR) partEnd--;
      ranges.push([partStart, Math.max(partStart, partEnd)]);
    }
    if (closing) {
      partStart = -1;
      break;
    }
    partStart = lineEnd;
    pos = lineEnd;
  }
  if (partStart >= 0) ranges.push([partStart, end]);
  return ranges;
}

// ---------------------------------------------------------------------------------------------
// Structured header values (RFC 2045 5.1 content-type, RFC 2183 disposition)

interface Token {
  kind: 'token' | 'quoted' | 'special';
  text: string;
}

/** Tokenises a MIME header value; comments are dropped (RFC 2045 5.1 allows them). */
function tokenize(value: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < value.length) {
    const ch = value[i] as string;
    if (ch === ' ' || ch === '\t') {
      i++;
    } else if (ch === '(') {
      let depth = 0;
      while (i < value.length) {
        const c = value[i];
        if (c === '\\') i++;
        else if (c === '(') depth++;
        else if (c === ')' && --depth === 0) {
          i++;
          break;
        }
        i++;
      }
    } else if (ch === '"') {
      let text = '';
      i++;
      while (i < value.length && value[i] !== '"') {
        if (value[i] === '\\' && i + 1 < value.length) i++;
        text += value[i];
        i++;
      }
      i++;
      tokens.push({ kind: 'quoted', text });
    } else if (';=/'.includes(ch)) {
      tokens.push({ kind: 'special', text: ch });
      i++;
    } else {
      let text = '';
      while (i < value.length && !' \t();=/"'.includes(value[i] as string)) text += value[i++];
      tokens.push({ kind: 'token', text });
    }
  }
  return tokens;
}

/** `value; a=b; c="d"` → the value and its parameters (bytes kept: the input is latin1). */
export function parseStructured(raw: Buffer): { value: string; params: Array<[string, Buffer]> } {
  const tokens = tokenize(raw.toString('latin1'));
  let value = '';
  let i = 0;
  while (i < tokens.length && !(tokens[i]?.kind === 'special' && tokens[i]?.text === ';')) {
    value += tokens[i]?.text ?? '';
    i++;
  }
  const params: Array<[string, Buffer]> = [];
  while (i < tokens.length) {
    // at ';'
    i++;
    const name = tokens[i];
    const isEnd = (t: Token | undefined): boolean =>
      t === undefined || (t.kind === 'special' && t.text === ';');
    if (name?.kind === 'token' && tokens[i + 1]?.text === '=' && tokens[i + 1]?.kind === 'special') {
      let j = i + 2;
      let text = '';
      const first = tokens[j];
      if (first?.kind === 'quoted') {
        text = first.text;
        j++;
      } else {
        // Unquoted values with `/` or `=` (invalid but common) run to the next `;`.
        while (j < tokens.length && !isEnd(tokens[j])) text += tokens[j++]?.text ?? '';
      }
      params.push([name.text.toLowerCase(), Buffer.from(text, 'latin1')]);
      i = j;
    }
    while (i < tokens.length && !(tokens[i]?.kind === 'special' && tokens[i]?.text === ';')) i++;
  }
  return { value, params };
}

/** Content-Type, or null when absent or malformed (RFC 2045 5.2: then text/plain applies). */
export function parseContentType(raw: Buffer | null): ContentType | null {
  if (!raw) return null;
  const { value, params } = parseStructured(raw);
  const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\/([!#$%&'*+\-.^_`|~0-9A-Za-z]+)$/.exec(value);
  if (!m) return null;
  return { type: (m[1] as string).toLowerCase(), subtype: (m[2] as string).toLowerCase(), params };
}

// ---------------------------------------------------------------------------------------------
// Sections

/** The header bytes of an entity (including the empty line that ends it). */
export function headerBytes(msg: ParsedMessage, node: MimeNode): Buffer {
  return msg.raw.subarray(node.start, node.bodyStart);
}

/** The body bytes of an entity. */
export function bodyBytes(msg: ParsedMessage, node: MimeNode): Buffer {
  return msg.raw.subarray(node.bodyStart, node.end);
}

/**
 * The entity a section part path names (RFC 9051 6.4.5): numbers index the parts of a
 * multipart; a message/rfc822 part is entered first; `1` of a non-multipart is its body.
 */
export function findPart(root: MimeNode, path: readonly number[]): MimeNode | null {
  let node = root;
  for (const n of path) {
    if (node !== root && node.message) node = node.message;
    if (node.children.length > 0) {
      const child = node.children[n - 1];
      if (!child) return null;
      node = child;
    } else if (n !== 1) {
      return null;
    }
  }
  return node;
}

/** HEADER.FIELDS / HEADER.FIELDS.NOT: the matching fields, then the empty line. */
export function filterHeader(
  headers: readonly HeaderField[],
  names: readonly string[],
  not: boolean,
): Buffer {
  const wanted = new Set(names.map((n) => n.toLowerCase()));
  const out = headers.filter((h) => wanted.has(h.name) !== not).map((h) => ensureLineEnd(h.raw));
  out.push(Buffer.from('\r\n'));
  return Buffer.concat(out);
}

function ensureLineEnd(raw: Buffer): Buffer {
  if (raw.length > 0 && raw[raw.length - 1] === LF) return raw;
  return Buffer.concat([raw, Buffer.from('\r\n')]);
}

/** Lines of a body for BODYSTRUCTURE (body-fld-lines). */
export function countLines(body: Buffer): number {
  if (body.length === 0) return 0;
  let lines = 0;
  let pos = body.indexOf(LF);
  while (pos >= 0) {
    lines++;
    pos = body.indexOf(LF, pos + 1);
  }
  return body[body.length - 1] === LF ? lines : lines + 1;
}

// ---------------------------------------------------------------------------------------------
// Decoding, for BINARY and SEARCH

/** Content-Transfer-Encoding, lower-cased (`7bit` when absent). */
export function transferEncoding(node: MimeNode): string {
  const cte = headerValue(node.headers, 'content-transfer-encoding');
  return cte ? cte.toString('latin1').trim().toLowerCase() : '7bit';
}

/** Decodes a body from its transfer encoding; null for an unknown encoding. */
export function decodeTransfer(body: Buffer, encoding: string): Buffer | null {
  switch (encoding) {
    case '7bit':
    case '8bit':
    case 'binary':
      return body;
    case 'base64':
      return Buffer.from(body.toString('latin1').replace(/[^A-Za-z0-9+/]/g, ''), 'base64');
    case 'quoted-printable':
      return decodeQuotedPrintable(body);
    default:
      return null;
  }
}

/** RFC 2045 6.7. */
function decodeQuotedPrintable(body: Buffer): Buffer {
  const out = Buffer.alloc(body.length);
  let o = 0;
  let i = 0;
  const hex = (c: number | undefined): number => {
    if (c === undefined) return -1;
    if (c >= 0x30 && c <= 0x39) return c - 0x30;
    if (c >= 0x41 && c <= 0x46) return c - 0x37;
    if (c >= 0x61 && c <= 0x66) return c - 0x57;
    return -1;
  };
  while (i < body.length) {
    const c = body[i] as number;
    if (c !== 0x3d) {
      out[o++] = c;
      i++;
      continue;
    }
    const h = hex(body[i + 1]);
    const l = hex(body[i + 2]);
    if (h >= 0 && l >= 0) {
      out[o++] = h * 16 + l;
      i += 3;
      continue;
    }
    // Soft line break: `=` then optional whitespace then the line break.
    let j = i + 1;
    while (body[j] === SP || body[j] === TAB) j++;
    if (body[j] === CR && body[j + 1] === LF) {
      i = j + 2;
    } else if (body[j] === LF) {
      i = j + 1;
    } else {
      out[o++] = c;
      i++;
    }
  }
  return out.subarray(0, o);
}

/** Text in a charset → string; unknown charsets fall back to UTF-8. */
export function decodeCharset(bytes: Buffer, charset: string | null): string {
  const label = (charset ?? 'utf-8').trim().toLowerCase();
  try {
    return new TextDecoder(label === 'us-ascii' ? 'utf-8' : label).decode(bytes);
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    return new TextDecoder('utf-8').decode(bytes);
  }
}

/** The decoded text of every text part (and of encapsulated messages), for SEARCH BODY. */
export function bodyText(msg: ParsedMessage, node: MimeNode = msg.root): string {
  if (node.children.length > 0) return node.children.map((child) => bodyText(msg, child)).join('\n');
  if (node.message) {
    const inner = node.message;
    return decodeCharset(headerBytes(msg, inner), 'utf-8') + '\n' + bodyText(msg, inner);
  }
  if (node.contentType.type !== 'text') return '';
  const decoded = decodeTransfer(bodyBytes(msg, node), transferEncoding(node));
  return decoded ? decodeCharset(decoded, param(node.contentType, 'charset')) : '';
}
