/**
 * PROXY protocol (v1 and v2) on every SMTP, IMAP and POP3 listener, over real sockets. 127.0.0.1
 * plays the load balancer (the only trusted source); other loopback addresses (127.0.0.2, ...) are
 * clients that reach the pods directly. A balancer claims a client such as 203.0.113.7 with
 * encodeV1/encodeV2, or curl --haproxy-protocol sends its own real address (v1). On the
 * implicit-TLS ports the header is glued in front of the ClientHello in one write, as balancers do.
 *
 * What a user would notice: SMTP's Received header, envelope, SPF result and per-client rate limit
 * name the claimed client; IMAP and POP3 refuse a password in clear text from a claimed remote
 * client (so the loopback trust goes by the real client, not the balancer), and log it. An
 * untrusted peer's header is just protocol input, a trusted peer that sends none is cut off, and a
 * malformed header closes that connection only.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { pino, type Logger } from 'pino';
import { encodeV1, encodeV2 } from '../../services/core/proxy-protocol.ts';
import { TrustedSources } from '../../services/core/proxy-protocol.ts';
import type { MaildropLock } from '../../services/core/mailbox-api.ts';
import type { Running } from '../../services/core/runtime.ts';
import { decode, pb, type Envelope } from '../../services/core/codec.ts';
import { STREAMS } from '../../services/core/nats.ts';
import { createImapServer, type ImapServer } from '../../services/imap/server.ts';
import { createPop3Server, type Pop3Server } from '../../services/pop3/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../helpers/memory-mailbox.ts';
import { startServices, testConfig, type Ports } from '../helpers/postino.ts';
import { startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { Wire, transcript } from '../helpers/smtp-wire.ts';

const run = promisify(execFile);

const BALANCER = '127.0.0.1';
const CLIENT = { address: '203.0.113.7', port: 40001 };
const to = (port: number) => ({ address: '127.0.0.1', port });

/** A v2 LOCAL header (the balancer's own connection, e.g. a health check). */
function v2Local(): Buffer {
  const h = encodeV2(CLIENT, to(1));
  h[12] = 0x20;
  return h;
}

/** A TCP connection from `localAddress`, with `first` written before anything else. */
async function dial(port: number, localAddress: string, first?: Buffer): Promise<Socket> {
  const sock = connect({ host: '127.0.0.1', port, localAddress });
  await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
  if (first) sock.write(first);
  return sock;
}

/**
 * A TLS client from `localAddress` whose first write carries `header` then the ClientHello in one
 * segment (the server reads bytes past the header and must hand them to TLS).
 */
async function dialTls(port: number, localAddress: string, header?: Buffer): Promise<TLSSocket> {
  const raw = await dial(port, localAddress);
  let prefix = header ?? null;
  const glue = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      raw.write(prefix ? Buffer.concat([prefix, chunk]) : chunk, callback);
      prefix = null;
    },
    final(callback) {
      raw.end();
      callback();
    },
    destroy(err, callback) {
      raw.destroy();
      callback(err);
    },
  });
  raw.on('data', (d: Buffer) => glue.push(d));
  raw.on('end', () => glue.push(null));
  raw.on('close', () => glue.destroy());
  raw.on('error', () => undefined);
  const secure = tlsConnect({ socket: glue, rejectUnauthorized: false });
  await new Promise((resolve, reject) => secure.once('secureConnect', resolve).once('error', reject));
  return secure;
}

/** A line client (IMAP, POP3): the next line, or null once the server has closed. */
class Lines {
  readonly sock: Socket;
  readonly closed: Promise<void>;
  #buf = '';
  #wake: (() => void) | null = null;
  #ended = false;

  constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      this.#buf += d.toString('latin1');
      this.#wake?.();
    });
    sock.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      sock.once('close', () => {
        this.#ended = true;
        this.#wake?.();
        resolve();
      }),
    );
  }

  async line(): Promise<string | null> {
    for (;;) {
      const end = this.#buf.indexOf('\r\n');
      if (end >= 0) {
        const line = this.#buf.slice(0, end);
        this.#buf = this.#buf.slice(end + 2);
        return line;
      }
      if (this.#ended) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /** Sends a line and reads until a line matching `last` (returns every line read). */
  async cmd(text: string, last: RegExp): Promise<string[]> {
    this.sock.write(`${text}\r\n`);
    const lines: string[] = [];
    for (;;) {
      const line = await this.line();
      if (line === null) throw new Error(`closed after ${JSON.stringify(lines)}`);
      lines.push(line);
      if (last.test(line)) return lines;
    }
  }

  /** Everything the server sent before it closed. */
  async rest(): Promise<string> {
    await this.closed;
    return this.#buf;
  }
}

/** Logs of a server at debug level, as parsed JSON lines. */
function capturedLogger(): { logger: Logger; records: Record<string, unknown>[] } {
  const records: Record<string, unknown>[] = [];
  const logger = pino(
    { level: 'debug' },
    { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, records };
}

class MemoryLock implements MaildropLock {
  readonly held = new Set<string>();
  async acquire(user: string): Promise<(() => Promise<void>) | null> {
    if (this.held.has(user)) return null;
    this.held.add(user);
    return async () => void this.held.delete(user);
  }
}

/** curl's exit code and output (it exits non-zero when the server closes on it). */
async function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('curl', ['-sS', '--max-time', '20', ...args], { timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('SMTP behind a PROXY protocol balancer (ports 25, 587, 465)', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let main: Running;
  let ports: Ports;

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    dns = await startDns([
      '--txt-record=lb-client.test,v=spf1 ip4:203.0.113.7 -all',
      '--txt-record=_dmarc.lb-client.test,v=DMARC1; p=none',
    ]);
    let config;
    ({ config, ports } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      MAIL_AUTH_CHECKS: 'true',
      // Loopback is an ordinary network here, so SPF is checked for every client.
      SMTP_TRUSTED_NETWORKS: 'none',
      SMTP_CONNECTION_RATE: '5',
      PROXY_PROTOCOL_TRUSTED: `${BALANCER}/32`,
      PROXY_PROTOCOL_TIMEOUT: '1s',
    }));
    main = await startServices(config, ['smtp-ingress']);
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser('bob@example.test', 'bob-password');
    await main.runtime.directory.addUser('alice@example.test', 'alice-password');
  });

  after(async () => {
    await main?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  async function envelopeOf(reply: string): Promise<{ env: Envelope; body: string }> {
    const queueId = /queued as ([0-9A-Z]+)/.exec(reply)?.[1];
    assert.ok(queueId, reply);
    const jsm = main.runtime.nats.jsm;
    const info = await jsm.streams.info(STREAMS.INGRESS);
    for (let seq = info.state.last_seq; seq >= info.state.first_seq && seq > 0; seq--) {
      const m = await jsm.streams.getMessage(STREAMS.INGRESS, { seq }).catch(() => null);
      const env = m ? decode(pb.Envelope, m.data) : null;
      if (env?.queueId === queueId)
        return { env, body: (await main.runtime.blobs.read(env.body?.id ?? '')).toString('utf8') };
    }
    throw new Error(`envelope ${queueId} not on INGRESS`);
  }

  /** A message from `from` to bob over `w` (greeting already read); returns the final reply. */
  async function mail(w: Wire, from: string, subject: string): Promise<string> {
    await transcript(
      w,
      `C: EHLO client.remote.test\nS: 250\nC: MAIL FROM:<${from}>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354`,
    );
    return w.cmd(`From: <${from}>\r\nTo: <bob@example.test>\r\nSubject: ${subject}\r\n\r\nHi.\r\n.`);
  }

  test('port 25, v1 and v2: Received header, envelope and SPF see the claimed client', async () => {
    for (const header of [encodeV1(CLIENT, to(25)), encodeV2(CLIENT, to(25))]) {
      const w = new Wire(await dial(ports.smtp, BALANCER, header));
      assert.match(await w.reply(), /^220 /);
      const reply = await mail(w, 'a@lb-client.test', 'through the balancer');
      w.end();
      assert.match(reply, /^250 /);
      const { env, body } = await envelopeOf(reply);
      assert.equal(env.clientIp, '203.0.113.7');
      // Stored with the Return-Path of the final delivery first (services/core/return-path.ts).
      assert.match(
        body,
        /^Return-Path: <a@lb-client\.test>\r\nReceived: from client\.remote\.test \(unknown \[203\.0\.113\.7\]\)/,
      );
      // The SPF record allows 203.0.113.7 only: the check used the claimed address.
      assert.match(body, /spf=pass [^;]*smtp\.mailfrom=a@lb-client\.test/);
    }
    // The same sender claimed from another address fails SPF.
    const w = new Wire(
      await dial(ports.smtp, BALANCER, encodeV2({ address: '198.51.100.9', port: 2 }, to(25))),
    );
    assert.match(await w.reply(), /^220 /);
    const reply = await mail(w, 'a@lb-client.test', 'from elsewhere');
    w.end();
    const { body } = await envelopeOf(reply);
    assert.match(body, /\[198\.51\.100\.9\]/);
    assert.match(body, /spf=fail [^;]*smtp\.mailfrom=a@lb-client\.test/);
  });

  test('the connection rate limit counts the claimed clients, not the balancer', async () => {
    const greeting = async (address: string): Promise<string> => {
      const w = new Wire(await dial(ports.smtp, BALANCER, encodeV1({ address, port: 3 }, to(25))));
      const reply = await w.reply();
      w.end();
      return reply;
    };
    for (let i = 0; i < 5; i++) assert.match(await greeting('203.0.113.50'), /^220 /);
    assert.match(await greeting('203.0.113.50'), /^421 4\.7\.0 Connection rate limit exceeded/);
    // Another client behind the same balancer is not throttled.
    assert.match(await greeting('203.0.113.51'), /^220 /);
  });

  test('port 587: AUTH in clear text is for loopback clients, judged by the header', async () => {
    const remote = new Wire(await dial(ports.submission, BALANCER, encodeV2(CLIENT, to(587))));
    await transcript(remote, 'S: 220\nC: EHLO laptop');
    const ehlo = await remote.reply();
    assert.doesNotMatch(ehlo, /AUTH/);
    assert.match(await remote.cmd('AUTH PLAIN AGJvYgBib2ItcGFzc3dvcmQ='), /^5\d\d /);
    remote.end();
    // v2 LOCAL: the balancer's own connection keeps the real (loopback) peer.
    const local = new Wire(await dial(ports.submission, BALANCER, v2Local()));
    await transcript(local, 'S: 220\nC: EHLO localhost');
    assert.match(await local.reply(), /AUTH PLAIN/);
    local.end();
  });

  test('port 465: the header comes before the TLS handshake, in the same segment', async () => {
    const tls = await dialTls(ports.smtps, BALANCER, encodeV2(CLIENT, to(465)));
    const w = new Wire(tls);
    assert.match(await w.reply(), /^220 /);
    const auth = Buffer.from('\0alice@example.test\0alice-password').toString('base64');
    await transcript(
      w,
      `C: EHLO laptop\nS: 250\nC: AUTH PLAIN ${auth}\nS: 235\nC: MAIL FROM:<alice@example.test>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354`,
    );
    const reply = await w.cmd('Subject: over 465\r\n\r\nHi.\r\n.');
    w.end();
    const { env, body } = await envelopeOf(reply);
    assert.equal(env.clientIp, '203.0.113.7');
    assert.match(body, /\[203\.0\.113\.7\]\)\r\n\tby mx\.example\.test \(Postino\) with ESMTPSA/);
    // An untrusted peer's header is handed to TLS, which fails; its plain handshake works.
    const bad = await dial(ports.smtps, '127.0.0.2', encodeV1(CLIENT, to(465)));
    bad.on('error', () => undefined);
    bad.resume();
    await once(bad, 'close');
    const direct = new Wire(await dialTls(ports.smtps, '127.0.0.2'));
    assert.match(await direct.reply(), /^220 /);
    direct.end();
  });

  test('curl --haproxy-protocol (v1, its real address) on ports 25 and 465; without it, cut off', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pp-curl-'));
    const file = join(dir, 'msg.eml');
    execFileSync('sh', ['-c', `printf 'Subject: curl\\r\\n\\r\\nHi.\\r\\n' > ${file}`]);
    const sent = await curl([
      '-v',
      '--haproxy-protocol',
      `smtp://127.0.0.1:${ports.smtp}`,
      '--mail-from',
      'c@lb-client.test',
      '--mail-rcpt',
      'bob@example.test',
      '-T',
      file,
    ]);
    assert.equal(sent.code, 0, sent.stderr);
    const queued = /< (250 .*queued as \w+)/.exec(sent.stderr)?.[1] ?? '';
    assert.match((await envelopeOf(queued)).body, /\[127\.0\.0\.1\]/);
    const submitted = await curl([
      '-v',
      '-k',
      '--haproxy-protocol',
      `smtps://127.0.0.1:${ports.smtps}`,
      '--user',
      'alice@example.test:alice-password',
      '--mail-from',
      'alice@example.test',
      '--mail-rcpt',
      'bob@example.test',
      '-T',
      file,
    ]);
    assert.equal(submitted.code, 0, submitted.stderr);
    // From the balancer's address but without a header: no greeting, the connection is closed.
    const bare = await curl([
      `smtp://127.0.0.1:${ports.smtp}`,
      '--mail-rcpt',
      'bob@example.test',
      '-T',
      file,
    ]);
    assert.notEqual(bare.code, 0);
  });

  test('an untrusted peer cannot forge its address: the PROXY line is an unknown command', async () => {
    const w = new Wire(await dial(ports.smtp, '127.0.0.3'));
    assert.match(await w.reply(), /^220 /);
    assert.match(await w.cmd(encodeV1(CLIENT, to(25)).toString().trimEnd()), /^5\d\d /);
    const reply = await mail(w, 'a@lb-client.test', 'direct');
    w.end();
    const { env, body } = await envelopeOf(reply);
    assert.equal(env.clientIp, '127.0.0.3');
    assert.match(body, /spf=fail/);
  });

  test('a trusted peer without a header, a silent one and a malformed header are cut off alone', async () => {
    const other = new Wire(
      await dial(ports.smtp, BALANCER, encodeV1({ address: '203.0.113.60', port: 5 }, to(25))),
    );
    assert.match(await other.reply(), /^220 /);
    // Speaking SMTP at once instead of a header.
    const talker = new Lines(await dial(ports.smtp, BALANCER, Buffer.from('EHLO me\r\n')));
    assert.equal(await talker.rest(), '');
    // Saying nothing: closed after PROXY_PROTOCOL_TIMEOUT, never greeted.
    const silent = new Lines(await dial(ports.smtp, BALANCER));
    assert.equal(await silent.rest(), '');
    for (const bad of ['PROXY TCP4 203.0.113.400 127.0.0.1 1 25\r\n', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n']) {
      const c = new Lines(await dial(ports.smtp, BALANCER, Buffer.from(bad)));
      assert.equal(await c.rest(), '');
    }
    // The session that was open meanwhile carries on.
    assert.match(await other.cmd('NOOP'), /^250 /);
    other.end();
  });
});

describe('IMAP and POP3 behind a PROXY protocol balancer (ports 143, 993, 110, 995)', () => {
  let imap: ImapServer;
  let pop3: Pop3Server;
  const port = { imap: 0, imaps: 0, pop3: 0, pop3s: 0 };
  const imapLog = capturedLogger();
  const pop3Log = capturedLogger();

  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pp-tls-'));
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
        .concat(['-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1'])
        .concat(['-subj', '/CN=mail.test']),
      { stdio: 'ignore' },
    );
    const tls = { cert: readFileSync(join(dir, 'c.pem')), key: readFileSync(join(dir, 'k.pem')) };
    const proxy = { trusted: new TrustedSources([`${BALANCER}/32`]), timeoutMs: 500 };
    const mailbox = new MemoryMailbox();
    await mailbox.deliver('bob@example.com', 'Subject: hello\r\n\r\nhi\r\n');
    const auth = new MemoryAuthenticator({ 'bob@example.com': 'secret' });
    imap = createImapServer({
      mailbox,
      auth,
      logger: imapLog.logger,
      hostname: 'imap.test',
      allowPlaintextAuth: false,
      tls,
      proxyProtocol: { plain: proxy, tls: proxy },
    });
    pop3 = createPop3Server({
      mailbox,
      auth,
      lock: new MemoryLock(),
      logger: pop3Log.logger,
      hostname: 'pop.test',
      allowPlaintextAuth: false,
      retrSetsSeen: false,
      tls,
      proxyProtocol: { plain: proxy, tls: proxy },
    });
    port.imap = await imap.listen(0, '127.0.0.1');
    port.imaps = await imap.listenTls(0, '127.0.0.1');
    port.pop3 = await pop3.listen(0, '127.0.0.1');
    port.pop3s = await pop3.listenTls(0, '127.0.0.1');
  });

  after(async () => {
    await imap?.close();
    await pop3?.close();
  });

  /** The `remote` the sessions logged, newest last. */
  const remotes = (records: Record<string, unknown>[]) =>
    records.map((r) => r.remote).filter((r): r is string => typeof r === 'string');

  test('IMAP 143: a claimed remote client is refused LOGIN in clear text; LOCAL and direct loopback are not', async () => {
    for (const header of [encodeV1(CLIENT, to(143)), encodeV2(CLIENT, to(143))]) {
      const c = new Lines(await dial(port.imap, BALANCER, header));
      assert.match((await c.line()) ?? '', /^\* OK/);
      const caps = await c.cmd('a CAPABILITY', /^a /);
      assert.match(caps.join('\n'), /LOGINDISABLED/);
      assert.match(
        (await c.cmd('b LOGIN bob@example.com secret', /^b /)).at(-1) ?? '',
        /^b NO \[PRIVACYREQUIRED\]/,
      );
      c.sock.destroy();
    }
    assert.equal(remotes(imapLog.records).at(-1), '203.0.113.7');
    const local = new Lines(await dial(port.imap, BALANCER, v2Local()));
    await local.line();
    assert.match((await local.cmd('a LOGIN bob@example.com secret', /^a /)).at(-1) ?? '', /^a OK/);
    local.sock.destroy();
    // An untrusted (direct, loopback) peer: its PROXY line is a bad command, not a new identity.
    const direct = new Lines(await dial(port.imap, '127.0.0.2', encodeV1(CLIENT, to(143))));
    await direct.line();
    assert.match((await direct.line()) ?? '', /^PROXY BAD /);
    assert.match((await direct.cmd('a LOGIN bob@example.com secret', /^a /)).at(-1) ?? '', /^a OK/);
    direct.sock.destroy();
  });

  test('IMAP 993: header then ClientHello in one segment; the session logs the claimed client', async () => {
    const before = imapLog.records.length;
    const c = new Lines(
      await dialTls(port.imaps, BALANCER, encodeV2({ address: '2001:db8::7', port: 9 }, to(993))),
    );
    assert.match((await c.line()) ?? '', /^\* OK/);
    assert.match((await c.cmd('a LOGIN bob@example.com secret', /^a /)).at(-1) ?? '', /^a OK/);
    c.sock.destroy();
    assert.ok(remotes(imapLog.records.slice(before)).includes('2001:db8::7'));
    // An untrusted peer's header goes to TLS, which fails.
    const bad = new Lines(await dial(port.imaps, '127.0.0.2', encodeV2(CLIENT, to(993))));
    assert.equal(await bad.rest(), '');
  });

  test('curl --haproxy-protocol on 143 and 993; without it the balancer is cut off', async () => {
    for (const url of [`imap://127.0.0.1:${port.imap}/`, `imaps://127.0.0.1:${port.imaps}/`]) {
      const ok = await curl(['-k', '--haproxy-protocol', '-u', 'bob@example.com:secret', url]);
      assert.equal(ok.code, 0, `${url}: ${ok.stderr}`);
      assert.match(ok.stdout, /INBOX/);
      const bare = await curl(['-k', '-u', 'bob@example.com:secret', url]);
      assert.notEqual(bare.code, 0, url);
    }
  });

  test('POP3 110: USER/PASS refused for a claimed remote client before STLS, accepted after', async () => {
    const c = new Lines(await dial(port.pop3, BALANCER, encodeV1(CLIENT, to(110))));
    assert.match((await c.line()) ?? '', /^\+OK/);
    assert.match((await c.cmd('USER bob@example.com', /^[+-]/))[0] ?? '', /^-ERR \[AUTH\]/);
    assert.equal(remotes(pop3Log.records).at(-1), '203.0.113.7');
    c.sock.destroy();
    // The direct loopback client is trusted, and its PROXY line is just an unknown command.
    const direct = new Lines(await dial(port.pop3, '127.0.0.2', encodeV1(CLIENT, to(110))));
    await direct.line();
    assert.match((await direct.line()) ?? '', /^-ERR/);
    assert.match((await direct.cmd('USER bob@example.com', /^[+-]/))[0] ?? '', /^\+OK/);
    assert.match((await direct.cmd('PASS secret', /^[+-]/))[0] ?? '', /^\+OK/);
    direct.sock.destroy();
  });

  test('POP3 995: header then ClientHello in one segment; logged as the claimed client', async () => {
    const before = pop3Log.records.length;
    const c = new Lines(await dialTls(port.pop3s, BALANCER, encodeV1(CLIENT, to(995))));
    assert.match((await c.line()) ?? '', /^\+OK/);
    assert.match((await c.cmd('USER bob@example.com', /^[+-]/))[0] ?? '', /^\+OK/);
    assert.match((await c.cmd('PASS secret', /^[+-]/))[0] ?? '', /^\+OK/);
    assert.match((await c.cmd('QUIT', /^[+-]/))[0] ?? '', /^\+OK/);
    assert.ok(remotes(pop3Log.records.slice(before)).includes('203.0.113.7'));
    for (const url of [`pop3://127.0.0.1:${port.pop3}/`, `pop3s://127.0.0.1:${port.pop3s}/`]) {
      const ok = await curl(['-k', '--haproxy-protocol', '-u', 'bob@example.com:secret', url]);
      assert.equal(ok.code, 0, `${url}: ${ok.stderr}`);
      assert.match(ok.stdout, /^1 \d+/);
    }
  });

  test('missing, late and malformed headers close that connection only', async () => {
    const imapOpen = new Lines(await dial(port.imap, BALANCER, encodeV1(CLIENT, to(143))));
    await imapOpen.line();
    const popOpen = new Lines(await dialTls(port.pop3s, BALANCER, encodeV1(CLIENT, to(995))));
    await popOpen.line();
    for (const p of [port.imap, port.imaps, port.pop3, port.pop3s]) {
      for (const first of [
        undefined, // silent: closed after the header timeout
        Buffer.from('a CAPABILITY\r\n'),
        Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n'),
        Buffer.concat([encodeV2(CLIENT, to(1)).subarray(0, 14), Buffer.from([0xff, 0xff])]),
      ]) {
        const c = new Lines(await dial(p, BALANCER, first));
        assert.equal(await c.rest(), '', `port ${p}, ${JSON.stringify(first?.toString('latin1'))}`);
      }
    }
    assert.match((await imapOpen.cmd('a NOOP', /^a /)).at(-1) ?? '', /^a OK/);
    assert.match((await popOpen.cmd('CAPA', /^\.$/))[0] ?? '', /^\+OK/);
    imapOpen.sock.destroy();
    popOpen.sock.destroy();
    await until('sessions closed', async () => imap.sessions() === 0 && pop3.sessions() === 0);
  });
});
