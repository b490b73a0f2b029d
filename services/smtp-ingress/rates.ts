/**
 * Rates shared by every ingress replica through Redis: fixed-window counters (INCRBY, and PEXPIRE
 * when the window's key is new, in one script), keyed by what is counted and by whom (client IP or
 * user), so that a client spread over replicas meets one limit. AUTH failures are counted the same
 * way, per IP and per account, one command per failure.
 *
 * Connections, messages and recipients are taken from the counter in leases (Rates.take): a replica
 * reserves a 64th of the limit at once (at most 256, at least 1) and hands it out locally, so a busy
 * client costs one Redis command per lease instead of one per hit, and a limit below 128 is still
 * counted hit by hit. What a lease leaves unused at the end of its window is lost: a client spread
 * over R replicas may be refused up to (R - 1) x (lease - 1) hits early, never let past the limit.
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

/** Tokens a replica holds for one counter, in one window. */
interface Lease {
  window: number;
  left: number;
  /** The counter is past the limit in this window: refused without asking Redis again. */
  spent: boolean;
  /** A lease being taken: concurrent hits wait for it instead of taking their own. */
  taking: Promise<void> | null;
}

/** Leases kept before those of past windows are swept (one per client and kind). */
const LEASES_SWEEP_AT = 10_000;

/** Tokens reserved at once for a limit: a 64th of it, 1 to 256. */
export function leaseSize(limit: number): number {
  return Math.max(1, Math.min(256, Math.floor(limit / 64)));
}

export class Rates {
  readonly #redis: RateRedis;
  readonly #prefix: string;
  readonly #leases = new Map<string, Lease>();
  /** The window of the last sweep: at most one a window, however many clients come. */
  #swept = -1;

  constructor(redis: Redis, prefix: string) {
    if (!('rateHit' in redis)) redis.defineCommand('rateHit', { numberOfKeys: 1, lua: RATE_HIT });
    this.#redis = redis as RateRedis;
    this.#prefix = prefix;
  }

  #key(kind: RateKind, who: string, windowMs: number, window = Math.floor(Date.now() / windowMs)): string {
    return `${this.#prefix}smtp:rate:${kind}:${who}:${window}`;
  }

  /**
   * One hit against `limit` in this window: true when it is allowed. Served from this replica's
   * lease while it lasts; an exhausted lease takes the next one from Redis (see the header).
   */
  async take(kind: RateKind, who: string, windowMs: number, limit: number): Promise<boolean> {
    const id = `${kind}:${who}`;
    for (;;) {
      const window = Math.floor(Date.now() / windowMs);
      let lease = this.#leases.get(id);
      if (!lease || lease.window !== window) {
        if (this.#leases.size >= LEASES_SWEEP_AT && this.#swept !== window) {
          this.#swept = window;
          this.#sweep(windowMs);
        }
        lease = { window, left: 0, spent: false, taking: null };
        this.#leases.set(id, lease);
      }
      if (lease.left > 0) {
        lease.left--;
        return true;
      }
      if (lease.spent) return false;
      if (!lease.taking) {
        const l = lease;
        l.taking = this.#takeLease(kind, who, windowMs, window, limit, l).finally(() => (l.taking = null));
      }
      await lease.taking;
    }
  }

  async #takeLease(
    kind: RateKind,
    who: string,
    windowMs: number,
    window: number,
    limit: number,
    lease: Lease,
  ): Promise<void> {
    const size = leaseSize(limit);
    const key = this.#key(kind, who, windowMs, window);
    const count = Number(await this.#redis.rateHit(key, size, windowMs * 2));
    if (!Number.isFinite(count)) throw new Error(`rate counter ${key} failed`);
    // Reserved before this lease: count - size. What is left under the limit is this lease's.
    const granted = Math.max(0, Math.min(size, limit - (count - size)));
    lease.left += granted;
    if (granted === 0) lease.spent = true;
  }

  /** Drops the leases of windows that are over (they would never be used again). */
  #sweep(windowMs: number): void {
    const now = Date.now();
    for (const [id, lease] of this.#leases) {
      if ((lease.window + 1) * windowMs <= now && !lease.taking) this.#leases.delete(id);
    }
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
