/**
 * A literal on its way from the socket to storage: the framing layer writes the octets as they
 * arrive, storage reads them as an async iterable (APPEND of a message larger than memory should
 * hold, RFC 9051 6.3.12 with RFC 7889 APPENDLIMIT). Back-pressure: `write` returns false once
 * more than `highWater` octets wait, and `onDrain` fires when the reader has caught up.
 */
/** Chunks queued before the writer is paused, whatever their size. */
const MAX_QUEUED_CHUNKS = 1024;

export class LiteralPipe implements AsyncIterable<Uint8Array> {
  readonly #highWater: number;
  readonly #onDrain: () => void;
  #queue: Buffer[] = [];
  #queued = 0;
  #ended = false;
  #error: Error | null = null;
  /** The reader stopped (storage failed or finished early): further octets are dropped. */
  #discard = false;
  #wake: (() => void) | null = null;

  constructor(highWater: number, onDrain: () => void) {
    this.#highWater = highWater;
    this.#onDrain = onDrain;
  }

  /** Queues octets; false when the writer should pause until `onDrain`. */
  write(chunk: Buffer): boolean {
    if (this.#discard || this.#ended) return true;
    this.#queue.push(chunk);
    this.#queued += chunk.length;
    this.#signal();
    return !this.#full();
  }

  /**
   * The writer should wait: too many octets queued, or too many chunks (a client sending one
   * byte per TCP segment makes one chunk per byte, each costing far more than its octet).
   */
  #full(): boolean {
    return this.#queued >= this.#highWater || this.#queue.length >= MAX_QUEUED_CHUNKS;
  }

  end(): void {
    this.#ended = true;
    this.#signal();
  }

  /** The literal will not complete (connection lost, command rejected): the reader fails. */
  abort(reason: string): void {
    if (this.#ended) return;
    this.#error = new Error(reason);
    this.#ended = true;
    this.#signal();
  }

  /** The reader is gone: drop what comes and let the writer go on. */
  discard(): void {
    this.#discard = true;
    this.#queue = [];
    if (this.#queued > 0) {
      this.#queued = 0;
      this.#onDrain();
    }
  }

  #signal(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    try {
      for (;;) {
        const wasFull = this.#full();
        const chunk = this.#queue.shift();
        if (chunk) {
          this.#queued -= chunk.length;
          if (wasFull && !this.#full()) this.#onDrain();
          yield chunk;
          continue;
        }
        if (this.#error) throw this.#error;
        if (this.#ended) return;
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
      }
    } finally {
      this.discard();
    }
  }
}
