/**
 * POP3 RETR on real peers (nats-server, redis-server, the mailbox-store and pop3 services, bodies in
 * the JetStream blob store), byte for byte: RFC 1939 section 7 (RETR is the message, dot-stuffed,
 * ended by CRLF "." CRLF, the same each time it is asked for, the next message read ahead while one
 * is sent), a body of many blob-store chunks (50 MiB), UIDL stability, \Seen after RETR, and a body
 * stored once for two users (content addressing) that one of them deletes while the other still
 * reads it.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { Running } from '../../services/core/runtime.ts';
import { MailboxRpcClient } from '../../services/mailbox-store/rpc.ts';
import { startServices, testConfig } from '../helpers/postino.ts';
import { startNats, startRedis, type Proc } from '../helpers/servers.ts';

const PASSWORD = 'retr-password';
const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const END = Buffer.from('\r\n.\r\n');

/** A POP3 client that keeps the bytes of a multi-line response exactly as they came. */
class RawPop3 {
  readonly #socket: Socket;
  /** Received bytes not consumed yet, in a buffer that grows by doubling (a 50 MiB reply). */
  #data: Buffer = Buffer.alloc(64 * 1024);
  #length = 0;
  /** Where the next search for a reply's end starts: bytes before it were searched already. */
  #scanned = 0;
  #wake: (() => void) | null = null;
  #closed = false;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      if (this.#length + chunk.length > this.#data.length) {
        const grown = Buffer.alloc(Math.max(this.#data.length * 2, this.#length + chunk.length));
        this.#data.copy(grown, 0, 0, this.#length);
        this.#data = grown;
      }
      chunk.copy(this.#data, this.#length);
      this.#length += chunk.length;
      this.#wake?.();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.#closed = true;
      this.#wake?.();
    });
  }

  static async open(port: number): Promise<RawPop3> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
    const client = new RawPop3(socket);
    assert.match(await client.#line(), /^\+OK /);
    return client;
  }

  /**
   * Waits until `find` (given the bytes and where to start looking) locates the end of a reply;
   * returns the reply and consumes it.
   */
  async #take(find: (b: Buffer, from: number) => number): Promise<Buffer> {
    for (;;) {
      const bytes = this.#data.subarray(0, this.#length);
      const end = find(bytes, Math.max(0, this.#scanned - END.length));
      if (end >= 0) {
        const out = Buffer.from(bytes.subarray(0, end));
        this.#data.copy(this.#data, 0, end, this.#length);
        this.#length -= end;
        this.#scanned = 0;
        return out;
      }
      this.#scanned = this.#length;
      assert.ok(!this.#closed, 'connection closed before the end of the reply');
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = null;
    }
  }

  async #line(): Promise<string> {
    return (
      await this.#take((b, from) => {
        const i = b.indexOf('\r\n', from);
        return i < 0 ? -1 : i + 2;
      })
    ).toString('latin1');
  }

  async command(line: string): Promise<string> {
    this.#socket.write(`${line}\r\n`);
    return (await this.#line()).trimEnd();
  }

  /** RETR: the status line, then the body of the multi-line response with its "." line, raw. */
  async retr(n: number): Promise<{ status: string; raw: Buffer }> {
    const status = await this.command(`RETR ${n}`);
    if (!status.startsWith('+OK')) return { status, raw: Buffer.alloc(0) };
    // The status line's CRLF is consumed, so a response whose body is empty is just ".\r\n".
    const raw = await this.#take((b, from) => {
      if (b.subarray(0, 3).equals(Buffer.from('.\r\n'))) return 3;
      const i = b.indexOf(END, from);
      return i < 0 ? -1 : i + END.length;
    });
    return { status, raw };
  }

  async multiline(line: string): Promise<string[]> {
    assert.match(await this.command(line), /^\+OK/);
    const raw = await this.#take((b, from) => {
      if (b.subarray(0, 3).equals(Buffer.from('.\r\n'))) return 3;
      const i = b.indexOf(END, from);
      return i < 0 ? -1 : i + END.length;
    });
    return raw.toString('latin1').split('\r\n').slice(0, -2);
  }

  async login(user: string): Promise<string> {
    assert.match(await this.command(`USER ${user}`), /^\+OK/);
    return this.command(`PASS ${PASSWORD}`);
  }

  async quit(): Promise<string> {
    const reply = await this.command('QUIT');
    this.#socket.end();
    return reply;
  }
}

/**
 * The multi-line response RFC 1939 section 3 asks for, written independently of the server's
 * encoder: line ends made CRLF, a "." at a line start doubled, then CRLF "." CRLF.
 */
function expected(body: Buffer): Buffer {
  const text = body.toString('latin1');
  const lines = text.split(/\r\n|\r|\n/);
  if (lines.at(-1) === '') lines.pop();
  const out = lines.map((l) => (l.startsWith('.') ? `.${l}` : l)).join('\r\n');
  return Buffer.from(lines.length === 0 ? '.\r\n' : `${out}\r\n.\r\n`, 'latin1');
}

describe('POP3 RETR from the blob store', () => {
  let nats: Proc;
  let redis: Proc;
  let main: Running;
  let mailbox: MailboxRpcClient;
  let port: number;

  const append = async (user: string, body: string | Buffer): Promise<number> =>
    (await mailbox.append(user, 'INBOX', Buffer.isBuffer(body) ? body : Buffer.from(body, 'latin1'), [])).uid;

  const emptyInbox = async (user: string): Promise<void> => {
    const uids = (await mailbox.messages(user, 'INBOX')).messages.map((m) => m.uid);
    if (uids.length > 0) await mailbox.expunge(user, 'INBOX', uids, true);
  };

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const setup = await testConfig({ NATS_URL: nats.url, REDIS_URL: redis.url, IMAPS_PORT: '0' });
    port = setup.ports.pop3;
    main = await startServices(setup.config, ['mailbox-store', 'pop3']);
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser(ALICE, PASSWORD);
    await main.runtime.directory.addUser(BOB, PASSWORD);
    mailbox = new MailboxRpcClient(main.runtime.nats, main.runtime.blobs);
  });

  after(async () => {
    await main?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  test('RFC 1939 section 7: RETR is each message exactly, dot-stuffed, in order and again in any order', async () => {
    await emptyInbox(ALICE);
    const bodies = [
      'From: a@example.test\r\nSubject: plain\r\n\r\nHello.\r\n',
      'From: a@example.test\r\nSubject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n.',
      'From: a@example.test\r\nSubject: bare ends\n\nline one\nline two\rline three\r\n.\n',
      'From: a@example.test\r\nSubject: no final line end\r\n\r\nlast line',
      `From: a@example.test\r\nSubject: bigger\r\n\r\n${'.x\r\n'.repeat(5000)}`,
    ];
    for (const b of bodies) await append(ALICE, b);
    const c = await RawPop3.open(port);
    assert.match(await c.login(ALICE), /^\+OK/);
    const uidl = await c.multiline('UIDL');
    // In order (each RETR reads the next body ahead), then backwards (bodies already in memory).
    const order = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 3];
    for (const n of order) {
      const body = Buffer.from(bodies[n - 1] as string, 'latin1');
      const { status, raw } = await c.retr(n);
      assert.equal(status, `+OK ${body.length} octets`);
      assert.ok(raw.equals(expected(body)), `RETR ${n} is the message, dot-stuffed`);
    }
    assert.deepEqual(await c.multiline('UIDL'), uidl, 'UIDL unchanged by RETR');
    assert.match(await c.command('RETR 6'), /^-ERR/);
    assert.match(await c.quit(), /^\+OK/);
    // RFC 1939 leaves \Seen to the server; here RETR sets it, once the message was sent whole.
    const { messages } = await mailbox.messages(ALICE, 'INBOX');
    assert.equal(messages.length, bodies.length, 'RETR deletes nothing');
    for (const m of messages) assert.ok(m.flags.includes('\\Seen'), `uid ${m.uid} is \\Seen`);
    // A new session: the same unique-ids, the same bytes.
    const again = await RawPop3.open(port);
    assert.match(await again.login(ALICE), /^\+OK/);
    assert.deepEqual(await again.multiline('UIDL'), uidl, 'UIDL stable across sessions');
    const { raw } = await again.retr(2);
    assert.ok(raw.equals(expected(Buffer.from(bodies[1] as string, 'latin1'))));
    assert.match(await again.quit(), /^\+OK/);
  });

  test('a 50 MiB body of many blob-store chunks is sent whole, stuffed across chunk boundaries', async () => {
    await emptyInbox(ALICE);
    const CHUNK = 128 * 1024;
    const parts: Buffer[] = [];
    let size = 0;
    const line = Buffer.from(`${'y'.repeat(76)}\r\n`);
    const push = (text: string | Buffer): void => {
      const piece = Buffer.isBuffer(text) ? text : Buffer.from(text, 'latin1');
      parts.push(piece);
      size += piece.length;
    };
    push('From: a@example.test\r\nSubject: large\r\n\r\n');
    // Near each chunk boundary, in turn: a CRLF split across it, or a line starting with "." right
    // after it (the previous chunk ending with a line end), the two cases the encoder carries over.
    for (let boundary = 0; size < 50 * 1024 * 1024;) {
      const toBoundary = CHUNK - (size % CHUNK);
      if (toBoundary >= line.length + 3) {
        push(line);
      } else if (boundary++ % 2 === 0 || toBoundary < 2) {
        push(`${'z'.repeat(toBoundary - 1)}\r`);
        push('\n');
      } else {
        push(`${'z'.repeat(toBoundary - 2)}\r\n`);
        push('.dot line\r\n');
      }
    }
    const body = Buffer.concat(parts);
    await append(ALICE, body);
    const c = await RawPop3.open(port);
    assert.match(await c.login(ALICE), /^\+OK/);
    const { status, raw } = await c.retr(1);
    assert.equal(status, `+OK ${body.length} octets`);
    assert.equal(raw.length, expected(body).length);
    assert.ok(raw.equals(expected(body)), 'the large message, exactly');
    assert.match(await c.quit(), /^\+OK/);
  });

  test('a body stored once for two users: one downloads and deletes it, the other still reads it', async () => {
    await emptyInbox(ALICE);
    await emptyInbox(BOB);
    const shared = 'From: list@example.test\r\nSubject: to both\r\n\r\nSame bytes for two mailboxes.\r\n';
    await append(ALICE, shared);
    await append(BOB, shared);
    const [a] = (await mailbox.messages(ALICE, 'INBOX')).messages;
    const [b] = (await mailbox.messages(BOB, 'INBOX')).messages;
    assert.equal(a?.blob, b?.blob, 'content addressing: one body for both');

    // RFC 1939 section 6: downloaded, then deleted in the UPDATE state.
    const alice = await RawPop3.open(port);
    assert.match(await alice.login(ALICE), /^\+OK/);
    assert.ok((await alice.retr(1)).raw.equals(expected(Buffer.from(shared))));
    assert.match(await alice.command('DELE 1'), /^\+OK/);
    assert.match(await alice.command('RETR 1'), /^-ERR/, 'a message marked deleted is not sent');
    assert.match(await alice.quit(), /^\+OK/);
    assert.equal((await mailbox.messages(ALICE, 'INBOX')).messages.length, 0, 'deleted at QUIT');

    const bob = await RawPop3.open(port);
    assert.equal(await bob.login(BOB), `+OK maildrop has 1 messages (${shared.length} octets)`);
    assert.ok((await bob.retr(1)).raw.equals(expected(Buffer.from(shared))));
    assert.match(await bob.command('DELE 1'), /^\+OK/);
    assert.match(await bob.quit(), /^\+OK/);

    const later = await RawPop3.open(port);
    assert.equal(await later.login(ALICE), '+OK maildrop has 0 messages (0 octets)');
    assert.match(await later.command('RETR 1'), /^-ERR/);
    assert.match(await later.quit(), /^\+OK/);
  });
});
