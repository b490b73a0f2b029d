/**
 * POP3 benchmark: `npx node bench/pop3.ts`.
 *
 * A throwaway nats-server and redis-server on loopback, the mailbox-store in this process, and the
 * pop3 service as its own process (`postino run pop3`), as in a cluster. It measures:
 *   1. RETR of 10 KiB messages per second with 20 users downloading at the same time (each its
 *      own connection and maildrop; RETR sets \Seen, the default);
 *   2. the time to log in to a 10,000-message maildrop (USER/PASS to +OK: the lock and the INBOX
 *      snapshot), against an empty maildrop for reference, then STAT, LIST and UIDL on it.
 * Bounded in time (about a minute); all traffic stays on 127.0.0.1.
 */
import { connect, type Socket } from 'node:net';
import { MailboxRpcClient } from '../services/mailbox-store/rpc.ts';
import { spawnServices, startServices, testConfig } from '../test/helpers/postino.ts';
import { freePort, startNats, startRedis } from '../test/helpers/servers.ts';

const USERS = 20;
const MESSAGES_PER_USER = 50;
const MESSAGE_OCTETS = 10 * 1024;
const RETR_SECONDS = 15;
const BIG_MAILDROP = 10_000;
const LOGIN_ROUNDS = 5;
const PASSWORD = 'bench-password';

/** One POP3 connection, one command at a time. */
class Client {
  readonly #socket: Socket;
  #chunks: Buffer[] = [];
  #tail = '';
  #want: 'line' | 'multi' = 'line';
  #done: ((data: Buffer) => void) | null = null;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#receive(chunk));
  }

  static async open(port: number): Promise<Client> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
    const client = new Client(socket);
    await client.#wait('line');
    return client;
  }

  #receive(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#tail = (this.#tail + chunk.toString('latin1')).slice(-5);
    const complete =
      this.#want === 'multi'
        ? this.#tail.endsWith('\r\n.\r\n') || (this.#chunks.length === 1 && chunk[0] === 0x2d)
        : this.#tail.endsWith('\r\n');
    if (!complete || !this.#done) return;
    const data = Buffer.concat(this.#chunks);
    this.#chunks = [];
    this.#tail = '';
    const done = this.#done;
    this.#done = null;
    done(data);
  }

  #wait(want: 'line' | 'multi'): Promise<Buffer> {
    this.#want = want;
    return new Promise((resolve) => (this.#done = resolve));
  }

  async command(line: string, multi = false): Promise<Buffer> {
    const reply = this.#wait(multi ? 'multi' : 'line');
    this.#socket.write(`${line}\r\n`);
    const data = await reply;
    if (data[0] !== 0x2b) throw new Error(`${line.split(' ')[0]}: ${data.toString('latin1').trim()}`);
    return data;
  }

  async login(user: string): Promise<string> {
    await this.command(`USER ${user}`);
    return (await this.command(`PASS ${PASSWORD}`)).toString('latin1').trim();
  }

  /** QUIT, waiting for its reply: the maildrop lock is free once it arrives. */
  async close(): Promise<void> {
    await this.command('QUIT');
    this.#socket.end();
  }
}

function message(n: number): Buffer {
  const header = `From: bench@example.test\r\nSubject: message ${n}\r\n\r\n`;
  const line = `${'x'.repeat(76)}\r\n`;
  const body = line.repeat(Math.ceil((MESSAGE_OCTETS - header.length) / line.length));
  return Buffer.from((header + body).slice(0, MESSAGE_OCTETS - 2) + '\r\n');
}

/** Runs `task` over `items` with at most `width` in flight. */
async function pool<T>(items: T[], width: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await task(items[next++] as T);
    }),
  );
}

const percentile = (sorted: number[], p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
const median = (values: number[]): number =>
  percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
const ms = (n: number): string => `${n.toFixed(1)} ms`;

async function main(): Promise<void> {
  const started = Date.now();
  const [nats, redis] = await Promise.all([startNats(), startRedis()]);
  const setup = await testConfig({
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    LOG_LEVEL: 'silent',
    IMAPS_PORT: '0',
  });
  const store = await startServices(setup.config, ['mailbox-store']);
  const pop3Port = await freePort();
  const pop3 = await spawnServices(
    { ...setup.env, POP3_PORT: String(pop3Port), POP3S_PORT: String(await freePort()) },
    ['pop3'],
  );
  const rows: [string, string][] = [];
  try {
    const directory = store.runtime.directory;
    const mailbox = new MailboxRpcClient(store.runtime.nats, store.runtime.blobs);
    await directory.addDomain('example.test');
    const users = Array.from({ length: USERS }, (_, i) => `user${i}@example.test`);
    for (const user of [...users, 'big@example.test', 'empty@example.test'])
      await directory.addUser(user, PASSWORD);

    // ---- fill the maildrops ----
    const fill = Date.now();
    const appends = users.flatMap((user) =>
      Array.from({ length: MESSAGES_PER_USER }, (_, i) => ({ user, i })),
    );
    await pool(appends, 32, async ({ user, i }) => {
      await mailbox.append(user, 'INBOX', message(i), []);
    });
    const small = Buffer.from('From: bench@example.test\r\nSubject: small\r\n\r\nhello\r\n');
    await pool(
      Array.from({ length: BIG_MAILDROP }, (_, i) => i),
      64,
      async () => {
        await mailbox.append('big@example.test', 'INBOX', small, []);
      },
    );
    console.error(
      `filled ${appends.length + BIG_MAILDROP} messages in ${((Date.now() - fill) / 1000).toFixed(1)} s`,
    );

    // ---- 1. RETR throughput, 20 users at once ----
    const latencies: number[] = [];
    let octets = 0;
    const clients = await Promise.all(users.map(() => Client.open(pop3Port)));
    await Promise.all(clients.map((client, i) => client.login(users[i] as string)));
    const end = Date.now() + RETR_SECONDS * 1000;
    const t0 = performance.now();
    await Promise.all(
      clients.map(async (client) => {
        for (let n = 1; Date.now() < end; n = (n % MESSAGES_PER_USER) + 1) {
          const s = performance.now();
          const reply = await client.command(`RETR ${n}`, true);
          octets += reply.length;
          latencies.push(performance.now() - s);
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    await Promise.all(clients.map((client) => client.close()));
    latencies.sort((a, b) => a - b);
    rows.push(
      [`RETR 10 KiB, ${USERS} concurrent users`, `${(latencies.length / seconds).toFixed(0)} messages/s`],
      ['  throughput', `${(octets / seconds / 1024 / 1024).toFixed(1)} MiB/s`],
      ['  RETR latency p50 / p99', `${ms(percentile(latencies, 50))} / ${ms(percentile(latencies, 99))}`],
    );

    // ---- 2. logging in to a 10,000-message maildrop ----
    const timeLogin = async (user: string, after?: (c: Client) => Promise<void>): Promise<number> => {
      const client = await Client.open(pop3Port);
      const s = performance.now();
      await client.login(user);
      const took = performance.now() - s;
      await after?.(client);
      await client.close();
      return took;
    };
    const emptyLogins: number[] = [];
    const bigLogins: number[] = [];
    const stat: number[] = [];
    const list: number[] = [];
    const uidl: number[] = [];
    const timed = async (into: number[], f: () => Promise<unknown>): Promise<void> => {
      const s = performance.now();
      await f();
      into.push(performance.now() - s);
    };
    for (let round = 0; round < LOGIN_ROUNDS; round++) {
      emptyLogins.push(await timeLogin('empty@example.test'));
      bigLogins.push(
        await timeLogin('big@example.test', async (c) => {
          await timed(stat, () => c.command('STAT'));
          await timed(list, () => c.command('LIST', true));
          await timed(uidl, () => c.command('UIDL', true));
        }),
      );
    }
    rows.push(
      [
        `login (USER/PASS to +OK), ${BIG_MAILDROP} messages, median of ${LOGIN_ROUNDS}`,
        ms(median(bigLogins)),
      ],
      ['login to an empty maildrop (password check, lock)', ms(median(emptyLogins))],
      [
        `  STAT / LIST / UIDL on ${BIG_MAILDROP} messages`,
        `${ms(median(stat))} / ${ms(median(list))} / ${ms(median(uidl))}`,
      ],
    );
  } finally {
    await pop3.stop();
    await store.stop();
    await Promise.all([nats.cleanup(), redis.cleanup()]);
  }
  const width = Math.max(...rows.map(([k]) => k.length));
  console.log(`| ${'measure'.padEnd(width)} | result |`);
  console.log(`| ${'-'.repeat(width)} | ------ |`);
  for (const [k, v] of rows) console.log(`| ${k.padEnd(width)} | ${v} |`);
  console.log(
    `(${USERS * MESSAGES_PER_USER} messages of ${MESSAGE_OCTETS} octets; run took ${((Date.now() - started) / 1000).toFixed(0)} s)`,
  );
}

await main();
