/**
 * IMAP benchmark (issue #5), bounded to about two minutes, traffic on 127.0.0.1 only.
 *
 *   npx node bench/imap.ts
 *
 * 1. Throughput: 50 concurrent clients against one imap instance wired to a real nats-server,
 *    redis-server and mailbox-store (in this process), each sending one command at a time for a
 *    few seconds: UID FETCH of headers, of whole bodies, UID STORE, UID SEARCH (flags; header).
 * 2. A folder of ENVELOPE_FOLDER distinct messages (filled for at most ENVELOPE_FILL_SECONDS):
 *    FETCH 1:* (ENVELOPE BODYSTRUCTURE) on a fresh instance cache, again, then a header SEARCH.
 *    Messages keep the MIME structure parsed at append, so none of these reads a body.
 * 3. A big folder in the same cluster: SELECT, FETCH 1:* FLAGS, then SELECT with QRESYNC after
 *    10 flag changes. The folder is filled through the mailbox RPC for at most FILL_SECONDS, so
 *    its size is what that allows (the figure printed); 100,000 when the machine is fast enough.
 * 4. Memory per idle IDLE connection: a child process runs the IMAP server on the in-memory store
 *    (scrypt logins against the real directory would take minutes for 10,000 sessions), and
 *    IDLE_CONNECTIONS sessions log in, select INBOX and IDLE; its resident memory is compared
 *    before and after.
 */
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { pino } from 'pino';
import { MailboxRpcClient } from '../services/mailbox-store/rpc.ts';
import { createImapServer } from '../services/imap/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../test/helpers/memory-mailbox.ts';
import { startServices, testConfig } from '../test/helpers/postino.ts';
import { startNats, startRedis } from '../test/helpers/servers.ts';

const CLIENTS = 50;
const PHASE_MS = 4000;
const SMALL_FOLDER = 200;
const BIG_FOLDER = 100_000;
const FILL_SECONDS = 35;
const ENVELOPE_FOLDER = 5_000;
const ENVELOPE_FILL_SECONDS = 25;
/** IMAP_BENCH_IDLE=0 skips part 4 (minutes on a loaded machine). */
const IDLE_CONNECTIONS = Number(process.env.IMAP_BENCH_IDLE ?? 10_000);
const USER = 'bench@example.test';
const PASSWORD = 'bench-password';

/** A minimal pipelining-free IMAP client: one command at a time, literals skipped by count. */
class Client {
  readonly #socket: net.Socket;
  #buffer: Buffer = Buffer.alloc(0);
  #literalLeft = 0;
  #waiting: { tag: string; resolve: (line: string) => void; lines: string[] } | null = null;
  #greeted: Promise<void>;
  #n = 0;

  constructor(port: number) {
    this.#socket = net.connect(port, '127.0.0.1');
    this.#socket.setNoDelay(true);
    let greet: () => void = () => undefined;
    this.#greeted = new Promise((resolve) => {
      greet = resolve;
    });
    let first = true;
    this.#socket.on('data', (chunk: Buffer) => {
      this.#buffer = this.#buffer.length ? Buffer.concat([this.#buffer, chunk]) : chunk;
      for (;;) {
        if (this.#literalLeft > 0) {
          const take = Math.min(this.#literalLeft, this.#buffer.length);
          this.#literalLeft -= take;
          this.#buffer = this.#buffer.subarray(take);
          if (this.#literalLeft > 0) return;
        }
        const end = this.#buffer.indexOf('\r\n');
        if (end < 0) return;
        const line = this.#buffer.subarray(0, end).toString('latin1');
        this.#buffer = this.#buffer.subarray(end + 2);
        const literal = /\{(\d+)\}$/.exec(line);
        if (literal) this.#literalLeft = Number(literal[1]);
        if (first) {
          first = false;
          greet();
          continue;
        }
        const w = this.#waiting;
        if (!w) continue;
        w.lines.push(line);
        if (line.startsWith(`${w.tag} `)) {
          this.#waiting = null;
          w.resolve(line);
        }
      }
    });
    this.#socket.on('error', () => undefined);
  }

  async command(text: string): Promise<{ status: string; lines: string[] }> {
    await this.#greeted;
    const tag = `t${++this.#n}`;
    const lines: string[] = [];
    const done = new Promise<string>((resolve) => {
      this.#waiting = { tag, resolve, lines };
    });
    this.#socket.write(`${tag} ${text}\r\n`);
    const last = await done;
    return { status: last.slice(tag.length + 1, tag.length + 3), lines };
  }

  /** Sends a raw line that is not a tagged command (IDLE's DONE). */
  raw(text: string): void {
    this.#socket.write(text);
  }

  close(): void {
    this.#socket.destroy();
  }
}

const message = (n: number): Buffer =>
  Buffer.from(
    `From: sender${n % 7}@example.org\r\nTo: ${USER}\r\nSubject: message ${n}\r\n` +
      `Date: Mon, 6 May 2024 09:00:00 +0000\r\nMessage-ID: <${n}@bench>\r\n\r\n` +
      `${'Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n'.repeat(60)}`,
  );

async function phase(
  clients: Client[],
  make: (client: number, i: number) => string,
): Promise<{ perSecond: number; failed: number }> {
  let done = 0;
  let failed = 0;
  const end = Date.now() + PHASE_MS;
  const start = Date.now();
  await Promise.all(
    clients.map(async (client, c) => {
      for (let i = 0; Date.now() < end; i++) {
        const r = await client.command(make(c, i));
        if (r.status === 'OK') done++;
        else failed++;
      }
    }),
  );
  return { perSecond: done / ((Date.now() - start) / 1000), failed };
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const start = process.hrtime.bigint();
  const value = await fn();
  return [Number(process.hrtime.bigint() - start) / 1e6, value];
}

function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

/** Child mode: an IMAP server on the in-memory store, reporting its port. */
async function idleServer(): Promise<void> {
  const store = new MemoryMailbox();
  for (let i = 0; i < 10; i++) await store.deliver(USER, message(i));
  const server = createImapServer({
    mailbox: store,
    auth: new MemoryAuthenticator({ [USER]: PASSWORD }),
    logger: pino({ level: 'silent' }),
    hostname: 'bench',
    allowPlaintextAuth: true,
    // Every idle client comes from 127.0.0.1: no per-client or total cap below the load.
    limits: { authTimeoutMs: 600_000, maxConnections: 1_000_000, maxConnectionsPerIp: 1_000_000 },
  });
  const port = await server.listen(0, '127.0.0.1');
  process.send?.({ port });
  process.on('message', (m) => {
    if (m === 'gc') {
      (globalThis as { gc?: () => void }).gc?.();
      process.send?.({ gc: true });
    }
  });
  process.on('disconnect', () => process.exit(0));
}

async function main(): Promise<void> {
  const started = Date.now();
  // Each figure is also printed as soon as it is measured: a run cut short still reports.
  const rows = new (class extends Array<[string, string]> {
    override push(...items: Array<[string, string]>): number {
      for (const [k, v] of items) console.log(`${k}: ${v}`);
      return super.push(...items);
    }
  })();
  const [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const { config, ports } = await testConfig({
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    IMAPS_PORT: '0',
    LOG_LEVEL: 'silent',
    // Every client of the benchmark comes from 127.0.0.1.
    IMAP_MAX_CONNECTIONS_PER_IP: '1000',
  });
  const running = await startServices(config, ['mailbox-store', 'imap']);
  try {
    await running.runtime.directory.addDomain('example.test');
    await running.runtime.directory.addUser(USER, PASSWORD);
    const rpc = new MailboxRpcClient(running.runtime.nats, running.runtime.blobs);
    for (let i = 0; i < SMALL_FOLDER; i++) await rpc.append(USER, 'INBOX', message(i), []);

    // 1. Throughput with 50 clients.
    const clients = Array.from({ length: CLIENTS }, () => new Client(ports.imap));
    await Promise.all(clients.map((c) => c.command(`LOGIN ${USER} ${PASSWORD}`)));
    await Promise.all(clients.map((c) => c.command('SELECT INBOX')));
    const uid = (c: number, i: number): number => ((c * 37 + i * 11) % SMALL_FOLDER) + 1;
    const results: Array<[string, { perSecond: number; failed: number }]> = [
      [
        'UID FETCH BODY.PEEK[HEADER]',
        await phase(clients, (c, i) => `UID FETCH ${uid(c, i)} BODY.PEEK[HEADER]`),
      ],
      [
        'UID FETCH BODY.PEEK[] (3.6 KB)',
        await phase(clients, (c, i) => `UID FETCH ${uid(c, i)} BODY.PEEK[]`),
      ],
      [
        'UID STORE FLAGS.SILENT',
        await phase(clients, (c, i) => `UID STORE ${uid(c, i)} ${i % 2 ? '-' : '+'}FLAGS.SILENT (\\Seen)`),
      ],
      [
        'UID FETCH (ENVELOPE BODYSTRUCTURE)',
        await phase(clients, (c, i) => `UID FETCH ${uid(c, i)} (ENVELOPE BODYSTRUCTURE)`),
      ],
      [`UID SEARCH UNSEEN (${SMALL_FOLDER} msgs)`, await phase(clients, () => 'UID SEARCH UNSEEN')],
      [
        `UID SEARCH SUBJECT (${SMALL_FOLDER} msgs)`,
        await phase(clients, (c) => `UID SEARCH SUBJECT "message ${c}"`),
      ],
    ];
    for (const [name, r] of results) {
      rows.push([
        `${CLIENTS} clients: ${name}`,
        `${r.perSecond.toFixed(0)} /s${r.failed ? ` (${r.failed} failed)` : ''}`,
      ]);
    }
    for (const c of clients) c.close();

    // 2. ENVELOPE and BODYSTRUCTURE of a folder of distinct messages, never fetched before.
    await rpc.createFolder(USER, 'Env');
    const envEnd = Date.now() + ENVELOPE_FILL_SECONDS * 1000;
    let envFilled = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (envFilled < ENVELOPE_FOLDER && Date.now() < envEnd) {
          const n = 1_000_000 + envFilled++;
          await rpc.append(USER, 'Env', message(n), []);
        }
      }),
    );
    const env = new Client(ports.imap);
    await env.command(`LOGIN ${USER} ${PASSWORD}`);
    const envInfo = await env.command('SELECT Env');
    const envCount = /\* (\d+) EXISTS/.exec(envInfo.lines.join('\n'))?.[1] ?? '?';
    for (const pass of ['first', 'second']) {
      const [ms, r] = await timed(() => env.command('FETCH 1:* (ENVELOPE BODYSTRUCTURE)'));
      rows.push([
        `FETCH 1:* (ENVELOPE BODYSTRUCTURE), ${envCount} msgs, ${pass} time`,
        `${ms.toFixed(0)} ms (${r.lines.length - 1} responses, ${r.status})`,
      ]);
    }
    const [searchMs, found] = await timed(() =>
      env.command('UID SEARCH FROM "sender3" SUBJECT "message 1000"'),
    );
    rows.push([
      `UID SEARCH FROM SUBJECT, ${envCount} msgs`,
      `${searchMs.toFixed(0)} ms (${(found.lines[0] ?? '').split(' ').length - 2} found)`,
    ]);
    env.close();

    // 3. The big folder.
    await rpc.createFolder(USER, 'Big');
    const body = message(1);
    const fillEnd = Date.now() + FILL_SECONDS * 1000;
    let filled = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (filled < BIG_FOLDER && Date.now() < fillEnd) {
          filled++;
          await rpc.append(USER, 'Big', body, []);
        }
      }),
    );
    const info = await rpc.status(USER, 'Big');
    rows.push(['big folder size (filled in ≤35 s)', `${info.exists} messages`]);
    const big = new Client(ports.imap);
    await big.command(`LOGIN ${USER} ${PASSWORD}`);
    const [selectMs, selected] = await timed(() => big.command('SELECT Big'));
    const validity = /UIDVALIDITY (\d+)/.exec(selected.lines.join('\n'))?.[1];
    const highest = /HIGHESTMODSEQ (\d+)/.exec(selected.lines.join('\n'))?.[1];
    rows.push(['SELECT big folder', `${selectMs.toFixed(0)} ms`]);
    const [flagsMs, fetched] = await timed(() => big.command('FETCH 1:* FLAGS'));
    rows.push([
      'FETCH 1:* FLAGS big folder',
      `${flagsMs.toFixed(0)} ms (${fetched.lines.length - 1} responses)`,
    ]);
    for (let i = 0; i < 10; i++) await big.command(`UID STORE ${i * 97 + 1} +FLAGS.SILENT (\\Flagged)`);
    const resync = new Client(ports.imap);
    await resync.command(`LOGIN ${USER} ${PASSWORD}`);
    await resync.command('ENABLE QRESYNC');
    const [qresyncMs, answer] = await timed(() =>
      resync.command(`SELECT Big (QRESYNC (${validity} ${highest}))`),
    );
    const changed = answer.lines.filter((l) => / FETCH /.test(l)).length;
    rows.push(['SELECT (QRESYNC) after 10 changes', `${qresyncMs.toFixed(0)} ms (${changed} FETCH)`]);
    big.close();
    resync.close();
  } finally {
    await running.stop();
    await Promise.all([nats.cleanup(), redis.cleanup()]);
  }

  // 4. Memory per IDLE connection.
  if (IDLE_CONNECTIONS > 0) await idleMemory(rows);

  const width = Math.max(...rows.map(([k]) => k.length));
  console.log(`\n${'measure'.padEnd(width)} | result`);
  console.log(`${'-'.repeat(width)}-|-${'-'.repeat(40)}`);
  for (const [k, v] of rows) console.log(`${k.padEnd(width)} | ${v}`);
  console.log(`\ntotal ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

async function idleMemory(rows: Array<[string, string]>): Promise<void> {
  const child = fork(import.meta.filename, ['--idle-server'], {
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const port = await new Promise<number>((resolve) =>
    child.once('message', (m) => resolve((m as { port: number }).port)),
  );
  const gc = (): Promise<void> =>
    new Promise((resolve) => {
      child.once('message', () => resolve());
      child.send('gc');
    });
  await gc();
  const before = rssOf(child.pid as number);
  const idlers: Client[] = [];
  const idleStart = Date.now();
  for (let i = 0; i < IDLE_CONNECTIONS; i += 200) {
    await Promise.all(
      Array.from({ length: Math.min(200, IDLE_CONNECTIONS - i) }, async () => {
        const c = new Client(port);
        idlers.push(c);
        await c.command(`LOGIN ${USER} ${PASSWORD}`);
        await c.command('SELECT INBOX');
        await new Promise<void>((resolve) => {
          void c.command('IDLE');
          setImmediate(resolve);
        });
      }),
    );
  }
  await gc();
  const after = rssOf(child.pid as number);
  rows.push([
    `${IDLE_CONNECTIONS} IDLE sessions (set up in ${((Date.now() - idleStart) / 1000).toFixed(1)} s)`,
    `${((after - before) / IDLE_CONNECTIONS / 1024).toFixed(1)} KiB per connection (RSS ${(before / 2 ** 20).toFixed(0)} → ${(after / 2 ** 20).toFixed(0)} MiB)`,
  ]);
  for (const c of idlers) c.close();
  child.kill();
}

if (process.argv.includes('--idle-server')) await idleServer();
else await main();
