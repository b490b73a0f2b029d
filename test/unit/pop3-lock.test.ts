/**
 * Maildrop leases (services/core/lock.ts) on a real redis-server: RFC 1939 section 8, one session
 * per maildrop across every replica, and a lock left by a dead holder expires with its lease.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { RedisMaildropLock } from '../../services/core/lock.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { startRedis, until, type Proc } from '../helpers/servers.ts';

const logger = pino({ level: 'silent' });

describe('RedisMaildropLock', () => {
  let server: Proc;
  let redis: Redis;
  /** A second connection, as another replica would have. */
  let other: Redis;

  before(async () => {
    server = await startRedis();
    [redis, other] = await Promise.all([connectRedis(server.url, logger), connectRedis(server.url, logger)]);
  });

  after(async () => {
    redis?.disconnect();
    other?.disconnect();
    await server?.cleanup();
  });

  it('gives a maildrop to one holder at a time, across connections; case does not matter', async () => {
    const a = new RedisMaildropLock(redis, 't1:', logger);
    const b = new RedisMaildropLock(other, 't1:', logger);
    const release = await a.acquire('alice@example.test');
    assert.ok(release);
    assert.equal(await b.acquire('Alice@Example.TEST'), null);
    assert.ok(await b.acquire('bob@example.test'), 'another user is not locked');
    await release();
    const again = await b.acquire('alice@example.test');
    assert.ok(again, 'free once released');
    await again();
  });

  it('keeps the lease alive while held, and a dead holder’s lease expires', async () => {
    const holder = new RedisMaildropLock(redis, 't2:', logger, 600);
    const release = await holder.acquire('carol@example.test');
    assert.ok(release);
    const key = 't2:{u:carol@example.test}:pop3lock';
    // Renewed every third of the lease: its time to live goes back up, again and again.
    let renewals = 0;
    let last = await other.pttl(key);
    await until('three renewals of the lease', async () => {
      const ttl = await other.pttl(key);
      assert.ok(ttl > 0, 'the lease never lapses while held');
      if (ttl > last) renewals++;
      last = ttl;
      return renewals >= 3;
    });
    // A holder that dies stops renewing: simulated by a lease taken with a raw SET, as the crashed
    // replica left it.
    await release();
    await other.set(key, 'token-of-a-dead-replica', 'PX', 300);
    const next = new RedisMaildropLock(other, 't2:', logger, 300);
    assert.equal(await next.acquire('carol@example.test'), null);
    const taken = await until('the dead lease to expire', () => next.acquire('carol@example.test'));
    await taken();
  });

  it('a stale release never frees a lease that someone else holds now', async () => {
    const a = new RedisMaildropLock(redis, 't3:', logger, 200);
    const releaseA = await a.acquire('dave@example.test');
    assert.ok(releaseA);
    // The lease is lost (as when the holder is cut off from Redis longer than the lease).
    await redis.del('t3:{u:dave@example.test}:pop3lock');
    const b = new RedisMaildropLock(other, 't3:', logger, 200);
    const releaseB = await b.acquire('dave@example.test');
    assert.ok(releaseB);
    await releaseA();
    assert.equal(await a.acquire('dave@example.test'), null, 'B still holds the maildrop');
    await releaseB();
  });

  it('refuses a lease too short to be renewed', () => {
    assert.throws(() => new RedisMaildropLock(redis, 't4:', logger, 0), RangeError);
  });
});
