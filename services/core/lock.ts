/**
 * Maildrop leases in Redis (POP3 exclusive access, RFC 1939 section 8): SET NX PX with a random
 * token, renewed while the session lives; a replica that dies stops renewing and its lease expires.
 * Release and renewal compare the token, so a stale holder can never free or extend a new lease.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { MaildropLock } from './mailbox-api.ts';
import { canonicalAddress } from './address.ts';

const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`;

export class RedisMaildropLock implements MaildropLock {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #leaseMs: number;
  readonly #logger: Logger;

  /** `leaseMs`: how long a lock outlives a holder that stopped renewing it (POP3_LOCK_LEASE). */
  constructor(redis: Redis, prefix: string, logger: Logger, leaseMs = 30_000) {
    if (!Number.isSafeInteger(leaseMs) || leaseMs < 100) {
      throw new RangeError(`maildrop lock lease must be at least 100 ms, got ${String(leaseMs)}`);
    }
    this.#redis = redis;
    this.#prefix = prefix;
    this.#leaseMs = leaseMs;
    this.#logger = logger;
  }

  async acquire(user: string): Promise<(() => Promise<void>) | null> {
    const key = `${this.#prefix}{u:${canonicalAddress(user)}}:pop3lock`;
    const token = randomBytes(16).toString('hex');
    const ok = await this.#redis.set(key, token, 'PX', this.#leaseMs, 'NX');
    if (ok !== 'OK') return null;
    const timer = setInterval(
      () => {
        this.#redis.eval(RENEW, 1, key, token, this.#leaseMs).then(
          (r) => {
            if (r === 0) this.#logger.warn({ user }, 'maildrop lease lost');
          },
          (err: unknown) => this.#logger.warn({ err, user }, 'maildrop lease renewal failed'),
        );
      },
      Math.floor(this.#leaseMs / 3),
    );
    timer.unref();
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      clearInterval(timer);
      await this.#redis.eval(RELEASE, 1, key, token);
    };
  }
}
