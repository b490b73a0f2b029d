/** The delivery body cache: small bodies read from the blob store once, large ones streamed each time. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BodyCache } from '../../services/delivery/body-cache.ts';

function store(bodies: Record<string, string>) {
  const opens: string[] = [];
  async function* open(id: string): AsyncIterable<Uint8Array> {
    opens.push(id);
    const body = bodies[id];
    if (body === undefined) throw new Error(`blob ${id} not found`);
    // In two chunks, as the object store hands them out.
    yield Buffer.from(body.slice(0, 3));
    yield Buffer.from(body.slice(3));
  }
  return { open, opens };
}

const read = async (it: AsyncIterable<Uint8Array>) => {
  const chunks: Uint8Array[] = [];
  for await (const c of it) chunks.push(c);
  return Buffer.concat(chunks).toString();
};

test('a small body is read once, also by concurrent readers; a large one every time', async () => {
  const s = store({ a: 'hello world', big: 'x'.repeat(100) });
  const cache = new BodyCache(s.open, { maxEntryBytes: 50, maxTotalBytes: 1000 });
  const [one, two] = await Promise.all([read(cache.open('a', 11)), read(cache.open('a', 11))]);
  assert.equal(one, 'hello world');
  assert.equal(two, 'hello world');
  assert.equal(await read(cache.open('a', 11)), 'hello world');
  assert.deepEqual(s.opens, ['a']);
  assert.equal(await read(cache.open('big', 100)), 'x'.repeat(100));
  assert.equal(await read(cache.open('big', 100)), 'x'.repeat(100));
  assert.deepEqual(s.opens, ['a', 'big', 'big']);
});

test('the least recently used body leaves when memory is full; a failed read is not kept', async () => {
  const s = store({ a: 'aaaaaaaaaa', b: 'bbbbbbbbbb', c: 'cccccccccc' });
  const cache = new BodyCache(s.open, { maxEntryBytes: 10, maxTotalBytes: 20 });
  await read(cache.open('a', 10));
  await read(cache.open('b', 10));
  await read(cache.open('a', 10)); // a is now the most recent
  await read(cache.open('c', 10)); // b goes
  await read(cache.open('a', 10));
  await read(cache.open('b', 10));
  assert.deepEqual(s.opens, ['a', 'b', 'c', 'b']);
  await assert.rejects(read(cache.open('gone', 5)), /not found/);
  await assert.rejects(read(cache.open('gone', 5)), /not found/);
  assert.equal(s.opens.filter((id) => id === 'gone').length, 2);
});
