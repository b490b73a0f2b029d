/**
 * POP3 transcripts (C: client, S: server) against a real listener on 127.0.0.1, port 0, with the
 * in-memory MailboxClient, a table Authenticator and an in-memory MaildropLock. Each test is
 * named after the RFC section it comes from.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { before, describe, it, type TestContext } from 'node:test';
import { pino } from 'pino';
import { MailboxError, type Authenticator, type MaildropLock } from '../../services/core/mailbox-api.ts';
import { TlsProvider } from '../../services/core/tls.ts';
import { createPop3Server, type Pop3Server, type Pop3ServerOptions } from '../../services/pop3/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../helpers/memory-mailbox.ts';

// ---- fixtures -------------------------------------------------------------------------------

/** An in-memory maildrop lock (RFC 1939 section 8), one holder per user. */
class MemoryLock implements MaildropLock {
  readonly held = new Set<string>();
  async acquire(user: string): Promise<(() => Promise<void>) | null> {
    if (this.held.has(user)) return null;
    this.held.add(user);
    let released = false;
    return async () => {
      assert.equal(released, false, 'lock released twice');
      released = true;
      this.held.delete(user);
    };
  }
}

/** Streams bodies one byte per chunk, so every boundary case of dot-stuffing happens. */
class ByteChunkMailbox extends MemoryMailbox {
  override async *openBody(blob: string): AsyncIterable<Uint8Array> {
    for await (const chunk of super.openBody(blob)) {
      for (let i = 0; i < chunk.length; i++) yield chunk.subarray(i, i + 1);
    }
  }
}

const ALICE = 'alice@example.org';
const PASSWORD = 'correct horse';

const MSG1 = 'From: bob@example.org\r\nSubject: one\r\n\r\nHello Alice.\r\n';
const MSG2 = [
  'From: carol@example.org',
  'Subject: dots',
  '',
  '.leading dot',
  '..two dots',
  '.',
  'middle . dot',
  'last line',
  '',
].join('\r\n');

interface Harness {
  server: Pop3Server;
  port: number;
  mailbox: MemoryMailbox;
  lock: MemoryLock;
  uids: number[];
  uidValidity: number;
}

async function start(
  t: TestContext,
  options: Partial<Pop3ServerOptions> & { mailbox?: MemoryMailbox; host?: string; messages?: string[] } = {},
): Promise<Harness> {
  const { mailbox = new MemoryMailbox(), host = '127.0.0.1', messages = [MSG1, MSG2], ...rest } = options;
  const uids: number[] = [];
  for (const m of messages) uids.push(await mailbox.deliver(ALICE, Buffer.from(m)));
  const lock = new MemoryLock();
  const server = createPop3Server({
    mailbox,
    auth: new MemoryAuthenticator({ [ALICE]: PASSWORD, 'bob@example.org': 'bobpw' }),
    lock,
    logger: pino({ level: 'silent' }),
    hostname: 'pop.test',
    allowPlaintextAuth: false,
    retrSetsSeen: true,
    ...rest,
  });
  const port = await server.listen(0, host);
  t.after(() => server.close());
  const uidValidity = (await mailbox.status(ALICE, 'INBOX')).uidValidity;
  return { server, port, mailbox, lock, uids, uidValidity };
}

/** A line-oriented client that checks every server line ends with CRLF. */
class Client {
  readonly socket: Socket;
  readonly closed: Promise<void>;
  #buffer = '';
  #lines: string[] = [];
  #waiters: ((line: string | null) => void)[] = [];
  #ended = false;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (data: string) => this.#receive(data));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', () => {});
    socket.once('close', () => {
      this.#ended = true;
      for (const waiter of this.#waiters.splice(0)) waiter(null);
    });
  }

  static open(port: number, host = '127.0.0.1'): Promise<Client> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, host, () => resolve(new Client(socket)));
      socket.once('error', reject);
    });
  }

  #receive(data: string): void {
    this.#buffer += data;
    for (let end = this.#buffer.indexOf('\r\n'); end >= 0; end = this.#buffer.indexOf('\r\n')) {
      const line = this.#buffer.slice(0, end);
      this.#buffer = this.#buffer.slice(end + 2);
      assert.ok(!/[\r\n]/.test(line), `bare CR or LF in server line ${JSON.stringify(line)}`);
      const waiter = this.#waiters.shift();
      if (waiter) waiter(line);
      else this.#lines.push(line);
    }
  }

  /** The next line, or null once the server has closed the connection. */
  readLine(): Promise<string | null> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.#ended) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Lines of a multi-line response up to the "." line, un-stuffed. */
  async readMultiline(): Promise<string[]> {
    const out: string[] = [];
    for (;;) {
      const line = await this.readLine();
      assert.notEqual(line, null, 'connection closed inside a multi-line response');
      if (line === '.') return out;
      out.push(line?.startsWith('.') ? line.slice(1) : (line as string));
    }
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Raw bytes received but not yet read as lines (after the server closed). */
  get rest(): string {
    return this.#buffer;
  }
}

function glob(pattern: string): RegExp {
  return new RegExp(
    `^${pattern
      .split('*')
      .map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
      .join('.*')}$`,
  );
}

/**
 * Runs a transcript. `C: x` sends "x\r\n" (consecutive C: lines are pipelined), `S: x` expects
 * the next server line to be x (`*` matches anything), `S: <closed>` expects the server to close.
 * Indentation is ignored; trailing spaces are significant (the SASL challenge is "+ ").
 */
async function converse(client: Client, script: string): Promise<void> {
  for (const raw of script.split('\n')) {
    const line = raw.trimStart();
    if (line.trim() === '') continue;
    if (line.startsWith('C:')) {
      client.send(`${line.slice(3)}\r\n`);
    } else if (line === 'S: <closed>') {
      const got = await client.readLine();
      assert.equal(got, null, `expected the server to close, got ${JSON.stringify(got)}`);
      await client.closed;
    } else if (line.startsWith('S: ') || line === 'S:') {
      const expected = line.slice(3);
      const got = await client.readLine();
      assert.ok(got !== null, `expected ${JSON.stringify(expected)}, the server closed the connection`);
      assert.match(got, glob(expected), `expected ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`);
    } else {
      throw new Error(`bad transcript line ${JSON.stringify(raw)}`);
    }
  }
}

/** Opens a connection, checks the greeting and logs in as alice with USER/PASS. */
async function login(h: Harness, user = ALICE, pass = PASSWORD): Promise<Client> {
  const client = await Client.open(h.port);
  await converse(
    client,
    `
    S: +OK pop.test POP3 ready <*@pop.test>
    C: USER ${user}
    S: +OK *
    C: PASS ${pass}
    S: +OK maildrop has * messages (* octets)
    `,
  );
  return client;
}

/** Waits for a condition, polling; fails after `ms`. */
async function until(condition: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function inboxUids(mailbox: MemoryMailbox): Promise<number[]> {
  return (await mailbox.messages(ALICE, 'INBOX')).messages.map((m) => m.uid);
}

function lines(text: string): string[] {
  return text.split('\r\n').slice(0, -1);
}

// ---- transcripts ----------------------------------------------------------------------------

describe('RFC 1939 section 4: greeting and AUTHORIZATION', () => {
  it('greets with the APOP timestamp form and signs off on QUIT', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK pop.test POP3 ready <*.*.*@pop.test>
      C: QUIT
      S: +OK pop.test POP3 server signing off
      S: <closed>
      `,
    );
  });

  it('RFC 2449 section 5: CAPA lists the capabilities (loopback peer, no TLS configured)', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: CAPA
      S: +OK capability list follows
      S: TOP
      S: UIDL
      S: RESP-CODES
      S: AUTH-RESP-CODE
      S: PIPELINING
      S: USER
      S: SASL PLAIN
      S: IMPLEMENTATION Postino
      S: .
      C: QUIT
      S: +OK *
      `,
    );
  });

  it('RFC 1939 section 7: USER then PASS opens the maildrop; the lock is held until QUIT', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${ALICE}
      S: +OK send PASS
      C: PASS ${PASSWORD}
      S: +OK maildrop has 2 messages (${MSG1.length + MSG2.length} octets)
      `,
    );
    assert.deepEqual([...h.lock.held], [ALICE]);
    await converse(
      client,
      `
      C: QUIT
      S: +OK pop.test POP3 server signing off (2 messages left)
      S: <closed>
      `,
    );
    assert.equal(h.lock.held.size, 0);
  });

  it('RFC 1939 section 7: a password with spaces, and the login is case-insensitive here', async (t) => {
    const h = await start(t);
    const client = await login(h, 'ALICE@example.org', PASSWORD);
    await converse(client, 'C: QUIT\nS: +OK *');
  });

  it('RFC 1939 section 7: PASS without USER is refused', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: PASS ${PASSWORD}
      S: -ERR send USER first
      `,
    );
  });

  it('RFC 3206 section 4: wrong credentials get [AUTH]; the third failure closes', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${ALICE}
      S: +OK *
      C: PASS wrong
      S: -ERR [AUTH] invalid credentials
      C: PASS ${PASSWORD}
      S: -ERR send USER first
      C: USER nobody@example.org
      S: +OK send PASS
      C: PASS x
      S: -ERR [AUTH] invalid credentials
      C: USER ${ALICE}
      S: +OK *
      C: PASS also wrong
      S: -ERR [AUTH] invalid credentials
      S: <closed>
      `,
    );
    assert.equal(h.lock.held.size, 0);
  });

  it('RFC 2449 section 8.1.2: a second session on a locked maildrop gets [IN-USE]', async (t) => {
    const h = await start(t);
    const first = await login(h);
    const second = await Client.open(h.port);
    await converse(
      second,
      `
      S: +OK *
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: -ERR [IN-USE] maildrop already locked
      `,
    );
    await converse(first, 'C: QUIT\nS: +OK *\nS: <closed>');
    await converse(
      second,
      `
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: +OK maildrop has 2 messages *
      C: QUIT
      S: +OK *
      `,
    );
  });

  it('RFC 3206 section 4: the authenticator failing gives [SYS/TEMP]', async (t) => {
    const failing: Authenticator = {
      authenticate: () => Promise.reject(new Error('directory down')),
    };
    const h = await start(t, { auth: failing });
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: -ERR [SYS/TEMP] authentication is unavailable, try again later
      `,
    );
  });

  it('RFC 3206 section 4: the lock service failing gives [SYS/TEMP]', async (t) => {
    const broken: MaildropLock = { acquire: () => Promise.reject(new Error('redis down')) };
    const h = await start(t, { lock: broken });
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: -ERR [SYS/TEMP] maildrop lock is unavailable, try again later
      `,
    );
  });

  it('RFC 3206 section 4: the store failing at login gives [SYS/TEMP] and releases the lock', async (t) => {
    const h = await start(t);
    h.mailbox.failNext('messages', new Error('store down'));
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: -ERR [SYS/TEMP] maildrop is unavailable, try again later
      C: STAT
      S: -ERR STAT is not valid in this state
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: +OK maildrop has 2 messages *
      `,
    );
  });
  it('RFC 3206 section 4: a maildrop the store cannot open for good gives [SYS/PERM]', async (t) => {
    const h = await start(t);
    h.mailbox.failNext('messages', new MailboxError('NONEXISTENT', 'No such folder: INBOX'));
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: -ERR [SYS/PERM] maildrop cannot be opened, contact the postmaster
      C: STAT
      S: -ERR STAT is not valid in this state
      `,
    );
    assert.equal(h.lock.held.size, 0);
  });
});

describe('RFC 5034: AUTH PLAIN (RFC 4616)', () => {
  const b64 = (s: string): string => Buffer.from(s).toString('base64');

  it('with an initial response', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: AUTH PLAIN ${b64(`\0${ALICE}\0${PASSWORD}`)}
      S: +OK maildrop has 2 messages *
      C: STAT
      S: +OK 2 *
      `,
    );
  });

  it('with the "+ " continuation, and an authzid equal to the user', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: AUTH PLAIN
      S: + 
      C: ${b64(`${ALICE}\0${ALICE}\0${PASSWORD}`)}
      S: +OK maildrop has 2 messages *
      `,
    );
  });

  it('"*" cancels; a bad response, a foreign authzid or wrong password fail', async (t) => {
    const h = await start(t, { limits: { maxAuthFailures: 10 } });
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: AUTH PLAIN
      S: + 
      C: *
      S: -ERR authentication cancelled
      C: AUTH PLAIN
      S: + 
      C: not base64!
      S: -ERR invalid base64 in SASL response
      C: AUTH PLAIN ${b64('no nul at all')}
      S: -ERR malformed PLAIN message
      C: AUTH PLAIN ${b64(`bob@example.org\0${ALICE}\0${PASSWORD}`)}
      S: -ERR [AUTH] invalid credentials
      C: AUTH PLAIN ${b64(`\0${ALICE}\0nope`)}
      S: -ERR [AUTH] invalid credentials
      C: AUTH CRAM-MD5
      S: -ERR unsupported authentication mechanism
      C: AUTH PLAIN =
      S: -ERR malformed PLAIN message
      C: AUTH PLAIN
      S: + 
      C: ${b64(`\0${ALICE}\0${PASSWORD}`)}
      S: +OK *
      `,
    );
  });

  it('a SASL response may be longer than a command line, but not unbounded', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: AUTH PLAIN
      S: + 
      C: ${b64(`\0${ALICE}\0${'p'.repeat(300)}`)}
      S: -ERR [AUTH] invalid credentials
      C: AUTH PLAIN
      S: + 
      C: ${'A'.repeat(5000)}
      S: -ERR SASL response too long
      C: NOOP
      S: -ERR NOOP is not valid in this state
      `,
    );
  });
});

describe('RFC 1939 section 5: TRANSACTION', () => {
  it('STAT counts messages and octets', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(client, `C: STAT\nS: +OK 2 ${MSG1.length + MSG2.length}`);
  });

  it('LIST and LIST n', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(
      client,
      `
      C: LIST
      S: +OK 2 messages (${MSG1.length + MSG2.length} octets)
      S: 1 ${MSG1.length}
      S: 2 ${MSG2.length}
      S: .
      C: LIST 2
      S: +OK 2 ${MSG2.length}
      C: LIST 3
      S: -ERR no such message, only 2 messages in maildrop
      C: LIST 0
      S: -ERR no such message, only 2 messages in maildrop
      C: LIST x
      S: -ERR invalid message number
      C: LIST 1 2
      S: -ERR LIST takes at most one argument
      `,
    );
  });

  it('RFC 1939 section 7: UIDL gives UIDVALIDITY.UID, stable across sessions', async (t) => {
    const h = await start(t);
    const [u1, u2] = h.uids;
    const uv = h.uidValidity;
    const script = `
      C: UIDL
      S: +OK unique-id listing follows
      S: 1 ${uv}.${u1}
      S: 2 ${uv}.${u2}
      S: .
      C: UIDL 2
      S: +OK 2 ${uv}.${u2}
      C: UIDL 9
      S: -ERR no such message, only 2 messages in maildrop
      C: QUIT
      S: +OK *
      `;
    await converse(await login(h), script);
    await converse(await login(h), script);
  });

  it('RETR sends the message dot-stuffed with CRLF and sets \\Seen', async (t) => {
    const h = await start(t, { mailbox: new ByteChunkMailbox() });
    const client = await login(h);
    client.send('RETR 2\r\n');
    assert.equal(await client.readLine(), `+OK ${MSG2.length} octets`);
    const raw: string[] = [];
    for (let line = await client.readLine(); line !== '.'; line = await client.readLine())
      raw.push(line as string);
    assert.deepEqual(raw, [
      'From: carol@example.org',
      'Subject: dots',
      '',
      '..leading dot',
      '...two dots',
      '..',
      'middle . dot',
      'last line',
    ]);
    await until(
      async () => (await h.mailbox.messages(ALICE, 'INBOX')).messages[1]?.flags.includes('\\Seen') === true,
    );
    const first = (await h.mailbox.messages(ALICE, 'INBOX')).messages[0];
    assert.deepEqual(first?.flags, [], 'only the retrieved message is flagged');
  });

  it('pipelined RETRs are all flagged \\Seen, before QUIT frees the maildrop', async (t) => {
    const h = await start(t, { messages: [MSG1, MSG2, MSG1] });
    /** Counts flag updates: RETRs made while one is in flight go together in the next. */
    let stores = 0;
    const storeFlags = h.mailbox.storeFlags.bind(h.mailbox);
    h.mailbox.storeFlags = async (...args) => {
      stores++;
      return storeFlags(...args);
    };
    const client = await login(h);
    client.send('RETR 1\r\nRETR 2\r\nRETR 3\r\nQUIT\r\n');
    for (let i = 0; i < 3; i++) {
      assert.match((await client.readLine()) ?? '', /^\+OK \d+ octets$/);
      await client.readMultiline();
    }
    await converse(client, 'S: +OK *\nS: <closed>');
    await until(() => h.lock.held.size === 0);
    const flags = (await h.mailbox.messages(ALICE, 'INBOX')).messages.map((m) => m.flags);
    assert.deepEqual(flags, [['\\Seen'], ['\\Seen'], ['\\Seen']]);
    assert.ok(stores >= 1 && stores <= 3);
  });

  it('RETR succeeds when the store cannot set \\Seen', async (t) => {
    const h = await start(t);
    h.mailbox.failNext('storeFlags', new Error('store down'));
    const client = await login(h);
    await converse(client, `C: RETR 1\nS: +OK ${MSG1.length} octets\nS: From: bob@example.org`);
    await client.readMultiline();
    await converse(client, 'C: RETR 2\nS: +OK *');
    await client.readMultiline();
    await until(
      async () => (await h.mailbox.messages(ALICE, 'INBOX')).messages[1]?.flags.includes('\\Seen') === true,
    );
    assert.deepEqual((await h.mailbox.messages(ALICE, 'INBOX')).messages[0]?.flags, []);
  });

  it('RETR of a body without a final CRLF still ends the response properly', async (t) => {
    const h = await start(t, { messages: ['Subject: x\r\n\r\n.no newline at end'] });
    const client = await login(h);
    client.send('RETR 1\r\n');
    assert.match((await client.readLine()) ?? '', /^\+OK \d+ octets$/);
    assert.deepEqual(await client.readMultiline(), ['Subject: x', '', '.no newline at end']);
  });

  it('RETR does not set \\Seen when retrSetsSeen is off', async (t) => {
    const h = await start(t, { retrSetsSeen: false });
    const client = await login(h);
    client.send('RETR 1\r\nNOOP\r\n');
    await client.readLine();
    assert.deepEqual(await client.readMultiline(), lines(MSG1));
    assert.equal(await client.readLine(), '+OK');
    assert.deepEqual((await h.mailbox.messages(ALICE, 'INBOX')).messages[0]?.flags, []);
  });

  it('RETR argument errors', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(
      client,
      `
      C: RETR
      S: -ERR RETR takes exactly one argument: a message number
      C: RETR 1 2
      S: -ERR RETR takes exactly one argument: a message number
      C: RETR one
      S: -ERR invalid message number
      C: RETR 3
      S: -ERR no such message, only 2 messages in maildrop
      C: RETR 99999999999
      S: -ERR invalid message number
      `,
    );
  });

  it('RETR of a body missing from the blob store gives [SYS/TEMP] before +OK', async (t) => {
    const h = await start(t);
    const blob = (await h.mailbox.messages(ALICE, 'INBOX')).messages[0]?.blob as string;
    h.mailbox.blobs.delete(blob);
    const client = await login(h);
    await converse(
      client,
      `
      C: RETR 1
      S: -ERR [SYS/TEMP] message is unavailable, try again later
      C: RETR 2
      S: +OK * octets
      `,
    );
  });

  it('RFC 1939 section 7: TOP n 0 sends the header and the blank line; TOP n 2 two body lines', async (t) => {
    const h = await start(t, { mailbox: new ByteChunkMailbox() });
    const client = await login(h);
    await converse(
      client,
      `
      C: TOP 2 0
      S: +OK top of message follows
      S: From: carol@example.org
      S: Subject: dots
      S:
      S: .
      C: TOP 2 2
      S: +OK top of message follows
      S: From: carol@example.org
      S: Subject: dots
      S:
      S: ..leading dot
      S: ...two dots
      S: .
      C: TOP 1 100
      S: +OK top of message follows
      S: From: bob@example.org
      S: Subject: one
      S:
      S: Hello Alice.
      S: .
      C: TOP 1
      S: -ERR TOP takes two arguments: a message number and a line count
      C: TOP 1 -1
      S: -ERR invalid line count
      C: TOP 3 0
      S: -ERR no such message, only 2 messages in maildrop
      `,
    );
    assert.ok(
      (await h.mailbox.messages(ALICE, 'INBOX')).messages.every((m) => !m.flags.includes('\\Seen')),
      'TOP does not set \\Seen',
    );
  });

  it('DELE marks; a deleted message is refused by every command; RSET unmarks', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(
      client,
      `
      C: DELE 1
      S: +OK message 1 deleted
      C: DELE 1
      S: -ERR message 1 already deleted
      C: RETR 1
      S: -ERR message 1 already deleted
      C: TOP 1 0
      S: -ERR message 1 already deleted
      C: LIST 1
      S: -ERR message 1 already deleted
      C: UIDL 1
      S: -ERR message 1 already deleted
      C: STAT
      S: +OK 1 ${MSG2.length}
      C: LIST
      S: +OK 1 messages (${MSG2.length} octets)
      S: 2 ${MSG2.length}
      S: .
      C: UIDL
      S: +OK *
      S: 2 *
      S: .
      C: RSET
      S: +OK maildrop has 2 messages (${MSG1.length + MSG2.length} octets)
      C: STAT
      S: +OK 2 *
      C: DELE 3
      S: -ERR no such message, only 2 messages in maildrop
      C: DELE
      S: -ERR DELE takes exactly one argument: a message number
      `,
    );
    assert.deepEqual(await inboxUids(h.mailbox), h.uids, 'nothing deleted before QUIT');
  });

  it('NOOP', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(client, 'C: NOOP\nS: +OK\nC: NOOP 1\nS: -ERR NOOP takes no arguments');
  });

  it('new mail during the session does not change the snapshot', async (t) => {
    const h = await start(t);
    const client = await login(h);
    const late = await h.mailbox.deliver(ALICE, 'Subject: late\r\n\r\nlate\r\n');
    await converse(
      client,
      `
      C: STAT
      S: +OK 2 ${MSG1.length + MSG2.length}
      C: LIST 3
      S: -ERR no such message, only 2 messages in maildrop
      C: LIST
      S: +OK 2 messages *
      S: 1 *
      S: 2 *
      S: .
      C: DELE 1
      S: +OK *
      C: QUIT
      S: +OK pop.test POP3 server signing off (1 messages left)
      S: <closed>
      `,
    );
    assert.deepEqual(await inboxUids(h.mailbox), [h.uids[1], late]);
    const next = await login(h);
    await converse(next, 'C: STAT\nS: +OK 2 *');
  });

  it('commands in the wrong state and unknown commands get -ERR', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: STAT
      S: -ERR STAT is not valid in this state
      C: RETR 1
      S: -ERR RETR is not valid in this state
      C: RETR
      S: -ERR RETR is not valid in this state
      C: APOP alice c4c9334bac560ecc979e58001b3e22fb
      S: -ERR unknown command
      C: XYZZY
      S: -ERR unknown command
      C:
      S: -ERR empty command
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: +OK *
      C: USER ${ALICE}
      S: -ERR USER is not valid in this state
      C: AUTH PLAIN
      S: -ERR AUTH is not valid in this state
      C: STLS
      S: -ERR STLS is not valid in this state
      C: LAST
      S: -ERR unknown command
      C: STAT
      S: +OK *
      `,
    );
  });
});

/** Counts the body octets read from the blob store. */
class CountingMailbox extends MemoryMailbox {
  read = 0;
  override async *openBody(blob: string): AsyncIterable<Uint8Array> {
    for await (const chunk of super.openBody(blob)) {
      this.read += chunk.length;
      yield chunk;
    }
  }
}

/** Fails after the first chunk of a body, as a blob store losing its connection would. */
class BrokenBodyMailbox extends MemoryMailbox {
  override async *openBody(blob: string): AsyncIterable<Uint8Array> {
    for await (const chunk of super.openBody(blob)) {
      yield chunk;
      throw new Error('blob store connection lost');
    }
  }
}

/** Waits until `value()` has stopped changing for `quietChecks` checks in a row. */
async function settled(value: () => number, quietChecks = 10): Promise<number> {
  let last = -1;
  let quiet = 0;
  await until(() => {
    const now = value();
    quiet = now === last ? quiet + 1 : 0;
    last = now;
    return quiet >= quietChecks;
  }, 20_000);
  return last;
}

describe('RFC 1939 section 5: RETR streaming', () => {
  const big = Buffer.alloc(64 * 1024 * 1024, 'x'.repeat(1022) + '\r\n');

  it('honours back-pressure: a client that stops reading stops the blob reads', async (t) => {
    const mailbox = new CountingMailbox();
    const h = await start(t, { mailbox, messages: [] });
    await mailbox.deliver(ALICE, big);
    const client = await login(h);
    client.socket.pause();
    client.send('RETR 1\r\n');
    const read = await settled(() => mailbox.read);
    assert.ok(
      read > 0 && read < big.length / 2,
      `read ${read} of ${big.length} octets with a stalled client`,
    );
    // Resumed, the client gets the whole message.
    let received = 0;
    let tail = '';
    client.socket.removeAllListeners('data');
    const done = new Promise<void>((resolve) => {
      client.socket.on('data', (data: string) => {
        received += data.length;
        tail = (tail + data).slice(-16);
        if (tail.endsWith('\r\n.\r\n')) resolve();
      });
    });
    client.socket.resume();
    await done;
    const status = `+OK ${big.length} octets\r\n`;
    assert.equal(received, status.length + big.length + 3);
    assert.equal(mailbox.read, big.length);
  });

  it('server close does not wait for a RETR to a client that stopped reading', async (t) => {
    const mailbox = new CountingMailbox();
    const h = await start(t, { mailbox, messages: [MSG1], limits: { shutdownGraceMs: 100 } });
    await mailbox.deliver(ALICE, big);
    const client = await login(h);
    client.socket.pause();
    client.send('DELE 1\r\nRETR 2\r\n');
    const read = await settled(() => mailbox.read);
    assert.ok(read > 0 && read < big.length / 2, `the RETR is stalled (read ${read} octets)`);
    await h.server.close();
    assert.equal(h.server.sessions(), 0);
    assert.equal(h.lock.held.size, 0);
    assert.equal((await inboxUids(h.mailbox)).length, 2, 'nothing deleted');
  });

  it('a body failing mid-stream hangs up without the "." line and deletes nothing', async (t) => {
    const mailbox = new BrokenBodyMailbox();
    const h = await start(t, {
      mailbox,
      messages: [MSG1, 'Subject: big\r\n\r\n' + 'y'.repeat(5000) + '\r\n'],
    });
    const client = await login(h);
    await converse(client, 'C: DELE 1\nS: +OK *\nC: RETR 2\nS: +OK * octets\nS: Subject: big\nS:');
    assert.equal(await client.readLine(), null, 'no "." line after a truncated body');
    await until(() => h.server.sessions() === 0);
    assert.deepEqual(await inboxUids(h.mailbox), h.uids);
    assert.equal(h.lock.held.size, 0);
  });
});

describe('RFC 1939 section 6: UPDATE', () => {
  it('DELE then QUIT removes the messages and releases the lock', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(
      client,
      `
      C: DELE 1
      S: +OK *
      C: DELE 2
      S: +OK *
      C: QUIT
      S: +OK pop.test POP3 server signing off (maildrop empty)
      S: <closed>
      `,
    );
    assert.deepEqual(await inboxUids(h.mailbox), []);
    assert.equal(h.lock.held.size, 0);
  });

  it('QUIT without DELE removes nothing', async (t) => {
    const h = await start(t);
    await converse(await login(h), 'C: QUIT\nS: +OK *\nS: <closed>');
    assert.deepEqual(await inboxUids(h.mailbox), h.uids);
  });

  it('a failed expunge gives [SYS/TEMP], deletes nothing and releases the lock', async (t) => {
    const h = await start(t);
    const client = await login(h);
    h.mailbox.failNext('expunge', new Error('store down'));
    await converse(
      client,
      `
      C: DELE 1
      S: +OK *
      C: QUIT
      S: -ERR [SYS/TEMP] some deleted messages not removed
      S: <closed>
      `,
    );
    assert.deepEqual(await inboxUids(h.mailbox), h.uids);
    assert.equal(h.lock.held.size, 0);
  });

  it('DELE then a dropped connection deletes nothing and releases the lock', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(client, 'C: DELE 1\nS: +OK *\nC: DELE 2\nS: +OK *');
    client.socket.destroy();
    await until(() => h.server.sessions() === 0);
    assert.deepEqual(await inboxUids(h.mailbox), h.uids);
    assert.equal(h.lock.held.size, 0);
  });

  it('RFC 1939 section 3: the inactivity timer closes without a reply and deletes nothing', async (t) => {
    const h = await start(t, { idleTimeoutMs: 150 });
    const client = await login(h);
    await converse(client, 'C: DELE 1\nS: +OK *');
    await converse(client, 'S: <closed>');
    assert.equal(client.rest, '');
    await until(() => h.server.sessions() === 0);
    assert.deepEqual(await inboxUids(h.mailbox), h.uids);
    assert.equal(h.lock.held.size, 0);
  });

  it('server close ends sessions without UPDATE and releases locks', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(client, 'C: DELE 1\nS: +OK *');
    await h.server.close();
    await converse(client, 'S: <closed>');
    assert.equal(h.server.sessions(), 0);
    assert.deepEqual(await inboxUids(h.mailbox), h.uids);
    assert.equal(h.lock.held.size, 0);
  });

  it('a client that sends QUIT and half-closes still gets its UPDATE and reply', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    client.socket.end(`USER ${ALICE}\r\nPASS ${PASSWORD}\r\nDELE 2\r\nQUIT\r\n`);
    await converse(
      client,
      `
      S: +OK pop.test POP3 ready *
      S: +OK send PASS
      S: +OK maildrop has 2 messages *
      S: +OK message 2 deleted
      S: +OK * (1 messages left)
      S: <closed>
      `,
    );
    assert.deepEqual(await inboxUids(h.mailbox), [h.uids[0]]);
  });

  it('a half-received QUIT (no line end) is not a command', async (t) => {
    const h = await start(t);
    const client = await login(h);
    await converse(client, 'C: DELE 1\nS: +OK *');
    client.socket.end('QUIT');
    await converse(client, 'S: <closed>');
    await until(() => h.server.sessions() === 0);
    assert.deepEqual(await inboxUids(h.mailbox), h.uids);
  });
});

describe('RFC 2449: framing, pipelining, limits', () => {
  it('section 6.6: pipelined commands are answered in order', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${ALICE}
      C: PASS ${PASSWORD}
      C: STAT
      C: LIST 1
      C: UIDL 2
      C: NOOP
      S: +OK send PASS
      S: +OK maildrop has *
      S: +OK 2 *
      S: +OK 1 ${MSG1.length}
      S: +OK 2 *
      S: +OK
      `,
    );
  });

  it('commands sent one byte at a time, with bare LF line ends', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    assert.match((await client.readLine()) ?? '', /^\+OK/);
    for (const byte of Buffer.from(`user ${ALICE}\npass ${PASSWORD}\r\nstat\n`)) {
      client.send(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await converse(client, 'S: +OK send PASS\nS: +OK maildrop *\nS: +OK 2 *');
  });

  it('section 4: a line over 255 octets gets -ERR and the session goes on', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: USER ${'x'.repeat(300)}
      S: -ERR line too long
      C: USER ${'y'.repeat(247)}
      S: +OK send PASS
      C: NOOP ${'z'.repeat(10_000)}
      S: -ERR line too long
      C: QUIT
      S: +OK *
      `,
    );
  });

  it('too many protocol errors close the connection', async (t) => {
    const h = await start(t, { limits: { maxProtocolErrors: 3 } });
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: BAD1
      C: BAD2
      C: BAD3
      C: NOOP
      S: -ERR unknown command
      S: -ERR unknown command
      S: -ERR unknown command; too many errors, closing connection
      S: <closed>
      `,
    );
  });

  it('connections beyond the limit are refused with [SYS/TEMP]', async (t) => {
    const h = await start(t, { limits: { maxConnections: 1 } });
    const first = await Client.open(h.port);
    await converse(first, 'S: +OK *');
    const second = await Client.open(h.port);
    await converse(second, 'S: -ERR [SYS/TEMP] too many connections, try again later\nS: <closed>');
  });
});

// ---- plaintext policy and STLS ----------------------------------------------------------------

describe('RFC 2595: plaintext passwords need TLS', () => {
  // Tests reach nothing but loopback: a peer the server does not trust stands for a remote one.
  const remote = { trustedPeer: () => false };

  it('a non-loopback peer without TLS is not offered USER or SASL PLAIN', async (t) => {
    const h = await start(t, { ...remote });
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: CAPA
      S: +OK capability list follows
      S: TOP
      S: UIDL
      S: RESP-CODES
      S: AUTH-RESP-CODE
      S: PIPELINING
      S: IMPLEMENTATION Postino
      S: .
      C: USER ${ALICE}
      S: -ERR [AUTH] plaintext authentication is not allowed without TLS
      C: PASS ${PASSWORD}
      S: -ERR send USER first
      C: AUTH PLAIN ${Buffer.from(`\0${ALICE}\0${PASSWORD}`).toString('base64')}
      S: -ERR [AUTH] plaintext authentication is not allowed without TLS
      `,
    );
  });

  it('allowPlaintextAuth lets a non-loopback peer log in', async (t) => {
    const h = await start(t, { ...remote, allowPlaintextAuth: true });
    const client = await Client.open(h.port);
    await converse(client, `S: +OK *\nC: USER ${ALICE}\nS: +OK *\nC: PASS ${PASSWORD}\nS: +OK maildrop *`);
  });
});

function haveOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A throw-away self-signed certificate for pop.test. */
function makeCertificate(): { key: Buffer; cert: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'pop3-tls-'));
  try {
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'].concat([
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '1',
        '-subj',
        '/CN=pop.test',
      ]),
      { stdio: 'ignore', timeout: 20_000 },
    );
    return { key: readFileSync(key), cert: readFileSync(cert) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('RFC 2595 section 4: STLS', { skip: !haveOpenssl() && 'openssl not installed' }, () => {
  let tlsOptions: { key: Buffer; cert: Buffer } | undefined;
  before(() => {
    tlsOptions = makeCertificate();
  });

  /** Upgrades a plaintext client after +OK to STLS. */
  function upgrade(client: Client): Promise<Client> {
    return new Promise((resolve, reject) => {
      client.socket.removeAllListeners('data');
      const secure = tlsConnect({ socket: client.socket, rejectUnauthorized: false }, () =>
        resolve(new Client(secure)),
      );
      secure.once('error', reject);
    });
  }

  it('STLS is offered, upgrades, and plaintext logins work under TLS', async (t) => {
    const h = await start(t, { tls: tlsOptions, trustedPeer: () => false });
    const client = await Client.open(h.port);
    await converse(
      client,
      `
      S: +OK *
      C: CAPA
      S: +OK capability list follows
      S: TOP
      S: UIDL
      S: RESP-CODES
      S: AUTH-RESP-CODE
      S: PIPELINING
      S: STLS
      S: IMPLEMENTATION Postino
      S: .
      C: STLS
      S: +OK begin TLS negotiation
      `,
    );
    const secure = await upgrade(client);
    await converse(
      secure,
      `
      C: CAPA
      S: +OK capability list follows
      S: TOP
      S: UIDL
      S: RESP-CODES
      S: AUTH-RESP-CODE
      S: PIPELINING
      S: USER
      S: SASL PLAIN
      S: IMPLEMENTATION Postino
      S: .
      C: STLS
      S: -ERR TLS is already active
      C: USER ${ALICE}
      S: +OK *
      C: PASS ${PASSWORD}
      S: +OK maildrop has 2 messages *
      C: RETR 1
      S: +OK * octets
      S: From: bob@example.org
      S: Subject: one
      S:
      S: Hello Alice.
      S: .
      C: QUIT
      S: +OK *
      S: <closed>
      `,
    );
  });

  it('commands pipelined after STLS in plaintext are dropped, not run under TLS', async (t) => {
    const h = await start(t, { tls: tlsOptions });
    const client = await Client.open(h.port);
    await converse(client, 'S: +OK *');
    client.send(`USER ${ALICE}\r\nSTLS\r\nPASS ${PASSWORD}\r\nSTAT\r\n`);
    await converse(client, 'S: +OK send PASS\nS: +OK begin TLS negotiation');
    const secure = await upgrade(client);
    await converse(
      secure,
      `
      C: PASS ${PASSWORD}
      S: -ERR send USER first
      C: STAT
      S: -ERR STAT is not valid in this state
      `,
    );
    assert.equal(h.lock.held.size, 0);
  });

  it('RFC 8314 section 3.3: implicit TLS greets after the handshake and takes passwords', async (t) => {
    // A peer not trusted as secure: without TLS it would be refused USER (RFC 2595 section 2.3).
    const host = '127.0.0.1';
    const h = await start(t, { tls: tlsOptions, trustedPeer: () => false });
    const port = await h.server.listenTls(0, host);
    const socket = tlsConnect({ host, port, rejectUnauthorized: false });
    await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    const client = new Client(socket);
    await converse(
      client,
      `
      S: +OK pop.test POP3 ready <*@pop.test>
      C: CAPA
      S: +OK capability list follows
      S: TOP
      S: UIDL
      S: RESP-CODES
      S: AUTH-RESP-CODE
      S: PIPELINING
      S: USER
      S: SASL PLAIN
      S: IMPLEMENTATION Postino
      S: .
      C: STLS
      S: -ERR TLS is already active
      C: AUTH PLAIN ${Buffer.from(`\0${ALICE}\0${PASSWORD}`).toString('base64')}
      S: +OK maildrop has 2 messages *
      C: QUIT
      S: +OK *
      S: <closed>
      `,
    );
  });

  it('implicit TLS: plaintext, or a handshake never finished, is dropped without a reply', async (t) => {
    const h = await start(t, { tls: tlsOptions, limits: { tlsHandshakeTimeoutMs: 200 } });
    const port = await h.server.listenTls(0, '127.0.0.1');
    const plaintext = await Client.open(port);
    plaintext.send(`USER ${ALICE}\r\n`);
    const silent = await Client.open(port);
    assert.equal(await plaintext.readLine(), null);
    assert.equal(await silent.readLine(), null);
    assert.equal(plaintext.rest + silent.rest, '');
    assert.equal(h.server.sessions(), 0);
  });

  it('a rotated certificate applies to the next handshake, on STLS and on implicit TLS', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'pop3-rotate-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const certFile = join(dir, 'cert.pem');
    const keyFile = join(dir, 'key.pem');
    const write = (pair: { key: Buffer; cert: Buffer }): void => {
      writeFileSync(keyFile, pair.key);
      writeFileSync(certFile, pair.cert);
    };
    write(makeCertificate());
    const provider = await TlsProvider.load(
      { certFile, keyFile, hostname: 'pop.test', dataDir: dir, pollMs: 20 },
      pino({ level: 'silent' }),
    );
    t.after(() => provider.close());
    const h = await start(t, { tls: provider });
    const tlsPort = await h.server.listenTls(0, '127.0.0.1');
    const viaImplicit = async (): Promise<string> => {
      const socket = tlsConnect({ host: '127.0.0.1', port: tlsPort, rejectUnauthorized: false });
      await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      const client = new Client(socket);
      await converse(client, 'S: +OK *\nC: QUIT\nS: +OK *\nS: <closed>');
      return fingerprint;
    };
    const viaStls = async (): Promise<string> => {
      const client = await Client.open(h.port);
      await converse(client, 'S: +OK *\nC: STLS\nS: +OK begin TLS negotiation');
      const secure = await upgrade(client);
      const fingerprint = (secure.socket as TLSSocket).getPeerCertificate().fingerprint256;
      await converse(secure, 'C: QUIT\nS: +OK *\nS: <closed>');
      return fingerprint;
    };
    const before = await viaImplicit();
    assert.equal(await viaStls(), before);
    const rotated = new Promise((resolve) => provider.once('change', resolve));
    write(makeCertificate());
    await rotated;
    const after = await viaImplicit();
    assert.notEqual(after, before);
    assert.equal(await viaStls(), after);
  });

  it('without a TLS configuration STLS is refused', async (t) => {
    const h = await start(t);
    const client = await Client.open(h.port);
    await converse(client, 'S: +OK *\nC: STLS\nS: -ERR STLS is not available');
  });
});

// ---- real clients ------------------------------------------------------------------------------

function curlHasPop3(): boolean {
  try {
    return /\bpop3\b/.test(execFileSync('curl', ['-V'], { encoding: 'utf8' }));
  } catch {
    return false;
  }
}

function run(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { encoding: 'latin1', timeout: 20_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('curl as a POP3 client', { skip: !curlHasPop3() && 'curl without pop3' }, () => {
  it('retrieves message 1 and a dot-stuffed message 2 byte for byte', async (t) => {
    const h = await start(t);
    const url = `pop3://127.0.0.1:${h.port}`;
    const one = await run('curl', ['-s', '-S', `${url}/1`, '-u', `${ALICE}:${PASSWORD}`]);
    assert.equal(one.code, 0, one.stderr);
    assert.equal(one.stdout, MSG1);
    const two = await run('curl', ['-s', '-S', `${url}/2`, '-u', `${ALICE}:${PASSWORD}`]);
    assert.equal(two.code, 0, two.stderr);
    assert.equal(two.stdout, MSG2);
    await until(() => h.lock.held.size === 0);
  });

  it('lists the maildrop', async (t) => {
    const h = await start(t);
    const listing = await run('curl', [
      '-s',
      '-S',
      `pop3://127.0.0.1:${h.port}/`,
      '-u',
      `${ALICE}:${PASSWORD}`,
    ]);
    assert.equal(listing.code, 0, listing.stderr);
    assert.equal(listing.stdout, `1 ${MSG1.length}\r\n2 ${MSG2.length}\r\n`);
  });

  it('deletes with -X DELE, applied at QUIT', async (t) => {
    const h = await start(t);
    const dele = await run('curl', [
      '-s',
      '-S',
      `pop3://127.0.0.1:${h.port}/1`,
      '-X',
      'DELE',
      '-I',
      '-u',
      `${ALICE}:${PASSWORD}`,
    ]);
    assert.equal(dele.code, 0, dele.stderr);
    await until(async () => (await inboxUids(h.mailbox)).length === 1);
    assert.deepEqual(await inboxUids(h.mailbox), [h.uids[1]]);
  });

  it('is refused with wrong credentials (curl exit 67, login denied)', async (t) => {
    const h = await start(t);
    const denied = await run('curl', ['-s', `pop3://127.0.0.1:${h.port}/1`, '-u', `${ALICE}:nope`]);
    assert.equal(denied.code, 67);
  });

  it('upgrades with STLS (--ssl-reqd) and retrieves a message', { skip: !haveOpenssl() }, async (t) => {
    const h = await start(t, { tls: makeCertificate() });
    const got = await run('curl', [
      '-s',
      '-S',
      '--ssl-reqd',
      '-k',
      `pop3://127.0.0.1:${h.port}/2`,
      '-u',
      `${ALICE}:${PASSWORD}`,
    ]);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout, MSG2);
  });
});

function havePython(): boolean {
  try {
    execFileSync('python3', ['-c', 'import poplib'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe("Python's poplib as a POP3 client", { skip: !havePython() && 'python3 not installed' }, () => {
  it('stat, list, uidl, top, retr, dele, quit', async (t) => {
    const h = await start(t);
    const script = `
import json, poplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = poplib.POP3('127.0.0.1', port, timeout=10)
out = {'welcome': p.getwelcome().decode()}
out['capa'] = sorted(p.capa().keys())
p.user(user)
p.pass_(password)
out['stat'] = list(p.stat())
out['list'] = [l.decode() for l in p.list()[1]]
out['uidl'] = [l.decode() for l in p.uidl()[1]]
out['top'] = [l.decode() for l in p.top(2, 1)[1]]
out['retr'] = [l.decode() for l in p.retr(2)[1]]
out['dele'] = p.dele(1).decode()
out['quit'] = p.quit().decode()
print(json.dumps(out))
`;
    const res = await run('python3', ['-c', script, String(h.port), ALICE, PASSWORD]);
    assert.equal(res.code, 0, res.stderr);
    const out = JSON.parse(res.stdout) as Record<string, unknown>;
    const uv = h.uidValidity;
    assert.match(out.welcome as string, /^\+OK pop\.test POP3 ready <.*@pop\.test>$/);
    assert.deepEqual(out.capa, [
      'AUTH-RESP-CODE',
      'IMPLEMENTATION',
      'PIPELINING',
      'RESP-CODES',
      'SASL',
      'TOP',
      'UIDL',
      'USER',
    ]);
    assert.deepEqual(out.stat, [2, MSG1.length + MSG2.length]);
    assert.deepEqual(out.list, [`1 ${MSG1.length}`, `2 ${MSG2.length}`]);
    assert.deepEqual(out.uidl, [`1 ${uv}.${h.uids[0]}`, `2 ${uv}.${h.uids[1]}`]);
    // poplib removes the byte-stuffing.
    assert.deepEqual(out.top, ['From: carol@example.org', 'Subject: dots', '', '.leading dot']);
    assert.deepEqual(out.retr, lines(MSG2));
    assert.equal(out.dele, '+OK message 1 deleted');
    assert.equal(out.quit, '+OK pop.test POP3 server signing off (1 messages left)');
    assert.deepEqual(await inboxUids(h.mailbox), [h.uids[1]]);
  });
});
