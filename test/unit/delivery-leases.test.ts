/**
 * Partition leases on a real nats-server (KV bucket, max_age as the lease time) and fencing on a
 * real redis-server: partitions are shared, move when a holder stops renewing, and a stale holder's
 * effect is refused.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { Redis } from 'ioredis';
import { connectNats, type Nats } from '../../services/core/nats.ts';
import { PartitionLeases, type Lease } from '../../services/delivery/leases.ts';
import { QueueStore } from '../../services/delivery/queue-store.ts';
import { registry } from '../../services/core/metrics.ts';
import { parsePolicies, parseSmarthost, policyFor } from '../../services/delivery/policy.ts';
import { startNats, startRedis, until, type Proc } from '../helpers/servers.ts';

const logger = pino({ level: 'silent' });
let natsProc: Proc;
let redisProc: Proc;
let nats: Nats;
let redis: Redis;

before(async () => {
  [natsProc, redisProc] = await Promise.all([startNats(), startRedis()]);
  nats = await connectNats(natsProc.url, 'lease-test', logger);
  redis = new Redis(redisProc.url);
});

after(async () => {
  redis.disconnect();
  await nats.nc.close();
  await Promise.all([natsProc.cleanup(), redisProc.cleanup()]);
});

function replica(node: string, conn: Nats) {
  const held = new Map<number, Lease>();
  const lost: number[] = [];
  const open = () =>
    PartitionLeases.open(conn, {
      node,
      partitions: 6,
      leaseMs: 1500,
      renewMs: 400,
      safetyMs: 400,
      replicas: 1,
      logger,
      onAcquired: (l) => void held.set(l.partition, l),
      onLost: async (p) => {
        held.delete(p);
        lost.push(p);
      },
    });
  return { held, lost, open };
}

test('two replicas share the partitions; a dead one loses them to the other; its fencing token is refused', async () => {
  // a has its own NATS connection: closing it is a replica that dies without giving anything back.
  const natsA = await connectNats(natsProc.url, 'lease-test-a', logger);
  const a = replica('a', natsA);
  const b = replica('b', nats);
  const la = await a.open();
  la.start();
  await until('a to hold every partition', async () => a.held.size === 6);
  const lb = await b.open();
  lb.start();
  await until('the partitions to be shared', async () => a.held.size === 3 && b.held.size === 3);
  // The gauge of a process counts the partitions its lease sets hold (here both replicas').
  const owned = await registry.getSingleMetric('postino_delivery_partitions_owned')?.get();
  assert.equal(owned?.values[0]?.value, 6);

  const queue = new QueueStore(redis, 't:');
  const [p, stale] = [...a.held][0] ?? [0, undefined];
  assert.ok(stale);
  assert.equal(await queue.markDelivered(p, stale.token, 'Q:x.test', 'r@x.test'), true);

  await natsA.nc.close();
  // a stops acting on its own clock, before the bucket could give its partitions away.
  await until('a to drop its leases', async () => a.held.size === 0);
  assert.equal(stale.valid(), false);
  assert.equal(stale.signal.aborted, true);
  await until('b to hold every partition', async () => b.held.size === 6, 10_000);
  const fresh = b.held.get(p);
  assert.ok(fresh);
  assert.ok(fresh.token > stale.token, 'a newer holder has a larger fencing token');
  assert.equal(await queue.markDelivered(p, fresh.token, 'Q:x.test', 'r2@x.test'), true);
  // The stale holder's effect is refused.
  assert.equal(await queue.markDelivered(p, stale.token, 'Q:x.test', 'r3@x.test'), false);
  assert.deepEqual([...(await queue.delivered(p, 'Q:x.test'))].sort(), ['r2@x.test', 'r@x.test']);
  // The start of an attempt: a stale holder is told it is fenced out; the holder sees what was delivered.
  assert.equal((await queue.begin(p, stale.token, 'Q:x.test', 0, 0)).fenced, false);
  const start = await queue.begin(p, fresh.token, 'Q:x.test', 0, 0);
  assert.deepEqual(start.check, 'current');
  assert.equal(start.fenced, true);
  assert.deepEqual([...start.delivered].sort(), ['r2@x.test', 'r@x.test']);
  await lb.stop();
  await la.stop();
});

test('the policy table and the smarthost URL', () => {
  const t = parsePolicies(['bank.test:verify-tls', 'corp.test:direct', '*:smarthost']);
  assert.deepEqual(policyFor(t, 'BANK.test'), { requireTls: true, verifyTls: true, smarthost: true });
  assert.deepEqual(policyFor(t, 'corp.test'), { requireTls: false, verifyTls: false, smarthost: false });
  assert.equal(policyFor(t, 'other.test').smarthost, true);
  assert.throws(() => parsePolicies(['x.test:maybe']), /DELIVERY_POLICY/);
  assert.deepEqual(parseSmarthost('smtp://u%40x:p@relay.test'), {
    address: 'relay.test',
    host: 'relay.test',
    port: 587,
    secure: false,
    tls: 'verify',
    auth: { user: 'u@x', pass: 'p' },
  });
  assert.equal(parseSmarthost('smtps://relay.test?verify=false')?.port, 465);
  assert.throws(() => parseSmarthost('http://relay.test'), /DELIVERY_SMARTHOST/);
});
