/**
 * Spans and command durations of the SMTP and IMAP sessions, over real sockets with the storage
 * hooks in memory and the spans collected in memory: a span per command under the session span,
 * the DATA body inside one span, IDLE's span ended once idling, new traces for a second mail
 * transaction and for a long session, bounded metric labels, and no secret in any attribute.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { pino } from 'pino';
import { ProtocolTelemetry } from '../../services/core/telemetry.ts';
import { registry } from '../../services/core/metrics.ts';
import { COMMANDS } from '../../services/smtp-ingress/commands.ts';
import { Session, type SessionHooks } from '../../services/smtp-ingress/session.ts';
import { REPLIES, SmtpReply } from '../../services/smtp-ingress/replies.ts';
import { createImapServer, type ImapServer } from '../../services/imap/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../helpers/memory-mailbox.ts';
import { Wire } from '../helpers/smtp-wire.ts';
import { until } from '../helpers/servers.ts';

const exporter = new InMemorySpanExporter();
const sdk = new NodeSDK({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

const parentOf = (s: ReadableSpan): string => s.parentSpanContext?.spanId ?? '';
const named = (name: string): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.name === name);

/** Reads CRLF lines from an IMAP connection. */
class Lines {
  #buffer = '';
  #wake: (() => void) | null = null;
  readonly socket: Socket;
  constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      this.#buffer += c.toString('latin1');
      this.#wake?.();
    });
  }
  /** Waits for a line starting with `prefix`; returns it. */
  async until(prefix: string): Promise<string> {
    for (;;) {
      const line = this.#buffer.split('\r\n').find((l) => l.startsWith(prefix));
      if (line !== undefined) {
        this.#buffer = this.#buffer.slice(this.#buffer.indexOf(line) + line.length + 2);
        return line;
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }
  send(line: string): void {
    this.socket.write(`${line}\r\n`);
  }
}

describe('session telemetry', () => {
  let smtp: Server;
  let smtpPort: number;
  let imap: ImapServer;
  let imapPort: number;

  before(async () => {
    sdk.start();
    const telemetry = new ProtocolTelemetry('SMTP', Object.keys(COMMANDS));
    const hooks: SessionHooks = {
      connect: async () => null,
      close: () => undefined,
      error: () => undefined,
      authenticate: async (_i, login, password) =>
        password === 'alice-password' ? { user: login } : REPLIES.badCredentials(),
      mailFrom: async () => null,
      rcptTo: async () => null,
      accept: async () => new SmtpReply(250, '2.0.0', 'Ok: queued as Q1'),
      observe(info, local) {
        const trace = telemetry.session({
          remoteAddress: info.remoteAddress,
          remotePort: info.remotePort,
          localAddress: local.address,
          localPort: local.port,
        });
        return {
          command: (verb) => {
            if (verb === 'MAIL' && info.transactions > 0) trace.newTrace();
            return trace.command(verb);
          },
          end: () => trace.end(),
        };
      },
    };
    smtp = createServer((socket) => {
      const session = new Session(
        socket,
        {
          port: 'submission',
          hostname: 'mx.example.test',
          limits: {
            maxMessageSize: 100_000,
            maxRecipients: 10,
            idleTimeoutMs: 10_000,
            sessionTimeoutMs: 60_000,
            acceptTimeoutMs: 5000,
          },
          tlsContext: () => null,
          authEnabled: true,
          authRequired: true,
          plaintextAuthAllowed: true,
        },
        hooks,
      );
      void session.start();
    });
    await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', resolve));
    smtpPort = (smtp.address() as { port: number }).port;

    // Segments of 4 commands, so a test can see a long session cut into several traces.
    const imapTelemetry = new ProtocolTelemetry('IMAP', ['LOGIN', 'SELECT', 'IDLE', 'NOOP', 'LOGOUT'], {
      maxCommands: 4,
      maxAgeMs: 60_000,
    });
    imap = createImapServer({
      mailbox: new MemoryMailbox(),
      auth: new MemoryAuthenticator({ 'bob@example.test': 'bob-password' }),
      logger: pino({ level: 'silent' }),
      hostname: 'imap.example.test',
      allowPlaintextAuth: true,
      hooks: { session: (peer) => imapTelemetry.session(peer) },
    });
    imapPort = await imap.listen(0, '127.0.0.1');
  });

  after(async () => {
    smtp?.close();
    await imap?.close();
    await sdk.shutdown();
  });

  test('SMTP: one span per command under the session, DATA to its final reply, a new trace per transaction', async () => {
    exporter.reset();
    const w = await Wire.open(smtpPort);
    await w.reply();
    await w.cmd('EHLO client.example.test');
    const plain = Buffer.from('\0alice@example.test\0alice-password').toString('base64');
    assert.match(await w.cmd(`AUTH PLAIN ${plain}`), /^235/);
    for (let n = 0; n < 2; n++) {
      await w.cmd('MAIL FROM:<alice@example.test>');
      await w.cmd('RCPT TO:<bob@example.test>');
      assert.match(await w.cmd('DATA'), /^354/);
      const body = Array.from(
        { length: 200 },
        (_, i) => `line ${i} of a body that is not traced line by line`,
      );
      assert.match(await w.cmd(`Subject: ${n}\r\n\r\n${body.join('\r\n')}\r\n.`), /^250/);
    }
    assert.match(await w.cmd('XYZZY'), /^5/);
    await w.cmd('QUIT');
    await w.closed();
    await until('the session spans', async () => named('SMTP session').length === 2);

    const [first, second] = named('SMTP session').sort(
      (a, b) =>
        Number(a.attributes['postino.session.segment']) - Number(b.attributes['postino.session.segment']),
    );
    assert.ok(first && second);
    assert.equal(parentOf(first), '', 'the session is a root span');
    assert.notEqual(
      second.spanContext().traceId,
      first.spanContext().traceId,
      'the second message has its own trace',
    );
    assert.deepEqual(
      second.links.map((l) => l.context.spanId),
      [first.spanContext().spanId],
    );
    assert.equal(first.attributes['network.peer.address'], '127.0.0.1');
    assert.equal(first.attributes['server.port'], smtpPort);

    const data = named('SMTP DATA');
    assert.equal(data.length, 2, 'one span per DATA, none per body line');
    assert.deepEqual(
      data.map(parentOf).sort(),
      [first.spanContext().spanId, second.spanContext().spanId].sort(),
    );
    assert.equal(data[0]?.attributes['smtp.response.status'], 250, 'DATA ends with the final reply, not 354');
    const rcpt = named('SMTP RCPT')[0];
    assert.equal(rcpt?.attributes['smtp.response.code'], '2.1.5');
    assert.equal(rcpt?.attributes['network.peer.port'], first.attributes['network.peer.port']);
    assert.equal(named('SMTP other').length, 1, 'an unknown verb is `other`');
    assert.equal(named('SMTP QUIT')[0]?.attributes['smtp.response.status'], 221);
    // Every span of the session: the two segments and their commands, nothing for body lines.
    assert.equal(exporter.getFinishedSpans().length, 2 + 2 + 2 * 3 + 2);

    for (const span of exporter.getFinishedSpans()) {
      const text = JSON.stringify(span.attributes);
      assert.ok(!text.includes('alice-password') && !text.includes(plain), `${span.name} holds no password`);
    }
    const metrics = await registry.metrics();
    assert.match(metrics, /^postino_smtp_command_seconds_count\{command="DATA"\} 2$/m);
    assert.match(metrics, /^postino_smtp_command_seconds_count\{command="other"\} 1$/m);
    assert.doesNotMatch(metrics, /command="XYZZY"/);
  });

  test('IMAP: IDLE ends its span once idling; a long session is cut into linked segments', async () => {
    exporter.reset();
    const socket = connect(imapPort, '127.0.0.1');
    const c = new Lines(socket);
    await c.until('* OK');
    c.send('a1 LOGIN bob@example.test bob-password');
    await c.until('a1 OK');
    c.send('a2 SELECT INBOX');
    await c.until('a2 OK');
    c.send('a3 IDLE');
    await c.until('+ ');
    // The client is idling: the IDLE span is already over, with its continuation as status.
    const idle = await until('the IDLE span', async () => named('IMAP IDLE')[0]);
    assert.equal(idle.attributes['imap.response.status'], '+');
    c.send('DONE');
    await c.until('a3 OK');
    for (let i = 4; i < 9; i++) {
      c.send(`a${i} NOOP`);
      await c.until(`a${i} OK`);
    }
    c.send('a9 LOGOUT');
    await c.until('a9 OK');
    await new Promise<void>((resolve) => socket.on('close', () => resolve()));
    await until('the session spans', async () => named('IMAP session').length === 3);

    const segments = named('IMAP session');
    const first = segments.find((s) => s.attributes['postino.session.segment'] === 1);
    assert.ok(first);
    for (const segment of segments) {
      assert.equal(parentOf(segment), '');
      assert.ok(Number(segment.attributes['postino.session.commands']) <= 4);
      if (segment !== first)
        assert.deepEqual(
          segment.links.map((l) => l.context.spanId),
          [first.spanContext().spanId],
        );
    }
    const ids = new Set(segments.map((s) => s.spanContext().spanId));
    const commands = exporter
      .getFinishedSpans()
      .filter((s) => s.name.startsWith('IMAP ') && s.name !== 'IMAP session');
    assert.equal(commands.length, 9);
    for (const command of commands)
      assert.ok(ids.has(parentOf(command)), `${command.name} is under a session segment`);
    const login = named('IMAP LOGIN')[0];
    assert.equal(login?.attributes['imap.response.status'], 'OK');
    for (const span of exporter.getFinishedSpans()) {
      assert.ok(!JSON.stringify(span.attributes).includes('bob-password'), `${span.name} holds no password`);
    }
  });
});
