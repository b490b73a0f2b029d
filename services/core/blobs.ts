/**
 * Content-addressed blob store for message bodies on the JetStream object store (bucket BLOBS):
 * on disk, replicated with the streams, never only in Redis memory. A body is stored once under
 * its SHA-256, however many envelopes and mailboxes refer to it.
 */
import { createHash } from 'node:crypto';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { StorageType } from '@nats-io/jetstream';
import type { Nats } from './nats.ts';
import { histogram } from './metrics.ts';

export const BLOB_BUCKET = 'BLOBS';

export interface BlobInfo {
  /** `sha256:<hex>` */
  id: string;
  size: number;
}

const putSeconds = histogram('postino_blob_put_seconds', 'Time to store a body in the blob store');

export class BlobStore {
  readonly #store: ObjectStore;

  private constructor(store: ObjectStore) {
    this.#store = store;
  }

  /** Opens (and creates on first use) the bucket. */
  static async open(nats: Nats, replicas: number): Promise<BlobStore> {
    const objm = new Objm(nats.js);
    const store = await objm.create(BLOB_BUCKET, { storage: StorageType.File, replicas });
    return new BlobStore(store);
  }

  static idOf(data: Uint8Array | Uint8Array[]): string {
    const h = createHash('sha256');
    for (const c of Array.isArray(data) ? data : [data]) h.update(c);
    return `sha256:${h.digest('hex')}`;
  }

  static #name(id: string): string {
    if (!/^sha256:[0-9a-f]{64}$/.test(id)) throw new Error(`invalid blob id ${JSON.stringify(id)}`);
    return id.slice('sha256:'.length);
  }

  /**
   * Stores a body given as its chunks; resolves once it is durable. Skips the write when the
   * same content is already stored (content addressing).
   */
  async put(chunks: Uint8Array[]): Promise<BlobInfo> {
    const end = putSeconds.startTimer();
    const id = BlobStore.idOf(chunks);
    const size = chunks.reduce((n, c) => n + c.byteLength, 0);
    const name = BlobStore.#name(id);
    const existing = await this.#store.info(name);
    if (!existing || existing.deleted || existing.size !== size) {
      let i = 0;
      const rs = new ReadableStream<Uint8Array>({
        pull(controller) {
          const c = chunks[i++];
          if (c) controller.enqueue(c);
          else controller.close();
        },
      });
      await this.#store.put({ name }, rs);
    }
    end();
    return { id, size };
  }

  async has(id: string): Promise<boolean> {
    const info = await this.#store.info(BlobStore.#name(id));
    return !!info && !info.deleted;
  }

  /** Streams a body in the store's chunks. */
  async *open(id: string): AsyncIterable<Uint8Array> {
    const res = await this.#store.get(BlobStore.#name(id));
    if (!res) throw new Error(`blob ${id} not found`);
    const reader = res.data.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      yield value;
    }
    if (await res.error) throw new Error(`blob ${id} is corrupt`);
  }

  async read(id: string): Promise<Buffer> {
    const chunks: Uint8Array[] = [];
    for await (const c of this.open(id)) chunks.push(c);
    return Buffer.concat(chunks);
  }

  async delete(id: string): Promise<void> {
    await this.#store.delete(BlobStore.#name(id));
  }
}
