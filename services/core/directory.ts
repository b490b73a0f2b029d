/**
 * The directory: hosted domains and users, in Redis. Read by smtp-ingress (RCPT checks, AUTH),
 * router (local or remote), imap and pop3 (login); written by admin.
 *
 * Keys (prefix P):
 *   P dir:domains            SET of hosted domains
 *   P dir:domain:<d>         HASH catchAll, createdAt
 *   P dir:users:<d>          SET of the domain's user addresses
 *   P dir:user:<address>     HASH password (scrypt), createdAt, quota, disabled
 *   P dir:alias:<address>    SET of target addresses
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

export class DirectoryError extends Error {
  readonly code: 'EXISTS' | 'NOT_FOUND' | 'INVALID' | 'NOT_EMPTY';
  constructor(code: DirectoryError['code'], message: string) {
    super(message);
    this.name = 'DirectoryError';
    this.code = code;
  }
}

const DOMAIN_RE = /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$/;
const LOCAL_RE = /^[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$/;

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
    await this.#redis.multi().srem(this.#k('domains'), domain).del(this.#k('domain', domain)).exec();
  }

  async listDomains(): Promise<string[]> {
    return (await this.#redis.smembers(this.#k('domains'))).sort();
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
}
