/**
 * The mailbox actor's scripts on real Redis, bodies in a real JetStream object store. The whole
 * suite runs twice: against a single redis-server and against a three-master Redis Cluster started
 * by the shared test helper (startRedisCluster in test/helpers/servers.ts).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { pino } from 'pino';
import { REDIS_BACKENDS, startNats, startRedisBackend, type Proc } from '../helpers/servers.ts';
import { connectNats, type Nats } from '../../services/core/nats.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { BlobStore } from '../../services/core/blobs.ts';
import { MailboxStore, type QuotaLimits } from '../../services/mailbox-store/store.ts';
import { BlobRefs } from '../../services/mailbox-store/blob-refs.ts';
import type { MailboxChange, MessageMeta } from '../../services/core/mailbox-api.ts';
import { ImapFlow, type FetchMessageObject } from 'imapflow';
import { until } from '../helpers/servers.ts';
import { testConfig } from '../helpers/postino.ts';
import { MemoryAuthenticator } from '../helpers/memory-mailbox.ts';
import { runServices } from '../../services/core/runtime.ts';
import { start as mailboxStoreService } from '../../services/mailbox-store/index.ts';
import { publish, SUBJECTS, STREAMS } from '../../services/core/nats.ts';
import { encode, pb } from '../../services/core/codec.ts';
import { registry } from '../../services/core/metrics.ts';
import { MailboxRpcClient, serveRpc } from '../../services/mailbox-store/rpc.ts';
import { STRUCTURE_LIMITS, decodeStructure } from '../../services/core/mime-structure.ts';
import { bodyStructure } from '../../services/imap/body-structure.ts';
import { envelope } from '../../services/imap/envelope.ts';
import { parseMessage } from '../../services/imap/mime-tree.ts';
import { serializeValue } from '../../services/imap/response.ts';
import { createImapServer } from '../../services/imap/server.ts';

setFlagsFromString('--expose-gc');
const fullGc = runInNewContext('gc') as () => void;
/** A full GC, twice: the second one finishes the first one's concurrent freeing of buffers. */
const gc = () => {
  fullGc();
  fullGc();
};
const logger = pino({ level: 'silent' });

let natsProc: Proc;
let nats: Nats;
let blobs: BlobStore;

before(async () => {
  natsProc = await startNats();
  nats = await connectNats(natsProc.url, 'test', logger);
  blobs = await BlobStore.open(nats, 1);
});

after(async () => {
  await nats.nc.close();
  await natsProc.cleanup();
});

const raw = (s: string) => Buffer.from(s.replace(/\r?\n/g, '\r\n'));

for (const backend of REDIS_BACKENDS) {
  describe(`mailbox store on a ${backend}`, () => {
    let cleanup: () => Promise<void>;
    let url: string;
    const redises: Redis[] = [];
    let store: MailboxStore;
    let refs: BlobRefs;
    const changes: { user: string; change: MailboxChange }[] = [];
    /** Quota limits per user for this suite (the directory's role). */
    const limits = new Map<string, QuotaLimits>();
    /** A store replica with its own Redis connection, as another mailbox-store process would have. */
    const replica = async (journalMax?: number) => {
      const redis = await connectRedis(url, logger);
      redises.push(redis);
      return new MailboxStore(redis, 't:', blobs, (user, change) => changes.push({ user, change }), {
        limits: async (user) => limits.get(user) ?? { bytes: 0, messages: 0 },
        journalMax,
        blobsChanged: refs.changed,
      });
    };

    before(async () => {
      const server = await startRedisBackend(backend);
      url = server.url;
      cleanup = () => server.cleanup();
      const redis = await connectRedis(url, logger);
      redises.push(redis);
      refs = new BlobRefs(redis, 't:', { graceMs: 3_600_000, deleteBody: (id) => blobs.delete(id) });
      store = await replica();
    });

    after(async () => {
      for (const r of redises) r.disconnect();
      await cleanup();
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
      const blob = await blobs.put([raw('Subject: a\n\nbody\n')]);
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
      await assert.rejects(
        store.appendBlob(user, 'INBOX', { id: 'sha256:nothex', size: 1 }, [], Date.now(), ''),
        { code: 'INVALID' },
      );
    });

    test('flags change atomically, keep counters and raise MODSEQ; \\Recent is never stored', async () => {
      const user = 'flags@example.test';
      const { uid } = await store.append(user, 'INBOX', raw('Subject: f\n\nx\n'), ['\\Recent', '$Label1']);
      const before = await store.status(user, 'INBOX');
      assert.equal(before.unseen, 1);
      const [m] = await store.storeFlags(user, 'INBOX', [uid], 'add', ['\\Seen', '\\Flagged']);
      assert.deepEqual(m?.flags, ['$Label1', '\\Seen', '\\Flagged']);
      assert.ok(m && m.size > 0 && m.blob.startsWith('sha256:') && m.internalDate > 0);
      const mid = await store.status(user, 'INBOX');
      assert.equal(mid.unseen, 0);
      assert.ok(mid.highestModseq > before.highestModseq);
      const [r] = await store.storeFlags(user, 'INBOX', [uid], 'remove', ['\\seen']);
      assert.deepEqual(r?.flags, ['$Label1', '\\Flagged']);
      assert.equal((await store.status(user, 'INBOX')).unseen, 1);
      const [p] = await store.storeFlags(user, 'INBOX', [uid], 'replace', ['\\Answered']);
      assert.deepEqual(p?.flags, ['\\Answered']);
      const mine = changes.filter((c) => c.user === user && c.change.kind === 'flags');
      assert.ok(mine.length >= 3 && mine.every((c) => c.change.modseq > 0 && c.change.uids.includes(uid)));
    });

    test('every change event carries the MODSEQ it produced', async () => {
      const user = 'events@example.test';
      const a = await store.append(user, 'INBOX', raw('Subject: e\n\n1\n'), []);
      await store.copy(user, 'INBOX', [a.uid], 'Archive', false);
      await store.copy(user, 'INBOX', [a.uid], 'Trash', true);
      await store.storeFlags(user, 'Trash', [1], 'add', ['\\Deleted']);
      await store.expunge(user, 'Trash', [1]);
      const mine = changes.filter((c) => c.user === user && c.change.kind !== 'folder');
      assert.deepEqual(
        mine.map((c) => c.change.kind),
        ['append', 'append', 'append', 'expunge', 'flags', 'expunge'],
      );
      assert.ok(mine.every((c) => c.change.modseq > 0));
      for (const f of ['INBOX', 'Archive', 'Trash']) {
        const last = mine.filter((c) => c.change.folder === f).at(-1);
        assert.equal(last?.change.modseq, (await store.status(user, f)).highestModseq, f);
      }
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
      const a = await store.append(user, 'INBOX', raw('Subject: c\n\nc'), ['\\Seen']);
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
      await store.append(user, 'Work/Projects', Buffer.from('kept until the folder goes'), []);
      await store.renameFolder(user, 'Work', 'Job');
      names = (await store.listFolders(user)).map((f) => f.name);
      assert.ok(names.includes('Job/Projects/Postino') && !names.includes('Work'));
      assert.equal((await store.status(user, 'Job/Projects')).exists, 1);
      await store.deleteFolder(user, 'Job');
      names = (await store.listFolders(user)).map((f) => f.name);
      assert.ok(!names.some((n) => n.startsWith('Job')));
      assert.equal((await store.quota(user)).messagesUsed, 0, 'deleting a folder frees its messages');
      await store.createFolder(user, 'Job/Projects');
      assert.notEqual((await store.status(user, 'Job/Projects')).uidValidity, uv);
      await assert.rejects(store.deleteFolder(user, 'INBOX'), { code: 'CANNOT' });
      await assert.rejects(store.status(user, 'Nope'), { code: 'NONEXISTENT' });
      await assert.rejects(store.createFolder(user, 'bad\x00name'), { code: 'CANNOT' });
    });

    test('CONDSTORE: CHANGEDSINCE and STORE UNCHANGEDSINCE (RFC 7162 3.1.3, 3.1.4.1)', async () => {
      const user = 'condstore@example.test';
      const uids: number[] = [];
      for (let i = 0; i < 4; i++)
        uids.push((await store.append(user, 'INBOX', raw(`Subject: ${i}\n\n`), [])).uid);
      const m0 = (await store.status(user, 'INBOX')).highestModseq;
      await store.storeFlags(user, 'INBOX', [uids[1]!, uids[3]!], 'add', ['\\Seen']);
      const changed = await store.changedSince(user, 'INBOX', m0);
      assert.deepEqual(
        changed.map((m) => m.uid),
        [uids[1], uids[3]],
      );
      assert.ok(changed.every((m) => m.modseq > m0 && m.flags.includes('\\Seen')));
      assert.deepEqual(
        (await store.changedSince(user, 'INBOX', m0, [uids[0]!, uids[1]!])).map((m) => m.uid),
        [uids[1]],
      );
      // uids[1] changed after m0: a conditional STORE leaves it alone and reports it.
      const r = await store.storeFlagsIf(user, 'INBOX', [uids[0]!, uids[1]!], 'add', ['$Done'], m0);
      assert.deepEqual(r.failed, [uids[1]]);
      assert.deepEqual(
        r.messages.map((m) => [m.uid, m.flags]),
        [[uids[0], ['$Done']]],
      );
      // UNCHANGEDSINCE 0 fails for every message (each has MODSEQ >= 1).
      const zero = await store.storeFlagsIf(user, 'INBOX', uids, 'add', ['$X'], 0);
      assert.deepEqual(zero.failed, uids);
      assert.equal(zero.messages.length, 0);
    });

    test('QRESYNC: expunged since MODSEQ, and the journal trimming policy (RFC 7162 3.2.5)', async () => {
      const user = 'qresync@example.test';
      const small = await replica(100);
      const uids: number[] = [];
      for (let i = 0; i < 150; i++)
        uids.push((await small.append(user, 'INBOX', Buffer.from(`m${i}`), [])).uid);
      const m0 = (await small.status(user, 'INBOX')).highestModseq;
      await small.expunge(user, 'INBOX', uids.slice(0, 10), true);
      const m1 = (await small.status(user, 'INBOX')).highestModseq;
      assert.deepEqual(await small.expungedSince(user, 'INBOX', m0), uids.slice(0, 10));
      assert.deepEqual(await small.expungedSince(user, 'INBOX', m1), []);
      await small.expunge(user, 'INBOX', uids.slice(10, 140), true);
      // 140 expunges, 100 kept: a client that knows only m0 must resync; one that knows m1 must too
      // (entries after m1 were trimmed); the newest 100 are still answered exactly.
      assert.equal(await small.expungedSince(user, 'INBOX', m0), null);
      assert.equal(await small.expungedSince(user, 'INBOX', m1), null);
      const m2 = m1 + 40;
      assert.deepEqual(await small.expungedSince(user, 'INBOX', m2), uids.slice(50, 140));
    });

    test('quotas: APPEND and COPY over the limit fail with OVERQUOTA, MOVE does not count', async () => {
      const user = 'quota@example.test';
      limits.set(user, { bytes: 1000, messages: 3 });
      const a = await store.append(user, 'INBOX', Buffer.alloc(400, 97), []);
      assert.deepEqual(await store.quota(user), {
        storageUsed: 400,
        storageLimit: 1000,
        messagesUsed: 1,
        messagesLimit: 3,
      });
      await store.append(user, 'INBOX', Buffer.alloc(400, 98), []);
      await assert.rejects(store.append(user, 'INBOX', Buffer.alloc(400, 99), []), { code: 'OVERQUOTA' });
      await assert.rejects(store.copy(user, 'INBOX', [a.uid], 'Archive', false), { code: 'OVERQUOTA' });
      const moved = await store.copy(user, 'INBOX', [a.uid], 'Archive', true);
      assert.equal(moved.targetUids.length, 1);
      await store.append(user, 'INBOX', Buffer.alloc(100, 100), []);
      await assert.rejects(store.append(user, 'INBOX', Buffer.alloc(1, 101), []), { code: 'OVERQUOTA' });
      const q = await store.quota(user);
      assert.equal(q.storageUsed, 900);
      assert.equal(q.messagesUsed, 3);
      await assert.rejects(
        store.appendStream(
          user,
          'INBOX',
          (async function* () {
            yield Buffer.from('x');
          })(),
          [],
        ),
        { code: 'OVERQUOTA' },
      );
    });

    // The blob store does not depend on the Redis flavour: once is enough.
    if (backend === 'single redis-server')
      test('a 50 MiB APPEND is streamed to the blob store and back, never held whole', async (t) => {
        const user = 'big@example.test';
        const CHUNK = 256 * 1024;
        const TOTAL = 50 * 1024 * 1024;
        const chunk = Buffer.alloc(CHUNK);
        // Memory still reachable (after a full GC) every 4 MiB, compared with before.
        let peak = 0;
        gc();
        const base = process.memoryUsage().arrayBuffers;
        let n = 0;
        const sample = () => {
          if (n++ % 64 !== 0) return;
          gc();
          peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
        };
        async function* body() {
          for (let i = 0; i < TOTAL / CHUNK; i++) {
            chunk.fill(i % 251);
            sample();
            yield Buffer.from(chunk);
          }
        }
        const { uid } = await store.appendStream(user, 'INBOX', body(), ['\\Seen']);
        const writePeak = peak;
        peak = 0;
        const [m] = (await store.messages(user, 'INBOX', [uid])).messages;
        assert.equal(m?.size, TOTAL);
        let read = 0;
        for await (const c of store.openBody(m!.blob)) {
          assert.equal(c[0], Math.floor(read / CHUNK) % 251);
          read += c.byteLength;
          sample();
        }
        assert.equal(read, TOTAL);
        const mib = (n: number) => (n / 1048576).toFixed(1);
        t.diagnostic(
          `50 MiB body, peak reachable buffers: ${mib(writePeak)} MiB writing, ${mib(peak)} MiB reading`,
        );
        assert.ok(writePeak < TOTAL / 4, `writing: ${writePeak} bytes`);
        assert.ok(peak < TOTAL / 2, `peak buffer memory ${peak} bytes stays well below the body's size`);
      });

    test('one body for 100 local recipients is stored once; removed when the last reference goes', async () => {
      const body = raw(`Subject: to all\n\n${'x'.repeat(5000)}\n`);
      const blob = await blobs.put([body]);
      const users = Array.from({ length: 100 }, (_, i) => `r${i}@example.test`);
      await Promise.all(users.map((u) => store.appendBlob(u, 'INBOX', blob, [], Date.now(), `Q100:${u}`)));
      // Everyone refers to the same blob; the object store holds it under its SHA-256 once.
      for (const u of users.slice(0, 5)) {
        assert.equal((await store.messages(u, 'INBOX')).messages[0]?.blob, blob.id);
      }
      while ((await refs.collect(store)) > 0);
      assert.equal(await refs.holders(blob.id), 100);
      // A copy inside one mailbox is still one holder.
      await store.copy(users[0]!, 'INBOX', [1], 'Archive', false);
      for (const u of users.slice(1)) await store.expunge(u, 'INBOX', [1], true);
      while ((await refs.collect(store)) > 0);
      assert.equal(await refs.holders(blob.id), 1);
      await store.expunge(users[0]!, 'INBOX', [1], true);
      while ((await refs.collect(store)) > 0);
      assert.equal(await refs.holders(blob.id), 1, 'the copy in Archive still holds it');
      await store.deleteFolder(users[0]!, 'Archive').catch(() => undefined);
      await store.createFolder(users[0]!, 'Archive');
      while ((await refs.collect(store)) > 0);
      assert.equal(await refs.holders(blob.id), 0);
      // Within the grace period nothing goes; after it the body is deleted, once.
      assert.equal(await refs.sweep(), 0);
      assert.ok(await blobs.has(blob.id));
      // (Bodies of the other tests whose last reference went are due too.)
      assert.ok((await refs.sweep(Date.now() + 2 * 3_600_000)) >= 1);
      assert.equal(await blobs.has(blob.id), false);
      assert.equal(await refs.holders(blob.id), 0);
    });

    const holdersAfter = new Map<string, number>();
    test('property: blob holders converge to the truth with collectors racing the changes', async () => {
      const replicas = [store, await replica(), await replica()];
      const collectors = [
        refs,
        new BlobRefs(redises.at(-1)!, 't:', { graceMs: 3_600_000, deleteBody: async () => undefined }),
      ];
      const bodies = await Promise.all([0, 1, 2].map((i) => blobs.put([Buffer.from(`shared body ${i}`)])));
      let n = 0;
      const op = fc.record({
        user: fc.nat(3),
        blob: fc.nat(2),
        kind: fc.constantFrom('append', 'copy', 'expunge', 'collect'),
      });
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.array(op, { maxLength: 15 }), { minLength: 3, maxLength: 3 }),
          async (plans) => {
            const run = n++;
            const users = [0, 1, 2, 3].map((u) => `ref${run}x${u}@example.test`);
            await Promise.all(
              plans.map(async (plan, r) => {
                const s = replicas[r]!;
                for (const o of plan) {
                  const user = users[o.user]!;
                  if (o.kind === 'append')
                    await s.appendBlob(user, 'INBOX', bodies[o.blob]!, [], Date.now(), '');
                  else if (o.kind === 'copy') await s.copy(user, 'INBOX', [1 + o.blob], 'Archive', false);
                  else if (o.kind === 'expunge')
                    await s.expunge(user, 'INBOX', [1 + o.blob, 2 + o.blob], true);
                  else await collectors[r % 2]!.collect(s);
                }
              }),
            );
            while ((await refs.collect(store)) > 0);
            for (const b of bodies) {
              let truth = 0;
              for (const u of users) {
                const all = [
                  ...(await store.messages(u, 'INBOX')).messages,
                  ...(await store.messages(u, 'Archive')).messages,
                ];
                if (all.some((m) => m.blob === b.id)) truth++;
              }
              // Holders of the run's users only: earlier runs' users stay as they were left.
              const before = run === 0 ? 0 : (holdersAfter.get(b.id) ?? 0);
              const now = await refs.holders(b.id);
              assert.equal(now - before, truth, b.id);
            }
            for (const b of bodies) holdersAfter.set(b.id, await refs.holders(b.id));
          },
        ),
        { numRuns: backend === 'single redis-server' ? 20 : 8 },
      );
    });

    test('property: three replicas at once keep the IMAP invariants and the journal replays', async () => {
      const replicas = [store, await replica(), await replica()];
      let n = 0;
      const op = fc.oneof(
        fc.record({ kind: fc.constant('append' as const), seen: fc.boolean() }),
        fc.record({
          kind: fc.constant('flag' as const),
          pick: fc.nat(40),
          op: fc.constantFrom('add', 'remove', 'replace') as fc.Arbitrary<'add' | 'remove' | 'replace'>,
          flag: fc.constantFrom('\\Seen', '\\Flagged', '$A', '$B'),
        }),
        fc.record({ kind: fc.constant('keyword' as const), pick: fc.nat(40) }),
        fc.record({ kind: fc.constant('expunge' as const), pick: fc.nat(40) }),
        fc.record({ kind: fc.constant('move' as const), pick: fc.nat(40) }),
      );
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.array(op, { maxLength: 12 }), { minLength: 3, maxLength: 3 }),
          async (plans) => {
            const user = `prop${n++}@example.test`;
            for (let i = 0; i < 5; i++) await store.append(user, 'INBOX', Buffer.from(`seed ${i}`), []);
            const snapshot = await store.messages(user, 'INBOX');
            const m0 = snapshot.folder.highestModseq;
            const appended: number[] = [];
            const keywords = new Map<number, string[]>();
            const seenModseq: number[][] = [[], [], []];
            await Promise.all(
              plans.map(async (plan, r) => {
                const s = replicas[r]!;
                for (const [i, o] of plan.entries()) {
                  const pick = 1 + (('pick' in o ? o.pick : 0) % 20);
                  if (o.kind === 'append') {
                    appended.push(
                      (await s.append(user, 'INBOX', Buffer.from(`r${r} ${i}`), o.seen ? ['\\Seen'] : []))
                        .uid,
                    );
                  } else if (o.kind === 'flag') {
                    await s.storeFlags(user, 'INBOX', [pick], o.op, [o.flag]);
                  } else if (o.kind === 'keyword') {
                    // A keyword only this op adds and nobody removes: it must survive (no lost update).
                    const kw = `$k${r}x${i}`;
                    const done = await s.storeFlags(user, 'INBOX', [pick], 'add', [kw]);
                    if (done.length > 0) keywords.set(pick, [...(keywords.get(pick) ?? []), kw]);
                  } else if (o.kind === 'expunge') {
                    await s.expunge(user, 'INBOX', [pick], true);
                  } else {
                    await s.copy(user, 'INBOX', [pick], 'Archive', true);
                  }
                  seenModseq[r]!.push((await s.status(user, 'INBOX')).highestModseq);
                }
              }),
            );
            const { folder, messages } = await store.messages(user, 'INBOX');
            const uids = messages.map((m) => m.uid);
            // UIDs unique and strictly ascending; no append got a UID twice; UIDNEXT above them all.
            assert.ok(uids.every((u, i) => i === 0 || u > uids[i - 1]!));
            assert.equal(new Set(appended).size, appended.length);
            assert.ok(appended.every((u) => u > 5 && u < folder.uidNext));
            // MODSEQ: never goes back as seen by any replica; unique per message; below HIGHESTMODSEQ.
            for (const seq of seenModseq) assert.ok(seq.every((v, i) => i === 0 || v >= seq[i - 1]!));
            assert.equal(new Set(messages.map((m) => m.modseq)).size, messages.length);
            assert.ok(messages.every((m) => m.modseq <= folder.highestModseq));
            // No keyword lost, unless the message went or a replace ran on it.
            const replaced = new Set(
              plans
                .flat()
                .filter((o) => o.kind === 'flag' && o.op === 'replace')
                .map((o) => 1 + ((o as { pick: number }).pick % 20)),
            );
            for (const [uid, kws] of keywords) {
              const m = messages.find((x) => x.uid === uid);
              if (m && !replaced.has(uid))
                for (const kw of kws) assert.ok(m.flags.includes(kw), `${kw} on ${uid}`);
            }
            // Counters equal the truth.
            assert.equal(folder.exists, messages.length);
            assert.equal(folder.unseen, messages.filter((m) => !m.flags.includes('\\Seen')).length);
            const archive = await store.messages(user, 'Archive');
            const all = [...messages, ...archive.messages];
            const q = await store.quota(user);
            assert.equal(q.messagesUsed, all.length);
            assert.equal(
              q.storageUsed,
              all.reduce((t, m) => t + m.size, 0),
            );
            // The journal replays: snapshot - expunged since m0 + changed since m0 = now.
            const gone = new Set(await store.expungedSince(user, 'INBOX', m0));
            const replay = new Map<number, MessageMeta>(
              snapshot.messages.filter((m) => !gone.has(m.uid)).map((m) => [m.uid, m]),
            );
            for (const m of await store.changedSince(user, 'INBOX', m0)) replay.set(m.uid, m);
            assert.deepEqual(
              [...replay.values()].sort((a, b) => a.uid - b.uid),
              messages,
            );
          },
        ),
        { numRuns: backend === 'single redis-server' ? 25 : 10 },
      );
    });

    structureTests(backend, () => ({ url, store }));
  });
}

// ---------------------------------------------------------------------------------------------
// The MIME structure IMAP needs (ENVELOPE, BODYSTRUCTURE, header SEARCH), parsed once at append.

/** A typical personal message: a text and an HTML alternative. */
const TYPICAL = (i: number) =>
  raw(`Return-Path: <alice@example.com>
Received: from mx.example.com by mx.example.test; Tue, 14 May 2024 10:00:01 +0200
DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h=from:to:subject:date; bh=${'b'.repeat(44)}; b=${'s'.repeat(200)}
From: "Alice Example" <alice@example.com>
To: bob@example.test, "Carol, C." <carol@example.org>
Cc: team@example.org
Subject: =?UTF-8?Q?Caf=C3=A9?= meeting ${i}
Date: Tue, 14 May 2024 10:00:00 +0200
Message-ID: <m${i}@example.com>
In-Reply-To: <m0@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Hello Bob, see you at ${i}.
--b1
Content-Type: text/html; charset=utf-8

<p>Hello Bob, see you at ${i}.</p>
--b1--
`);

/** A message with an attachment and a forwarded message inside. */
const ATTACHED = raw(`From: dave@example.net
To: bob@example.test
Subject: report
Date: Wed, 15 May 2024 09:00:00 +0000
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: text/plain

See attached.
--outer
Content-Type: application/pdf; name="r.pdf"
Content-Disposition: attachment; filename="r.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--outer
Content-Type: message/rfc822

From: erin@example.org
Subject: inner

inner body
--outer--
`);

/** ENVELOPE, BODYSTRUCTURE and BODY as the IMAP server writes them. */
function wire(node: Parameters<typeof bodyStructure>[0], headers: Parameters<typeof envelope>[0]): string {
  return [envelope(headers), bodyStructure(node, true), bodyStructure(node, false)]
    .map((v) => serializeValue(v).toString('latin1'))
    .join(' ');
}

function fromBody(body: Buffer): string {
  const parsed = parseMessage(body, STRUCTURE_LIMITS);
  return wire(parsed, parsed.root.headers);
}

function fromStored(meta: MessageMeta | undefined): string {
  const node = decodeStructure(meta?.structure, STRUCTURE_LIMITS);
  assert.ok(node, `message ${meta?.uid} has a stored structure`);
  return wire(node, node.headers);
}

/** The blob store as IMAP sees it, counting the bodies it opens. */
function countingBlobs(): { blobs: BlobStore; opened: () => number } {
  let opened = 0;
  const proxy = new Proxy(blobs, {
    get(target, prop) {
      if (prop === 'open' || prop === 'read') opened++;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { blobs: proxy, opened: () => opened };
}

async function bodyLoads(): Promise<number> {
  const m = await registry.getSingleMetric('postino_imap_body_loads_total')?.get();
  return m?.values[0]?.value ?? 0;
}

async function* chunked(body: Buffer, size: number): AsyncIterable<Uint8Array> {
  for (let i = 0; i < body.length; i += size) yield body.subarray(i, i + size);
}

function structureTests(backend: string, ctx: () => { url: string; store: MailboxStore }): void {
  test('IMAP APPEND keeps the structure; FETCH ENVELOPE BODYSTRUCTURE of a folder reads no body', async (t) => {
    const { store } = ctx();
    const rpc = serveRpc(nats, store, logger);
    const counting = countingBlobs();
    const client = new MailboxRpcClient(nats, counting.blobs);
    const user = 'fetcher@example.test';
    const server = createImapServer({
      mailbox: client,
      auth: new MemoryAuthenticator({ [user]: 'pw' }),
      logger,
      hostname: 'imap.example.test',
      allowPlaintextAuth: true,
    });
    const port = await server.listen(0, '127.0.0.1');
    const imap = new ImapFlow({
      host: '127.0.0.1',
      port,
      secure: false,
      auth: { user, pass: 'pw' },
      logger: false,
      disableAutoIdle: true,
    });
    try {
      // 150 messages through the IMAP APPEND paths: buffered, and streamed in odd chunks.
      const bodies: Buffer[] = [];
      for (let i = 0; i < 150; i++) {
        const body = i % 10 === 9 ? ATTACHED : TYPICAL(i);
        if (i % 3 === 0) await client.appendStream(user, 'INBOX', chunked(body, 7 + (i % 5)), []);
        else await client.append(user, 'INBOX', body, []);
        bodies.push(body);
      }
      // Two messages stored before structures were kept: same bytes as messages 1 and 9.
      for (const i of [1, 9]) {
        const blob = await blobs.put([bodies[i] as Buffer]);
        await store.appendBlob(user, 'INBOX', blob, [], Date.now(), `legacy-${i}`);
        bodies.push(bodies[i] as Buffer);
      }
      const { messages } = await client.messages(user, 'INBOX', [], { structure: true });
      assert.equal(messages.length, 152);
      for (const [i, m] of messages.slice(0, 150).entries())
        assert.equal(fromStored(m), fromBody(bodies[i] as Buffer), `stored structure of message ${i + 1}`);
      assert.deepEqual(
        messages.slice(150).map((m) => m.structure),
        [undefined, undefined],
      );
      const opened = counting.opened();
      const loads = await bodyLoads();

      await imap.connect();
      await imap.mailboxOpen('INBOX');
      const fetched: FetchMessageObject[] = [];
      for await (const m of imap.fetch('1:*', { uid: true, envelope: true, bodyStructure: true }))
        fetched.push(m);
      assert.equal(fetched.length, 152);
      const typical = fetched[1] as FetchMessageObject;
      assert.equal(typical.envelope?.subject, 'Café meeting 1');
      assert.deepEqual(typical.envelope?.from, [{ name: 'Alice Example', address: 'alice@example.com' }]);
      assert.deepEqual(
        typical.envelope?.to?.map((a) => a.address),
        ['bob@example.test', 'carol@example.org'],
      );
      assert.equal(typical.envelope?.messageId, '<m1@example.com>');
      assert.equal(typical.envelope?.inReplyTo, '<m0@example.com>');
      assert.equal(typical.bodyStructure?.type, 'multipart/alternative');
      assert.deepEqual(
        typical.bodyStructure?.childNodes?.map((c) => [c.type, c.encoding, c.size, c.lineCount]),
        [
          ['text/plain', 'quoted-printable', 'Hello Bob, see you at 1.'.length, 1],
          ['text/html', '7bit', '<p>Hello Bob, see you at 1.</p>'.length, 1],
        ],
      );
      const attached = fetched[9] as FetchMessageObject;
      assert.deepEqual(
        attached.bodyStructure?.childNodes?.map((c) => [c.type, c.dispositionParameters?.filename ?? null]),
        [
          ['text/plain', null],
          ['application/pdf', 'r.pdf'],
          ['message/rfc822', null],
        ],
      );
      assert.equal(attached.bodyStructure?.childNodes?.[2]?.envelope?.subject, 'inner');
      // From the stored structure or from the body of an older message: the same answer.
      for (const [legacy, same] of [
        [150, 1],
        [151, 9],
      ] as const) {
        const a = fetched[legacy] as FetchMessageObject;
        const b = fetched[same] as FetchMessageObject;
        assert.deepEqual([a.envelope, a.bodyStructure], [b.envelope, b.bodyStructure]);
      }
      // The 150 messages with a structure cost no body read; each older message one.
      assert.equal(counting.opened() - opened, 2, 'bodies read from the blob store');
      assert.equal((await bodyLoads()) - loads, 2, 'postino_imap_body_loads_total');

      // Header SEARCH and SORT use the stored fields too (the two older messages are cached now).
      const found = await imap.search({ header: { 'message-id': '<m42@example.com>' } }, { uid: false });
      assert.deepEqual(found, [43]);
      const fromDave = await imap.search({ from: 'dave@example.net', subject: 'report' });
      assert.equal((fromDave as number[]).length, 16);
      assert.equal(counting.opened() - opened, 2, 'SEARCH read no body');
      t.diagnostic(
        `${backend}: FETCH ENVELOPE BODYSTRUCTURE of 152 messages read 2 bodies (the 2 older ones)`,
      );
    } finally {
      await imap.logout().catch(() => undefined);
      await server.close();
      rpc.unsubscribe();
    }
  });

  test('LOCAL delivery keeps the structure for every recipient', async () => {
    const { url } = ctx();
    const { config } = await testConfig({ NATS_URL: natsProc.url, REDIS_URL: url });
    const running = await runServices(config, ['mailbox-store'], { 'mailbox-store': mailboxStoreService });
    try {
      const rt = running.runtime;
      const reader = new MailboxStore(rt.redis, rt.config.redisPrefix, rt.blobs, () => undefined);
      const body = TYPICAL(7);
      const blob = await rt.blobs.put([body]);
      const users = ['l1@example.test', 'l2@example.test', 'l3@example.test'];
      for (const user of users) {
        const d = {
          queueId: `Q-st-${backend}`,
          user,
          originalRecipient: user,
          body: blob,
          mailFrom: 'alice@example.com',
          receivedAt: Date.now(),
          messageId: '<m7@example.com>',
          idempotencyKey: `Q-st-${backend}:${user}`,
        };
        await publish(rt.nats, SUBJECTS.local(0), encode(pb.LocalDelivery, d), { stream: STREAMS.LOCAL });
      }
      const filed = Buffer.concat([Buffer.from('Return-Path: <alice@example.com>\r\n'), body]);
      for (const user of users) {
        await until(`${user} has the message`, async () => (await reader.status(user, 'INBOX')).exists === 1);
        const [m] = (await reader.messages(user, 'INBOX', [], { structure: true })).messages;
        assert.equal(m?.size, filed.length);
        assert.equal(fromStored(m), fromBody(filed));
      }
    } finally {
      await running.stop();
    }
  });

  test('a typical message costs a few hundred bytes more in Redis for its structure', async (t) => {
    const { url, store } = ctx();
    const redis = await connectRedis(url, logger);
    try {
      const user = 'bytes@example.test';
      const sizes: Record<string, number[]> = {};
      for (const [name, body] of [
        ['typical', TYPICAL(1)],
        ['attachment', ATTACHED],
      ] as const) {
        const blob = await blobs.put([body]);
        const withSt = await store.append(user, 'INBOX', body, []);
        const without = await store.appendBlob(user, 'INBOX', blob, [], Date.now(), `bytes-${name}`);
        const fid = await redis.hget(`t:{u:${user}}:folders`, 'INBOX');
        const usage = async (uid: number) =>
          Number(await redis.call('MEMORY', 'USAGE', `t:{u:${user}}:f:${fid}:m:${uid}`, 'SAMPLES', '0'));
        const st = await redis.hgetBuffer(`t:{u:${user}}:f:${fid}:m:${withSt.uid}`, 'st');
        sizes[name] = [await usage(without.uid), await usage(withSt.uid), st?.length ?? 0];
      }
      const [plain = 0, structured = 0, encoded = 0] = sizes.typical ?? [];
      t.diagnostic(
        `${backend}: message hash ${plain} B without, ${structured} B with its structure ` +
          `(${encoded} B encoded); with an attachment: ${(sizes.attachment as number[]).join(' / ')} B`,
      );
      assert.ok(encoded > 0 && encoded < 1024, `typical structure ${encoded} B`);
      assert.ok(structured - plain < 1024, `Redis bytes per typical message grow by ${structured - plain}`);
    } finally {
      redis.disconnect();
    }
  });

  // The blob store does not depend on the Redis flavour: once is enough.
  if (backend === 'single redis-server')
    test('a 50 MiB IMAP APPEND gets its structure while it streams, in bounded memory', async (t) => {
      const { store } = ctx();
      const rpc = serveRpc(nats, store, logger);
      const client = new MailboxRpcClient(nats, blobs);
      try {
        const user = 'bigst@example.test';
        const head = raw(`From: big@example.net
To: bob@example.test
Subject: large
Content-Type: multipart/mixed; boundary=zz

--zz
Content-Type: text/plain

the attachment follows
--zz
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

`);
        const tail = raw('\n--zz--\n');
        const LINE = Buffer.from(`${'QUJD'.repeat(19)}\r\n`); // 78 octets, base64 lines
        const CHUNK = LINE.length * 3360; // 262,080 octets
        const CHUNKS = 200; // 52,416,000 octets of attachment, 672,000 lines
        const chunk = Buffer.alloc(CHUNK);
        for (let i = 0; i < CHUNK; i += LINE.length) LINE.copy(chunk, i);
        gc();
        const base = process.memoryUsage().arrayBuffers;
        let peak = 0;
        async function* body() {
          yield head;
          for (let i = 0; i < CHUNKS; i++) {
            if (i % 16 === 0) {
              gc();
              peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
            }
            yield Buffer.from(chunk);
          }
          yield tail;
        }
        const { uid } = await client.appendStream(user, 'INBOX', body(), []);
        const [m] = (await client.messages(user, 'INBOX', [uid], { structure: true })).messages;
        const node = decodeStructure(m?.structure, STRUCTURE_LIMITS);
        assert.ok(node, 'the 50 MiB message has a stored structure');
        // The line break before the closing delimiter belongs to it (RFC 2046 5.1.1): the part is
        // the base64 lines, each with its own line break.
        const attachment = node.children[1];
        assert.equal(attachment?.contentType.subtype, 'octet-stream');
        assert.equal(attachment?.size, CHUNK * CHUNKS);
        assert.equal(attachment?.lines(), CHUNKS * (CHUNK / LINE.length));
        assert.equal(m?.size, head.length + CHUNK * CHUNKS + tail.length);
        t.diagnostic(
          `50 MiB APPEND with its structure: peak reachable buffers ${(peak / 1048576).toFixed(1)} MiB`,
        );
        assert.ok(peak < (CHUNK * CHUNKS) / 4, `peak buffer memory ${peak} bytes`);
      } finally {
        rpc.unsubscribe();
      }
    });
}
