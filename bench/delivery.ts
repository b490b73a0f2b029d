/**
 * Delivery benchmark (traffic to 127.0.0.0/8 only, bounded in time):
 *   - remote deliveries per second to a local SMTP sink, with one and with three
 *     `postino run delivery` replicas (entries published straight to OUTBOUND, 20 domains, a body
 *     of its own for each message);
 *   - partition takeover: time from SIGKILL of one of three replicas until the survivors hold
 *     every partition (DELIVERY_LEASE=2s and 5s).
 * Run: npx node bench/delivery.ts
 */
import { readFileSync } from 'node:fs';
import { Kvm } from '@nats-io/kv';
import { SMTPServer } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until } from '../test/helpers/servers.ts';
import { spawnServices, startServices, testConfig, type ServiceProcess } from '../test/helpers/postino.ts';
import { publish, STREAMS, SUBJECTS } from '../services/core/nats.ts';
import { encode, pb } from '../services/core/codec.ts';
import { partitionOf } from '../services/core/partition.ts';
import { LEASE_BUCKET } from '../services/delivery/leases.ts';
import { QueueStore } from '../services/delivery/queue-store.ts';

const DOMAINS = Array.from({ length: 20 }, (_, i) => `bench${i}.test`);
const MESSAGES = 2000;
const PARTITIONS = 16;

let received = 0;
const port = await freePort('127.0.0.8');
const sink = new SMTPServer({
  authOptional: true,
  // A sink for an MTA: no limit on commands before AUTH (smtp-server closes after 10 by default).
  maxAllowedUnauthenticatedCommands: Infinity,
  disabledCommands: ['STARTTLS'],
  logger: false,
  onData(stream, _s, cb) {
    stream.resume();
    stream.on('end', () => {
      received++;
      cb();
    });
  },
});
sink.on('error', () => undefined); // a replica killed mid-session resets its connections
await new Promise<void>((r) => sink.listen(port, '127.0.0.8', () => r()));
const dns = await startDns(DOMAINS.map((d) => `--host-record=${d},127.0.0.8`));

const rows: string[][] = [];

/** CPU time (user + system, ms) a process has used, from /proc (clock ticks of 10 ms). */
function cpuMs(pid: number | undefined): number {
  if (!pid) return 0;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function scenario(replicas: number, lease: string, measure: 'throughput' | 'takeover'): Promise<void> {
  const [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const { config, env } = await testConfig({
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    DNS_SERVERS: dns.url,
    DELIVERY_SMTP_PORT: String(port),
    DELIVERY_LEASE: lease,
    PARTITIONS: String(PARTITIONS),
    LOG_LEVEL: 'silent',
  });
  const main = await startServices(config, []);
  const procs: ServiceProcess[] = [];
  try {
    for (let i = 0; i < replicas; i++)
      procs.push(await spawnServices({ ...env, POSTINO_NODE: `bench-${i}` }, ['delivery']));
    const kv = await new Kvm(main.runtime.nats.js).open(LEASE_BUCKET);
    const owners = async () => {
      const out = new Map<number, string>();
      for await (const k of await kv.keys('p.>')) {
        const e = await kv.get(k);
        if (e?.operation === 'PUT') out.set(Number(k.slice(2)), e.string());
      }
      return out;
    };
    await until(
      'every replica to hold partitions',
      async () => {
        const o = await owners();
        return o.size === PARTITIONS && new Set(o.values()).size === replicas;
      },
      60_000,
    );
    if (measure === 'throughput') {
      // Each message its own body, as in real mail (one shared body would measure a cache).
      const bodies = await Promise.all(
        Array.from({ length: MESSAGES }, (_, i) =>
          main.runtime.blobs.put([
            Buffer.from(`Subject: bench ${replicas}/${i}\r\n\r\n${'x'.repeat(2000)}\r\n`),
          ]),
        ),
      );
      // Work per message, independent of how loaded the machine is: Redis commands and JetStream
      // API requests (object-store opens, consumer creation, direct gets) over the whole run.
      const redisCommands = async () =>
        Number(/total_commands_processed:(\d+)/.exec(await main.runtime.redis.info('stats'))?.[1] ?? 0);
      const jsApi = async () => (await main.runtime.nats.jsm.getAccountInfo()).api.total;
      const [r0, a0] = [await redisCommands(), await jsApi()];
      // CPU used per message by the delivery replicas, nats-server and redis-server: the work a
      // message costs, which a loaded machine stretches in time but does not change.
      const pids: (number | undefined)[][] = [
        procs.map((p) => p.child.pid),
        [nats.child.pid],
        [redis.child.pid],
      ];
      const cpu = (): number[] => pids.map((list) => list.reduce((n: number, pid) => n + cpuMs(pid), 0));
      const cpu0 = cpu();
      const start = received;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: MESSAGES }, (_, i) => {
          const domain = DOMAINS[i % DOMAINS.length] ?? 'bench0.test';
          return publish(
            main.runtime.nats,
            SUBJECTS.outbound(partitionOf(domain, PARTITIONS)),
            encode(pb.OutboundDelivery, {
              queueId: `B${replicas}X${i}`,
              domain,
              recipients: [{ address: `u${i}@${domain}` }],
              body: bodies[i],
              mailFrom: 'bench@example.test',
              receivedAt: Date.now(),
              mx: [{ host: domain, preference: 0, addresses: ['127.0.0.8'] }],
            }),
            { stream: STREAMS.OUTBOUND, msgId: `B${replicas}X${i}` },
          );
        }),
      );
      const progress = setInterval(() => {
        process.stderr.write(`  ${received - start}/${MESSAGES}\n`);
        void new QueueStore(main.runtime.redis, config.redisPrefix).list().then((l) => {
          if (l[0]) process.stderr.write(`  queued ${l.length}: ${l[0].lastError}\n`);
        });
      }, 5000);
      await until('all deliveries', async () => received - start >= MESSAGES, 90_000).finally(() =>
        clearInterval(progress),
      );
      const s = (performance.now() - t0) / 1000;
      const [r1, a1] = [await redisCommands(), await jsApi()];
      const cpu1 = cpu();
      const perMsg = cpu1.map((v, i) => ((v - (cpu0[i] ?? 0)) / MESSAGES).toFixed(2));
      rows.push([`deliveries/s, ${replicas} replica(s)`, `${MESSAGES} msgs`, (MESSAGES / s).toFixed(0)]);
      rows.push([
        `  per message: Redis commands, JetStream API requests`,
        '',
        `${((r1 - r0) / MESSAGES).toFixed(1)}, ${((a1 - a0) / MESSAGES).toFixed(1)}`,
      ]);
      rows.push([`  per message: CPU ms of delivery, nats-server, redis-server`, '', perMsg.join(', ')]);
    } else {
      const victim = procs.shift();
      const t0 = performance.now();
      await victim?.stop('SIGKILL');
      await until(
        'survivors to hold every partition',
        async () => {
          const o = await owners();
          return o.size === PARTITIONS && [...o.values()].every((n) => n !== 'bench-0');
        },
        60_000,
      );
      rows.push([
        `takeover after SIGKILL (lease ${lease})`,
        `${PARTITIONS} partitions`,
        `${((performance.now() - t0) / 1000).toFixed(2)} s`,
      ]);
    }
  } finally {
    for (const p of procs) await p.stop('SIGKILL');
    await main.stop();
    await Promise.all([nats.cleanup(), redis.cleanup()]);
  }
}

await scenario(1, '10s', 'throughput');
await scenario(3, '10s', 'throughput');
await scenario(3, '2s', 'takeover');
await scenario(3, '5s', 'takeover');
await new Promise<void>((r) => sink.close(() => r()));
await dns.cleanup();

const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => (r[i] ?? '').length), 8));
for (const r of [['measure', 'load', 'result'], ...rows])
  console.log(r.map((c, i) => c.padEnd(w[i] ?? 8)).join('  '));
process.exit(0);
