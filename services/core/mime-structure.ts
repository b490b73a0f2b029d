/**
 * The MIME structure of a message as IMAP needs it — ENVELOPE, BODY, BODYSTRUCTURE and the header
 * fields SEARCH and SORT read — computed ONCE, while the body streams to the blob store at append,
 * and kept with the message's metadata so that those never load the body again.
 *
 * StructureBuilder is a streaming twin of services/imap/mime-tree.ts parseMessage: it takes the
 * message in chunks of any size, keeps only the header block of the entity being read and what is
 * needed to recognise boundary lines, and yields exactly the tree parseMessage would (same
 * boundary, header, default-type, depth and part-budget rules; header and content-type parsing is
 * mime-tree's own code). test/unit/imap-mime.test.ts checks the two against each other on the
 * torture fixtures in odd chunkings.
 *
 * Memory is bounded whatever the input: one entity's header (MAX_HEADER_BYTES), the prefix of the
 * current line when it may be a boundary, and the kept fields (MAX_STRUCTURE_BYTES). A message over
 * a cap gets no stored structure (null): IMAP then parses its body as it did before.
 *
 * Where it is kept: per message, as the field `st` of the message's hash in the user's
 * hash-tagged keys (scripts.ts), not once per body (in the blob's `{b:<sha>}` record or beside the
 * body). Measured (test/unit/mailbox-store.test.ts, MEMORY USAGE): a typical multipart/alternative
 * message encodes to about 450 bytes and its hash grows from about 520 to about 1,030 bytes. For
 * that, the structure is read by the same script as the rest of the row (one round trip per page
 * of 1,000, atomic, and no cross-slot reads on Redis Cluster, where a page would otherwise need a
 * read per message on other slots that ioredis cannot pipeline), it comes and goes with the message
 * (COPY/MOVE carry it, EXPUNGE and folder deletion drop it) with no tie to the asynchronous blob
 * collector that creates and drops the blob records, and a body stored before a structure was kept
 * needs no migration. Once per body would save memory only for a body filed for many local
 * recipients (one copy each here); the parse itself is done once per body anyway: on the delivery
 * path, on the one Return-Path copy shared by the recipients of an envelope.
 */
import { pb, encode, decode } from './codec.ts';
import {
  headerValue,
  isMessageRfc822,
  param,
  parseContentType,
  parseHeaders,
  transferEncoding,
} from '../imap/mime-tree.ts';
import type { ContentType, HeaderField, MimeLimits, MimeNode } from '../imap/mime-tree.ts';
import { DEFAULT_LIMITS } from '../imap/limits.ts';

/**
 * The parser limits structures are built with at append: the IMAP defaults. An IMAP server run
 * with other limits ignores stored structures and parses bodies (decodeStructure).
 */
export const STRUCTURE_LIMITS: Readonly<MimeLimits> = {
  maxMimeDepth: DEFAULT_LIMITS.maxMimeDepth,
  maxMimeParts: DEFAULT_LIMITS.maxMimeParts,
};

/** Largest header block of one entity that is read; a bigger one leaves the message unstructured. */
export const MAX_HEADER_BYTES = 256 * 1024;
/** Largest encoded structure kept per message (a few hundred bytes is typical). */
export const MAX_STRUCTURE_BYTES = 64 * 1024;

/**
 * The header fields kept: the ENVELOPE fields (RFC 9051 7.5.2), which are also those SEARCH and
 * SORT read (FROM, TO, CC, BCC, SUBJECT, sent dates), and the MIME fields BODYSTRUCTURE shows.
 * SEARCH HEADER of any other field, and TEXT/BODY, still read the body.
 */
export const KEPT_FIELDS: ReadonlySet<string> = new Set([
  'date',
  'subject',
  'from',
  'sender',
  'reply-to',
  'to',
  'cc',
  'bcc',
  'in-reply-to',
  'message-id',
  'content-id',
  'content-description',
  'content-transfer-encoding',
  'content-md5',
  'content-disposition',
  'content-language',
  'content-location',
]);

/** A header field as kept: lower-cased name, unfolded value. */
export interface Field {
  name: string;
  value: Buffer;
}

/** One entity of the structure, from a parsed message or from the stored encoding. */
export interface StructureNode {
  headers: readonly Field[];
  contentType: ContentType;
  children: readonly StructureNode[];
  message: StructureNode | null;
  /** Octets of the body. */
  size: number;
  /** Lines of the body (body-fld-lines). */
  lines(): number;
}

const LF = 0x0a;
const CR = 0x0d;
const DASH = 0x2d;
/** What JavaScript's trim() removes from a latin1 string (mime-tree's transport-padding test). */
const TRIMMED = new Set([0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0xa0]);

interface Entity {
  start: number;
  depth: number;
  inDigest: boolean;
  /** The header block while it is being read; null once the body started. */
  header: Buffer[] | null;
  headerLen: number;
  bodyStart: number;
  lfAtBodyStart: number;
  headers: Field[];
  contentType: ContentType;
  multipart: boolean;
  /** `--boundary` while this multipart is still being split. */
  delimiter: Buffer | null;
  /** Start of the current part, -1 before the first delimiter and after the closing one. */
  partStart: number;
  /** mime-tree's "ranges non-empty": the first delimiter was not the closing one. */
  hadPart: boolean;
  children: Entity[];
  message: Entity | null;
  size: number;
  lines: number;
}

class TooBig extends Error {}

/** Builds the structure of a message fed in chunks; `end()` gives the encoding, or null over a cap. */
export class StructureBuilder {
  readonly #limits: MimeLimits;
  #parts: number;
  readonly #stack: Entity[] = [];
  #root: Entity;
  #dead = false;
  /** Octets and LFs seen (octets: up to the chunk being read). */
  #offset = 0;
  #lfs = 0;
  /** The three octets before the chunk being read (oldest first), -1 for none. */
  #tail = [-1, -1, -1];
  /** Inside a line that cannot matter: a body line not starting with `--`, or any with no boundary open. */
  #skipping = false;
  /** The line being read in full (a header line or a possible delimiter); 0 when none. */
  #lineStart = 0;
  #lineLen = 0;
  #lfAtLine = 0;
  #tailAtLine = [-1, -1, -1];
  #prefix = Buffer.alloc(2);
  #prefixLen = 0;
  /** Octets of a line kept: the longest open `--boundary` and 2 (at least the 2 of a blank line). */
  #need = 2;
  #delimiters = false;
  #restBlank = true;
  #kept = 0;

  constructor(limits: MimeLimits) {
    this.#limits = limits;
    this.#parts = limits.maxMimeParts;
    this.#root = this.#open(0, 0, false);
  }

  /** Feeds the next octets of the message. */
  write(chunk: Uint8Array): void {
    if (this.#dead || chunk.byteLength === 0) return;
    const buf = Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const base = this.#offset;
    try {
      let pos = 0;
      while (pos < buf.length) {
        if (this.#skipping) {
          // Only the line count moves: one indexOf per line, nothing kept.
          const lf = buf.indexOf(LF, pos);
          if (lf < 0) break;
          this.#lfs++;
          pos = lf + 1;
          this.#skipping = false;
          continue;
        }
        if (this.#lineLen === 0) {
          const top = this.#stack[this.#stack.length - 1] as Entity;
          if (!top.header && (!this.#delimiters || buf[pos] !== DASH)) {
            this.#skipping = true;
            continue;
          }
          this.#startLine(buf, pos, base);
        }
        const lf = buf.indexOf(LF, pos);
        const stop = lf < 0 ? buf.length : lf + 1;
        this.#segment(buf, pos, stop);
        if (lf >= 0) this.#lineEnd(base + stop);
        pos = stop;
      }
    } catch (err) {
      if (!(err instanceof TooBig)) throw err;
      this.#abandon();
      return;
    }
    this.#offset = base + buf.length;
    const n = buf.length;
    this.#tail = [
      n >= 3 ? (buf[n - 3] as number) : n === 2 ? (this.#tail[2] as number) : (this.#tail[1] as number),
      n >= 2 ? (buf[n - 2] as number) : (this.#tail[2] as number),
      buf[n - 1] as number,
    ];
  }

  /** The encoded structure (pb.MimeStructure), or null when the message is over a cap. */
  end(): Buffer | null {
    if (this.#dead) return null;
    try {
      if (this.#lineLen > 0) this.#lineEnd(this.#offset);
      const last = this.#tail[2] ?? -1;
      while (this.#stack.length > 0) this.#closeTop(this.#offset, this.#lfs, last);
      const bytes = encode(pb.MimeStructure, {
        maxDepth: this.#limits.maxMimeDepth,
        maxParts: this.#limits.maxMimeParts,
        root: toPart(this.#root),
      });
      this.#abandon();
      return bytes.length <= MAX_STRUCTURE_BYTES ? Buffer.from(bytes) : null;
    } catch (err) {
      if (!(err instanceof TooBig)) throw err;
      this.#abandon();
      return null;
    }
  }

  #abandon(): void {
    this.#dead = true;
    this.#stack.length = 0;
    this.#prefix = Buffer.alloc(0);
  }

  #open(start: number, depth: number, inDigest: boolean): Entity {
    // mime-tree parseEntity: every entity entered takes one part from the budget.
    this.#parts--;
    const entity: Entity = {
      start,
      depth,
      inDigest,
      header: [],
      headerLen: 0,
      bodyStart: -1,
      lfAtBodyStart: 0,
      headers: [],
      contentType: { type: 'text', subtype: 'plain', params: [] },
      multipart: false,
      delimiter: null,
      partStart: -1,
      hadPart: false,
      children: [],
      message: null,
      size: 0,
      lines: 0,
    };
    this.#stack.push(entity);
    return entity;
  }

  /** A line read in full starts at buf[pos] (`base`: the offset of buf[0]). */
  #startLine(buf: Buffer, pos: number, base: number): void {
    const before = (k: number): number =>
      pos - k >= 0 ? (buf[pos - k] as number) : (this.#tail[3 + pos - k] ?? -1);
    this.#lineStart = base + pos;
    this.#lineLen = 0;
    this.#lfAtLine = this.#lfs;
    this.#tailAtLine = [before(3), before(2), before(1)];
    this.#prefixLen = 0;
    this.#restBlank = true;
  }

  /** After a change of the open entities: which boundaries can start a line, and how long. */
  #refresh(): void {
    let need = 2;
    let any = false;
    for (const e of this.#stack) {
      if (!e.delimiter) continue;
      any = true;
      need = Math.max(need, e.delimiter.length + 2);
    }
    this.#need = need;
    this.#delimiters = any;
    if (this.#prefix.length < need) this.#prefix = Buffer.alloc(need);
  }

  /** Octets [from, to) of `buf`, all in the current line. */
  #segment(buf: Buffer, from: number, to: number): void {
    const n = to - from;
    const top = this.#stack[this.#stack.length - 1] as Entity;
    if (top.header) {
      top.headerLen += n;
      if (top.headerLen > MAX_HEADER_BYTES) throw new TooBig();
      top.header.push(Buffer.from(buf.subarray(from, to)));
    }
    let at = from;
    if (this.#prefixLen < this.#need) {
      const take = Math.min(this.#need - this.#prefixLen, n);
      buf.copy(this.#prefix, this.#prefixLen, at, at + take);
      this.#prefixLen += take;
      at += take;
    }
    // Beyond the prefix only "is the rest transport padding" matters, and only for `--` lines.
    if (at < to && this.#restBlank && this.#prefix[0] === DASH && this.#prefix[1] === DASH) {
      for (let i = at; i < to; i++) {
        if (!TRIMMED.has(buf[i] as number)) {
          this.#restBlank = false;
          break;
        }
      }
    }
    this.#lineLen += n;
    if (buf[to - 1] === LF) this.#lfs++;
  }

  /** How the line matches a delimiter: 'close', 'part' or null (mime-tree splitMultipart). */
  #match(delimiter: Buffer): 'close' | 'part' | null {
    const d = delimiter.length;
    if (this.#lineLen < d || this.#prefix.compare(delimiter, 0, d, 0, d) !== 0) return null;
    const seen = Math.min(this.#prefixLen, this.#lineLen);
    if (seen >= d + 2 && this.#prefix[d] === DASH && this.#prefix[d + 1] === DASH) return 'close';
    // RFC 2046 5.1.1: only whitespace (transport padding) may follow the boundary.
    for (let i = d; i < seen; i++) if (!TRIMMED.has(this.#prefix[i] as number)) return null;
    return this.#restBlank ? 'part' : null;
  }

  /** The line read in full ends at offset `end`. */
  #lineEnd(end: number): void {
    this.#line(end);
    this.#lineLen = 0;
    this.#refresh();
  }

  #line(end: number): void {
    if (this.#prefix[0] === DASH && this.#prefix[1] === DASH) {
      // The outermost multipart whose boundary the line is wins: its part ends every entity inside.
      for (let k = 0; k < this.#stack.length; k++) {
        const m = this.#stack[k] as Entity;
        if (!m.delimiter) continue;
        const kind = this.#match(m.delimiter);
        if (kind) {
          this.#delimiter(k, kind);
          return;
        }
      }
    }
    const top = this.#stack[this.#stack.length - 1] as Entity;
    if (!top.header) return;
    const blank =
      (this.#lineLen === 1 && this.#prefix[0] === LF) ||
      (this.#lineLen === 2 && this.#prefix[0] === CR && this.#prefix[1] === LF);
    if (blank) this.#finishHeader(top, end, this.#lfs, false);
  }

  /** A delimiter line of the multipart at stack index k. */
  #delimiter(k: number, kind: 'close' | 'part'): void {
    const m = this.#stack[k] as Entity;
    const at = this.#lineStart;
    const before = (back: number): number => this.#tailAtLine[3 - back] ?? -1;
    if (m.partStart >= 0) {
      // The line break before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
      let end = at;
      let lfs = this.#lfAtLine;
      if (end > m.partStart && before(1) === LF) {
        end--;
        lfs--;
      }
      if (end > m.partStart && before(at - end + 1) === CR) end--;
      const last = end > 0 ? before(at - end + 1) : -1;
      while (this.#stack.length > k + 1) this.#closeTop(end, lfs, last);
    }
    if (kind === 'close') {
      m.delimiter = null;
      m.partStart = -1;
      return;
    }
    m.hadPart = true;
    m.partStart = at + this.#lineLen;
    if (this.#parts <= 0) {
      // mime-tree: parts past the budget are not parsed, nor any later one.
      m.delimiter = null;
      return;
    }
    m.children.push(this.#open(m.partStart, m.depth + 1, m.contentType.subtype === 'digest'));
  }

  /** The header of `e` ends: its body starts at `bodyStart` (`closing`: the entity ends there too). */
  #finishHeader(e: Entity, bodyStart: number, lfs: number, closing: boolean): void {
    const block = Buffer.concat(e.header ?? []).subarray(0, Math.max(0, bodyStart - e.start));
    e.header = null;
    e.bodyStart = bodyStart;
    e.lfAtBodyStart = lfs;
    const all: HeaderField[] = parseHeaders(block);
    e.headers = [];
    for (const h of all) {
      if (!KEPT_FIELDS.has(h.name)) continue;
      this.#kept += h.name.length + h.value.length + 4;
      if (this.#kept > MAX_STRUCTURE_BYTES) throw new TooBig();
      // A copy: the value may be a view of the whole header block, which is let go now.
      e.headers.push({ name: h.name, value: Buffer.from(h.value) });
    }
    const declared = parseContentType(headerValue(all, 'content-type'));
    const fallback: ContentType = e.inDigest
      ? { type: 'message', subtype: 'rfc822', params: [] }
      : { type: 'text', subtype: 'plain', params: [['charset', Buffer.from('US-ASCII')]] };
    e.contentType = declared ?? fallback;
    e.contentType.params = e.contentType.params.map(([k, v]): [string, Buffer] => [k, Buffer.from(v)]);
    for (const [name, value] of e.contentType.params) {
      this.#kept += name.length + value.length + 4;
      if (this.#kept > MAX_STRUCTURE_BYTES) throw new TooBig();
    }
    const tooDeep = e.depth >= this.#limits.maxMimeDepth || this.#parts <= 0;
    if (e.contentType.type === 'multipart') {
      e.multipart = true;
      const boundary = param(e.contentType, 'boundary');
      if (boundary && !tooDeep && !closing) e.delimiter = Buffer.from('--' + boundary, 'latin1');
      if (e.delimiter && e.delimiter.length + 2 > MAX_HEADER_BYTES) throw new TooBig();
    } else if (
      isMessageRfc822(e.contentType) &&
      !tooDeep &&
      isIdentity(transferEncoding({ headers: all } as MimeNode))
    ) {
      // RFC 2046 5.2.1: the body is a message of its own.
      e.message = this.#open(bodyStart, e.depth + 1, false);
    }
  }

  /** Closes the innermost open entity at `end` (`lfs` LFs before it, `last` the octet before it). */
  #closeTop(end: number, lfs: number, last: number): void {
    const e = this.#stack[this.#stack.length - 1] as Entity;
    if (e.start > end) e.start = end;
    if (e.header) {
      this.#finishHeader(e, end, lfs, true);
      // An encapsulated message opened now is empty; it ends here too.
      if (e.message && this.#stack[this.#stack.length - 1] === e.message) this.#closeTop(end, lfs, last);
    }
    this.#stack.pop();
    if (e.bodyStart > end) e.bodyStart = end;
    e.size = end - e.bodyStart;
    e.lines = e.size === 0 ? 0 : lfs - e.lfAtBodyStart + (last === LF ? 0 : 1);
    if (e.multipart && !e.hadPart) {
      // A multipart without a usable boundary or over the limits is opaque data (mime-tree).
      e.contentType = { type: 'application', subtype: 'octet-stream', params: [] };
      e.multipart = false;
    }
  }
}

function isIdentity(encoding: string): boolean {
  return encoding === '7bit' || encoding === '8bit' || encoding === 'binary';
}

type PbPart = NonNullable<ConstructorParameters<typeof pb.MimePart>[0]>;

function toPart(e: Entity): PbPart {
  return {
    type: e.contentType.type,
    subtype: e.contentType.subtype,
    params: e.contentType.params.map(([name, value]) => ({ name, value })),
    headers: e.headers.map((h) => ({ name: h.name, value: h.value })),
    size: e.size,
    lines: e.lines,
    parts: e.children.map(toPart),
    message: e.message ? toPart(e.message) : null,
  };
}

/** The structure of a whole message held in memory (a small APPEND). */
export function structureOf(body: Uint8Array, limits: MimeLimits = STRUCTURE_LIMITS): Buffer | null {
  const b = new StructureBuilder(limits);
  b.write(body);
  return b.end();
}

/**
 * Passes a body stream through unchanged while building its structure: `result()` is the
 * structure once the stream has been read to its end.
 */
export function withStructure(
  source: AsyncIterable<Uint8Array>,
  limits: MimeLimits = STRUCTURE_LIMITS,
): { body: AsyncIterable<Uint8Array>; result: () => Buffer | null } {
  const builder = new StructureBuilder(limits);
  let result: Buffer | null = null;
  async function* body(): AsyncIterable<Uint8Array> {
    for await (const chunk of source) {
      builder.write(chunk);
      yield chunk;
    }
    result = builder.end();
  }
  return { body: body(), result: () => result };
}

function bytes(v: Uint8Array | null | undefined): Buffer {
  return v ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : Buffer.alloc(0);
}

function fromPart(p: PbPart): StructureNode {
  const lines = Number(p.lines ?? 0);
  return {
    headers: (p.headers ?? []).map((h) => ({ name: h.name ?? '', value: bytes(h.value) })),
    contentType: {
      type: p.type ?? '',
      subtype: p.subtype ?? '',
      params: (p.params ?? []).map((f): [string, Buffer] => [f.name ?? '', bytes(f.value)]),
    },
    children: (p.parts ?? []).map(fromPart),
    message: p.message ? fromPart(p.message) : null,
    size: Number(p.size ?? 0),
    lines: () => lines,
  };
}

/**
 * The stored structure as a tree, or null when there is none, it does not decode, or it was built
 * under other parser limits than `limits` (then the caller parses the body, as before).
 */
export function decodeStructure(bytes: Uint8Array | undefined, limits: MimeLimits): StructureNode | null {
  if (!bytes || bytes.length === 0) return null;
  let s: InstanceType<typeof pb.MimeStructure>;
  try {
    s = decode(pb.MimeStructure, bytes);
  } catch {
    return null;
  }
  if (s.maxDepth !== limits.maxMimeDepth || s.maxParts !== limits.maxMimeParts || !s.root) return null;
  return fromPart(s.root);
}

/** A structure received from a peer: kept only if it decodes and is within the size cap. */
export function checkStructure(bytes: Uint8Array | null | undefined): Buffer | null {
  if (!bytes || bytes.length === 0 || bytes.length > MAX_STRUCTURE_BYTES) return null;
  try {
    const s = decode(pb.MimeStructure, bytes);
    return s.root ? Buffer.from(bytes) : null;
  } catch {
    return null;
  }
}
