/** MX resolution against a real DNS server (dnsmasq) answering test zones. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { CachedMxResolver, MxResolver, orderMx } from '../../services/core/mx.ts';
import { startDns, startRedis, type Proc } from '../helpers/servers.ts';

let dns: Proc;
let mx: MxResolver;

before(async () => {
  dns = await startDns([
    '--mx-host=multi.test,mx2.multi.test,20',
    '--mx-host=multi.test,mx1.multi.test,10',
    '--host-record=mx1.multi.test,127.0.0.11',
    '--host-record=mx2.multi.test,127.0.0.12,::1',
    '--host-record=implicit.test,127.0.0.13',
    '--mx-host=null.test,.,0',
    '--mx-host=dangling.test,nowhere.dangling.test,10',
    // broken.test is forwarded to a dead server: dnsmasq answers SERVFAIL.
    '--server=/broken.test/127.0.0.1#9',
    '--host-record=cached.test,127.0.0.14',
  ]);
  mx = new MxResolver([dns.url], 2000);
});

after(() => dns.cleanup());

test('MX hosts come in preference order with their addresses', async () => {
  const r = await mx.resolve('multi.test');
  assert.equal(r.kind, 'ok');
  assert.deepEqual(r.kind === 'ok' && r.hosts.map((h) => [h.host, h.preference, h.addresses]), [
    ['mx1.multi.test', 10, ['127.0.0.11']],
    ['mx2.multi.test', 20, ['127.0.0.12', '::1']],
  ]);
});

test('a domain without MX uses its own address (implicit MX, RFC 5321 5.1)', async () => {
  const r = await mx.resolve('implicit.test');
  assert.equal(r.kind, 'ok');
  assert.deepEqual(r.kind === 'ok' && r.hosts, [
    { host: 'implicit.test', preference: 0, addresses: ['127.0.0.13'] },
  ]);
});

test('a null MX (RFC 7505) is a permanent 5.1.10 failure', async () => {
  const r = await mx.resolve('null.test');
  assert.equal(r.kind, 'permanent');
  assert.equal(r.kind === 'permanent' && r.code, '5.1.10');
});

test('NXDOMAIN is permanent', async () => {
  const r = await mx.resolve('does-not-exist.test');
  assert.equal(r.kind, 'permanent');
});

test('an MX host without addresses is a permanent failure, not a hang', async () => {
  const r = await mx.resolve('dangling.test');
  assert.equal(r.kind, 'permanent');
});

test('a DNS server that does not answer is a temporary failure', async () => {
  const dead = new MxResolver(['127.0.0.1:9'], 300);
  const r = await dead.resolve('multi.test');
  assert.equal(r.kind, 'temporary');
});

test('hosts of equal preference are shuffled, never reordered across preferences', () => {
  const records = [
    { exchange: 'c', priority: 20 },
    { exchange: 'a', priority: 10 },
    { exchange: 'b', priority: 10 },
  ];
  const seen = new Set<string>();
  let i = 0;
  const rnd = () => [0.9, 0.1, 0.5, 0.2, 0.8, 0.3][i++ % 6] ?? 0.5;
  for (let n = 0; n < 6; n++) {
    const o = orderMx(records, rnd).map((r) => r.exchange);
    assert.equal(o[2], 'c');
    seen.add(o.slice(0, 2).join(''));
  }
  assert.deepEqual([...seen].sort(), ['ab', 'ba']);
});

test('SERVFAIL is a temporary failure (retried, never bounced)', async () => {
  const r = await mx.resolve('mail.broken.test');
  assert.equal(r.kind, 'temporary');
});

test('answers are shared through Redis for their TTL; failures are not cached', async () => {
  const redisProc = await startRedis();
  const redis = new Redis(redisProc.url);
  try {
    const one = new CachedMxResolver(mx, redis, 'c:');
    const first = await one.resolve('cached.test');
    assert.equal(first.kind, 'ok');
    // Another replica with a resolver that cannot reach any DNS server still gets the answer.
    const other = new CachedMxResolver(new MxResolver(['127.0.0.1:9'], 300), redis, 'c:');
    assert.deepEqual(await other.resolve('cached.test'), first);
    const ttl = await redis.pttl('c:dns:mx:cached.test');
    assert.ok(ttl > 0 && ttl <= 3_600_000);
    assert.equal((await other.resolve('mail.broken.test')).kind, 'temporary');
    assert.equal(await redis.exists('c:dns:mx:mail.broken.test'), 0);
  } finally {
    redis.disconnect();
    await redisProc.cleanup();
  }
});
