/**
 * Server responses: values → wire bytes, and the outcomes handlers return.
 *
 * RFC 9051 4.3: a string is sent quoted when it can be (7-bit, no CR/LF/NUL, `"` and `\`
 * escaped), otherwise as a literal `{n}\r\n` followed by its octets. 8-bit text is always a
 * literal since UTF8=ACCEPT is not offered. Pure.
 */

const CRLF = Buffer.from('\r\n');
/** Quoted strings longer than this go as literals: easier on clients' line buffers. */
const MAX_QUOTED = 1024;

/** Text sent as it is: atoms, flags, section labels, response codes. */
export class Raw {
  readonly text: string;
  constructor(text: string) {
    this.text = text;
  }
}

/** Octets always sent as a literal (message bodies); `binary` uses literal8 (RFC 3516). */
export class Literal {
  readonly data: Buffer;
  readonly binary: boolean;
  constructor(data: Buffer, binary = false) {
    this.data = data;
    this.binary = binary;
  }
}

/** A literal whose octets are streamed from storage; `size` must be exact. */
export class StreamLiteral {
  readonly size: number;
  readonly source: AsyncIterable<Uint8Array>;
  constructor(size: number, source: AsyncIterable<Uint8Array>) {
    this.size = size;
    this.source = source;
  }
}

/** Items written one after another with no space between (the parts of a multipart BODYSTRUCTURE). */
export class Joined {
  readonly items: readonly ImapValue[];
  constructor(items: readonly ImapValue[]) {
    this.items = items;
  }
}

/** A value of a response: `null` is NIL, arrays are parenthesised lists, strings are quoted or literal. */
export type ImapValue =
  null | number | string | Buffer | Raw | Literal | StreamLiteral | Joined | readonly ImapValue[];

/** What goes on the wire: bytes, and bodies streamed from storage. */
export type OutputPart = Buffer | StreamLiteral;

export function atom(text: string): Raw {
  return new Raw(text);
}

/** Whether `bytes` can be a quoted string. */
function quotable(bytes: Buffer): boolean {
  if (bytes.length > MAX_QUOTED) return false;
  for (const b of bytes) if (b === 0 || b === 0x0a || b === 0x0d || b >= 0x80) return false;
  return true;
}

/** Collects output parts, merging adjacent bytes. */
class Writer {
  readonly parts: OutputPart[] = [];
  #pending: Buffer[] = [];
  /** Text (latin1) not yet turned into bytes: one Buffer per run of text, not one per token. */
  #text = '';

  bytes(data: Buffer | string): void {
    if (typeof data === 'string') {
      this.#text += data;
      return;
    }
    this.#takeText();
    this.#pending.push(data);
  }

  #takeText(): void {
    if (this.#text.length > 0) {
      this.#pending.push(Buffer.from(this.#text, 'latin1'));
      this.#text = '';
    }
  }

  stream(part: StreamLiteral): void {
    this.flush();
    this.parts.push(part);
  }

  flush(): void {
    this.#takeText();
    if (this.#pending.length > 0) {
      this.parts.push(
        this.#pending.length === 1 ? (this.#pending[0] as Buffer) : Buffer.concat(this.#pending),
      );
      this.#pending = [];
    }
  }
}

function writeString(w: Writer, bytes: Buffer): void {
  if (quotable(bytes)) {
    w.bytes('"');
    w.bytes(bytes.includes(0x22) || bytes.includes(0x5c) ? escapeQuoted(bytes) : bytes);
    w.bytes('"');
  } else {
    w.bytes(`{${bytes.length}}\r\n`);
    w.bytes(bytes);
  }
}

function escapeQuoted(bytes: Buffer): Buffer {
  const out: number[] = [];
  for (const b of bytes) {
    if (b === 0x22 || b === 0x5c) out.push(0x5c);
    out.push(b);
  }
  return Buffer.from(out);
}

function writeValue(w: Writer, value: ImapValue): void {
  if (value === null) w.bytes('NIL');
  else if (typeof value === 'number') w.bytes(String(value));
  else if (typeof value === 'string') writeString(w, Buffer.from(value, 'utf8'));
  else if (Buffer.isBuffer(value)) writeString(w, value);
  else if (value instanceof Raw) w.bytes(value.text);
  else if (value instanceof Literal) {
    // RFC 3516 4.2: literal8 only when the data holds NUL, which a plain literal may not.
    w.bytes(`${value.binary && value.data.includes(0) ? '~' : ''}{${value.data.length}}\r\n`);
    w.bytes(value.data);
  } else if (value instanceof StreamLiteral) {
    w.bytes(`{${value.size}}\r\n`);
    w.stream(value);
  } else if (value instanceof Joined) {
    for (const item of value.items) writeValue(w, item);
  } else {
    w.bytes('(');
    writeList(w, value);
    w.bytes(')');
  }
}

function writeList(w: Writer, values: readonly ImapValue[]): void {
  values.forEach((item, i) => {
    if (i > 0) w.bytes(' ');
    writeValue(w, item);
  });
}

/** One response line: `prefix` then the values separated by spaces, then CRLF. */
export function responseLine(prefix: string, values: readonly ImapValue[] = []): OutputPart[] {
  const w = new Writer();
  w.bytes(prefix);
  if (values.length > 0) {
    if (prefix !== '') w.bytes(' ');
    writeList(w, values);
  }
  w.bytes(CRLF);
  w.flush();
  return w.parts;
}

/** The wire form of a single value (tests, labels). */
export function serializeValue(value: ImapValue): Buffer {
  const w = new Writer();
  writeValue(w, value);
  w.flush();
  return Buffer.concat(w.parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.alloc(0))));
}

// ---------------------------------------------------------------------------------------------
// Outcomes

export type Status = 'OK' | 'NO' | 'BAD';

/** What a command handler returns: the tagged status, response code and text. */
export interface Outcome {
  status: Status;
  /** Response code without brackets, e.g. `READ-WRITE`, `COPYUID 9 1:2 5:6`. */
  code?: string;
  text: string;
  /** Runs once the tagged response is written (STARTTLS negotiation, LOGOUT close). */
  after?: () => Promise<void>;
}

export function ok(text: string, code?: string): Outcome {
  return code === undefined ? { status: 'OK', text } : { status: 'OK', code, text };
}

export function no(text: string, code?: string): Outcome {
  return code === undefined ? { status: 'NO', text } : { status: 'NO', code, text };
}

export function bad(text: string, code?: string): Outcome {
  return code === undefined ? { status: 'BAD', text } : { status: 'BAD', code, text };
}

/** Response text is a free-form line: no CR/LF, and kept to 7-bit so every client can show it. */
export function safeText(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?').slice(0, 200);
}

/** `tag STATUS [CODE] text`, or untagged with tag `*`. */
export function statusLine(
  tag: string,
  status: Status | 'BYE' | 'PREAUTH',
  text: string,
  code?: string,
): Buffer {
  const codePart = code ? `[${code}] ` : '';
  return Buffer.from(`${tag} ${status} ${codePart}${safeText(text)}\r\n`, 'latin1');
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 9051 9 date-time: `"17-Jul-1996 02:44:25 +0000"`, given in UTC. */
export function formatInternalDate(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number): string => String(n).padStart(2, '0');
  return (
    `${pad(d.getUTCDate())}-${MONTHS[d.getUTCMonth()]}-${d.getUTCFullYear()} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`
  );
}
