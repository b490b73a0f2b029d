/**
 * The SMTP session core over real sockets (plain and TLS), with its storage hooks implemented in
 * memory: transcripts per RFC section, hostile input, and the policy gates.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import {
  Session,
  type SessionHooks,
  type SessionOptions,
  type Transaction,
} from '../../services/smtp-ingress/session.ts';
import { REPLIES, SmtpReply } from '../../services/smtp-ingress/replies.ts';
import { TlsProvider } from '../../services/core/tls.ts';
import { Wire, transcript } from '../helpers/smtp-wire.ts';

describe('SMTP session core', () => {
  let server: Server;
  let port: number;
  let tls: TlsProvider;
  const stored: Transaction[] = [];
  let failAccept = false;
  const opts: Partial<SessionOptions> = {};
  /** Told of each connection's socket (the retention test watches them being collected). */
  let onSocket: ((sock: Socket) => void) | null = null;

  const hooks: SessionHooks = {
    connect: async () => null,
    close: () => undefined,
    error: () => undefined,
    async authenticate(_info, login, password) {
      return login === 'alice@example.test' && password === 'alice-password'
        ? { user: login }
        : REPLIES.badCredentials();
    },
    mailFrom: async () => null,
    async rcptTo(_info, _tx, to) {
      if (to.domain !== 'example.test') return REPLIES.relayDenied(to.address);
      return to.local.startsWith('nobody') ? REPLIES.unknownUser(to.address) : null;
    },
    async accept(_info, tx) {
      if (failAccept) throw new Error('blob store down');
      stored.push(tx);
      return new SmtpReply(250, '2.0.0', `Ok: queued as Q${stored.length}`);
    },
  };

  before(async () => {
    tls = await TlsProvider.load(
      {
        certFile: '',
        keyFile: '',
        hostname: 'mx.example.test',
        dataDir: mkdtempSync(join(tmpdir(), 'smtp-')),
      },
      pino({ level: 'silent' }),
    );
    server = createServer((sock) => {
      onSocket?.(sock);
      const s = new Session(
        sock,
        {
          port: 'submission',
          hostname: 'mx.example.test',
          limits: {
            maxMessageSize: 10_000,
            maxRecipients: 100,
            idleTimeoutMs: 1500,
            sessionTimeoutMs: 60_000,
            acceptTimeoutMs: 5000,
          },
          tlsContext: () => tls.context,
          authEnabled: true,
          authRequired: false,
          plaintextAuthAllowed: false,
          ...opts,
        },
        hooks,
      );
      void s.start();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const a = server.address();
    port = typeof a === 'object' && a ? a.port : 0;
  });

  after(async () => {
    tls.close();
    await new Promise((r) => server.close(r));
  });

  const last = () => stored[stored.length - 1];

  test('RFC 5321 4.1.1.1 + RFC 1869: the greeting and EHLO keywords', async () => {
    const w = await Wire.open(port);
    await transcript(
      w,
      `S: 220 mx.example.test Postino ESMTP
       C: EHLO client.test
       S: 250-mx.example.test Hello client.test | 250-PIPELINING | 250-SIZE 10000 | 250-8BITMIME | 250-SMTPUTF8 | 250-ENHANCEDSTATUSCODES | 250-CHUNKING | 250-BINARYMIME | 250-DSN | 250 STARTTLS
       C: HELP
       S: 214 2.0.0
       C: VRFY bob
       S: 252 2.5.2
       C: NOOP
       S: 250 2.0.0 Ok
       C: QUIT
       S: 221 2.0.0`,
    );
    await w.closed();
  });

  test('RFC 5321 4.1.4: commands before EHLO and out of order get 503 5.5.1', async () => {
    const w = await Wire.open(port);
    await transcript(
      w,
      `S: 220
       C: MAIL FROM:<a@client.test>
       S: 503 5.5.1
       C: DATA
       S: 503 5.5.1
       C: EHLO c
       S: 250-
       C: RCPT TO:<bob@example.test>
       S: 503 5.5.1
       C: DATA
       S: 503 5.5.1
       C: MAIL FROM:<a@client.test>
       S: 250 2.1.0
       C: MAIL FROM:<a@client.test>
       S: 503 5.5.1 Error: nested MAIL command
       C: RCPT TO:<nobody@example.test>
       S: 550 5.1.1
       C: DATA
       S: 554 5.5.1 Error: no valid recipients
       C: RCPT TO:<Postmaster>
       S: 554 5.7.1 <postmaster@mx.example.test>
       C: RSET
       S: 250 2.0.0`,
    );
    w.end();
  });

  test('RFC 2920: a pipelined transaction gets its replies in order', async () => {
    const w = await Wire.open(port);
    await w.reply();
    w.send(
      'EHLO c\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n',
    );
    assert.match(await w.reply(), /^250-/);
    assert.match(await w.reply(), /^250 2\.1\.0/);
    assert.match(await w.reply(), /^250 2\.1\.5/);
    assert.match(await w.reply(), /^550 5\.1\.1/);
    assert.match(await w.reply(), /^250 2\.1\.5/);
    assert.match(await w.reply(), /^354 /);
    w.send('Subject: pipelined\r\n\r\n..dot\r\nbare\nlf\r\n.\r\nQUIT\r\n');
    assert.match(await w.reply(), /^250 2\.0\.0 Ok: queued as Q\d+/);
    assert.match(await w.reply(), /^221 /);
    const tx = last();
    assert.deepEqual(
      tx?.rcpts.map((r) => r.mailbox.address),
      ['bob@example.test', 'carol@example.test'],
    );
    assert.equal(
      Buffer.concat(tx?.chunks ?? []).toString(),
      'Subject: pipelined\r\n\r\n.dot\r\nbare\r\nlf\r\n',
    );
  });

  test('RFC 3030: BDAT chunks, binary octets kept as sent; BDAT without RCPT has its octets skipped', async () => {
    const w = await Wire.open(port);
    await transcript(
      w,
      'S: 220\nC: EHLO c\nS: 250-\nC: MAIL FROM:<a@client.test> BODY=BINARYMIME\nS: 250 2.1.0\nC: RCPT TO:<bob@example.test>\nS: 250 2.1.5',
    );
    const part1 = Buffer.from('Subject: chunks\r\n\r\n\x00\xff\r\n.\r\n', 'latin1');
    w.send(Buffer.concat([Buffer.from(`BDAT ${part1.length}\r\n`), part1]));
    assert.equal(await w.reply(), `250 2.0.0 ${part1.length} octets received`);
    w.send('DATA\r\n');
    assert.match(await w.reply(), /^503 5\.5\.1/);
    w.send('BDAT 4 LAST\r\nend!');
    assert.match(await w.reply(), /^250 2\.0\.0 Ok: queued/);
    assert.deepEqual(Buffer.concat(last()?.chunks ?? []), Buffer.concat([part1, Buffer.from('end!')]));
    assert.equal(last()?.params.body, 'BINARYMIME');
    // No transaction: the 7 octets ("NOOP\r\nx") are data, not a command.
    w.send('BDAT 7 LAST\r\nNOOP\r\nx');
    assert.match(await w.reply(), /^503 5\.5\.1/);
    await transcript(
      w,
      'C: MAIL FROM:<a@client.test> BODY=BINARYMIME\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 503 5.5.1 Error: BINARYMIME needs BDAT',
    );
    w.end();
  });

  test('RFC 1870: SIZE refused at MAIL when declared, at the end of the body when not', async () => {
    const w = await Wire.open(port);
    await transcript(
      w,
      `S: 220
       C: EHLO c
       S: 250-
       C: MAIL FROM:<a@client.test> SIZE=20000
       S: 552 5.3.4
       C: MAIL FROM:<a@client.test> SIZE=500
       S: 250 2.1.0
       C: RCPT TO:<bob@example.test>
       S: 250 2.1.5
       C: DATA
       S: 354`,
    );
    w.send(`${'x'.repeat(998)}\r\n`.repeat(12) + '.\r\n');
    assert.match(await w.reply(), /^552 5\.3\.4/);
    await transcript(w, 'C: MAIL FROM:<a@client.test>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250');
    w.send(`BDAT 12000 LAST\r\n${'y'.repeat(12000)}`);
    assert.match(await w.reply(), /^552 5\.3\.4/);
    assert.match(await w.cmd('NOOP'), /^250 2\.0\.0/);
    w.end();
  });

  test('RFC 6531: non-ASCII addresses need SMTPUTF8 (553 5.6.7) and keep their UTF-8', async () => {
    const w = await Wire.open(port);
    await transcript(
      w,
      `S: 220
       C: EHLO c
       S: 250-
       C: MAIL FROM:<jöran@client.test>
       S: 553 5.6.7
       C: MAIL FROM:<jöran@client.test> SMTPUTF8
       S: 250 2.1.0
       C: RCPT TO:<δοκιμή@example.test>
       S: 250 2.1.5
       C: DATA
       S: 354
       C: Subject: ünïcödé
       C:
       C: .
       S: 250 2.0.0`,
    );
    assert.equal(last()?.from?.address, 'jöran@client.test');
    assert.equal(last()?.rcpts[0]?.mailbox.address, 'δοκιμή@example.test');
    assert.equal(last()?.params.smtputf8, true);
    w.end();
  });

  test('RFC 3461: DSN parameters are kept with the transaction', async () => {
    const w = await Wire.open(port);
    await transcript(
      w,
      `S: 220
       C: EHLO c
       S: 250-
       C: MAIL FROM:<a@client.test> RET=HDRS ENVID=QQ314159
       S: 250 2.1.0
       C: RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test
       S: 250 2.1.5
       C: DATA
       S: 354
       C: .
       S: 250 2.0.0`,
    );
    assert.equal(last()?.params.ret, 'HDRS');
    assert.equal(last()?.params.envid, 'QQ314159');
    assert.deepEqual(last()?.rcpts[0]?.params, {
      notify: ['SUCCESS', 'FAILURE'],
      orcpt: 'rfc822;bob@example.test',
    });
    w.end();
  });

  test('RFC 4954 + RFC 3207: AUTH refused before TLS, then PLAIN, LOGIN and SASL-IR after STARTTLS', async () => {
    const w = await Wire.open(port);
    const plain = Buffer.from('\0alice@example.test\0alice-password').toString('base64');
    await transcript(
      w,
      `S: 220
       C: EHLO c
       S: 250-
       C: AUTH PLAIN ${plain}
       S: 538 5.7.11
       C: STARTTLS
       S: 220 2.0.0`,
    );
    await w.startTls();
    const ehlo = await w.cmd('EHLO c');
    assert.match(ehlo, /250 AUTH PLAIN LOGIN$/);
    assert.doesNotMatch(ehlo, /STARTTLS/);
    await transcript(
      w,
      `C: AUTH PLAIN ${Buffer.from('\0alice@example.test\0wrong').toString('base64')}
       S: 535 5.7.8
       C: AUTH PLAIN
       S: 334
       C: *
       S: 501 5.7.0
       C: AUTH LOGIN
       S: 334 VXNlcm5hbWU6
       C: ${Buffer.from('alice@example.test').toString('base64')}
       S: 334 UGFzc3dvcmQ6
       C: ${Buffer.from('alice-password').toString('base64')}
       S: 235 2.7.0
       C: AUTH PLAIN ${plain}
       S: 503 5.5.1`,
    );
    w.end();
    const w2 = await Wire.open(port);
    await w2.reply();
    await w2.cmd('EHLO c');
    await w2.cmd('STARTTLS');
    await w2.startTls();
    await w2.cmd('EHLO c');
    assert.match(await w2.cmd(`AUTH PLAIN ${plain}`), /^235 2\.7\.0/);
    w2.end();
  });

  test('RFC 3207 5: commands pipelined after STARTTLS in clear text are discarded', async () => {
    const w = await Wire.open(port);
    await w.reply();
    await w.cmd('EHLO c');
    w.send('STARTTLS\r\nMAIL FROM:<injected@client.test>\r\n');
    assert.match(await w.reply(), /^220 2\.0\.0/);
    await w.startTls();
    // The injected MAIL never ran: the session starts over and needs EHLO again.
    assert.match(await w.cmd('MAIL FROM:<a@client.test>'), /^503 5\.5\.1/);
    w.end();
  });

  test('hostile input: long lines, garbage, too many errors; other sessions go on', async () => {
    const other = await Wire.open(port);
    await other.reply();
    await other.cmd('EHLO other');
    const w = await Wire.open(port);
    await w.reply();
    assert.match(await w.cmd('A'.repeat(10_000)), /^500 5\.5\.2 Error: line too long/);
    w.send(Buffer.from([0x00, 0xff, 0xfe, 0x13, 0x37, 0x0d, 0x0a]));
    assert.match(await w.reply(), /^500 5\.5\.2/);
    assert.match(await w.cmd('NOOP'), /^250 2\.0\.0/);
    let got = '';
    for (let i = 0; i < 30 && !got.startsWith('421'); i++) {
      w.send('FROB\r\n');
      got = await w.reply().catch(() => '421 closed');
    }
    assert.match(got, /^421 4\.7\.0/);
    await w.closed();
    assert.match(await other.cmd('NOOP'), /^250 2\.0\.0/);
    other.end();
  });

  test('10,000 pipelined RCPTs: 100 accepted, the rest 452 4.5.3, and the message goes through', async () => {
    const w = await Wire.open(port);
    await w.reply();
    await w.cmd('EHLO c');
    await w.cmd('MAIL FROM:<a@client.test>');
    const rcpts: string[] = [];
    for (let i = 0; i < 10_000; i++) rcpts.push(`RCPT TO:<u${i}@example.test>\r\n`);
    w.send(rcpts.join(''));
    const codes = new Map<string, number>();
    for (let i = 0; i < 10_000; i++) {
      const r = (await w.reply()).slice(0, 9);
      codes.set(r, (codes.get(r) ?? 0) + 1);
    }
    assert.deepEqual(Object.fromEntries(codes), { '250 2.1.5': 100, '452 4.5.3': 9900 });
    assert.match(await w.cmd('DATA'), /^354/);
    assert.match(await w.cmd('.'), /^250 2\.0\.0/);
    assert.equal(last()?.rcpts.length, 100);
    w.end();
  });

  test('RFC 5321 4.5.3.2.7: a client that sends nothing is told 421 4.4.2 and closed', async () => {
    const w = await Wire.open(port);
    await w.reply();
    assert.match(await w.reply(), /^421 4\.4\.2/);
    await w.closed();
  });

  test('a session that ended is let go: nothing keeps its socket and state alive', async () => {
    // A timer left running after the close held every finished session for seconds: under a
    // stream of short connections, thousands of them at a time, each outliving the young
    // generation into a full GC.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    let collected = 0;
    const registry = new FinalizationRegistry<number>(() => collected++);
    const n = 20;
    onSocket = (sock) => registry.register(sock, 0);
    try {
      for (let i = 0; i < n; i++) {
        const w = await Wire.open(port);
        await transcript(w, 'S: 220\nC: EHLO c\nS: 250-\nC: QUIT\nS: 221 2.0.0');
        await w.closed();
      }
    } finally {
      onSocket = null;
    }
    for (let i = 0; i < 40 && collected < n; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(collected, n, 'every finished session collected');
  });

  test('a broken store answers 451 4.3.0, and the session goes on', async () => {
    const w = await Wire.open(port);
    await transcript(
      w,
      'S: 220\nC: EHLO c\nS: 250-\nC: MAIL FROM:<a@client.test>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354',
    );
    failAccept = true;
    try {
      assert.match(await w.cmd('.'), /^451 4\.3\.0/);
    } finally {
      failAccept = false;
    }
    assert.match(await w.cmd('NOOP'), /^250 2\.0\.0/);
    w.end();
  });
});
