/**
 * Bodies that never reach a mailbox are collected (services/core/blobs.ts): the whole pipeline on
 * real peers (nats-server, redis-server, dnsmasq for the MX, an smtp-server sink on 127.0.0.3,
 * nodemailer submitting), with a short BLOB_GC_GRACE. The object store is looked at directly: a
 * body is gone once no queue entry and no mailbox holds it any more, and never before.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { SMTPServer } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startServices, testConfig, type Ports } from '../helpers/postino.ts';
import { scripted, startSink, type Received } from '../helpers/sink.ts';
import { submit } from '../helpers/clients.ts';
import type { Running } from '../../services/core/runtime.ts';
import { BlobRecords } from '../../services/core/blobs.ts';
import { publish, STREAMS, SUBJECTS } from '../../services/core/nats.ts';
import { encode, pb } from '../../services/core/codec.ts';
import { partitionOf } from '../../services/core/partition.ts';
import { MailboxRpcClient } from '../../services/mailbox-store/rpc.ts';
import { QueueStore } from '../../services/delivery/queue-store.ts';

/** Per-recipient replies of the sink, one consumed per attempt (the last one repeats). */
const script = new Map<string, number[]>();
const sunk: Received[] = [];

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('message bodies outside mailboxes are collected', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let smtp: SMTPServer;
  let ports: Ports;
  let main: Running;
  let client: MailboxRpcClient;
  let records: BlobRecords;

  const send = (to: string[], subject: string) =>
    submit(ports.submission, { to, subject, text: `${subject}\n` });

  /** Bodies in the object store now. */
  const stored = (): Promise<Set<string>> => main.runtime.blobs.list();
  const exists = (id: string) => main.runtime.blobs.has(id);

  /** The INBOX messages of a user, and the body each was filed from (its Return-Path line taken off). */
  /**
   * The INBOX's messages: each one's blob, the blob its body would have been copied from if it was
   * filed as a copy with a Return-Path in front (a bounce), and its text.
   */
  async function inbox(
    user: string,
  ): Promise<{ uid: number; blob: string; original: string; text: string }[]> {
    const { messages } = await client.messages(user, 'INBOX');
    const out = [];
    for (const m of messages) {
      const copy = await main.runtime.blobs.read(m.blob);
      const rest = copy.subarray(copy.indexOf('\r\n') + 2);
      assert.match(copy.toString('latin1'), /^Return-Path: /);
      out.push({ uid: m.uid, blob: m.blob, original: sha(rest), text: copy.toString('utf8') });
    }
    return out;
  }

  /** Waits until every JetStream work queue of the pipeline is empty (all entries acked). */
  const drained = () =>
    until('the pipeline to drain', async () => {
      for (const s of [STREAMS.INGRESS, STREAMS.LOCAL]) {
        if ((await main.runtime.nats.jsm.streams.info(s)).state.messages > 0) return false;
      }
      return true;
    });

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const port = await freePort('127.0.0.3');
    smtp = await startSink({ host: '127.0.0.3', port, received: sunk, rcpt: scripted(script) });
    dns = await startDns([
      '--mx-host=remote.test,mx.remote.test,10',
      '--host-record=mx.remote.test,127.0.0.3',
    ]);
    let config;
    ({ config, ports } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(port),
      DELIVERY_RETRY_SCHEDULE: '1s',
      DELIVERY_TIMEOUT: '3s',
      PARTITIONS: '4',
      BLOB_GC_GRACE: '2s',
    }));
    main = await startServices(config);
    client = new MailboxRpcClient(main.runtime.nats, main.runtime.blobs);
    records = new BlobRecords(main.runtime.redis, config.redisPrefix);
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser('alice@example.test', 'alice-password');
    await main.runtime.directory.addUser('bob@example.test', 'bob-password');
  });

  after(async () => {
    await main?.stop();
    await new Promise<void>((r) => (smtp ? smtp.close(() => r()) : r()));
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  test('a message to a remote recipient only: its body is gone after delivery and the grace period', async () => {
    const before = await stored();
    await send(['far@remote.test'], 'remote only');
    // The 250 comes once the body is stored (and held for its envelope).
    const mine = [...(await stored())].filter((id) => !before.has(id));
    assert.equal(mine.length, 1);
    const body = mine[0] ?? '';
    await until('the remote delivery', async () => sunk.some((m) => m.to.includes('far@remote.test')));
    await until('the body collected', async () => !(await exists(body)), 30_000);
  });

  test('a local and a remote recipient: one body for both, kept while either needs it, redeliveries included', async () => {
    // The remote recipient is deferred a few times first.
    script.set('later@remote.test', [...Array.from({ length: 12 }, () => 451), 250]);
    const before = await stored();
    const info = await send(['bob@example.test', 'later@remote.test'], 'local and remote');
    const queueId = /queued as (\S+)/.exec(info.response)?.[1] ?? '';
    const filed = await until('the message in bob INBOX', async () => {
      const msgs = await inbox('bob@example.test');
      return msgs.find((m) => m.text.includes('local and remote'));
    });
    // Filed as stored, Return-Path included: no second copy of the body.
    const body = filed.blob;
    assert.deepEqual(
      [...(await stored())].filter((id) => !before.has(id)),
      [body],
    );
    const bytes = await main.runtime.blobs.read(body);
    const size = bytes.length;
    const returnPath = bytes.indexOf('\r\n') + 2;
    await drained();

    // Redeliveries: the router's envelope and bob's LOCAL entry come again (as JetStream would
    // redeliver them when an ack is lost). Neither may drop the hold of the deferred remote entry.
    const receivedAt = Date.now();
    await publish(
      main.runtime.nats,
      SUBJECTS.ingress,
      encode(pb.Envelope, {
        queueId,
        mailFrom: 'alice@example.test',
        recipients: [{ address: 'bob@example.test' }, { address: 'later@remote.test' }],
        body: { id: body, size, returnPath },
        receivedAt,
        messageId: '',
      }),
      { stream: STREAMS.INGRESS },
    );
    await publish(
      main.runtime.nats,
      SUBJECTS.local(partitionOf('bob@example.test', main.runtime.config.partitions)),
      encode(pb.LocalDelivery, {
        queueId,
        user: 'bob@example.test',
        originalRecipient: 'bob@example.test',
        folder: 'INBOX',
        body: { id: body, size, returnPath },
        mailFrom: 'alice@example.test',
        receivedAt,
        idempotencyKey: `${queueId}:bob@example.test`,
      }),
      { stream: STREAMS.LOCAL },
    );
    await drained();
    // Long enough for the grace period to pass and the sweeper to run: the remote entry has been
    // tried several times (retry schedule 1s, grace 2s), and is tried seven more before it goes.
    const queue = new QueueStore(main.runtime.redis, main.runtime.config.redisPrefix);
    await until('five attempts at the remote recipient', async () => {
      const [e] = await queue.list({ queueId });
      return e && e.attempts >= 5;
    });
    assert.ok(await exists(body), 'the deferred remote entry still needs the body');
    // Held by the deferred remote entry and by bob's mailbox (the collector copies mailbox holds
    // in its rounds); the redelivered envelope and LOCAL entry left no hold behind.
    await until('held by the remote entry and the mailbox', async () => (await records.holders(body)) === 2);
    assert.equal(
      (await inbox('bob@example.test')).filter((m) => m.text.includes('local and remote')).length,
      1,
    );

    await until('the remote delivery', async () => sunk.some((m) => m.to.includes('later@remote.test')));
    // The remote server got the message without the Return-Path of the final delivery here.
    const remote = sunk.find((m) => m.to.includes('later@remote.test'));
    assert.ok(remote && !remote.body.includes('Return-Path:'));
    assert.match(remote.body, /local and remote/);
    await until(
      'no queue entry holds the body, the mailbox does',
      async () => (await records.holders(body)) === 1,
    );
    // Bob's message is his mailbox's, and stays: through the grace period and the sweeper.
    await new Promise((r) => setTimeout(r, 2 * main.runtime.config.blobGcGrace + 1000));
    assert.ok(await exists(body));
    assert.match((await main.runtime.blobs.read(body)).toString(), /local and remote/);
    // Until bob deletes it.
    await client.expunge('bob@example.test', 'INBOX', [filed.uid], true);
    await until('the body collected', async () => !(await exists(body)), 30_000);
  });

  test('a bounced message: the original and the DSN bodies are both collected', async () => {
    script.set('gone@remote.test', [550]);
    const before = await stored();
    await send(['gone@remote.test'], 'bounced one');
    const original = [...(await stored())].filter((id) => !before.has(id));
    assert.equal(original.length, 1);
    const dsn = await until('the DSN in alice INBOX', async () => {
      const msgs = await inbox('alice@example.test');
      return msgs.find((m) => m.text.includes('gone@remote.test') && m.text.includes('delivery-status'));
    });
    // The DSN's own body (filed with a Return-Path line in front) is another object.
    assert.notEqual(dsn.original, original[0]);
    assert.notEqual(dsn.original, dsn.blob);
    await until(
      'the original and the DSN bodies collected',
      async () => !(await exists(original[0] ?? '')) && !(await exists(dsn.original)),
      30_000,
    );
    // What is left of this message is alice's copy of the DSN.
    const left = [...(await stored())].filter((id) => !before.has(id));
    assert.deepEqual(left, [dsn.blob]);
  });

  test('a deferred message deleted by queue control: its body is collected', async () => {
    script.set('stuck@remote.test', [451]);
    const before = await stored();
    const info = await send(['stuck@remote.test'], 'deleted from the queue');
    const queueId = /queued as (\S+)/.exec(info.response)?.[1] ?? '';
    const body = [...(await stored())].filter((id) => !before.has(id))[0] ?? '';
    const queue = new QueueStore(main.runtime.redis, main.runtime.config.redisPrefix);
    await until('the deferred entry', async () => (await queue.list({ queueId })).length === 1);
    const res = await fetch(`http://127.0.0.1:${main.runtime.http.port}/api/queue/delete`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id: `${queueId}:remote.test` }),
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { action: 'delete', changed: 1 });
    await until('the body collected', async () => !(await exists(body)), 30_000);
  });
});
