/**
 * SMTP rate limits on a real redis-server: leases of the shared window counter let a busy client
 * cost one Redis command per lease, never let more hits through than the limit across replicas
 * (two Rates on the same Redis), and count small limits hit by hit.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startRedis } from '../helpers/servers.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { Rates, leaseSize } from '../../services/smtp-ingress/rates.ts';

const logger = pino({ level: 'silent' });
/** Windows long enough that a test never runs across two. */
const WINDOW = 10 * 24 * 3_600_000;

/** Redis commands the server has run so far (INFO stats). */
async function commands(redis: Redis): Promise<number> {
  return Number(/total_commands_processed:(\d+)/.exec(await redis.info('stats'))?.[1] ?? 0);
}

describe('SMTP rates taken in leases', () => {
  let cleanup: () => Promise<void>;
  let redis: Redis;
  let probe: Redis;

  before(async () => {
    const server = await startRedis();
    cleanup = () => server.cleanup();
    redis = await connectRedis(server.url, logger);
    probe = await connectRedis(server.url, logger);
  });

  after(async () => {
    redis?.disconnect();
    probe?.disconnect();
    await cleanup?.();
  });

  test('lease sizes: a 64th of the limit, 1 to 256', () => {
    assert.equal(leaseSize(3), 1);
    assert.equal(leaseSize(600), 9);
    assert.equal(leaseSize(6000), 93);
    assert.equal(leaseSize(1_000_000), 256);
  });

  test('two replicas together let exactly the limit through, concurrent hits included', async () => {
    const a = new Rates(redis, 'r1:');
    const b = new Rates(redis, 'r1:');
    const limit = 1000;
    const hits = await Promise.all(
      Array.from({ length: 1500 }, (_, i) => (i % 2 ? a : b).take('msg', '192.0.2.1', WINDOW, limit)),
    );
    const allowed = hits.filter(Boolean).length;
    // Each replica may strand less than one lease when the other takes the last tokens.
    assert.ok(allowed <= limit, `${allowed} allowed past a limit of ${limit}`);
    assert.ok(allowed > limit - leaseSize(limit), `only ${allowed} of ${limit} allowed`);
    // Another client has its own counter.
    assert.equal(await a.take('msg', '192.0.2.2', WINDOW, limit), true);
  });

  test('a busy client costs one command per lease, and none once refused', async () => {
    const rates = new Rates(redis, 'r2:');
    const limit = 64 * 100; // leases of 100
    const before = await commands(probe);
    for (let i = 0; i < 1000; i++) assert.equal(await rates.take('rcpt', '192.0.2.3', WINDOW, limit), true);
    // 10 leases (INCRBY inside the script counts as a second command), plus the INFO call itself.
    const used = (await commands(probe)) - before;
    assert.ok(used <= 10 * 3 + 2, `${used} Redis commands for 1000 hits`);
    for (let i = 1000; i < limit; i++) await rates.take('rcpt', '192.0.2.3', WINDOW, limit);
    assert.equal(await rates.take('rcpt', '192.0.2.3', WINDOW, limit), false);
    const spent = await commands(probe);
    for (let i = 0; i < 100; i++) assert.equal(await rates.take('rcpt', '192.0.2.3', WINDOW, limit), false);
    assert.equal((await commands(probe)) - spent, 1, 'refusals past the limit asked Redis again');
  });

  test('small limits are counted hit by hit across replicas', async () => {
    const a = new Rates(redis, 'r3:');
    const b = new Rates(redis, 'r3:');
    const got = [];
    for (const r of [a, b, a, b, a]) got.push(await r.take('conn', '192.0.2.4', WINDOW, 3));
    assert.deepEqual(got, [true, true, true, false, false]);
  });
});
