/**
 * Rates shared by every ingress replica through Redis: fixed-window counters (INCR + PEXPIRE in
 * one MULTI), keyed by what is counted and by whom (client IP or user), so that a client spread
 * over replicas meets one limit. AUTH failures are counted the same way, per IP and per account.
 */
import type { Redis } from 'ioredis';

export type RateKind = 'conn' | 'msg' | 'rcpt' | 'authfail';

export class Rates {
  readonly #redis: Redis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#prefix = prefix;
  }

  #key(kind: RateKind, who: string, windowMs: number): string {
    const window = Math.floor(Date.now() / windowMs);
    return `${this.#prefix}smtp:rate:${kind}:${who}:${window}`;
  }

  /** Adds `n` to the counter and resolves with the new count in this window. */
  async hit(kind: RateKind, who: string, windowMs: number, n = 1): Promise<number> {
    const key = this.#key(kind, who, windowMs);
    const res = await this.#redis
      .multi()
      .incrby(key, n)
      .pexpire(key, windowMs * 2)
      .exec();
    const count = res?.[0]?.[1];
    if (typeof count !== 'number') throw new Error(`rate counter ${key} failed`);
    return count;
  }

  /** The count in this window, without adding. */
  async peek(kind: RateKind, who: string, windowMs: number): Promise<number> {
    return Number((await this.#redis.get(this.#key(kind, who, windowMs))) ?? 0);
  }
}
