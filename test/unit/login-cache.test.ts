/**
 * The verified-login cache (services/core/login-cache.ts) on its own, and Directory.authenticate
 * with it on a real redis-server: a repeated correct login skips scrypt (counted through the
 * injected verifier), while a changed password, a disabled or removed account and a wrong password
 * are decided as without the cache.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startRedisBackend } from '../helpers/servers.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { Directory } from '../../services/core/directory.ts';
import { LoginCache } from '../../services/core/login-cache.ts';
import { verifyPassword } from '../../services/core/passwords.ts';

const logger = pino({ level: 'silent' });
const HASH = '$scrypt$ln=15,r=8,p=1$c2FsdA==$a2V5';

describe('LoginCache', () => {
  test('remembers exactly the (address, password, hash) verified', () => {
    const c = new LoginCache({ ttlMs: 60_000 });
    assert.equal(c.has('a@x.test', 'pw-123456', HASH), false);
    c.remember('a@x.test', 'pw-123456', HASH);
    assert.equal(c.has('a@x.test', 'pw-123456', HASH), true);
    assert.equal(c.has('a@x.test', 'pw-1234567', HASH), false);
    assert.equal(c.has('b@x.test', 'pw-123456', HASH), false);
    assert.equal(c.has('a@x.test', 'pw-123456', HASH.replace('a2V5', 'a2V6')), false);
    // NUL cannot move the boundary between the parts.
    c.remember('a@x.test', 'p\0q', HASH);
    assert.equal(c.has('a@x.test\0p', 'q', HASH), false);
    assert.equal(c.has('a@x.test', 'p', `q\0${HASH}`), false);
  });

  test('entries expire ttlMs after the verify, and a hit does not extend them', () => {
    let now = 1_000;
    const c = new LoginCache({ ttlMs: 100, now: () => now });
    c.remember('a@x.test', 'pw', HASH);
    now += 60;
    assert.equal(c.has('a@x.test', 'pw', HASH), true);
    now += 39;
    assert.equal(c.has('a@x.test', 'pw', HASH), true);
    now += 1;
    assert.equal(c.has('a@x.test', 'pw', HASH), false);
    assert.equal(c.size, 0);
  });

  test('a TTL of 0 turns it off', () => {
    const c = new LoginCache({ ttlMs: 0 });
    c.remember('a@x.test', 'pw', HASH);
    assert.equal(c.has('a@x.test', 'pw', HASH), false);
    assert.equal(c.size, 0);
  });

  test('bounded: the least recently used entry goes first', () => {
    const c = new LoginCache({ ttlMs: 60_000, maxEntries: 3 });
    for (const u of ['a', 'b', 'c']) c.remember(`${u}@x.test`, 'pw', HASH);
    assert.equal(c.has('a@x.test', 'pw', HASH), true); // a is now the most recent
    c.remember('d@x.test', 'pw', HASH);
    assert.equal(c.size, 3);
    assert.equal(c.has('b@x.test', 'pw', HASH), false);
    for (const u of ['a', 'c', 'd']) assert.equal(c.has(`${u}@x.test`, 'pw', HASH), true, u);
  });
});

describe('Directory.authenticate with the login cache', () => {
  let cleanup: () => Promise<void>;
  let redis: Redis;
  let dir: Directory;
  let verifies = 0;
  const countingVerify = async (password: string, stored: string): Promise<boolean> => {
    verifies++;
    return verifyPassword(password, stored);
  };

  before(async () => {
    const server = await startRedisBackend('single redis-server');
    cleanup = () => server.cleanup();
    redis = await connectRedis(server.url, logger);
    dir = new Directory(redis, 'lc:', { loginCacheTtlMs: 10_000, verify: countingVerify });
    await dir.addDomain('example.test');
    await dir.addUser('bob@example.test', 'bob-password');
  });

  after(async () => {
    redis.disconnect();
    await cleanup();
  });

  /** Logs in and returns the user and how many scrypt verifies it cost. */
  async function login(d: Directory, user: string, password: string) {
    const before = verifies;
    const who = await d.authenticate(user, password);
    return { who, scrypts: verifies - before };
  }

  test('a second login with the same password skips scrypt', async () => {
    assert.deepEqual(await login(dir, 'bob@example.test', 'bob-password'), {
      who: 'bob@example.test',
      scrypts: 1,
    });
    assert.deepEqual(await login(dir, 'bob@example.test', 'bob-password'), {
      who: 'bob@example.test',
      scrypts: 0,
    });
    // The same canonical address, written differently.
    assert.deepEqual(await login(dir, 'BOB@Example.TEST', 'bob-password'), {
      who: 'bob@example.test',
      scrypts: 0,
    });
  });

  test('a wrong password is never accepted, never cached, and always costs scrypt', async () => {
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await login(dir, 'bob@example.test', 'bob-passwore'), { who: null, scrypts: 1 });
    }
    assert.deepEqual(await login(dir, 'nobody@example.test', 'bob-password'), { who: null, scrypts: 1 });
  });

  test('a changed password takes effect at once: the old one is refused, the new one verified', async () => {
    await login(dir, 'bob@example.test', 'bob-password');
    await dir.setPassword('bob@example.test', 'new-bob-password');
    assert.deepEqual(await login(dir, 'bob@example.test', 'bob-password'), { who: null, scrypts: 1 });
    assert.deepEqual(await login(dir, 'bob@example.test', 'new-bob-password'), {
      who: 'bob@example.test',
      scrypts: 1,
    });
    assert.deepEqual(await login(dir, 'bob@example.test', 'new-bob-password'), {
      who: 'bob@example.test',
      scrypts: 0,
    });
    // Set back to the same clear password: a new salt, a new hash, so scrypt again.
    await dir.setPassword('bob@example.test', 'bob-password');
    assert.deepEqual(await login(dir, 'bob@example.test', 'bob-password'), {
      who: 'bob@example.test',
      scrypts: 1,
    });
  });

  test('a disabled or removed account is refused even with a remembered login', async () => {
    assert.equal((await login(dir, 'bob@example.test', 'bob-password')).who, 'bob@example.test');
    await redis.hset('lc:dir:user:bob@example.test', 'disabled', '1');
    assert.equal((await login(dir, 'bob@example.test', 'bob-password')).who, null);
    await redis.hset('lc:dir:user:bob@example.test', 'disabled', '0');
    assert.equal((await login(dir, 'bob@example.test', 'bob-password')).who, 'bob@example.test');
    await dir.addUser('carol@example.test', 'carol-password');
    assert.equal((await login(dir, 'carol@example.test', 'carol-password')).who, 'carol@example.test');
    await dir.removeUser('carol@example.test');
    assert.equal((await login(dir, 'carol@example.test', 'carol-password')).who, null);
  });

  test('AUTH_CACHE_TTL: after it, scrypt again; 0 turns the cache off', async () => {
    const off = new Directory(redis, 'lc:', { loginCacheTtlMs: 0, verify: countingVerify });
    for (let i = 0; i < 2; i++) {
      assert.deepEqual(await login(off, 'bob@example.test', 'bob-password'), {
        who: 'bob@example.test',
        scrypts: 1,
      });
    }
    let now = 5_000;
    const short = new Directory(redis, 'lc:', {
      loginCacheTtlMs: 1_000,
      now: () => now,
      verify: countingVerify,
    });
    assert.equal((await login(short, 'bob@example.test', 'bob-password')).scrypts, 1);
    now += 999;
    assert.equal((await login(short, 'bob@example.test', 'bob-password')).scrypts, 0);
    now += 1;
    assert.equal((await login(short, 'bob@example.test', 'bob-password')).scrypts, 1);
    assert.equal((await login(short, 'bob@example.test', 'bob-password')).scrypts, 0);
  });
});
