/**
 * Queue entries holding message bodies (services/core/blobs.ts) on real Redis and a real JetStream
 * object store, with the sweeper of services/mailbox-store/blob-refs.ts. Runs against a single
 * redis-server and a three-master Redis Cluster: each hold and release is one single-slot script.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { REDIS_BACKENDS, startNats, startRedisBackend, type Proc } from '../helpers/servers.ts';
import { connectNats, type Nats } from '../../services/core/nats.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { BlobHolder, BlobRecords, BlobStore } from '../../services/core/blobs.ts';
import { BlobRefs } from '../../services/mailbox-store/blob-refs.ts';

const logger = pino({ level: 'silent' });
const GRACE = 60_000;
/** A sweep as if the grace period had passed since now. */
const later = () => Date.now() + 2 * GRACE;

let natsProc: Proc;
let nats: Nats;

before(async () => {
  natsProc = await startNats();
  nats = await connectNats(natsProc.url, 'test', logger);
});

after(async () => {
  await nats.nc.close();
  await natsProc.cleanup();
});

for (const backend of REDIS_BACKENDS) {
  describe(`queue entries holding bodies on a ${backend}`, () => {
    let cleanup: () => Promise<void>;
    let redis: Redis;
    let blobs: BlobStore;
    let refs: BlobRefs;
    let n = 0;
    /** A body no other test uses, stored for an INGRESS envelope as smtp-ingress stores it. */
    const accept = async (queueId: string) =>
      blobs.put([Buffer.from(`Subject: ${backend} ${n++}\r\n\r\nbody of ${queueId}\r\n`)], {
        holder: BlobHolder.ingress(queueId),
      });

    before(async () => {
      const server = await startRedisBackend(backend);
      cleanup = () => server.cleanup();
      redis = await connectRedis(server.url, logger);
      blobs = await BlobStore.open(nats, 1, new BlobRecords(redis, 'h:'));
      refs = new BlobRefs(redis, 'h:', { graceMs: GRACE, deleteBody: (id) => blobs.delete(id) });
    });

    after(async () => {
      redis.disconnect();
      await cleanup();
    });

    test('a remote-only message: its body goes after the final outcome and the grace period', async () => {
      const body = await accept('Q1');
      // The router: a hold per entry, then the envelope lets go.
      await blobs.hold(body.id, BlobHolder.outbound('Q1:remote.test'));
      await blobs.release(body.id, BlobHolder.ingress('Q1'));
      assert.equal(await refs.holders(body.id), 1);
      await refs.sweep(later());
      assert.ok(await blobs.has(body.id), 'kept while the outbound entry may still need it');
      // Delivery's final outcome.
      await blobs.release(body.id, BlobHolder.outbound('Q1:remote.test'));
      assert.equal(await refs.sweep(), 0, 'kept during the grace period');
      assert.ok(await blobs.has(body.id));
      assert.ok((await refs.sweep(later())) >= 1);
      assert.equal(await blobs.has(body.id), false);
    });

    test('a local and a remote recipient: the body stays while either entry holds it', async () => {
      const body = await accept('Q2');
      await blobs.hold(body.id, BlobHolder.local('Q2:bob@example.test'));
      await blobs.hold(body.id, BlobHolder.outbound('Q2:remote.test'));
      await blobs.release(body.id, BlobHolder.ingress('Q2'));
      await blobs.release(body.id, BlobHolder.local('Q2:bob@example.test'));
      await refs.sweep(later());
      assert.ok(await blobs.has(body.id));
      await blobs.release(body.id, BlobHolder.outbound('Q2:remote.test'));
      await refs.sweep(later());
      assert.equal(await blobs.has(body.id), false);
    });

    test('redelivered holds and releases never free a body early', async () => {
      const body = await accept('Q3');
      const local = BlobHolder.local('Q3:bob@example.test');
      const outbound = BlobHolder.outbound('Q3:remote.test');
      // The router's envelope twice (redelivered before its ack), the mailbox entry twice.
      for (let i = 0; i < 2; i++) {
        await blobs.hold(body.id, local);
        await blobs.hold(body.id, outbound);
        await blobs.release(body.id, BlobHolder.ingress('Q3'));
      }
      assert.equal(await refs.holders(body.id), 2);
      await blobs.release(body.id, local);
      await blobs.release(body.id, local);
      assert.equal(await refs.holders(body.id), 1, 'a second release of one entry drops nothing else');
      // The envelope redelivered once more, after its local entry was done: the hold stays released.
      await blobs.hold(body.id, local);
      await blobs.release(body.id, BlobHolder.ingress('Q3'));
      assert.equal(await refs.holders(body.id), 1);
      await refs.sweep(later());
      assert.ok(await blobs.has(body.id), 'the outbound entry still holds it');
      await blobs.release(body.id, outbound);
      assert.equal(await refs.holders(body.id), 0);
      await refs.sweep(later());
      assert.equal(await blobs.has(body.id), false);
    });

    test('a bounce: the original and the DSN bodies are both collected', async () => {
      const original = await accept('Q4');
      await blobs.hold(original.id, BlobHolder.outbound('Q4:remote.test'));
      await blobs.release(original.id, BlobHolder.ingress('Q4'));
      // Delivery: a 5xx; the DSN is stored for its own envelope before the entry lets go.
      const dsn = await accept('Q4B1');
      await blobs.release(original.id, BlobHolder.outbound('Q4:remote.test'));
      // The router sends the DSN out (to a remote sender), delivery finishes it.
      await blobs.hold(dsn.id, BlobHolder.outbound('Q4B1:sender.test'));
      await blobs.release(dsn.id, BlobHolder.ingress('Q4B1'));
      await refs.sweep(later());
      assert.equal(await blobs.has(original.id), false);
      assert.ok(await blobs.has(dsn.id));
      await blobs.release(dsn.id, BlobHolder.outbound('Q4B1:sender.test'));
      await refs.sweep(later());
      assert.equal(await blobs.has(dsn.id), false);
    });

    test('a body stored again for a new message after it was collected is kept for it', async () => {
      const text = Buffer.from(`Subject: same bytes ${backend}\r\n\r\nagain\r\n`);
      const first = await blobs.put([text], { holder: BlobHolder.ingress('Q5') });
      await blobs.release(first.id, BlobHolder.ingress('Q5'));
      await refs.sweep(later());
      assert.equal(await blobs.has(first.id), false);
      const second = await blobs.put([text], { holder: BlobHolder.ingress('Q6') });
      assert.equal(second.id, first.id);
      await refs.sweep(later());
      assert.deepEqual(await blobs.read(second.id), text);
    });

    test("the router's guesses: held beside the directory lookup, the misses taken back", async () => {
      const body = await accept('Q8');
      const bob = BlobHolder.local('Q8:bob@example.test');
      const list = BlobHolder.local('Q8:list@example.test');
      const made = await blobs.holdAll(body.id, [bob, list]);
      assert.deepEqual([...made].sort(), [bob, list].sort());
      // The envelope redelivered: both holds exist, so this attempt made none and takes none back.
      assert.equal((await blobs.holdAll(body.id, [bob, list])).size, 0);
      // `list` was an alias: its guess goes, leaving no tombstone (a later hold by the name counts).
      await blobs.withdraw(body.id, [list]);
      await blobs.release(body.id, BlobHolder.ingress('Q8'));
      assert.equal(await refs.holders(body.id), 1);
      assert.deepEqual([...(await blobs.holdAll(body.id, [list]))], [list]);
      await blobs.withdraw(body.id, [list]);
      // Withdrawing never touches a released entry, nor one never held.
      await blobs.release(body.id, bob);
      await blobs.withdraw(body.id, [bob, BlobHolder.local('Q8:nobody@example.test')]);
      assert.equal(await refs.holders(body.id), 0);
      assert.equal((await blobs.holdAll(body.id, [bob])).size, 0, 'the released entry stays released');
      await refs.sweep(later());
      assert.equal(await blobs.has(body.id), false);
    });

    test('a guessed hold landing after its entry was filed and released makes nothing, and the body is still collected', async () => {
      // The router publishes a LOCAL entry while its guessed hold is on the way; mailbox-store files
      // it and releases the entry's hold first.
      const body = await accept('Q10');
      const bob = BlobHolder.local('Q10:bob@example.test');
      await blobs.release(body.id, bob);
      assert.equal(await refs.holders(body.id), 1, 'only the envelope holds it');
      assert.equal((await blobs.holdAll(body.id, [bob])).size, 0, 'the late hold finds the tombstone');
      await blobs.withdraw(body.id, []);
      await blobs.release(body.id, BlobHolder.ingress('Q10'));
      assert.equal(await refs.holders(body.id), 0, 'no hold left behind');
      await refs.sweep(later());
      assert.equal(await blobs.has(body.id), false);
    });

    test('a fresh body written beside its hold is written again after a deletion it met', async () => {
      const text = Buffer.from(`Subject: fresh ${backend}\r\n\r\nonce\r\n`);
      const first = await blobs.put([text], { holder: BlobHolder.ingress('Q9'), fresh: true });
      assert.equal(await refs.holders(first.id), 1, 'held as it was written');
      await blobs.release(first.id, BlobHolder.ingress('Q9'));
      // A sweeper claims it; the same bytes are put again meanwhile (a retried accept).
      const records = new BlobRecords(redis, 'h:');
      const claimedAt = later();
      assert.equal((await records.claim(first.id, claimedAt, GRACE))[0], 'claimed');
      const again = blobs.put([text], { holder: BlobHolder.ingress('Q9b'), fresh: true });
      await new Promise((r) => setTimeout(r, 100));
      await blobs.delete(first.id);
      await records.finish(first.id, claimedAt);
      await again;
      assert.ok(await blobs.has(first.id), 'the put wrote the body again after the deletion');
      assert.equal(await refs.holders(first.id), 1);
    });

    test('releasing an entry that never held the body (a message from before holds) collects nothing', async () => {
      const old = await blobs.put([Buffer.from(`Subject: older ${backend}\r\n\r\nx\r\n`)]);
      await blobs.release(old.id, BlobHolder.ingress('Q7'));
      await refs.sweep(later());
      assert.ok(await blobs.has(old.id));
    });
  });
}
