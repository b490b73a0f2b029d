/**
 * Content-addressed blob store for message bodies on the JetStream object store (bucket BLOBS):
 * on disk, replicated with the streams, never only in Redis memory. A body is stored once under
 * its SHA-256, however many envelopes and mailboxes refer to it.
 *
 * Who still needs a body is kept in its record in Redis, `P {b:<sha>}` (BlobRecords below; one key,
 * so every step is one single-slot script and works on Redis Cluster). Two kinds of holder:
 *  - mailboxes, copied from the users' reference stamps by the collector (fields `u:<user>`,
 *    services/mailbox-store/blob-refs.ts);
 *  - queue entries, held and released by the stages themselves (fields `q:<holder>`): smtp-ingress
 *    (and bounce.ts for a DSN) holds the body for its INGRESS envelope as it stores it (before,
 *    or beside when the bytes are fresh: PutOptions.fresh); the router holds it for each LOCAL and
 *    OUTBOUND entry before publishing it, except the likely LOCAL entries, held while it asks
 *    the directory and publishes them (the envelope's hold covers the body meanwhile), taking
 *    back the guesses that missed; then it releases the envelope's hold. mailbox-store releases
 *    a LOCAL entry's hold once the message is filed (a guessed hold landing after that release
 *    finds its tombstone and makes nothing); delivery releases an OUTBOUND entry's on its final
 *    outcome (delivered, bounced, expired) and queue control on delete. A hold is '1'; a release leaves '0', a tombstone, so that a
 *    redelivered hold after its release (a router envelope redelivered after its entries were
 *    done) is a no-op, and a repeated release changes nothing: holds are idempotent under
 *    redelivery, and each holder only ever drops its own hold.
 * `live` counts both kinds. When it drops to 0 the body joins `P blobs:gc`, and the sweeper
 * deletes it after BLOB_GC_GRACE (blob-refs.ts). So a body is never deleted while a queue entry
 * or a mailbox still holds it; tombstones go with the record when the body goes. What a crash or a
 * failure can do is leak (a body kept for ever), never delete early:
 *  - ingress answers 451 after storing the body (JetStream slow or down): the envelope may or may
 *    not have been published, so its hold stays;
 *  - a redelivered envelope routed differently (the directory or DNS changed in between): an entry
 *    held the first time but never published keeps its hold; so does a router's guess when the
 *    router fails before taking it back;
 *  - a redelivered bounce stores a new DSN body (new boundary and date) whose envelope JetStream
 *    then drops as a duplicate.
 * The one assumption: an entry is not redelivered after its own release plus the grace period
 * (JetStream redelivers within its ack wait, seconds, and the grace is a day by default).
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open as openFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Redis } from 'ioredis';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { StorageType, type JetStreamManager } from '@nats-io/jetstream';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { muxOf, publishAcked, type MuxRequests } from './nats-mux.ts';
import type { Nats } from './nats.ts';
import { histogram } from './metrics.ts';

export const BLOB_BUCKET = 'BLOBS';

/** Holder names of queue entries in a blob's record: one per entry, stable across redeliveries. */
export const BlobHolder = {
  /** An accepted envelope on INGRESS (a message from SMTP, or a DSN). */
  ingress: (queueId: string) => `i:${queueId}`,
  /** One local recipient's entry on LOCAL (its idempotency key). */
  local: (idempotencyKey: string) => `l:${idempotencyKey}`,
  /** One destination domain's entry on OUTBOUND and in the deferred queue (`<queue-id>:<domain>`). */
  outbound: (entryId: string) => `o:${entryId}`,
} as const;

/**
 * ARGV: now ms, stale ms, holder... -1 = wait (being deleted), else a bit string, one per holder:
 * '1' this call made the hold, '0' the holder held or released it before (a no-op).
 */
const ENTRY_HOLD = `
local B = KEYS[1]
local d = tonumber(redis.call('HGET', B, 'deleting') or '0')
if d > 0 and tonumber(ARGV[1]) - d < tonumber(ARGV[2]) then return -1 end
redis.call('HDEL', B, 'deleting')
local live = tonumber(redis.call('HGET', B, 'live') or '0')
local made = {}
local added = 0
for i = 3, #ARGV do
  local f = 'q:' .. ARGV[i]
  if redis.call('HGET', B, f) then
    made[#made + 1] = '0'
  else
    added = added + 1
    redis.call('HSET', B, f, '1')
    made[#made + 1] = '1'
  end
end
if added > 0 then
  redis.call('HSET', B, 'live', live + added)
  redis.call('HDEL', B, 'zero')
end
return table.concat(made)
`;

/**
 * ARGV: now ms, holder... Takes back holds that were made for entries never published (leaving no
 * tombstone, unlike a release); returns the live holders after.
 */
const ENTRY_WITHDRAW = `
local B = KEYS[1]
local live = tonumber(redis.call('HGET', B, 'live') or '0')
local taken = 0
for i = 2, #ARGV do
  local f = 'q:' .. ARGV[i]
  if redis.call('HGET', B, f) == '1' then
    redis.call('HDEL', B, f)
    taken = taken + 1
  end
end
if taken == 0 then return live end
live = live - taken
redis.call('HSET', B, 'live', live)
if live == 0 and not redis.call('HGET', B, 'zero') then redis.call('HSET', B, 'zero', ARGV[1]) end
return live
`;

/** ARGV: holder, now ms. Drops the holder's hold; returns live holders, or -1 when it held nothing. */
const ENTRY_RELEASE = `
local B = KEYS[1]
local f = 'q:' .. ARGV[1]
local cur = redis.call('HGET', B, f)
local live = tonumber(redis.call('HGET', B, 'live') or '0')
if cur == '0' then return -1 end
redis.call('HSET', B, f, '0')
if cur ~= '1' then return -1 end
live = live - 1
redis.call('HSET', B, 'live', live)
if live == 0 and not redis.call('HGET', B, 'zero') then redis.call('HSET', B, 'zero', ARGV[2]) end
return live
`;

/** ARGV: user, version, held (1|0), now ms. Copies a user's holding at a version; returns live holders. */
const MAILBOX_HOLD = `
local B = KEYS[1]
local f = 'u:' .. ARGV[1]
local ver = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', B, f) or '0')
local live = tonumber(redis.call('HGET', B, 'live') or '0')
if math.abs(cur) >= ver then return live end
local held = ARGV[3] == '1'
if held then redis.call('HSET', B, f, ver) else redis.call('HSET', B, f, -ver) end
if held and cur <= 0 then live = live + 1 end
if not held and cur > 0 then live = live - 1 end
redis.call('HSET', B, 'live', live)
if live == 0 then
  if not redis.call('HGET', B, 'zero') then redis.call('HSET', B, 'zero', ARGV[4]) end
else
  redis.call('HDEL', B, 'zero')
end
return live
`;

/** ARGV: now ms, stale ms. A put is about to rely on the body: 0 = wait (being deleted), 1 = go. */
const TOUCH = `
local B = KEYS[1]
local d = tonumber(redis.call('HGET', B, 'deleting') or '0')
if d > 0 and tonumber(ARGV[1]) - d < tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', B, 'deleting')
redis.call('HSET', B, 'touched', ARGV[1])
return 1
`;

/** ARGV: now ms, grace ms. 'live', 'young' (retry at the returned time) or 'claimed'. */
const CLAIM = `
local B = KEYS[1]
local h = redis.call('HMGET', B, 'live', 'zero', 'touched', 'deleting')
if tonumber(h[1] or '0') > 0 then return { 'live', 0 } end
local since = math.max(tonumber(h[2] or '0'), tonumber(h[3] or '0'))
if tonumber(ARGV[1]) - since < tonumber(ARGV[2]) then return { 'young', since + tonumber(ARGV[2]) } end
if h[4] then return { 'young', tonumber(ARGV[1]) + tonumber(ARGV[2]) } end
redis.call('HSET', B, 'deleting', ARGV[1])
return { 'claimed', 0 }
`;

/** ARGV: the claim's time. Drops the record if the claim still holds and nobody took the blob back. */
const FINISH = `
local B = KEYS[1]
if redis.call('HGET', B, 'deleting') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', B, 'live') or '0') > 0 then redis.call('HDEL', B, 'deleting'); return 0 end
redis.call('DEL', B)
return 1
`;

const SCRIPTS = {
  blobEntryHold: ENTRY_HOLD,
  blobEntryWithdraw: ENTRY_WITHDRAW,
  blobEntryRelease: ENTRY_RELEASE,
  blobHold: MAILBOX_HOLD,
  blobTouch: TOUCH,
  blobClaim: CLAIM,
  blobFinish: FINISH,
} as const;

/** A `deleting` mark older than this belongs to a sweeper that died: a put or a hold may go on. */
export const DELETING_STALE_MS = 30_000;

/**
 * The blobs' records in Redis (see the header): holds and releases of queue entries, the
 * mailbox holdings the collector copies, and the sweeper's claim. Every operation is one script
 * on the one key of one blob, so it runs in one slot of a Redis Cluster.
 */
export class BlobRecords {
  readonly #redis: Redis;
  readonly #p: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#p = prefix;
    for (const [name, lua] of Object.entries(SCRIPTS)) {
      if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 1, lua });
    }
  }

  /** The work set of bodies that may have no holder left: blob id -> when to look at it. */
  get gcKey(): string {
    return `${this.#p}blobs:gc`;
  }

  #key(id: string): string {
    return `${this.#p}{b:${id.replace(/^sha256:/, '')}}`;
  }

  #call(name: keyof typeof SCRIPTS, id: string, ...args: (string | number)[]): Promise<unknown> {
    const fn = (this.#redis as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[name];
    if (!fn) throw new Error(`script ${name} not defined`);
    return fn.call(this.#redis, this.#key(id), ...args);
  }

  /**
   * Runs `step` until it stops answering -1 (the body is being deleted), with a bounded backoff in
   * between; answers how many times it had to wait.
   */
  async #afterDeletion(step: () => Promise<number>): Promise<number> {
    for (let waits = 0, wait = 20; ; waits++, wait = Math.min(wait * 2, 1000)) {
      if ((await step()) !== -1) return waits;
      await new Promise((res) => setTimeout(res, wait));
    }
  }

  /**
   * Holds a body for a queue entry (BlobHolder). Idempotent; a no-op once the holder released it.
   * Waits while the body is being deleted, so a hold made before a put keeps the put's body.
   */
  async hold(id: string, holder: string): Promise<boolean> {
    return (await this.#holdAll(id, [holder])).waited;
  }

  /**
   * Holds a body for several queue entries in one step; answers the holders this call made (the
   * others held or released it before). Waits while the body is being deleted, like `hold`.
   */
  async holdAll(id: string, holders: readonly string[]): Promise<Set<string>> {
    return (await this.#holdAll(id, holders)).made;
  }

  async #holdAll(id: string, holders: readonly string[]): Promise<{ made: Set<string>; waited: boolean }> {
    let made = '';
    const waits = await this.#afterDeletion(async () => {
      const r = await this.#call('blobEntryHold', id, Date.now(), DELETING_STALE_MS, ...holders);
      if (typeof r === 'number') return r;
      made = String(r);
      return 0;
    });
    return { made: new Set(holders.filter((_, i) => made[i] === '1')), waited: waits > 0 };
  }

  /**
   * Takes back holds this process made for entries it then did not publish (a guess that missed):
   * no tombstone is left, so a later hold by that name still counts. Never for a published entry.
   */
  async withdraw(id: string, holders: readonly string[]): Promise<void> {
    if (holders.length === 0) return;
    const live = Number(await this.#call('blobEntryWithdraw', id, Date.now(), ...holders));
    if (live === 0) await this.#redis.zadd(this.gcKey, Date.now(), id);
  }

  /** Releases a queue entry's hold. Idempotent; when it was the last holder, the body joins the work set. */
  async release(id: string, holder: string): Promise<void> {
    const live = Number(await this.#call('blobEntryRelease', id, holder, Date.now()));
    if (live === 0) await this.#redis.zadd(this.gcKey, Date.now(), id);
  }

  /** A put is about to rely on an existing body: waits while it is being deleted, stamps the put time. */
  async touch(id: string): Promise<void> {
    await this.#afterDeletion(async () =>
      (await this.#call('blobTouch', id, Date.now(), DELETING_STALE_MS)) === 1 ? 0 : -1,
    );
  }

  /** Live holders (queue entries and mailboxes, as far as collected). */
  async holders(id: string): Promise<number> {
    return Number((await this.#redis.hget(this.#key(id), 'live')) ?? 0);
  }

  /** Copies a user's holding at a version (the collector); returns live holders. */
  async copyMailboxHolding(id: string, user: string, version: string, held: boolean): Promise<number> {
    return Number(await this.#call('blobHold', id, user, version, held ? 1 : 0, Date.now()));
  }

  /** The sweeper's claim before deleting a body. */
  async claim(id: string, now: number, graceMs: number): Promise<[string, number]> {
    const [state, at] = (await this.#call('blobClaim', id, now, graceMs)) as [string, number];
    return [state, Number(at)];
  }

  /** After the delete: drops the record if the claim still holds. */
  async finish(id: string, claimedAt: number): Promise<void> {
    await this.#call('blobFinish', id, claimedAt);
  }
}

export interface BlobInfo {
  /** `sha256:<hex>` */
  id: string;
  size: number;
}

const putSeconds = histogram('postino_blob_put_seconds', 'Time to store a body in the blob store');

/** How a put relies on its body: held for a queue entry (BlobHolder), or only touched. */
export interface PutOptions {
  holder?: string;
  /**
   * The bytes hold something never stored before (smtp-ingress's Received field names a new queue
   * id): no stored body can be this one, so no sweeper can be deleting it, and the hold (which
   * waits out a deletion) need not come first. A one-chunk body is then written beside the hold,
   * in one round trip instead of two; a hold that did find a deletion is followed by the write
   * again. Only the same put tried again can meet these bytes, and its hold is then in place.
   */
  fresh?: boolean;
}

/** The object store's chunk size (its default), and the time a put's publish may take. */
const CHUNK_SIZE = 128 * 1024;
const PUT_TIMEOUT_MS = 5000;

/** The object store's backing stream and its subjects (the object store's own layout). */
const BLOB_STREAM = `OBJ_${BLOB_BUCKET}`;
const chunkSubject = (nuid: string) => `$O.${BLOB_BUCKET}.C.${nuid}`;
/** The object store names its metadata subject after the object's name in padded base64url. */
const metaSubject = (name: string) =>
  `$O.${BLOB_BUCKET}.M.${Buffer.from(name, 'utf8').toString('base64').replace(/\+/g, '-').replace(/\//g, '_')}`;

/** How much memory the cache of small bodies may use (BlobStore.open). */
export interface BlobCacheLimits {
  /** Largest body kept: one object-store chunk (128 KiB), the size read with one direct get. */
  maxEntryBytes: number;
  /** Memory for all kept bodies; the least recently used go first. */
  maxTotalBytes: number;
}

/**
 * Defaults of the body cache: 32 MiB is about 15,000 typical 2 KiB messages (a busy replica's
 * working set of POP3 downloads and IMAP body fetches), a small share of a service's memory.
 */
export const BLOB_CACHE_LIMITS: Readonly<BlobCacheLimits> = Object.freeze({
  maxEntryBytes: 128 * 1024,
  maxTotalBytes: 32 * 1024 * 1024,
});

/**
 * Small bodies kept in memory, least recently used first out, within a byte cap. A body is
 * immutable and its key is its content address, checked when it was read: a cached copy is never
 * stale, and it is only handed to a caller that presents the id, which readers get from a mailbox
 * listing they are allowed to see (the same bytes as their own message). Entries are shared:
 * callers must not write into them.
 */
export class BlobCache {
  readonly #limits: BlobCacheLimits;
  /** Map order is the recency order: a hit moves the entry to the end. */
  readonly #bodies = new Map<string, Buffer>();
  #total = 0;

  constructor(limits: BlobCacheLimits = BLOB_CACHE_LIMITS) {
    this.#limits = limits;
  }

  /** Bytes held now (never more than maxTotalBytes). */
  get bytes(): number {
    return this.#total;
  }

  get(id: string): Buffer | undefined {
    const hit = this.#bodies.get(id);
    if (hit) {
      this.#bodies.delete(id);
      this.#bodies.set(id, hit);
    }
    return hit;
  }

  /** Keeps a body if it fits (maxEntryBytes), evicting the least recently used beyond maxTotalBytes. */
  set(id: string, body: Buffer): void {
    if (body.length > this.#limits.maxEntryBytes || body.length > this.#limits.maxTotalBytes) return;
    this.delete(id);
    this.#bodies.set(id, body);
    this.#total += body.length;
    for (const [old, b] of this.#bodies) {
      if (this.#total <= this.#limits.maxTotalBytes) break;
      this.#bodies.delete(old);
      this.#total -= b.length;
    }
  }

  delete(id: string): void {
    const body = this.#bodies.get(id);
    if (!body) return;
    this.#bodies.delete(id);
    this.#total -= body.length;
  }
}

/** Time a direct get may take, as the JetStream API's own requests (jetstreamManager default). */
const DIRECT_GET_TIMEOUT_MS = 5000;
/** After a stream did not answer a direct get, the API is used this long before trying again. */
const DIRECT_GET_RETRY_MS = 60_000;

/**
 * JetStream direct gets (`$JS.API.DIRECT.GET.<stream>.<subject>`, the last message on a subject)
 * over one reply subscription: the message comes back as raw bytes with headers, where the
 * JetStream API's STREAM.MSG.GET wraps it in JSON and base64. Resolves null when there is no such
 * message, or when the stream does not answer direct gets (the caller then uses the API).
 */
class DirectGets {
  readonly #mux: MuxRequests;
  /** Until when direct gets are not tried, after the stream did not answer one (no responders). */
  #offUntil = 0;

  constructor(nc: NatsConnection) {
    this.#mux = muxOf(nc);
  }

  /** False for a while after the stream did not answer a direct get: the caller uses the API. */
  get available(): boolean {
    return this.#offUntil === 0 || Date.now() >= this.#offUntil;
  }

  async last(subject: string): Promise<Uint8Array | null> {
    const msg = await this.#mux
      .request(`$JS.API.DIRECT.GET.${BLOB_STREAM}.${subject}`, undefined, DIRECT_GET_TIMEOUT_MS)
      .catch((err: unknown) => {
        throw new Error(`blob store: no answer to a direct get of ${subject}`, { cause: err });
      });
    const code = msg.headers?.code ?? 0;
    if (code === 0) return msg.data;
    if (code === 404) return null;
    if (code === 503) {
      // No responders: the stream does not allow direct gets (yet, or any more); look again later.
      this.#offUntil = Date.now() + DIRECT_GET_RETRY_MS;
      return null;
    }
    throw new Error(
      `blob store: direct get of ${subject} failed (${code} ${msg.headers?.description ?? ''})`,
    );
  }
}

/** What a read needs from an object's metadata. */
interface BlobMeta {
  size: number;
  chunks: number;
  nuid: string;
  deleted: boolean;
}

const EMPTY = Buffer.alloc(0);

export class BlobStore {
  readonly #store: ObjectStore;
  readonly #nc: NatsConnection;
  readonly #jsm: JetStreamManager;
  readonly #records: BlobRecords | undefined;
  readonly #direct: DirectGets;
  readonly #cache: BlobCache;
  /** Reads of small bodies in flight, so concurrent readers (and a prefetch) share one. */
  readonly #reading = new Map<string, Promise<Buffer | BlobMeta>>();
  #touch: ((id: string) => Promise<void>) | undefined;

  private constructor(
    store: ObjectStore,
    nats: Nats,
    records: BlobRecords | undefined,
    cache: BlobCacheLimits,
  ) {
    this.#store = store;
    this.#nc = nats.nc;
    this.#jsm = nats.jsm;
    this.#direct = new DirectGets(nats.nc);
    this.#cache = new BlobCache(cache);
    this.#records = records;
    this.#touch = records ? (id) => records.touch(id) : undefined;
  }

  /**
   * Opens (and creates on first use) the bucket. With the blobs' records (every service's
   * runtime), puts touch or hold the body and hold/release work; without them (tools, benchmarks)
   * nothing is ever collected, so holds are not needed. `cache` bounds the memory of small bodies
   * kept for reads (one cache per store, so per process in the runtime).
   */
  static async open(
    nats: Nats,
    replicas: number,
    records?: BlobRecords,
    cache: BlobCacheLimits = BLOB_CACHE_LIMITS,
  ): Promise<BlobStore> {
    const objm = new Objm(nats.js);
    const store = await objm.create(BLOB_BUCKET, { storage: StorageType.File, replicas });
    return new BlobStore(store, nats, records, cache);
  }

  /** Holds a stored body for a queue entry (BlobHolder): before publishing the entry. */
  async hold(id: string, holder: string): Promise<void> {
    if (id) await this.#records?.hold(id, holder);
  }

  /** Holds a stored body for several entries at once; answers the holders this call made. */
  async holdAll(id: string, holders: readonly string[]): Promise<Set<string>> {
    if (!id || !this.#records || holders.length === 0) return new Set();
    return this.#records.holdAll(id, holders);
  }

  /** Takes back holds made by holdAll for entries that were then not published. */
  async withdraw(id: string, holders: readonly string[]): Promise<void> {
    if (id) await this.#records?.withdraw(id, holders);
  }

  /** Releases a queue entry's hold: when the entry is done with the body (idempotent). */
  async release(id: string, holder: string): Promise<void> {
    if (id) await this.#records?.release(id, holder);
  }

  /** Before a put relies on a body that may be stored already: hold it for its entry, or touch it. */
  async #rely(id: string, opts: PutOptions): Promise<boolean> {
    if (opts.holder && this.#records) return this.#records.hold(id, opts.holder);
    await this.#touch?.(id);
    return false;
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
  async put(chunks: Uint8Array[], opts: PutOptions = {}): Promise<BlobInfo> {
    const end = putSeconds.startTimer();
    const id = BlobStore.idOf(chunks);
    const size = chunks.reduce((n, c) => n + c.byteLength, 0);
    const name = BlobStore.#name(id);
    if (opts.fresh && size > 0 && size <= CHUNK_SIZE) {
      const [waited] = await Promise.all([this.#rely(id, opts), this.#putOneChunk(name, chunks)]);
      if (waited) await this.#putOneChunk(name, chunks);
      end();
      return { id, size };
    }
    await this.#rely(id, opts);
    if (size > 0 && size <= CHUNK_SIZE) {
      await this.#putOneChunk(name, chunks);
      end();
      return { id, size };
    }
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
   * A body of one chunk (most mail), in one JetStream write: the chunk alone, on a subject named
   * after its content (`$O.BLOBS.C.<sha256>`), rolled up so that storing it again replaces it with
   * the same bytes and leaves nothing behind. No object-store metadata is written for it (the
   * object store's put would first ask for the object's info, then publish the chunk, wait, then
   * the metadata): reads (#fetchSmall), has() and delete() look for the content-named chunk
   * first, and the metadata only for bodies stored by the object store's own put (large ones,
   * streamed APPENDs, and bodies stored by older versions, which stay readable).
   */
  async #putOneChunk(name: string, chunks: Uint8Array[]): Promise<void> {
    const data = chunks.length === 1 && chunks[0] ? chunks[0] : Buffer.concat(chunks);
    const h = natsHeaders();
    h.set('Nats-Rollup', 'sub');
    await publishAcked(this.#nc, chunkSubject(name), data, PUT_TIMEOUT_MS, h);
  }

  /**
   * Stores a body that arrives as a stream (a large APPEND literal), never holding it whole: the
   * chunks are hashed and spooled to a temporary file as they come (the name of a content-addressed
   * object is known only at the end), then copied from the file into the object store in the
   * store's chunks. Only one chunk is in memory at a time.
   */
  async putStream(
    source: AsyncIterable<Uint8Array>,
    spoolDir = tmpdir(),
    opts: PutOptions = {},
  ): Promise<BlobInfo> {
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
      await this.#rely(id, opts);
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
    const name = BlobStore.#name(id);
    if (await this.#leaderChunk(name)) return true;
    const info = await this.#store.info(name);
    return !!info && !info.deleted;
  }

  /**
   * The ids of every body stored now (for tools and tests; it reads the whole bucket's subject
   * list): the content-named chunks (#putOneChunk) and the objects the object store lists.
   */
  async list(): Promise<Set<string>> {
    const ids = new Set<string>();
    const info = await this.#jsm.streams.info(BLOB_STREAM, { subjects_filter: chunkSubject('*') });
    for (const subject of Object.keys(info.state.subjects ?? {})) {
      const name = subject.slice(chunkSubject('').length);
      if (/^[0-9a-f]{64}$/.test(name)) ids.add(`sha256:${name}`);
    }
    for (const o of await this.#store.list()) if (!o.deleted) ids.add(`sha256:${o.name}`);
    return ids;
  }

  /** The chunk named after the content (#putOneChunk), asked of the stream's leader; null if none. */
  async #leaderChunk(name: string): Promise<Uint8Array | null> {
    return (
      (await this.#jsm.streams.getMessage(BLOB_STREAM, { last_by_subj: chunkSubject(name) }))?.data ?? null
    );
  }

  /**
   * Streams a body. A body of one chunk (up to 128 KiB: most mail) is read with one direct get
   * of its content-named chunk (older ones: their metadata, then their chunk), raw bytes instead
   * of the object store's ordered consumer (a consumer created and deleted on the server for
   * every read), checked against its content address and kept in the cache of small bodies, so
   * the next read of it (a POP3 client that downloads again, IMAP clients fetching the same
   * message) costs no round trip. Larger bodies are streamed chunk by chunk every time, never
   * held whole.
   */
  async *open(id: string): AsyncIterable<Uint8Array> {
    const name = BlobStore.#name(id);
    const hit = this.#cache.get(id);
    if (hit) {
      if (hit.length > 0) yield hit;
      return;
    }
    const small = await this.#readSmall(id, name);
    if (Buffer.isBuffer(small)) {
      if (small.length > 0) yield small;
      return;
    }
    const res = await this.#store.get(name);
    if (!res) throw new Error(`blob ${id} not found`);
    const reader = res.data.getReader();
    let finished = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        yield value;
      }
      finished = true;
    } finally {
      // A reader that stops early (TOP, a client gone) stops the server's delivery of the rest;
      // after a failed read, cancelling rejects with that same failure, which is propagating.
      if (!finished) await reader.cancel().catch(() => undefined);
    }
    if (await res.error) throw new Error(`blob ${id} is corrupt`);
  }

  /** The body when it is small (one chunk), else its metadata; one read in flight per body. */
  #readSmall(id: string, name: string): Promise<Buffer | BlobMeta> {
    let reading = this.#reading.get(id);
    if (!reading) {
      reading = this.#fetchSmall(id, name).finally(() => this.#reading.delete(id));
      this.#reading.set(id, reading);
    }
    return reading;
  }

  /**
   * Direct gets first. Any replica of the stream may answer one, and a follower can lag behind
   * its leader, so whatever a direct get cannot give (no such body, a chunk missing, bytes that do
   * not match the address) is asked again of the leader through the JetStream API before it
   * counts as missing or corrupt: a body just stored is never reported missing.
   */
  async #fetchSmall(id: string, name: string): Promise<Buffer | BlobMeta> {
    if (this.#direct.available) {
      // A body stored by #putOneChunk has its chunk on a subject named after its content: one
      // direct get, no metadata first. Anything else (a bigger body, one stored by the object
      // store's own put, one being deleted) goes the long way below.
      const named = await this.#direct.last(chunkSubject(name));
      if (named && BlobStore.idOf(named) === id) return this.#keep(id, named);
      const meta = await this.#directMeta(name);
      if (meta && !meta.deleted) {
        if (meta.size === 0) return EMPTY;
        if (meta.chunks !== 1 || !meta.nuid) return meta;
        // The content-named chunk was just asked for: only another chunk subject is worth a get.
        const data = meta.nuid === name ? null : await this.#direct.last(chunkSubject(meta.nuid));
        if (data && BlobStore.idOf(data) === id) return this.#keep(id, data);
      }
    }
    // The stream's leader, through the JetStream API: the content-named chunk, then the metadata.
    const own = await this.#leaderChunk(name);
    if (own && BlobStore.idOf(own) === id) return this.#keep(id, own);
    const info = await this.#store.info(name);
    if (!info || info.deleted) throw new Error(`blob ${id} not found`);
    if (info.size === 0) return EMPTY;
    if (info.chunks !== 1 || !info.nuid) {
      return { size: info.size, chunks: info.chunks, nuid: info.nuid, deleted: false };
    }
    const m = await this.#jsm.streams.getMessage(BLOB_STREAM, { last_by_subj: chunkSubject(info.nuid) });
    if (!m || BlobStore.idOf(m.data) !== id) throw new Error(`blob ${id} is corrupt`);
    return this.#keep(id, m.data);
  }

  /** Our own copy (the received bytes may be a view into a larger buffer), kept in the cache. */
  #keep(id: string, data: Uint8Array): Buffer {
    const body = Buffer.from(data);
    this.#cache.set(id, body);
    return body;
  }

  async #directMeta(name: string): Promise<BlobMeta | null> {
    const data = await this.#direct.last(metaSubject(name));
    if (!data) return null;
    const m = JSON.parse(
      Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'),
    ) as Partial<BlobMeta>;
    return { size: m.size ?? 0, chunks: m.chunks ?? 0, nuid: m.nuid ?? '', deleted: m.deleted === true };
  }

  async read(id: string): Promise<Buffer> {
    const chunks: Uint8Array[] = [];
    for await (const c of this.open(id)) chunks.push(c);
    return Buffer.concat(chunks);
  }

  /** Deletes a body; deleting one that is not there is not an error (the collector may retry). */
  async delete(id: string): Promise<void> {
    const name = BlobStore.#name(id);
    this.#cache.delete(id);
    // The chunk named after the content goes first (most bodies have nothing else): #fetchSmall
    // reads it without metadata, so it must not outlive a deletion that stops half way (the
    // object store marks the metadata deleted first and purges the chunks after).
    await this.#jsm.streams.purge(BLOB_STREAM, { filter: chunkSubject(name) });
    const info = await this.#store.info(name);
    if (!info || info.deleted) return;
    await this.#store.delete(name);
  }
}
