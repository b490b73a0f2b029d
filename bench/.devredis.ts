import { Redis } from 'ioredis';
const redis = new Redis('redis://127.0.0.1:6391');
const fk = 'postino:{u:big@bench.test}:f:1';
for (let r = 0; r < 4; r++) {
  let t = performance.now();
  const m = await redis.multi().hmget(fk, 'modseq', 'sumseq').hvalsBuffer(`${fk}:sum`).exec();
  const t1 = performance.now() - t;
  t = performance.now();
  const v = (await redis.evalBuffer(`return table.concat(redis.call('HVALS', KEYS[1]), '\\n')`, 1, `${fk}:sum`)) as Buffer;
  const t2 = performance.now() - t;
  t = performance.now();
  const z = await redis.evalBuffer(`local u = redis.call('ZRANGEBYSCORE', KEYS[1] .. ':uids', 1, 'inf', 'LIMIT', 0, 20000) local out = {} for i = 1, #u, 5000 do local s = redis.call('HMGET', KEYS[1] .. ':sum', unpack(u, i, math.min(i + 4999, #u))) for k = 1, #s do out[#out + 1] = s[k] end end return table.concat(out, '\\n')`, 1, fk) as Buffer;
  const t3 = performance.now() - t;
  console.log(`multi+HVALS ${t1.toFixed(1)} (${(m?.[1]?.[1] as Buffer[]).length}) lua HVALS concat ${t2.toFixed(1)} (${v.length}B) lua zrange+hmget ${t3.toFixed(1)} (${z.length})`);
}
redis.disconnect();
