/**
 * Small message bodies kept in memory for a while, so that a message going to several destination
 * domains of this replica (one OUTBOUND entry per domain), and the retries that follow soon, read
 * the blob store once. Bodies are content-addressed (sha256), so a cached copy can never be stale.
 * Larger bodies are streamed from the blob store every time.
 */

import { BlobCache, type BlobCacheLimits } from '../core/blobs.ts';

/** Largest body kept, and memory for all of them (the least recently used go first). */
export type BodyCacheLimits = BlobCacheLimits;

export class BodyCache {
  readonly #open: (id: string) => AsyncIterable<Uint8Array>;
  readonly #limits: BodyCacheLimits;
  readonly #bodies: BlobCache;
  readonly #reading = new Map<string, Promise<Buffer>>();

  constructor(open: (id: string) => AsyncIterable<Uint8Array>, limits: BodyCacheLimits) {
    this.#open = open;
    this.#limits = limits;
    this.#bodies = new BlobCache(limits);
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
    if (hit) return hit;
    const running = this.#reading.get(id);
    if (running) return running;
    const p = (async () => {
      const chunks: Uint8Array[] = [];
      for await (const c of this.#open(id)) chunks.push(c);
      // A body of one chunk is kept as it came, not copied: the blob store keeps the same bytes in
      // its own cache of small bodies (services/core/blobs.ts), so they are in memory once.
      const only = chunks.length === 1 ? chunks[0] : undefined;
      const body = only ? Buffer.from(only.buffer, only.byteOffset, only.byteLength) : Buffer.concat(chunks);
      this.#bodies.set(id, body);
      return body;
    })();
    this.#reading.set(id, p);
    try {
      return await p;
    } finally {
      this.#reading.delete(id);
    }
  }
}
