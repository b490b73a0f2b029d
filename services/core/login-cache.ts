/**
 * The verified-login cache: a repeated login with the same correct password costs no scrypt.
 *
 * After a successful scrypt verify, Directory.authenticate remembers
 * HMAC-SHA256(per-process random key, [address, password, stored hash]) with an expiry. A later
 * login whose HMAC is remembered skips scrypt. The stored hash is part of the HMAC input and is
 * read from Redis on every login, so a password change (a new hash, with a new salt) misses the
 * cache at once; the disabled flag and the user's existence are read on every login too, outside
 * this cache. Failures are never remembered: a wrong password always costs a full scrypt.
 *
 * Neither passwords nor hashes of them that could be attacked offline are kept: the key is random,
 * made at start and never leaves the process, so a memory dump of the entries alone gives nothing
 * to brute-force. Entries live `ttlMs` from the verify that made them (a hit does not extend it),
 * and at most `maxEntries` are kept, the least recently used going first.
 */
import { createHmac, randomBytes } from 'node:crypto';

/** Default lifetime of an entry: Dovecot's auth_cache_ttl is 1 hour; 5 minutes bounds how long a stolen-then-changed password lingers in memory. */
export const DEFAULT_LOGIN_CACHE_TTL_MS = 300_000;
/** Entries kept: ~100 bytes each, so ~1 MiB; more concurrent users than this simply pay scrypt again. */
export const DEFAULT_LOGIN_CACHE_ENTRIES = 10_000;

export interface LoginCacheOptions {
  /** Lifetime of an entry in ms; 0 disables the cache. */
  ttlMs: number;
  /** Most entries kept (least recently used evicted first). */
  maxEntries?: number;
  /** Clock (tests). */
  now?: () => number;
}

export class LoginCache {
  readonly #key = randomBytes(32);
  readonly #ttl: number;
  readonly #max: number;
  readonly #now: () => number;
  /** HMAC (base64) → expiry; Map order is recency order (oldest first). */
  readonly #entries = new Map<string, number>();

  constructor(options: LoginCacheOptions) {
    this.#ttl = Math.max(0, options.ttlMs);
    this.#max = Math.max(1, options.maxEntries ?? DEFAULT_LOGIN_CACHE_ENTRIES);
    this.#now = options.now ?? Date.now;
  }

  get enabled(): boolean {
    return this.#ttl > 0;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The entry key: the three parts in an unambiguous encoding (a NUL cannot move a boundary). */
  #mac(address: string, password: string, storedHash: string): string {
    return createHmac('sha256', this.#key)
      .update(JSON.stringify([address, password, storedHash]))
      .digest('base64');
  }

  /** True when this exact (address, password, stored hash) was verified less than ttlMs ago. */
  has(address: string, password: string, storedHash: string): boolean {
    if (!this.enabled) return false;
    const mac = this.#mac(address, password, storedHash);
    const expires = this.#entries.get(mac);
    if (expires === undefined) return false;
    this.#entries.delete(mac);
    if (expires <= this.#now()) return false;
    this.#entries.set(mac, expires);
    return true;
  }

  /** Remembers a successful verify. Call only after scrypt said yes. */
  remember(address: string, password: string, storedHash: string): void {
    if (!this.enabled) return;
    const mac = this.#mac(address, password, storedHash);
    this.#entries.delete(mac);
    while (this.#entries.size >= this.#max) {
      const oldest = this.#entries.keys().next();
      if (oldest.done) break;
      this.#entries.delete(oldest.value);
    }
    this.#entries.set(mac, this.#now() + this.#ttl);
  }

  clear(): void {
    this.#entries.clear();
  }
}
