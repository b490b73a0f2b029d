/**
 * Hostile input against the real services (smtp-ingress, router, mailbox-store, imap, pop3 on a
 * real nats-server and redis-server), over raw sockets:
 *
 *  - MIME bombs (10 000 nested multiparts, 50 000 parts, a 10 MiB header, 100 000 header lines,
 *    5 000 nested message/rfc822) are accepted by SMTP and answered by IMAP FETCH (BODYSTRUCTURE,
 *    ENVELOPE, deep body sections) with OK, NO or BAD, with bounded memory, while another user's
 *    session keeps working;
 *  - slow-drip clients (one byte a second) are logged out by the idle timers, and one endless
 *    line does not grow the server's memory;
 *  - a flood of connections from one address meets the per-address limit (SMTP 421, IMAP BYE,
 *    POP3 -ERR) while a client from another address is served;
 *  - folder names like `../`, `%`, `*` and other namespaces never reach another user's mail.
 *
 * Memory figures are printed (`# memory ...` lines); the report of issue 10 quotes them.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { after, before, describe, it } from 'node:test';
import type { Running } from '../../services/core/runtime.ts';
import { MailboxRpcClient } from '../../services/mailbox-store/rpc.ts';
import { DEFAULT_LIMITS as IMAP_LIMITS } from '../../services/imap/limits.ts';
import { startServices, testConfig, type Ports } from '../helpers/postino.ts';
import { startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { Wire } from '../helpers/smtp-wire.ts';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const PASSWORD = 'hostile-password';
const MAX_MESSAGE_SIZE = 40 * 1024 * 1024;
const MiB = 1024 * 1024;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Heap and buffers of this process (every service runs in it), after a full collection. */
function settledMemory(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Samples memory while `fn` runs; returns its result, the peak growth and the retained growth. */
async function measured<T>(fn: () => Promise<T>): Promise<{ result: T; peak: number; retained: number }> {
  const base = settledMemory();
  let peak = base;
  const sample = (): void => {
    const m = process.memoryUsage();
    peak = Math.max(peak, m.heapUsed + m.arrayBuffers);
  };
  const timer = setInterval(sample, 5);
  try {
    const result = await fn();
    sample();
    return { result, peak: peak - base, retained: settledMemory() - base };
  } finally {
    clearInterval(timer);
  }
}

const mib = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;

/** A plain connection to a local port, once the server has greeted: what it said so far, and whether it closed. */
async function greeted(port: number): Promise<{ sock: net.Socket; said: string; closed: boolean }> {
  const sock = net.connect({ host: '127.0.0.1', port });
  const peer = { sock, said: '', closed: false };
  sock.on('data', (c: Buffer) => (peer.said += c.toString('latin1')));
  sock.on('close', () => (peer.closed = true));
  sock.on('error', () => undefined);
  await new Promise((resolve) => sock.once('connect', resolve));
  await until('the greeting', async () => peer.said.includes('\r\n'));
  return peer;
}

// ---- a raw IMAP client -------------------------------------------------------------------------

interface Tagged {
  status: string;
  line: string;
  /** Untagged responses, literals inlined. */
  untagged: Buffer[];
}

class ImapWire {
  readonly sock: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  /** Chunks not yet joined to #buf: joined once enough has come, so a big literal is copied once. */
  #chunks: Buffer[] = [];
  #chunkBytes = 0;
  /** Octets #buf needs before a response can be complete. */
  #need = 1;
  #closed = false;
  #wake: (() => void) | null = null;
  #tag = 0;

  constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (c: Buffer) => {
      this.#chunks.push(c);
      this.#chunkBytes += c.length;
      if (this.#buf.length + this.#chunkBytes >= this.#need) this.#wake?.();
    });
    sock.on('close', () => {
      this.#closed = true;
      this.#wake?.();
    });
    sock.on('error', () => undefined);
  }

  static async open(port: number, localAddress = '127.0.0.1'): Promise<ImapWire> {
    const sock = net.connect({ host: '127.0.0.1', port, localAddress });
    await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    return new ImapWire(sock);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** One whole response (a line and the literals it announces), or null once closed. */
  async response(): Promise<Buffer | null> {
    for (;;) {
      if (this.#chunks.length > 0) {
        this.#buf = Buffer.concat([this.#buf, ...this.#chunks]);
        this.#chunks = [];
        this.#chunkBytes = 0;
      }
      let pos = 0;
      this.#need = this.#buf.length + 1;
      for (;;) {
        const lf = this.#buf.indexOf(0x0a, pos);
        if (lf < 0) break;
        const m = /\{(\d+)\}\r$/.exec(this.#buf.subarray(Math.max(pos, lf - 24), lf).toString('latin1'));
        if (!m) {
          const out = this.#buf.subarray(0, lf + 1);
          this.#buf = this.#buf.subarray(lf + 1);
          return out;
        }
        pos = lf + 1 + Number(m[1]);
        if (pos > this.#buf.length) {
          this.#need = pos + 1;
          break;
        }
      }
      if (this.#closed) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  async greeting(): Promise<string> {
    return (await this.response())?.toString('latin1') ?? '';
  }

  async command(text: string): Promise<Tagged> {
    const tag = `t${++this.#tag}`;
    this.sock.write(`${tag} ${text}\r\n`);
    const untagged: Buffer[] = [];
    for (;;) {
      const r = await this.response();
      if (!r) throw new Error(`connection closed during ${text.slice(0, 60)}`);
      const line = r.toString('latin1', 0, Math.min(r.length, 300));
      if (line.startsWith(`${tag} `))
        return { status: line.split(' ')[1] ?? '', line: line.trimEnd(), untagged };
      untagged.push(r);
    }
  }

  end(): void {
    this.sock.destroy();
  }
}

async function imapLogin(port: number, user: string): Promise<ImapWire> {
  const imap = await ImapWire.open(port);
  assert.match(await imap.greeting(), /^\* OK/);
  assert.equal((await imap.command(`LOGIN ${user} ${PASSWORD}`)).status, 'OK');
  return imap;
}

// ---- MIME bombs --------------------------------------------------------------------------------

const head = (subject: string): string =>
  `From: ${ALICE}\r\nTo: ${ALICE}\r\nSubject: ${subject}\r\nMIME-Version: 1.0\r\n`;

const BOMBS: Array<{ name: string; build: () => string; section: string }> = [
  {
    name: '10,000 nested multiparts',
    build: () => {
      let inner = 'Content-Type: text/plain\r\n\r\ndeepest\r\n';
      for (let i = 9_999; i >= 1; i--) {
        inner = `Content-Type: multipart/mixed; boundary="n${i}"\r\n\r\n--n${i}\r\n${inner}\r\n--n${i}--\r\n`;
      }
      return head('nested') + inner;
    },
    section: `BODY.PEEK[${Array.from({ length: 200 }, () => '1').join('.')}]`,
  },
  {
    name: '50,000 parts',
    build: () => {
      const parts = Array.from(
        { length: 50_000 },
        (_, i) => `--p\r\nContent-Type: text/plain\r\n\r\npart ${i}\r\n`,
      );
      return `${head('parts')}Content-Type: multipart/mixed; boundary=p\r\n\r\n${parts.join('')}--p--\r\n`;
    },
    section: 'BODY.PEEK[49999.MIME]',
  },
  {
    name: 'a 10 MiB header field',
    build: () => {
      const line = 'x'.repeat(76);
      const folds = Math.ceil((10 * MiB) / 79);
      return `${head('huge')}X-Huge: ${Array.from({ length: folds }, () => line).join('\r\n ')}\r\n\r\nbody\r\n`;
    },
    section: 'BODY.PEEK[HEADER.FIELDS (X-HUGE SUBJECT)]',
  },
  {
    name: '100,000 header lines',
    build: () => {
      const lines = Array.from({ length: 100_000 }, (_, i) => `X-Line-${i}: value ${i}`);
      return `${head('lines')}${lines.join('\r\n')}\r\n\r\nbody\r\n`;
    },
    section: 'BODY.PEEK[HEADER.FIELDS.NOT (X-LINE-1)]<0.1000>',
  },
  {
    name: '5,000 nested message/rfc822',
    build: () => {
      let inner = `From: ${ALICE}\r\nSubject: innermost\r\n\r\ninnermost body\r\n`;
      for (let i = 5_000; i >= 1; i--) {
        inner = `From: ${ALICE}\r\nSubject: level ${i}\r\nContent-Type: message/rfc822\r\n\r\n${inner}`;
      }
      return head('rfc822') + `Content-Type: message/rfc822\r\n\r\n${inner}`;
    },
    section: `BODY.PEEK[${Array.from({ length: 100 }, () => '1').join('.')}.HEADER]`,
  },
];

/** Submits a message on the submission port; resolves with the final reply. */
async function submit(port: number, body: string): Promise<string> {
  const w = await Wire.open(port);
  try {
    assert.match(await w.reply(), /^220/);
    assert.match(await w.cmd('EHLO client.example.test'), /^250/);
    const plain = Buffer.from(`\0${ALICE}\0${PASSWORD}`).toString('base64');
    assert.match(await w.cmd(`AUTH PLAIN ${plain}`), /^235/);
    assert.match(await w.cmd(`MAIL FROM:<${ALICE}>`), /^250/);
    assert.match(await w.cmd(`RCPT TO:<${ALICE}>`), /^250/);
    assert.match(await w.cmd('DATA'), /^354/);
    // RFC 5321 4.5.2: dot-stuffing; sent in pieces as a client would.
    const data = Buffer.from(`${body.replace(/^\./gm, '..')}\r\n.\r\n`, 'latin1');
    for (let i = 0; i < data.length; i += 256 * 1024) w.send(data.subarray(i, i + 256 * 1024));
    return await w.reply();
  } finally {
    w.end();
  }
}

// ---- the suite ---------------------------------------------------------------------------------

describe('hostile input against the real services', () => {
  let nats: Proc;
  let redis: Proc;
  let main: Running;
  let ports: Ports;
  let mailbox: MailboxRpcClient;

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const t = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      MAX_MESSAGE_SIZE: String(MAX_MESSAGE_SIZE),
      // Short timers so that the slow-drip tests end in seconds.
      SMTP_IDLE_TIMEOUT: '5s',
      SMTP_SESSION_TIMEOUT: '10m',
      IMAP_IDLE_TIMEOUT: '5s',
      POP3_IDLE_TIMEOUT: '5s',
      SMTP_MAX_CONNECTIONS_PER_IP: '8',
      IMAP_MAX_CONNECTIONS_PER_IP: '6',
      POP3_MAX_CONNECTIONS_PER_IP: '7',
      SMTP_CONNECTION_RATE: '100000',
    });
    ports = t.ports;
    main = await startServices(t.config, ['smtp-ingress', 'router', 'mailbox-store', 'imap', 'pop3']);
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser(ALICE, PASSWORD);
    await main.runtime.directory.addUser(BOB, PASSWORD);
    mailbox = new MailboxRpcClient(main.runtime.nats, main.runtime.blobs);
    await mailbox.createFolder(BOB, 'BobSecret');
    await mailbox.append(
      BOB,
      'INBOX',
      Buffer.from(`From: ${BOB}\r\nSubject: bob-private-subject\r\n\r\nbob's mail\r\n`),
      [],
    );
    await mailbox.append(
      BOB,
      'BobSecret',
      Buffer.from(`From: ${BOB}\r\nSubject: bob-secret-folder\r\n\r\nsecret\r\n`),
      [],
    );
  });

  after(async () => {
    await main?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  it('MIME bombs: SMTP accepts them, IMAP FETCH answers with bounded memory, another session is served', async () => {
    for (const bomb of BOMBS) {
      const body = bomb.build();
      assert.ok(body.length < MAX_MESSAGE_SIZE);
      const before = (await mailbox.status(ALICE, 'INBOX')).uidNext;
      const smtp = await measured(() => submit(ports.submission, body));
      assert.match(smtp.result, /^250 /, `${bomb.name}: ${smtp.result}`);
      await until(
        `${bomb.name} to reach the INBOX`,
        async () => (await mailbox.status(ALICE, 'INBOX')).uidNext > before,
      );
      // Sessions opened now: the idle timers of this suite are short.
      const bob = await imapLogin(ports.imap, BOB);
      assert.equal((await bob.command('SELECT INBOX')).status, 'OK');
      const alice = await imapLogin(ports.imap, ALICE);
      assert.equal((await alice.command('SELECT INBOX')).status, 'OK');
      const fetches = [
        `UID FETCH ${before} (BODYSTRUCTURE ENVELOPE RFC822.SIZE)`,
        `UID FETCH ${before} (BODY)`,
        `UID FETCH ${before} (${bomb.section})`,
        `UID FETCH ${before} (BINARY.PEEK[1] BINARY.SIZE[1])`,
        `UID SEARCH BODY "deepest"`,
      ];
      const imap = await measured(async () => {
        const answers: Tagged[] = [];
        // Bob's session is served in between, on the same server.
        const bobWorks = (async () => {
          for (let i = 0; i < 3; i++) {
            const r = await bob.command('UID FETCH 1:* (FLAGS ENVELOPE)');
            assert.equal(r.status, 'OK');
            assert.ok(r.untagged.some((u) => u.includes('bob-private-subject')));
          }
        })();
        for (const f of fetches) answers.push(await alice.command(f));
        await bobWorks;
        return answers;
      }).finally(() => {
        alice.end();
        bob.end();
      });
      for (const [i, answer] of imap.result.entries()) {
        assert.ok(
          ['OK', 'NO', 'BAD'].includes(answer.status),
          `${bomb.name}: ${fetches[i]} → ${answer.line}`,
        );
      }
      const [structure] = imap.result;
      assert.equal(structure?.status, 'OK', `${bomb.name}: ${structure?.line}`);
      const response = Buffer.concat(structure?.untagged ?? []);
      assert.ok(response.includes('BODYSTRUCTURE') && response.includes('ENVELOPE'));
      // Truncated at the parser's limits: nesting and part count stay bounded whatever the bomb.
      let depth = 0;
      let deepest = 0;
      for (const b of response) {
        if (b === 0x28) deepest = Math.max(deepest, ++depth);
        else if (b === 0x29) depth--;
      }
      assert.ok(deepest <= 4 * (IMAP_LIMITS.maxMimeDepth + 2), `${bomb.name}: ${deepest} nested lists`);
      const parts = response.toString('latin1').split('"TEXT" "PLAIN"').length - 1;
      assert.ok(parts <= IMAP_LIMITS.maxMimeParts, `${bomb.name}: ${parts} parts described`);
      console.log(
        `# memory ${bomb.name} (${mib(body.length)}): SMTP accept peak +${mib(smtp.peak)} retained +${mib(smtp.retained)}; ` +
          `IMAP FETCH peak +${mib(imap.peak)} retained +${mib(imap.retained)}; BODYSTRUCTURE+ENVELOPE response ${mib(response.length)}`,
      );
      // The parsed-message cache may keep the message (it is bounded by its own byte limit).
      assert.ok(
        imap.retained < IMAP_LIMITS.parsedMessageCacheBytes + 64 * MiB,
        `${bomb.name}: retained ${mib(imap.retained)}`,
      );
      assert.ok(imap.peak < 1024 * MiB, `${bomb.name}: peak ${mib(imap.peak)}`);
    }
  });

  it('slow drip: a client sending one byte a second is logged out by the idle timers of SMTP, IMAP and POP3', async () => {
    /** Drips `text` a byte a second; resolves with what the server said and whether it closed first. */
    const drip = async (port: number, text: string): Promise<{ said: string; closedEarly: boolean }> => {
      const peer = await greeted(port);
      for (const ch of text) {
        if (peer.closed) break;
        peer.sock.write(ch);
        await sleep(1000);
      }
      const closedEarly = peer.closed;
      peer.sock.destroy();
      return { said: peer.said, closedEarly };
    };
    // 20 seconds of dripping each, against idle timers of 5 seconds.
    const [smtp, imap, pop3] = await Promise.all([
      drip(ports.smtp, 'EHLO drip.example.test\r\n'),
      drip(ports.imap, 'a1 CAPABILITY (drip)\r\n'),
      drip(ports.pop3, 'CAPA is dripped slowly\r\n'),
    ]);
    assert.ok(smtp.closedEarly, `SMTP kept the dripping client: ${smtp.said}`);
    assert.match(smtp.said, /^421 4\.4\.2 /m);
    assert.ok(imap.closedEarly, `IMAP kept the dripping client: ${imap.said}`);
    assert.match(imap.said, /^\* BYE /m);
    // RFC 1939 section 3: the autologout closes without a response.
    assert.ok(pop3.closedEarly, `POP3 kept the dripping client: ${pop3.said}`);
  });

  it('an endless command line does not grow the memory of SMTP, IMAP or POP3', async () => {
    const chunk = Buffer.alloc(64 * 1024, 0x41);
    const LINE = 48 * MiB;
    const flood = async (port: number, prefix: string): Promise<{ retained: number; said: string }> => {
      const peer = await greeted(port);
      const { sock } = peer;
      const base = settledMemory();
      sock.write(prefix);
      for (let sent = 0; sent < LINE && !peer.closed; sent += chunk.length) {
        if (!sock.write(chunk)) await new Promise((resolve) => sock.once('drain', resolve));
      }
      // Everything sent has been read by the server (it is not pausing this socket).
      await new Promise<void>((resolve) => sock.write('', () => resolve()));
      await sleep(300);
      const retained = settledMemory() - base;
      sock.write('\r\n');
      await sleep(200);
      sock.destroy();
      return { retained, said: peer.said };
    };
    const smtp = await flood(ports.smtp, 'EHLO ');
    const imap = await flood(ports.imap, 'a1 LOGIN ');
    const pop3 = await flood(ports.pop3, 'USER ');
    console.log(
      `# memory endless ${mib(LINE)} line: SMTP retained +${mib(smtp.retained)}, IMAP +${mib(imap.retained)}, POP3 +${mib(pop3.retained)}`,
    );
    assert.match(smtp.said, /^500 5\.5\.2 Error: line too long/m);
    assert.match(imap.said, /^(\* BAD|a1 BAD|\* BYE)/m);
    assert.match(pop3.said, /^-ERR/m);
    for (const [name, r] of [
      ['SMTP', smtp],
      ['IMAP', imap],
      ['POP3', pop3],
    ] as const) {
      assert.ok(r.retained < 16 * MiB, `${name} kept ${mib(r.retained)} of a ${mib(LINE)} line`);
    }
  });

  it('a connection flood from one address meets the per-address limit; another address is served', async () => {
    const open = async (
      port: number,
      localAddress: string,
    ): Promise<{ sock: net.Socket; first: () => Promise<string> }> => {
      const sock = net.connect({ host: '127.0.0.1', port, localAddress });
      let said = '';
      sock.on('data', (c: Buffer) => (said += c.toString('latin1')));
      sock.on('error', () => undefined);
      await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
      return { sock, first: () => until('a greeting', async () => (said.includes('\r\n') ? said : '')) };
    };
    const cases = [
      { name: 'SMTP', port: ports.smtp, limit: 8, ok: /^220 /, refused: /^421 4\.7\.0 / },
      {
        name: 'IMAP',
        port: ports.imap,
        limit: 6,
        ok: /^\* OK /,
        refused: /^\* BYE \[UNAVAILABLE\]/,
      },
      {
        name: 'POP3',
        port: ports.pop3,
        limit: 7,
        ok: /^\+OK /,
        refused: /^-ERR \[SYS\/TEMP\]/,
      },
    ];
    for (const c of cases) {
      const held: net.Socket[] = [];
      try {
        // All at once, well within the idle timers of this suite.
        const conns = await Promise.all(Array.from({ length: c.limit }, () => open(c.port, '127.0.0.1')));
        held.push(...conns.map((conn) => conn.sock));
        for (const [i, conn] of conns.entries()) {
          assert.match(await conn.first(), c.ok, `${c.name} connection ${i + 1} of ${c.limit}`);
        }
        const over = await open(c.port, '127.0.0.1');
        held.push(over.sock);
        assert.match(await over.first(), c.refused, `${c.name}: connection ${c.limit + 1}`);
        // Another address still gets service.
        const other = await open(c.port, '127.0.0.2');
        held.push(other.sock);
        assert.match(await other.first(), c.ok, `${c.name} from 127.0.0.2`);
      } finally {
        for (const s of held) s.destroy();
      }
      // Once the flood is gone the address is served again.
      await until(`${c.name} to serve 127.0.0.1 again`, async () => {
        const again = await open(c.port, '127.0.0.1');
        const greeting = await again.first();
        again.sock.destroy();
        return c.ok.test(greeting);
      });
    }
  });

  it("folder names (../, %, *, other namespaces) never reach another user's mail", async () => {
    const alice = await imapLogin(ports.imap, ALICE);
    try {
      const attempts = [
        'LIST "" "*"',
        'LIST "" "%"',
        'LIST "../" "*"',
        'LIST "" "../*"',
        `LIST "" "../${BOB}/*"`,
        'LIST "~bob" "*"',
        'LIST "#shared/" "*"',
        'LIST "#public" "*"',
        'LIST "/" "*"',
        'LIST "" "*BobSecret*"',
        'LIST (SUBSCRIBED) "" "*"',
        'LIST "" "*" RETURN (STATUS (MESSAGES))',
        'LSUB "" "*"',
        `SELECT "../${BOB}/INBOX"`,
        `SELECT "${BOB}/INBOX"`,
        'SELECT "~bob/INBOX"',
        'SELECT "#shared/bob/INBOX"',
        'SELECT "/BobSecret"',
        'SELECT "BobSecret"',
        'SELECT "INBOX/../BobSecret"',
        'SELECT "&AC4ALgAv-BobSecret"',
        `STATUS "../${BOB}/INBOX" (MESSAGES)`,
        'STATUS "BobSecret" (MESSAGES)',
        'EXAMINE "%"',
        'EXAMINE "*"',
        `RENAME "../${BOB}/BobSecret" "Mine"`,
        'DELETE "BobSecret"',
        'GETQUOTAROOT "BobSecret"',
      ];
      for (const attempt of attempts) {
        const r = await alice.command(attempt);
        const said = Buffer.concat(r.untagged).toString('latin1') + r.line;
        assert.ok(
          !/bob-private|bob-secret|BobSecret\)?"?\r?\n/i.test(Buffer.concat(r.untagged).toString('latin1')),
          `${attempt} showed ${said}`,
        );
        if (r.status === 'OK' && /^(SELECT|EXAMINE)/.test(attempt)) {
          const fetched = await alice.command('FETCH 1:* (ENVELOPE)');
          assert.ok(
            !Buffer.concat(fetched.untagged).toString('latin1').includes('bob-'),
            `${attempt}: ${fetched.line}`,
          );
        }
      }
      // A folder name with CR LF (sent as a literal) cannot inject a response line.
      alice.sock.write('c1 CREATE {23+}\r\nx\r\n* OK [ALERT] injected\r\n');
      const created = await alice.response();
      assert.match(created?.toString('latin1') ?? '', /^c1 (OK|NO|BAD)/);
      const listed = await alice.command('LIST "" "*"');
      const lines = Buffer.concat(listed.untagged).toString('latin1');
      assert.ok(!/^\* OK \[ALERT\] injected/m.test(lines), lines);
      // Bob's mail is where it was.
      assert.equal((await mailbox.status(BOB, 'BobSecret')).exists, 1);
      assert.equal((await mailbox.status(BOB, 'INBOX')).exists, 1);
    } finally {
      alice.end();
    }
  });
});
