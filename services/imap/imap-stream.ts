/**
 * IMAP command framing: bytes from the client → whole commands (line segments and literals).
 *
 * RFC 9051 4.3 / RFC 3501 4.3: a literal is announced by `{n}` at the very end of a line; the
 * n octets that follow the CRLF are data, after which the command line continues. With a
 * synchronising literal `{n}` the client waits for a `+` continuation; with a non-synchronising
 * literal `{n+}` (RFC 7888 LITERAL+) it sends the data at once.
 *
 * Every size is bounded (limits.ts). A command over a bound is not buffered: its bytes are
 * skipped up to its end and it is reported as a rejection, so the session can answer BAD and
 * carry on. The one case where that is impossible — a non-synchronising literal too large to
 * skip — is fatal and the connection must close.
 *
 * No I/O and no parsing beyond the literal markers: the session feeds bytes in any chunking.
 */
import type { ImapLimits } from './limits.ts';

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const RIGHT_BRACE = 0x7d;

/** `{123}` or `{123+}` (optionally after `~` for literal8) at the end of a line. */
const LITERAL_MARKER = /\{(\d{1,20})(\+?)\}$/;

/** Bytes of the command start kept for the tag of a rejected command. */
const HEAD_BYTES = 64;
/** Bytes of a skipped line's end kept to detect its literal marker. */
const TAIL_BYTES = 32;

/** One whole command. `segments[i]` for i < literals.length ends with the marker of `literals[i]`. */
export interface Frame {
  segments: Buffer[];
  literals: Buffer[];
  /** Indexes of literals handed to a sink as they arrived; their entry in `literals` is empty. */
  streamed?: number[];
}

/** Where a streamed literal's octets go (see ImapStreamHandlers.streamLiteral). */
export interface LiteralSink {
  /** Takes octets; false asks the caller to stop reading the socket for a while. */
  write(chunk: Buffer): boolean;
  end(): void;
  /** The command will not complete. */
  abort(reason: string): void;
}

export type RejectReason = 'lineTooLong' | 'literalTooBig' | 'tooManyLiterals' | 'commandTooBig';

/** A command that was skipped because it broke a limit. */
export interface Rejection {
  reason: RejectReason;
  /** The command's tag if its first bytes carried one. */
  tag: string | null;
  /** The command name if its first bytes carried one (e.g. to answer APPEND with NO [TOOBIG]). */
  command: string | null;
  /** A literal of the command had been streamed to a sink before it was rejected. */
  streamed?: true;
}

export interface ImapStreamHandlers {
  /** A whole command arrived. */
  frame(frame: Frame): void;
  /** A command was skipped; it must be answered (tagged BAD/NO) and the session goes on. */
  reject(rejection: Rejection): void;
  /** The client waits for `+` before sending a synchronising literal. */
  continueLiteral(size: number): void;
  /** The input can no longer be framed; the connection must close. */
  fatal(reason: string): void;
  /**
   * A literal of at least `streamThreshold` octets is announced after `segments`: return a
   * sink to receive it as it arrives instead of buffering it, or null to buffer it.
   */
  streamLiteral?(segments: readonly Buffer[], size: number): LiteralSink | null;
}

type Limits = Pick<ImapLimits, 'maxLineBytes' | 'maxLiteralBytes' | 'maxLiterals' | 'maxCommandBytes'> & {
  /** Literals this large may be streamed (streamLiteral); smaller ones are always buffered. */
  streamThreshold?: number;
};

export class ImapStream {
  readonly #limits: Limits;
  readonly #handlers: ImapStreamHandlers;

  /** Chunks of the current line segment (while it is kept). */
  #line = new Gather();
  #lineBytes = 0;
  /** Last bytes of an over-long line being skipped. */
  #tail: Buffer = Buffer.alloc(0);
  /** First bytes of the current command. */
  #head: Buffer = Buffer.alloc(0);

  #segments: Buffer[] = [];
  #literals: Buffer[] = [];
  #commandBytes = 0;

  /** Octets of literal data still expected (-1 when reading a line). */
  #literalLeft = -1;
  #literal = new Gather();
  /** The sink of the literal being streamed, if it is. */
  #sink: LiteralSink | null = null;
  #streamed: number[] = [];

  /** Why the current command is being skipped, if it is. */
  #rejected: RejectReason | null = null;
  #dead = false;

  constructor(limits: Limits, handlers: ImapStreamHandlers) {
    this.#limits = limits;
    this.#handlers = handlers;
  }

  /** Feeds bytes in any chunking. */
  push(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length && !this.#dead) {
      if (this.#literalLeft >= 0) {
        pos = this.#readLiteral(chunk, pos);
      } else {
        pos = this.#readLine(chunk, pos);
      }
    }
  }

  /** Forgets everything buffered (after STARTTLS, RFC 3501 6.2.1: no plaintext carried over). */
  reset(): void {
    this.#sink?.abort('input reset');
    this.#sink = null;
    this.#line.clear();
    this.#lineBytes = 0;
    this.#tail = Buffer.alloc(0);
    this.#startCommand();
  }

  /** True when no partial command is buffered. */
  get idle(): boolean {
    return this.#lineBytes === 0 && this.#segments.length === 0 && this.#literalLeft < 0;
  }

  /** The connection is gone: a literal being streamed will not complete. */
  close(): void {
    this.#sink?.abort('connection closed');
    this.#sink = null;
    this.#dead = true;
  }

  #startCommand(): void {
    this.#streamed = [];
    this.#head = Buffer.alloc(0);
    this.#segments = [];
    this.#literals = [];
    this.#commandBytes = 0;
    this.#literalLeft = -1;
    this.#literal.clear();
    this.#rejected = null;
  }

  #readLine(chunk: Buffer, pos: number): number {
    const lf = chunk.indexOf(LF, pos);
    const end = lf < 0 ? chunk.length : lf;
    this.#addLineBytes(chunk.subarray(pos, end));
    if (lf < 0) return chunk.length;
    this.#endOfLine();
    return lf + 1;
  }

  #addLineBytes(bytes: Buffer): void {
    if (bytes.length === 0) return;
    if (this.#head.length < HEAD_BYTES && this.#segments.length === 0) {
      this.#head = Buffer.concat([this.#head, bytes.subarray(0, HEAD_BYTES - this.#head.length)]);
    }
    this.#lineBytes += bytes.length;
    if (this.#rejected === null && this.#lineBytes > this.#limits.maxLineBytes) {
      this.#rejected = 'lineTooLong';
      this.#tail = this.#line.take().subarray(-TAIL_BYTES);
    }
    if (this.#rejected === null) {
      this.#line.add(bytes);
    } else {
      this.#tail = Buffer.concat([this.#tail, bytes]).subarray(-TAIL_BYTES);
    }
  }

  #endOfLine(): void {
    let line = this.#rejected === null ? this.#line.take() : this.#tail;
    this.#line.clear();
    if (line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, -1);
    const lineBytes = this.#lineBytes;
    this.#lineBytes = 0;
    this.#tail = Buffer.alloc(0);

    const marker =
      line[line.length - 1] === RIGHT_BRACE ? LITERAL_MARKER.exec(line.toString('latin1')) : null;
    if (!marker) {
      this.#finishCommand(line);
      return;
    }
    const size = Number(marker[1]);
    const sync = marker[2] !== '+';
    if (this.#rejected === null) {
      if (this.#literals.length >= this.#limits.maxLiterals) this.#rejected = 'tooManyLiterals';
      else if (size > this.#limits.maxLiteralBytes) this.#rejected = 'literalTooBig';
      else if (this.#commandBytes + lineBytes + size > this.#limits.maxCommandBytes) {
        this.#rejected = 'commandTooBig';
      }
    }
    if (this.#rejected !== null) {
      if (sync) {
        // The client waits for a `+` that will not come; the tagged answer ends the command.
        this.#finishCommand(line);
        return;
      }
      if (size > this.#limits.maxLiteralBytes) {
        // RFC 7888 4: a server may close the connection on a non-synchronising literal it refuses.
        this.#dead = true;
        this.#handlers.fatal('Non-synchronising literal too large');
        return;
      }
    } else {
      this.#segments.push(line);
      this.#commandBytes += lineBytes;
      const threshold = this.#limits.streamThreshold;
      if (threshold !== undefined && size >= threshold && this.#handlers.streamLiteral) {
        this.#sink = this.#handlers.streamLiteral(this.#segments, size);
      }
      if (sync) this.#handlers.continueLiteral(size);
    }
    this.#literalLeft = size;
    this.#literal.clear();
    if (size === 0) this.#endOfLiteral();
  }

  #readLiteral(chunk: Buffer, pos: number): number {
    const take = Math.min(this.#literalLeft, chunk.length - pos);
    if (this.#sink) this.#sink.write(chunk.subarray(pos, pos + take));
    else if (this.#rejected === null) this.#literal.add(chunk.subarray(pos, pos + take));
    this.#literalLeft -= take;
    if (this.#literalLeft === 0) this.#endOfLiteral();
    return pos + take;
  }

  #endOfLiteral(): void {
    if (this.#sink) {
      this.#sink.end();
      this.#sink = null;
      this.#streamed.push(this.#literals.length);
      this.#literals.push(Buffer.alloc(0));
    } else if (this.#rejected === null) {
      const literal = this.#literal.take();
      this.#literals.push(literal);
      this.#commandBytes += literal.length;
    }
    this.#literal.clear();
    this.#literalLeft = -1;
  }

  #finishCommand(lastSegment: Buffer): void {
    const rejected = this.#rejected;
    if (rejected !== null) {
      const { tag, command } = readHead(this.#head);
      const streamed = this.#streamed.length > 0;
      this.#startCommand();
      this.#handlers.reject(
        streamed ? { reason: rejected, tag, command, streamed } : { reason: rejected, tag, command },
      );
      return;
    }
    const frame: Frame = { segments: [...this.#segments, lastSegment], literals: this.#literals };
    if (this.#streamed.length > 0) frame.streamed = this.#streamed;
    this.#startCommand();
    this.#handlers.frame(frame);
  }
}

/** Pieces below this size are copied together rather than kept one buffer each. */
const SMALL_PIECE = 4096;

/**
 * Bytes that arrive in pieces of any size, joined when complete. A client sending one byte per
 * TCP segment gets one socket chunk (an ArrayBuffer of its own) per byte: kept as they are, a
 * 1 MiB literal would cost ~200 MiB. Small pieces are copied into shared blocks instead.
 */
class Gather {
  #parts: Buffer[] = [];
  #block: Buffer | null = null;
  #blockLength = 0;

  add(bytes: Buffer): void {
    if (bytes.length >= SMALL_PIECE) {
      this.#seal();
      this.#parts.push(bytes);
      return;
    }
    if (this.#blockLength + bytes.length > SMALL_PIECE) this.#seal();
    this.#block ??= Buffer.allocUnsafe(SMALL_PIECE);
    bytes.copy(this.#block, this.#blockLength);
    this.#blockLength += bytes.length;
  }

  /** Everything added, as one buffer; empties the gatherer. */
  take(): Buffer {
    this.#seal();
    const parts = this.#parts;
    this.#parts = [];
    return Buffer.concat(parts);
  }

  clear(): void {
    this.#parts = [];
    this.#blockLength = 0;
  }

  #seal(): void {
    if (this.#blockLength === 0 || !this.#block) return;
    this.#parts.push(Buffer.from(this.#block.subarray(0, this.#blockLength)));
    this.#blockLength = 0;
  }
}

/** Tag and command name from the first bytes of a command, when they are well formed. */
function readHead(head: Buffer): { tag: string | null; command: string | null } {
  const firstSpace = head.indexOf(SP);
  if (firstSpace <= 0) return { tag: null, command: null };
  const tag = head.subarray(0, firstSpace).toString('latin1');
  if (!/^[\x21-\x7e]+$/.test(tag) || /[(){%*"\\+]/.test(tag)) return { tag: null, command: null };
  const rest = head.subarray(firstSpace + 1).toString('latin1');
  const name = /^[A-Za-z]+/.exec(rest);
  return { tag, command: name ? name[0].toUpperCase() : null };
}
