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
 *
 * Queue entries hold bodies in the same records (services/core/blobs.ts, which also holds the
 * records' scripts): `live` counts them with the mailboxes, and their releases feed `blobs:gc`.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { BlobRecords } from '../core/blobs.ts';
import type { MailboxStore } from './store.ts';

/** Users and stamps handled per collector round: bounds the work of one round. */
const USERS_PER_ROUND = 100;
const STAMPS_PER_USER = 200;
/** Batches of due bodies per sweeper round: bounds one round's work. */
const SWEEP_BATCHES = 10;
const SWEEP_BATCH = 100;

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
  readonly #records: BlobRecords;

  constructor(redis: Redis, prefix: string, options: BlobRefsOptions) {
    this.#redis = redis;
    this.#p = prefix;
    this.#options = options;
    this.#records = new BlobRecords(redis, prefix);
  }

  /** The store's hook: this user has stamps to collect. */
  readonly changed = async (user: string): Promise<void> => {
    await this.#redis.sadd(`${this.#p}blobs:dirty`, user);
  };

  /** The blob store's hook before it relies on an existing body: waits while it is being deleted. */
  readonly touch = (id: string): Promise<void> => this.#records.touch(id);

  /** Live holders of a blob as the records know them: queue entries, and mailboxes after collection. */
  holders(id: string): Promise<number> {
    return this.#records.holders(id);
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
        const live = await this.#records.copyMailboxHolding(s.blob, user, s.version, s.held);
        if (live === 0) await this.#redis.zadd(this.#records.gcKey, Date.now(), s.blob);
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
    const gc = this.#records.gcKey;
    let deleted = 0;
    for (let batch = 0; batch < SWEEP_BATCHES; batch++) {
      const due = await this.#redis.zrangebyscore(gc, '-inf', now, 'LIMIT', 0, SWEEP_BATCH);
      for (const id of due) {
        const [state, retryAt] = await this.#records.claim(id, now, this.#options.graceMs);
        if (state === 'live') {
          await this.#redis.zrem(gc, id);
          continue;
        }
        if (state === 'young') {
          await this.#redis.zadd(gc, retryAt, id);
          continue;
        }
        try {
          await this.#options.deleteBody(id);
        } catch (err) {
          // The claim goes stale and a later round retries; a put meanwhile waits at most DELETING_STALE_MS.
          this.#options.logger?.warn({ err, blob: id }, 'blob delete failed');
          continue;
        }
        await this.#records.finish(id, now);
        await this.#redis.zrem(gc, id);
        deleted++;
      }
      if (due.length < SWEEP_BATCH) break;
    }
    return deleted;
  }
}
