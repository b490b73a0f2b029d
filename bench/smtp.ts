/**
 * smtp-ingress benchmark: messages accepted per second with 20 concurrent senders of 10 KiB
 * messages, plain and with STARTTLS, and the memory of 1,000 open idle sessions. Runs
 * `postino run smtp-ingress` as its own process against a throwaway nats-server and redis-server
 * on loopback, so its memory is measured alone (VmRSS from /proc).
 *
 *   npx node bench/smtp.ts
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import nodemailer from 'nodemailer';
import { startNats, startRedis } from '../test/helpers/servers.ts';
import { spawnServices, testConfig } from '../test/helpers/postino.ts';
import { freePort } from '../test/helpers/servers.ts';
import { Directory } from '../services/core/directory.ts';
import { Redis } from 'ioredis';

const SENDERS = 20;
const SECONDS = 5;
/** Rounds of plain and STARTTLS, alternated; the median is shown (the CPUs are shared). */
const ROUNDS = 3;
const BODY = `${'0123456789abcdef'.repeat(4).concat('\r\n').repeat(157)}`; // ≈ 10 KiB

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

async function throughput(port: number, starttls: boolean): Promise<{ rate: number; failed: number }> {
  let sent = 0;
  let failed = 0;
  const end = Date.now() + SECONDS * 1000;
  const sender = async (i: number) => {
    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port,
      pool: true,
      maxConnections: 1,
      maxMessages: Infinity,
      secure: false,
      ignoreTLS: !starttls,
      requireTLS: starttls,
      tls: { rejectUnauthorized: false },
    });
    while (Date.now() < end) {
      try {
        await t.sendMail({
          from: `sender${i}@remote.test`,
          to: 'bob@example.test',
          subject: `bench ${i}`,
          text: BODY,
        });
        sent++;
      } catch {
        failed++;
      }
    }
    t.close();
  };
  const start = Date.now();
  await Promise.all(Array.from({ length: SENDERS }, (_, i) => sender(i)));
  return { rate: sent / ((Date.now() - start) / 1000), failed };
}

async function idleSessions(
  port: number,
  pid: number,
  n: number,
): Promise<{ before: number; after: number }> {
  const before = rssKiB(pid);
  const socks: Socket[] = [];
  await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<void>((resolve, reject) => {
          const s = connect({ host: '127.0.0.1', port });
          socks.push(s);
          let buf = '';
          s.on('data', (c: Buffer) => {
            buf += c.toString();
            if (buf.startsWith('220') && !buf.includes('EHLO-SENT')) {
              buf += 'EHLO-SENT';
              s.write('EHLO idle.test\r\n');
            } else if (/\n250 [^\n]*\n$/.test(buf)) resolve();
          });
          s.once('error', reject);
        }),
    ),
  );
  const after = rssKiB(pid);
  for (const s of socks) s.destroy();
  return { before, after };
}

const [nats, redis] = await Promise.all([startNats(), startRedis()]);
try {
  const { env, ports } = await testConfig({
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    SMTPS_PORT: String(await freePort()),
    MAIL_AUTH_CHECKS: 'false',
    SMTP_CONNECTION_RATE: '1000000',
    SMTP_MESSAGE_RATE: '1000000',
    SMTP_RECIPIENT_RATE: '1000000',
    SMTP_MAX_CONNECTIONS_PER_IP: '5000',
    SMTP_MAX_CONNECTIONS: '5000',
  });
  const r = new Redis(redis.url);
  const dir = new Directory(r, env.REDIS_PREFIX ?? 'postino:');
  await dir.addDomain('example.test');
  await dir.addUser('bob@example.test', 'bob-password');
  r.disconnect();
  const svc = await spawnServices(env, ['smtp-ingress']);
  const pid = svc.child.pid ?? 0;
  try {
    // Idle sessions first, on a fresh process (after the load runs the heap stays grown).
    const idle = await idleSessions(ports.smtp, pid, 1000);
    const rounds: { plain: number; tls: number; failed: number }[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const p = await throughput(ports.smtp, false);
      const t = await throughput(ports.smtp, true);
      rounds.push({ plain: p.rate, tls: t.rate, failed: p.failed + t.failed });
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
    const plain = { rate: median(rounds.map((r) => r.plain)), all: rounds.map((r) => r.plain.toFixed(0)) };
    const tls = { rate: median(rounds.map((r) => r.tls)), all: rounds.map((r) => r.tls.toFixed(0)) };
    const failed = rounds.reduce((n, r) => n + r.failed, 0);
    const perSession = ((idle.after - idle.before) * 1024) / 1000;
    console.log(
      `smtp-ingress benchmark (${SENDERS} senders, 10 KiB messages, ${ROUNDS} rounds of ${SECONDS}s, one process, 2 cores shared; ${failed} failed)`,
    );
    console.log('| measure | value |');
    console.log('| --- | --- |');
    console.log(
      `| messages/s, plain (median; rounds) | ${plain.rate.toFixed(0)} (${plain.all.join(', ')}) |`,
    );
    console.log(`| messages/s, STARTTLS (median; rounds) | ${tls.rate.toFixed(0)} (${tls.all.join(', ')}) |`);
    console.log(`| RSS before 1,000 idle sessions | ${(idle.before / 1024).toFixed(1)} MiB |`);
    console.log(`| RSS with 1,000 idle sessions | ${(idle.after / 1024).toFixed(1)} MiB |`);
    console.log(`| memory per idle session | ${(perSession / 1024).toFixed(1)} KiB |`);
  } finally {
    await svc.stop();
  }
} finally {
  await Promise.all([nats.cleanup(), redis.cleanup()]);
}
