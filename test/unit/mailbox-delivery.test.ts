/**
 * The mailbox-store service as it runs: LOCAL deliveries from JetStream (redelivery, over-quota
 * deferral, one body for many recipients) and the mbox.rpc.* API with a 100,000-message folder.
 * Real nats-server and redis-server; the service started by the runtime.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { testConfig } from '../helpers/postino.ts';
import { runServices, type Running } from '../../services/core/runtime.ts';
import { start as mailboxStore } from '../../services/mailbox-store/index.ts';
import { start as admin } from '../../services/admin/index.ts';
import { publish, SUBJECTS, CONSUMERS, STREAMS } from '../../services/core/nats.ts';
import { encode, pb } from '../../services/core/codec.ts';
import { BlobStore } from '../../services/core/blobs.ts';
import { MailboxStore } from '../../services/mailbox-store/store.ts';
import { MailboxRpcClient } from '../../services/mailbox-store/rpc.ts';
import { BlobRefs } from '../../services/mailbox-store/blob-refs.ts';

setFlagsFromString('--expose-gc');
const fullGc = runInNewContext('gc') as () => void;
/** A full GC, twice: the second one finishes the first one's concurrent freeing of buffers. */
const gc = () => {
  fullGc();
  fullGc();
};

let natsProc: Proc;
let redisProc: Proc;
let running: Running;
let store: MailboxStore;
let client: MailboxRpcClient;

before(async () => {
  [natsProc, redisProc] = await Promise.all([startNats(), startRedis()]);
  const { config } = await testConfig({
    NATS_URL: natsProc.url,
    REDIS_URL: redisProc.url,
    MAILBOX_OVERQUOTA_RETRY: '300ms',
  });
  // Only the services under test are loaded.
  running = await runServices(config, ['mailbox-store', 'admin'], { 'mailbox-store': mailboxStore, admin });
  const rt = running.runtime;
  // The test's own view of the same mailboxes (another replica, as far as Redis can tell).
  store = new MailboxStore(rt.redis, rt.config.redisPrefix, rt.blobs, () => undefined);
  client = new MailboxRpcClient(rt.nats, rt.blobs);
  await rt.directory.addDomain('example.test');
});

after(async () => {
  await running.stop();
  await Promise.all([natsProc.cleanup(), redisProc.cleanup()]);
});

/** What the mailbox holds for a body sent by sender@remote.test: a Return-Path in front (RFC 5321 4.4). */
const RETURN_PATH = Buffer.from('Return-Path: <sender@remote.test>\r\n');
const asFiled = (bytes: Buffer) => ({
  id: BlobStore.idOf([RETURN_PATH, bytes]),
  size: RETURN_PATH.length + bytes.length,
});

async function deliver(user: string, blob: { id: string; size: number }, key: string): Promise<void> {
  const d = {
    queueId: key,
    user,
    originalRecipient: user,
    body: blob,
    mailFrom: 'sender@remote.test',
    receivedAt: Date.now(),
    messageId: `<${key}@remote.test>`,
    idempotencyKey: key,
  };
  await publish(running.runtime.nats, SUBJECTS.local(0), encode(pb.LocalDelivery, d), {
    stream: STREAMS.LOCAL,
  });
}

/** LOCAL is a work queue: empty once every entry was acknowledged. */
async function drained(): Promise<void> {
  const c = CONSUMERS.mailboxStore;
  await until('LOCAL drained', async () => {
    const info = await running.runtime.nats.jsm.consumers.info(c.stream, c.durable);
    return info.num_pending === 0 && info.num_ack_pending === 0;
  });
}

test('a redelivered LOCAL entry never makes a second copy', async () => {
  const user = 'dup@example.test';
  const bytes = Buffer.from('Subject: once\r\n\r\nonce\r\n');
  const blob = await running.runtime.blobs.put([bytes]);
  await deliver(user, blob, 'Q-dup-1');
  await deliver(user, blob, 'Q-dup-1');
  await deliver(user, blob, 'Q-dup-1');
  await until('stored', async () => (await store.status(user, 'INBOX')).exists >= 1);
  await drained();
  const { messages } = await client.messages(user, 'INBOX');
  assert.deepEqual(
    messages.map((m) => [m.uid, m.blob]),
    [[1, asFiled(bytes).id]],
  );
  await deliver(user, blob, 'Q-dup-2');
  await until('second message', async () => (await store.status(user, 'INBOX')).exists === 2);
});

test('a full mailbox defers LOCAL delivery (452 4.2.2) and takes it once there is room', async () => {
  const user = 'full@example.test';
  const rt = running.runtime;
  await rt.directory.addUser(user, 'password123');
  await rt.directory.setDomainQuota('example.test', { bytes: 0, messages: 0 });
  await rt.directory.setUserQuota(user, { bytes: 0, messages: 1 });
  const aBytes = Buffer.from('Subject: 1\r\n\r\n1\r\n');
  const a = await rt.blobs.put([aBytes]);
  const b = await rt.blobs.put([Buffer.from('Subject: 2\r\n\r\n2\r\n')]);
  await deliver(user, a, 'Q-full-1');
  await until('first stored', async () => (await client.status(user, 'INBOX')).exists === 1);
  await deliver(user, b, 'Q-full-2');
  // Deferred, not dropped: it stays in LOCAL, redelivered, and the mailbox keeps one message.
  await until('deferred and redelivered', async () => {
    const info = await rt.nats.jsm.consumers.info(
      CONSUMERS.mailboxStore.stream,
      CONSUMERS.mailboxStore.durable,
    );
    return info.num_redelivered > 0 || info.num_ack_pending > 0;
  });
  assert.equal((await client.status(user, 'INBOX')).exists, 1);
  assert.deepEqual(await client.quota(user), {
    storageUsed: asFiled(aBytes).size,
    storageLimit: 0,
    messagesUsed: 1,
    messagesLimit: 1,
  });
  await assert.rejects(client.append(user, 'INBOX', Buffer.from('x'), []), { code: 'OVERQUOTA' });
  await rt.directory.setUserQuota(user, { bytes: 0, messages: 10 });
  await until(
    'delivered after the quota was raised',
    async () => (await client.status(user, 'INBOX')).exists === 2,
  );
  await drained();
});

test('bad RPC input gets an error reply at once, never a timeout', async () => {
  const nc = running.runtime.nats.nc;
  const garbage = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f]);
  for (const op of ['messages', 'store', 'changed', 'quota', 'nonsense']) {
    const reply = await nc.request(SUBJECTS.rpc(op), garbage, { timeout: 5000 });
    assert.match(pb.SimpleReply.decode(reply.data).error, /^INVALID /, op);
  }
  await assert.rejects(client.status('', 'INBOX'), { code: 'INVALID' });
  await assert.rejects(client.status('x@example.test', 'a//b'), { code: 'CANNOT' });
  await assert.rejects(client.storeFlags('x@example.test', 'INBOX', [1], 'toggle' as 'add', ['\\Seen']), {
    code: 'INVALID',
  });
  await assert.rejects(client.messages('x@example.test', 'Nope'), { code: 'NONEXISTENT' });
});

test('the admin API sets and shows quotas (domain default, user override, usage)', async () => {
  const rt = running.runtime;
  const api = `http://127.0.0.1:${rt.http.port}/api`;
  const user = 'admin-quota@example.test';
  await rt.directory.addUser(user, 'password123');
  await client.append(user, 'INBOX', Buffer.from('Subject: q\r\n\r\n12345\r\n'), []);
  const put = (path: string, body: unknown) =>
    fetch(`${api}${path}`, { method: 'PUT', body: JSON.stringify(body) });
  assert.equal((await put('/domains/example.test/quota', { bytes: 5000, messages: 0 })).status, 200);
  let r = await fetch(`${api}/users/${user}/quota`);
  assert.deepEqual(await r.json(), {
    user,
    limits: { bytes: 5000, messages: 0 },
    usage: { bytes: 21, messages: 1 },
  });
  assert.equal((await put(`/users/${user}/quota`, { bytes: 0, messages: 7 })).status, 200);
  r = await fetch(`${api}/users/${user}/quota`);
  assert.deepEqual(((await r.json()) as { limits: unknown }).limits, { bytes: 5000, messages: 7 });
  assert.equal((await put(`/users/${user}/quota`, { bytes: -1 })).status, 400);
  assert.equal((await put('/users/nobody@example.test/quota', { bytes: 1 })).status, 404);
  assert.deepEqual(await (await fetch(`${api}/domains/example.test/quota`)).json(), {
    domain: 'example.test',
    limits: { bytes: 5000, messages: 0 },
  });
  assert.equal((await put('/domains/example.test/quota', { bytes: 0, messages: 0 })).status, 200);
});

test('a body delivered to 100 local users is stored once and counted 100 times by the collector', async () => {
  const rt = running.runtime;
  const bytes = Buffer.from(`Subject: everyone\r\n\r\n${'y'.repeat(10_000)}\r\n`);
  const blob = await rt.blobs.put([bytes]);
  const users = Array.from({ length: 100 }, (_, i) => `all${i}@example.test`);
  await Promise.all(users.map((u) => deliver(u, blob, `Q-all:${u}`)));
  await drained();
  const refs = new BlobRefs(rt.redis, rt.config.redisPrefix, {
    graceMs: 1,
    deleteBody: async () => undefined,
  });
  // The service's own collector rounds copy the references to the blob's record.
  await until('100 holders', async () => (await refs.holders(asFiled(bytes).id)) === 100);
  for (const u of users) assert.equal((await store.status(u, 'INBOX')).exists, 1);
});

test('a 100,000-message folder pages over RPC with bounded memory', async (t) => {
  const user = 'huge@example.test';
  const blob = await running.runtime.blobs.put([Buffer.from('Subject: many\r\n\r\nmany\r\n')]);
  const N = 100_000;
  for (let i = 0; i < N; i += 500) {
    await Promise.all(
      Array.from({ length: Math.min(500, N - i) }, () =>
        store.appendBlob(user, 'INBOX', blob, [], Date.now(), ''),
      ),
    );
  }
  assert.equal((await client.status(user, 'INBOX')).exists, N);

  // Walk the folder by UID ranges, page after page; memory reachable after a GC stays flat.
  gc();
  const base = process.memoryUsage().heapUsed;
  let peak = 0;
  let seen = 0;
  let pages = 0;
  let last = 0;
  for (let first = 1; ; pages++) {
    const page = await client.messageRange(user, 'INBOX', first, 0xffffffff, 1000);
    const tail = page.messages.at(-1);
    if (!tail) break;
    assert.ok(page.messages.every((m) => m.uid > last && (last = m.uid)));
    seen += page.messages.length;
    first = tail.uid + 1;
    if (pages % 10 === 0) {
      gc();
      peak = Math.max(peak, process.memoryUsage().heapUsed - base);
    }
  }
  assert.equal(seen, N);
  assert.ok(pages >= N / 1000);
  t.diagnostic(
    `paged walk of ${N} messages: ${pages} pages, peak heap growth ${(peak / 1048576).toFixed(1)} MiB`,
  );
  assert.ok(peak < 16 * 1048576, `peak heap growth ${peak} bytes`);
  // A fetch by UID range of 1,000 messages' metadata in the middle of the folder.
  const mid = await client.messageRange(user, 'INBOX', 50_001, 51_000, 1000);
  assert.deepEqual(
    [mid.messages.length, mid.messages[0]?.uid, mid.messages.at(-1)?.uid],
    [1000, 50_001, 51_000],
  );
  // The unpaged call still works: the client gathers the pages (no reply above max_payload).
  // STORE over more UIDs than one batch, as for 1:2500.
  const uids = Array.from({ length: 2500 }, (_, i) => i + 1);
  const flagged = await client.storeFlags(user, 'INBOX', uids, 'add', ['\\Seen']);
  assert.deepEqual(
    flagged.map((m) => m.uid),
    uids,
  );
  assert.equal((await client.status(user, 'INBOX')).unseen, N - 2500);
  assert.equal((await client.changedSince(user, 'INBOX', N + 1)).length, 2500);
  const all = await client.messages(user, 'INBOX');
  gc();
  t.diagnostic(
    `the same ${N} messages held as one list: ${((process.memoryUsage().heapUsed - base) / 1048576).toFixed(1)} MiB`,
  );
  assert.equal(all.messages.length, N);
});
