/**
 * The deferred queue and the delivered-recipients records, in Redis.
 *
 * Deferred entries do not wait in JetStream (nats-server 2.9 has no per-message delay, and a nak
 * with a delay of hours would hold a slot of the partition's max_ack_pending): the attempt is
 * acked and the entry is written here with its next attempt time; the partition's owner publishes
 * it again to OUTBOUND when it is due (Postfix's deferred queue and queue manager scan). Queue
 * control (retry now, hold, release, delete) edits these records. Every entry on OUTBOUND carries
 * the attempt number and generation of the record it came from; an entry that no longer matches its
 * record (already retried, delivered, deleted) is dropped, so a duplicate publish is harmless.
 *
 * Keys: the queue under one hash tag `{dq}` (atomic scripts across the record and its indexes in
 * Redis Cluster); the delivered set and the fencing token of a partition under `{dp:<partition>}`.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

export interface QueueEntry {
  id: string;
  queueId: string;
  domain: string;
  partition: number;
  mailFrom: string;
  recipients: string[];
  attempts: number;
  generation: number;
  /** 'deferred' (waiting for its time), 'queued' (back on OUTBOUND), 'held'. */
  state: string;
  nextAttempt: number;
  lastError: string;
  receivedAt: number;
}

/** How long a delivered-recipients record is kept: longer than any redelivery of the entry. */
const DELIVERED_TTL_S = 7 * 86_400;
/** How long a finished message's tombstone stops stale copies (longer than JetStream's redelivery of one). */
const TOMBSTONE_TTL_S = 2 * 86_400;

// KEYS: record, due zset, all set. ARGV: id, data, partition, attempts, generation, nextAttempt,
// lastError, queueId, domain, mailFrom, recipients, receivedAt.
// A held record stays held (hold while an attempt ran); it keeps the newest data.
const DEFER = `
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'partition', ARGV[3], 'attempts', ARGV[4], 'generation', ARGV[5],
  'nextAttempt', ARGV[6], 'lastError', ARGV[7], 'queueId', ARGV[8], 'domain', ARGV[9], 'mailFrom', ARGV[10],
  'recipients', ARGV[11], 'receivedAt', ARGV[12])
redis.call('SADD', KEYS[3], ARGV[1])
if state == 'held' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'deferred')
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
return 1`;

// KEYS: record, due zset. ARGV: id, attempts, generation. Marks a due record as back on OUTBOUND.
const QUEUED = `
local r = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'generation')
if r[1] ~= 'deferred' or r[2] ~= ARGV[2] or r[3] ~= ARGV[3] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'queued')
return 1`;

// KEYS: fence, delivered set. ARGV: token, ttl, members... Refuses a holder older than the last one seen.
const FENCED_ADD = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(ARGV[1])
if cur > t then return 0 end
if cur < t then redis.call('SET', KEYS[1], ARGV[1]) end
if #ARGV > 2 then
  redis.call('SADD', KEYS[2], unpack(ARGV, 3))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1`;

// KEYS: fence, delivered set. ARGV: token. Raises the fence like FENCED_ADD and returns
// {fenced (0/1), delivered members...}: the start of an attempt, on the partition's keys.
const FENCE_AND_READ = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(ARGV[1])
if cur > t then return {0} end
if cur < t then redis.call('SET', KEYS[1], ARGV[1]) end
local out = redis.call('SMEMBERS', KEYS[2])
table.insert(out, 1, 1)
return out`;

// KEYS: record, all set, due zset. ARGV: id, tombstone ttl. A finished message: its record becomes
// a tombstone and leaves the indexes (remove() for a holder that knows the record's partition).
const FINISH = `
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1`;

const sha1 = (script: string) => createHash('sha1').update(script).digest('hex');
const SHA = { FENCED_ADD: sha1(FENCED_ADD), FENCE_AND_READ: sha1(FENCE_AND_READ), FINISH: sha1(FINISH) };

export type EntryCheck = 'current' | 'stale' | 'held';

/** What an attempt needs to know before it starts, read in one round trip (see QueueStore.begin). */
export interface AttemptStart {
  check: EntryCheck;
  /** Recipients already delivered by an earlier attempt. */
  delivered: Set<string>;
  /** False when a newer holder of the partition has acted (this replica is stale). */
  fenced: boolean;
}

function checkOf(
  state: string | null,
  a: string | null,
  g: string | null,
  attempts: number,
  generation: number,
): EntryCheck {
  if (state === null) return attempts === 0 && generation === 0 ? 'current' : 'stale';
  if (state === 'done') return 'stale';
  if (Number(a) !== attempts || Number(g) !== generation) return 'stale';
  return state === 'held' ? 'held' : 'current';
}

export class QueueStore {
  readonly #redis: Redis;
  readonly #p: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#p = prefix;
  }

  #record(id: string): string {
    return `${this.#p}{dq}:e:${id}`;
  }
  #due(partition: number): string {
    return `${this.#p}{dq}:due:${partition}`;
  }
  get #all(): string {
    return `${this.#p}{dq}:all`;
  }
  #fence(partition: number): string {
    return `${this.#p}{dp:${partition}}:fence`;
  }
  #done(partition: number, id: string): string {
    return `${this.#p}{dp:${partition}}:done:${id}`;
  }

  /** Is an OUTBOUND entry (attempt number, generation) the current state of its message? */
  async check(id: string, attempts: number, generation: number): Promise<EntryCheck> {
    const [state, a, g] = await this.#redis.hmget(this.#record(id), 'state', 'attempts', 'generation');
    return checkOf(state ?? null, a ?? null, g ?? null, attempts, generation);
  }

  /**
   * The start of an attempt in one pipelined round trip: is the entry current, which recipients
   * were already delivered, and the partition's fence raised to this holder's token.
   */
  async begin(
    partition: number,
    token: number,
    id: string,
    attempts: number,
    generation: number,
  ): Promise<AttemptStart> {
    // Two commands sent together, not one script: the keys live in different hash slots (Redis Cluster).
    const [[state, a, g], fenceRead] = await Promise.all([
      this.#redis.hmget(this.#record(id), 'state', 'attempts', 'generation'),
      this.#script(
        FENCE_AND_READ,
        SHA.FENCE_AND_READ,
        [this.#fence(partition), this.#done(partition, id)],
        [token],
      ),
    ]);
    const [fenced, ...delivered] = fenceRead as [number, ...string[]];
    return {
      check: checkOf(state ?? null, a ?? null, g ?? null, attempts, generation),
      delivered: new Set(delivered),
      fenced: fenced === 1,
    };
  }

  async delivered(partition: number, id: string): Promise<Set<string>> {
    return new Set(await this.#redis.smembers(this.#done(partition, id)));
  }

  /**
   * Records recipients as delivered under the holder's fencing token; false when a newer holder
   * of the partition has acted since (this replica is stale and must stop).
   */
  async markDelivered(
    partition: number,
    token: number,
    id: string,
    address: string | string[],
  ): Promise<boolean> {
    const r = await this.#script(
      FENCED_ADD,
      SHA.FENCED_ADD,
      [this.#fence(partition), this.#done(partition, id)],
      [token, DELIVERED_TTL_S, ...(Array.isArray(address) ? address : [address])],
    );
    return r === 1;
  }

  /** EVALSHA, loading the script with EVAL when the server does not have it (restart, failover). */
  async #script(script: string, sha: string, keys: string[], args: (string | number)[]): Promise<unknown> {
    try {
      return await this.#redis.evalsha(sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
      return this.#redis.eval(script, keys.length, ...keys, ...args);
    }
  }

  /** Raises the partition's fence to this token; false if a newer holder already acted. */
  async fence(partition: number, token: number): Promise<boolean> {
    const r = await this.#redis.eval(
      FENCED_ADD,
      2,
      this.#fence(partition),
      this.#done(partition, ''),
      token,
      0,
    );
    return r === 1;
  }

  async defer(e: Omit<QueueEntry, 'state'>, data: Uint8Array): Promise<void> {
    await this.#redis.eval(
      DEFER,
      3,
      this.#record(e.id),
      this.#due(e.partition),
      this.#all,
      e.id,
      Buffer.from(data),
      e.partition,
      e.attempts,
      e.generation,
      e.nextAttempt,
      e.lastError,
      e.queueId,
      e.domain,
      e.mailFrom,
      e.recipients.join(','),
      e.receivedAt,
    );
  }

  /**
   * The message is finished (delivered, bounced or deleted): its record becomes a tombstone for a
   * while, so a copy still on OUTBOUND (or a late redelivery) is recognised as stale and dropped.
   */
  async remove(id: string): Promise<boolean> {
    const [state, partition] = await this.#redis.hmget(this.#record(id), 'state', 'partition');
    const m = this.#redis
      .multi()
      .del(this.#record(id))
      .hset(this.#record(id), 'state', 'done')
      .expire(this.#record(id), TOMBSTONE_TTL_S)
      .srem(this.#all, id);
    if (partition !== null) m.zrem(this.#due(Number(partition)), id);
    await m.exec();
    return state !== null && state !== 'done';
  }

  /**
   * remove() for the holder of the record's partition, which knows it: one round trip (no read of
   * the record first).
   */
  async finish(id: string, partition: number): Promise<void> {
    await this.#script(
      FINISH,
      SHA.FINISH,
      [this.#record(id), this.#all, this.#due(partition)],
      [id, TOMBSTONE_TTL_S],
    );
  }

  /** Ids due in a partition, oldest first. */
  async due(partition: number, now: number, limit: number): Promise<string[]> {
    return this.#redis.zrangebyscore(this.#due(partition), '-inf', now, 'LIMIT', 0, limit);
  }

  async data(id: string): Promise<{ data: Buffer; attempts: number; generation: number } | null> {
    const [data, a, g] = await this.#redis.hmgetBuffer(this.#record(id), 'data', 'attempts', 'generation');
    if (!data || !a || !g) return null;
    return { data, attempts: Number(a.toString()), generation: Number(g.toString()) };
  }

  async markQueued(partition: number, id: string, attempts: number, generation: number): Promise<boolean> {
    const r = await this.#redis.eval(
      QUEUED,
      2,
      this.#record(id),
      this.#due(partition),
      id,
      attempts,
      generation,
    );
    return r === 1;
  }

  async list(filter: { domain?: string; queueId?: string } = {}, limit = 1000): Promise<QueueEntry[]> {
    const ids = await this.#redis.smembers(this.#all);
    const wanted = ids.filter(
      (id) =>
        (!filter.queueId || id.startsWith(`${filter.queueId}:`)) &&
        (!filter.domain || id.endsWith(`:${filter.domain.toLowerCase()}`)),
    );
    const p = this.#redis.pipeline();
    for (const id of wanted) p.hgetall(this.#record(id));
    const rows = (await p.exec()) ?? [];
    const out: QueueEntry[] = [];
    rows.forEach(([, raw], i) => {
      const h = raw as Record<string, string>;
      if (!h.state || h.state === 'done') return;
      out.push({
        id: wanted[i] ?? '',
        queueId: h.queueId ?? '',
        domain: h.domain ?? '',
        partition: Number(h.partition),
        mailFrom: h.mailFrom ?? '',
        recipients: (h.recipients ?? '').split(',').filter(Boolean),
        attempts: Number(h.attempts),
        generation: Number(h.generation),
        state: h.state,
        nextAttempt: Number(h.nextAttempt),
        lastError: h.lastError ?? '',
        receivedAt: Number(h.receivedAt),
      });
    });
    out.sort((a, b) => a.nextAttempt - b.nextAttempt);
    return out.slice(0, limit);
  }

  /**
   * Queue control on one record: 'retry' makes it due now, 'hold' parks it, 'release' makes a held
   * one due now. A new generation makes any copy already on OUTBOUND stale.
   */
  async control(id: string, action: 'retry' | 'hold' | 'release'): Promise<boolean> {
    const script = `
local r = redis.call('HMGET', KEYS[1], 'state', 'partition', 'generation')
if not r[1] or r[1] == 'done' then return 0 end
local due = ARGV[3] .. r[2]
if ARGV[1] == 'hold' then
  if r[1] == 'held' then return 1 end
  redis.call('ZREM', due, ARGV[4])
  redis.call('HSET', KEYS[1], 'state', 'held')
  return 1
end
if ARGV[1] == 'release' and r[1] ~= 'held' then return 0 end
local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', 'deferred', 'nextAttempt', ARGV[2])
redis.call('ZADD', due, ARGV[2], ARGV[4])
return 1`;
    const r = await this.#redis.eval(
      script,
      1,
      this.#record(id),
      action,
      Date.now(),
      `${this.#p}{dq}:due:`,
      id,
    );
    return r === 1;
  }
}
