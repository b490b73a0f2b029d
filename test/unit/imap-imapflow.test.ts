/**
 * The IMAP server against a real client, imapflow: the calls the end-to-end test makes, and
 * two concurrent sessions seeing each other's changes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ImapFlow } from 'imapflow';
import { pino } from 'pino';
import { createImapServer } from '../../services/imap/server.ts';
import type { ImapServer } from '../../services/imap/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../helpers/memory-mailbox.ts';
import type { FetchMessageObject } from 'imapflow';
import type { FolderInfo, MessageMeta, MessagesOptions } from '../../services/core/mailbox-api.ts';
import { structureOf } from '../../services/core/mime-structure.ts';

const logger = pino({ level: 'silent' });

const MESSAGE = [
  'From: "Alice Example" <alice@example.com>',
  'To: bob@example.com, "Carol, C." <carol@example.org>',
  'Subject: =?UTF-8?Q?Caf=C3=A9?= meeting',
  'Date: Tue, 14 May 2024 10:00:00 +0200',
  'Message-ID: <m1@example.com>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/alternative; boundary="b1"',
  '',
  '--b1',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'Hello Bob',
  '--b1',
  'Content-Type: text/html; charset=utf-8',
  '',
  '<p>Hello Bob</p>',
  '--b1--',
  '',
].join('\r\n');

function client(port: number, user = 'bob@example.com', pass = 'secret'): ImapFlow {
  return new ImapFlow({
    host: '127.0.0.1',
    port,
    secure: false,
    auth: { user, pass },
    logger: false,
    disableAutoIdle: true,
  });
}

/** Resolves when `check` passes, polling; fails after `ms`. */
async function waitFor(check: () => boolean, ms = 3000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > ms) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('imapflow client', () => {
  let store: MemoryMailbox;
  let server: ImapServer;
  let port: number;

  before(async () => {
    store = new MemoryMailbox();
    server = createImapServer({
      mailbox: store,
      auth: new MemoryAuthenticator({ 'bob@example.com': 'secret' }),
      logger,
      hostname: 'imap.test',
      allowPlaintextAuth: false,
    });
    port = await server.listen(0, '127.0.0.1');
  });

  after(async () => {
    await server.close();
  });

  it('logs in, lists, fetches, flags, deletes and logs out', async () => {
    const uid1 = await store.deliver('bob@example.com', MESSAGE, { internalDate: Date.UTC(2024, 4, 14, 8) });
    const uid2 = await store.deliver('bob@example.com', MESSAGE.replace('m1@', 'm2@'));
    const imap = client(port);
    await imap.connect();
    try {
      const folders = await imap.list();
      const names = folders.map((f) => f.path).sort();
      assert.deepEqual(names, ['Drafts', 'INBOX', 'Junk', 'Sent', 'Trash']);
      assert.equal(folders.find((f) => f.path === 'Sent')?.specialUse, '\\Sent');

      const box = await imap.mailboxOpen('INBOX');
      assert.equal(box.exists, 2);
      assert.equal(typeof box.uidValidity, 'bigint');

      const fetched = [];
      for await (const msg of imap.fetch('1:*', {
        uid: true,
        flags: true,
        envelope: true,
        source: true,
        bodyStructure: true,
        internalDate: true,
        size: true,
      })) {
        fetched.push(msg);
      }
      assert.equal(fetched.length, 2);
      const first = fetched[0];
      assert.ok(first);
      assert.equal(first.uid, uid1);
      assert.equal(first.size, Buffer.byteLength(MESSAGE));
      assert.equal(first.source?.toString(), MESSAGE);
      // imapflow enables IMAP4rev2, which has no \Recent (RFC 9051 2.3.2).
      assert.deepEqual([...(first.flags ?? [])], []);
      assert.equal(first.envelope?.subject, 'Café meeting');
      assert.equal(first.envelope?.messageId, '<m1@example.com>');
      assert.deepEqual(first.envelope?.from, [{ name: 'Alice Example', address: 'alice@example.com' }]);
      assert.deepEqual(first.envelope?.to, [
        { name: '', address: 'bob@example.com' },
        { name: 'Carol, C.', address: 'carol@example.org' },
      ]);
      assert.equal((first.internalDate as Date).toISOString(), '2024-05-14T08:00:00.000Z');
      assert.equal(first.bodyStructure?.type, 'multipart/alternative');
      assert.deepEqual(
        first.bodyStructure?.childNodes?.map((n) => [n.part, n.type]),
        [
          ['1', 'text/plain'],
          ['2', 'text/html'],
        ],
      );

      assert.equal(await imap.messageFlagsAdd(String(uid1), ['\\Seen'], { uid: true }), true);
      const flagged = await imap.fetchOne(String(uid1), { flags: true }, { uid: true });
      assert.ok(flagged && flagged.flags?.has('\\Seen'));

      assert.equal(await imap.messageDelete(String(uid2), { uid: true }), true);
      const status = await imap.status('INBOX', { messages: true, unseen: true });
      assert.ok(status);
      assert.equal(status.messages, 1);
      assert.equal(status.unseen, 0);

      const part = await imap.download(String(uid1), '1', { uid: true });
      assert.ok(part.content);
      const chunks: Buffer[] = [];
      for await (const chunk of part.content) chunks.push(chunk as Buffer);
      assert.equal(Buffer.concat(chunks).toString(), 'Hello Bob');
    } finally {
      await imap.logout();
    }
    await waitFor(() => server.sessions() === 0);
  });

  it('rejects a wrong password', async () => {
    const imap = client(port, 'bob@example.com', 'wrong');
    await assert.rejects(imap.connect(), (error: Error & { authenticationFailed?: boolean }) => {
      assert.equal(error.authenticationFailed, true);
      return true;
    });
    imap.close();
  });

  it('appends, copies and moves with UIDPLUS', async () => {
    const imap = client(port);
    await imap.connect();
    try {
      const appended = await imap.append('Drafts', MESSAGE, ['\\Draft'], new Date('2024-01-02T03:04:05Z'));
      assert.ok(appended);
      assert.equal(appended.uid, 1);
      await imap.mailboxOpen('Drafts');
      const copied = await imap.messageCopy('1:*', 'Sent');
      assert.ok(copied);
      assert.equal(copied.uidMap?.get(1), 1);
      const moved = await imap.messageMove('1', 'Trash');
      assert.ok(moved);
      assert.equal(imap.mailbox && imap.mailbox.exists, 0);
      const sent = await imap.status('Sent', { messages: true });
      assert.ok(sent);
      assert.equal(sent.messages, 1);
      await imap.mailboxCreate('Projects/2024');
      const created = await imap.list();
      assert.ok(created.some((f) => f.path === 'Projects/2024'));
      await imap.mailboxRename('Projects/2024', 'Projects/2025');
      await imap.mailboxDelete('Projects/2025');
    } finally {
      await imap.logout();
    }
  });

  it('searches', async () => {
    const user = 'search@example.com';
    const auth = new MemoryAuthenticator({ [user]: 'pw' });
    const local = createImapServer({
      mailbox: store,
      auth,
      logger,
      hostname: 'imap.test',
      allowPlaintextAuth: true,
    });
    const localPort = await local.listen(0, '127.0.0.1');
    await store.deliver(user, MESSAGE, { flags: ['\\Seen'] });
    await store.deliver(user, 'From: x@y.z\r\nSubject: other\r\n\r\nnothing to see\r\n');
    const imap = client(localPort, user, 'pw');
    await imap.connect();
    try {
      await imap.mailboxOpen('INBOX');
      assert.deepEqual(await imap.search({ seen: false }), [2]);
      assert.deepEqual(await imap.search({ subject: 'café' }), [1]);
      assert.deepEqual(await imap.search({ body: 'hello bob' }), [1]);
      assert.deepEqual(await imap.search({ from: 'alice' }, { uid: true }), [1]);
      assert.deepEqual(await imap.search({ or: [{ from: 'x@y.z' }, { seen: true }] }), [1, 2]);
    } finally {
      await imap.logout();
      await local.close();
    }
  });

  it('shows one session the flag changes and expunges of another', async () => {
    const user = 'two@example.com';
    const auth = new MemoryAuthenticator({ [user]: 'pw' });
    const local = createImapServer({
      mailbox: store,
      auth,
      logger,
      hostname: 'imap.test',
      allowPlaintextAuth: true,
    });
    const localPort = await local.listen(0, '127.0.0.1');
    for (let i = 0; i < 3; i++) await store.deliver(user, MESSAGE);
    const a = client(localPort, user, 'pw');
    const b = client(localPort, user, 'pw');
    await a.connect();
    await b.connect();
    try {
      await a.mailboxOpen('INBOX');
      await b.mailboxOpen('INBOX');
      const flagsSeen: Array<{ uid?: number; flags: Set<string> }> = [];
      const expunged: number[] = [];
      const exists: number[] = [];
      b.on('flags', (event: { uid?: number; flags: Set<string> }) => flagsSeen.push(event));
      b.on('expunge', (event: { seq: number }) => expunged.push(event.seq));
      b.on('exists', (event: { count: number }) => exists.push(event.count));

      await a.messageFlagsAdd('2', ['\\Flagged']);
      await b.noop();
      await waitFor(() => flagsSeen.length > 0);
      assert.equal(flagsSeen[0]?.uid, 2);
      assert.ok(flagsSeen[0]?.flags.has('\\Flagged'));

      // B idles; A deletes message 1 and a new message arrives.
      const idling = b.idle();
      await a.messageDelete('1');
      await store.deliver(user, MESSAGE);
      await waitFor(() => expunged.length > 0 && exists.length > 0);
      assert.deepEqual(expunged, [1]);
      assert.equal(exists[exists.length - 1], 3);
      await b.noop();
      await idling;
      assert.equal(b.mailbox && b.mailbox.exists, 3);
    } finally {
      await a.logout();
      await b.logout();
      await local.close();
    }
  });
});

/**
 * A store that keeps each message's MIME structure as the mailbox-store does at append
 * (services/core/mime-structure.ts), and counts the bodies read.
 */
class StructuredMailbox extends MemoryMailbox {
  bodyReads = 0;

  override async messages(
    user: string,
    folder: string,
    uids?: number[],
    options: MessagesOptions = {},
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    const r = await super.messages(user, folder, uids);
    if (!options.structure) return r;
    const messages = r.messages.map((m) => {
      const body = this.blobs.get(m.blob);
      const structure = body ? structureOf(body) : null;
      return structure ? { ...m, structure } : m;
    });
    return { folder: r.folder, messages };
  }

  override readBody(blob: string): Promise<Buffer> {
    this.bodyReads++;
    return super.readBody(blob);
  }

  override openBody(blob: string): AsyncIterable<Uint8Array> {
    this.bodyReads++;
    return super.openBody(blob);
  }
}

describe('imapflow client, structures stored at append', () => {
  const ATTACHMENT = [
    'From: dave@example.net',
    'To: bob@example.com',
    'Subject: report',
    'Content-Type: multipart/mixed; boundary=outer',
    '',
    '--outer',
    'Content-Type: text/plain',
    '',
    'See attached.',
    '--outer',
    'Content-Type: application/pdf; name="r.pdf"',
    'Content-Disposition: attachment; filename="r.pdf"',
    'Content-Transfer-Encoding: base64',
    '',
    'JVBERi0xLjQK',
    '--outer--',
    '',
  ].join('\r\n');

  async function fetchAll(mailbox: MemoryMailbox): Promise<FetchMessageObject[]> {
    for (let i = 0; i < 60; i++) {
      await mailbox.deliver('bob@example.com', i % 4 === 3 ? ATTACHMENT : MESSAGE.replace('m1@', `m${i}@`));
    }
    const server = createImapServer({
      mailbox,
      auth: new MemoryAuthenticator({ 'bob@example.com': 'secret' }),
      logger,
      hostname: 'imap.test',
      allowPlaintextAuth: false,
    });
    const imap = client(await server.listen(0, '127.0.0.1'));
    try {
      await imap.connect();
      await imap.mailboxOpen('INBOX');
      const out: FetchMessageObject[] = [];
      for await (const m of imap.fetch('1:*', { uid: true, envelope: true, bodyStructure: true }))
        out.push(m);
      return out;
    } finally {
      await imap.logout();
      await server.close();
    }
  }

  it('FETCH envelope and bodyStructure of a folder: right values, no body read', async () => {
    const structured = new StructuredMailbox();
    const fetched = await fetchAll(structured);
    assert.equal(structured.bodyReads, 0, 'no body read from the store');
    assert.equal(fetched.length, 60);
    const first = fetched[0] as FetchMessageObject;
    assert.equal(first.envelope?.subject, 'Café meeting');
    assert.equal(first.envelope?.messageId, '<m0@example.com>');
    assert.deepEqual(first.envelope?.to, [
      { name: '', address: 'bob@example.com' },
      { name: 'Carol, C.', address: 'carol@example.org' },
    ]);
    assert.equal(first.bodyStructure?.type, 'multipart/alternative');
    assert.deepEqual(
      first.bodyStructure?.childNodes?.map((c) => [
        c.part,
        c.type,
        c.parameters?.charset,
        c.size,
        c.lineCount,
      ]),
      [
        ['1', 'text/plain', 'utf-8', 9, 1],
        ['2', 'text/html', 'utf-8', 16, 1],
      ],
    );
    const report = fetched[3] as FetchMessageObject;
    assert.equal(report.envelope?.subject, 'report');
    assert.deepEqual(
      report.bodyStructure?.childNodes?.map((c) => [c.type, c.encoding, c.disposition ?? null]),
      [
        ['text/plain', '7bit', null],
        ['application/pdf', 'base64', 'attachment'],
      ],
    );
    // The same folder without stored structures (messages from before): parsed, same answers.
    const plain = new MemoryMailbox();
    const parsed = await fetchAll(plain);
    assert.deepEqual(
      parsed.map((m) => [m.envelope, m.bodyStructure]),
      fetched.map((m) => [m.envelope, m.bodyStructure]),
    );
  });
});
