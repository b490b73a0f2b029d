import { Redis } from 'ioredis';
import { MailboxStore } from '../services/mailbox-store/store.ts';
const redis = new Redis('redis://127.0.0.1:6391');
const store = new MailboxStore(redis, 'postino:', null as never, () => undefined);
const u = 'big@bench.test';
for (let r = 0; r < 5; r++) {
  let t = performance.now();
  const p = await store.packedSummaries(u, 'INBOX', { first: 1, last: 0xffffffff, limit: 5000 });
  const t1 = performance.now() - t;
  t = performance.now();
  const all = await store.summaries(u, 'INBOX', { first: 1, last: 0xffffffff });
  const t2 = performance.now() - t;
  t = performance.now();
  await store.status(u, 'INBOX');
  console.log(`page5000 ${t1.toFixed(1)}ms (${p.packed.length}B) all ${t2.toFixed(1)}ms n=${all.summaries.length} status ${(performance.now() - t).toFixed(1)}`);
}
redis.disconnect();
