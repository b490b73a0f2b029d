/**
 * Rates shared by every ingress replica through Redis: fixed-window counters (INCRBY, and PEXPIRE
 * when the window's key is new, in one script: one command per hit), keyed by what is counted and
 * by whom (client IP or user), so that a client spread over replicas meets one limit. AUTH failures
 * are counted the same way, per IP and per account.
 */
import type { Redis } from 'ioredis';

export type RateKind = 'conn' | 'msg' | 'rcpt' | 'authfail';

/** KEYS[1] the window's counter; ARGV[1] how much to add, ARGV[2] its time to live in ms. */
const RATE_HIT = `
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n`;

type RateRedis = Redis & {
  rateHit(key: string, n: number, ttlMs: number): Promise<number>;
};

export class Rates {
  readonly #redis: RateRedis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    if (!('rateHit' in redis)) redis.defineCommand('rateHit', { numberOfKeys: 1, lua: RATE_HIT });
    this.#redis = redis as RateRedis;
    this.#prefix = prefix;
  }

  #key(kind: RateKind, who: string, windowMs: number): string {
    const window = Math.floor(Date.now() / windowMs);
    return `${this.#prefix}smtp:rate:${kind}:${who}:${window}`;
  }

  /** Adds `n` to the counter and resolves with the new count in this window. */
  async hit(kind: RateKind, who: string, windowMs: number, n = 1): Promise<number> {
    const key = this.#key(kind, who, windowMs);
    const count = Number(await this.#redis.rateHit(key, n, windowMs * 2));
    if (!Number.isFinite(count)) throw new Error(`rate counter ${key} failed`);
    return count;
  }

  /** The count in this window, without adding. */
  async peek(kind: RateKind, who: string, windowMs: number): Promise<number> {
    return Number((await this.#redis.get(this.#key(kind, who, windowMs))) ?? 0);
  }
}
