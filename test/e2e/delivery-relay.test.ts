/**
 * Delivery on real peers, the parts around the MX path: the smarthost (a real smtp-server that
 * requires AUTH, with STARTTLS and a certificate of a test CA made here with openssl), the delay
 * warning DSN (RFC 3464 Action: delayed, as NOTIFY asks, RFC 3461 4.1), and the per-domain
 * concurrency and rate limits as a sink sees them. dnsmasq answers the MX records, nodemailer
 * submits (with DSN parameters), imapflow reads the DSNs.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { SMTPServer } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startServices, testConfig, type Ports } from '../helpers/postino.ts';
import { startSink, type Received } from '../helpers/sink.ts';
import { ALICE, submit, withImap } from '../helpers/clients.ts';
import { TestCa } from '../helpers/test-ca.ts';
import type { Running } from '../../services/core/runtime.ts';

const RELAY = '127.0.0.31';
const SINK = '127.0.0.32';
/** An MX where nothing listens: mail for the relayed domain can only arrive through the smarthost. */
const DEAD_MX = '127.0.0.33';
/** The MX of limited.test (holds each transaction, counts sessions) and of paced.test (answers at once). */
const LIMITED = '127.0.0.34';
const PACED = '127.0.0.35';
const CONCURRENCY = 2;
const RATE = 5;

let ca: TestCa;

/** slow.test is always greylisted: its messages stay in the deferred queue. */
const greylistSlow = (address: string) =>
  address.endsWith('@slow.test') ? { code: 451, text: '4.2.1 greylisted, try again later' } : 250;

describe('smarthost, delay warnings and per-domain limits', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  const servers: SMTPServer[] = [];
  const relayed: Received[] = [];
  const sunk: Received[] = [];
  let open = 0;
  let mostOpen = 0;
  let ports: Ports;
  let main: Running;

  const send = (
    to: string,
    subject: string,
    dsn?: { notify: ('never' | 'success' | 'failure' | 'delay')[] },
  ) =>
    submit(ports.submission, {
      to,
      subject,
      text: `${subject}\n`,
      dsn: dsn ? { ...dsn, ret: 'hdrs', envid: subject.replace(/\W+/g, '-') } : undefined,
    });

  /** Sources of the messages in alice's INBOX. */
  const inbox = (): Promise<string[]> =>
    withImap(ports.imap, ALICE, async (client) => {
      const out: string[] = [];
      const lock = await client.getMailboxLock('INBOX');
      try {
        const exists = typeof client.mailbox === 'object' ? client.mailbox.exists : 0;
        if (exists > 0)
          for await (const m of client.fetch('1:*', { source: true })) out.push(m.source?.toString() ?? '');
      } finally {
        lock.release();
      }
      return out;
    });

  const attemptsOf = async (recipient: string): Promise<number> => {
    const r = (await (
      await fetch(`http://127.0.0.1:${main.runtime.http.port}/api/queue?domain=slow.test`)
    ).json()) as {
      entries: { recipients: string[]; attempts: number }[];
    };
    return r.entries.find((e) => e.recipients.includes(recipient))?.attempts ?? 0;
  };

  before(async () => {
    ca = new TestCa('Postino relay test CA');
    ca.issue('relay', [`IP:${RELAY}`]);
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const relayPort = await freePort(RELAY);
    const port = await freePort(SINK);
    servers.push(
      // The smarthost: AUTH required, only after STARTTLS (smtp-server's default).
      await startSink({
        host: RELAY,
        port: relayPort,
        received: relayed,
        rcpt: greylistSlow,
        smtp: {
          authOptional: false,
          disabledCommands: [],
          key: readFileSync(ca.file('relay.key')),
          cert: readFileSync(ca.file('relay.pem')),
          authMethods: ['PLAIN', 'LOGIN'],
          onAuth(auth, _session, cb) {
            if (auth.username === 'relay-user' && auth.password === 'relay secret')
              return cb(null, { user: auth.username });
            cb(new Error('5.7.8 bad credentials'));
          },
        },
      }),
      await startSink({ host: SINK, port, received: sunk, rcpt: greylistSlow }),
      await startSink({
        host: LIMITED,
        port,
        received: sunk,
        rcpt: greylistSlow,
        // Holding each answer keeps the session busy, so that sessions overlap when allowed to.
        holdMs: 1000,
        smtp: {
          onConnect(_session, cb) {
            open++;
            mostOpen = Math.max(mostOpen, open);
            cb();
          },
          onClose() {
            open--;
          },
        },
      }),
      await startSink({ host: PACED, port, received: sunk, rcpt: greylistSlow }),
    );
    dns = await startDns([
      '--mx-host=relayed.test,mx.relayed.test,10',
      `--host-record=mx.relayed.test,${DEAD_MX}`,
      `--host-record=slow.test,${SINK}`,
      `--host-record=limited.test,${LIMITED}`,
      `--host-record=paced.test,${PACED}`,
    ]);
    let config;
    ({ config, ports } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(port),
      DELIVERY_SMARTHOST: `smtp://relay-user:${encodeURIComponent('relay secret')}@${RELAY}:${relayPort}`,
      DELIVERY_POLICY: 'relayed.test:smarthost',
      DELIVERY_TLS_CA_FILE: ca.file('ca.pem'),
      DELIVERY_RETRY_SCHEDULE: '1s',
      DELIVERY_DELAY_WARNING: '2s',
      DELIVERY_DOMAIN_CONCURRENCY: String(CONCURRENCY),
      DELIVERY_DOMAIN_RATE: String(RATE),
      DELIVERY_LEASE: '3s',
      DELIVERY_TIMEOUT: '5s',
      PARTITIONS: '4',
    }));
    main = await startServices(config);
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser('alice@example.test', 'alice-password');
  });

  after(async () => {
    await main?.stop();
    for (const s of servers) await new Promise<void>((r) => s.close(() => r()));
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
    ca?.cleanup();
  });

  test('the smarthost: relayed over verified STARTTLS with AUTH, not to the MX', async () => {
    await send('someone@relayed.test', 'through the relay');
    const got = await until('the message at the smarthost', async () =>
      relayed.find((s) => s.to.includes('someone@relayed.test')),
    );
    assert.equal(got.user, 'relay-user');
    assert.equal(got.secure, true);
  });

  test('a delay warning is a DSN with Action: delayed, sent only when NOTIFY asks for DELAY', async () => {
    await send('wants-delay@slow.test', 'delay please', { notify: ['delay', 'failure'] });
    await send('never@slow.test', 'never notify', { notify: ['never'] });
    await send('failure-only@slow.test', 'failure only', { notify: ['failure'] });
    const warning = await until(
      'the delay warning in the sender INBOX',
      async () =>
        (await inbox()).find(
          (m) => m.includes('report-type=delivery-status') && m.includes('wants-delay@slow.test'),
        ),
      30_000,
    );
    assert.match(warning, /^Subject: Delayed Mail/m);
    // RFC 3464: the machine-readable part, per message then per recipient.
    const report =
      /Content-Type: message\/delivery-status\r?\n\r?\n([\s\S]*?)\r?\n--/.exec(warning)?.[1] ?? '';
    const [perMessage = '', ...perRecipient] = report.split(/\r?\n\r?\n/);
    assert.match(perMessage, /^Reporting-MTA: dns; mx\.example\.test\r?$/m);
    assert.match(perMessage, /^Original-Envelope-Id: delay-please\r?$/m);
    const rcpt = perRecipient.join('\n');
    assert.match(rcpt, /^Final-Recipient: rfc822; wants-delay@slow\.test\r?$/m);
    assert.match(rcpt, /^Action: delayed\r?$/m);
    assert.match(rcpt, /^Status: 4\.2\.1\r?$/m);
    assert.match(rcpt, /^Will-Retry-Until: /m);
    assert.doesNotMatch(rcpt, /never@|failure-only@/);
    // The other two have been retried past the warning time too; then a marker message, sent
    // after them, arrives: no warning about them was sent before it.
    await until(
      'retries past the warning time',
      async () =>
        (await attemptsOf('never@slow.test')) >= 4 && (await attemptsOf('failure-only@slow.test')) >= 4,
      30_000,
    );
    await send('alice@example.test', 'marker');
    const messages = await until('the marker', async () => {
      const all = await inbox();
      return all.some((m) => /^Subject: marker/m.test(m)) ? all : null;
    });
    const dsns = messages.filter((m) => m.includes('report-type=delivery-status'));
    assert.equal(dsns.filter((m) => m.includes('never@slow.test')).length, 0);
    assert.equal(dsns.filter((m) => m.includes('failure-only@slow.test')).length, 0);
    // One warning, not one per attempt.
    assert.equal(dsns.filter((m) => m.includes('wants-delay@slow.test')).length, 1);
  });

  test('per-domain concurrency: at most DELIVERY_DOMAIN_CONCURRENCY sessions to a domain at once', async () => {
    // Each transaction is held for a second: without the limit, all six would be open together.
    const sent = Array.from({ length: 6 }, (_, i) => `r${i}@limited.test`);
    await Promise.all(sent.map((to) => send(to, `limited ${to}`)));
    const got = await until('every message at the sink', async () => {
      const mine = sunk.filter((s) => s.to.some((t) => t.endsWith('@limited.test')));
      return mine.length >= sent.length ? mine : null;
    });
    assert.deepEqual(got.flatMap((s) => s.to).sort(), [...sent].sort());
    assert.ok(
      mostOpen >= 1 && mostOpen <= CONCURRENCY,
      `${mostOpen} sessions open at once, limit ${CONCURRENCY}`,
    );
  });

  test('per-domain rate: transactions to a domain start at most DELIVERY_DOMAIN_RATE a second', async () => {
    // The sink answers at once: unthrottled, eight messages would pass within a few tens of ms.
    const n = 8;
    const sent = Array.from({ length: n }, (_, i) => `p${i}@paced.test`);
    await Promise.all(sent.map((to) => send(to, `paced ${to}`)));
    const got = await until('every message at the sink', async () => {
      const mine = sunk.filter((s) => s.to.some((t) => t.endsWith('@paced.test')));
      return mine.length >= n ? mine : null;
    });
    // Starts 1/RATE s apart: n transactions span (n-1)/RATE s; half of it leaves room for a
    // first connection slower than the rest (a loaded machine), and still fails without pacing.
    const starts = got.map((s) => s.mailAt).sort((a, b) => a - b);
    const span = (starts.at(-1) ?? 0) - (starts[0] ?? 0);
    assert.ok(span >= ((n - 1) * 1000) / RATE / 2, `${n} transactions within ${span} ms`);
  });
});
