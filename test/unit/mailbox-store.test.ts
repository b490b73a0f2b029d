/**
 * The mailbox actor's scripts on real Redis, bodies in a real JetStream object store. The whole
 * suite runs twice: against a single redis-server and against a three-master Redis Cluster started
 * here (redis-server --cluster-enabled yes x3 + redis-cli --cluster create).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { pino } from 'pino';
import { freePort, startNats, startRedis, until, waitForPort, type Proc } from '../helpers/servers.ts';
import { connectNats, type Nats } from '../../services/core/nats.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { BlobStore } from '../../services/core/blobs.ts';
import { MailboxStore, type QuotaLimits } from '../../services/mailbox-store/store.ts';
import { BlobRefs } from '../../services/mailbox-store/blob-refs.ts';
import type { MailboxChange, MessageMeta } from '../../services/core/mailbox-api.ts';

const run = promisify(execFile);
setFlagsFromString('--expose-gc');
const fullGc = runInNewContext('gc') as () => void;
/** A full GC, twice: the second one finishes the first one's concurrent freeing of buffers. */
const gc = () => {
  fullGc();
  fullGc();
};
const logger = pino({ level: 'silent' });

/** Three redis-server masters joined into a cluster; `url` lists them all (cluster mode). */
async function startRedisCluster(): Promise<{ url: string; cleanup(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'postino-rcluster-'));
  const ports = [await freePort(), await freePort(), await freePort()];
  const children: ChildProcess[] = ports.map((port) =>
    spawn(
      'redis-server',
      [
        '--bind',
        '127.0.0.1',
        '--port',
        String(port),
        '--dir',
        dir,
        '--save',
        '',
        '--appendonly',
        'no',
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        `nodes-${port}.conf`,
        '--cluster-node-timeout',
        '5000',
      ],
      { stdio: 'ignore' },
    ),
  );
  await Promise.all(ports.map((p) => waitForPort('127.0.0.1', p)));
  await run('redis-cli', [
    '--cluster',
    'create',
    ...ports.map((p) => `127.0.0.1:${p}`),
    '--cluster-replicas',
    '0',
    '--cluster-yes',
  ]);
  for (const p of ports) {
    await until(`cluster node ${p} ok`, async () => {
      const { stdout } = await run('redis-cli', ['-p', String(p), 'cluster', 'info']);
      return stdout.includes('cluster_state:ok');
    });
  }
  return {
    url: ports.map((p) => `redis://127.0.0.1:${p}`).join(','),
    async cleanup() {
      await Promise.all(
        children.map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null || c.signalCode !== null) return resolve();
              c.once('exit', () => resolve());
              c.kill('SIGKILL');
            }),
        ),
      );
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

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

for (const backend of ['single redis-server', 'three-master Redis Cluster'] as const) {
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
      if (backend === 'single redis-server') {
        const proc = await startRedis();
        url = proc.url;
        cleanup = () => proc.cleanup();
      } else {
        const cluster = await startRedisCluster();
        url = cluster.url;
        cleanup = () => cluster.cleanup();
      }
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
  });
}
