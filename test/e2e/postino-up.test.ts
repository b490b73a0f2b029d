/**
 * `postino up`, the embedded default, as a user starts it: the command starts its own nats-server
 * and redis-server, runs the seven services on one thread or spread over four (the SMTP door on two
 * that share its ports; services/core/threads.ts), and stops everything on SIGTERM. Mail goes in
 * over SMTP and is read over IMAP and POP3 in either layout, with the mailboxes reached over RPC or
 * directly (MAILBOX_ACCESS), and changes reach an IDLE session; /readyz and /metrics answer for
 * every thread.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostino, hashPassword } from '../../bench/reference/postino.ts';
import { Pop3Client } from '../../bench/reference/clients.ts';
import { imapClient, submit, withImap } from '../helpers/clients.ts';
import { until } from '../helpers/servers.ts';

const BOB = { user: 'bob@up.test', pass: 'bob-password' };
const CAROL = { user: 'carol@up.test', pass: 'carol-password' };

/** The value of an unlabelled (or first labelled) sample of `name` in a Prometheus text page. */
function samples(page: string, name: string): number[] {
  return page
    .split('\n')
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .map((l) => Number(l.slice(l.lastIndexOf(' ') + 1)));
}

// The default layout (three threads, the front ends running the store's scripts themselves) and
// the cluster's way on one thread (mailbox RPC over NATS), both as `postino up`.
for (const [threads, access] of [
  [1, 'rpc'],
  [3, 'direct'],
] as const) {
  test(`postino up on ${threads} thread${threads === 1 ? '' : 's'}, mailbox access ${access}: mail in over SMTP, out over IMAP and POP3, changes to every session, clean stop`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'postino-up-'));
    const p = await startPostino(dir, {
      UP_THREADS: String(threads),
      UP_SMTP_THREADS: '2',
      MAILBOX_ACCESS: access,
    });
    let stopped = false;
    try {
      const hash = await hashPassword(BOB.pass);
      const carolHash = await hashPassword(CAROL.pass);
      await p.importLines([
        JSON.stringify({ domain: 'up.test' }),
        JSON.stringify({ user: BOB.user, passwordHash: hash }),
        JSON.stringify({ user: CAROL.user, passwordHash: carolHash }),
      ]);

      // Submission (ingress thread), routing and filing (pipeline thread), IMAP (main thread).
      const info = await submit(
        p.submissionPort,
        { from: BOB.user, to: [BOB.user, CAROL.user], subject: `threads ${threads}`, text: 'hello\r\n' },
        BOB,
      );
      assert.deepEqual([...info.accepted].sort(), [BOB.user, CAROL.user]);
      const subject = await until('the message in the INBOX', () =>
        withImap(p.imapPort, BOB, async (c) => {
          const lock = await c.getMailboxLock('INBOX');
          try {
            const m = c.mailbox && c.mailbox.exists > 0 ? await c.fetchOne('*', { envelope: true }) : null;
            return m ? m.envelope?.subject : undefined;
          } finally {
            lock.release();
          }
        }),
      );
      assert.equal(subject, `threads ${threads}`);

      // A second device, IDLE in the INBOX, hears of new mail and of a flag set on the first.
      const idler = imapClient(p.imapPort, BOB);
      await idler.connect();
      try {
        await idler.mailboxOpen('INBOX');
        const heard: string[] = [];
        idler.on('exists', (e: { count: number }) => heard.push(`exists ${e.count}`));
        idler.on('flags', (e: { seq: number; flags: Set<string> }) =>
          heard.push(`flags ${e.seq} ${[...e.flags].join(' ')}`),
        );
        void idler.idle();
        await submit(
          p.submissionPort,
          { from: BOB.user, to: [BOB.user], subject: 'second', text: 'again\r\n' },
          BOB,
        );
        await until(
          'the IDLE session told of the new message',
          async () => heard.includes('exists 2') || undefined,
        );
        await withImap(p.imapPort, BOB, async (c) => {
          await c.mailboxOpen('INBOX');
          await c.messageFlagsAdd('1', ['\\Seen']);
        });
        await until(
          'the IDLE session told of the flag',
          async () => heard.includes('flags 1 \\Seen') || undefined,
        );
      } finally {
        await idler.logout();
      }
      const stat = await until('the message over POP3', async () => {
        const pop = await Pop3Client.connect(p.pop3Port);
        try {
          await pop.login(CAROL.user, CAROL.pass);
          const reply = (await pop.command('STAT')).toString('latin1');
          return reply.startsWith('+OK 0 ') ? undefined : reply;
        } finally {
          await pop.quit();
        }
      });
      assert.match(stat, /^\+OK 1 \d+\r\n$/);

      // One /metrics page for the process: the ingress thread's counter is in it, the process's
      // CPU counter once.
      const page = await (await fetch(`http://127.0.0.1:${p.httpPort}/metrics`)).text();
      const acceptedTotal = samples(page, 'postino_smtp_messages_accepted_total').reduce((a, b) => a + b, 0);
      assert.equal(acceptedTotal, 2, 'two messages accepted, each counted once');
      assert.equal(samples(page, 'postino_process_cpu_seconds_total').length, 1);
      const ready = await fetch(`http://127.0.0.1:${p.httpPort}/readyz`);
      assert.equal(ready.status, 200);

      const code = await p.stop();
      stopped = true;
      assert.equal(code, 0, 'exits 0 after SIGTERM');
    } finally {
      if (!stopped) await p.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

/** CPU time (ticks) of each thread of `pid` named `name` (as `ps -L` shows it), by thread id. */
function threadTicks(pid: number, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    if (stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) !== name) continue;
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.set(tid, Number(f[11]) + Number(f[12]));
  }
  return out;
}

/** One SMTP session that says EHLO and QUIT; resolves with the replies. */
function ehloQuit(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    let step = 0;
    s.on('data', (c: Buffer) => {
      got += c.toString('latin1');
      if (step === 0 && /^220 .*\r\n$/m.test(got)) {
        step = 1;
        s.write('EHLO door.test\r\n');
      } else if (step === 1 && /^250 .*\r\n$/m.test(got)) {
        step = 2;
        s.write('QUIT\r\n');
      }
    });
    s.on('error', reject);
    s.on('close', () => resolve(got));
  });
}

test('postino up with the SMTP door on two threads: both take connections on the same port', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postino-up-'));
  const p = await startPostino(dir, { UP_THREADS: '3', UP_SMTP_THREADS: '2' });
  let stopped = false;
  try {
    // Linux names a thread by its first 15 characters: both doors show as postino-ingress.
    const before = threadTicks(p.pid, 'postino-ingress');
    assert.equal(before.size, 2, 'two SMTP threads');
    // The kernel spreads connections over the sockets sharing the port (by the client's port).
    for (let i = 0; i < 20; i++) {
      const replies = await Promise.all(Array.from({ length: 20 }, () => ehloQuit(p.smtpPort)));
      for (const r of replies) assert.match(r, /^220 [\s\S]*^250 [\s\S]*^221 /m);
    }
    const after = threadTicks(p.pid, 'postino-ingress');
    for (const [tid, ticks] of after)
      assert.ok(ticks > (before.get(tid) ?? 0), `SMTP thread ${tid} answered some of 400 sessions`);
    assert.equal((await fetch(`http://127.0.0.1:${p.httpPort}/readyz`)).status, 200);
    const code = await p.stop();
    stopped = true;
    assert.equal(code, 0, 'exits 0 after SIGTERM');
  } finally {
    if (!stopped) await p.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
