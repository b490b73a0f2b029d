/**
 * Content-addressed blob store for message bodies on the JetStream object store (bucket BLOBS):
 * on disk, replicated with the streams, never only in Redis memory. A body is stored once under
 * its SHA-256, however many envelopes and mailboxes refer to it.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open as openFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
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
  #touch: ((id: string) => Promise<void>) | undefined;

  private constructor(store: ObjectStore) {
    this.#store = store;
  }

  /** Opens (and creates on first use) the bucket. */
  static async open(nats: Nats, replicas: number): Promise<BlobStore> {
    const objm = new Objm(nats.js);
    const store = await objm.create(BLOB_BUCKET, { storage: StorageType.File, replicas });
    return new BlobStore(store);
  }

  /**
   * Installs the hook called before a put relies on a body that may already be stored (the
   * reference collector's "touch", services/mailbox-store/blob-refs.ts): it waits while that body
   * is being deleted and keeps it from being deleted for a grace period.
   */
  onPut(touch: (id: string) => Promise<void>): void {
    this.#touch = touch;
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
    await this.#touch?.(id);
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

  /**
   * Stores a body that arrives as a stream (a large APPEND literal), never holding it whole: the
   * chunks are hashed and spooled to a temporary file as they come (the name of a content-addressed
   * object is known only at the end), then copied from the file into the object store in the
   * store's chunks. Only one chunk is in memory at a time.
   */
  async putStream(source: AsyncIterable<Uint8Array>, spoolDir = tmpdir()): Promise<BlobInfo> {
    const end = putSeconds.startTimer();
    const path = join(spoolDir, `postino-blob-${randomUUID()}`);
    const file = await openFile(path, 'wx', 0o600);
    try {
      const h = createHash('sha256');
      let size = 0;
      try {
        for await (const chunk of source) {
          h.update(chunk);
          size += chunk.byteLength;
          await file.write(chunk);
        }
      } finally {
        await file.close();
      }
      const id = `sha256:${h.digest('hex')}`;
      const name = BlobStore.#name(id);
      await this.#touch?.(id);
      const existing = await this.#store.info(name);
      if (!existing || existing.deleted || existing.size !== size) {
        const rs = Readable.toWeb(
          createReadStream(path, { highWaterMark: 128 * 1024 }),
        ) as ReadableStream<Uint8Array>;
        await this.#store.put({ name }, rs);
      }
      end();
      return { id, size };
    } finally {
      await rm(path, { force: true });
    }
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

  /** Deletes a body; deleting one that is not there is not an error (the collector may retry). */
  async delete(id: string): Promise<void> {
    const name = BlobStore.#name(id);
    const info = await this.#store.info(name);
    if (!info || info.deleted) return;
    await this.#store.delete(name);
  }
}
