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
        if (this.#buf.length > this.#maxLine) {
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
    const out: Buffer[] = [];
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
          out.push(Buffer.from(head));
          pos = buf.length - keep;
          this.#lineStart = false;
        }
        this.#buf = buf.subarray(pos);
        return out.length > 0 ? { kind: 'data', data: Buffer.concat(out) } : null;
      }
      const hasCr = lf > pos && buf[lf - 1] === CR;
      let content = buf.subarray(pos, hasCr ? lf - 1 : lf);
      pos = lf + 1;
      if (this.#lineStart && hasCr && content.length === 1 && content[0] === DOT) {
        this.#buf = buf.subarray(pos);
        this.#mode = 'line';
        if (out.length > 0) {
          // Give back the end marker so the next call reports it after this data.
          this.#buf = Buffer.concat([Buffer.from('.\r\n'), this.#buf]);
          this.#mode = 'data';
          this.#lineStart = true;
          return { kind: 'data', data: Buffer.concat(out) };
        }
        return { kind: 'dataEnd' };
      }
      if (this.#lineStart && content[0] === DOT) content = content.subarray(1);
      out.push(Buffer.from(content), CRLF);
      this.#lineStart = true;
    }
  }

  #nextChunk(): Frame | null {
    if (this.#chunkLeft === 0) {
      this.#mode = 'line';
      return { kind: 'chunkEnd' };
    }
    if (this.#buf.length === 0) return null;
    const n = Math.min(this.#chunkLeft, this.#buf.length);
    const data = Buffer.from(this.#buf.subarray(0, n));
    this.#buf = this.#buf.subarray(n);
    this.#chunkLeft -= n;
    return { kind: 'chunk', data };
  }
}
