/**
 * Routing and delivery on real peers: dnsmasq answers the MX records, scriptable SMTP sinks
 * (smtp-server) listen on other loopback addresses and answer per recipient, nodemailer submits,
 * imapflow reads the bounces, and the `postino queue` CLI drives queue control.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { SMTPServer } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { POSTINO, startServices, testConfig, type Ports } from '../helpers/postino.ts';
import { scripted, startSink, type Received } from '../helpers/sink.ts';
import { ALICE, submit, withImap } from '../helpers/clients.ts';
import type { Running } from '../../services/core/runtime.ts';
import { publish, STREAMS, SUBJECTS } from '../../services/core/nats.ts';
import { encode, pb } from '../../services/core/codec.ts';
import { partitionOf } from '../../services/core/partition.ts';

const run = promisify(execFile);

/** Per-recipient behaviour of the sinks: a list of reply codes consumed one per attempt. */
const script = new Map<string, number[]>();
const sunk: Received[] = [];
const sinkOn = (host: string, port: number) =>
  startSink({ host, port, received: sunk, rcpt: scripted(script) });

describe('routing and delivery', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  const sinks: SMTPServer[] = [];
  let ports: Ports;
  let main: Running;
  let adminUrl: string;

  const postino = (...args: string[]) =>
    run(process.execPath, [POSTINO, ...args], { env: { ...process.env, ADMIN_URL: adminUrl } });

  const send = (to: string[], subject: string) =>
    submit(ports.submission, { to, subject, text: `${subject}\n` });

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const port = await freePort('127.0.0.3');
    sinks.push(await sinkOn('127.0.0.3', port), await sinkOn('127.0.0.6', port));
    dns = await startDns([
      // remote.test: the preferred MX refuses connections (nothing on 127.0.0.4), the next one answers.
      '--mx-host=remote.test,mx1.remote.test,10',
      '--mx-host=remote.test,mx2.remote.test,20',
      '--host-record=mx1.remote.test,127.0.0.4',
      '--host-record=mx2.remote.test,127.0.0.3',
      // implicit.test has no MX: its own address is the MX (RFC 5321 5.1).
      '--host-record=implicit.test,127.0.0.6',
      '--host-record=healthy.test,127.0.0.6',
      '--host-record=dead.test,127.0.0.5',
      // broken.test is forwarded to a dead server: its lookups fail (SERVFAIL or timeout).
      '--server=/broken.test/127.0.0.1#9',
    ]);
    let config;
    ({ config, ports } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(port),
      DELIVERY_RETRY_SCHEDULE: '1s',
      DELIVERY_LEASE: '3s',
      DELIVERY_TIMEOUT: '3s',
      PARTITIONS: '8',
    }));
    main = await startServices(config);
    adminUrl = `http://127.0.0.1:${main.runtime.http.port}`;
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser('alice@example.test', 'alice-password');
  });

  after(async () => {
    await main?.stop();
    for (const s of sinks) await new Promise<void>((r) => s.close(() => r()));
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  test('a refused MX falls back to the next one, and an implicit MX is used', async () => {
    await send(['one@remote.test'], 'fallback');
    await send(['two@implicit.test'], 'implicit');
    const a = await until('delivery via mx2', async () => sunk.find((s) => s.to.includes('one@remote.test')));
    assert.equal(a.host, '127.0.0.3');
    const b = await until('delivery to the implicit MX', async () =>
      sunk.find((s) => s.to.includes('two@implicit.test')),
    );
    assert.equal(b.host, '127.0.0.6');
  });

  test('one transaction, a result per recipient, and the bounce is a DSN', async () => {
    script.set('later@remote.test', [450, 250]);
    script.set('bad@remote.test', [550]);
    await send(['ok@remote.test', 'later@remote.test', 'bad@remote.test'], 'mixed');
    const first = await until('the first transaction', async () =>
      sunk.find((s) => s.to.includes('ok@remote.test')),
    );
    // Only the accepted recipient was in the transaction that carried the body.
    assert.deepEqual(first.to, ['ok@remote.test']);
    // The 4xx recipient is retried (schedule 1s) and delivered once.
    await until('the retried recipient', async () => sunk.find((s) => s.to.includes('later@remote.test')));
    await withImap(ports.imap, ALICE, async (client) => {
      const src = await until('the bounce in the sender INBOX', async () => {
        const lock = await client.getMailboxLock('INBOX');
        try {
          for await (const m of client.fetch('1:*', { source: true })) {
            const text = m.source?.toString() ?? '';
            if (text.includes('bad@remote.test') && text.includes('report-type=delivery-status')) return text;
          }
        } finally {
          lock.release();
        }
        return null;
      });
      // RFC 3464: the machine-readable part, one block per failed recipient.
      const report = /Content-Type: message\/delivery-status\r?\n\r?\n([\s\S]*?)\r?\n--/.exec(src)?.[1] ?? '';
      const blocks = report.split(/\r?\n\r?\n/);
      assert.match(blocks[0] ?? '', /^Reporting-MTA: dns; mx\.example\.test/m);
      const rcpt = blocks.slice(1).join('\n');
      assert.match(rcpt, /^Final-Recipient: rfc822; bad@remote\.test$/m);
      assert.match(rcpt, /^Action: failed$/m);
      assert.match(rcpt, /^Status: 5\.1\.1$/m);
      assert.match(rcpt, /^Remote-MTA: dns; mx2\.remote\.test$/m);
      assert.doesNotMatch(rcpt, /ok@remote\.test|later@remote\.test/);
    });
    assert.equal(sunk.filter((s) => s.to.includes('ok@remote.test')).length, 1);
    assert.equal(sunk.filter((s) => s.to.includes('later@remote.test')).length, 1);
  });

  test('queue control: a deferred message is listed, held, released and retried from the CLI', async () => {
    script.set('greylisted@remote.test', [451]);
    const info = await send(['greylisted@remote.test'], 'held one');
    const queueId = /queued as (\S+)/.exec(info.response)?.[1] ?? '';
    const listed = await until('the deferred entry in `postino queue list`', async () => {
      const { stdout } = await postino('queue', 'list', 'remote.test');
      return stdout.includes(`${queueId}:remote.test`) ? stdout : null;
    });
    assert.match(listed, /deferred|queued/);
    assert.match(listed, /4\.2\.1 try again later/);
    const { stdout: held } = await postino('queue', 'hold', `${queueId}:remote.test`);
    assert.match(held, /hold: 1 queue entry/);
    await until('the entry shown as held', async () =>
      (await postino('queue', 'list')).stdout.includes('held'),
    );
    script.set('greylisted@remote.test', [250]);
    await postino('queue', 'release', '--domain', 'remote.test');
    await until('delivery after release', async () =>
      sunk.find((s) => s.to.includes('greylisted@remote.test')),
    );
    await until('the queue to be empty', async () => !(await postino('queue', 'list')).stdout.trim());
  });

  test('NXDOMAIN bounces at once with 5.1.2; a failing DNS lookup is retried, not bounced', async () => {
    const info = await send(['someone@mail.broken.test'], 'dns trouble');
    const queueId = /queued as (\S+)/.exec(info.response)?.[1] ?? '';
    const listed = await until('the DNS failure in the deferred queue', async () => {
      const { stdout } = await postino('queue', 'list', 'mail.broken.test');
      return stdout.includes(`${queueId}:mail.broken.test`) ? stdout : null;
    });
    assert.match(listed, /MX lookup of mail\.broken\.test failed/);
    await postino('queue', 'delete', `${queueId}:mail.broken.test`);
    const nx = await send(['someone@nowhere.test'], 'no such domain');
    const nxId = /queued as (\S+)/.exec(nx.response)?.[1] ?? '';
    const events = await until('the bounce event', async () => {
      const r = (await (await fetch(`${adminUrl}/api/trace/${nxId}`)).json()) as {
        events: { kind: string; detail: string }[];
      };
      return r.events.find((e) => e.kind === 'bounced');
    });
    assert.match(events.detail, /^5\.1\.2 /);
  });

  test('a failing domain with 1,000 queued messages does not delay a healthy domain', async () => {
    const rt = main.runtime;
    const body = await rt.blobs.put([Buffer.from('Subject: flood\r\n\r\nflood\r\n')]);
    const p = partitionOf('dead.test', rt.config.partitions);
    const now = Date.now();
    await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        publish(
          rt.nats,
          SUBJECTS.outbound(p),
          encode(pb.OutboundDelivery, {
            queueId: `FLOOD${i}`,
            domain: 'dead.test',
            recipients: [{ address: `u${i}@dead.test` }],
            body,
            mailFrom: '',
            receivedAt: now,
            mx: [{ host: 'dead.test', preference: 0, addresses: ['127.0.0.5'] }],
          }),
          { stream: STREAMS.OUTBOUND, msgId: `FLOOD${i}:dead.test:0` },
        ),
      ),
    );
    await send(['fine@healthy.test'], 'healthy');
    await until(
      'the healthy domain to get its message',
      async () => sunk.find((s) => s.to.includes('fine@healthy.test')),
      15_000,
    );
    // The failing domain's messages wait in the deferred queue, suspended, not in the consumer.
    await until('the flood to be suspended', async () => {
      const r = (await (await fetch(`${adminUrl}/api/queue?domain=dead.test`)).json()) as {
        entries: { lastError: string }[];
      };
      return r.entries.some((e) => /suspended/.test(e.lastError));
    });
    await postino('queue', 'delete', '--domain', 'dead.test');
  });
});
