/**
 * Destination partitions move when a delivery replica dies: two `postino run delivery` processes
 * share the partitions through leases in NATS KV; one is killed with SIGKILL while its SMTP
 * transactions are in flight, the other takes its partitions over, and every message reaches the
 * remote server exactly once.
 *
 * The sink holds its replies to DATA while the test kills the replica, so the killed replica dies
 * with transactions open, before the sink answered 250. A message whose connection broke before
 * the 250 was never accepted (RFC 5321 6.1: responsibility passes with the 250), so the sink
 * discards it, as a real MTA does, and it must arrive again through the replica that took over.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Kvm } from '@nats-io/kv';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { spawnServices, startServices, testConfig, type ServiceProcess } from '../helpers/postino.ts';
import type { Running } from '../../services/core/runtime.ts';
import { publish, STREAMS, SUBJECTS } from '../../services/core/nats.ts';
import { encode, pb } from '../../services/core/codec.ts';
import { partitionOf } from '../../services/core/partition.ts';
import { LEASE_BUCKET } from '../../services/delivery/leases.ts';

const DOMAINS = Array.from({ length: 16 }, (_, i) => `d${i}.test`);
const MESSAGES = 160;
const HOLD_AFTER = 20;

describe('delivery replicas and partition takeover', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let sink: SMTPServer;
  let main: Running;
  const replicas: ServiceProcess[] = [];
  const received = new Map<string, number>();
  let gateOpen = true;
  let released = false;
  const held: { session: SMTPServerSession; id: string; cb: (err?: Error) => void }[] = [];
  const closedSessions = new Set<string>();

  const accept = (id: string) => received.set(id, (received.get(id) ?? 0) + 1);

  const owners = async (): Promise<Map<number, string>> => {
    const kv = await new Kvm(main.runtime.nats.js).open(LEASE_BUCKET);
    const out = new Map<number, string>();
    for await (const k of await kv.keys('p.>')) {
      const e = await kv.get(k);
      if (e && e.operation === 'PUT') out.set(Number(k.slice(2)), e.string());
    }
    return out;
  };

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const port = await freePort('127.0.0.7');
    sink = new SMTPServer({
      authOptional: true,
      // An MX takes mail without AUTH: no limit on commands before it (smtp-server's default is 10).
      maxAllowedUnauthenticatedCommands: Infinity,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onClose(session) {
        closedSessions.add(session.id);
      },
      onData(stream, session, cb) {
        let text = '';
        stream.on('data', (c: Buffer) => (text += c.toString('latin1')));
        stream.on('end', () => {
          const id = /X-Test-Id: (\d+)/.exec(text)?.[1] ?? '?';
          if (gateOpen) {
            accept(id);
            cb();
            // After the first deliveries the sink starts holding its answers to DATA.
            if (received.size >= HOLD_AFTER && !released) gateOpen = false;
          } else held.push({ session, id, cb });
        });
      },
    });
    // Connections of a SIGKILLed replica end in ECONNRESET: expected, not a test failure.
    sink.on('error', () => undefined);
    await new Promise<void>((resolve) => sink.listen(port, '127.0.0.7', () => resolve()));
    dns = await startDns(DOMAINS.map((d) => `--host-record=${d},127.0.0.7`));
    const { config, env } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(port),
      DELIVERY_LEASE: '2s',
      DELIVERY_RETRY_SCHEDULE: '1s',
      PARTITIONS: '8',
    });
    // The test's own runtime (no services): the blob store and JetStream to publish with.
    main = await startServices(config, []);
    replicas.push(
      await spawnServices({ ...env, POSTINO_NODE: 'replica-a' }, ['delivery']),
      await spawnServices({ ...env, POSTINO_NODE: 'replica-b' }, ['delivery']),
    );
  });

  after(async () => {
    for (const r of replicas) await r.stop('SIGKILL');
    await main?.stop();
    await new Promise<void>((r) => sink.close(() => r()));
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  test('the partitions are shared by the replicas', async () => {
    await until('both replicas to hold partitions', async () => {
      const o = await owners();
      const nodes = new Set(o.values());
      return o.size === 8 && nodes.has('replica-a') && nodes.has('replica-b');
    });
  });

  test('SIGKILL of a replica under load: its partitions move and every message arrives once', async () => {
    const rt = main.runtime;
    const now = Date.now();
    for (let i = 0; i < MESSAGES; i++) {
      const domain = DOMAINS[i % DOMAINS.length] ?? 'd0.test';
      const body = await rt.blobs.put([Buffer.from(`X-Test-Id: ${i}\r\nSubject: load ${i}\r\n\r\nload\r\n`)]);
      await publish(
        rt.nats,
        SUBJECTS.outbound(partitionOf(domain, rt.config.partitions)),
        encode(pb.OutboundDelivery, {
          queueId: `LOAD${i}`,
          domain,
          recipients: [{ address: `user${i}@${domain}` }],
          body,
          mailFrom: 'sender@example.test',
          receivedAt: now,
          mx: [{ host: domain, preference: 0, addresses: ['127.0.0.7'] }],
        }),
        { stream: STREAMS.OUTBOUND, msgId: `LOAD${i}:${domain}:0` },
      );
    }
    // Once HOLD_AFTER messages arrived, the sink holds its answer to DATA: transactions stay open.
    await until('transactions held open at DATA', async () => held.length >= 4);
    const victim = replicas[0];
    assert.ok(victim);
    await victim.stop('SIGKILL');
    // The sink sees the killed replica's connections close before it answers anything.
    await until('the killed replica to drop its connections', async () =>
      held.some((h) => closedSessions.has(h.session.id)),
    );
    released = true;
    gateOpen = true;
    for (const h of held.splice(0)) {
      if (closedSessions.has(h.session.id)) continue; // never answered 250: not accepted
      accept(h.id);
      h.cb();
    }
    await until(
      'the survivor to hold every partition',
      async () => {
        const o = await owners();
        return o.size === 8 && [...o.values()].every((n) => n === 'replica-b');
      },
      20_000,
    );
    await until('every message to arrive', async () => received.size === MESSAGES, 30_000);
    const duplicates = [...received].filter(([, n]) => n !== 1);
    assert.deepEqual(duplicates, []);
    assert.equal(received.has('?'), false);
  });
});
