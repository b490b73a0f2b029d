/**
 * One message, one trace: the services export spans over OTLP/HTTP to a receiver run by the test,
 * and every hop of a local, a remote and a bounced message sits in the message's trace with its
 * parent links intact, across processes (the router runs in its own): the SMTP session and its
 * commands, the NATS hops, the Redis calls of the mailbox append. An IMAP session that reads the
 * message has its own trace, with a span per command. No password reaches a span.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ImapFlow } from 'imapflow';
import nodemailer from 'nodemailer';
import type { SMTPServer } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startSink } from '../helpers/sink.ts';
import { spawnServices, testConfig, type Ports, type ServiceProcess } from '../helpers/postino.ts';

interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  service: string;
  attributes: Record<string, unknown>;
}

/** OTLP/HTTP JSON receiver (the collector's /v1/traces endpoint). */
function startReceiver(spans: Span[]): Promise<Server> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url === '/v1/traces') {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          resourceSpans?: {
            resource?: { attributes?: { key: string; value: { stringValue?: string } }[] };
            scopeSpans?: {
              spans?: (Omit<Span, 'service' | 'attributes'> & {
                attributes?: { key: string; value: Record<string, unknown> }[];
              })[];
            }[];
          }[];
        };
        for (const rs of body.resourceSpans ?? []) {
          const service =
            rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              const attributes: Record<string, unknown> = {};
              for (const a of s.attributes ?? []) attributes[a.key] = Object.values(a.value)[0];
              spans.push({
                traceId: s.traceId,
                spanId: s.spanId,
                parentSpanId: s.parentSpanId ?? '',
                name: s.name,
                kind: s.kind,
                service,
                attributes,
              });
            }
          }
        }
      }
      res.setHeader('content-type', 'application/json');
      res.end('{}');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const SPAN_KIND = { INTERNAL: 1, SERVER: 2, CLIENT: 3, PRODUCER: 4, CONSUMER: 5 } as const;

/** Is `span` below `ancestor` (its child, grandchild...) in the spans of one trace? */
function descends(spans: Span[], span: Span | undefined, ancestor: Span | undefined): boolean {
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  for (let s = span; s?.parentSpanId; s = byId.get(s.parentSpanId)) {
    if (s.parentSpanId === ancestor?.spanId) return true;
  }
  return false;
}

describe('end-to-end traces over OTLP', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let sink: SMTPServer;
  let receiver: Server;
  let main: ServiceProcess;
  let router: ServiceProcess;
  let ports: Ports;
  const spans: Span[] = [];

  const send = async (to: string, subject: string): Promise<string> => {
    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port: ports.submission,
      secure: false,
      ignoreTLS: true,
      auth: { user: 'alice@example.test', pass: 'alice-password' },
    });
    const info = await t.sendMail({ from: 'alice@example.test', to, subject, text: 'traced' });
    const queueId = /queued as ([0-9A-Z]+)/.exec(info.response)?.[1];
    assert.ok(queueId);
    return queueId;
  };

  const traceOf = async (queueId: string, kind: string): Promise<string> => {
    const res = await fetch(`http://127.0.0.1:${main.httpPort}/api/trace/${queueId}`);
    const { events } = (await res.json()) as { events: { kind: string; traceId: string }[] };
    const e = events.find((x) => x.kind === kind);
    return e?.traceId ?? '';
  };

  /** Every span of the trace, once the named spans have arrived and every parent is known. */
  const spansOf = (traceId: string, names: string[]) =>
    until(`spans ${names.join(', ')} in trace ${traceId}`, async () => {
      const mine = spans.filter((s) => s.traceId === traceId);
      const ids = new Set(mine.map((s) => s.spanId));
      const complete =
        names.every((n) => mine.some((s) => s.name === n)) &&
        mine.every((s) => !s.parentSpanId || ids.has(s.parentSpanId));
      return complete ? mine : null;
    });

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    receiver = await startReceiver(spans);
    const sinkPort = await freePort('127.0.0.3');
    sink = await startSink({ host: '127.0.0.3', port: sinkPort });
    dns = await startDns([
      '--mx-host=remote.test,mx.remote.test,10',
      '--host-record=mx.remote.test,127.0.0.3',
      '--mx-host=nullmx.test,.,0',
    ]);
    const cfg = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(sinkPort),
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_BSP_SCHEDULE_DELAY: '100',
    });
    ports = cfg.ports;
    main = await spawnServices(cfg.env, [
      'mailbox-store',
      'delivery',
      'admin',
      'imap',
      'pop3',
      'smtp-ingress',
    ]);
    router = await spawnServices(cfg.env, ['router']);
    const api = (path: string, body: unknown) =>
      fetch(`http://127.0.0.1:${main.httpPort}${path}`, { method: 'POST', body: JSON.stringify(body) });
    await api('/api/domains', { name: 'example.test' });
    await api('/api/users', { address: 'alice@example.test', password: 'alice-password' });
    await api('/api/users', { address: 'bob@example.test', password: 'bob-password' });
  });

  after(async () => {
    await Promise.all([main?.stop(), router?.stop()]);
    sink?.close();
    receiver?.close();
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  test('a local message: smtp-ingress → router (another process) → mailbox-store in one trace', async () => {
    const queueId = await send('bob@example.test', 'local');
    const traceId = await until('the stored event', () => traceOf(queueId, 'stored'));
    assert.equal(await traceOf(queueId, 'received'), traceId);
    const mine = await spansOf(traceId, [
      'SMTP session',
      'SMTP EHLO',
      'SMTP AUTH',
      'SMTP MAIL',
      'SMTP RCPT',
      'SMTP DATA',
      'smtp accept',
      'send INGRESS',
      'process INGRESS',
      'send LOCAL',
      'process LOCAL',
      'EVALSHA mboxAppend',
    ]);
    const byName = (n: string) => mine.find((s) => s.name === n);
    const root = byName('SMTP session');
    assert.equal(root?.parentSpanId, '', 'the SMTP session is the root');
    assert.equal(root?.kind, SPAN_KIND.SERVER);
    assert.equal(root?.attributes['network.peer.address'], '127.0.0.1');
    assert.equal(root?.attributes['server.port'], ports.submission);
    for (const verb of ['EHLO', 'AUTH', 'MAIL', 'RCPT', 'DATA']) {
      assert.equal(
        byName(`SMTP ${verb}`)?.parentSpanId,
        root?.spanId,
        `SMTP ${verb} is a child of the session`,
      );
    }
    const rcpt = byName('SMTP RCPT');
    assert.equal(rcpt?.attributes['smtp.command'], 'RCPT');
    assert.equal(rcpt?.attributes['smtp.response.status'], 250);
    assert.equal(rcpt?.attributes['smtp.response.code'], '2.1.5');
    assert.equal(rcpt?.attributes['network.peer.address'], '127.0.0.1');
    assert.equal(typeof rcpt?.attributes['network.peer.port'], 'number');
    assert.equal(byName('SMTP AUTH')?.attributes['smtp.response.status'], 235);
    // DATA is answered after the body: its span ends with the final 250, the message made durable in it.
    assert.equal(byName('SMTP DATA')?.attributes['smtp.response.status'], 250);
    assert.equal(byName('smtp accept')?.parentSpanId, byName('SMTP DATA')?.spanId);
    assert.ok(
      descends(mine, byName('send INGRESS'), byName('SMTP DATA')),
      'the INGRESS publish is under DATA',
    );
    assert.equal(byName('send INGRESS')?.kind, SPAN_KIND.PRODUCER);
    const consumer = byName('process INGRESS');
    assert.equal(consumer?.kind, SPAN_KIND.CONSUMER);
    assert.equal(consumer?.service, 'postino-router', 'the router span comes from the router process');
    assert.equal(
      consumer?.parentSpanId,
      byName('send INGRESS')?.spanId,
      'the consumer continues the producer',
    );
    assert.equal(consumer?.attributes['messaging.system'], 'nats');
    assert.equal(consumer?.attributes['messaging.destination.name'], 'mail.ingress');
    assert.equal(consumer?.attributes['messaging.operation.type'], 'process');
    assert.equal(byName('process LOCAL')?.parentSpanId, byName('send LOCAL')?.spanId);
    // The mailbox append is one Redis script call, a client span of the LOCAL consumer's span.
    const append = byName('EVALSHA mboxAppend');
    assert.equal(append?.kind, SPAN_KIND.CLIENT);
    assert.equal(append?.parentSpanId, byName('process LOCAL')?.spanId);
    assert.equal(append?.attributes['db.system.name'], 'redis');
    assert.equal(append?.attributes['db.operation.name'], 'EVALSHA');
    assert.equal(append?.attributes['db.stored_procedure.name'], 'mboxAppend');
    assert.equal(append?.attributes['db.query.text'], undefined, 'no keys or values of the call');
  });

  test('an IMAP session reading the message: a span per command under the session', async () => {
    const client = new ImapFlow({
      host: '127.0.0.1',
      port: ports.imap,
      secure: false,
      doSTARTTLS: false,
      auth: { user: 'bob@example.test', pass: 'bob-password' },
      logger: false,
    });
    await client.connect();
    const lock = await client.getMailboxLock('INBOX');
    let fetched = '';
    try {
      for await (const message of client.fetch('1:*', { uid: true, source: true }, { uid: true })) {
        fetched += message.source?.toString('utf8') ?? '';
      }
    } finally {
      lock.release();
    }
    await client.logout();
    assert.match(fetched, /traced/);
    const fetch = await until('an IMAP UID FETCH span', async () =>
      spans.find((s) => s.name === 'IMAP UID FETCH' && s.attributes['imap.response.status'] === 'OK'),
    );
    const mine = await spansOf(fetch.traceId, [
      'IMAP session',
      'IMAP AUTHENTICATE',
      'IMAP SELECT',
      'IMAP UID FETCH',
    ]);
    const session = mine.find((s) => s.name === 'IMAP session');
    assert.equal(session?.parentSpanId, '', 'the IMAP session is the root of its trace');
    assert.equal(session?.kind, SPAN_KIND.SERVER);
    assert.equal(fetch.parentSpanId, session?.spanId);
    assert.equal(fetch.attributes['imap.command'], 'UID FETCH');
    assert.equal(fetch.attributes['network.peer.address'], '127.0.0.1');
    assert.equal(fetch.attributes['server.port'], ports.imap);
    assert.equal(mine.find((s) => s.name === 'IMAP AUTHENTICATE')?.attributes['imap.response.status'], 'OK');
  });

  test('no password reaches a span', async () => {
    await until('spans exported', async () => spans.length > 0);
    const plain = Buffer.from('\0alice@example.test\0alice-password').toString('base64');
    for (const span of spans) {
      const text = JSON.stringify(span.attributes);
      for (const secret of ['alice-password', 'bob-password', plain]) {
        assert.ok(!text.includes(secret), `${span.name} carries a password`);
      }
    }
  });

  test('a remote message: the DNS lookup and the delivery attempt are in the trace', async () => {
    const queueId = await send('someone@remote.test', 'remote');
    const traceId = await until('the delivered event', () => traceOf(queueId, 'delivered'));
    const mine = await spansOf(traceId, [
      'SMTP DATA',
      'dns MX remote.test',
      'send OUTBOUND',
      'process OUTBOUND',
      'smtp deliver remote.test',
    ]);
    const attempt = mine.find((s) => s.name === 'smtp deliver remote.test');
    assert.equal(attempt?.kind, SPAN_KIND.CLIENT);
    assert.equal(attempt?.attributes['network.peer.address'], '127.0.0.3');
  });

  test('a bounce travels back through ingress in the same trace', async () => {
    const queueId = await send('nobody@nullmx.test', 'bounced');
    const traceId = await until('the bounced event', () => traceOf(queueId, 'bounced'));
    assert.equal(await traceOf(queueId, 'received'), traceId);
    const mine = await spansOf(traceId, ['SMTP DATA', 'process INGRESS', 'send INGRESS', 'process LOCAL']);
    // Two INGRESS consumptions: the original and the bounce; the bounce's is a descendant of the first.
    assert.equal(mine.filter((s) => s.name === 'process INGRESS').length, 2);
    const local = mine.find((s) => s.name === 'process LOCAL');
    assert.ok(local, 'the bounce was filed in the sender mailbox within the trace');
  });
});
