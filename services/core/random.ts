/**
 * Random bytes for ids made per connection and per message (session ids, queue ids), taken from a
 * pool filled 4 KiB at a time: `randomBytes(6)` asks the kernel for every id, which under load
 * was 2% of smtp-ingress's CPU. The bytes are the same CSPRNG output, only fetched in bulk.
 */
import { randomFillSync } from 'node:crypto';

const POOL = Buffer.allocUnsafe(4096);
let offset = POOL.length;

/** `n` (≤ 64) random bytes, as a copy. */
export function pooledRandomBytes(n: number): Buffer {
  if (n > 64) throw new RangeError('pooledRandomBytes: at most 64 bytes');
  if (offset + n > POOL.length) {
    randomFillSync(POOL);
    offset = 0;
  }
  const out = Buffer.from(POOL.subarray(offset, offset + n));
  offset += n;
  return out;
}
