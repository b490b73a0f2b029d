/**
 * IMAP sessions over a real listener on a free port, as C:/S: transcripts named after the RFC
 * sections they exercise. Storage is the in-memory MailboxClient.
 *
 * In S: lines `…` stands for any text (UIDVALIDITY values, dates).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { after, afterEach, describe, it } from 'node:test';
import { pino } from 'pino';
import { MailboxError } from '../../services/core/mailbox-api.ts';
import type { ImapLimits } from '../../services/imap/limits.ts';
import { createImapServer } from '../../services/imap/server.ts';
import type { ImapServer, ImapServerOptions } from '../../services/imap/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../helpers/memory-mailbox.ts';

const logger = pino({ level: 'silent' });
const USER = 'bob@example.com';
const PASSWORD = 'secret';

/** A raw IMAP connection reading CRLF lines. */
class Wire {
  socket: net.Socket;
  #buffer = Buffer.alloc(0);
  #wake: (() => void) | null = null;
  #ended = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
    this.#listen(socket);
  }

  #listen(socket: net.Socket): void {
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

  static open(port: number, host = '127.0.0.1'): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, host, () => resolve(new Wire(socket)));
      socket.once('error', reject);
    });
  }

  /** Switches to TLS on the same connection (after STARTTLS). */
  async upgrade(): Promise<void> {
    const raw = this.socket;
    raw.removeAllListeners('data');
    const secure = tls.connect({ socket: raw, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.#listen(secure);
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  send(line: string): void {
    this.write(`${line}\r\n`);
  }

  async #waitFor<T>(take: () => T | null, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = take();
      if (value !== null) return value;
      if (this.#ended)
        throw new Error(`connection closed; unread: ${JSON.stringify(this.#buffer.toString('latin1'))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; unread: ${JSON.stringify(this.#buffer.toString('latin1'))}`);
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

  /** The next line, without its CRLF. */
  line(timeoutMs = 3000): Promise<string> {
    return this.#waitFor(() => {
      const end = this.#buffer.indexOf('\r\n');
      if (end < 0) return null;
      const text = this.#buffer.subarray(0, end).toString('utf8');
      this.#buffer = this.#buffer.subarray(end + 2);
      return text;
    }, timeoutMs);
  }

  /** Lines up to and including the tagged response of `tag`. */
  async until(tag: string): Promise<string[]> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.line();
      lines.push(line);
      if (line.startsWith(`${tag} `)) return lines;
    }
  }

  /** Nothing more arrives for a while. */
  async silent(ms = 100): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    assert.equal(this.#buffer.toString('latin1'), '', 'unexpected output');
  }

  /** Resolves true once the server has closed the connection. */
  closed(timeoutMs = 3000): Promise<boolean> {
    return this.#waitFor(() => (this.#ended ? true : null), timeoutMs);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Runs a C:/S: transcript: C: lines are sent, S: lines must come back in order. */
async function transcript(wire: Wire, script: string): Promise<void> {
  for (const raw of script.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('C: ')) {
      wire.send(line.slice(3));
    } else if (line === 'S:' || line.startsWith('S: ')) {
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

interface Setup {
  store: MemoryMailbox;
  server: ImapServer;
  port: number;
  open(): Promise<Wire>;
  /** A connection that is logged in (greeting and LOGIN consumed). */
  login(): Promise<Wire>;
  /** Logged in with INBOX selected. */
  select(readOnly?: boolean): Promise<Wire>;
}

const servers: ImapServer[] = [];
const wires: Wire[] = [];

afterEach(async () => {
  for (const wire of wires.splice(0)) wire.close();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function setup(
  options: Partial<ImapServerOptions> & { limits?: Partial<ImapLimits> } = {},
  host = '127.0.0.1',
): Promise<Setup> {
  const store = (options.mailbox as MemoryMailbox | undefined) ?? new MemoryMailbox();
  const server = createImapServer({
    mailbox: store,
    auth: new MemoryAuthenticator({ [USER]: PASSWORD }),
    logger,
    hostname: 'imap.test',
    allowPlaintextAuth: false,
    ...options,
  });
  servers.push(server);
  const port = await server.listen(0, host);
  const open = async (): Promise<Wire> => {
    const wire = await Wire.open(port, host);
    wires.push(wire);
    return wire;
  };
  const login = async (): Promise<Wire> => {
    const wire = await open();
    await wire.line();
    wire.send(`L1 LOGIN ${USER} ${PASSWORD}`);
    const lines = await wire.until('L1');
    assert.match(lines[lines.length - 1] ?? '', /^L1 OK/);
    return wire;
  };
  const select = async (readOnly = false): Promise<Wire> => {
    const wire = await login();
    wire.send(`S1 ${readOnly ? 'EXAMINE' : 'SELECT'} INBOX`);
    const lines = await wire.until('S1');
    assert.match(lines[lines.length - 1] ?? '', /^S1 OK/);
    return wire;
  };
  return { store, server, port, open, login, select };
}

const MSG1 =
  'From: Alice <alice@example.com>\nTo: bob@example.com\nSubject: first\nDate: Mon, 6 May 2024 09:00:00 +0000\n\nHello Bob\n';
const MSG2 =
  'From: carol@example.org\nSubject: =?UTF-8?B?w6ljbGFpcg==?=\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nsecond part one\n--x\nContent-Type: text/plain\n\npart two\n--x--\n';

async function deliverTwo(store: MemoryMailbox): Promise<void> {
  await store.deliver(USER, MSG1, { internalDate: Date.UTC(2024, 4, 6, 9) });
  await store.deliver(USER, MSG2, { internalDate: Date.UTC(2024, 4, 7, 9), flags: ['\\Seen'] });
}

describe('RFC 9051 6.1: any state', () => {
  it('greets with capabilities, answers CAPABILITY, NOOP and LOGOUT', async () => {
    const { open } = await setup();
    const wire = await open();
    await transcript(
      wire,
      `
      S: * OK [CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL+ ID IDLE NAMESPACE UIDPLUS MOVE UNSELECT ENABLE SPECIAL-USE CHILDREN] imap.test Postino IMAP4rev1 ready
      C: a001 CAPABILITY
      S: * CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL+ ID IDLE NAMESPACE UIDPLUS MOVE UNSELECT ENABLE SPECIAL-USE CHILDREN
      S: a001 OK CAPABILITY completed
      C: a002 NOOP
      S: a002 OK NOOP completed
      C: a003 ID ("name" "test")
      S: * ID ("name" "Postino" "vendor" "Postino")
      S: a003 OK ID completed
      C: a004 LOGOUT
      S: * BYE imap.test logging out
      S: a004 OK LOGOUT completed
      `,
    );
    assert.equal(await wire.closed(), true);
  });

  it('refuses commands that need another state with BAD', async () => {
    const { open } = await setup();
    const wire = await open();
    await wire.line();
    await transcript(
      wire,
      `
      C: a1 SELECT INBOX
      S: a1 BAD SELECT needs authentication
      C: a2 FETCH 1 FLAGS
      S: a2 BAD FETCH needs authentication
      C: a3 LOGIN ${USER} ${PASSWORD}
      S: a3 OK [CAPABILITY …] Logged in
      C: a4 LOGIN ${USER} ${PASSWORD}
      S: a4 BAD LOGIN is not allowed now
      C: a5 FETCH 1 FLAGS
      S: a5 BAD FETCH needs a selected mailbox
      `,
    );
  });
});

describe('RFC 9051 6.2: authentication', () => {
  it('LOGIN: wrong password is NO [AUTHENTICATIONFAILED], three strikes close', async () => {
    const { open } = await setup();
    const wire = await open();
    await wire.line();
    await transcript(
      wire,
      `
      C: a1 LOGIN ${USER} wrong
      S: a1 NO [AUTHENTICATIONFAILED] Invalid credentials
      C: a2 LOGIN nobody@example.com x
      S: a2 NO [AUTHENTICATIONFAILED] Invalid credentials
      C: a3 LOGIN ${USER} "also wrong"
      S: a3 NO [AUTHENTICATIONFAILED] Invalid credentials
      S: * BYE Too many authentication failures
      `,
    );
    assert.equal(await wire.closed(), true);
  });

  it('AUTHENTICATE PLAIN with SASL-IR and with a continuation, LOGIN, and cancel', async () => {
    const { open } = await setup();
    const plain = Buffer.from(`\0${USER}\0${PASSWORD}`).toString('base64');
    const wire = await open();
    await wire.line();
    await transcript(
      wire,
      `
      C: a1 AUTHENTICATE PLAIN ${plain}
      S: a1 OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ ID IDLE NAMESPACE UIDPLUS MOVE UNSELECT ENABLE SPECIAL-USE CHILDREN COMPRESS=DEFLATE LIST-EXTENDED LIST-STATUS ESEARCH SEARCHRES CONDSTORE QRESYNC MULTIAPPEND APPENDLIMIT=52428800 BINARY UTF8=ACCEPT QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE STATUS=SIZE SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT] Logged in
      `,
    );
    const second = await open();
    await second.line();
    await transcript(
      second,
      `
      C: b1 AUTHENTICATE PLAIN
      S: +
      C: *
      S: b1 BAD Authentication cancelled
      C: b2 AUTHENTICATE PLAIN
      S: +
      C: not base64!
      S: b2 BAD Invalid base64
      C: b3 AUTHENTICATE CRAM-MD5
      S: b3 NO [CANNOT] Unsupported mechanism CRAM-MD5
      C: b4 AUTHENTICATE PLAIN ${Buffer.from(`other\0${USER}\0${PASSWORD}`).toString('base64')}
      S: b4 NO [AUTHORIZATIONFAILED] Authorization identity refused
      C: b5 AUTHENTICATE LOGIN
      S: + VXNlcm5hbWU6
      C: ${Buffer.from(USER).toString('base64')}
      S: + UGFzc3dvcmQ6
      C: ${Buffer.from(PASSWORD).toString('base64')}
      S: b5 OK [CAPABILITY …] Logged in
      `,
    );
  });

  it('refuses passwords in the clear from a non-loopback peer: LOGINDISABLED, NO [PRIVACYREQUIRED]', async () => {
    // The peer is on loopback (tests send traffic nowhere else) but is not trusted as secure.
    const strict = await setup({ trustedPeer: () => false });
    const wire = await strict.open();
    await transcript(
      wire,
      `
      S: * OK [CAPABILITY IMAP4rev1 IMAP4rev2 LOGINDISABLED SASL-IR LITERAL+ …] imap.test Postino IMAP4rev1 ready
      C: a1 LOGIN ${USER} ${PASSWORD}
      S: a1 NO [PRIVACYREQUIRED] Use STARTTLS or TLS first
      C: a2 AUTHENTICATE PLAIN ${Buffer.from(`\0${USER}\0${PASSWORD}`).toString('base64')}
      S: a2 NO [PRIVACYREQUIRED] Use STARTTLS or TLS first
      `,
    );
    const relaxed = await setup({ allowPlaintextAuth: true, trustedPeer: () => false });
    const other = await relaxed.open();
    await transcript(
      other,
      `
      S: * OK [CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN …] …
      C: a1 LOGIN ${USER} ${PASSWORD}
      S: a1 OK [CAPABILITY …] Logged in
      `,
    );
  });

  it('STARTTLS: negotiates TLS, drops injected plaintext, then allows login', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'imap-tls-'));
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=imap.test',
        '-keyout',
        path.join(dir, 'key.pem'),
        '-out',
        path.join(dir, 'cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    const key = readFileSync(path.join(dir, 'key.pem'));
    const cert = readFileSync(path.join(dir, 'cert.pem'));
    rmSync(dir, { recursive: true, force: true });
    const { open } = await setup({ tls: { key, cert }, trustedPeer: () => false });
    const wire = await open();
    const greeting = await wire.line();
    assert.match(greeting, / STARTTLS /);
    // RFC 9051 6.2.1: the command pipelined after STARTTLS must not be executed.
    wire.write('a1 STARTTLS\r\na2 CAPABILITY\r\n');
    assert.equal(await wire.line(), 'a1 OK Begin TLS negotiation now');
    await wire.upgrade();
    await transcript(
      wire,
      `
      C: a3 CAPABILITY
      S: * CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN SASL-IR LITERAL+ ID IDLE NAMESPACE UIDPLUS MOVE UNSELECT ENABLE SPECIAL-USE CHILDREN
      S: a3 OK CAPABILITY completed
      C: a4 STARTTLS
      S: a4 BAD TLS is already active
      C: a5 LOGIN ${USER} ${PASSWORD}
      S: a5 OK [CAPABILITY …] Logged in
      `,
    );
  });
});

describe('RFC 9051 6.3: mailboxes', () => {
  it('SELECT and EXAMINE report the mailbox (6.3.2, 6.3.3)', async () => {
    const { store, login } = await setup();
    await deliverTwo(store);
    await store.storeFlags(USER, 'INBOX', [1], 'add', ['$Work']);
    const wire = await login();
    await transcript(
      wire,
      `
      C: A142 SELECT INBOX
      S: * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)
      S: * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted
      S: * 2 EXISTS
      S: * 2 RECENT
      S: * OK [UNSEEN 1] First unseen
      S: * OK [UIDVALIDITY …] UIDs valid
      S: * OK [UIDNEXT 3] Predicted next UID
      S: * OK [HIGHESTMODSEQ …] Highest
      S: A142 OK [READ-WRITE] SELECT completed
      C: A143 EXAMINE inbox
      S: * OK [CLOSED] Previous mailbox closed
      S: * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)
      S: * OK [PERMANENTFLAGS ()] Flags permitted
      S: * 2 EXISTS
      S: * 0 RECENT
      S: * OK [UNSEEN 1] First unseen
      S: * OK [UIDVALIDITY …] UIDs valid
      S: * OK [UIDNEXT 3] Predicted next UID
      S: * OK [HIGHESTMODSEQ …] Highest
      S: A143 OK [READ-ONLY] EXAMINE completed
      C: A144 SELECT Nowhere
      S: * OK [CLOSED] Previous mailbox closed
      S: A144 NO [NONEXISTENT] No such folder: Nowhere
      C: A145 FETCH 1 FLAGS
      S: A145 BAD FETCH needs a selected mailbox
      `,
    );
  });

  it('CREATE, LIST with children and special use, RENAME, DELETE, SUBSCRIBE, LSUB, STATUS', async () => {
    const { store, login } = await setup();
    await deliverTwo(store);
    const wire = await login();
    await transcript(
      wire,
      `
      C: a1 CREATE Work/2024/
      S: a1 OK CREATE completed
      C: a2 CREATE Work/2024
      S: a2 NO [ALREADYEXISTS] Folder exists: Work/2024
      C: a3 CREATE inbox
      S: a3 NO [ALREADYEXISTS] INBOX always exists
      C: a4 CREATE &AMk-t&AOk-
      S: a4 OK CREATE completed
      C: a5 LIST "" *
      S: * LIST (\\HasNoChildren) "/" "INBOX"
      S: * LIST (\\HasNoChildren \\Drafts) "/" "Drafts"
      S: * LIST (\\HasNoChildren \\Junk) "/" "Junk"
      S: * LIST (\\HasNoChildren \\Sent) "/" "Sent"
      S: * LIST (\\HasNoChildren \\Trash) "/" "Trash"
      S: * LIST (\\HasNoChildren) "/" "Work/2024"
      S: * LIST (\\HasNoChildren) "/" "&AMk-t&AOk-"
      S: a5 OK LIST completed
      C: a6 LIST "" %
      S: * LIST (\\HasNoChildren) "/" "INBOX"
      S: * LIST (\\HasNoChildren \\Drafts) "/" "Drafts"
      S: * LIST (\\HasNoChildren \\Junk) "/" "Junk"
      S: * LIST (\\HasNoChildren \\Sent) "/" "Sent"
      S: * LIST (\\HasNoChildren \\Trash) "/" "Trash"
      S: * LIST (\\HasNoChildren) "/" "&AMk-t&AOk-"
      S: * LIST (\\Noselect \\HasChildren) "/" "Work"
      S: a6 OK LIST completed
      C: a7 LIST "" ""
      S: * LIST (\\Noselect) "/" ""
      S: a7 OK LIST completed
      C: a8 CREATE Work
      S: a8 OK CREATE completed
      C: a9 LIST Work *
      S: * LIST (\\HasChildren) "/" "Work"
      S: * LIST (\\HasNoChildren) "/" "Work/2024"
      S: a9 OK LIST completed
      C: b1 RENAME Work/2024 Work/2025
      S: b1 OK RENAME completed
      C: b2 RENAME Nowhere Else
      S: b2 NO [NONEXISTENT] No such folder: Nowhere
      C: b3 UNSUBSCRIBE Trash
      S: b3 OK UNSUBSCRIBE completed
      C: b4 LSUB "" T*
      S: b4 OK LSUB completed
      C: b5 LSUB "" W*
      S: * LSUB () "/" "Work"
      S: * LSUB () "/" "Work/2025"
      S: b5 OK LSUB completed
      C: b6 DELETE Work/2025
      S: b6 OK DELETE completed
      C: b7 DELETE INBOX
      S: b7 NO [CANNOT] INBOX cannot be deleted
      C: b8 STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE)
      S: * STATUS "INBOX" (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY … UNSEEN 1 DELETED 0 SIZE ${
        Buffer.byteLength(MSG1.replace(/\n/g, '\r\n')) + Buffer.byteLength(MSG2.replace(/\n/g, '\r\n'))
      })
      S: b8 OK STATUS completed
      C: b9 STATUS INBOX (FROB)
      S: b9 BAD Unknown status item FROB
      C: c1 NAMESPACE
      S: * NAMESPACE (("" "/")) NIL NIL
      S: c1 OK NAMESPACE completed
      C: c2 ENABLE CONDSTORE
      S: * ENABLED CONDSTORE
      S: c2 OK ENABLE completed
      `,
    );
  });

  it('APPEND with a synchronising literal, APPENDUID, TRYCREATE, TOOBIG', async () => {
    const { select } = await setup({ limits: { maxLiteralBytes: 1000 } });
    const wire = await select();
    const message = 'Subject: appended\r\n\r\nhi\r\n';
    wire.send(`a1 APPEND INBOX (\\Seen $Later) " 5-Jan-2024 10:00:00 +0100" {${message.length}}`);
    assert.equal(await wire.line(), '+ Ready for literal data');
    wire.write(`${message}\r\n`);
    await transcript(
      wire,
      `
      S: * 1 EXISTS
      S: * 1 RECENT
      S: a1 OK [APPENDUID … 1] APPEND completed
      C: a2 FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)
      S: * 1 FETCH (FLAGS (\\Seen $Later \\Recent) INTERNALDATE "05-Jan-2024 09:00:00 +0000" RFC822.SIZE ${message.length})
      S: a2 OK FETCH completed
      C: a3 APPEND Nowhere {3+}
      C: abc
      S: a3 NO [TRYCREATE] No such mailbox
      C: a4 APPEND INBOX {5000}
      S: a4 NO [TOOBIG] Message too large
      C: a5 APPEND INBOX (\\Bogus) {3+}
      C: abc
      S: a5 BAD Invalid flag \\Bogus
      C: a6 NOOP
      S: a6 OK NOOP completed
      `,
    );
  });
});

describe('RFC 9051 6.4: messages', () => {
  it('FETCH items, sections, partials and the implicit \\Seen (6.4.5)', async () => {
    const { store, select } = await setup();
    await deliverTwo(store);
    const wire = await select();
    const msg1 = MSG1.replace(/\n/g, '\r\n');
    await transcript(
      wire,
      `
      C: f1 FETCH 1 (UID RFC822.SIZE INTERNALDATE ENVELOPE)
      S: * 1 FETCH (UID 1 RFC822.SIZE ${msg1.length} INTERNALDATE "06-May-2024 09:00:00 +0000" ENVELOPE ("Mon, 6 May 2024 09:00:00 +0000" "first" (("Alice" NIL "alice" "example.com")) (("Alice" NIL "alice" "example.com")) (("Alice" NIL "alice" "example.com")) ((NIL NIL "bob" "example.com")) NIL NIL NIL NIL))
      S: f1 OK FETCH completed
      C: f2 FETCH 1 BODY.PEEK[HEADER.FIELDS (Subject)]
      S: * 1 FETCH (BODY[HEADER.FIELDS (Subject)] {18}
      S: Subject: first
      S:
      S: )
      S: f2 OK FETCH completed
      C: f3 FETCH 1 (FLAGS BODY.PEEK[TEXT]<0.5>)
      S: * 1 FETCH (FLAGS (\\Recent) BODY[TEXT]<0> {5}
      S: Hello)
      S: f3 OK FETCH completed
      C: f4 FETCH 1 BODY[TEXT]
      S: * 1 FETCH (BODY[TEXT] {11}
      S: Hello Bob
      S:  FLAGS (\\Seen \\Recent))
      S: f4 OK FETCH completed
      C: f5 UID FETCH 2 (BODY.PEEK[2] BODY.PEEK[1.MIME] BODYSTRUCTURE)
      S: * 2 FETCH (UID 2 BODY[2] {8}
      S: part two BODY[1.MIME] {28}
      S: Content-Type: text/plain
      S:
      S:  BODYSTRUCTURE (("TEXT" "PLAIN" NIL NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)("TEXT" "PLAIN" NIL NIL NIL "7BIT" 8 1 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "x") NIL NIL NIL))
      S: f5 OK FETCH completed
      C: f6 FETCH 3 FLAGS
      S: f6 BAD Invalid message sequence number
      C: f7 UID FETCH 3:* FLAGS
      S: * 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))
      S: f7 OK FETCH completed
      C: f8 UID FETCH 5,7 FLAGS
      S: f8 OK FETCH completed
      C: f9 FETCH 1:* fast
      S: * 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE "06-May-2024 09:00:00 +0000" RFC822.SIZE ${msg1.length})
      S: * 2 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE "07-May-2024 09:00:00 +0000" RFC822.SIZE …)
      S: f9 OK FETCH completed
      C: g1 FETCH 1 RFC822.HEADER
      S: * 1 FETCH (RFC822.HEADER {…}
      `,
    );
  });

  it('EXAMINE never sets \\Seen; BODY[] streams the whole message', async () => {
    const { store, select } = await setup();
    await deliverTwo(store);
    const wire = await select(true);
    const msg1 = MSG1.replace(/\n/g, '\r\n');
    wire.send('f1 FETCH 1 BODY[]');
    assert.equal(await wire.line(), `* 1 FETCH (BODY[] {${msg1.length}}`);
    const lines: string[] = [];
    for (let i = 0; i < msg1.split('\r\n').length; i++) lines.push(await wire.line());
    assert.equal(lines.join('\r\n'), `${msg1})`);
    await transcript(
      wire,
      `
      S: f1 OK FETCH completed
      C: f2 FETCH 1 FLAGS
      S: * 1 FETCH (FLAGS (\\Recent))
      S: f2 OK FETCH completed
      C: f3 STORE 1 +FLAGS (\\Seen)
      S: f3 NO [CANNOT] Mailbox is read-only
      `,
    );
  });

  it('BINARY (RFC 3516), BODY and RFC822, which sets \\Seen', async () => {
    const { store, select } = await setup();
    await store.deliver(
      USER,
      'Content-Type: multipart/mixed; boundary=y\n\n--y\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nSGVsbG8=\n--y--\n',
    );
    const wire = await select();
    await transcript(
      wire,
      `
      C: b1 FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1] BODY)
      S: * 1 FETCH (BINARY[1] {5}
      S: Hello BINARY.SIZE[1] 5 BODY (("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 8) "MIXED"))
      S: b1 OK FETCH completed
      C: b2 FETCH 1 (FLAGS RFC822)
      S: * 1 FETCH (FLAGS (\\Seen \\Recent) RFC822 {…}
      `,
    );
  });

  it('STORE (6.4.6) with +FLAGS, -FLAGS, FLAGS, .SILENT and UID STORE', async () => {
    const { store, select } = await setup();
    await deliverTwo(store);
    const wire = await select();
    await transcript(
      wire,
      `
      C: s1 STORE 1:2 +FLAGS (\\Deleted)
      S: * 1 FETCH (FLAGS (\\Deleted \\Recent))
      S: * 2 FETCH (FLAGS (\\Seen \\Deleted \\Recent))
      S: s1 OK STORE completed
      C: s2 STORE 2 -FLAGS \\Deleted
      S: * 2 FETCH (FLAGS (\\Seen \\Recent))
      S: s2 OK STORE completed
      C: s3 UID STORE 1 FLAGS.SILENT ($Todo \\Flagged)
      S: s3 OK STORE completed
      C: s4 UID STORE 1 FLAGS (\\Recent)
      S: * 1 FETCH (UID 1 FLAGS (\\Recent))
      S: s4 OK STORE completed
      C: s5 STORE 1 +FLAGS (\\Frob)
      S: s5 BAD Invalid flag \\Frob
      C: s6 STORE 9 +FLAGS (\\Seen)
      S: s6 BAD Invalid message sequence number
      `,
    );
  });

  it('SEARCH (6.4.4) by flags, sizes, dates, headers, body and UID', async () => {
    const { store, select } = await setup();
    await deliverTwo(store);
    await store.deliver(USER, 'Subject: third\nX-Spam: yes\n\nThe BODY mentions Zebra\n', {
      internalDate: Date.UTC(2024, 4, 8, 23, 59),
      flags: ['\\Flagged'],
    });
    const wire = await select();
    await transcript(
      wire,
      `
      C: q1 SEARCH ALL
      S: * SEARCH 1 2 3
      S: q1 OK SEARCH completed
      C: q2 SEARCH UNSEEN
      S: * SEARCH 1 3
      S: q2 OK SEARCH completed
      C: q3 SEARCH FLAGGED NOT SEEN
      S: * SEARCH 3
      S: q3 OK SEARCH completed
      C: q4 SEARCH OR FROM alice SUBJECT éclair
      S: q4 BAD …
      C: q5 SEARCH CHARSET UTF-8 OR FROM alice SUBJECT {7+}
      C: éclair
      S: * SEARCH 1 2
      S: q5 OK SEARCH completed
      C: q6 SEARCH SINCE 7-May-2024 BEFORE 8-May-2024
      S: * SEARCH 2
      S: q6 OK SEARCH completed
      C: q7 SEARCH ON 8-May-2024
      S: * SEARCH 3
      S: q7 OK SEARCH completed
      C: q8 SEARCH SENTON 6-May-2024
      S: * SEARCH 1
      S: q8 OK SEARCH completed
      C: q9 SEARCH HEADER X-Spam ""
      S: * SEARCH 3
      S: q9 OK SEARCH completed
      C: r1 SEARCH BODY zebra
      S: * SEARCH 3
      S: r1 OK SEARCH completed
      C: r2 SEARCH TEXT "part two"
      S: * SEARCH 2
      S: r2 OK SEARCH completed
      C: r3 UID SEARCH 2:* LARGER 10
      S: * SEARCH 2 3
      S: r3 OK SEARCH completed
      C: r4 SEARCH SMALLER 10
      S: * SEARCH
      S: r4 OK SEARCH completed
      C: r5 SEARCH (OR 1 3) NEW
      S: * SEARCH 1 3
      S: r5 OK SEARCH completed
      C: r6 SEARCH UID 3 OLD
      S: * SEARCH
      S: r6 OK SEARCH completed
      C: r7 SEARCH KEYWORD $Nope
      S: * SEARCH
      S: r7 OK SEARCH completed
      C: r8 SEARCH CHARSET KOI8-R ALL
      S: r8 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset
      `,
    );
  });

  it('EXPUNGE, UID EXPUNGE (RFC 4315) and CLOSE', async () => {
    const { store, select } = await setup();
    for (let i = 0; i < 5; i++) await store.deliver(USER, MSG1);
    const wire = await select();
    await transcript(
      wire,
      `
      C: e1 STORE 2:4 +FLAGS.SILENT (\\Deleted)
      S: e1 OK STORE completed
      C: e2 UID EXPUNGE 3:4
      S: * 3 EXPUNGE
      S: * 3 EXPUNGE
      S: e2 OK EXPUNGE completed
      C: e3 FETCH 1:* UID
      S: * 1 FETCH (UID 1)
      S: * 2 FETCH (UID 2)
      S: * 3 FETCH (UID 5)
      S: e3 OK FETCH completed
      C: e4 STORE 3 +FLAGS.SILENT (\\Deleted)
      S: e4 OK STORE completed
      C: e5 EXPUNGE
      S: * 2 EXPUNGE
      S: * 2 EXPUNGE
      S: e5 OK EXPUNGE completed
      C: e6 STORE 1 +FLAGS.SILENT (\\Deleted)
      S: e6 OK STORE completed
      C: e7 CLOSE
      S: e7 OK CLOSE completed
      C: e8 STATUS INBOX (MESSAGES)
      S: * STATUS "INBOX" (MESSAGES 0)
      S: e8 OK STATUS completed
      `,
    );
  });

  it('COPY with COPYUID, MOVE (RFC 6851), UNSELECT', async () => {
    const { store, select } = await setup();
    await deliverTwo(store);
    const wire = await select();
    await transcript(
      wire,
      `
      C: c1 COPY 1:2 Trash
      S: c1 OK [COPYUID … 1:2 1:2] COPY completed
      C: c2 UID COPY 2 Nowhere
      S: c2 NO [TRYCREATE] No such mailbox
      C: c3 COPY 1 INBOX
      S: * 3 EXISTS
      S: * 3 RECENT
      S: c3 OK [COPYUID … 1 3] COPY completed
      C: c4 UID MOVE 2:3 Junk
      S: * OK [COPYUID … 2:3 1:2] Moved
      S: * 2 EXPUNGE
      S: * 2 EXPUNGE
      S: c4 OK MOVE completed
      C: c5 UNSELECT
      S: c5 OK UNSELECT completed
      C: c6 STATUS Junk (MESSAGES)
      S: * STATUS "Junk" (MESSAGES 2)
      S: c6 OK STATUS completed
      `,
    );
  });
});

describe('RFC 9051 7.5.1: changes from other sessions', () => {
  it('reports flags and expunges on NOOP, never EXPUNGE during FETCH, STORE or SEARCH', async () => {
    const { store, select } = await setup();
    for (let i = 0; i < 3; i++) await store.deliver(USER, MSG1);
    const a = await select();
    const b = await select();
    await transcript(
      b,
      `
      C: b1 STORE 2 +FLAGS (\\Flagged)
      S: * 2 FETCH (FLAGS (\\Flagged))
      S: b1 OK STORE completed
      `,
    );
    await transcript(
      a,
      `
      C: a1 NOOP
      S: * 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))
      S: a1 OK NOOP completed
      `,
    );
    await transcript(
      b,
      `
      C: b2 STORE 1 +FLAGS.SILENT (\\Deleted)
      S: b2 OK STORE completed
      C: b3 EXPUNGE
      S: * 1 EXPUNGE
      S: b3 OK EXPUNGE completed
      `,
    );
    await store.deliver(USER, MSG1);
    await new Promise((resolve) => setImmediate(resolve));
    // A still numbers the messages as it knows them: 1 is there until EXPUNGE is reported.
    await transcript(
      a,
      `
      C: a2 FETCH 1:* UID
      S: * 2 FETCH (UID 2)
      S: * 3 FETCH (UID 3)
      S: * 4 EXISTS
      S: * 4 RECENT
      S: a2 OK FETCH completed
      C: a3 SEARCH ALL
      S: * SEARCH 2 3 4
      S: a3 OK SEARCH completed
      C: a4 NOOP
      S: * 1 EXPUNGE
      S: a4 OK NOOP completed
      C: a5 FETCH 1 UID
      S: * 1 FETCH (UID 2)
      S: a5 OK FETCH completed
      `,
    );
  });

  it('FETCH of flags answered again and again shows every change another session made (RFC 7162 MODSEQ too)', async () => {
    const { store, select } = await setup();
    for (let i = 0; i < 3; i++) await store.deliver(USER, MSG1);
    const a = await select();
    const b = await select();
    const fetchAll = async (tag: string): Promise<string[]> => {
      a.send(`${tag} FETCH 1:* (UID FLAGS MODSEQ)`);
      const lines = await a.until(tag);
      assert.match(lines.at(-1) ?? '', new RegExp(`^${tag} OK`));
      return lines.slice(0, -1);
    };
    const first = await fetchAll('a1');
    assert.equal(first.length, 3);
    // Nothing changed: the same answer (from what the session knows, once the store says so).
    assert.deepEqual(await fetchAll('a2'), first);
    assert.deepEqual(await fetchAll('a3'), first);
    await transcript(
      b,
      `
      C: b1 STORE 2 +FLAGS.SILENT (\\Flagged)
      S: b1 OK STORE completed
      `,
    );
    const after = await fetchAll('a4');
    const line = after.find((l) => l.startsWith('* 2 FETCH')) ?? '';
    assert.match(line, /^\* 2 FETCH \(UID 2 FLAGS \(\\Flagged \\Recent\) MODSEQ \((\d+)\)\)$/);
    const modseq = Number(/MODSEQ \((\d+)\)/.exec(line)?.[1]);
    const before = Number(/MODSEQ \((\d+)\)/.exec(first[1] ?? '')?.[1]);
    assert.ok(modseq > before, `MODSEQ ${modseq} > ${before}`);
    assert.deepEqual(
      after.filter((l) => !l.startsWith('* 2 ')),
      first.filter((l) => !l.startsWith('* 2 ')),
    );
    // And again, with no change: the same, and the change is not reported twice.
    assert.deepEqual(await fetchAll('a5'), after);
    await transcript(
      a,
      `
      C: a6 NOOP
      S: a6 OK NOOP completed
      `,
    );
  });

  it('pushes changes during IDLE (RFC 2177) until DONE', async () => {
    const { store, select } = await setup();
    await store.deliver(USER, MSG1);
    await store.deliver(USER, MSG1);
    const a = await select();
    const b = await select();
    await transcript(
      a,
      `
      C: i1 IDLE
      S: + idling
      `,
    );
    await store.deliver(USER, MSG1);
    await transcript(
      a,
      `
      S: * 3 EXISTS
      S: * 3 RECENT
      `,
    );
    await transcript(
      b,
      `
      C: b1 UID MOVE 1 Trash
      S: * OK [COPYUID … 1 1] Moved
      S: * 1 EXPUNGE
      S: * 2 EXISTS
      S: * 1 RECENT
      S: b1 OK MOVE completed
      `,
    );
    await transcript(
      a,
      `
      S: * 1 EXPUNGE
      C: DONE
      S: i1 OK IDLE terminated
      C: i2 IDLE
      S: + idling
      C: NOPE
      S: i2 BAD Expected DONE
      `,
    );
  });
});

describe('limits and malformed input', () => {
  it('answers garbage with BAD and goes on, also when fed byte by byte', async () => {
    const { open } = await setup();
    const wire = await open();
    await wire.line();
    for (const byte of Buffer.from('x1 NOOP\r\n\r\n+++\r\nx2 FETCH 1 FLAGS\r\nx3 LOGIN "a\r\n')) {
      wire.write(Buffer.from([byte]));
    }
    await transcript(
      wire,
      `
      S: x1 OK NOOP completed
      S: * BAD Expected a tag
      S: * BAD Expected a tag
      S: x2 BAD FETCH needs authentication
      S: x3 BAD Unterminated quoted string
      `,
    );
  });

  it('rejects an over-long line with BAD and keeps the connection', async () => {
    const { open } = await setup({ limits: { maxLineBytes: 200 } });
    const wire = await open();
    await wire.line();
    wire.send(`t1 LOGIN ${'x'.repeat(500)} y`);
    wire.send('t2 NOOP');
    await transcript(
      wire,
      `
      S: t1 BAD Command line too long
      S: t2 OK NOOP completed
      `,
    );
  });

  it('closes on a non-synchronising literal too large to skip, and after too many BADs', async () => {
    const { open } = await setup({ limits: { maxLiteralBytes: 100, maxBadCommands: 3 } });
    const wire = await open();
    await wire.line();
    wire.send('t1 APPEND INBOX {1000000+}');
    assert.match(await wire.line(), /^\* BYE /);
    assert.equal(await wire.closed(), true);
    const other = await open();
    await other.line();
    await transcript(
      other,
      `
      C: a
      S: a BAD Expected a space
      C: b FROB
      S: b BAD Unknown command FROB
      C: c NOOP x
      S: c BAD Unexpected characters at end of command
      S: * BYE Too many invalid commands
      `,
    );
    assert.equal(await other.closed(), true);
  });

  it('turns storage failures into NO with response codes', async () => {
    const { store, login } = await setup({ mailbox: new MemoryMailbox({ quotaBytes: 10 }) });
    const wire = await login();
    store.failNext('messages', new Error('disk on fire'));
    store.failNext('listFolders', new MailboxError('UNAVAILABLE', 'store down'));
    await transcript(
      wire,
      `
      C: a1 SELECT INBOX
      S: a1 NO [UNAVAILABLE] Temporary failure, try again later
      C: a2 LIST "" *
      S: a2 NO [UNAVAILABLE] store down
      C: a3 APPEND INBOX {20+}
      C: 01234567890123456789
      S: a3 NO [OVERQUOTA] Quota exceeded
      C: a4 SELECT INBOX
      S: * FLAGS …
      S: * OK [PERMANENTFLAGS …
      S: * 0 EXISTS
      S: * 0 RECENT
      S: * OK [UIDVALIDITY …
      S: * OK [UIDNEXT 1] Predicted next UID
      S: * OK [HIGHESTMODSEQ …] Highest
      S: a4 OK [READ-WRITE] SELECT completed
      `,
    );
  });
});

describe('output back-pressure', () => {
  /** Counts the body bytes the session has pulled from storage. */
  class CountingMailbox extends MemoryMailbox {
    streamed = 0;
    override async *openBody(blob: string): AsyncIterable<Uint8Array> {
      for await (const chunk of super.openBody(blob)) {
        this.streamed += chunk.length;
        yield chunk;
      }
    }
  }

  it('reads a body from storage only as fast as the client takes it', async () => {
    const store = new CountingMailbox();
    const line = 'x'.repeat(998) + '\r\n';
    const body = Buffer.from('Subject: big\r\n\r\n' + line.repeat(32 * 1024));
    await store.deliver(USER, body);
    const { select } = await setup({ mailbox: store });
    const wire = await select();
    const socket = wire.socket;
    socket.removeAllListeners('data');
    let received = 0;
    let tail = '';
    const done = new Promise<void>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
        tail = (tail + chunk.toString('latin1')).slice(-64);
        if (tail.endsWith('f1 OK FETCH completed\r\n')) resolve();
      });
    });
    socket.pause();
    wire.send('f1 FETCH 1 BODY.PEEK[]');
    await new Promise((resolve) => setTimeout(resolve, 300));
    // The client reads nothing: the session must stop pulling the 32 MB body.
    assert.ok(store.streamed < body.length / 2, `streamed ${store.streamed} of ${body.length}`);
    socket.resume();
    await done;
    assert.equal(store.streamed, body.length);
    assert.ok(received > body.length);
  });
});

describe('shutdown with a stuck client', () => {
  it('closes within the grace period even when a client stopped reading', async () => {
    const store = new MemoryMailbox();
    await store.deliver(
      USER,
      Buffer.from('Subject: big\r\n\r\n' + ('y'.repeat(998) + '\r\n').repeat(16 * 1024)),
    );
    const { server, select } = await setup({ mailbox: store, limits: { shutdownGraceMs: 200 } });
    const wire = await select();
    wire.socket.pause();
    wire.send('f1 FETCH 1 BODY.PEEK[]');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const started = Date.now();
    await server.close();
    assert.ok(Date.now() - started < 2000);
    assert.equal(server.sessions(), 0);
  });
});

describe('RFC 9051 5.4: timers and shutdown', () => {
  it('logs out an inactive session, IDLE included', async () => {
    const { open, select } = await setup({ idleTimeoutMs: 150 });
    const wire = await open();
    await wire.line();
    assert.equal(await wire.line(), '* BYE Autologout; idle for too long');
    assert.equal(await wire.closed(), true);
    const idling = await select();
    idling.send('i1 IDLE');
    assert.equal(await idling.line(), '+ idling');
    assert.equal(await idling.line(), '* BYE Autologout; idle for too long');
    assert.equal(await idling.closed(), true);
  });

  it('says BYE to every session on close()', async () => {
    const { store, server, open, login } = await setup();
    const first = await open();
    await first.line();
    const second = await login();
    assert.equal(server.sessions(), 2);
    assert.equal(store.watcherCount(USER), 1);
    await server.close();
    assert.equal(await first.line(), '* BYE Server shutting down');
    assert.equal(await second.line(), '* BYE Server shutting down');
    assert.equal(await first.closed(), true);
    assert.equal(await second.closed(), true);
    assert.equal(server.sessions(), 0);
    // The change subscription ends with the session.
    assert.equal(store.watcherCount(USER), 0);
  });
});

after(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
