/**
 * Message summaries (MessagesOptions.summary: what SELECT and a FETCH of flags and sizes read) on
 * real Redis and NATS: they always agree with the full message rows, through appends, flag
 * changes, expunges, COPY and MOVE, across pages, over the RPC as well as on the store, and for a
 * folder stored before the summary index was kept (the index is filled in on the first read).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startNats, startRedisBackend, type Proc } from '../helpers/servers.ts';
import { connectNats, type Nats } from '../../services/core/nats.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { BlobStore } from '../../services/core/blobs.ts';
import {
  parseSummaries,
  sortSummaries,
  summaryMeta,
  type MessageMeta,
} from '../../services/core/mailbox-api.ts';
import { MailboxStore, SUMMARY_BATCH } from '../../services/mailbox-store/store.ts';
import { MailboxRpcClient, handlers, serveRpc } from '../../services/mailbox-store/rpc.ts';
import { SUBJECTS } from '../../services/core/nats.ts';
import { encode, pb } from '../../services/core/codec.ts';

const logger = pino({ level: 'silent' });
const USER = 'sum@example.test';

/** What a summary carries of a message. */
const summaryOf = (m: MessageMeta) => ({
  uid: m.uid,
  flags: m.flags,
  modseq: m.modseq,
  size: m.size,
  internalDate: m.internalDate,
});

describe('message summaries', () => {
  let natsProc: Proc;
  let nats: Nats;
  let redis: Redis;
  let cleanup: () => Promise<void>;
  let store: MailboxStore;
  let rpc: MailboxRpcClient;
  let stopRpc: () => void;
  let blob: { id: string; size: number };
  let blobs: BlobStore;

  before(async () => {
    natsProc = await startNats();
    nats = await connectNats(natsProc.url, 'test', logger);
    blobs = await BlobStore.open(nats, 1);
    const server = await startRedisBackend('single redis-server');
    cleanup = () => server.cleanup();
    redis = await connectRedis(server.url, logger);
    store = new MailboxStore(redis, 's:', blobs, () => undefined);
    const sub = serveRpc(nats, store, logger);
    stopRpc = () => sub.unsubscribe();
    rpc = new MailboxRpcClient(nats, blobs);
    blob = await blobs.put([Buffer.from('Subject: hi\r\n\r\nhello\r\n')]);
  });

  after(async () => {
    stopRpc();
    redis.disconnect();
    await cleanup();
    await nats.nc.close();
    await natsProc.cleanup();
  });

  /** Summaries from the store and over the RPC, whole folder and by UIDs, each checked against the full rows. */
  async function check(folder: string): Promise<MessageMeta[]> {
    const full = (await store.messages(USER, folder)).messages.map(summaryOf);
    const uids = full.map((m) => m.uid);
    for (const [how, got] of [
      ['store, whole folder', await store.messages(USER, folder, [], { summary: true })],
      ['rpc, whole folder', await rpc.messages(USER, folder, [], { summary: true })],
      ['store, by uid', await store.messages(USER, folder, [...uids, 999_999], { summary: true })],
      ['rpc, by uid', await rpc.messages(USER, folder, [...uids, 999_999], { summary: true })],
    ] as const) {
      assert.deepEqual(got.messages.map(summaryOf), full, how);
      for (const m of got.messages) assert.equal(m.blob, '', `${how}: no blob reference in a summary`);
    }
    // In columns (packed rows over the RPC): the same, whole, by range and by UIDs. The store reads
    // a whole folder in one call, in the index's own order, and sorts it (a hash table past a few
    // hundred entries: no order at all); the RPC pages it.
    const last = uids.at(-1) ?? 1;
    const mid = uids[Math.floor(uids.length / 2)] ?? 1;
    for (const [how, range, want] of [
      ['whole folder', { first: 1, last: 0xffffffff }, full],
      ['a range', { first: mid, last }, full.filter((m) => m.uid >= mid)],
      ['by uid', { uids: [...uids, 999_999] }, full],
    ] as const) {
      for (const [side, got] of [
        ['store', await store.summaries(USER, folder, range)],
        ['rpc', await rpc.summaries(USER, folder, range)],
      ] as const) {
        const rows = Array.from({ length: got.summaries.length }, (_, i) =>
          summaryOf(summaryMeta(got.summaries, i)),
        );
        assert.deepEqual(rows, want, `${side}, columns, ${how}`);
        assert.equal(got.folder.name, folder);
        assert.ok(got.modseq > 0 || 'uids' in range, `${side}, ${how}: a HIGHESTMODSEQ to resync from`);
        assert.ok(got.modseq <= got.folder.highestModseq);
      }
    }
    return (await store.messages(USER, folder)).messages;
  }

  test('rows read in the index order come out by UID, dense or sparse', () => {
    for (const uids of [
      Array.from({ length: 3000 }, (_, i) => i + 1),
      Array.from({ length: 500 }, (_, i) => 1 + i * 97),
    ]) {
      const shuffled = [...uids].sort(() => Math.random() - 0.5);
      const packed = shuffled.map((u) => `${u} ${u * 2} ${u + 100} 1700000000000 ${u % 2 ? '\\Seen' : ''}`);
      const got = sortSummaries(parseSummaries(packed.join('\n')));
      assert.deepEqual([...got.uids], uids);
      assert.deepEqual(
        [...got.modseqs],
        uids.map((u) => u * 2),
      );
      assert.deepEqual(
        [...got.sizes],
        uids.map((u) => u + 100),
      );
      assert.deepEqual(
        got.flags.map((f) => f.join(' ')),
        uids.map((u) => (u % 2 ? '\\Seen' : '')),
      );
    }
  });

  test('agree with the full rows through appends, flag changes, expunges, COPY and MOVE', async () => {
    for (let i = 0; i < 30; i++) {
      const flags = i % 3 === 0 ? ['\\Seen', '$Label1'] : i % 3 === 1 ? [] : ['\\Flagged'];
      await store.appendBlob(USER, 'INBOX', blob, flags, 1_700_000_000_000 + i * 1000, `a${i}`);
    }
    await check('INBOX');
    await store.storeFlags(USER, 'INBOX', [1, 2, 3], 'add', ['\\Deleted', 'Work']);
    await store.storeFlags(USER, 'INBOX', [4], 'replace', []);
    await store.storeFlagsIf(USER, 'INBOX', [5, 6], 'remove', ['\\Seen'], 0);
    await check('INBOX');
    assert.deepEqual(await store.expunge(USER, 'INBOX', [1, 2, 3, 7]), [1, 2, 3]);
    await store.copy(USER, 'INBOX', [8, 9, 10], 'Archive', false);
    await store.copy(USER, 'INBOX', [11, 12], 'Trash', true);
    const inbox = await check('INBOX');
    assert.deepEqual(inbox.map((m) => m.uid).slice(0, 6), [4, 5, 6, 7, 8, 9]);
    await check('Archive');
    await check('Trash');
    await store.renameFolder(USER, 'Archive', 'Old');
    await check('Old');
  });

  test('pages of a big folder: every message once, in UID order', async () => {
    await store.createFolder(USER, 'Big');
    const n = SUMMARY_BATCH + 321;
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < n) {
          const i = next++;
          await store.appendBlob(USER, 'Big', blob, i % 2 ? ['\\Seen'] : [], Date.now(), `big${i}`);
        }
      }),
    );
    const all = await check('Big');
    assert.equal(all.length, n);
    const page = await rpc.messageRange(USER, 'Big', 100, 0xffffffff, 10, { summary: true });
    assert.deepEqual(
      page.messages.map((m) => m.uid),
      Array.from({ length: 10 }, (_, i) => 100 + i),
    );
    assert.equal(page.folder.exists, n);
    // Long keywords: a page of packed rows is then cut for the NATS payload limit, and goes on.
    const long = ['a', 'b', 'c'].map((c) => c.repeat(100));
    await store.storeFlags(
      USER,
      'Big',
      all.map((m) => m.uid),
      'add',
      long,
    );
    const again = await check('Big');
    assert.equal(again.length, n);
    assert.ok(again.every((m) => long.every((k) => m.flags.includes(k))));
  });

  test('a folder stored before the summary index was kept, or changed by an older replica, reads right', async () => {
    await store.createFolder(USER, 'Legacy');
    for (let i = 0; i < 20; i++)
      await store.appendBlob(USER, 'Legacy', blob, i % 2 ? ['\\Answered'] : [], Date.now(), `l${i}`);
    const fid = await redis.hget(`s:{u:${USER}}:folders`, 'Legacy');
    const folder = `s:{u:${USER}}:f:${fid}`;
    const index = `${folder}:sum`;
    assert.equal(await redis.hlen(index), 20);
    // As it was before the index: none, and no sumseq. The first read rebuilds it.
    await redis.del(index);
    await redis.hdel(folder, 'sumseq');
    await check('Legacy');
    assert.equal(await redis.hlen(index), 20);
    // An older replica changes flags and expunges without the index (and without sumseq).
    await redis.hset(
      `${folder}:m:4`,
      'flags',
      '\\Seen Old',
      'modseq',
      String(await redis.hincrby(folder, 'modseq', 1)),
    );
    await redis.hincrby(folder, 'modseq', 1);
    await redis.del(`${folder}:m:5`);
    await redis.zrem(`${folder}:uids`, '5');
    await redis.hincrby(folder, 'exists', -1);
    const got = await check('Legacy');
    assert.deepEqual(got.find((m) => m.uid === 4)?.flags, ['\\Seen', 'Old']);
    assert.equal(
      got.find((m) => m.uid === 5),
      undefined,
    );
    assert.equal(await redis.hlen(index), 19);
    await store.deleteFolder(USER, 'Legacy');
    assert.equal(await redis.exists(index), 0);
  });

  test('a replica of an older version (no packed summaries) still answers in columns, in a rolling upgrade', async () => {
    const packed = await rpc.summaries(USER, 'Big', { first: 1, last: 0xffffffff });
    // The older replica: the same store, but its MessagesRequest has no packed_summaries field.
    stopRpc();
    const table = handlers(store);
    const old = nats.nc.subscribe(SUBJECTS.rpc('*'), {
      queue: 'mailbox-store',
      callback: (_err, msg) => {
        const op = msg.subject.slice(SUBJECTS.rpc('').length);
        const request = op === 'summaries' || op === 'messages' ? pb.MessagesRequest.decode(msg.data) : null;
        if (request) request.packedSummaries = false;
        const data = request ? encode(pb.MessagesRequest, request) : msg.data;
        void (table[op] as (d: Uint8Array) => Promise<Uint8Array>)(data).then((reply) => msg.respond(reply));
      },
    });
    try {
      const client = new MailboxRpcClient(nats, blobs);
      for (const range of [
        { first: 1, last: 0xffffffff },
        { first: 200, last: 300 },
        { uids: [3, 4, 5000] },
      ]) {
        const [mine, theirs] = [
          await store.summaries(USER, 'Big', range),
          await client.summaries(USER, 'Big', range),
        ];
        const rows = (p: typeof mine) =>
          Array.from({ length: p.summaries.length }, (_, i) => summaryOf(summaryMeta(p.summaries, i)));
        assert.deepEqual(rows(theirs), rows(mine), JSON.stringify(range));
      }
      assert.equal(
        (await client.summaries(USER, 'Big', { first: 1, last: 0xffffffff })).summaries.length,
        packed.summaries.length,
      );
    } finally {
      old.unsubscribe();
      const sub = serveRpc(nats, store, logger);
      stopRpc = () => sub.unsubscribe();
    }
  });

  test('a big folder out of step with its index is read from the message hashes', async () => {
    const fid = await redis.hget(`s:{u:${USER}}:folders`, 'Big');
    const folder = `s:{u:${USER}}:f:${fid}`;
    await redis.hset(
      `${folder}:m:7`,
      'flags',
      'Changed',
      'modseq',
      String(await redis.hincrby(folder, 'modseq', 1)),
    );
    const got = await check('Big');
    assert.deepEqual(got.find((m) => m.uid === 7)?.flags, ['Changed']);
  });
});
