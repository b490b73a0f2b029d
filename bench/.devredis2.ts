import { Redis } from 'ioredis';
const redis = new Redis('redis://127.0.0.1:6391');
const fk = 'postino:{u:big@bench.test}:f:1';
const A = `local u = redis.call('ZRANGEBYSCORE', KEYS[1] .. ':uids', ARGV[1], 'inf', 'LIMIT', 0, 5000) local s = redis.call('HMGET', KEYS[1] .. ':sum', unpack(u)) local rows = {} for i = 1, #s do if s[i] then rows[#rows + 1] = s[i] end end return table.concat(rows, '\\n')`;
const B = `local u = {} local f = tonumber(ARGV[1]) for i = f, f + 4999 do u[#u + 1] = i end local s = redis.call('HMGET', KEYS[1] .. ':sum', unpack(u)) local rows = {} for i = 1, #s do if s[i] then rows[#rows + 1] = s[i] end end return table.concat(rows, '\\n')`;
const C = `local u = {} local f = tonumber(ARGV[1]) for i = f, f + 4999 do u[#u + 1] = i end local s = redis.call('HMGET', KEYS[1] .. ':sum', unpack(u)) return #s`;
for (let r = 0; r < 5; r++) {
  const out: string[] = [];
  for (const [name, lua] of [['zrange+hmget', A], ['probe+hmget', B], ['probe hmget only', C]] as const) {
    const t = performance.now();
    for (let p = 0; p < 4; p++) await redis.evalBuffer(lua, 1, fk, String(1 + p * 5000));
    out.push(`${name} ${(performance.now() - t).toFixed(1)}`);
  }
  console.log(out.join(' | '));
}
redis.disconnect();
