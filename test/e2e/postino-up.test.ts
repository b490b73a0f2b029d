/**
 * `postino up`, the embedded default, as a user starts it: the command starts its own nats-server
 * and redis-server, runs the seven services on one thread or spread over three
 * (services/core/threads.ts), and stops everything on SIGTERM. Mail goes in over SMTP and is read
 * over IMAP and POP3 in either layout; /readyz and /metrics answer for every thread.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startPostino, hashPassword } from '../../bench/reference/postino.ts';
import { Pop3Client } from '../../bench/reference/clients.ts';
import { submit, withImap } from '../helpers/clients.ts';
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

for (const threads of [1, 3]) {
  test(`postino up on ${threads} thread${threads === 1 ? '' : 's'}: mail in over SMTP, out over IMAP and POP3, clean stop`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'postino-up-'));
    const p = await startPostino(dir, { UP_THREADS: String(threads) });
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
      assert.equal(acceptedTotal, 1, 'one message accepted, counted once');
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
