/**
 * Output framing of multi-line responses (RFC 1939 section 3): every line ends with CRLF, a line
 * that starts with "." gets one more "." (byte-stuffing), and the response ends with ".\r\n".
 */

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const CRLF = Buffer.from('\r\n');
const STUFFED_DOT = Buffer.from('.');
const TERMINATOR = Buffer.from('.\r\n');

/**
 * Encodes a message body, streamed in chunks of any size, as a multi-line response.
 *
 * State carries across chunks, so a "." that starts a chunk is stuffed exactly when the previous
 * chunk ended a line, and a CR at the end of a chunk is paired with an LF at the start of the next.
 * Line ends are normalized to CRLF: a bare LF or a bare CR is sent as CRLF.
 *
 * With `maxBodyLines` (TOP, RFC 1939 section 7) the output stops after the header, the empty
 * line that ends it, and that many lines of the body; `done` then tells the reader to stop.
 */
export class DotStuffer {
  readonly #maxBodyLines: number | null;
  #atLineStart = true;
  #pendingCR = false;
  #lineOctets = 0;
  #inHeader = true;
  #bodyLines = 0;
  #done = false;

  constructor(maxBodyLines: number | null = null) {
    this.#maxBodyLines = maxBodyLines;
    if (maxBodyLines !== null && (!Number.isInteger(maxBodyLines) || maxBodyLines < 0)) {
      throw new RangeError('maxBodyLines must be a non-negative integer');
    }
  }

  /** True once TOP has sent all the lines it was asked for: read no more of the body. */
  get done(): boolean {
    return this.#done;
  }

  /** Encodes one chunk of the body. */
  push(chunk: Uint8Array): Buffer {
    // Most stored mail is already in wire form (CRLF line ends, no line starting with "."): then
    // the chunk goes out as it is, found by native scans instead of a loop over every byte.
    if (this.#maxBodyLines === null && !this.#pendingCR && isWireForm(chunk, this.#atLineStart)) {
      if (chunk.length > 0) {
        const lastLF = chunk.lastIndexOf(LF);
        this.#atLineStart = lastLF === chunk.length - 1;
        this.#lineOctets = lastLF < 0 ? this.#lineOctets + chunk.length : chunk.length - (lastLF + 1);
      }
      return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    }
    const out: Uint8Array[] = [];
    let start = 0;
    let i = 0;
    for (; i < chunk.length && !this.#done; i++) {
      const byte = chunk[i];
      if (this.#pendingCR) {
        this.#pendingCR = false;
        out.push(CRLF);
        this.#endLine();
        if (byte === LF) {
          start = i + 1;
          continue;
        }
        // A bare CR ended the line; this byte starts the next one.
        if (this.#done) break;
      }
      if (byte === CR || byte === LF) {
        if (i > start) out.push(chunk.subarray(start, i));
        start = i + 1;
        if (byte === CR) {
          this.#pendingCR = true;
        } else {
          out.push(CRLF);
          this.#endLine();
        }
        continue;
      }
      if (this.#atLineStart && byte === DOT) {
        // The stuffed dot goes out before the line's own dot, which stays in the slice.
        if (i > start) out.push(chunk.subarray(start, i));
        out.push(STUFFED_DOT);
        start = i;
      }
      this.#atLineStart = false;
      this.#lineOctets++;
    }
    if (i > start) out.push(chunk.subarray(start, i));
    return Buffer.concat(out);
  }

  /** Ends the response: closes an unterminated last line, then the "." line. */
  end(): Buffer {
    if (this.#pendingCR || !this.#atLineStart) {
      this.#pendingCR = false;
      this.#atLineStart = true;
      return Buffer.concat([CRLF, TERMINATOR]);
    }
    return Buffer.from(TERMINATOR);
  }

  #endLine(): void {
    const empty = this.#lineOctets === 0;
    this.#atLineStart = true;
    this.#lineOctets = 0;
    if (this.#maxBodyLines === null) return;
    if (this.#inHeader) {
      // RFC 1939 section 7 (TOP): the header, the blank line that ends it, then n body lines.
      if (empty) {
        this.#inHeader = false;
        if (this.#maxBodyLines === 0) this.#done = true;
      }
      return;
    }
    this.#bodyLines++;
    if (this.#bodyLines >= this.#maxBodyLines) this.#done = true;
  }
}

/**
 * True when a chunk needs no change: every LF is preceded by a CR, every CR is followed by an LF
 * within the chunk, and no line starts with "." (the first one included when `atLineStart`).
 */
function isWireForm(chunk: Uint8Array, atLineStart: boolean): boolean {
  if (chunk.length === 0) return true;
  if (atLineStart && chunk[0] === DOT) return false;
  for (let pos = 0; ;) {
    const lf = chunk.indexOf(LF, pos);
    const cr = chunk.indexOf(CR, pos);
    // No more line ends: the rest is a partial line, which must not hold a CR.
    if (lf < 0) return cr < 0;
    // The first CR from here must be the one right before this LF (no bare CR, no bare LF).
    if (lf === pos || cr !== lf - 1) return false;
    pos = lf + 1;
    if (pos === chunk.length) return true;
    if (chunk[pos] === DOT) return false;
  }
}

/** Encodes short in-memory lines (CAPA, LIST, UIDL) as the body of a multi-line response. */
export function stuffLine(line: string): string {
  return line.startsWith('.') ? `.${line}\r\n` : `${line}\r\n`;
}
