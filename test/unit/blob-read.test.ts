/**
 * Reading bodies from the blob store (services/core/blobs.ts) on a real nats-server: small bodies
 * by direct gets and kept in a bounded cache, large ones streamed in the object store's chunks,
 * and a deleted body never read back from memory in the process that deleted it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { startNats, type Proc } from '../helpers/servers.ts';
import { connectNats, type Nats } from '../../services/core/nats.ts';
import { BlobCache, BlobStore } from '../../services/core/blobs.ts';

const logger = pino({ level: 'silent' });

async function readAll(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const c of it) chunks.push(c);
  return Buffer.concat(chunks);
}

describe('BlobCache', () => {
  test('keeps the most recently used bodies within its byte cap, none larger than an entry', () => {
    const cache = new BlobCache({ maxEntryBytes: 10, maxTotalBytes: 25 });
    const body = (c: string, n = 10) => Buffer.from(c.repeat(n));
    cache.set('a', body('a'));
    cache.set('b', body('b'));
    assert.ok(cache.get('a'), 'a used again: b is now the least recent');
    cache.set('c', body('c'));
    assert.equal(cache.get('b'), undefined, 'b went to make room');
    assert.equal(cache.get('a')?.toString(), 'a'.repeat(10));
    assert.equal(cache.get('c')?.toString(), 'c'.repeat(10));
    assert.ok(cache.bytes <= 25);
    cache.set('big', body('x', 11));
    assert.equal(cache.get('big'), undefined, 'larger than an entry may be');
    cache.delete('a');
    assert.equal(cache.get('a'), undefined);
    assert.equal(cache.bytes, 10);
  });
});

describe('BlobStore reads', () => {
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

  test('a small body reads back exactly, again and by concurrent readers', async () => {
    const body = Buffer.from(`Subject: small\r\n\r\n${randomBytes(8).toString('hex')}\r\n`);
    const { id, size } = await blobs.put([body]);
    assert.equal(size, body.length);
    const reads = await Promise.all(Array.from({ length: 5 }, () => blobs.read(id)));
    for (const r of reads) assert.ok(r.equals(body));
    assert.ok((await blobs.read(id)).equals(body));
    assert.ok((await readAll(blobs.open(id))).equals(body));
  });

  test('an empty body reads back empty', async () => {
    const { id } = await blobs.put([Buffer.alloc(0)]);
    assert.equal((await blobs.read(id)).length, 0);
    assert.equal((await blobs.read(id)).length, 0);
  });

  test('a body of several chunks streams whole, and a reader may stop early', async () => {
    const body = randomBytes(3 * 128 * 1024 + 1234);
    const { id } = await blobs.put([body]);
    let chunks = 0;
    for await (const c of blobs.open(id)) {
      assert.ok(c.length <= 128 * 1024);
      chunks++;
    }
    assert.ok(chunks >= 4, `${chunks} chunks`);
    for await (const c of blobs.open(id)) {
      assert.ok(c.length > 0);
      break;
    }
    assert.ok((await blobs.read(id)).equals(body));
  });

  test('a missing body is an error; a deleted one is not read back from memory', async () => {
    await assert.rejects(blobs.read(`sha256:${'0'.repeat(64)}`), /not found/);
    await assert.rejects(blobs.read('sha256:not-an-id'), /invalid blob id/);
    const body = Buffer.from(`Subject: deleted\r\n\r\n${randomBytes(8).toString('hex')}\r\n`);
    const { id } = await blobs.put([body]);
    assert.ok((await blobs.read(id)).equals(body));
    await blobs.delete(id);
    await assert.rejects(blobs.read(id), /not found/);
    // Stored again (the same content, the same address): readable again.
    await blobs.put([body]);
    assert.ok((await blobs.read(id)).equals(body));
  });

  test('a second store on the same server reads what the first stored', async () => {
    const other = await BlobStore.open(nats, 1);
    const body = Buffer.from(`Subject: other\r\n\r\n${randomBytes(8).toString('hex')}\r\n`);
    const { id } = await blobs.put([body]);
    assert.ok((await other.read(id)).equals(body));
  });
});
