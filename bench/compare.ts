/**
 * The comparative benchmark (issue #11): the same loads, from the same client code, against Postino
 * (`postino up`, the embedded default) and, with --reference, against Postfix delivering over LMTP
 * into Dovecot (Debian's packages, configured here in a temporary folder; install them once with
 * `sh bench/reference/setup.sh`). Runs are interleaved (Postino, reference, reference, Postino, ...)
 * for REPS repetitions; each figure is printed as median and spread (min–max), with the ratio
 * Postino/reference, and everything is written as JSON to bench/results/<date>.json.
 *
 *   npm run bench compare                      Postino only
 *   npm run bench -- --reference               every bench/*.ts, this one beside Postfix + Dovecot
 *   npx node bench/compare.ts --reference [--messages N] [--reps N] [--idle N] [--users N] [--only a,b]
 *
 * Loads (see README "Benchmarks"):
 *   accept      smtp-source -l 2048 -m N -s 20 (one 2 KiB message per session, 20 sessions at a time),
 *               messages/s until every 250;
 *   end-to-end  the same run, until STATUS INBOX counts every message: messages/s, and the lag
 *               after the last 250;
 *   latency     one message at a time (30): end of DATA to 250, and to visible over IMAP (STATUS
 *               polled back to back on a second connection);
 *   imap        a fresh LOGIN + SELECT + FETCH 1:* (UID FLAGS) of a 20,000-message INBOX; 10 clients
 *               cycling LOGIN, LIST, STATUS, SELECT, FETCH, STORE, EXPUNGE, APPEND, LOGOUT (ops/s,
 *               errors); 10 clients fetching whole bodies (BODY.PEEK[]) of that INBOX (messages/s);
 *   pop3        20 users, each with 50 messages, RETR per second;
 *   memory      IDLE connections (logged in, INBOX selected, IDLE): memory per connection;
 *   ceiling     the accept load against smtp-sink, which stores nothing;
 *   domains     (Postino only) 10,000 domains and --users users through POST /api/import: import
 *               rate, Redis memory per user, RCPT check latency, login latency.
 */
import { spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort, waitForPort } from '../test/helpers/servers.ts';
import { ImapClient, Pop3Client, message, smtpSendOne } from './reference/clients.ts';
import { startDovecot, type DovecotInstance } from './reference/dovecot.ts';
import { startPostfix, type PostfixInstance } from './reference/postfix.ts';
import { cheapHash, hashPassword, rssKiB, startPostino, type PostinoInstance } from './reference/postino.ts';

// ---- options -------------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const flag = (name: string): boolean => argv.includes(`--${name}`);
const option = (name: string, env: string, fallback: number): number => {
  const i = argv.indexOf(`--${name}`);
  const v = i >= 0 ? argv[i + 1] : process.env[env];
  return v !== undefined && v !== '' && Number.isFinite(Number(v)) ? Number(v) : fallback;
};
const REFERENCE = flag('reference');
/** The issue's load (smtp-source -m 20000): about 20–30 s per accept run on a 2-core machine. */
const MESSAGES = option('messages', 'BENCH_MESSAGES', 20_000);
const SESSIONS = 20;
const REPS = option('reps', 'BENCH_REPS', 3);
const LATENCY_SAMPLES = 30;
const BIG_INBOX = option('big', 'BENCH_BIG_INBOX', 20_000);
const MIXED_CLIENTS = 10;
const MIXED_SECONDS = option('seconds', 'BENCH_SECONDS', 10);
const POP3_USERS = 20;
const POP3_MESSAGES = 50;
/** The issue's figure: 10,000 idle IMAP connections (Postino's cap is IMAP_MAX_CONNECTIONS, 20,000 by default). */
const IDLE_CONNECTIONS = option('idle', 'BENCH_IDLE', 10_000);
const DOMAINS = option('domains', 'BENCH_DOMAINS', 10_000);
/** The issue's directory: 1,000,000 users over the 10,000 domains. */
const DIRECTORY_USERS = option('users', 'BENCH_USERS', 1_000_000);
const ONLY = (() => {
  const i = argv.indexOf('--only');
  return i >= 0 ? new Set((argv[i + 1] ?? '').split(',')) : null;
})();
const wanted = (load: string): boolean => !ONLY || ONLY.has(load);

const DOMAIN = 'bench.test';
const PASSWORD = 'bench-password';
const SMTP_SOURCE = '/usr/sbin/smtp-source';
const SMTP_SINK = '/usr/sbin/smtp-sink';

const loadUsers = Array.from({ length: REPS }, (_, r) => `load${r + 1}@${DOMAIN}`);
const mixUsers = Array.from({ length: MIXED_CLIENTS }, (_, i) => `mix${i + 1}@${DOMAIN}`);
const popUsers = Array.from({ length: POP3_USERS }, (_, i) => `pop${i + 1}@${DOMAIN}`);
const USERS = [...loadUsers, `lat@${DOMAIN}`, `big@${DOMAIN}`, ...mixUsers, ...popUsers];
const IDLE_USER = `idle@${DOMAIN}`;

// ---- figures -------------------------------------------------------------------------------------

type System = 'postino' | 'reference';
interface Figure {
  load: string;
  name: string;
  unit: string;
  /** Whether a bigger value is better (for the ratio's reading). */
  higherIsBetter: boolean;
  values: Record<System, number[]>;
  note?: string;
}
const figures = new Map<string, Figure>();
function record(
  load: string,
  name: string,
  unit: string,
  higherIsBetter: boolean,
  system: System,
  value: number,
) {
  const key = `${load}/${name}`;
  let f = figures.get(key);
  if (!f) {
    f = { load, name, unit, higherIsBetter, values: { postino: [], reference: [] } };
    figures.set(key, f);
  }
  f.values[system].push(value);
}
const notes: string[] = [];

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
const median = (xs: number[]): number => {
  const s = sorted(xs);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
};
const percentile = (xs: number[], p: number): number => {
  const s = sorted(xs);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? NaN;
};
const fmt = (n: number): string =>
  !Number.isFinite(n)
    ? '–'
    : Math.abs(n) >= 100
      ? n.toFixed(0)
      : Math.abs(n) >= 10
        ? n.toFixed(1)
        : n.toFixed(2);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- targets -------------------------------------------------------------------------------------

interface Target {
  system: System;
  smtpPort: number;
  imapPort: number;
  pop3Port: number;
  /** Memory attributed to IMAP connections, KiB (Postino: the process; Dovecot: its imap processes). */
  imapMemoryKiB(): number;
  /** CPU ms used so far by every process of the system (Postino with its nats-server and redis-server). */
  cpuMs(): number;
  imapPssKiB(): number;
}

function pssKiB(pid: number): number {
  try {
    const m = /Pss:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return Number(m?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/**
 * CPU time (user + system, ms) of a process tree: each live process's own time plus the time of
 * the children it has reaped (a Postfix smtpd that served its sessions and exited counts in its
 * master's). Read before and after a load, the difference is what the system spent on it, on any
 * core, whatever else the machine was doing.
 */
function treeCpuMs(roots: number[]): number {
  const ticks = 1000 / 100; // USER_HZ is 100 on Linux
  const parent = new Map<number, number>();
  const own = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // After the command: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based from pid.
      parent.set(Number(name), Number(fields[1]));
      own.set(
        Number(name),
        (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * ticks,
      );
    } catch {
      // the process ended while the list was read
    }
  }
  const inTree = (pid: number): boolean => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; p = parent.get(p) ?? 0, hops++)
      if (roots.includes(p)) return true;
    return false;
  };
  let total = 0;
  for (const [pid, ms] of own) if (inTree(pid)) total += ms;
  return total;
}

function safeRss(pid: number): number {
  try {
    return rssKiB(pid);
  } catch {
    return 0;
  }
}

// ---- loads ---------------------------------------------------------------------------------------

/** smtp-source against a port; resolves when it exits (every reply in), with the elapsed ms. */
async function smtpSource(port: number, to: string, n: number): Promise<{ ms: number; errors: number }> {
  const start = performance.now();
  const child = spawn(
    SMTP_SOURCE,
    [
      '-l',
      '2048',
      '-m',
      String(n),
      '-s',
      String(SESSIONS),
      '-f',
      'sender@remote.test',
      '-t',
      to,
      `127.0.0.1:${port}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const ms = performance.now() - start;
  const errors = err.split('\n').filter((l) => l.trim()).length;
  if (code !== 0 || errors > 0)
    notes.push(`smtp-source to port ${port}: exit ${code}; ${err.trim().slice(0, 300)}`);
  return { ms, errors };
}

async function acceptAndEndToEnd(t: Target, rep: number): Promise<void> {
  const user = loadUsers[rep] ?? '';
  const watcher = await ImapClient.connect(t.imapPort);
  await watcher.login(user, PASSWORD);
  const base = await watcher.messages();
  const cpuBefore = t.cpuMs();
  const start = performance.now();
  let lastAccept = 0;
  const source = smtpSource(t.smtpPort, user, MESSAGES).then((r) => {
    lastAccept = performance.now();
    return r;
  });
  let visibleAt = 0;
  let seen = base;
  const deadline = start + 600_000;
  while (performance.now() < deadline) {
    seen = await watcher.messages();
    if (seen - base >= MESSAGES) {
      visibleAt = performance.now();
      break;
    }
    await sleep(20);
  }
  const accepted = await source;
  const cpu = t.cpuMs() - cpuBefore;
  await watcher.logout();
  if (visibleAt)
    record('end-to-end', 'CPU per message, all processes', 'ms', false, t.system, cpu / MESSAGES);
  record('accept', 'messages/s accepted', 'msg/s', true, t.system, (MESSAGES / accepted.ms) * 1000);
  if (accepted.errors) record('accept', 'smtp-source errors', 'lines', false, t.system, accepted.errors);
  if (visibleAt) {
    record(
      'end-to-end',
      'messages/s in the INBOX',
      'msg/s',
      true,
      t.system,
      (MESSAGES / (visibleAt - start)) * 1000,
    );
    record(
      'end-to-end',
      'lag after the last 250',
      'ms',
      false,
      t.system,
      Math.max(0, visibleAt - lastAccept),
    );
  } else {
    notes.push(`${t.system}: only ${seen - base} of ${MESSAGES} messages reached the INBOX in 10 minutes`);
  }
}

async function latency(t: Target): Promise<void> {
  const user = `lat@${DOMAIN}`;
  const watcher = await ImapClient.connect(t.imapPort);
  await watcher.login(user, PASSWORD);
  const toReply: number[] = [];
  const toVisible: number[] = [];
  let count = await watcher.messages();
  for (let i = 0; i < LATENCY_SAMPLES; i++) {
    const { dataEnd, replied } = await smtpSendOne(t.smtpPort, 'sender@remote.test', user, message(i, user));
    toReply.push(replied - dataEnd);
    const end = performance.now() + 30_000;
    for (;;) {
      const n = await watcher.messages();
      if (n > count) {
        count = n;
        toVisible.push(performance.now() - dataEnd);
        break;
      }
      if (performance.now() > end) {
        notes.push(`${t.system}: a latency message was not visible after 30 s`);
        break;
      }
    }
  }
  await watcher.logout();
  for (const [name, xs] of [
    ['to 250', toReply],
    ['to visible over IMAP', toVisible],
  ] as const) {
    record('latency', `${name} p50`, 'ms', false, t.system, percentile(xs, 50));
    record('latency', `${name} p90`, 'ms', false, t.system, percentile(xs, 90));
    record('latency', `${name} max`, 'ms', false, t.system, Math.max(...xs));
  }
}

/** Fills users' INBOXes over IMAP APPEND (MULTIAPPEND batches), several connections at a time. */
/** MULTIAPPEND batches stay under Postino's 32 literals per command (services/imap/limits.ts). */
async function fill(t: Target, user: string, count: number, connections = 4, per = 25): Promise<void> {
  const c0 = await ImapClient.connect(t.imapPort);
  await c0.login(user, PASSWORD);
  const have = await c0.messages();
  await c0.logout();
  const missing = count - have;
  if (missing <= 0) return;
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(connections, Math.ceil(missing / per)) }, async () => {
      const c = await ImapClient.connect(t.imapPort);
      await c.login(user, PASSWORD);
      while (next < missing) {
        const from = next;
        next += per;
        const batch = Array.from({ length: Math.min(per, missing - from) }, (_, i) =>
          message(have + from + i, user),
        );
        await c.append('INBOX', batch, per);
      }
      await c.logout();
    }),
  );
}

async function imapBig(t: Target): Promise<void> {
  const user = `big@${DOMAIN}`;
  const start = performance.now();
  const c = await ImapClient.connect(t.imapPort);
  await c.login(user, PASSWORD);
  const loggedIn = performance.now();
  await c.ok('SELECT INBOX');
  const selected = performance.now();
  const r = await c.ok('FETCH 1:* (UID FLAGS)');
  const done = performance.now();
  await c.logout();
  const fetched = r.lines.filter((l) => / FETCH /.test(l)).length;
  if (fetched < BIG_INBOX) notes.push(`${t.system}: FETCH 1:* returned ${fetched} of ${BIG_INBOX}`);
  record(
    'imap',
    `login+SELECT+FETCH 1:* (UID FLAGS), ${BIG_INBOX} msgs`,
    'ms',
    false,
    t.system,
    done - start,
  );
  record('imap', `  of which SELECT`, 'ms', false, t.system, selected - loggedIn);
  record('imap', `  of which FETCH`, 'ms', false, t.system, done - selected);
}

async function imapMixed(t: Target): Promise<void> {
  let ops = 0;
  let errors = 0;
  const firstErrors: string[] = [];
  const end = performance.now() + MIXED_SECONDS * 1000;
  const start = performance.now();
  await Promise.all(
    mixUsers.map(async (user, i) => {
      while (performance.now() < end) {
        let c: ImapClient | null = null;
        try {
          c = await ImapClient.connect(t.imapPort);
          const steps: [string, Buffer[]?][] = [
            [`LOGIN "${user}" "${PASSWORD}"`],
            ['LIST "" "*"'],
            ['STATUS INBOX (MESSAGES UIDNEXT UNSEEN)'],
            ['SELECT INBOX'],
            ['FETCH 1:* (UID FLAGS RFC822.SIZE)'],
            ['STORE * +FLAGS (\\Deleted)'],
            ['EXPUNGE'],
            ['APPEND INBOX {}', [message(i, user)]],
            ['LOGOUT'],
          ];
          for (const [cmd, lits] of steps) {
            const r = await c.command(cmd, lits ?? []);
            if (r.status === 'OK') ops++;
            else {
              errors++;
              if (firstErrors.length < 3)
                firstErrors.push(`${cmd.split(' ')[0]}: ${r.status} ${r.lines.slice(-1)[0] ?? ''}`);
              break;
            }
          }
        } catch (err) {
          errors++;
          if (firstErrors.length < 3) firstErrors.push((err as Error).message);
        } finally {
          c?.close();
        }
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  record('imap', 'mixed ops/s (10 clients)', 'ops/s', true, t.system, ops / seconds);
  record('imap', 'mixed errors', 'count', false, t.system, errors);
  if (firstErrors.length) notes.push(`${t.system} mixed IMAP errors: ${firstErrors.join('; ')}`);
}

async function imapBodies(t: Target): Promise<void> {
  // Logged in and EXAMINEd first: the timing covers the FETCHes only.
  const clients = await Promise.all(
    Array.from({ length: MIXED_CLIENTS }, async () => {
      const c = await ImapClient.connect(t.imapPort);
      await c.login(`big@${DOMAIN}`, PASSWORD);
      await c.ok('EXAMINE INBOX');
      return c;
    }),
  );
  let fetched = 0;
  const start = performance.now();
  const end = start + MIXED_SECONDS * 1000;
  await Promise.all(
    clients.map(async (c) => {
      while (performance.now() < end) {
        const n = 1 + Math.floor(Math.random() * BIG_INBOX);
        const r = await c.ok(`FETCH ${n} (BODY.PEEK[])`);
        if (r.literalOctets > 0) fetched++;
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  await Promise.all(clients.map((c) => c.logout()));
  record('imap', 'FETCH BODY.PEEK[] messages/s (10 clients)', 'msg/s', true, t.system, fetched / seconds);
}

async function pop3(t: Target): Promise<void> {
  // Logged in first (each maildrop locked): the timing covers the RETRs only.
  const clients = await Promise.all(
    popUsers.map(async (user) => {
      const c = await Pop3Client.connect(t.pop3Port);
      await c.login(user, PASSWORD);
      return c;
    }),
  );
  let retrs = 0;
  const start = performance.now();
  const end = start + MIXED_SECONDS * 1000;
  await Promise.all(
    clients.map(async (c) => {
      for (let i = 0; performance.now() < end; i++) {
        await c.command(`RETR ${(i % POP3_MESSAGES) + 1}`, true);
        retrs++;
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  await Promise.all(clients.map((c) => c.quit()));
  record('pop3', 'RETR/s (20 users)', 'RETR/s', true, t.system, retrs / seconds);
}

async function idleMemory(t: Target): Promise<void> {
  const before = t.imapMemoryKiB();
  const beforePss = t.imapPssKiB();
  const clients: ImapClient[] = [];
  let next = 0;
  let failed = 0;
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (next < IDLE_CONNECTIONS) {
        next++;
        try {
          const c = await ImapClient.connect(t.imapPort);
          await c.login(IDLE_USER, PASSWORD);
          await c.ok('SELECT INBOX');
          const idling = new Promise<void>(
            (resolve) => (c.onUntagged = (l) => l.startsWith('+') && resolve()),
          );
          void c.command('IDLE');
          await idling;
          clients.push(c);
        } catch {
          failed++;
        }
      }
    }),
  );
  await sleep(2000);
  const after = t.imapMemoryKiB();
  const afterPss = t.imapPssKiB();
  for (const c of clients) c.close();
  const n = clients.length;
  if (failed) notes.push(`${t.system}: ${failed} of ${IDLE_CONNECTIONS} idle connections failed`);
  record(
    'memory',
    `per idle IMAP connection (RSS, ${n} IDLE)`,
    'KiB',
    false,
    t.system,
    (after - before) / Math.max(1, n),
  );
  record(
    'memory',
    `per idle IMAP connection (PSS)`,
    'KiB',
    false,
    t.system,
    (afterPss - beforePss) / Math.max(1, n),
  );
  // Dovecot's processes end as the sockets close; give them the time to before the next load.
  await sleep(3000);
}

async function ceiling(): Promise<void> {
  const port = await freePort();
  const sink = spawn(
    SMTP_SINK,
    [...(process.getuid?.() === 0 ? ['-u', 'postfix'] : []), '-c', `127.0.0.1:${port}`, '1024'],
    { stdio: 'ignore' },
  );
  try {
    await waitForPort('127.0.0.1', port);
    const r = await smtpSource(port, `sink@${DOMAIN}`, MESSAGES);
    record(
      'ceiling',
      'smtp-sink messages/s (stores nothing)',
      'msg/s',
      true,
      'postino',
      (MESSAGES / r.ms) * 1000,
    );
    record(
      'ceiling',
      'smtp-sink messages/s (stores nothing)',
      'msg/s',
      true,
      'reference',
      (MESSAGES / r.ms) * 1000,
    );
  } finally {
    sink.kill('SIGTERM');
  }
}

/** Postino only: 10,000 domains and DIRECTORY_USERS users through the bulk import. */
async function manyDomains(p: PostinoInstance, t: Target): Promise<void> {
  const redis = new Redis(p.redisUrl);
  const memory = async () => Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1] ?? 0);
  const before = await memory();
  const hash = await hashPassword(PASSWORD);
  const start = performance.now();
  const perDomain = Math.max(1, Math.floor(DIRECTORY_USERS / DOMAINS));
  for (let d0 = 0; d0 < DOMAINS; d0 += 500) {
    const lines: string[] = [];
    for (let d = d0; d < Math.min(DOMAINS, d0 + 500); d++) {
      lines.push(JSON.stringify({ domain: `d${d}.example` }));
      for (let u = 0; u < perDomain; u++)
        lines.push(JSON.stringify({ user: `u${u}@d${d}.example`, passwordHash: hash }));
    }
    await p.importLines(lines);
  }
  const seconds = (performance.now() - start) / 1000;
  const users = perDomain * DOMAINS;
  const after = await memory();
  record(
    'domains',
    `import rate (${DOMAINS} domains, ${users} users)`,
    'users/s',
    true,
    'postino',
    users / seconds,
  );
  record('domains', 'Redis memory per user', 'bytes', false, 'postino', (after - before) / users);
  redis.disconnect();
  // RCPT checks: one session, random imported users, RSET every 50 (the recipient limit is 100).
  const rcpt: number[] = [];
  const s = await import('node:net').then((net) => net.connect(t.smtpPort, '127.0.0.1'));
  let buf = '';
  let want: (() => void) | null = null;
  s.on('data', (c: Buffer) => {
    buf += c.toString('latin1');
    if (/(^|\r\n)\d{3} [^\r\n]*\r\n$/.test(buf) && want) {
      const w = want;
      want = null;
      w();
    }
  });
  const send = async (line: string) => {
    buf = '';
    const done = new Promise<void>((resolve) => (want = resolve));
    if (line) s.write(`${line}\r\n`);
    await done;
    return buf;
  };
  await send('');
  await send('EHLO bench.client');
  for (let i = 0; i < 1000; i++) {
    if (i % 50 === 0) {
      await send('RSET');
      await send('MAIL FROM:<sender@remote.test>');
    }
    const d = Math.floor(Math.random() * DOMAINS);
    const u = Math.floor(Math.random() * perDomain);
    const t0 = performance.now();
    const r = await send(`RCPT TO:<u${u}@d${d}.example>`);
    rcpt.push(performance.now() - t0);
    if (!r.startsWith('250')) notes.push(`RCPT u${u}@d${d}.example: ${r.trim()}`);
  }
  s.end('QUIT\r\n');
  record('domains', 'RCPT check p50', 'ms', false, 'postino', percentile(rcpt, 50));
  record('domains', 'RCPT check p90', 'ms', false, 'postino', percentile(rcpt, 90));
  const logins: number[] = [];
  for (let i = 0; i < 30; i++) {
    const c = await ImapClient.connect(t.imapPort);
    const d = Math.floor(Math.random() * DOMAINS);
    const t0 = performance.now();
    await c.login(`u${Math.floor(Math.random() * perDomain)}@d${d}.example`, PASSWORD);
    logins.push(performance.now() - t0);
    await c.logout();
  }
  record('domains', 'IMAP LOGIN p50 (scrypt 2^15)', 'ms', false, 'postino', percentile(logins, 50));
  record('domains', 'IMAP LOGIN p90', 'ms', false, 'postino', percentile(logins, 90));
}

// ---- main ----------------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (REFERENCE) {
    const missing = [SMTP_SOURCE, SMTP_SINK, '/usr/sbin/postfix', '/usr/sbin/dovecot'].filter(
      (f) => !existsSync(f),
    );
    if (missing.length) throw new Error(`missing ${missing.join(', ')}: run sh bench/reference/setup.sh`);
    if (process.getuid?.() !== 0)
      throw new Error(
        '--reference starts Postfix and Dovecot as root (their masters drop privileges): run as root',
      );
  } else if (!existsSync(SMTP_SOURCE)) {
    throw new Error(
      `missing ${SMTP_SOURCE} (the postfix package's load generator): run sh bench/reference/setup.sh`,
    );
  }
  const root = mkdtempSync(join(tmpdir(), 'postino-compare-'));
  chmodSync(root, 0o755);
  const started = new Date();
  const stops: (() => Promise<void>)[] = [];
  const targets: Target[] = [];
  try {
    process.stderr.write('starting Postino (postino up)...\n');
    const p = await startPostino(join(root, 'postino'));
    stops.push(async () => void (await p.stop()));
    const hash = await hashPassword(PASSWORD);
    const cheap = await cheapHash(PASSWORD);
    await p.importLines([
      JSON.stringify({ domain: DOMAIN }),
      ...USERS.map((u) => JSON.stringify({ user: u, passwordHash: hash })),
      JSON.stringify({ user: IDLE_USER, passwordHash: cheap }),
    ]);
    targets.push({
      system: 'postino',
      smtpPort: p.smtpPort,
      imapPort: p.imapPort,
      pop3Port: p.pop3Port,
      imapMemoryKiB: () => safeRss(p.pid),
      imapPssKiB: () => pssKiB(p.pid),
      cpuMs: () => treeCpuMs([p.pid]),
    });
    let dovecot: DovecotInstance | null = null;
    let postfix: PostfixInstance | null = null;
    if (REFERENCE) {
      process.stderr.write('starting Dovecot and Postfix...\n');
      mkdirSync(join(root, 'dovecot'));
      mkdirSync(join(root, 'postfix'));
      const d = await startDovecot({
        dir: join(root, 'dovecot'),
        imapPort: await freePort(),
        pop3Port: await freePort(),
        lmtpPort: await freePort(),
        users: USERS,
        cheapUsers: [IDLE_USER],
        password: PASSWORD,
      });
      dovecot = d;
      stops.push(() => d.stop());
      const f = await startPostfix({
        dir: join(root, 'postfix'),
        smtpPort: await freePort(),
        domain: DOMAIN,
        users: [...USERS, IDLE_USER],
        lmtpHost: '127.0.0.1',
        lmtpPort: d.lmtpPort,
      });
      postfix = f;
      stops.push(() => f.stop());
      const sum = (pids: number[], of: (pid: number) => number) => pids.reduce((n, pid) => n + of(pid), 0);
      targets.push({
        system: 'reference',
        smtpPort: f.smtpPort,
        imapPort: d.imapPort,
        pop3Port: d.pop3Port,
        imapMemoryKiB: () => sum(d.imapPids(), safeRss),
        imapPssKiB: () => sum(d.imapPids(), pssKiB),
        cpuMs: () => treeCpuMs([d.masterPid, f.masterPid()]),
      });
    }
    void postfix;
    void dovecot;
    /** Interleaved: Postino first on odd repetitions, the reference first on even ones. */
    const order = (rep: number) => (rep % 2 === 0 ? targets : [...targets].reverse());
    const phase = async (name: string, fn: (t: Target, rep: number) => Promise<void>, reps = REPS) => {
      if (!wanted(name)) return;
      for (let rep = 0; rep < reps; rep++) {
        for (const t of order(rep)) {
          process.stderr.write(`${name} ${rep + 1}/${reps} ${t.system}...\n`);
          await fn(t, rep);
        }
      }
    };

    // Memory first, on fresh processes: after the other loads Postino's heap stays grown, and new
    // connections would fit in memory that is already resident (too low a figure).
    await phase('memory', idleMemory, 1);
    await phase('ceiling', () => ceiling(), REPS);
    await phase('accept', acceptAndEndToEnd);
    await phase('latency', latency);
    if (wanted('imap')) {
      for (const t of targets) {
        process.stderr.write(`filling ${BIG_INBOX} messages and the mixed-load INBOXes (${t.system})...\n`);
        const t0 = performance.now();
        await fill(t, `big@${DOMAIN}`, BIG_INBOX);
        record(
          'imap',
          `fill ${BIG_INBOX} by MULTIAPPEND (4 connections, 25 per command)`,
          'msg/s',
          true,
          t.system,
          BIG_INBOX / ((performance.now() - t0) / 1000),
        );
        for (const u of mixUsers) await fill(t, u, 20, 1);
      }
    }
    await phase('imap', imapBig);
    await phase('imap', imapMixed);
    await phase('imap', imapBodies);
    if (wanted('pop3')) for (const t of targets) for (const u of popUsers) await fill(t, u, POP3_MESSAGES, 1);
    await phase('pop3', pop3);
    if (wanted('domains')) {
      process.stderr.write(`domains: importing ${DOMAINS} domains and ${DIRECTORY_USERS} users...\n`);
      await manyDomains(p, targets[0] as Target);
    }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  }
  report(started);
}

function report(started: Date): void {
  const rows = [...figures.values()];
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  const spread = (xs: number[]) => (xs.length > 1 ? `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}` : '');
  const cell = (xs: number[]) =>
    xs.length ? `${fmt(median(xs))}${xs.length > 1 ? ` (${spread(xs)})` : ''}` : '–';
  console.log(
    `\ncomparative benchmark: ${MESSAGES} messages per accept run, ${REPS} repetitions, median (min–max); ` +
      `${cpus().length} CPUs, shared with whatever else runs`,
  );
  const head = REFERENCE
    ? ['load', 'figure', 'unit', 'Postino', 'Postfix+Dovecot', 'Postino/ref', 'better']
    : ['load', 'figure', 'unit', 'Postino'];
  console.log(line(head));
  console.log(line(head.map(() => '---')));
  for (const f of rows) {
    const p = median(f.values.postino);
    const r = median(f.values.reference);
    const cells = [f.load, f.name, f.unit, cell(f.values.postino)];
    if (REFERENCE) {
      const ratio = f.values.reference.length && r !== 0 ? (p / r).toFixed(2) : '–';
      cells.push(cell(f.values.reference), ratio, f.higherIsBetter ? 'higher' : 'lower');
    }
    console.log(line(cells));
  }
  console.log(`\ndurability before the 250:\n${DURABILITY.map((d) => `- ${d}`).join('\n')}`);
  if (notes.length) console.log(`\nnotes:\n${notes.map((n) => `- ${n}`).join('\n')}`);
  const dir = join(import.meta.dirname, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${started.toISOString().replace(/[:.]/g, '-')}.json`);
  const json = {
    started: started.toISOString(),
    reference: REFERENCE,
    options: {
      MESSAGES,
      SESSIONS,
      REPS,
      BIG_INBOX,
      MIXED_CLIENTS,
      MIXED_SECONDS,
      POP3_USERS,
      IDLE_CONNECTIONS,
      DOMAINS,
      DIRECTORY_USERS,
    },
    machine: { cpus: cpus().length, model: cpus()[0]?.model },
    durability: DURABILITY,
    figures: rows.map((f) => ({
      ...f,
      median: { postino: median(f.values.postino), reference: median(f.values.reference) },
    })),
    notes,
  };
  writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
  console.log(`\nwritten: ${file}`);
}

const DURABILITY = [
  'Postfix: cleanup fsyncs the queue file before smtpd answers 250 (default); the file is removed after the LMTP 250.',
  'Dovecot: mail_fsync = optimized (default): LMTP and APPEND fsync the maildir file before answering; indexes are not fsynced.',
  'Dovecot: passwords SHA512-CRYPT (default scheme), no auth cache; login processes in high-performance mode (service_count = 0).',
  'Postino: 250 after the body is in the blob store (JetStream object store, file storage) and the envelope is acked by JetStream (file storage); nats-server fsyncs its file store every 2 min by default (sync_interval), not per message; one node, no replicas.',
  'Postino: Redis appendonly yes, appendfsync everysec (the embedded default); passwords scrypt N=2^15 (the only scheme).',
];

await main();
