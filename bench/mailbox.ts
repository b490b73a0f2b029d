/**
 * Mailbox store benchmark: appends, flag updates and UID-range fetches of 1,000 messages'
 * metadata, through the NATS RPC API (what imap and pop3 use), with one and with three store
 * replicas (separate processes in the mailbox-store queue group). Loopback only, bounded in time.
 *
 *   npx node bench/mailbox.ts
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { pino } from 'pino';
import { startNats, startRedis } from '../test/helpers/servers.ts';
import { connectNats } from '../services/core/nats.ts';
import { connectRedis } from '../services/core/redis.ts';
import { BlobStore } from '../services/core/blobs.ts';
import { MailboxStore } from '../services/mailbox-store/store.ts';
import { MailboxRpcClient, serveRpc, changePublisher } from '../services/mailbox-store/rpc.ts';

const logger = pino({ level: 'silent' });
/** Seconds each measurement runs. */
const SECONDS = 5;

async function replica(natsUrl: string, redisUrl: string): Promise<void> {
  const nats = await connectNats(natsUrl, 'bench-replica', logger);
  const redis = await connectRedis(redisUrl, logger);
  const blobs = await BlobStore.open(nats, 1);
  const store = new MailboxStore(redis, 'bench:', blobs, changePublisher(nats));
  serveRpc(nats, store, logger);
  await nats.nc.flush();
  process.stdout.write('ready\n');
}

async function spawnReplica(natsUrl: string, redisUrl: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [import.meta.filename, 'replica', natsUrl, redisUrl], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.once('exit', (code) => reject(new Error(`replica exited with ${code}`)));
  });
  return child;
}

/** Runs `op` from `concurrency` loops for SECONDS; returns operations per second and the median latency. */
async function measure(concurrency: number, op: (i: number) => Promise<unknown>) {
  const end = Date.now() + SECONDS * 1000;
  const lat: number[] = [];
  let n = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) {
        const t = performance.now();
        await op(n++);
        lat.push(performance.now() - t);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  return {
    perSecond: lat.length / SECONDS,
    p50: lat[Math.floor(lat.length / 2)] ?? 0,
    p99: lat[Math.floor(lat.length * 0.99)] ?? 0,
  };
}

async function main(): Promise<void> {
  const [natsProc, redisProc] = await Promise.all([startNats(), startRedis()]);
  const nats = await connectNats(natsProc.url, 'bench', logger);
  const blobs = await BlobStore.open(nats, 1);
  const client = new MailboxRpcClient(nats, blobs);
  const rows: string[][] = [];
  try {
    for (const replicas of [1, 3]) {
      const children = await Promise.all(
        Array.from({ length: replicas }, () => spawnReplica(natsProc.url, redisProc.url)),
      );
      const user = `bench${replicas}@example.test`;
      const body = Buffer.alloc(1024, 120);
      const append = await measure(64, (i) => {
        body.writeUInt32BE(i, 0);
        body.writeUInt32BE(replicas, 4);
        return client.append(user, 'INBOX', body, []);
      });
      const exists = (await client.status(user, 'INBOX')).exists;
      const flags = await measure(64, (i) =>
        client.storeFlags(user, 'INBOX', [1 + ((i * 7919) % exists)], i % 2 ? 'add' : 'remove', ['\\Seen']),
      );
      const fetch = await measure(8, (i) => {
        const first = 1 + ((i * 1000) % Math.max(1, exists - 1000));
        return client.messageRange(user, 'INBOX', first, first + 999, 1000);
      });
      const fmt = (m: { perSecond: number; p50: number; p99: number }) => [
        m.perSecond.toFixed(0),
        m.p50.toFixed(1),
        m.p99.toFixed(1),
      ];
      rows.push([String(replicas), 'append (1 KiB body, blob + RPC)', ...fmt(append)]);
      rows.push([String(replicas), 'flag update (1 message)', ...fmt(flags)]);
      rows.push([String(replicas), 'UID-range fetch (1,000 metadata)', ...fmt(fetch)]);
      for (const c of children) c.kill('SIGTERM');
    }
  } finally {
    await nats.nc.close();
    await Promise.all([natsProc.cleanup(), redisProc.cleanup()]);
  }
  const head = ['replicas', 'operation', 'ops/s', 'p50 ms', 'p99 ms'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  console.log(line(head));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const r of rows) console.log(line(r));
  process.exit(0);
}

if (process.argv[2] === 'replica') await replica(process.argv[3] ?? '', process.argv[4] ?? '');
else await main();
