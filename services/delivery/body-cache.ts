/**
 * Small message bodies kept in memory for a while, so that a message going to several destination
 * domains of this replica (one OUTBOUND entry per domain), and the retries that follow soon, read
 * the blob store once. Bodies are content-addressed (sha256), so a cached copy can never be stale.
 * Larger bodies are streamed from the blob store every time.
 */

export interface BodyCacheLimits {
  /** Largest body kept in memory. */
  maxEntryBytes: number;
  /** Memory for all kept bodies; the least recently used go first. */
  maxTotalBytes: number;
}

export class BodyCache {
  readonly #open: (id: string) => AsyncIterable<Uint8Array>;
  readonly #limits: BodyCacheLimits;
  /** Map order is the recency order: a hit moves the entry to the end. */
  readonly #bodies = new Map<string, Buffer>();
  readonly #reading = new Map<string, Promise<Buffer>>();
  #total = 0;

  constructor(open: (id: string) => AsyncIterable<Uint8Array>, limits: BodyCacheLimits) {
    this.#open = open;
    this.#limits = limits;
  }

  /** The body's bytes, from memory when they are there; `size` decides whether it is kept. */
  async *open(id: string, size: number): AsyncIterable<Uint8Array> {
    if (size <= 0 || size > this.#limits.maxEntryBytes) {
      yield* this.#open(id);
      return;
    }
    yield await this.#get(id);
  }

  async #get(id: string): Promise<Buffer> {
    const hit = this.#bodies.get(id);
    if (hit) {
      this.#bodies.delete(id);
      this.#bodies.set(id, hit);
      return hit;
    }
    const running = this.#reading.get(id);
    if (running) return running;
    const p = (async () => {
      const chunks: Uint8Array[] = [];
      for await (const c of this.#open(id)) chunks.push(c);
      // A body of one chunk is kept as it came, not copied: the blob store keeps the same bytes in
      // its own cache of small bodies (services/core/blobs.ts), so they are in memory once.
      const only = chunks.length === 1 ? chunks[0] : undefined;
      const body = only ? Buffer.from(only.buffer, only.byteOffset, only.byteLength) : Buffer.concat(chunks);
      if (body.length <= this.#limits.maxEntryBytes) this.#keep(id, body);
      return body;
    })();
    this.#reading.set(id, p);
    try {
      return await p;
    } finally {
      this.#reading.delete(id);
    }
  }

  #keep(id: string, body: Buffer): void {
    if (this.#bodies.has(id)) return;
    this.#bodies.set(id, body);
    this.#total += body.length;
    for (const [old, b] of this.#bodies) {
      if (this.#total <= this.#limits.maxTotalBytes) break;
      this.#bodies.delete(old);
      this.#total -= b.length;
    }
  }
}
