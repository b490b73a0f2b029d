/**
 * Framing of an SMTP server connection: bytes in, frames out, no I/O. The session chooses the mode
 * after each command, so pipelined bytes (RFC 2920) that follow a DATA or BDAT command are read in
 * the right mode.
 *
 *  - line mode: command lines ending in CRLF (a bare LF is tolerated, RFC 5321 2.3.8 lets a server
 *    accept it), capped at `maxLine` octets; a longer line is reported once and skipped.
 *  - data mode (RFC 5321 4.1.1.4): the body up to CRLF "." CRLF, dot-unstuffed (4.5.2), with every
 *    line end written as CRLF. Only CRLF "." CRLF ends the body: "." after a bare LF does not, so a
 *    client cannot smuggle a second message past another server's idea of the end (CVE-2023-51764).
 *  - chunk mode (RFC 3030 2): exactly n octets, taken as they are.
 */

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const CRLF = Buffer.from('\r\n');
/**
 * Body octets per frame: lines are gathered up to this size, so that a client sending its body
 * in tiny TCP segments does not make one buffer (and its ~100 octets of overhead) per line.
 */
const DATA_FRAME = 16 * 1024;

export type Frame =
  | { kind: 'line'; line: Buffer }
  | { kind: 'lineTooLong' }
  | { kind: 'data'; data: Buffer }
  | { kind: 'dataEnd' }
  | { kind: 'chunk'; data: Buffer }
  | { kind: 'chunkEnd' };

export type Mode = 'line' | 'data' | 'chunk';

export class SmtpStream {
  #buf: Buffer = Buffer.alloc(0);
  #mode: Mode = 'line';
  /** Skipping the rest of an over-long command line. */
  #skipping = false;
  /** In data mode: the next byte starts a line (a dot there is special). */
  #lineStart = true;
  /** In chunk mode: octets of the chunk still to come. */
  #chunkLeft = 0;
  /** Body octets (data or chunk mode) waiting to go out in one frame; allocated while a body comes. */
  #data: Buffer | null = null;
  #dataLength = 0;
  readonly #maxLine: number;
  readonly #maxDataLine: number;

  constructor(maxLine: number, maxDataLine = 64 * 1024) {
    this.#maxLine = maxLine;
    this.#maxDataLine = maxDataLine;
  }

  get mode(): Mode {
    return this.#mode;
  }

  /** Bytes received and not yet framed (pipelined input waiting for its turn). */
  get buffered(): number {
    return this.#buf.length;
  }

  push(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
  }

  /** Reads the body of a DATA command next. */
  expectData(): void {
    this.#mode = 'data';
    this.#lineStart = true;
  }

  /** Reads exactly `size` octets of a BDAT chunk next. */
  expectChunk(size: number): void {
    this.#mode = 'chunk';
    this.#chunkLeft = size;
  }

  /** Drops whatever is buffered (after STARTTLS, RFC 3207 4.2: no plaintext may carry over). */
  discard(): number {
    const n = this.#buf.length;
    this.#buf = Buffer.alloc(0);
    return n;
  }

  /** The next complete frame, or null until more bytes arrive. */
  next(): Frame | null {
    if (this.#mode === 'chunk') return this.#nextChunk();
    if (this.#mode === 'data') return this.#nextData();
    return this.#nextLine();
  }

  #nextLine(): Frame | null {
    for (;;) {
      const lf = this.#buf.indexOf(LF);
      if (lf < 0) {
        // + 1: the CR of a line of exactly maxLine octets may arrive before its LF.
        if (this.#buf.length > this.#maxLine + 1) {
          this.#buf = Buffer.alloc(0);
          if (this.#skipping) return null;
          this.#skipping = true;
          return { kind: 'lineTooLong' };
        }
        return null;
      }
      const line = this.#buf.subarray(0, lf > 0 && this.#buf[lf - 1] === CR ? lf - 1 : lf);
      this.#buf = this.#buf.subarray(lf + 1);
      if (this.#skipping) {
        this.#skipping = false;
        continue;
      }
      if (line.length > this.#maxLine) return { kind: 'lineTooLong' };
      return { kind: 'line', line: Buffer.from(line) };
    }
  }

  #nextData(): Frame | null {
    let pos = 0;
    const buf = this.#buf;
    for (;;) {
      const lf = buf.indexOf(LF, pos);
      if (lf < 0) {
        // An unfinished line: hold it unless it is long, then pass its head on (a dot at the start
        // of a line is only special when the line is complete, so unstuff it now).
        if (buf.length - pos > this.#maxDataLine) {
          let head = buf.subarray(pos);
          // Keep a trailing CR: it may be the first half of a CRLF.
          const keep = head[head.length - 1] === CR ? 1 : 0;
          head = head.subarray(0, head.length - keep);
          if (this.#lineStart && head[0] === DOT) head = head.subarray(1);
          this.#buf = buf.subarray(buf.length - keep);
          this.#lineStart = false;
          return { kind: 'data', data: Buffer.concat([this.#takeData(), head]) };
        }
        this.#buf = buf.subarray(pos);
        return null;
      }
      const hasCr = lf > pos && buf[lf - 1] === CR;
      let content = buf.subarray(pos, hasCr ? lf - 1 : lf);
      if (this.#lineStart && hasCr && content.length === 1 && content[0] === DOT) {
        if (this.#dataLength > 0) {
          // The data first; the end marker stays for the next call.
          this.#buf = buf.subarray(pos);
          return { kind: 'data', data: this.#takeData() };
        }
        this.#buf = buf.subarray(lf + 1);
        this.#mode = 'line';
        this.#data = null;
        return { kind: 'dataEnd' };
      }
      if (this.#lineStart && content[0] === DOT) content = content.subarray(1);
      if (this.#dataLength + content.length + 2 > DATA_FRAME) {
        if (this.#dataLength > 0) {
          // Full: hand the frame out; this line is read again by the next call.
          this.#buf = buf.subarray(pos);
          return { kind: 'data', data: this.#takeData() };
        }
        // A line longer than a frame goes out on its own.
        this.#buf = buf.subarray(lf + 1);
        this.#lineStart = true;
        return { kind: 'data', data: Buffer.concat([content, CRLF]) };
      }
      this.#addData(content);
      this.#addData(CRLF);
      pos = lf + 1;
      this.#lineStart = true;
    }
  }

  #nextChunk(): Frame | null {
    if (this.#chunkLeft === 0) {
      if (this.#dataLength > 0) return { kind: 'chunk', data: this.#takeData() };
      this.#mode = 'line';
      this.#data = null;
      return { kind: 'chunkEnd' };
    }
    if (this.#buf.length === 0) return null;
    const n = Math.min(this.#chunkLeft, this.#buf.length);
    const data = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    this.#chunkLeft -= n;
    if (n >= DATA_FRAME && this.#dataLength === 0) return { kind: 'chunk', data: Buffer.from(data) };
    if (this.#dataLength + n > DATA_FRAME) {
      const out = Buffer.concat([this.#takeData(), data]);
      return { kind: 'chunk', data: out };
    }
    this.#addData(data);
    if (this.#dataLength >= DATA_FRAME || this.#chunkLeft === 0)
      return { kind: 'chunk', data: this.#takeData() };
    return null;
  }

  /** Body octets held until a frame's worth has come: input in tiny pieces still makes few buffers. */
  #addData(bytes: Buffer): void {
    this.#data ??= Buffer.allocUnsafe(DATA_FRAME);
    bytes.copy(this.#data, this.#dataLength);
    this.#dataLength += bytes.length;
  }

  #takeData(): Buffer {
    const out = Buffer.from(this.#data?.subarray(0, this.#dataLength) ?? []);
    this.#dataLength = 0;
    return out;
  }
}
