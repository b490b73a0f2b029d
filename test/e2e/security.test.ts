/**
 * Security checks of the whole cluster, each test named after what it proves. Real nats-server,
 * redis-server, dnsmasq and every service; real clients (raw sockets for IMAP, POP3 and SMTP,
 * imapflow, nodemailer, node:tls handshakes, curl for the admin API).
 *
 * Covered elsewhere and not repeated here: SMTP AUTH throttling per IP and per account across
 * replicas and the basic relay tricks on port 25 (test/e2e/smtp-ingress.test.ts), the SASL
 * authzid refusal (test/unit/imap-session.test.ts, test/unit/pop3-server.test.ts), no password in
 * a span at the default log level (test/e2e/trace-otlp.test.ts), the admin and metrics Services
 * being ClusterIP and the NetworkPolicies (test/unit/chart-render.test.ts).
 *
 * The second suite runs the cluster against a nats-server and a redis-server that both require
 * credentials and TLS, with LOG_LEVEL=trace and spans exported to a receiver, and then looks for
 * every secret in every log line and span.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type SecureVersion, type TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import type { SMTPServer } from 'smtp-server';
import { Redis } from 'ioredis';
import pino from 'pino';
import {
  freePort,
  startDns,
  startNats,
  startRedis,
  until,
  waitForPort,
  type Proc,
} from '../helpers/servers.ts';
import { POSTINO, startServices, testConfig, type Ports } from '../helpers/postino.ts';
import { startSink, type Received } from '../helpers/sink.ts';
import { TestCa } from '../helpers/test-ca.ts';
import { withImap } from '../helpers/clients.ts';
import type { Running } from '../../services/core/runtime.ts';
import { nkeys } from '@nats-io/transport-node';
import { connectNats, SUBJECTS } from '../../services/core/nats.ts';
import { encode, pb } from '../../services/core/codec.ts';
import { adminRoute } from '../../services/admin/api.ts';
import { dkimRoute } from '../../services/admin/dkim.ts';
import { queueRoute } from '../../services/admin/queue.ts';
import { quotaRoute } from '../../services/admin/quota.ts';
import { MailboxRpcClient } from '../../services/mailbox-store/rpc.ts';
import type { Route } from '../../services/core/http.ts';
import { helmTemplate } from '../../deploy/render-manifests.ts';
import { parseAllDocuments } from 'yaml';
import { SERVICES } from '../../services/services.ts';
import { redactUrl } from '../../services/core/config.ts';

const run = promisify(execFile);
const silent = pino({ level: 'silent' });

const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const ALICE_PASSWORD = 'alice-Pa55word-4c1f';
const BOB_PASSWORD = 'bob-Pa55word-77e2';
/** In the subject and body of every message of bob's: it must never reach alice. */
const BOB_SECRET = 'BOB-SECRET-b0b5ecret';
const ALICE_MARK = 'ALICE-MARK-a11ce';
const ADMIN_TOKEN = 'admin-token-3c3a9b1f0e5d47b2';
const SINK = '127.0.0.9';

const b64 = (s: string) => Buffer.from(s).toString('base64');

/** A raw client connection: every byte the server sent (as latin1 text), taken answer by answer. */
class RawWire {
  sock: Socket | TLSSocket;
  buf = '';
  closed = false;
  #wake: (() => void) | null = null;

  constructor(sock: Socket | TLSSocket) {
    this.sock = sock;
    sock.on('data', (c: Buffer) => {
      this.buf += c.toString('latin1');
      this.#wake?.();
    });
    sock.on('close', () => {
      this.closed = true;
      this.#wake?.();
    });
    sock.on('error', () => undefined);
  }

  /** A plain connection to a local port from `localAddress`. */
  static async connect(port: number, localAddress: string): Promise<Socket> {
    const sock = connect({ host: '127.0.0.1', port, localAddress });
    await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    return sock;
  }

  /**
   * Waits until `length` finds a whole answer at the start of the buffer and takes it; null when
   * the server closed the connection first (the buffer is left as it is).
   */
  async take(length: (buf: string) => number | null): Promise<string | null> {
    for (;;) {
      const n = length(this.buf);
      if (n !== null) {
        const text = this.buf.slice(0, n);
        this.buf = this.buf.slice(n);
        return text;
      }
      if (this.closed) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  end(): void {
    this.sock.destroy();
  }
}

/** The length of the buffer up to the end of the first match of `re`, or null. */
const through = (re: RegExp) => (buf: string) => {
  const m = re.exec(buf);
  return m ? m.index + m[0].length : null;
};

/** A raw IMAP client: tagged commands, synchronizing literals, every byte the server sent. */
class ImapWire extends RawWire {
  #tag = 0;

  static async open(port: number, localAddress = '127.0.0.1'): Promise<ImapWire> {
    const w = new ImapWire(await RawWire.connect(port, localAddress));
    await w.expect(/^\* (OK|BYE)[^\n]*\n/m);
    return w;
  }

  /**
   * Sends a command whose parts are strings (sent as they are) or Buffers (sent as synchronizing
   * literals, waiting for the continuation), and returns every line up to its tagged completion.
   */
  async cmd(...parts: (string | Buffer)[]): Promise<string> {
    const tag = `t${++this.#tag}`;
    let out = '';
    let line = `${tag} `;
    for (const p of parts) {
      if (typeof p === 'string') {
        line += p;
        continue;
      }
      this.sock.write(`${line}{${p.length}}\r\n`);
      const got = await this.expect(new RegExp(`^(\\+[^\\n]*|${tag} [^\\n]*)\\n`, 'm'));
      out += got;
      if (!/^\+/m.test(got.split('\n').at(-2) ?? got)) return out;
      this.sock.write(p);
      line = '';
    }
    this.sock.write(`${line}\r\n`);
    return out + (await this.expect(new RegExp(`^${tag} (OK|NO|BAD)[^\\n]*\\n`, 'm')));
  }

  /** Writes a raw line (IDLE's DONE). */
  send(line: string): void {
    this.sock.write(`${line}\r\n`);
  }

  /** Everything the server sent up to and including the first match of `re`. */
  async expect(re: RegExp): Promise<string> {
    return (await this.take(through(re))) ?? `${this.buf}\n(closed)`;
  }
}

/** A raw POP3 client: one-line and multi-line answers as text. */
class Pop3Wire extends RawWire {
  static async open(port: number, localAddress = '127.0.0.1'): Promise<Pop3Wire> {
    const w = new Pop3Wire(await RawWire.connect(port, localAddress));
    await w.#read(false);
    return w;
  }

  async #read(multi: boolean): Promise<string> {
    const answer = (buf: string) => {
      const first = buf.indexOf('\r\n');
      if (first < 0) return null;
      if (!multi || !buf.startsWith('+OK')) return first + 2;
      const end = buf.indexOf('\r\n.\r\n', first - 2);
      return end >= 0 ? end + 5 : null;
    };
    return (await this.take(answer)) ?? `${this.buf}(closed)`;
  }

  async cmd(line: string | Buffer, multi = false): Promise<string> {
    this.sock.write(Buffer.concat([Buffer.from(line), Buffer.from('\r\n')]));
    return this.#read(multi);
  }
}

/** A raw SMTP client. */
class SmtpWire extends RawWire {
  static async open(port: number, localAddress = '127.0.0.1'): Promise<SmtpWire> {
    const w = new SmtpWire(await RawWire.connect(port, localAddress));
    await w.reply();
    return w;
  }

  async reply(): Promise<string> {
    const got = await this.take(through(/^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/));
    return got === null ? `(closed) ${this.buf}` : got.trimEnd();
  }

  async cmd(line: string | Buffer): Promise<string> {
    const bytes = typeof line === 'string' ? Buffer.from(line, 'latin1') : line;
    this.sock.write(Buffer.concat([bytes, Buffer.from('\r\n')]));
    return this.reply();
  }
}

/** The messages of one folder as its owner sees them. */
function folderOf(
  port: number,
  user: string,
  pass: string,
  folder: string,
): Promise<{ uid: number; subject: string; flags: string[] }[]> {
  return withImap(port, { user, pass }, async (client) => {
    const lock = await client.getMailboxLock(folder);
    try {
      const out: { uid: number; subject: string; flags: string[] }[] = [];
      if ((client.mailbox as { exists: number }).exists === 0) return out;
      for await (const m of client.fetch('1:*', { uid: true, envelope: true, flags: true })) {
        out.push({ uid: m.uid, subject: m.envelope?.subject ?? '', flags: [...(m.flags ?? [])].sort() });
      }
      return out;
    } finally {
      lock.release();
    }
  });
}

function folderNames(port: number, user: string, pass: string): Promise<string[]> {
  return withImap(port, { user, pass }, async (client) => (await client.list()).map((f) => f.path).sort());
}

/**
 * A TLS handshake limited to one protocol version, on an implicit-TLS port or after a STARTTLS
 * exchange. Resolves with the negotiated version, or the error code of the refusal. The client
 * allows every cipher (SECLEVEL=0), so that a refusal can only come from the server.
 */
async function handshake(
  port: number,
  version: SecureVersion,
  starttls?: { greeting: RegExp; command: string; ready: RegExp },
): Promise<string> {
  let socket: Socket | undefined;
  if (starttls) {
    const s = connect({ host: '127.0.0.1', port });
    socket = s;
    let buf = '';
    const wait = (re: RegExp) =>
      new Promise<void>((resolve, reject) => {
        const onData = (c: Buffer) => {
          buf += c.toString('latin1');
          if (re.test(buf)) {
            s.off('data', onData);
            buf = '';
            resolve();
          }
        };
        s.on('data', onData);
        s.once('error', reject);
      });
    await wait(starttls.greeting);
    s.write(`${starttls.command}\r\n`);
    await wait(starttls.ready);
  }
  const t = tlsConnect({
    ...(socket ? { socket } : { host: '127.0.0.1', port }),
    rejectUnauthorized: false,
    minVersion: version,
    maxVersion: version,
    ciphers: 'DEFAULT:@SECLEVEL=0',
  });
  try {
    return await new Promise<string>((resolve) => {
      t.once('secureConnect', () => resolve(t.getProtocol() ?? 'unknown'));
      t.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
  } finally {
    t.destroy();
    socket?.destroy();
  }
}

describe('security: one user never reaches another, no relay, TLS 1.2+, admin API', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let sink: SMTPServer;
  const sunk: Received[] = [];
  let main: Running;
  let ports: Ports;
  let http: number;
  let bobUids: number[];

  const api = (path: string, init: RequestInit = {}, token: string | null = ADMIN_TOKEN) =>
    fetch(`http://127.0.0.1:${http}${path}`, {
      ...init,
      headers: {
        'content-type': 'application/json',
        ...(token === null ? {} : { authorization: `Bearer ${token}` }),
      },
    });

  const login = async (localAddress = '127.0.0.1'): Promise<ImapWire> => {
    const w = await ImapWire.open(ports.imap, localAddress);
    assert.match(await w.cmd(`LOGIN ${ALICE} ${ALICE_PASSWORD}`), /^t1 OK/m);
    return w;
  };

  before(async () => {
    const sinkPort = await freePort(SINK);
    sink = await startSink({ host: SINK, port: sinkPort, received: sunk });
    [nats, redis, dns] = await Promise.all([
      startNats(),
      startRedis(),
      startDns(['--mx-host=remote.test,mx.remote.test,10', `--host-record=mx.remote.test,${SINK}`]),
    ]);
    let config;
    ({ config, ports } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(sinkPort),
      DELIVERY_RETRY_SCHEDULE: '1s',
      MAIL_AUTH_CHECKS: 'false',
      ADMIN_TOKEN,
      SMTP_AUTH_FAILURES: '5',
    }));
    main = await startServices(config);
    http = main.runtime.http.port;
    for (const [path, body] of [
      ['/api/domains', { name: 'example.test' }],
      ['/api/users', { address: ALICE, password: ALICE_PASSWORD }],
      ['/api/users', { address: BOB, password: BOB_PASSWORD }],
    ] as const) {
      const res = await api(path, { method: 'POST', body: JSON.stringify(body) });
      assert.equal(res.status, 201, `${path} ${await res.text()}`);
    }
    // Bob: three messages in INBOX (so his UIDs go past alice's), and a folder of his own.
    await withImap(ports.imap, { user: BOB, pass: BOB_PASSWORD }, async (bob) => {
      for (let i = 1; i <= 3; i++) {
        await bob.append(
          'INBOX',
          `From: carol@example.test\r\nTo: ${BOB}\r\nSubject: ${BOB_SECRET} ${i}\r\n\r\n${BOB_SECRET} body ${i}\r\n`,
        );
      }
      await bob.mailboxCreate('Private');
      await bob.append('Private', `Subject: ${BOB_SECRET} private\r\n\r\n${BOB_SECRET} private body\r\n`);
    });
    await withImap(ports.imap, { user: ALICE, pass: ALICE_PASSWORD }, (alice) =>
      alice.append('INBOX', `Subject: ${ALICE_MARK}\r\n\r\n${ALICE_MARK} body\r\n`),
    );
    bobUids = (await folderOf(ports.imap, BOB, BOB_PASSWORD, 'INBOX')).map((m) => m.uid);
    assert.deepEqual(bobUids, [1, 2, 3]);
  });

  after(async () => {
    await main?.stop();
    await new Promise<void>((resolve) => (sink ? sink.close(() => resolve()) : resolve()));
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  /** Bob's mail as he sees it: what every test below must leave unchanged. */
  const bobState = async () => ({
    folders: await folderNames(ports.imap, BOB, BOB_PASSWORD),
    inbox: await folderOf(ports.imap, BOB, BOB_PASSWORD, 'INBOX'),
    private: await folderOf(ports.imap, BOB, BOB_PASSWORD, 'Private'),
  });

  /** Folder names that try to leave alice's namespace. */
  const HOSTILE_NAMES: (string | Buffer)[] = [
    '"../bob"',
    `"../${BOB}/INBOX"`,
    `"${BOB}/INBOX"`,
    `"${BOB}"`,
    '"INBOX/../../bob/INBOX"',
    '"/INBOX"',
    '"%"',
    '"*"',
    '"#shared/bob"',
    `"#shared/${BOB}/INBOX"`,
    '"#users/bob/INBOX"',
    '"#public/INBOX"',
    '"~bob/INBOX"',
    `"~${BOB}/Private"`,
    '"Other Users/bob/INBOX"',
    `"Other Users/${BOB}/Private"`,
    '"user/bob"',
    '"user.bob.INBOX"',
    '"Private"',
    '"&AC4ALg-/bob/INBOX"', // modified UTF-7 for "../bob/INBOX"
    Buffer.from(`INBOX\0${BOB}`),
    Buffer.from(`../${BOB}\0`),
    Buffer.from(`Private\rbob`),
    Buffer.from(`~bob\r\nINBOX`),
  ];

  test('IMAP SELECT, EXAMINE, STATUS and LIST with ../, %, *, #shared, ~user, Other Users, NUL and CR never show bob’s mail', async () => {
    const before = await bobState();
    const w = await login();
    let seen = '';
    for (const name of HOSTILE_NAMES) {
      for (const verb of ['SELECT', 'EXAMINE']) {
        const r = await w.cmd(`${verb} `, name);
        seen += r;
        // A name that opened something can only be a folder of alice's own, which she made empty.
        if (/^t\d+ OK/m.test(r)) {
          assert.match(r, /^\* 0 EXISTS/m, `${verb} ${String(name)} opened a folder with mail:\n${r}`);
          seen += await w.cmd('FETCH 1:* (BODY.PEEK[] ENVELOPE)');
          seen += await w.cmd('UID FETCH 1:4294967295 (BODY.PEEK[])');
        }
      }
      const status = await w.cmd('STATUS ', name, ' (MESSAGES UIDNEXT UNSEEN)');
      seen += status;
      assert.doesNotMatch(status, /MESSAGES [1-9]/, `STATUS ${String(name)}:\n${status}`);
      seen += await w.cmd('LIST "" ', name);
      seen += await w.cmd('LIST ', name, ' "*"');
      seen += await w.cmd('LSUB "" ', name);
    }
    seen += await w.cmd('LIST "" "*"');
    seen += await w.cmd('LIST "~bob" "*"');
    seen += await w.cmd('LIST "#shared" "*"');
    seen += await w.cmd('LIST "../" "%"');
    seen += await w.cmd('NAMESPACE');
    w.end();
    assert.ok(!seen.includes(BOB_SECRET), 'bob’s mail reached alice');
    assert.ok(!seen.toLowerCase().includes('bob@example.test/'), 'bob’s folders were listed to alice');
    // Only alice's own folders exist for her; LIST "*" shows no Private (bob's folder name).
    assert.doesNotMatch(seen, /^\* LIST \([^)]*\) "\/" "?Private"?\r?$/m);
    assert.deepEqual(await bobState(), before);
  });

  test('IMAP CREATE, RENAME, DELETE, APPEND, COPY and MOVE with hostile names only ever touch alice’s own folders', async () => {
    const before = await bobState();
    const w = await login();
    assert.match(await w.cmd('SELECT INBOX'), /^\* 1 EXISTS/m);
    for (const name of HOSTILE_NAMES) {
      await w.cmd('RENAME ', name, ' "stolen"');
      await w.cmd('DELETE ', name);
      await w.cmd('COPY 1 ', name);
      await w.cmd('UID COPY 1:* ', name);
      await w.cmd('APPEND ', name, ' ', Buffer.from(`Subject: ${ALICE_MARK} appended\r\n\r\nx\r\n`));
      await w.cmd('SUBSCRIBE ', name);
      await w.cmd('CREATE ', name);
      await w.cmd('DELETE ', name);
    }
    // MOVE last: alice's one message leaves her INBOX only if a target was accepted; put it back.
    await w.cmd('UID MOVE 1:* "../bob/INBOX"');
    await w.cmd('UID MOVE 1:* "~bob/INBOX"');
    w.end();
    const after = await bobState();
    assert.deepEqual(after, before);
    assert.ok(!JSON.stringify(after).includes(ALICE_MARK), 'alice’s message reached bob');
    // Alice still has her message, in her own INBOX.
    const mine = await folderOf(ports.imap, ALICE, ALICE_PASSWORD, 'INBOX');
    assert.ok(mine.some((m) => m.subject === ALICE_MARK));
  });

  test('IMAP UID FETCH, UID STORE, UID COPY and UID EXPUNGE of UIDs that exist only in bob’s INBOX change and show nothing of bob’s', async () => {
    const before = await bobState();
    const w = await login();
    assert.match(await w.cmd('SELECT INBOX'), /^\* 1 EXISTS/m);
    let seen = '';
    for (const set of ['2', '3', '2:3', '1:*', '2,3,4,5', '4294967295', '3:4294967295', '*']) {
      seen += await w.cmd(`UID FETCH ${set} (UID FLAGS ENVELOPE BODY.PEEK[] BODYSTRUCTURE)`);
      seen += await w.cmd(`UID SEARCH UID ${set}`);
    }
    for (const set of ['2', '3', '2:4', '1:*']) {
      seen += await w.cmd(`FETCH ${set} (UID BODY.PEEK[HEADER])`);
    }
    await w.cmd('UID STORE 2:3 +FLAGS (\\Deleted \\Seen $Stolen)');
    await w.cmd('UID COPY 2:3 INBOX');
    await w.cmd('UID EXPUNGE 2:3');
    w.end();
    assert.ok(!seen.includes(BOB_SECRET), 'bob’s mail reached alice');
    // Every FETCH answered with alice's one message (UID 1) at most.
    assert.doesNotMatch(seen, /^\* \d+ FETCH \([^\n]*UID [2-9]/m);
    assert.deepEqual(await bobState(), before);
  });

  test('IMAP IDLE: bob’s new mail and flag changes never reach alice’s session, while her own do', async () => {
    const w = await login();
    try {
      const exists = Number(/^\* (\d+) EXISTS/m.exec(await w.cmd('SELECT INBOX'))?.[1]);
      w.send('i1 IDLE');
      await w.expect(/^\+[^\n]*\n/m);
      await withImap(ports.imap, { user: BOB, pass: BOB_PASSWORD }, async (bob) => {
        await bob.append('INBOX', `Subject: ${BOB_SECRET} during idle\r\n\r\nx\r\n`);
        const lock = await bob.getMailboxLock('INBOX');
        await bob.messageFlagsAdd('1:*', ['\\Flagged'], { uid: true });
        await bob.messageDelete(`${(bob.mailbox as { uidNext: number }).uidNext - 1}`, { uid: true });
        lock.release();
      });
      // The canary: alice's own new message is announced to the idling session.
      await withImap(ports.imap, { user: ALICE, pass: ALICE_PASSWORD }, (alice) =>
        alice.append('INBOX', `Subject: ${ALICE_MARK} during idle\r\n\r\nx\r\n`),
      );
      const seen = await w.expect(new RegExp(`^\\* ${exists + 1} EXISTS[^\\n]*\\n`, 'm'));
      w.send('DONE');
      const rest = await w.expect(/^i1 OK[^\n]*\n/m);
      const untagged = seen + rest;
      assert.doesNotMatch(untagged, /^\* \d+ (EXPUNGE|FETCH)/m, untagged);
      assert.doesNotMatch(untagged, new RegExp(`^\\* ${exists + 2} EXISTS`, 'm'), untagged);
      assert.ok(!untagged.includes(BOB_SECRET));
    } finally {
      w.end();
    }
  });

  test('POP3 RETR, TOP, LIST, UIDL and DELE of message numbers past alice’s maildrop reach nothing of bob’s', async () => {
    const before = await bobState();
    const w = await Pop3Wire.open(ports.pop3);
    assert.match(await w.cmd(`USER ${ALICE}`), /^\+OK/);
    assert.match(await w.cmd(`PASS ${ALICE_PASSWORD}`), /^\+OK/);
    let seen = await w.cmd('STAT');
    // Alice has fewer messages than bob (whose maildrop holds at least three).
    const mine = Number(/^\+OK (\d+) /.exec(seen)?.[1]);
    assert.ok(mine >= 1 && mine < 3, seen);
    seen += await w.cmd('LIST', true);
    seen += await w.cmd('UIDL', true);
    const past = [mine + 1, mine + 2, mine + 3].map(String);
    for (const n of [...past, '0', '-1', '4294967297', `1 ${past[0]}`, `${past[0]} `, ` ${past[0]}`, '0x2']) {
      seen += await w.cmd(`RETR ${n}`, true);
      seen += await w.cmd(`TOP ${n} 10`, true);
      seen += await w.cmd(`LIST ${n}`);
      seen += await w.cmd(`UIDL ${n}`);
    }
    for (const n of past) await w.cmd(`DELE ${n}`);
    await w.cmd('RSET');
    assert.match(await w.cmd('QUIT'), /^\+OK/);
    w.end();
    assert.ok(!seen.includes(BOB_SECRET), 'bob’s mail reached alice over POP3');
    // Logging in as bob with alice's password, or with a NUL-joined name, is refused.
    for (const [user, pass] of [
      [BOB, ALICE_PASSWORD],
      [`${ALICE}\0${BOB}`, ALICE_PASSWORD],
      [`${BOB}\0`, ALICE_PASSWORD],
    ] as const) {
      const v = await Pop3Wire.open(ports.pop3);
      await v.cmd(`USER ${user}`);
      assert.match(await v.cmd(`PASS ${pass}`), /^-ERR/);
      v.end();
    }
    assert.deepEqual(await bobState(), before);
  });

  test('IMAP and POP3 AUTH brute force from one address is throttled across connections, even with the right password after', async () => {
    // Each connection makes at most two attempts (the per-session limit is three), so only a
    // limit counted across connections (as SMTP's, SMTP_AUTH_FAILURES=5 here) can stop it.
    const ip = '127.0.0.61';
    const TARGET = 'ceo@example.test';
    for (let i = 0; i < 3; i++) {
      const w = await ImapWire.open(ports.imap, ip);
      assert.match(await w.cmd(`LOGIN ${TARGET} wrong-${i}`), /^t1 NO/m);
      w.end();
      const p = await Pop3Wire.open(ports.pop3, ip);
      await p.cmd(`USER ${TARGET}`);
      assert.match(await p.cmd(`PASS wrong-${i}`), /^-ERR/);
      p.end();
    }
    const w = await ImapWire.open(ports.imap, ip);
    assert.match(await w.cmd(`LOGIN ${ALICE} ${ALICE_PASSWORD}`), /^t1 NO \[UNAVAILABLE\]/m);
    w.end();
    const p = await Pop3Wire.open(ports.pop3, ip);
    await p.cmd(`USER ${ALICE}`);
    assert.match(await p.cmd(`PASS ${ALICE_PASSWORD}`), /^-ERR \[SYS\/TEMP\]/);
    p.end();
    const s = await SmtpWire.open(ports.submission, ip);
    await s.cmd('EHLO c');
    assert.match(await s.cmd(`AUTH PLAIN ${b64(`\0${ALICE}\0${ALICE_PASSWORD}`)}`), /^454 4\.7\.0/);
    s.end();
    // Another address is not affected.
    const ok = await ImapWire.open(ports.imap, '127.0.0.62');
    assert.match(await ok.cmd(`LOGIN ${ALICE} ${ALICE_PASSWORD}`), /^t1 OK/m);
    ok.end();
  });

  test('port 25 relays to no remote domain under any address trick, and nothing reaches the remote sink', async () => {
    const tricks: (string | Buffer)[] = [
      'victim@remote.test',
      'victim@REMOTE.TEST',
      'victim@remote.test.',
      'victim@Remote.Test.',
      'victim%remote.test@example.test',
      'victim%remote.test@EXAMPLE.TEST',
      'remote.test!victim@example.test',
      '@example.test:victim@remote.test',
      '@example.test,@mx.example.test:victim@remote.test',
      '"victim@remote.test"@example.test',
      '"victim%remote.test"@example.test',
      '"victim"@remote.test',
      'victim@remote.test@example.test',
      'victim@example.test@remote.test',
      'victim@[127.0.0.9]',
      'victim@[127.0.0.1]',
      'victim@[IPv6:::1]',
      'victim@example.test.remote.test',
      Buffer.from('victim@remote.test\0@example.test', 'latin1'),
      Buffer.from('bob@example.test\0victim@remote.test', 'latin1'),
    ];
    const w = await SmtpWire.open(ports.smtp);
    await w.cmd('EHLO relay.remote.test');
    // Claiming to be a local user does not grant relaying.
    assert.match(await w.cmd(`MAIL FROM:<${ALICE}>`), /^250/);
    for (const t of tricks) {
      const addr = Buffer.isBuffer(t) ? t : Buffer.from(t, 'latin1');
      const r = await w.cmd(Buffer.concat([Buffer.from('RCPT TO:<'), addr, Buffer.from('>')]));
      assert.match(r, /^5\d\d /, `RCPT TO:<${String(t)}> got ${r}`);
    }
    const data = await w.cmd('DATA');
    assert.match(data, /^5\d\d /, `DATA got ${data}`);
    w.end();
    // XCLIENT/XFORWARD style overrides are not commands here.
    const x = await SmtpWire.open(ports.smtp);
    await x.cmd('EHLO c');
    const xclient = await x.cmd('XCLIENT ADDR=127.0.0.1 LOGIN=alice@example.test');
    assert.match(xclient, /^5\d\d /, `XCLIENT got ${xclient}`);
    x.end();
    // Submission without AUTH relays nothing either.
    const s = await SmtpWire.open(ports.submission);
    await s.cmd('EHLO c');
    const mail = await s.cmd(`MAIL FROM:<${ALICE}>`);
    assert.match(mail, /^530 /, `MAIL got ${mail}`);
    const rcpt = await s.cmd('RCPT TO:<victim@remote.test>');
    assert.match(rcpt, /^5\d\d /, `RCPT got ${rcpt}`);
    s.end();
    // A domain alias of a remote domain cannot be made, so it cannot open a relay.
    const alias = await api('/api/domains/alias.test/aliases', {
      method: 'POST',
      body: JSON.stringify({ target: 'remote.test' }),
    });
    assert.equal(alias.status, 404);
    const a = await SmtpWire.open(ports.smtp);
    await a.cmd('EHLO c');
    await a.cmd('MAIL FROM:<x@remote.test>');
    assert.match(await a.cmd('RCPT TO:<victim@alias.test>'), /^5\d\d /);
    a.end();
    // The canary: an authenticated submission to the same domain does reach the sink, so the sink
    // would have seen any relayed message.
    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port: ports.submission,
      secure: false,
      ignoreTLS: true,
      auth: { user: ALICE, pass: ALICE_PASSWORD },
    });
    await t.sendMail({ from: ALICE, to: 'canary@remote.test', subject: 'canary', text: 'canary' });
    await until(
      'the canary at the remote sink',
      async () => sunk.some((m) => m.to.includes('canary@remote.test')),
      30_000,
    );
    assert.deepEqual(
      sunk.flatMap((m) => m.to).filter((to) => to !== 'canary@remote.test'),
      [],
      'a refused recipient reached the remote sink',
    );
  });

  test('TLS 1.0 and 1.1 are refused and TLS 1.2 and 1.3 accepted on every STARTTLS and implicit-TLS port', async () => {
    const starttls = {
      imap: { greeting: /^\* OK[^\n]*\n/m, command: 's STARTTLS', ready: /^s OK[^\n]*\n/m },
      pop3: { greeting: /^\+OK[^\n]*\n/m, command: 'STLS', ready: /^\+OK[^\n]*\n/m },
      smtp: { greeting: /^220 [^\n]*\n/m, command: 'EHLO c\r\nSTARTTLS', ready: /^220 2\.0\.0[^\n]*\n/m },
    };
    const listeners: [string, number, (typeof starttls)[keyof typeof starttls] | undefined][] = [
      ['imap STARTTLS', ports.imap, starttls.imap],
      ['imaps', ports.imaps, undefined],
      ['pop3 STLS', ports.pop3, starttls.pop3],
      ['pop3s', ports.pop3s, undefined],
      ['smtp STARTTLS', ports.smtp, starttls.smtp],
      ['submission STARTTLS', ports.submission, starttls.smtp],
      ['smtps', ports.smtps, undefined],
    ];
    for (const [name, port, st] of listeners) {
      for (const old of ['TLSv1', 'TLSv1.1'] as const) {
        const r = await handshake(port, old, st);
        assert.ok(!r.startsWith('TLSv'), `${name} accepted ${old}`);
        // The server's alert, not a failure of the client to offer the version.
        assert.match(
          r,
          /ALERT_PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|ECONNRESET|WRONG_VERSION/i,
          `${name} ${old}: ${r}`,
        );
      }
      for (const good of ['TLSv1.2', 'TLSv1.3'] as const) {
        assert.equal(await handshake(port, good, st), good, `${name} ${good}`);
      }
    }
  });

  test('passwords are stored as scrypt hashes: no Redis key or value holds a password', async () => {
    const r = main.runtime.redis;
    const hashes: string[] = [];
    let values = '';
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'COUNT', 1000);
      cursor = next;
      for (const key of keys) {
        const type = await r.type(key);
        values += key;
        if (type === 'string') values += (await r.getBuffer(key))?.toString('latin1') ?? '';
        if (type === 'hash') {
          const h = await r.hgetall(key);
          values += JSON.stringify(h);
          if (h.password) hashes.push(h.password);
        }
        if (type === 'set') values += (await r.smembers(key)).join(' ');
      }
    } while (cursor !== '0');
    assert.ok(hashes.length >= 2, 'user records with a password field');
    for (const h of hashes)
      assert.match(h, /^\$scrypt\$ln=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    for (const p of [ALICE_PASSWORD, BOB_PASSWORD]) {
      for (const form of [p, b64(p), b64(`\0${ALICE}\0${p}`), b64(`\0${BOB}\0${p}`)]) {
        assert.ok(!values.includes(form), 'a password is in Redis');
      }
    }
    // The admin API never shows a hash either.
    const users = await (await api('/api/users')).text();
    assert.ok(users.includes(ALICE) && !users.includes('$scrypt$'), users);
  });

  test('admin API with ADMIN_TOKEN: 401 without the token or with a wrong one, on every route; 200 with it (curl)', async () => {
    /** The HTTP status curl gets for the admin API path last in `args`. */
    const curlStatus = async (...args: string[]) => {
      const path = args.pop() ?? '';
      const url = `http://127.0.0.1:${http}${path}`;
      return (await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', ...args, url])).stdout;
    };
    const routes = [
      '/api/domains',
      '/api/users',
      '/api/queue',
      '/api/domains/example.test/dkim',
      `/api/users/${ALICE}/quota`,
    ];
    for (const path of routes) {
      for (const header of [
        [],
        ['-H', 'Authorization: Bearer wrong'],
        ['-H', `Authorization: Bearer ${ADMIN_TOKEN}x`],
        ['-H', `Authorization: bearer${ADMIN_TOKEN}`],
        ['-H', `Authorization: Basic ${b64(`admin:${ADMIN_TOKEN}`)}`],
      ]) {
        assert.equal(await curlStatus(...header, path), '401', `${path} ${header.join(' ')}`);
      }
      assert.match(await curlStatus('-H', `Authorization: Bearer ${ADMIN_TOKEN}`, path), /^(200|404)$/, path);
    }
    // A write without the token changes nothing.
    const body = JSON.stringify({ address: 'mallory@example.test', password: 'x' });
    assert.equal(await curlStatus('-X', 'POST', '-d', body, '/api/users'), '401');
    assert.ok(!(await (await api('/api/users')).text()).includes('mallory'));
  });

  test('admin API without a token serves loopback clients only: a non-loopback peer gets 401 on every route', async () => {
    // The admin routes with no token configured, behind a listener that presents every request as
    // coming from 192.0.2.7 (no traffic leaves loopback: only the peer address the routes see).
    const rt = { ...main.runtime, config: { ...main.runtime.config, adminToken: '' } };
    const routes: Route[] = [
      queueRoute(rt, silent),
      dkimRoute(rt.directory, '', silent),
      quotaRoute(rt.directory, new MailboxRpcClient(rt.nats, rt.blobs), '', silent),
      adminRoute(rt.directory, rt.nats, '', silent),
    ];
    const serve = (peer: string | null): Promise<Server> =>
      new Promise((resolve) => {
        const server = createServer((req: IncomingMessage, res) => {
          if (peer) Object.defineProperty(req.socket, 'remoteAddress', { value: peer });
          void (async () => {
            for (const route of routes)
              if (await route(req, res, new URL(req.url ?? '/', 'http://x'))) return;
            res.statusCode = 404;
            res.end();
          })();
        });
        server.listen(0, '127.0.0.1', () => resolve(server));
      });
    const remote = await serve('192.0.2.7');
    const mapped = await serve('::ffff:10.1.2.3');
    const local = await serve(null);
    try {
      for (const path of [
        '/api/domains',
        '/api/users',
        '/api/queue',
        '/api/domains/example.test/dkim',
        `/api/users/${ALICE}/quota`,
      ]) {
        for (const s of [remote, mapped]) {
          const res = await fetch(`http://127.0.0.1:${(s.address() as AddressInfo).port}${path}`);
          assert.equal(res.status, 401, path);
          // A token sent anyway does not help when none is configured.
          const withToken = await fetch(`http://127.0.0.1:${(s.address() as AddressInfo).port}${path}`, {
            headers: { authorization: 'Bearer ' },
          });
          assert.equal(withToken.status, 401, path);
        }
        const res = await fetch(`http://127.0.0.1:${(local.address() as AddressInfo).port}${path}`);
        assert.notEqual(res.status, 401, path);
      }
    } finally {
      for (const s of [remote, mapped, local]) s.close();
    }
  });
});

function spawnDaemon(bin: string, args: string[]): ChildProcess {
  return spawn(bin, args, { stdio: 'ignore' });
}

async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

describe('security: NATS and Redis with credentials and TLS; no secret in logs or spans', () => {
  const NATS_PASSWORD = 'nats-Secret-91b3f2';
  const REDIS_PASSWORD = 'redis-Secret-5d0e7a';
  const WRONG_PASSWORD = 'wrong-Secret-0f0f0f';
  const nkey = nkeys.createUser();
  let dir: string;
  let ca: { ca: string; cert: string; key: string };
  let natsd: ChildProcess;
  let redisd: ChildProcess;
  let natsPort: number;
  let redisPort: number;
  let postino: ChildProcess;
  let output = '';
  let receiver: Server;
  const spans: string[] = [];
  let ports: Ports;
  let http: number;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'postino-sec-'));
    const testCa = new TestCa('Postino Test CA', dir);
    testCa.issue('server', ['IP:127.0.0.1', 'DNS:localhost']);
    ca = { ca: testCa.file('ca.pem'), cert: testCa.file('server.pem'), key: testCa.file('server.key') };
    natsPort = await freePort();
    redisPort = await freePort();
    const seedFile = join(dir, 'user.nk');
    writeFileSync(seedFile, new TextDecoder().decode(nkey.getSeed()));
    writeFileSync(
      join(dir, 'nats.conf'),
      `listen: 127.0.0.1:${natsPort}
jetstream { store_dir: "${join(dir, 'js')}" }
tls { cert_file: "${ca.cert}", key_file: "${ca.key}", timeout: 5 }
authorization {
  users: [
    { user: postino, password: "${NATS_PASSWORD}" }
    { nkey: ${nkey.getPublicKey()} }
  ]
}
`,
    );
    natsd = spawnDaemon('nats-server', ['-c', join(dir, 'nats.conf')]);
    redisd = spawnDaemon('redis-server', [
      '--bind',
      '127.0.0.1',
      '--port',
      '0',
      '--tls-port',
      String(redisPort),
      '--tls-cert-file',
      ca.cert,
      '--tls-key-file',
      ca.key,
      '--tls-ca-cert-file',
      ca.ca,
      '--tls-auth-clients',
      'no',
      '--dir',
      dir,
      '--save',
      '',
      '--appendonly',
      'no',
      '--user',
      'default',
      'off',
      '--user',
      'postino',
      'on',
      `>${REDIS_PASSWORD}`,
      '~*',
      '&*',
      '+@all',
    ]);
    await Promise.all([waitForPort('127.0.0.1', natsPort), waitForPort('127.0.0.1', redisPort)]);
    receiver = await new Promise<Server>((resolve) => {
      const s = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          if (req.url === '/v1/traces') spans.push(Buffer.concat(chunks).toString('utf8'));
          res.setHeader('content-type', 'application/json');
          res.end('{}');
        });
      });
      s.listen(0, '127.0.0.1', () => resolve(s));
    });
    http = await freePort();
    let env: Record<string, string>;
    ({ ports, env } = await testConfig({
      NATS_URL: `tls://127.0.0.1:${natsPort}`,
      NATS_USER: 'postino',
      NATS_PASSWORD,
      NATS_TLS_CA_FILE: ca.ca,
      REDIS_URL: `rediss://postino:${REDIS_PASSWORD}@127.0.0.1:${redisPort}`,
      REDIS_TLS_CA_FILE: ca.ca,
      ADMIN_TOKEN,
      LOG_LEVEL: 'trace',
      HTTP_PORT: String(http),
      MAIL_AUTH_CHECKS: 'false',
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_BSP_SCHEDULE_DELAY: '100',
    }));
    postino = spawn(process.execPath, [POSTINO, 'run', ...Object.keys(SERVICES)], {
      // The first suite's in-process services set OTEL_TRACES_EXPORTER=none in this process.
      env: { ...process.env, ...env, OTEL_TRACES_EXPORTER: 'otlp', OTEL_SERVICE_NAME: 'postino' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    postino.stdout?.on('data', (c: Buffer) => (output += c.toString('utf8')));
    postino.stderr?.on('data', (c: Buffer) => (output += c.toString('utf8')));
    await until(
      'postino with NATS and Redis over TLS with credentials to be ready',
      async () => {
        if (postino.exitCode !== null)
          throw new Error(`exited with ${postino.exitCode}: ${output.slice(-2000)}`);
        const res = await fetch(`http://127.0.0.1:${http}/readyz`).catch(() => null);
        return res?.status === 200;
      },
      60_000,
    );
  });

  after(async () => {
    await stopChild(postino);
    await Promise.all([stopChild(natsd), stopChild(redisd)]);
    await new Promise<void>((resolve) => (receiver ? receiver.close(() => resolve()) : resolve()));
  });

  test('NATS refuses clients without credentials or without TLS, so no stranger can call mbox.rpc.* or read the BLOBS bucket', async () => {
    // Plaintext, even with the right password: the server requires TLS before anything else.
    const raw = connect({ host: '127.0.0.1', port: natsPort });
    let said = '';
    raw.on('data', (c: Buffer) => {
      said += c.toString('latin1');
      if (said.startsWith('INFO ') && !said.includes('CONNECT sent')) {
        said += '\nCONNECT sent\n';
        raw.write(`CONNECT {"user":"postino","pass":"${NATS_PASSWORD}","verbose":false}\r\nPING\r\n`);
      }
    });
    raw.on('error', () => undefined);
    await until('the plaintext NATS client refused', async () => /-ERR/.test(said) || raw.destroyed, 10_000);
    raw.destroy();
    assert.match(said, /"tls_required":true/);
    assert.doesNotMatch(said, /PONG/);
    // No credentials.
    await assert.rejects(
      connectNats(`tls://127.0.0.1:${natsPort}`, 'stranger', silent, { tlsCaFile: ca.ca }).then(async (n) => {
        await n.nc.close();
      }),
      /Authorization Violation|authorization/i,
    );
    // A wrong password.
    await assert.rejects(
      connectNats(`tls://127.0.0.1:${natsPort}`, 'stranger', silent, {
        user: 'postino',
        password: WRONG_PASSWORD,
        tlsCaFile: ca.ca,
      }).then(async (n) => {
        await n.nc.close();
      }),
      /Authorization Violation|authorization/i,
    );
    // Credentials but no trust in the server's CA: the client refuses the handshake.
    await assert.rejects(
      connectNats(`tls://127.0.0.1:${natsPort}`, 'stranger', silent, {
        user: 'postino',
        password: NATS_PASSWORD,
      }).then(async (n) => {
        await n.nc.close();
      }),
    );
    // The nkey user (a seed file) and the password in the URL are accepted: an RPC round trip.
    const seedFile = join(dir, 'user.nk');
    for (const [url, security] of [
      [`tls://127.0.0.1:${natsPort}`, { nkeySeedFile: seedFile, tlsCaFile: ca.ca }],
      [`tls://postino:${NATS_PASSWORD}@127.0.0.1:${natsPort}`, { tlsCaFile: ca.ca }],
    ] as const) {
      const n = await connectNats(url, 'friend', silent, security);
      const reply = await n.nc.request(SUBJECTS.rpc('list'), encode(pb.ListFoldersRequest, { user: ALICE }), {
        timeout: 10_000,
      });
      assert.ok(reply.data.length >= 0);
      await n.nc.close();
    }
  });

  test('NATS token in NATS_URL (nats://token@host) authenticates; without it the server refuses', async () => {
    const port = await freePort();
    const token = 'nats-Token-a1b2c3';
    const d = spawnDaemon('nats-server', [
      '-a',
      '127.0.0.1',
      '-p',
      String(port),
      '-js',
      '-sd',
      join(dir, 'js-token'),
      '--auth',
      token,
    ]);
    try {
      await waitForPort('127.0.0.1', port);
      const n = await connectNats(`nats://${token}@127.0.0.1:${port}`, 'token', silent);
      await n.nc.flush();
      await n.nc.close();
      await assert.rejects(
        connectNats(`nats://127.0.0.1:${port}`, 'no-token', silent).then(async (x) => {
          await x.nc.close();
        }),
        /Authorization Violation|authorization/i,
      );
    } finally {
      await stopChild(d);
    }
  });

  test('Redis refuses the default user and clients without TLS', async () => {
    const plain = new Redis({
      host: '127.0.0.1',
      port: redisPort,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    plain.on('error', () => undefined);
    await assert.rejects(plain.connect().then(() => plain.ping()));
    plain.disconnect();
    const anonymous = new Redis(`rediss://127.0.0.1:${redisPort}`, {
      tls: { rejectUnauthorized: false },
      lazyConnect: true,
      enableReadyCheck: false,
      protocol: 2,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    anonymous.on('error', () => undefined);
    await assert.rejects(
      anonymous.connect().then(() => anonymous.get('x')),
      /NOAUTH|WRONGPASS|authentication/i,
    );
    anonymous.disconnect();
  });

  test('the cluster accepts and delivers a message with NATS and Redis requiring credentials and TLS, and no secret reaches a log line or a span', async () => {
    const api = (path: string, body: unknown) =>
      fetch(`http://127.0.0.1:${http}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
        body: JSON.stringify(body),
      });
    assert.equal((await api('/api/domains', { name: 'example.test' })).status, 201);
    assert.equal((await api('/api/users', { address: ALICE, password: ALICE_PASSWORD })).status, 201);
    assert.equal((await api('/api/users', { address: BOB, password: BOB_PASSWORD })).status, 201);
    // Submission with AUTH PLAIN (nodemailer) and with AUTH LOGIN, one wrong password first.
    const bad = nodemailer.createTransport({
      host: '127.0.0.1',
      port: ports.submission,
      secure: false,
      ignoreTLS: true,
      auth: { user: ALICE, pass: WRONG_PASSWORD },
    });
    await assert.rejects(bad.sendMail({ from: ALICE, to: BOB, subject: 'x', text: 'x' }));
    for (const method of ['PLAIN', 'LOGIN']) {
      const t = nodemailer.createTransport({
        host: '127.0.0.1',
        port: ports.submission,
        secure: false,
        ignoreTLS: true,
        auth: { user: ALICE, pass: ALICE_PASSWORD, method },
      });
      const info = await t.sendMail({
        from: ALICE,
        to: BOB,
        subject: `over TLS backends ${method}`,
        text: 'hello',
      });
      assert.match(info.response, /^250 /);
    }
    // Bob reads them over IMAP (LOGIN), then AUTHENTICATE PLAIN, then POP3 USER/PASS and AUTH PLAIN.
    await until(
      'both messages in bob’s INBOX',
      async () => (await folderOf(ports.imap, BOB, BOB_PASSWORD, 'INBOX')).length === 2,
      30_000,
    );
    const w = await ImapWire.open(ports.imap);
    assert.match(await w.cmd(`AUTHENTICATE PLAIN ${b64(`\0${BOB}\0${BOB_PASSWORD}`)}`), /^t1 OK/m);
    assert.match(await w.cmd('SELECT INBOX'), /^\* 2 EXISTS/m);
    assert.match(await w.cmd('FETCH 1:* (BODY.PEEK[])'), /over TLS backends PLAIN/);
    w.end();
    const wrong = await ImapWire.open(ports.imap);
    assert.match(await wrong.cmd(`LOGIN ${BOB} ${WRONG_PASSWORD}`), /^t1 NO/m);
    wrong.end();
    const p = await Pop3Wire.open(ports.pop3);
    await p.cmd(`USER ${BOB}`);
    assert.match(await p.cmd(`PASS ${BOB_PASSWORD}`), /^\+OK maildrop has 2 messages/);
    await p.cmd('QUIT');
    p.end();
    const p2 = await Pop3Wire.open(ports.pop3);
    assert.match(await p2.cmd(`AUTH PLAIN ${b64(`\0${BOB}\0${BOB_PASSWORD}`)}`), /^\+OK/);
    await p2.cmd('QUIT');
    p2.end();
    // Every span exported by now, and the process stopped so every log line is written.
    await until('spans of the IMAP and POP3 sessions', async () => /pop3/i.test(spans.join('\n')), 30_000);
    await new Promise<void>((resolve) => {
      postino.once('exit', () => resolve());
      postino.kill('SIGTERM');
    });
    const logs = output;
    const exported = spans.join('\n');
    // The check can fail: the logs are trace-level and the spans cover the sessions.
    assert.ok(logs.split('\n').length > 50, 'trace-level logs were written');
    assert.ok(logs.includes('"level":"debug"'), 'debug lines were logged');
    assert.match(exported, /IMAP/);
    const secrets: Record<string, string> = {
      ADMIN_TOKEN,
      NATS_PASSWORD,
      REDIS_PASSWORD,
      'nkey seed': new TextDecoder().decode(nkey.getSeed()),
    };
    for (const [who, pw] of [
      ['alice', ALICE_PASSWORD],
      ['bob', BOB_PASSWORD],
      ['wrong', WRONG_PASSWORD],
    ] as const) {
      secrets[`${who} password`] = pw;
      secrets[`${who} password base64`] = b64(pw);
      for (const user of [ALICE, BOB]) {
        secrets[`${who} PLAIN`] = b64(`\0${user}\0${pw}`);
        secrets[`${who} PLAIN ${user}`] = b64(`\0${user}\0${pw}`);
      }
    }
    for (const [name, secret] of Object.entries(secrets)) {
      assert.ok(!logs.includes(secret), `${name} is in the logs`);
      assert.ok(!exported.includes(secret), `${name} is in a span`);
    }
  });
});

describe('security: the chart keeps NATS inside the release and hands credentials from Secrets', () => {
  interface Obj {
    kind: string;
    metadata: { name: string };
    data?: Record<string, string>;
    spec?: Record<string, unknown>;
  }
  interface Container {
    env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
    volumeMounts?: { name: string; mountPath: string }[];
  }
  const render = (args: string[]): Obj[] =>
    parseAllDocuments(helmTemplate(args))
      .map((d) => d.toJS() as Obj | null)
      .filter((d): d is Obj => d !== null);
  const podOf = (o: Obj) =>
    (
      o.spec as {
        template: {
          spec: { containers: Container[]; volumes?: { name: string; secret?: { secretName: string } }[] };
        };
      }
    ).template.spec;

  test('the embedded NATS requires a generated password that every service and NATS itself read from one Secret; only the release’s pods reach its client port', () => {
    const objs = render(['--set', 'nats.embedded.enabled=true']);
    const conf =
      objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'postino-nats')?.data?.['nats.conf'] ??
      '';
    assert.match(conf, /authorization \{\s*user: \$NATS_USER\s*password: \$NATS_PASSWORD\s*\}/);
    const secret = objs.find((o) => o.kind === 'Secret' && o.metadata.name === 'postino-nats-auth');
    assert.ok(secret?.data?.password && Buffer.from(secret.data.password, 'base64').length >= 32);
    const workloads = objs.filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet');
    assert.ok(workloads.length >= 8);
    for (const w of workloads) {
      const env = podOf(w).containers[0]?.env ?? [];
      for (const name of ['NATS_USER', 'NATS_PASSWORD']) {
        const ref = env.find((e) => e.name === name)?.valueFrom?.secretKeyRef;
        assert.equal(ref?.name, 'postino-nats-auth', `${w.metadata.name} ${name}`);
      }
    }
    const policy = objs.find((o) => o.kind === 'NetworkPolicy' && o.metadata.name === 'postino-nats');
    const ingress = (
      policy?.spec as {
        ingress: {
          ports: { port: number }[];
          from: { podSelector?: { matchLabels: Record<string, string> } }[];
        }[];
      }
    ).ingress;
    const client = ingress.find((i) => i.ports.some((p) => p.port === 4222));
    assert.deepEqual(client?.from, [
      {
        podSelector: {
          matchLabels: { 'app.kubernetes.io/name': 'postino', 'app.kubernetes.io/instance': 'postino' },
        },
      },
    ]);
    const routes = ingress.find((i) => i.ports.some((p) => p.port === 6222));
    assert.equal(routes?.from[0]?.podSelector?.matchLabels['app.kubernetes.io/component'], 'nats');
  });

  test('an external NATS and Redis with credentials and a private CA: the Secrets and CA files reach every service', () => {
    const objs = render([
      '--set',
      'nats.url=tls://nats.nats:4222',
      '--set',
      'nats.auth.existingSecret=nats-creds',
      '--set',
      'nats.tls.caSecret=nats-ca',
      '--set',
      'redis.existingSecret=redis-url',
      '--set',
      'redis.tls.caSecret=redis-ca',
    ]);
    const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'postino')?.data ?? {};
    assert.equal(cm.NATS_TLS_CA_FILE, '/etc/postino/nats-ca/ca.crt');
    assert.equal(cm.REDIS_TLS_CA_FILE, '/etc/postino/redis-ca/ca.crt');
    assert.equal(cm.REDIS_URL, undefined, 'the Redis URL (and its password) stays in the Secret');
    assert.ok(!objs.some((o) => o.kind === 'Secret' && o.metadata.name === 'postino-nats-auth'));
    for (const d of objs.filter((o) => o.kind === 'Deployment')) {
      const pod = podOf(d);
      const c = pod.containers[0];
      assert.equal(
        c?.env?.find((e) => e.name === 'NATS_PASSWORD')?.valueFrom?.secretKeyRef?.name,
        'nats-creds',
      );
      assert.equal(c?.env?.find((e) => e.name === 'REDIS_URL')?.valueFrom?.secretKeyRef?.name, 'redis-url');
      for (const [volume, path, secretName] of [
        ['nats-ca', '/etc/postino/nats-ca', 'nats-ca'],
        ['redis-ca', '/etc/postino/redis-ca', 'redis-ca'],
      ] as const) {
        assert.equal(c?.volumeMounts?.find((m) => m.name === volume)?.mountPath, path, d.metadata.name);
        assert.equal(pod.volumes?.find((v) => v.name === volume)?.secret?.secretName, secretName);
      }
    }
  });
});

test('NATS and Redis URLs are shown with their passwords and tokens masked (postino up, startup errors)', () => {
  assert.equal(
    redactUrl('nats://postino:s3cret@n1:4222,tls://t0ken@n2:4222'),
    'nats://postino:***@n1:4222,tls://***@n2:4222',
  );
  assert.equal(redactUrl('rediss://postino:s3cret@r:6380'), 'rediss://postino:***@r:6380');
  assert.equal(redactUrl('redis://:s3cret@r:6379'), 'redis://:***@r:6379');
  assert.equal(redactUrl('redis://r:6379'), 'redis://r:6379');
});
