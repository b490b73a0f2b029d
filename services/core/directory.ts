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
 *
 * Recipient expansion (resolveRecipient) applies, in order: domain alias, exact user, alias
 * (recursively, each address once, loops and depth bounded), plus-addressing (user+tag@), and the
 * domain's catch-all.
 */
import type { Redis } from 'ioredis';
import type { Authenticator } from './mailbox-api.ts';
import { canonicalAddress, parseAddress } from './address.ts';
import { dummyHash, hashPassword, verifyPassword } from './passwords.ts';

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

const DOMAIN_RE = /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/;
const LOCAL_RE = /^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$/;

function domainOfAddr(a: string): string {
  return parseAddress(a)?.domain ?? '';
}

export function validDomain(domain: string): boolean {
  return DOMAIN_RE.test(domain);
}

export class Directory implements Authenticator {
  readonly #redis: Redis;
  readonly #p: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = redis;
    this.#p = prefix;
  }

  #k(...parts: string[]): string {
    return `${this.#p}dir:${parts.join(':')}`;
  }

  async addDomain(name: string): Promise<string> {
    const domain = name.trim().toLowerCase().replace(/\.$/, '');
    if (!validDomain(domain))
      throw new DirectoryError('INVALID', `not a valid domain name: ${JSON.stringify(name)}`);
    const added = await this.#redis
      .multi()
      .sadd(this.#k('domains'), domain)
      .hsetnx(this.#k('domain', domain), 'createdAt', String(Date.now()))
      .exec();
    if (added?.[0]?.[1] === 0) throw new DirectoryError('EXISTS', `domain ${domain} already exists`);
    return domain;
  }

  async removeDomain(name: string): Promise<void> {
    const domain = name.trim().toLowerCase();
    if (!(await this.isLocalDomain(domain))) throw new DirectoryError('NOT_FOUND', `no domain ${domain}`);
    if ((await this.#redis.scard(this.#k('users', domain))) > 0) {
      throw new DirectoryError('NOT_EMPTY', `domain ${domain} still has users; remove them first`);
    }
    // One key at a time (not MULTI): directory keys live in different Redis Cluster slots.
    await this.#redis.srem(this.#k('domains'), domain);
    await this.#redis.del(this.#k('domain', domain));
    await this.#redis.del(this.#k('domalias', domain));
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
    if (!(await this.#redis.exists(this.#k('user', addr))))
      throw new DirectoryError('NOT_FOUND', `no user ${addr}`);
    await this.#redis.hset(this.#k('user', addr), {
      quota: String(limits.bytes),
      quotaMessages: String(limits.messages),
    });
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
    return (await this.#redis.sismember(this.#k('domains'), domain.toLowerCase().replace(/\.$/, ''))) === 1;
  }

  async addUser(address: string, password: string): Promise<string> {
    const addr = canonicalAddress(address);
    const p = parseAddress(addr);
    if (!p || !LOCAL_RE.test(p.local))
      throw new DirectoryError('INVALID', `not a valid address: ${JSON.stringify(address)}`);
    if (!(await this.isLocalDomain(p.domain))) {
      throw new DirectoryError('NOT_FOUND', `domain ${p.domain} is not hosted here; add it first`);
    }
    if (password.length < 8) throw new DirectoryError('INVALID', 'password must have at least 8 characters');
    const hash = await hashPassword(password);
    const created = await this.#redis.hsetnx(this.#k('user', addr), 'password', hash);
    if (created === 0) throw new DirectoryError('EXISTS', `user ${addr} already exists`);
    await this.#redis
      .multi()
      .hset(this.#k('user', addr), { createdAt: String(Date.now()), quota: '0', disabled: '0' })
      .sadd(this.#k('users', p.domain), addr)
      .exec();
    return addr;
  }

  async setPassword(address: string, password: string): Promise<void> {
    const addr = canonicalAddress(address);
    if (!(await this.#redis.exists(this.#k('user', addr))))
      throw new DirectoryError('NOT_FOUND', `no user ${addr}`);
    if (password.length < 8) throw new DirectoryError('INVALID', 'password must have at least 8 characters');
    await this.#redis.hset(this.#k('user', addr), 'password', await hashPassword(password));
  }

  async removeUser(address: string): Promise<void> {
    const addr = canonicalAddress(address);
    const p = parseAddress(addr);
    const removed = await this.#redis.del(this.#k('user', addr));
    if (!removed || !p) throw new DirectoryError('NOT_FOUND', `no user ${addr}`);
    await this.#redis.srem(this.#k('users', p.domain), addr);
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
    await this.#redis
      .multi()
      .sadd(this.#k('alias', addr), ...clean.map(canonicalAddress))
      .sadd(this.#k('aliases', p.domain), addr)
      .exec();
    // Refuse what would loop back to itself with no mailbox at the end.
    const exp = await this.resolveRecipient(addr).catch(async (err: unknown) => {
      await this.removeAlias(addr);
      throw err;
    });
    if (exp && exp.users.length === 0 && exp.external.length === 0) {
      await this.removeAlias(addr);
      throw new DirectoryError('LOOP', `alias ${addr} leads to no mailbox`);
    }
    return addr;
  }

  async removeAlias(alias: string): Promise<void> {
    const addr = canonicalAddress(alias);
    const p = parseAddress(addr);
    const removed = await this.#redis.del(this.#k('alias', addr));
    if (p) await this.#redis.srem(this.#k('aliases', p.domain), addr);
    if (!removed) throw new DirectoryError('NOT_FOUND', `no alias ${addr}`);
  }

  async listAliases(domain?: string): Promise<{ alias: string; targets: string[] }[]> {
    const domains = domain ? [domain.toLowerCase()] : await this.listDomains();
    const out: { alias: string; targets: string[] }[] = [];
    for (const d of domains) {
      for (const a of (await this.#redis.smembers(this.#k('aliases', d))).sort()) {
        out.push({ alias: a, targets: (await this.#redis.smembers(this.#k('alias', a))).sort() });
      }
    }
    return out;
  }

  /** Sets (or with '' clears) the catch-all of a hosted domain: where mail to unknown local parts goes. */
  async setCatchAll(domain: string, target: string): Promise<void> {
    const d = domain.trim().toLowerCase();
    if (!(await this.isLocalDomain(d))) throw new DirectoryError('NOT_FOUND', `no domain ${d}`);
    if (target && !parseAddress(target))
      throw new DirectoryError('INVALID', `not a valid address: ${JSON.stringify(target)}`);
    if (target) await this.#redis.hset(this.#k('domain', d), 'catchAll', canonicalAddress(target));
    else await this.#redis.hdel(this.#k('domain', d), 'catchAll');
  }

  /** Makes `alias` a domain alias of the hosted domain `target`: x@alias is delivered as x@target. */
  async addDomainAlias(alias: string, target: string): Promise<void> {
    const a = alias.trim().toLowerCase();
    const t = target.trim().toLowerCase();
    if (!validDomain(a))
      throw new DirectoryError('INVALID', `not a valid domain name: ${JSON.stringify(alias)}`);
    if (!(await this.isLocalDomain(t))) throw new DirectoryError('NOT_FOUND', `no domain ${t}`);
    if ((await this.#redis.scard(this.#k('users', a))) > 0)
      throw new DirectoryError('NOT_EMPTY', `domain ${a} has users`);
    await this.#redis.multi().sadd(this.#k('domains'), a).set(this.#k('domalias', a), t).exec();
  }

  /**
   * Expands a recipient of a hosted domain into local mailboxes and external addresses.
   * Returns null when the address does not exist here (550 5.1.1 at RCPT).
   * Throws DirectoryError('LOOP') when aliases loop or nest too deep.
   */
  async resolveRecipient(address: string): Promise<Expansion | null> {
    const users = new Set<string>();
    const external = new Set<string>();
    const seen = new Set<string>();
    let found = false;
    const visit = async (addr: string, depth: number): Promise<void> => {
      if (depth > MAX_ALIAS_DEPTH)
        throw new DirectoryError('LOOP', `alias chain of ${address} is too deep (a loop?)`);
      if (users.size + external.size > MAX_EXPANSION)
        throw new DirectoryError('LOOP', `${address} expands to too many addresses`);
      let a = canonicalAddress(addr);
      const p = parseAddress(a);
      if (!p) return;
      const target = await this.#redis.get(this.#k('domalias', p.domain));
      if (target) a = `${p.local}@${target}`;
      // Each address is expanded once: a second visit is a loop or a duplicate, and adds nothing.
      if (seen.has(a)) return;
      seen.add(a);
      if (!(await this.isLocalDomain(domainOfAddr(a)))) {
        external.add(a);
        found = true;
        return;
      }
      if (await this.#redis.hexists(this.#k('user', a), 'password')) {
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
    return found ? { users: [...users], external: [...external] } : null;
  }

  async authenticate(login: string, password: string): Promise<string | null> {
    const addr = canonicalAddress(login);
    const h = await this.#redis.hmget(this.#k('user', addr), 'password', 'disabled');
    const stored = h[0];
    if (!stored) {
      await verifyPassword(password, await dummyHash());
      return null;
    }
    const ok = await verifyPassword(password, stored);
    return ok && h[1] !== '1' ? addr : null;
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
