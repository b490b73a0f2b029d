/**
 * IMAP extensions over a real listener, as C:/S: transcripts after the RFC examples: ENABLE
 * (RFC 5161), CONDSTORE and QRESYNC (RFC 7162), ESEARCH (RFC 4731) and SEARCHRES (RFC 5182),
 * LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819), MULTIAPPEND (RFC 3502), APPENDLIMIT
 * (RFC 7889), BINARY APPEND (RFC 3516), UTF8=ACCEPT (RFC 6855), QUOTA (RFC 9208), IMAP4rev2
 * (RFC 9051), COMPRESS=DEFLATE (RFC 4978), streamed APPEND. Storage is the in-memory MailboxClient.
 *
 * In S: lines `…` stands for any text.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { afterEach, describe, it } from 'node:test';
import zlib from 'node:zlib';
import { pino } from 'pino';
import { createImapServer } from '../../services/imap/server.ts';
import type { ImapServer } from '../../services/imap/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../helpers/memory-mailbox.ts';
import type { MemoryMailboxOptions } from '../helpers/memory-mailbox.ts';
import { until } from '../helpers/servers.ts';

const logger = pino({ level: 'silent' });
const USER = 'bob@example.com';
const PASSWORD = 'secret';

/** A raw IMAP connection reading CRLF lines. */
class Wire {
  readonly socket: net.Socket;
  #buffer = Buffer.alloc(0);
  #wake: (() => void) | null = null;
  #ended = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#ended = true;
      this.#wake?.();
    });
    socket.on('error', () => undefined);
  }

  send(line: string | Buffer): void {
    this.socket.write(typeof line === 'string' ? `${line}\r\n` : line);
  }

  async line(timeoutMs = 3000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.#buffer.indexOf('\r\n');
      if (end >= 0) {
        const text = this.#buffer.subarray(0, end).toString('utf8');
        this.#buffer = this.#buffer.subarray(end + 2);
        return text;
      }
      if (this.#ended) throw new Error(`closed; unread: ${JSON.stringify(this.#buffer.toString())}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; unread: ${JSON.stringify(this.#buffer.toString())}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }

  async until(tag: string): Promise<string[]> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.line();
      lines.push(line);
      if (line.startsWith(`${tag} `)) return lines;
    }
  }
}

/** C: lines are sent, S: lines must come back in order (`…` matches anything). */
async function transcript(wire: Wire, script: string): Promise<void> {
  for (const raw of script.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('C: ')) wire.send(line.slice(3));
    else if (line.startsWith('S: ')) {
      const expected = line.slice(3);
      const actual = (await wire.line()).trimEnd();
      const pattern = new RegExp(
        '^' +
          expected
            .split('…')
            .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
            .join('.*') +
          '$',
      );
      assert.match(actual, pattern, `expected S: ${expected}`);
    }
  }
}

const servers: ImapServer[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function setup(options: MemoryMailboxOptions = {}): Promise<{
  store: MemoryMailbox;
  login(): Promise<Wire>;
}> {
  const store = new MemoryMailbox(options);
  const server = createImapServer({
    mailbox: store,
    auth: new MemoryAuthenticator({ [USER]: PASSWORD }),
    logger,
    hostname: 'imap.test',
    allowPlaintextAuth: false,
    limits: { maxLiteralBytes: 100_000 },
  });
  servers.push(server);
  const port = await server.listen(0, '127.0.0.1');
  const login = async (): Promise<Wire> => {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
    sockets.push(socket);
    const wire = new Wire(socket);
    await wire.line();
    wire.send(`L1 LOGIN ${USER} ${PASSWORD}`);
    const lines = await wire.until('L1');
    assert.match(lines.at(-1) ?? '', /^L1 OK/);
    return wire;
  };
  return { store, login };
}

const msg = (n: number): string => `From: a@example.com\r\nSubject: message ${n}\r\n\r\nbody ${n}\r\n`;

describe('RFC 7162: CONDSTORE', () => {
  it('SELECT (CONDSTORE), FETCH MODSEQ and CHANGEDSINCE, STORE UNCHANGEDSINCE, SEARCH MODSEQ', async () => {
    const { store, login } = await setup();
    for (let i = 1; i <= 3; i++) await store.deliver(USER, msg(i));
    const wire = await login();
    await transcript(
      wire,
      `
      C: a1 SELECT INBOX (CONDSTORE)
      S: * FLAGS …
      S: * OK [PERMANENTFLAGS …
      S: * 3 EXISTS
      S: * 3 RECENT
      S: * OK [UNSEEN 1] …
      S: * OK [UIDVALIDITY …
      S: * OK [UIDNEXT 4] …
      S: * OK [HIGHESTMODSEQ 4] Highest
      S: a1 OK [READ-WRITE] SELECT completed
      C: a2 FETCH 1:* (FLAGS MODSEQ)
      S: * 1 FETCH (FLAGS (\\Recent) MODSEQ (2))
      S: * 2 FETCH (FLAGS (\\Recent) MODSEQ (3))
      S: * 3 FETCH (FLAGS (\\Recent) MODSEQ (4))
      S: a2 OK FETCH completed
      C: a3 STORE 2 +FLAGS (\\Seen)
      S: * 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (5))
      S: a3 OK STORE completed
      C: a4 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4)
      S: * 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (5))
      S: a4 OK FETCH completed
      C: a5 STORE 1:3 (UNCHANGEDSINCE 4) +FLAGS.SILENT (\\Flagged)
      S: * 1 FETCH (MODSEQ (6))
      S: * 3 FETCH (MODSEQ (7))
      S: a5 OK [MODIFIED 2] Conditional STORE failed for some messages
      C: a6 UID STORE 2 (UNCHANGEDSINCE 5) FLAGS (\\Answered)
      S: * 2 FETCH (UID 2 FLAGS (\\Answered \\Recent) MODSEQ (8))
      S: a6 OK STORE completed
      C: a7 SEARCH MODSEQ 6
      S: * SEARCH 1 2 3 (MODSEQ 8)
      S: a7 OK SEARCH completed
      C: a8 UID SEARCH MODSEQ 8
      S: * SEARCH 2 (MODSEQ 8)
      S: a8 OK SEARCH completed
      C: a9 STATUS INBOX (HIGHESTMODSEQ MESSAGES)
      S: * STATUS "INBOX" (HIGHESTMODSEQ 8 MESSAGES 3)
      S: a9 OK STATUS completed
      C: a10 FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)
      S: a10 BAD VANISHED needs UID FETCH
      `,
    );
  });

  it('reports other sessions\u2019 flag changes with MODSEQ once CONDSTORE is on', async () => {
    const { store, login } = await setup();
    await store.deliver(USER, msg(1));
    const a = await login();
    const b = await login();
    await transcript(a, 'C: a1 ENABLE CONDSTORE\nS: * ENABLED CONDSTORE\nS: a1 OK …');
    a.send('a2 SELECT INBOX');
    await a.until('a2');
    b.send('b1 SELECT INBOX');
    await b.until('b1');
    await transcript(b, 'C: b2 STORE 1 +FLAGS.SILENT (\\Flagged)\nS: b2 OK STORE completed');
    await transcript(
      a,
      'C: a3 NOOP\nS: * 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (3))\nS: a3 OK NOOP completed',
    );
  });
});

describe('RFC 7162: QRESYNC', () => {
  it('SELECT (QRESYNC ...) reports VANISHED (EARLIER) and changed flags; expunges become VANISHED', async () => {
    const { store, login } = await setup();
    for (let i = 1; i <= 5; i++) await store.deliver(USER, msg(i));
    const first = await login();
    first.send('f1 SELECT INBOX');
    const selected = await first.until('f1');
    const validity = /UIDVALIDITY (\d+)/.exec(selected.join('\n'))?.[1];
    // Messages have MODSEQ 2 to 6. Another device flags message 1 (7), deletes 2 and 4 (8, 9, 10).
    await transcript(
      first,
      `
      C: f2 STORE 1 +FLAGS.SILENT (\\Flagged)
      S: f2 OK STORE completed
      C: f3 STORE 2,4 +FLAGS.SILENT (\\Deleted)
      S: f3 OK STORE completed
      C: f4 EXPUNGE
      S: * 2 EXPUNGE
      S: * 3 EXPUNGE
      S: f4 OK EXPUNGE completed
      C: f5 LOGOUT
      S: * BYE …
      S: f5 OK …
      `,
    );
    const wire = await login();
    await transcript(
      wire,
      `
      C: a1 SELECT INBOX (QRESYNC (${validity} 6))
      S: a1 BAD QRESYNC is not enabled
      C: a2 ENABLE QRESYNC
      S: * ENABLED QRESYNC
      S: a2 OK ENABLE completed
      C: a3 SELECT INBOX (QRESYNC (${validity} 6 1:5))
      S: * FLAGS …
      S: * OK [PERMANENTFLAGS …
      S: * 3 EXISTS
      S: * 0 RECENT
      S: * OK [UNSEEN 1] …
      S: * OK [UIDVALIDITY ${validity}] UIDs valid
      S: * OK [UIDNEXT 6] …
      S: * OK [HIGHESTMODSEQ 10] Highest
      S: * VANISHED (EARLIER) 2,4
      S: * 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (7))
      S: a3 OK [READ-WRITE] SELECT completed
      C: a4 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 6 VANISHED)
      S: * VANISHED (EARLIER) 2,4
      S: * 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ (7))
      S: a4 OK FETCH completed
      C: a5 STORE 3 +FLAGS.SILENT (\\Deleted)
      S: * 3 FETCH (MODSEQ (11))
      S: a5 OK STORE completed
      C: a6 EXPUNGE
      S: * VANISHED 5
      S: a6 OK EXPUNGE completed
      C: a7 SELECT INBOX (QRESYNC (1 5))
      S: * OK [CLOSED] …
      S: * FLAGS …
      S: * OK [PERMANENTFLAGS …
      S: * 2 EXISTS
      S: * 0 RECENT
      S: * OK [UNSEEN 1] …
      S: * OK [UIDVALIDITY ${validity}] UIDs valid
      S: * OK [UIDNEXT 6] …
      S: * OK [HIGHESTMODSEQ 12] Highest
      S: a7 OK [READ-WRITE] SELECT completed
      `,
    );
  });
});

describe('RFC 4731 ESEARCH and RFC 5182 SEARCHRES', () => {
  it('answers SEARCH RETURN with ESEARCH, saves a result and uses $', async () => {
    const { store, login } = await setup();
    for (let i = 1; i <= 6; i++) await store.deliver(USER, msg(i), { flags: i % 2 ? ['\\Seen'] : [] });
    const wire = await login();
    wire.send('s SELECT INBOX');
    await wire.until('s');
    await transcript(
      wire,
      `
      C: A282 SEARCH RETURN (MIN COUNT) SEEN
      S: * ESEARCH (TAG "A282") MIN 1 COUNT 3
      S: A282 OK SEARCH completed
      C: A283 UID SEARCH RETURN () UNSEEN
      S: * ESEARCH (TAG "A283") UID ALL 2,4,6
      S: A283 OK SEARCH completed
      C: A284 SEARCH RETURN (MIN MAX ALL COUNT) KEYWORD $Nothing
      S: * ESEARCH (TAG "A284") COUNT 0
      S: A284 OK SEARCH completed
      C: A285 UID SEARCH RETURN (SAVE) SEEN
      S: A285 OK SEARCH completed, result saved
      C: A286 FETCH $ (UID)
      S: * 1 FETCH (UID 1)
      S: * 3 FETCH (UID 3)
      S: * 5 FETCH (UID 5)
      S: A286 OK FETCH completed
      C: A287 SEARCH RETURN (SAVE MIN) UNSEEN
      S: * ESEARCH (TAG "A287") MIN 2
      S: A287 OK SEARCH completed
      C: A288 UID SEARCH UID $
      S: * SEARCH 2
      S: A288 OK SEARCH completed
      C: A289 SEARCH RETURN (FROB) ALL
      S: A289 BAD Unknown search return option FROB
      `,
    );
  });
});

describe('RFC 9051 IMAP4rev2 and RFC 6855 UTF8=ACCEPT', () => {
  it('after ENABLE IMAP4rev2: no RECENT, SEARCH answers ESEARCH, SELECT sends LIST', async () => {
    const { store, login } = await setup();
    await store.deliver(USER, msg(1));
    const wire = await login();
    await transcript(
      wire,
      `
      C: a1 ENABLE IMAP4rev2 FROB
      S: * ENABLED IMAP4rev2
      S: a1 OK ENABLE completed
      C: a2 SELECT inbox
      S: * FLAGS …
      S: * OK [PERMANENTFLAGS …
      S: * 1 EXISTS
      S: * OK [UIDVALIDITY …
      S: * OK [UIDNEXT 2] …
      S: * OK [HIGHESTMODSEQ 2] Highest
      S: * LIST () "/" "INBOX"
      S: a2 OK [READ-WRITE] SELECT completed
      C: a3 SEARCH ALL
      S: * ESEARCH (TAG "a3") ALL 1
      S: a3 OK SEARCH completed
      C: a4 FETCH 1 FLAGS
      S: * 1 FETCH (FLAGS ())
      S: a4 OK FETCH completed
      `,
    );
  });

  it('names mailboxes in modified UTF-7, or in UTF-8 once UTF8=ACCEPT is enabled', async () => {
    const { login } = await setup();
    const wire = await login();
    await transcript(
      wire,
      `
      C: a1 CREATE "Entw&APw-rfe"
      S: a1 OK CREATE completed
      C: a2 LIST "" "Entw*"
      S: * LIST (\\HasNoChildren) "/" "Entw&APw-rfe"
      S: a2 OK LIST completed
      C: a3 ENABLE UTF8=ACCEPT
      S: * ENABLED UTF8=ACCEPT
      S: a3 OK ENABLE completed
      C: a4 LIST "" "Entw*"
      S: * LIST (\\HasNoChildren) "/" {9}
      S: Entwürfe
      S: a4 OK LIST completed
      `,
    );
    wire.send(Buffer.from('a5 CREATE "Über/大"\r\n'));
    assert.equal(await wire.line(), 'a5 OK CREATE completed');
    wire.send('a6 STATUS {9+}');
    wire.send(Buffer.from('Über/大 (MESSAGES)\r\n'));
    assert.equal(await wire.line(), '* STATUS {9}');
    assert.equal(await wire.line(), 'Über/大 (MESSAGES 0)');
    assert.equal(await wire.line(), 'a6 OK STATUS completed');
  });
});

describe('RFC 5258 LIST-EXTENDED and RFC 5819 LIST-STATUS', () => {
  it('selects subscribed and special-use mailboxes, returns children and status', async () => {
    const { store, login } = await setup();
    await store.deliver(USER, msg(1));
    await store.deliver(USER, msg(2), { flags: ['\\Seen'] });
    const wire = await login();
    await transcript(
      wire,
      `
      C: a1 CREATE Work/Projects
      S: a1 OK CREATE completed
      C: a2 UNSUBSCRIBE Trash
      S: a2 OK UNSUBSCRIBE completed
      C: a3 LIST (SPECIAL-USE) "" "*"
      S: * LIST (\\HasNoChildren \\Drafts) "/" "Drafts"
      S: * LIST (\\HasNoChildren \\Junk) "/" "Junk"
      S: * LIST (\\HasNoChildren \\Sent) "/" "Sent"
      S: * LIST (\\HasNoChildren \\Trash) "/" "Trash"
      S: a3 OK LIST completed
      C: a4 LIST (SUBSCRIBED) "" ("T*" "I*")
      S: * LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"
      S: a4 OK LIST completed
      C: a5 LIST "" (INBOX "Work/%") RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))
      S: * LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"
      S: * STATUS "INBOX" (MESSAGES 2 UNSEEN 1)
      S: * LIST (\\HasNoChildren …) "/" "Work/Projects"
      S: * STATUS "Work/Projects" (MESSAGES 0 UNSEEN 0)
      S: a5 OK LIST completed
      C: a6 LIST (RECURSIVEMATCH) "" "*"
      S: a6 BAD RECURSIVEMATCH needs another option
      C: a7 LIST (FROB) "" "*"
      S: a7 BAD Unknown LIST selection option FROB
      `,
    );
  });
});

describe('RFC 3502 MULTIAPPEND, RFC 7889 APPENDLIMIT, RFC 3516 BINARY, RFC 9208 QUOTA', () => {
  it('appends several messages at once, or none', async () => {
    const { store, login } = await setup({ quotaMessages: 3 });
    const wire = await login();
    const one = msg(1);
    const two = msg(2);
    wire.send(`a1 APPEND INBOX (\\Seen) {${one.length}+}`);
    wire.send(Buffer.from(one));
    wire.send(` {${two.length}+}`);
    wire.send(Buffer.from(two));
    wire.send('');
    assert.match(await wire.line(), /^a1 OK \[APPENDUID \d+ 1:2\] APPEND completed$/);
    // Two more would pass the limit of three: the first is taken back out.
    wire.send(`a2 APPEND INBOX {${one.length}+}`);
    wire.send(Buffer.from(one));
    wire.send(` {${two.length}+}`);
    wire.send(Buffer.from(two));
    wire.send('');
    assert.match(await wire.line(), /^a2 NO \[OVERQUOTA\]/);
    assert.equal((await store.status(USER, 'INBOX')).exists, 2);
    await transcript(
      wire,
      `
      C: a3 STATUS INBOX (MESSAGES APPENDLIMIT)
      S: * STATUS "INBOX" (MESSAGES 2 APPENDLIMIT 100000)
      S: a3 OK STATUS completed
      C: a4 GETQUOTAROOT INBOX
      S: * QUOTAROOT "INBOX" ""
      S: * QUOTA "" (MESSAGE 2 3)
      S: a4 OK GETQUOTAROOT completed
      C: a5 GETQUOTA ""
      S: * QUOTA "" (MESSAGE 2 3)
      S: a5 OK GETQUOTA completed
      C: a6 GETQUOTA "other"
      S: a6 NO [NONEXISTENT] No such quota root
      C: a7 SETQUOTA "" (STORAGE 512)
      S: a7 NO [NOPERM] Quotas are set by the administrator
      C: a8 APPEND INBOX {100001}
      S: a8 NO [TOOBIG] Message too large
      `,
    );
  });

  it('takes a literal8 (~{n}) in APPEND, and reports STORAGE in KiB', async () => {
    const { store, login } = await setup({ quotaBytes: 10 * 1024 });
    const wire = await login();
    const body = Buffer.concat([
      Buffer.from('Subject: bin\r\n\r\n'),
      Buffer.from([0, 1, 2, 0xff]),
      Buffer.from('\r\n'),
    ]);
    wire.send(`b1 APPEND Drafts ~{${body.length}}`);
    assert.match(await wire.line(), /^\+ /);
    wire.send(body);
    wire.send('');
    assert.match(await wire.line(), /^b1 OK \[APPENDUID \d+ 1\]/);
    const { messages } = await store.messages(USER, 'Drafts');
    assert.deepEqual(await store.readBody(messages[0]?.blob ?? ''), body);
    await transcript(
      wire,
      'C: b2 GETQUOTAROOT Drafts\nS: * QUOTAROOT "Drafts" ""\nS: * QUOTA "" (STORAGE 1 10)\nS: b2 OK …',
    );
  });
});

describe('APPEND streamed to storage (literals of appendStreamThreshold and more)', () => {
  it('stores a streamed literal, and takes it back out when the command turns out bad', async () => {
    const store = new MemoryMailbox();
    const server = createImapServer({
      mailbox: store,
      auth: new MemoryAuthenticator({ [USER]: PASSWORD }),
      logger,
      hostname: 'imap.test',
      allowPlaintextAuth: false,
      limits: { appendStreamThreshold: 1000, literalHighWater: 256 },
    });
    servers.push(server);
    const port = await server.listen(0, '127.0.0.1');
    const socket = net.connect(port, '127.0.0.1');
    sockets.push(socket);
    const wire = new Wire(socket);
    await wire.line();
    await transcript(wire, `C: a LOGIN ${USER} ${PASSWORD}\nS: a OK …`);
    const body = Buffer.from(`Subject: big\r\n\r\n${'0123456789'.repeat(500)}\r\n`);
    wire.send(`b APPEND INBOX (\\Seen) {${body.length}}`);
    assert.match(await wire.line(), /^\+ /);
    // In odd chunks, as a slow client would send it.
    for (let i = 0; i < body.length; i += 777) wire.send(body.subarray(i, i + 777));
    wire.send('');
    assert.match(await wire.line(), /^b OK \[APPENDUID \d+ 1\] APPEND completed$/);
    const { messages } = await store.messages(USER, 'INBOX');
    assert.deepEqual(await store.readBody(messages[0]?.blob ?? ''), body);
    assert.deepEqual(messages[0]?.flags, ['\\Seen']);
    // The same, but the line goes on with garbage after the literal: BAD, and nothing stays.
    wire.send(`c APPEND INBOX {${body.length}+}`);
    wire.send(body);
    wire.send(' FROB');
    assert.match(await wire.line(), /^c BAD /);
    await transcript(wire, 'C: d STATUS INBOX (MESSAGES)\nS: * STATUS "INBOX" (MESSAGES 1)\nS: d OK …');
    // Into a mailbox that does not exist: TRYCREATE once the literal has been read.
    wire.send(`e APPEND Nowhere {${body.length}+}`);
    wire.send(body);
    wire.send('');
    assert.equal(await wire.line(), 'e NO [TRYCREATE] No such mailbox');
  });
});

describe('RFC 4978 COMPRESS=DEFLATE', () => {
  it('compresses both ways after the tagged OK, once per connection', async () => {
    const { login } = await setup();
    const wire = await login();
    await transcript(wire, 'C: z1 COMPRESS GZIP\nS: z1 BAD Unknown compression mechanism');
    await transcript(wire, 'C: z2 COMPRESS DEFLATE\nS: z2 OK DEFLATE active');
    const socket = wire.socket;
    socket.removeAllListeners('data');
    const deflate = zlib.createDeflateRaw();
    const inflate = zlib.createInflateRaw();
    deflate.on('data', (chunk: Buffer) => socket.write(chunk));
    socket.on('data', (chunk: Buffer) => inflate.write(chunk));
    let text = '';
    inflate.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    const say = (line: string): void => {
      deflate.write(`${line}\r\n`);
      deflate.flush(zlib.constants.Z_SYNC_FLUSH);
    };
    say('z3 CAPABILITY');
    await until('the compressed answer', async () => text.includes('z3 OK'));
    assert.match(text, /^\* CAPABILITY [^\r]*ENABLE/);
    assert.doesNotMatch(text, /COMPRESS=DEFLATE/);
    say('z4 COMPRESS DEFLATE');
    await until('the refusal', async () => text.includes('z4 '));
    assert.match(text, /z4 NO \[COMPRESSIONACTIVE\] Compression is already active\r\n$/);
  });
});

describe('RFC 5256 SORT and THREAD=ORDEREDSUBJECT, RFC 5957 DISPLAYFROM', () => {
  it('sorts on base subjects, dates, addresses and display names; threads by subject', async () => {
    const { store, login } = await setup();
    const put = (from: string, subject: string, date: string | null, day: number): Promise<number> =>
      store.deliver(
        USER,
        `From: ${from}\r\nSubject: ${subject}\r\n${date ? `Date: ${date}\r\n` : ''}\r\nbody\r\n`,
        { internalDate: Date.UTC(2024, 4, day) },
      );
    await put('"Zed" <zed@example.org>', 'Re: hello', 'Thu, 2 May 2024 10:00:00 +0000', 2);
    await put('alice@example.org', '[list] Hello (fwd)', 'Wed, 1 May 2024 10:00:00 +0000', 1);
    await put('"Xavier" <bob@example.org>', 'another', 'Fri, 3 May 2024 10:00:00 +0000', 3);
    await put('carol@example.org', 'Fwd: Re: [x] hello', null, 4);
    const wire = await login();
    wire.send('s SELECT INBOX');
    await wire.until('s');
    await transcript(
      wire,
      `
      C: a1 SORT (SUBJECT) UTF-8 ALL
      S: * SORT 3 1 2 4
      S: a1 OK SORT completed
      C: a2 SORT (REVERSE DATE) UTF-8 ALL
      S: * SORT 4 3 1 2
      S: a2 OK SORT completed
      C: a3 SORT (FROM) US-ASCII ALL
      S: * SORT 2 3 4 1
      S: a3 OK SORT completed
      C: a4 SORT (DISPLAYFROM) UTF-8 ALL
      S: * SORT 2 4 3 1
      S: a4 OK SORT completed
      C: a5 UID SORT (ARRIVAL) UTF-8 SUBJECT hello
      S: * SORT 2 1 4
      S: a5 OK SORT completed
      C: a6 THREAD ORDEREDSUBJECT UTF-8 ALL
      S: * THREAD (2 (1)(4))(3)
      S: a6 OK THREAD completed
      C: a7 THREAD ORDEREDSUBJECT UTF-8 SUBJECT another
      S: * THREAD (3)
      S: a7 OK THREAD completed
      C: a8 THREAD REFERENCES UTF-8 ALL
      S: a8 NO [CANNOT] Unsupported threading algorithm
      C: a9 SORT (FROB) UTF-8 ALL
      S: a9 BAD Unknown sort key FROB
      C: a10 SORT (SUBJECT) KOI8-R ALL
      S: a10 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset
      `,
    );
  });
});
