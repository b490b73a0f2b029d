/**
 * MTA-STS (RFC 8461) on real peers: dnsmasq publishes the `_mta-sts` TXT records, MX and policy
 * host addresses; an HTTPS server on 127.0.0.20:443 serves the policy files with a certificate of
 * a test CA made here with openssl; SMTP sinks with STARTTLS present either a certificate of that
 * CA (127.0.0.21) or a self-signed one (127.0.0.22). Postino trusts the test CA through
 * DELIVERY_TLS_CA_FILE, nodemailer submits, and the admin API shows what was deferred.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { Resolver } from 'node:dns/promises';
import { pino } from 'pino';
import type { SMTPServer } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startServices, testConfig, type Ports } from '../helpers/postino.ts';
import { startSink, type Received } from '../helpers/sink.ts';
import { submit } from '../helpers/clients.ts';
import { TestCa } from '../helpers/test-ca.ts';
import type { Running } from '../../services/core/runtime.ts';
import { MtaSts } from '../../services/delivery/mta-sts.ts';

const POLICY_HOST = '127.0.0.20';
const GOOD_MX = '127.0.0.21';
const BAD_MX = '127.0.0.22';

const sunk: Received[] = [];

let ca: TestCa;

/** Policy files by policy host name; changed by the tests. */
const policies = new Map<string, string>([
  ['mta-sts.enforce.test', 'version: STSv1\nmode: enforce\nmx: mx.enforce.test\nmax_age: 86400\n'],
  ['mta-sts.notlisted.test', 'version: STSv1\nmode: enforce\nmx: *.elsewhere.test\nmax_age: 86400\n'],
  ['mta-sts.badcert.test', 'version: STSv1\nmode: enforce\nmx: mx.badcert.test\nmax_age: 86400\n'],
  ['mta-sts.testing.test', 'version: STSv1\nmode: testing\nmx: mx.elsewhere.test\nmax_age: 86400\n'],
  ['mta-sts.rotate.test', 'version: STSv1\nmode: testing\nmx: *.rotate.test\nmax_age: 86400\n'],
]);
let policyFetches = 0;

let port = 0;

/** An MX offering STARTTLS with the certificate `name`. */
const sinkOn = (host: string, name: string) =>
  startSink({
    host,
    port,
    received: sunk,
    smtp: {
      key: readFileSync(ca.file(`${name}.key`)),
      cert: readFileSync(ca.file(`${name}.pem`)),
      disabledCommands: [],
    },
  });

describe('MTA-STS (RFC 8461)', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let dns2: Proc;
  let https: Server;
  const sinks: SMTPServer[] = [];
  let ports: Ports;
  let main: Running;
  let adminUrl: string;

  const send = (to: string, subject: string) =>
    submit(ports.submission, { to, subject, text: `${subject}\n` });

  const queued = async (domain: string) =>
    (
      (await (await fetch(`${adminUrl}/api/queue?domain=${domain}`)).json()) as {
        entries: { recipients: string[]; lastError: string; attempts: number }[];
      }
    ).entries;

  const stsRecords = (rotateId: string) => [
    ...['enforce', 'notlisted', 'badcert', 'testing'].map(
      (d) => `--txt-record=_mta-sts.${d}.test,v=STSv1; id=1`,
    ),
    `--txt-record=_mta-sts.rotate.test,v=STSv1; id=${rotateId}`,
    `--address=/mta-sts.enforce.test/mta-sts.notlisted.test/mta-sts.badcert.test/${POLICY_HOST}`,
    `--address=/mta-sts.testing.test/mta-sts.rotate.test/${POLICY_HOST}`,
    '--mx-host=enforce.test,mx.enforce.test,10',
    '--host-record=mx.enforce.test,' + GOOD_MX,
    '--mx-host=notlisted.test,mx.notlisted.test,10',
    '--host-record=mx.notlisted.test,' + GOOD_MX,
    '--mx-host=badcert.test,mx.badcert.test,10',
    '--host-record=mx.badcert.test,' + BAD_MX,
    '--mx-host=testing.test,mx.testing.test,10',
    '--host-record=mx.testing.test,' + BAD_MX,
  ];

  before(async () => {
    ca = new TestCa('Postino MTA-STS test CA');
    ca.issue(
      'policy',
      [...policies.keys()].map((n) => `DNS:${n}`),
    );
    ca.issue('mx', ['DNS:mx.enforce.test', 'DNS:mx.notlisted.test']);
    // The bad MX: a self-signed certificate (no chain to a trusted CA), though for the right names.
    ca.selfSigned('self', ['DNS:mx.badcert.test', 'DNS:mx.testing.test']);

    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    port = await freePort(GOOD_MX);
    sinks.push(await sinkOn(GOOD_MX, 'mx'), await sinkOn(BAD_MX, 'self'));
    https = createServer(
      { key: readFileSync(ca.file('policy.key')), cert: readFileSync(ca.file('policy.pem')) },
      (req, res) => {
        policyFetches++;
        const body = policies.get((req.headers.host ?? '').toLowerCase());
        if (req.url !== '/.well-known/mta-sts.txt' || !body) {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, { 'content-type': 'text/plain' }).end(body);
      },
    );
    // RFC 8461 3.3: the policy is fetched from port 443 (the tests run as root).
    await new Promise<void>((resolve) => https.listen(443, POLICY_HOST, () => resolve()));
    [dns, dns2] = await Promise.all([startDns(stsRecords('1')), startDns(stsRecords('2'))]);
    let config;
    ({ config, ports } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(port),
      DELIVERY_TLS_CA_FILE: ca.file('ca.pem'),
      DELIVERY_RETRY_SCHEDULE: '1s',
      DELIVERY_LEASE: '3s',
      DELIVERY_TIMEOUT: '5s',
      PARTITIONS: '4',
    }));
    main = await startServices(config);
    adminUrl = `http://127.0.0.1:${main.runtime.http.port}`;
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser('alice@example.test', 'alice-password');
  });

  after(async () => {
    await main?.stop();
    for (const s of sinks) await new Promise<void>((r) => s.close(() => r()));
    if (https?.listening) await new Promise<void>((r) => https.close(() => r()));
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup(), dns2?.cleanup()]);
    ca?.cleanup();
  });

  test('enforce, MX named and certificate valid: delivered over TLS', async () => {
    await send('one@enforce.test', 'enforced');
    const got = await until('delivery to enforce.test', async () =>
      sunk.find((s) => s.to.includes('one@enforce.test')),
    );
    assert.equal(got.secure, true);
  });

  test('enforce, MX not named by the policy: deferred, never delivered', async () => {
    await send('two@notlisted.test', 'not listed');
    const entry = await until('the deferred entry', async () =>
      (await queued('notlisted.test')).find((e) => e.attempts > 0),
    );
    assert.match(
      entry.lastError,
      /MTA-STS policy 1 of notlisted\.test \(enforce\) names none of its MX hosts/,
    );
    assert.equal(
      sunk.some((s) => s.to.includes('two@notlisted.test')),
      false,
    );
  });

  test('enforce, certificate not trusted: deferred, never delivered', async () => {
    await send('three@badcert.test', 'bad certificate');
    const entry = await until('the deferred entry', async () =>
      (await queued('badcert.test')).find((e) => e.attempts > 0),
    );
    assert.match(entry.lastError, /mx\.badcert\.test\[127\.0\.0\.22\]: .*certificate/i);
    assert.equal(
      sunk.some((s) => s.to.includes('three@badcert.test')),
      false,
    );
  });

  test('testing: delivered anyway, the failure counted', async () => {
    await send('four@testing.test', 'testing mode');
    await until('delivery to testing.test', async () => sunk.find((s) => s.to.includes('four@testing.test')));
    const metrics = await (await fetch(`${adminUrl}/metrics`)).text();
    assert.match(
      metrics,
      /postino_delivery_mta_sts_failures_total\{mode="testing",reason="mx_mismatch"\} [1-9]/,
    );
    assert.match(metrics, /postino_delivery_mta_sts_failures_total\{mode="testing",reason="tls"\} [1-9]/);
    assert.match(
      metrics,
      /postino_delivery_attempts_total\{result="delivered",domain="testing\.test"\} [1-9]/,
    );
  });

  test('a new TXT id makes a replica fetch the policy again; the same id is served from the shared cache', async () => {
    const replica = (server: string) => {
      const resolver = new Resolver({ timeout: 2000, tries: 1 });
      resolver.setServers([server]);
      return new MtaSts({
        resolver,
        store: main.runtime.redis,
        prefix: main.runtime.config.redisPrefix,
        logger: pino({ level: 'silent' }),
        ca: [readFileSync(ca.file('ca.pem'), 'utf8')],
        fetchTimeoutMs: 5000,
        recheckMs: 60_000,
      });
    };
    const first = await replica(dns.url).policy('rotate.test');
    assert.equal(first?.mode, 'testing');
    assert.equal(first?.id, '1');
    policies.set('mta-sts.rotate.test', 'version: STSv1\nmode: enforce\nmx: *.rotate.test\nmax_age: 86400\n');
    const before = policyFetches;
    // Another replica, same TXT id: the cached policy, no fetch.
    assert.equal((await replica(dns.url).policy('rotate.test'))?.mode, 'testing');
    assert.equal(policyFetches, before);
    // The domain published a new id: fetched again.
    const rotated = await replica(dns2.url).policy('rotate.test');
    assert.equal(rotated?.id, '2');
    assert.equal(rotated?.mode, 'enforce');
    assert.equal(policyFetches, before + 1);
  });

  test('the policy host down: the cached policy stays in force', async () => {
    await new Promise<void>((r) => https.close(() => r()));
    await send('five@enforce.test', 'cached, good');
    await send('six@notlisted.test', 'cached, not listed');
    const got = await until('delivery to enforce.test', async () =>
      sunk.find((s) => s.to.includes('five@enforce.test')),
    );
    assert.equal(got.secure, true);
    await until('the second not-listed message deferred', async () =>
      (await queued('notlisted.test')).find(
        (e) => e.recipients.includes('six@notlisted.test') && e.attempts > 0,
      ),
    );
    // A replica that never saw the domain finds the shared cache, though nothing can be fetched.
    const resolver = new Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([dns.url]);
    const fresh = new MtaSts({
      resolver,
      store: main.runtime.redis,
      prefix: main.runtime.config.redisPrefix,
      logger: pino({ level: 'silent' }),
      fetchTimeoutMs: 2000,
      recheckMs: 60_000,
    });
    const p = await fresh.policy('notlisted.test');
    assert.equal(p?.mode, 'enforce');
    assert.deepEqual(p?.mx, ['*.elsewhere.test']);
    assert.equal(
      sunk.some((s) => s.to.includes('six@notlisted.test')),
      false,
    );
  });
});
