/** The mailbox actor's scripts on a real redis-server, bodies in a real JetStream object store. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startNats, startRedis, type Proc } from '../helpers/servers.ts';
import { connectNats, type Nats } from '../../services/core/nats.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { BlobStore } from '../../services/core/blobs.ts';
import { MailboxStore } from '../../services/mailbox-store/store.ts';
import type { MailboxChange } from '../../services/core/mailbox-api.ts';

let natsProc: Proc;
let redisProc: Proc;
let nats: Nats;
let redis: Redis;
let blobs: BlobStore;
let store: MailboxStore;
const changes: { user: string; change: MailboxChange }[] = [];
const logger = pino({ level: 'silent' });

before(async () => {
  [natsProc, redisProc] = await Promise.all([startNats(), startRedis()]);
  nats = await connectNats(natsProc.url, 'test', logger);
  redis = await connectRedis(redisProc.url, logger);
  blobs = await BlobStore.open(nats, 1);
  store = new MailboxStore(redis, 't:', blobs, (user, change) => changes.push({ user, change }));
});

after(async () => {
  redis.disconnect();
  await nats.nc.close();
  await Promise.all([natsProc.cleanup(), redisProc.cleanup()]);
});

test('a new user has the INBOX and the RFC 6154 special-use folders', async () => {
  const folders = await store.listFolders('new@example.test');
  assert.deepEqual(
    folders.map((f) => [f.name, f.specialUse]),
    [
      ['INBOX', ''],
      ['Archive', '\\Archive'],
      ['Drafts', '\\Drafts'],
      ['Junk', '\\Junk'],
      ['Sent', '\\Sent'],
      ['Trash', '\\Trash'],
    ],
  );
  assert.ok(folders.every((f) => f.uidValidity > 0 && f.uidNext === 1 && f.exists === 0));
});

test('append is idempotent per key and UIDs only ascend', async () => {
  const user = 'idem@example.test';
  const blob = await blobs.put([Buffer.from('Subject: a\r\n\r\nbody\r\n')]);
  const a = await store.appendBlob(user, 'INBOX', blob, [], Date.now(), 'Q1:idem');
  const again = await store.appendBlob(user, 'INBOX', blob, [], Date.now(), 'Q1:idem');
  assert.equal(a.created, true);
  assert.equal(again.created, false);
  assert.equal(again.uid, a.uid);
  const b = await store.appendBlob(user, 'INBOX', blob, ['\\Seen'], Date.now(), 'Q2:idem');
  assert.ok(b.uid > a.uid);
  await store.expunge(user, 'INBOX', [b.uid], true);
  const c = await store.appendBlob(user, 'INBOX', blob, [], Date.now(), 'Q3:idem');
  assert.ok(c.uid > b.uid, 'a UID is never reused after expunge');
  const st = await store.status(user, 'INBOX');
  assert.equal(st.exists, 2);
  assert.equal(st.unseen, 2);
  assert.equal(st.uidNext, c.uid + 1);
});

test('flags change atomically, keep counters and raise MODSEQ; \\Recent is never stored', async () => {
  const user = 'flags@example.test';
  const { uid } = await store.append(user, 'INBOX', Buffer.from('Subject: f\r\n\r\nx\r\n'), [
    '\\Recent',
    '$Label1',
  ]);
  const before = await store.status(user, 'INBOX');
  assert.equal(before.unseen, 1);
  const [m] = await store.storeFlags(user, 'INBOX', [uid], 'add', ['\\Seen', '\\Flagged']);
  assert.deepEqual(m?.flags, ['$Label1', '\\Seen', '\\Flagged']);
  // The reply is the whole message as it is now, not only its flags.
  assert.ok(m && m.size > 0 && m.blob.startsWith('sha256:') && m.internalDate > 0);
  const mid = await store.status(user, 'INBOX');
  assert.equal(mid.unseen, 0);
  assert.ok(mid.highestModseq > before.highestModseq);
  const [r] = await store.storeFlags(user, 'INBOX', [uid], 'remove', ['\\seen']);
  assert.deepEqual(r?.flags, ['$Label1', '\\Flagged']);
  assert.equal((await store.status(user, 'INBOX')).unseen, 1);
  const [p] = await store.storeFlags(user, 'INBOX', [uid], 'replace', ['\\Answered']);
  assert.deepEqual(p?.flags, ['\\Answered']);
  assert.ok(changes.some((c) => c.user === user && c.change.kind === 'flags' && c.change.uids.includes(uid)));
});

test('expunge removes only messages flagged \\Deleted unless forced', async () => {
  const user = 'expunge@example.test';
  const a = await store.append(user, 'INBOX', Buffer.from('a'), []);
  const b = await store.append(user, 'INBOX', Buffer.from('b'), ['\\Deleted']);
  assert.deepEqual(await store.expunge(user, 'INBOX', [a.uid, b.uid]), [b.uid]);
  const { messages } = await store.messages(user, 'INBOX');
  assert.deepEqual(
    messages.map((m) => m.uid),
    [a.uid],
  );
});

test('copy and move give new UIDs in the target (UIDPLUS data)', async () => {
  const user = 'copy@example.test';
  const a = await store.append(user, 'INBOX', Buffer.from('Subject: c\r\n\r\nc'), ['\\Seen']);
  const copied = await store.copy(user, 'INBOX', [a.uid], 'Archive', false);
  assert.deepEqual(copied.sourceUids, [a.uid]);
  assert.equal(copied.targetUids.length, 1);
  const moved = await store.copy(user, 'INBOX', [a.uid], 'Trash', true);
  assert.equal(moved.targetUids.length, 1);
  assert.equal((await store.status(user, 'INBOX')).exists, 0);
  assert.equal((await store.status(user, 'Archive')).exists, 1);
  const trash = await store.messages(user, 'Trash');
  assert.deepEqual(trash.messages[0]?.flags, ['\\Seen']);
  await assert.rejects(store.copy(user, 'Trash', [1], 'Nope', false), { code: 'TRYCREATE' });
});

test('folders: create with parents, rename with children, delete, new UIDVALIDITY on re-create', async () => {
  const user = 'folders@example.test';
  await store.createFolder(user, 'Work/Projects/Postino');
  let names = (await store.listFolders(user)).map((f) => f.name);
  assert.ok(['Work', 'Work/Projects', 'Work/Projects/Postino'].every((n) => names.includes(n)));
  await assert.rejects(store.createFolder(user, 'Work'), { code: 'ALREADYEXISTS' });
  const uv = (await store.status(user, 'Work/Projects')).uidValidity;
  await store.renameFolder(user, 'Work', 'Job');
  names = (await store.listFolders(user)).map((f) => f.name);
  assert.ok(names.includes('Job/Projects/Postino') && !names.includes('Work'));
  await store.deleteFolder(user, 'Job');
  names = (await store.listFolders(user)).map((f) => f.name);
  assert.ok(!names.some((n) => n.startsWith('Job')));
  await store.createFolder(user, 'Job/Projects');
  assert.notEqual((await store.status(user, 'Job/Projects')).uidValidity, uv);
  await assert.rejects(store.deleteFolder(user, 'INBOX'), { code: 'CANNOT' });
  await assert.rejects(store.status(user, 'Nope'), { code: 'NONEXISTENT' });
  await assert.rejects(store.createFolder(user, 'bad\x00name'), { code: 'CANNOT' });
});

test('bodies are stored once, content-addressed, and read back byte for byte', async () => {
  const body = Buffer.alloc(300 * 1024, 7);
  const a = await blobs.put([body.subarray(0, 1000), body.subarray(1000)]);
  const b = await blobs.put([body]);
  assert.equal(a.id, b.id);
  assert.match(a.id, /^sha256:[0-9a-f]{64}$/);
  assert.deepEqual(await blobs.read(a.id), body);
});
