/**
 * The directory: hosted domains and users, in Redis. Read by smtp-ingress (RCPT checks, AUTH),
 * router (local or remote), imap and pop3 (login); written by admin.
 *
 * Keys (prefix P):
 *   P dir:domains            SET of hosted domains
 *   P dir:domain:<d>         HASH catchAll, createdAt
 *   P dir:users:<d>          SET of the domain's user addresses
 *   P dir:user:<address>     HASH password (scrypt), createdAt, quota, disabled
 *   P dir:alias:<address>    SET of target addresses (local users, other aliases, or external: forwarding)
 *   P dir:aliases:<d>        SET of the domain's alias addresses
 *   P dir:domalias:<d>       STRING target domain of a domain alias (mail for x@d goes to x@target)
 *   P dir:dkim:<d>           HASH selector, privateKey, publicKey, createdAt
 *
 * Recipient expansion (resolveRecipient) applies, in order: domain alias, exact user, alias
 * (recursively, each address once, loops and depth bounded), plus-addressing (user+tag@), and the
 * domain's catch-all.
 *
 * Redis Cluster: these keys are spread over hash slots on purpose (the directory is read on every
 * RCPT and login, and one slot would put all of it on one master), so no write uses MULTI across
 * keys. Each write is a sequence of single-key, idempotent steps, ordered so that a crash half way
 * leaves a state that is safe and that a retry of the same call repairs:
 *  - One key is authoritative for each entry: `dir:domains` membership for a domain, the user HASH
 *    with a `password` field for a user, a non-empty `dir:alias:<a>` SET for an alias. It is
 *    written last when an entry is created and removed first when it is deleted, so an entry is
 *    either fully there or not there at all for the readers (RCPT, routing, login).
 *  - Index SETs (`dir:users:<d>`, `dir:aliases:<d>`) and metadata (`dir:domain:<d>`, domain alias,
 *    DKIM key) are written before the authoritative key and removed after it. Readers skip an index
 *    member without its entry, and a retried call (or removeDomain) cleans what a crash left.
 *  - A user is created by one single-key script (password and fields together, only if absent),
 *    and a password or quota is set by a single-key script that checks the user still exists, so
 *    a concurrent removeUser never leaves a record without a password behind.
 */
import type { Redis } from 'ioredis';
import type { Authenticator } from './mailbox-api.ts';
import { canonicalAddress, parseAddress } from './address.ts';
import { dummyHash, hashPassword, verifyPassword } from './passwords.ts';
import { DEFAULT_LOGIN_CACHE_TTL_MS, LoginCache } from './login-cache.ts';

export interface UserRecord {
  address: string;
  createdAt: number;
  quota: number;
  disabled: boolean;
}

/** Where one recipient's mail goes: local mailboxes and external addresses (forwarding). */
export interface Expansion {
  users: string[];
  external: string[];
  /** Whether the recipient's own domain is hosted here (else `external` is the recipient itself). */
  hosted: boolean;
}

/** Alias chains deeper than this are treated as a loop (Postfix's virtual_alias_recursion_limit is 1000; real chains are short). */
const MAX_ALIAS_DEPTH = 20;
/** One recipient may expand to at most this many addresses (Postfix's virtual_alias_expansion_limit). */
const MAX_EXPANSION = 1000;

export class DirectoryError extends Error {
  readonly code: 'EXISTS' | 'NOT_FOUND' | 'INVALID' | 'NOT_EMPTY' | 'LOOP';
  constructor(code: DirectoryError['code'], message: string) {
    super(message);
    this.name = 'DirectoryError';
    this.code = code;
  }
}

/** KEYS[1]: user HASH. ARGV: field/value pairs. Creates the user only if it has no password yet. */
const CREATE_USER = `
if redis.call('HEXISTS', KEYS[1], 'password') == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
`;

/** KEYS[1]: HASH; ARGV[1]: field that must exist; then field/value pairs. Sets them only on an existing entry. */
const HSET_IF = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
`;

/** The form hashPassword writes (services/core/passwords.ts), the only one verifyPassword reads. */
const PASSWORD_HASH_RE = /^\$scrypt\$ln=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/;
const DOMAIN_RE = /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/;
const LOCAL_RE = /^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$/;

function domainOfAddr(a: string): string {
  return parseAddress(a)?.domain ?? '';
}

export function validDomain(domain: string): boolean {
  return DOMAIN_RE.test(domain);
}

export interface DirectoryOptions {
  /** Lifetime of a verified login (AUTH_CACHE_TTL, ms; 0: every login runs scrypt). */
  loginCacheTtlMs?: number;
  /** Most verified logins remembered. */
  loginCacheEntries?: number;
  /** Clock of the login cache (tests). */
  now?: () => number;
  /** The password check (tests count its calls); verifyPassword by default. */
  verify?: (password: string, stored: string) => Promise<boolean>;
}

/** Longest a routing answer is kept without hearing of a change (a write made outside this class). */
export const ROUTE_CACHE_TTL_MS = 60_000;
/** Routing answers remembered at most (all forgotten at once past it). */
const ROUTE_CACHE_MAX = 100_000;

export class Directory implements Authenticator {
  readonly #redis: Redis;
  readonly #p: string;
  readonly #logins: LoginCache;
  readonly #verify: (password: string, stored: string) => Promise<boolean>;
  /**
   * Routing answers (isLocalDomain, resolveRecipient) while this directory follows the changes
   * channel (followChanges): every write below announces itself there, and any announcement
   * forgets them all. `#generation` counts forgettings: an answer read across one is not kept.
   */
  readonly #routes = new Map<string, { at: number; value: unknown }>();
  #generation = 0;
  #following = false;
  #subscriber: Redis | null = null;

  constructor(redis: Redis, prefix: string, options: DirectoryOptions = {}) {
    this.#redis = redis;
    this.#p = prefix;
    this.#logins = new LoginCache({
      ttlMs: options.loginCacheTtlMs ?? DEFAULT_LOGIN_CACHE_TTL_MS,
      maxEntries: options.loginCacheEntries,
      now: options.now,
    });
    this.#verify = options.verify ?? verifyPassword;
    for (const [name, lua] of Object.entries({ dirCreateUser: CREATE_USER, dirHsetIf: HSET_IF })) {
      if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 1, lua });
    }
  }

  #script(name: 'dirCreateUser' | 'dirHsetIf', key: string, ...args: string[]): Promise<unknown> {
    const fn = (this.#redis as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[name];
    if (!fn) throw new Error(`script ${name} not defined`);
    return fn.call(this.#redis, key, ...args);
  }

  /** HSET on an existing entry only (HSET_IF); false when the entry is gone. */
  async #hsetIf(key: string, guard: string, fields: Record<string, string>): Promise<boolean> {
    return (await this.#script('dirHsetIf', key, guard, ...Object.entries(fields).flat())) === 1;
  }

  #k(...parts: string[]): string {
    return `${this.#p}dir:${parts.join(':')}`;
  }

  /**
   * Keeps routing answers in memory until the directory changes: every write of this class
   * publishes on `P dir:changed`, to which `subscriber` (a connection of its own, handed over)
   * subscribes. Nothing is kept while it is not subscribed (connecting, or reconnecting after a
   * loss in which announcements may have been missed), nor for longer than ROUTE_CACHE_TTL_MS.
   */
  async followChanges(subscriber: Redis): Promise<void> {
    this.#subscriber = subscriber;
    const channel = this.#k('changed');
    const subscribe = async () => {
      await subscriber.subscribe(channel);
      this.#forget();
      this.#following = true;
    };
    subscriber.on('message', (ch: string) => {
      if (ch === channel) this.#forget();
    });
    subscriber.on('close', () => {
      this.#following = false;
      this.#forget();
    });
    subscriber.on('ready', () => void subscribe().catch(() => undefined));
    if (subscriber.status !== 'ready') await subscriber.connect();
    await subscribe();
  }

  /** Stops following changes (and keeping answers). */
  close(): void {
    this.#following = false;
    this.#forget();
    this.#subscriber?.disconnect();
    this.#subscriber = null;
  }

  #forget(): void {
    this.#generation++;
    this.#routes.clear();
  }

  async #cached<T>(key: string, load: () => Promise<T>): Promise<T> {
    if (!this.#following) return load();
    const now = Date.now();
    const hit = this.#routes.get(key);
    if (hit && now - hit.at < ROUTE_CACHE_TTL_MS) return hit.value as T;
    const generation = this.#generation;
    const value = await load();
    if (this.#following && generation === this.#generation) {
      if (this.#routes.size >= ROUTE_CACHE_MAX) this.#routes.clear();
      this.#routes.set(key, { at: now, value });
    }
    return value;
  }

  /** Runs a write, then tells every follower (even when the write failed half way). */
  async #write<T>(write: () => Promise<T>): Promise<T> {
    // This process never reads its own writes stale: it forgets before and after, at once.
    this.#forget();
    try {
      return await write();
    } finally {
      this.#forget();
      // Best effort: followers that miss it keep their answers for ROUTE_CACHE_TTL_MS at most.
      await this.#redis.publish(this.#k('changed'), '1').catch(() => undefined);
    }
  }

  async addDomain(name: string): Promise<string> {
    return this.#write(async () => {
      const domain = name.trim().toLowerCase().replace(/\.$/, '');
      if (!validDomain(domain))
        throw new DirectoryError('INVALID', `not a valid domain name: ${JSON.stringify(name)}`);
      if (await this.isLocalDomain(domain))
        throw new DirectoryError('EXISTS', `domain ${domain} already exists`);
      // Metadata first, then the authoritative membership (see the header: Redis Cluster).
      await this.#redis.hsetnx(this.#k('domain', domain), 'createdAt', String(Date.now()));
      if ((await this.#redis.sadd(this.#k('domains'), domain)) === 0)
        throw new DirectoryError('EXISTS', `domain ${domain} already exists`);
      return domain;
    });
  }

  /**
   * Removes a hosted domain (or domain alias) with its aliases, catch-all, quotas and DKIM key; it
   * must have no users left. Hosting stops first; the rest is cleaned after, so a retry after a
   * crash finishes the job (and answers NOT_FOUND only when nothing was left).
   */
  async removeDomain(name: string): Promise<void> {
    return this.#write(async () => {
      const domain = name.trim().toLowerCase().replace(/\.$/, '');
      const users = await this.#liveMembers(this.#k('users', domain), (a) => this.#k('user', a), 'password');
      if (users.length > 0) {
        throw new DirectoryError('NOT_EMPTY', `domain ${domain} still has users; remove them first`);
      }
      const hosted = (await this.#redis.srem(this.#k('domains'), domain)) === 1;
      let left = 0;
      for (const a of await this.#redis.smembers(this.#k('aliases', domain))) {
        left += await this.#redis.del(this.#k('alias', a));
        await this.#redis.srem(this.#k('aliases', domain), a);
      }
      for (const key of ['users', 'aliases', 'domain', 'domalias', 'dkim'])
        left += await this.#redis.del(this.#k(key, domain));
      if (!hosted && left === 0) throw new DirectoryError('NOT_FOUND', `no domain ${domain}`);
    });
  }

  /** Members of an index SET whose entry exists (a crash may leave a member without it). */
  async #liveMembers(index: string, keyOf: (m: string) => string, guard: string): Promise<string[]> {
    const out: string[] = [];
    for (const m of await this.#redis.smembers(index)) {
      if (await this.#redis.hexists(keyOf(m), guard)) out.push(m);
    }
    return out;
  }

  async listDomains(): Promise<string[]> {
    return (await this.#redis.smembers(this.#k('domains'))).sort();
  }

  /**
   * A user's quota limits (RFC 9208): the user's own (user HASH `quota` octets, `quotaMessages`),
   * else the domain's default (domain HASH `quotaBytes`, `quotaMessages`); 0 means none.
   */
  async quotaOf(address: string): Promise<{ bytes: number; messages: number }> {
    const addr = canonicalAddress(address);
    const [ub, um] = await this.#redis.hmget(this.#k('user', addr), 'quota', 'quotaMessages');
    const [db, dm] = await this.#redis.hmget(
      this.#k('domain', domainOfAddr(addr)),
      'quotaBytes',
      'quotaMessages',
    );
    return { bytes: Number(ub) || Number(db) || 0, messages: Number(um) || Number(dm) || 0 };
  }

  /** A domain's default limits for its users (0: none). */
  async domainQuota(domain: string): Promise<{ bytes: number; messages: number }> {
    const [b, m] = await this.#redis.hmget(
      this.#k('domain', domain.toLowerCase()),
      'quotaBytes',
      'quotaMessages',
    );
    return { bytes: Number(b) || 0, messages: Number(m) || 0 };
  }

  /** Sets a user's own limits (0: fall back to the domain's default). */
  async setUserQuota(address: string, limits: { bytes: number; messages: number }): Promise<void> {
    const addr = canonicalAddress(address);
    const fields = { quota: String(limits.bytes), quotaMessages: String(limits.messages) };
    if (!(await this.#hsetIf(this.#k('user', addr), 'password', fields)))
      throw new DirectoryError('NOT_FOUND', `no user ${addr}`);
  }

  /** Sets a domain's default limits for its users (0: none). */
  async setDomainQuota(domain: string, limits: { bytes: number; messages: number }): Promise<void> {
    const d = domain.toLowerCase();
    if (!(await this.isLocalDomain(d))) throw new DirectoryError('NOT_FOUND', `no domain ${d}`);
    await this.#redis.hset(this.#k('domain', d), {
      quotaBytes: String(limits.bytes),
      quotaMessages: String(limits.messages),
    });
  }

  async isLocalDomain(domain: string): Promise<boolean> {
    const d = domain.toLowerCase().replace(/\.$/, '');
    return this.#cached(`d:${d}`, async () => (await this.#redis.sismember(this.#k('domains'), d)) === 1);
  }

  async addUser(address: string, password: string): Promise<string> {
    return this.#write(async () => {
      const addr = canonicalAddress(address);
      const p = parseAddress(addr);
      if (!p || !LOCAL_RE.test(p.local))
        throw new DirectoryError('INVALID', `not a valid address: ${JSON.stringify(address)}`);
      if (!(await this.isLocalDomain(p.domain))) {
        throw new DirectoryError('NOT_FOUND', `domain ${p.domain} is not hosted here; add it first`);
      }
      if (password.length < 8)
        throw new DirectoryError('INVALID', 'password must have at least 8 characters');
      const hash = await hashPassword(password);
      // The index first, then the user in one single-key script (see the header: Redis Cluster).
      await this.#redis.sadd(this.#k('users', p.domain), addr);
      const fields = { password: hash, createdAt: String(Date.now()), quota: '0', disabled: '0' };
      const created = await this.#script(
        'dirCreateUser',
        this.#k('user', addr),
        ...Object.entries(fields).flat(),
      );
      if (created === 0) throw new DirectoryError('EXISTS', `user ${addr} already exists`);
      return addr;
    });
  }

  async setPassword(address: string, password: string): Promise<void> {
    const addr = canonicalAddress(address);
    if (password.length < 8) throw new DirectoryError('INVALID', 'password must have at least 8 characters');
    const hash = await hashPassword(password);
    if (!(await this.#hsetIf(this.#k('user', addr), 'password', { password: hash })))
      throw new DirectoryError('NOT_FOUND', `no user ${addr}`);
  }

  /** Removes a user: the record first (no more logins or mail), then its index entry, even on a retry. */
  async removeUser(address: string): Promise<void> {
    return this.#removeEntry('user', 'users', address);
  }

  /** The record of an entry first, then its name in the domain's index; NOT_FOUND when neither was there. */
  #removeEntry(kind: 'user' | 'alias', index: 'users' | 'aliases', address: string): Promise<void> {
    return this.#write(async () => {
      const addr = canonicalAddress(address);
      const p = parseAddress(addr);
      const removed = await this.#redis.del(this.#k(kind, addr));
      const unlisted = p ? await this.#redis.srem(this.#k(index, p.domain), addr) : 0;
      if (!removed && !unlisted) throw new DirectoryError('NOT_FOUND', `no ${kind} ${addr}`);
    });
  }

  async listUsers(domain?: string): Promise<UserRecord[]> {
    const domains = domain ? [domain.toLowerCase()] : await this.listDomains();
    const out: UserRecord[] = [];
    for (const d of domains) {
      const addrs = (await this.#redis.smembers(this.#k('users', d))).sort();
      for (const a of addrs) {
        const h = await this.#redis.hgetall(this.#k('user', a));
        if (!h.password) continue;
        out.push({
          address: a,
          createdAt: Number(h.createdAt ?? 0),
          quota: Number(h.quota ?? 0),
          disabled: h.disabled === '1',
        });
      }
    }
    return out;
  }

  /** The user a hosted address delivers to (exact, then plus-addressing `user+tag@`), or null. */
  async resolveUser(address: string): Promise<string | null> {
    const addr = canonicalAddress(address);
    if (await this.#redis.hexists(this.#k('user', addr), 'password')) return addr;
    const p = parseAddress(addr);
    const plus = p?.local.indexOf('+') ?? -1;
    if (p && plus > 0) {
      const base = `${p.local.slice(0, plus)}@${p.domain}`;
      if (await this.#redis.hexists(this.#k('user', base), 'password')) return base;
    }
    return null;
  }

  /** Adds an alias (or adds targets to it): an address of a hosted domain that delivers to the targets. */
  async addAlias(alias: string, targets: string[]): Promise<string> {
    return this.#write(async () => {
      const addr = canonicalAddress(alias);
      const p = parseAddress(addr);
      if (!p || !LOCAL_RE.test(p.local))
        throw new DirectoryError('INVALID', `not a valid address: ${JSON.stringify(alias)}`);
      if (!(await this.isLocalDomain(p.domain)))
        throw new DirectoryError('NOT_FOUND', `domain ${p.domain} is not hosted here`);
      if (await this.#redis.hexists(this.#k('user', addr), 'password')) {
        throw new DirectoryError('EXISTS', `${addr} is a user; an alias cannot have the same address`);
      }
      const clean = targets.map((t) => t.trim()).filter(Boolean);
      if (clean.length === 0 || clean.some((t) => !parseAddress(t))) {
        throw new DirectoryError('INVALID', 'an alias needs one or more target addresses');
      }
      const wanted = [...new Set(clean.map(canonicalAddress))];
      const had = new Set(await this.#redis.smembers(this.#k('alias', addr)));
      const added = wanted.filter((t) => !had.has(t));
      // The index first, then the targets (see the header: Redis Cluster). A crash before the loop
      // check below leaves a looping alias, which routing refuses (5.4.6); the retry removes it.
      await this.#redis.sadd(this.#k('aliases', p.domain), addr);
      await this.#redis.sadd(this.#k('alias', addr), ...wanted);
      // Refuse what would loop back to itself with no mailbox at the end: only the targets added
      // now are taken back, the alias keeps the ones it had.
      const undo = async () => {
        if (added.length > 0) await this.#redis.srem(this.#k('alias', addr), ...added);
        if (!(await this.#redis.exists(this.#k('alias', addr))))
          await this.#redis.srem(this.#k('aliases', p.domain), addr);
      };
      const exp = await this.resolveRecipient(addr).catch(async (err: unknown) => {
        await undo();
        throw err;
      });
      if (exp && exp.users.length === 0 && exp.external.length === 0) {
        await undo();
        throw new DirectoryError('LOOP', `alias ${addr} leads to no mailbox`);
      }
      return addr;
    });
  }

  /** Removes an alias: its targets first (no more mail), then its index entry, even on a retry. */
  async removeAlias(alias: string): Promise<void> {
    return this.#removeEntry('alias', 'aliases', alias);
  }

  async listAliases(domain?: string): Promise<{ alias: string; targets: string[] }[]> {
    const domains = domain ? [domain.toLowerCase()] : await this.listDomains();
    const out: { alias: string; targets: string[] }[] = [];
    for (const d of domains) {
      for (const a of (await this.#redis.smembers(this.#k('aliases', d))).sort()) {
        const targets = (await this.#redis.smembers(this.#k('alias', a))).sort();
        // An index entry without targets is one a crash left half made (or half removed).
        if (targets.length > 0) out.push({ alias: a, targets });
      }
    }
    return out;
  }

  /** Sets (or with '' clears) the catch-all of a hosted domain: where mail to unknown local parts goes. */
  async setCatchAll(domain: string, target: string): Promise<void> {
    return this.#write(async () => {
      const d = domain.trim().toLowerCase();
      if (!(await this.isLocalDomain(d))) throw new DirectoryError('NOT_FOUND', `no domain ${d}`);
      if (target && !parseAddress(target))
        throw new DirectoryError('INVALID', `not a valid address: ${JSON.stringify(target)}`);
      if (target) await this.#redis.hset(this.#k('domain', d), 'catchAll', canonicalAddress(target));
      else await this.#redis.hdel(this.#k('domain', d), 'catchAll');
    });
  }

  /** Makes `alias` a domain alias of the hosted domain `target`: x@alias is delivered as x@target. */
  async addDomainAlias(alias: string, target: string): Promise<void> {
    return this.#write(async () => {
      const a = alias.trim().toLowerCase();
      const t = target.trim().toLowerCase();
      if (!validDomain(a))
        throw new DirectoryError('INVALID', `not a valid domain name: ${JSON.stringify(alias)}`);
      if (!(await this.isLocalDomain(t))) throw new DirectoryError('NOT_FOUND', `no domain ${t}`);
      if ((await this.#liveMembers(this.#k('users', a), (u) => this.#k('user', u), 'password')).length > 0)
        throw new DirectoryError('NOT_EMPTY', `domain ${a} has users`);
      // The target first, then the membership that makes the alias domain hosted (Redis Cluster).
      await this.#redis.set(this.#k('domalias', a), t);
      await this.#redis.sadd(this.#k('domains'), a);
    });
  }

  /**
   * Expands a recipient of a hosted domain into local mailboxes and external addresses.
   * Returns null when the address does not exist here (550 5.1.1 at RCPT).
   * Throws DirectoryError('LOOP') when aliases loop or nest too deep.
   */
  resolveRecipient(address: string): Promise<Expansion | null> {
    return this.#cached(`r:${address}`, () => this.#resolve(address));
  }

  async #resolve(address: string): Promise<Expansion | null> {
    const users = new Set<string>();
    const external = new Set<string>();
    const seen = new Set<string>();
    let found = false;
    let hosted = false;
    const visit = async (addr: string, depth: number): Promise<void> => {
      if (depth > MAX_ALIAS_DEPTH)
        throw new DirectoryError('LOOP', `alias chain of ${address} is too deep (a loop?)`);
      if (users.size + external.size > MAX_EXPANSION)
        throw new DirectoryError('LOOP', `${address} expands to too many addresses`);
      let a = canonicalAddress(addr);
      const p = parseAddress(a);
      if (!p) return;
      // The three lookups of the common case (no domain alias) at once, in one round trip; a
      // domain alias (rare) makes the last two be asked again for the address it leads to.
      const [target, localFirst, userFirst] = await Promise.all([
        this.#redis.get(this.#k('domalias', p.domain)),
        this.isLocalDomain(p.domain),
        this.#redis.hexists(this.#k('user', a), 'password'),
      ]);
      let local = localFirst;
      let isUser = userFirst;
      if (depth === 0) hosted = localFirst;
      if (target) {
        a = `${p.local}@${target}`;
        [local, isUser] = await Promise.all([
          this.isLocalDomain(target),
          this.#redis.hexists(this.#k('user', a), 'password'),
        ]);
      }
      // Each address is expanded once: a second visit is a loop or a duplicate, and adds nothing.
      if (seen.has(a)) return;
      seen.add(a);
      if (!local) {
        external.add(a);
        found = true;
        return;
      }
      if (isUser) {
        users.add(a);
        found = true;
        return;
      }
      const targets = await this.#redis.smembers(this.#k('alias', a));
      if (targets.length > 0) {
        found = true;
        for (const t of targets) await visit(t, depth + 1);
        return;
      }
      const user = await this.resolveUser(a);
      if (user) {
        users.add(user);
        found = true;
        return;
      }
      if (depth === 0) {
        const catchAll = await this.#redis.hget(this.#k('domain', domainOfAddr(a)), 'catchAll');
        if (catchAll) {
          found = true;
          await visit(catchAll, depth + 1);
        }
      }
    };
    await visit(address, 0);
    return found ? { users: [...users], external: [...external], hosted } : null;
  }

  /**
   * The user a login and password open, or null. The record (hash, disabled flag) is read on every
   * call, so a password change, a disabled account or a removed user takes effect at once; only the
   * scrypt of a login already verified with this very hash is skipped (services/core/login-cache.ts).
   * A failure is never remembered, and an unknown user costs a scrypt too (timing tells nothing).
   */
  async authenticate(login: string, password: string): Promise<string | null> {
    const addr = canonicalAddress(login);
    const h = await this.#redis.hmget(this.#k('user', addr), 'password', 'disabled');
    const stored = h[0];
    if (!stored) {
      await this.#verify(password, await dummyHash());
      return null;
    }
    let ok = this.#logins.has(addr, password, stored);
    if (!ok) {
      ok = await this.#verify(password, stored);
      if (ok) this.#logins.remember(addr, password, stored);
    }
    return ok && h[1] !== '1' ? addr : null;
  }

  /**
   * Bulk import (services/admin/import.ts): adds many domains, then many users, each step sent
   * pipelined (all commands of a step written back to back, one round trip per step) and in the
   * write order of the header: a domain's metadata before its membership; a user's index entry
   * before the single-key script that creates the record. Users come with a password hash already
   * made (`$scrypt$...`, as hashPassword makes): hashing a million passwords here would take hours.
   * Existing entries are left as they are and counted. Aliases go through addAlias (loop checks).
   */
  async importBatch(batch: {
    domains: string[];
    users: { address: string; passwordHash: string; quota?: number }[];
  }): Promise<{
    domainsAdded: number;
    usersAdded: number;
    /** Entries refused: which list and the position in it. */
    errors: { kind: 'domain' | 'user'; index: number; error: string }[];
  }> {
    return this.#write(async () => {
      const errors: { kind: 'domain' | 'user'; index: number; error: string }[] = [];
      const domains: string[] = [];
      for (const [index, name] of batch.domains.entries()) {
        const d = name.trim().toLowerCase().replace(/\.$/, '');
        if (validDomain(d)) domains.push(d);
        else
          errors.push({ kind: 'domain', index, error: `not a valid domain name: ${JSON.stringify(name)}` });
      }
      const now = String(Date.now());
      await Promise.all(domains.map((d) => this.#redis.hsetnx(this.#k('domain', d), 'createdAt', now)));
      const added = await Promise.all(domains.map((d) => this.#redis.sadd(this.#k('domains'), d)));
      const domainsAdded = added.filter((n) => n === 1).length;

      const users: { index: number; addr: string; domain: string; hash: string; quota: number }[] = [];
      for (const [index, u] of batch.users.entries()) {
        const addr = canonicalAddress(u.address);
        const p = parseAddress(addr);
        if (!p || !LOCAL_RE.test(p.local))
          errors.push({ kind: 'user', index, error: `not a valid address: ${JSON.stringify(u.address)}` });
        else if (!PASSWORD_HASH_RE.test(u.passwordHash))
          errors.push({ kind: 'user', index, error: 'passwordHash must be a $scrypt$ hash' });
        else users.push({ index, addr, domain: p.domain, hash: u.passwordHash, quota: u.quota ?? 0 });
      }
      const userDomains = [...new Set(users.map((u) => u.domain))];
      const hosted = await Promise.all(userDomains.map((d) => this.isLocalDomain(d)));
      const unhosted = new Set(userDomains.filter((_, i) => !hosted[i]));
      const ready = users.filter((u) => {
        if (!unhosted.has(u.domain)) return true;
        errors.push({
          kind: 'user',
          index: u.index,
          error: `domain ${u.domain} is not hosted here; add it first`,
        });
        return false;
      });
      await Promise.all(ready.map((u) => this.#redis.sadd(this.#k('users', u.domain), u.addr)));
      const created = await Promise.all(
        ready.map((u) =>
          this.#script(
            'dirCreateUser',
            this.#k('user', u.addr),
            ...['password', u.hash, 'createdAt', now, 'quota', String(u.quota), 'disabled', '0'],
          ),
        ),
      );
      return { domainsAdded, usersAdded: created.filter((n) => n === 1).length, errors };
    });
  }

  /** Stores the DKIM signing key of a hosted domain (P dir:dkim:<d> HASH selector, privateKey, publicKey, createdAt). */
  async setDkimKey(
    domain: string,
    key: { selector: string; privateKey: string; publicKey: string },
  ): Promise<void> {
    const d = domain.trim().toLowerCase();
    if (!(await this.isLocalDomain(d))) throw new DirectoryError('NOT_FOUND', `no domain ${d}`);
    await this.#redis.hset(this.#k('dkim', d), { ...key, createdAt: String(Date.now()) });
  }

  /** The DKIM signing key of a hosted domain, or null when it has none. */
  async getDkimKey(
    domain: string,
  ): Promise<{ selector: string; privateKey: string; publicKey: string; createdAt: number } | null> {
    const h = await this.#redis.hgetall(this.#k('dkim', domain.trim().toLowerCase()));
    if (!h.selector || !h.privateKey || !h.publicKey) return null;
    return {
      selector: h.selector,
      privateKey: h.privateKey,
      publicKey: h.publicKey,
      createdAt: Number(h.createdAt ?? 0),
    };
  }
}
