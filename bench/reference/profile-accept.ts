/**
 * Where the time goes under the accept load: `npx node bench/reference/profile-accept.ts [N]`.
 *
 * A nats-server (with its monitoring port, for message counts) and a redis-server on loopback;
 * smtp-ingress alone as `postino run smtp-ingress --cpu-prof`, loaded with
 * `smtp-source -l 2048 -m N -s 20`; then router + mailbox-store (also profiled) drain what it
 * accepted into the INBOX. For each stage it prints the NATS messages and Redis commands per
 * message (from the server's counters: every request, publish, ack and reply counts) and the
 * functions and modules with the most CPU time (self time, from the .cpuprofile files).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Directory } from '../../services/core/directory.ts';
import { spawnServices, testConfig } from '../../test/helpers/postino.ts';
import { freePort, startRedis, until, waitForPort } from '../../test/helpers/servers.ts';

const N = Number(process.argv[2] ?? 3000);
const USER = 'bob@bench.test';

interface Varz {
  in_msgs: number;
  out_msgs: number;
}

async function varz(port: number): Promise<Varz> {
  return (await (await fetch(`http://127.0.0.1:${port}/varz`)).json()) as Varz;
}

async function commandStats(redis: Redis): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await redis.info('commandstats')).split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line);
    if (m) out.set(m[1] ?? '', Number(m[2]));
  }
  return out;
}

function diffStats(a: Map<string, number>, b: Map<string, number>): [string, number][] {
  return [...b.entries()]
    .map(([k, v]): [string, number] => [k, v - (a.get(k) ?? 0)])
    .filter(([k, v]) => v > 0 && k !== 'info')
    .sort((x, y) => y[1] - x[1]);
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

/** Self time by function and by module (package or project folder), in % of samples. */
function summarize(file: string, top = Number(process.env.PROFILE_TOP ?? 15)): string {
  const p = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[]; samples: number[] };
  const counts = new Map<number, number>();
  for (const s of p.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
  const total = p.samples.length || 1;
  const byFn = new Map<string, number>();
  const byModule = new Map<string, number>();
  for (const n of p.nodes) {
    const hits = counts.get(n.id) ?? 0;
    if (!hits) continue;
    const url = n.callFrame.url.replace(/^file:\/\//, '');
    const mod =
      /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1] ??
      /\/main\/(services\/[^/]+|bench|bin|test)/.exec(url)?.[1] ??
      (url.startsWith('node:') ? url : url ? 'other' : `(${n.callFrame.functionName || 'native'})`);
    const fn = `${n.callFrame.functionName || '(anonymous)'} ${url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}`;
    byFn.set(fn, (byFn.get(fn) ?? 0) + hits);
    byModule.set(mod, (byModule.get(mod) ?? 0) + hits);
  }
  const fmt = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, v]) => `  ${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`)
      .join('\n');
  return `by module:\n${fmt(byModule)}\nby function (self):\n${fmt(byFn)}`;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'postino-profile-'));
  const natsPort = await freePort();
  const monitor = await freePort();
  const nats = spawn(
    'nats-server',
    ['-a', '127.0.0.1', '-p', String(natsPort), '-m', String(monitor), '-js', '-sd', join(dir, 'nats')],
    { stdio: 'ignore' },
  );
  const redisProc = await startRedis();
  try {
    await waitForPort('127.0.0.1', natsPort);
    const { env, ports } = await testConfig({
      NATS_URL: `nats://127.0.0.1:${natsPort}`,
      REDIS_URL: redisProc.url,
      MAIL_AUTH_CHECKS: 'false',
      SMTP_CONNECTION_RATE: '1000000',
      SMTP_MESSAGE_RATE: '1000000',
      SMTP_RECIPIENT_RATE: '1000000',
      SMTP_MAX_CONNECTIONS_PER_IP: '5000',
      LOG_LEVEL: 'warn',
    });
    const redis = new Redis(redisProc.url);
    const directory = new Directory(redis, env.REDIS_PREFIX ?? 'postino:');
    await directory.addDomain('bench.test');
    await directory.addUser(USER, 'bench-password');
    const profDir = (name: string) => join(dir, `prof-${name}`);
    const ingress = await spawnServices(
      { ...env, NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${profDir('ingress')}` },
      ['smtp-ingress'],
    );
    // Warm-up (streams, buckets, JIT), outside the counts.
    await runSource(ports.smtp, 200);
    const v0 = await varz(monitor);
    const r0 = await commandStats(redis);
    const t0 = performance.now();
    await runSource(ports.smtp, N);
    const seconds = (performance.now() - t0) / 1000;
    const v1 = await varz(monitor);
    const r1 = await commandStats(redis);
    await ingress.stop();
    const ingressStats = diffStats(r0, r1);
    console.log(
      `\n== smtp-ingress alone: ${N} messages in ${seconds.toFixed(1)} s = ${(N / seconds).toFixed(0)} msg/s`,
    );
    console.log(
      `NATS per message: ${((v1.in_msgs - v0.in_msgs) / N).toFixed(2)} in (client → server), ${((v1.out_msgs - v0.out_msgs) / N).toFixed(2)} out`,
    );
    console.log(
      `Redis commands per message: ${(ingressStats.reduce((n, [, v]) => n + v, 0) / N).toFixed(2)} (${ingressStats
        .map(([k, v]) => `${k} ${(v / N).toFixed(2)}`)
        .join(', ')})`,
    );
    for (const f of readdirSync(profDir('ingress'))) console.log(summarize(join(profDir('ingress'), f)));

    // The rest of the pipeline: router and mailbox-store drain INGRESS into the INBOX.
    const total = N + 200;
    const v2 = await varz(monitor);
    const r2 = await commandStats(redis);
    const t2 = performance.now();
    const rest = await spawnServices(
      { ...env, NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${profDir('rest')}` },
      ['router', 'mailbox-store'],
    );
    await until(
      'every message in the INBOX',
      async () => {
        const jsz = (await (await fetch(`http://127.0.0.1:${monitor}/jsz?streams=true`)).json()) as {
          account_details?: { stream_detail?: { name: string; state: { messages: number } }[] }[];
        };
        const streams = jsz.account_details?.[0]?.stream_detail ?? [];
        const left = streams
          .filter((s) => s.name === 'INGRESS' || s.name === 'LOCAL')
          .reduce((n, s) => n + s.state.messages, 0);
        return streams.length > 0 && left === 0;
      },
      600_000,
    );
    const seconds2 = (performance.now() - t2) / 1000;
    const v3 = await varz(monitor);
    const r3 = await commandStats(redis);
    await rest.stop();
    const restStats = diffStats(r2, r3);
    console.log(
      `\n== router + mailbox-store: ${total} messages drained in ${seconds2.toFixed(1)} s (including start) = ${(total / seconds2).toFixed(0)} msg/s`,
    );
    console.log(
      `NATS per message: ${((v3.in_msgs - v2.in_msgs) / total).toFixed(2)} in, ${((v3.out_msgs - v2.out_msgs) / total).toFixed(2)} out`,
    );
    console.log(
      `Redis commands per message: ${(restStats.reduce((n, [, v]) => n + v, 0) / total).toFixed(2)} (${restStats
        .map(([k, v]) => `${k} ${(v / total).toFixed(2)}`)
        .join(', ')})`,
    );
    for (const f of readdirSync(profDir('rest'))) console.log(summarize(join(profDir('rest'), f)));
    redis.disconnect();
  } finally {
    nats.kill('SIGTERM');
    await redisProc.cleanup();
  }
}

async function runSource(port: number, n: number): Promise<void> {
  const child = spawn(
    '/usr/sbin/smtp-source',
    ['-l', '2048', '-m', String(n), '-s', '20', '-f', 'sender@remote.test', '-t', USER, `127.0.0.1:${port}`],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  await new Promise((resolve) => child.once('exit', resolve));
}

await main();
