/**
 * Reference counting of blobs across mailboxes, safe on Redis Cluster and across crashes.
 *
 * A user's keys share one hash slot, a blob's record does not, so no script can update both. The
 * protocol is therefore two-phase, with every step idempotent:
 *
 * 1. In the user's slot, the mailbox scripts keep K:brefs (blob -> how many of the user's messages
 *    refer to it). When that count crosses 0 in either direction, the same script stamps the blob
 *    in K:bdirty with a fresh per-user version (K:bver only grows). Then the store adds the user to
 *    the global work set `P blobs:dirty` (a crash in between only delays the work to the user's
 *    next change; nothing is lost: the stamp stays).
 * 2. A collector (any replica, any number at once) reads a user's stamps, and copies "held or
 *    not, at version v" into the blob's record `P {b:<sha>}` with a compare-and-set on v, so a
 *    stale or repeated copy is ignored. The record counts its live holders; the stamp is cleared
 *    only if it still carries v.
 * 3. When a blob's live holders drop to 0 it joins `P blobs:gc`. A sweeper deletes it from the
 *    object store only after BLOB_GC_GRACE without holders and without a new put (puts "touch"
 *    the record), under a `deleting` mark that a concurrent put waits for, then drops the record.
 *
 * Failure modes are leaks (a body kept too long), never a body deleted while referenced, provided
 * the grace period is longer than the time between a put and the append that refers to it.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { MailboxStore } from './store.ts';

/** ARGV: user, version, held (1|0), now ms. Copies a user's holding at a version; returns live holders. */
const HOLD = `
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

/** A `deleting` mark older than this belongs to a sweeper that died: a put may go on. */
const DELETING_STALE_MS = 30_000;
/** Users and stamps handled per collector round: bounds the work of one round. */
const USERS_PER_ROUND = 100;
const STAMPS_PER_USER = 200;

export interface BlobRefsOptions {
  /** How long a blob stays after its last holder went (and after its last put). */
  graceMs: number;
  /** Deletes a body from the object store (BlobStore.delete). */
  deleteBody: (id: string) => Promise<void>;
  logger?: Logger;
}

export class BlobRefs {
  readonly #redis: Redis;
  readonly #p: string;
  readonly #options: BlobRefsOptions;

  constructor(redis: Redis, prefix: string, options: BlobRefsOptions) {
    this.#redis = redis;
    this.#p = prefix;
    this.#options = options;
    const defs = { blobHold: HOLD, blobTouch: TOUCH, blobClaim: CLAIM, blobFinish: FINISH };
    for (const [name, lua] of Object.entries(defs)) {
      if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 1, lua });
    }
  }

  #blobKey(id: string): string {
    return `${this.#p}{b:${id.replace(/^sha256:/, '')}}`;
  }

  #call(name: string, key: string, ...args: (string | number)[]): Promise<unknown> {
    const fn = (this.#redis as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[name];
    if (!fn) throw new Error(`script ${name} not defined`);
    return fn.call(this.#redis, key, ...args);
  }

  /** The store's hook: this user has stamps to collect. */
  readonly changed = async (user: string): Promise<void> => {
    await this.#redis.sadd(`${this.#p}blobs:dirty`, user);
  };

  /** The blob store's hook before it relies on an existing body: waits while it is being deleted. */
  readonly touch = async (id: string): Promise<void> => {
    for (let wait = 20; ; wait = Math.min(wait * 2, 1000)) {
      if (Number(await this.#call('blobTouch', this.#blobKey(id), Date.now(), DELETING_STALE_MS)) === 1)
        return;
      await new Promise((r) => setTimeout(r, wait));
    }
  };

  /** Live holders of a blob as the records know them (after collection). */
  async holders(id: string): Promise<number> {
    return Number((await this.#redis.hget(this.#blobKey(id), 'live')) ?? 0);
  }

  /** One collector round: copies the users' stamps into the blob records. Returns stamps handled. */
  async collect(store: MailboxStore): Promise<number> {
    const dirty = `${this.#p}blobs:dirty`;
    const users = await this.#redis.srandmember(dirty, USERS_PER_ROUND);
    let handled = 0;
    for (const user of users) {
      const stamps = await store.dirtyBlobs(user, STAMPS_PER_USER);
      let left = stamps.length === 0 ? 0 : -1;
      for (const s of stamps) {
        const live = Number(
          await this.#call('blobHold', this.#blobKey(s.blob), user, s.version, s.held ? 1 : 0, Date.now()),
        );
        if (live === 0) await this.#redis.zadd(`${this.#p}blobs:gc`, Date.now(), s.blob);
        left = await store.cleanBlob(user, s.blob, s.version);
        handled++;
      }
      if (left === 0) {
        await this.#redis.srem(dirty, user);
        // A stamp made between our read and the SREM: put the user back (its own SADD may have come first).
        if ((await store.dirtyBlobs(user, 1)).length > 0) await this.#redis.sadd(dirty, user);
      }
    }
    return handled;
  }

  /** One sweeper round: deletes the bodies without holders past the grace period. Returns bodies deleted. */
  async sweep(now = Date.now()): Promise<number> {
    const gc = `${this.#p}blobs:gc`;
    const due = await this.#redis.zrangebyscore(gc, '-inf', now, 'LIMIT', 0, 100);
    let deleted = 0;
    for (const id of due) {
      const key = this.#blobKey(id);
      const [state, retryAt] = (await this.#call('blobClaim', key, now, this.#options.graceMs)) as [
        string,
        number,
      ];
      if (state === 'live') {
        await this.#redis.zrem(gc, id);
        continue;
      }
      if (state === 'young') {
        await this.#redis.zadd(gc, Number(retryAt), id);
        continue;
      }
      try {
        await this.#options.deleteBody(id);
      } catch (err) {
        // The claim goes stale and a later round retries; a put meanwhile waits at most DELETING_STALE_MS.
        this.#options.logger?.warn({ err, blob: id }, 'blob delete failed');
        continue;
      }
      await this.#call('blobFinish', key, now);
      await this.#redis.zrem(gc, id);
      deleted++;
    }
    return deleted;
  }
}
