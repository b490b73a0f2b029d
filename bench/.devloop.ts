// TEMP dev harness (not committed): persistent postino with 20k inbox.
import { existsSync, mkdirSync } from 'node:fs';
import { ImapClient, message } from './reference/clients.ts';
import { hashPassword, startPostino } from './reference/postino.ts';
const DIR = '/tmp/pdev/data';
const fresh = !existsSync(DIR);
mkdirSync(DIR, { recursive: true });
const p = await startPostino(DIR, process.env.PROF ? { NODE_OPTIONS: '--cpu-prof --cpu-prof-dir=/tmp/pdev/prof' } : {});
const user = 'big@bench.test', PW = 'bench-password';
try {
  if (fresh) await p.importLines([JSON.stringify({ domain: 'bench.test' }), JSON.stringify({ user, passwordHash: await hashPassword(PW) })]);
  const c0 = await ImapClient.connect(p.imapPort); await c0.login(user, PW); const have = await c0.messages(); await c0.logout();
  const N = 20000;
  if (have < N) {
    let next = 0; const missing = N - have;
    await Promise.all(Array.from({ length: 4 }, async () => { const c = await ImapClient.connect(p.imapPort); await c.login(user, PW);
      while (next < missing) { const from = next; next += 25; await c.append('INBOX', Array.from({ length: Math.min(25, missing - from) }, (_, i) => message(have + from + i, user)), 25); } await c.logout(); }));
  }
  for (let r = 0; r < Number(process.env.REPS ?? 5); r++) {
    const t0 = performance.now(); const c = await ImapClient.connect(p.imapPort); await c.login(user, PW); const t1 = performance.now();
    await c.ok('SELECT INBOX'); const t2 = performance.now(); const res = await c.ok('FETCH 1:* (UID FLAGS)'); const t3 = performance.now(); await c.logout();
    console.log(`total ${(t3 - t0).toFixed(0)} login ${(t1 - t0).toFixed(0)} select ${(t2 - t1).toFixed(0)} fetch ${(t3 - t2).toFixed(0)} lines ${res.lines.filter((l) => / FETCH /.test(l)).length}`);
  }
  if (process.env.BODIES !== '0') {
    const clients = await Promise.all(Array.from({ length: 10 }, async () => { const c = await ImapClient.connect(p.imapPort); await c.login(user, PW); await c.ok('EXAMINE INBOX'); return c; }));
    let fetched = 0; const start = performance.now(); const end = start + 8000;
    await Promise.all(clients.map(async (c) => { while (performance.now() < end) { const n = 1 + Math.floor(Math.random() * N); const r = await c.ok(`FETCH ${n} (BODY.PEEK[])`); if (r.literalOctets > 0) fetched++; } }));
    console.log(`bodies ${(fetched / ((performance.now() - start) / 1000)).toFixed(0)} msg/s`);
    await Promise.all(clients.map((c) => c.logout()));
  }
} finally { await p.stop(); }
