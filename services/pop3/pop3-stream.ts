/**
 * Input framing of a POP3 connection: bytes → lines. No parsing, no I/O policy.
 *
 * RFC 1939 section 3: commands end with CRLF. A bare LF is tolerated as a line end (some clients
 * send it), and the CR of a CRLF is never part of the line. Lines are bounded (RFC 2449 section 4:
 * 255 octets for a command); an overlong line is consumed up to its end without being kept and is
 * reported as such, so the session can answer -ERR and go on with the next line. A line still
 * without its end when the input ends is never a command (a half-received QUIT must not delete).
 */
import { Writable } from 'node:stream';

const LF = 0x0a;
const CR = 0x0d;

/** One framed unit of input. */
export type Frame =
  | { kind: 'line'; line: Buffer }
  /** A line longer than the limit in force; `octets` counts it with its terminator. */
  | { kind: 'overlong'; octets: number };

/**
 * Splits bytes into lines. Pull-based: the caller pushes chunks and asks for the next frame with
 * the line limit that applies *now* (after a SASL challenge, the next line may be longer than a
 * command), so the limit always matches the state the line will be read in.
 */
export class LineFramer {
  #pending: Buffer = Buffer.alloc(0);
  /** Octets of an overlong line already thrown away, or -1 when not inside one. */
  #discarded = -1;

  /** Bytes held for a line not yet complete (never more than the largest limit asked for). */
  get buffered(): number {
    return this.#pending.length;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#pending = this.#pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.#pending, chunk]);
  }

  /** Drops everything buffered (RFC 2595 section 4: plaintext received before TLS is not trusted). */
  reset(): void {
    this.#pending = Buffer.alloc(0);
    this.#discarded = -1;
  }

  /** The next complete frame, or null when more bytes are needed. `maxOctets` counts the terminator. */
  next(maxOctets: number): Frame | null {
    if (this.#discarded >= 0) {
      const end = this.#pending.indexOf(LF);
      if (end < 0) {
        this.#discarded += this.#pending.length;
        this.#pending = Buffer.alloc(0);
        return null;
      }
      const octets = this.#discarded + end + 1;
      this.#pending = this.#pending.subarray(end + 1);
      this.#discarded = -1;
      return { kind: 'overlong', octets };
    }
    const end = this.#pending.indexOf(LF);
    if (end < 0) {
      // Not even the LF fits any more: the line is overlong whatever comes next.
      if (this.#pending.length + 1 > maxOctets) {
        this.#discarded = this.#pending.length;
        this.#pending = Buffer.alloc(0);
      }
      return null;
    }
    const octets = end + 1;
    const rest = this.#pending.subarray(end + 1);
    if (octets > maxOctets) {
      this.#pending = rest;
      return { kind: 'overlong', octets };
    }
    const stop = end > 0 && this.#pending[end - 1] === CR ? end - 1 : end;
    // Copy, so the line does not keep the whole chunk it came in alive.
    const line = Buffer.from(this.#pending.subarray(0, stop));
    this.#pending = rest;
    return { kind: 'line', line };
  }
}

/** Handles one frame; the next frame is not read before the returned promise settles. */
export type FrameHandler = (frame: Frame) => Promise<void>;

/**
 * A Writable the socket is piped into. Frames are handed to the handler one at a time and the
 * next chunk is not accepted before they are all handled, so a pipelining client (RFC 2449
 * section 6.6) gets its replies in order, and a client that writes faster than the server answers
 * is slowed by TCP back-pressure instead of filling memory.
 */
export class Pop3Stream extends Writable {
  readonly #framer = new LineFramer();
  readonly #handler: FrameHandler;
  readonly #maxOctets: () => number;
  #stopped = false;

  constructor(handler: FrameHandler, maxOctets: () => number) {
    super({ decodeStrings: true });
    this.#handler = handler;
    this.#maxOctets = maxOctets;
  }

  /** Stops handing out frames and drops whatever is buffered (QUIT, STLS, teardown). */
  stop(): void {
    this.#stopped = true;
    this.#framer.reset();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.#stopped) {
      callback();
      return;
    }
    this.#framer.push(chunk);
    this.#drain().then(() => callback(), callback);
  }

  async #drain(): Promise<void> {
    while (!this.#stopped) {
      const frame = this.#framer.next(this.#maxOctets());
      if (!frame) return;
      await this.#handler(frame);
    }
  }
}
