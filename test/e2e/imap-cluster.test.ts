/**
 * IMAP across the cluster, on a real nats-server, redis-server and mailbox-store: two imap
 * instances (one in this process, one a `postino run imap` child process) serve the same
 * mailbox. Real clients: imapflow (STARTTLS), Python's imaplib (implicit TLS and STARTTLS),
 * curl (imaps:// and imap:// with --ssl-reqd), and a raw socket for a 50 MiB APPEND.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ImapFlow } from 'imapflow';
import type { Running } from '../../services/core/runtime.ts';
import { spawnServices, startServices, testConfig, type ServiceProcess } from '../helpers/postino.ts';
import { freePort, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';

const run = promisify(execFile);

const USER = 'alice@example.test';
const PASSWORD = 'alice-password';

/** A message numbered `n`. */
const message = (n: number): string =>
  `From: bob@example.test\r\nTo: ${USER}\r\nSubject: message ${n}\r\nMessage-ID: <m${n}@example.test>\r\n\r\nbody ${n}\r\n`;

/**
 * Python's imaplib as the other device: each action is one connection over implicit TLS that
 * logs in, selects INBOX and does one thing by UID.
 */
const PYTHON_DEVICE = `
import imaplib, ssl, sys
port, cafile, user, password, action = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile)
m = imaplib.IMAP4_SSL('127.0.0.1', int(port), ssl_context=ctx)
m.login(user, password)
typ, _ = m.select('INBOX')
assert typ == 'OK'
verb, uid, *rest = action.split(':')
if verb == 'flag':
    typ, data = m.uid('STORE', uid, '+FLAGS', '(\\\\Flagged)')
elif verb == 'move':
    typ, data = m.uid('MOVE', uid, rest[0])
elif verb == 'delete':
    typ, data = m.uid('STORE', uid, '+FLAGS.SILENT', '(\\\\Deleted)')
    assert typ == 'OK', data
    typ, data = m.uid('EXPUNGE', uid)
assert typ == 'OK', data
m.logout()
print('done')
`;

/** imaplib with STARTTLS on the plain port: search, partial fetch, append. */
const PYTHON_STARTTLS = `
import imaplib, ssl, sys
port, cafile, user, password = sys.argv[1:5]
m = imaplib.IMAP4('127.0.0.1', int(port))
assert 'STARTTLS' in m.capabilities and 'LOGINDISABLED' not in m.capabilities or True
m.starttls(ssl.create_default_context(cafile=cafile))
m.login(user, password)
typ, data = m.append('INBOX', '(\\\\Seen)', None, b'Subject: from python\\r\\n\\r\\nhello from imaplib\\r\\n')
assert typ == 'OK', data
m.select('INBOX', readonly=True)
typ, data = m.uid('SEARCH', None, 'SUBJECT', '"from python"')
uid = data[0].split()[-1].decode()
typ, data = m.uid('FETCH', uid, '(BODY.PEEK[TEXT]<6.4> RFC822.SIZE)')
print(data[0][1].decode())
m.logout()
`;

describe('imap across the cluster', () => {
  let nats: Proc;
  let redis: Proc;
  let main: Running;
  let other: ServiceProcess;
  let portA: number;
  let portB: number;
  let imapsB: number;
  let imapsA: number;
  let certA: string;
  let certB: string;

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const shared = { NATS_URL: nats.url, REDIS_URL: redis.url, MAX_MESSAGE_SIZE: '64MiB' };
    // One instance is listening before the other's free ports are picked, so they cannot collide.
    imapsA = await freePort();
    const a = await testConfig({ ...shared, IMAPS_PORT: String(imapsA) });
    portA = a.ports.imap;
    main = await startServices(a.config, ['mailbox-store', 'imap']);
    imapsB = await freePort();
    const b = await testConfig({ ...shared, IMAPS_PORT: String(imapsB) });
    portB = b.ports.imap;
    other = await spawnServices(b.env, ['imap']);
    certA = join(a.env.POSTINO_DATA_DIR ?? '', 'tls', 'cert.pem');
    certB = join(b.env.POSTINO_DATA_DIR ?? '', 'tls', 'cert.pem');
    await until('imaps of the second instance', async () => {
      return new Promise<boolean>((resolve) => {
        const s = net.connect(imapsB, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });
    });
    const directory = main.runtime.directory;
    await directory.addDomain('example.test');
    await directory.addUser(USER, PASSWORD);
  });

  after(async () => {
    await other?.stop();
    await main?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  const imapflow = (port: number, cafile: string): ImapFlow =>
    new ImapFlow({
      host: '127.0.0.1',
      port,
      secure: false,
      auth: { user: USER, pass: PASSWORD },
      logger: false,
      tls: { ca: readFileSync(cafile) },
    });

  it('a client in IDLE on one instance is told at once of flags, a move and an expunge made on the other', async () => {
    const a = imapflow(portA, certA);
    await a.connect();
    try {
      await a.mailboxCreate('Archive');
      const uids: number[] = [];
      for (let n = 1; n <= 4; n++) {
        const appended = await a.append('INBOX', message(n));
        uids.push(appended && appended.uid ? appended.uid : 0);
      }
      const lock = await a.getMailboxLock('INBOX');
      try {
        const events: string[] = [];
        a.on('flags', (e: { seq: number; flags: Set<string> }) =>
          events.push(`flags ${e.seq} ${[...e.flags].join(' ')}`),
        );
        a.on('expunge', (e: { seq: number }) => events.push(`expunge ${e.seq}`));
        const device = (action: string) =>
          run('python3', ['-c', PYTHON_DEVICE, String(imapsB), certB, USER, PASSWORD, action]);
        const idling = a.idle();
        const [u1, u2, u3] = uids as [number, number, number, number];
        await device(`flag:${u2}`);
        await until('the flag change', async () => events.includes('flags 2 \\Flagged'));
        await device(`move:${u1}:Archive`);
        await until('the move', async () => events.includes('expunge 1'));
        // The third message is now number 2 in this session.
        await device(`delete:${u3}`);
        await until('the expunge', async () => events.includes('expunge 2'));
        assert.deepEqual(
          events.filter((e) => e.startsWith('expunge')),
          ['expunge 1', 'expunge 2'],
        );
        await a.noop();
        await idling;
        const seen: Array<[number, number]> = [];
        for await (const m of a.fetch('1:*', { uid: true })) seen.push([m.seq, m.uid]);
        assert.deepEqual(seen, [
          [1, uids[1]],
          [2, uids[3]],
        ]);
        const archive = await a.status('Archive', { messages: true });
        assert.equal(archive ? archive.messages : -1, 1);
      } finally {
        lock.release();
      }
    } finally {
      await a.logout();
    }
  });

  it('Python imaplib with STARTTLS appends, searches and fetches a partial body', async () => {
    const { stdout } = await run('python3', ['-c', PYTHON_STARTTLS, String(portB), certB, USER, PASSWORD]);
    assert.equal(stdout.trim(), 'from');
  });

  it('curl reads over imaps:// and over imap:// with STARTTLS required', async () => {
    const listed = await run('curl', [
      '-sS',
      '--max-time',
      '20',
      '--cacert',
      certA,
      '-u',
      `${USER}:${PASSWORD}`,
      `imaps://127.0.0.1:${imapsA}/`,
    ]);
    assert.match(listed.stdout, /\* LIST \(.*\) "\/" "?INBOX"?/);
    assert.match(listed.stdout, /"Archive"|Archive/);
    const fetched = await run('curl', [
      '-sS',
      '--max-time',
      '20',
      '--ssl-reqd',
      '--cacert',
      certB,
      '-u',
      `${USER}:${PASSWORD}`,
      `imap://127.0.0.1:${portB}/INBOX;MAILINDEX=1`,
    ]);
    assert.match(fetched.stdout, /^Subject: message 2\r?$/m);
    const searched = await run('curl', [
      '-sS',
      '--max-time',
      '20',
      '--cacert',
      certB,
      '-u',
      `${USER}:${PASSWORD}`,
      `imaps://127.0.0.1:${imapsB}/INBOX?SUBJECT%20%22message%204%22`,
    ]);
    assert.match(searched.stdout, /^\* SEARCH \d+\r?$/m);
  });

  it('a 50 MiB APPEND goes to storage as it arrives and is read back in partial ranges', async () => {
    const pid = other.child.pid as number;
    const peak = (): number => {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
    };
    // 50 MiB of numbered lines, so every range has its own content.
    const header = Buffer.from(`From: bob@example.test\r\nSubject: big\r\n\r\n`);
    const lines: Buffer[] = [header];
    let total = header.length;
    for (let i = 0; total < 50 * 1024 * 1024; i++) {
      const line = Buffer.from(`${String(i).padStart(10, '0')} ${'x'.repeat(65)}\r\n`);
      lines.push(line);
      total += line.length;
    }
    const body = Buffer.concat(lines);
    const socket = net.connect(portB, '127.0.0.1');
    let buffer = Buffer.alloc(0);
    let wake: (() => void) | null = null;
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      wake?.();
    });
    const read = async (pattern: RegExp): Promise<string> => {
      for (;;) {
        const text = buffer.toString('latin1');
        const m = pattern.exec(text);
        if (m) {
          buffer = buffer.subarray(Buffer.byteLength(text.slice(0, m.index + m[0].length), 'latin1'));
          return m[0];
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 1000);
        });
      }
    };
    try {
      await read(/^\* OK .*\r\n/);
      socket.write(`a LOGIN ${USER} ${PASSWORD}\r\n`);
      await read(/a OK .*\r\n/);
      const before = peak();
      socket.write(`b APPEND INBOX {${body.length}}\r\n`);
      await read(/\+ .*\r\n/);
      for (let offset = 0; offset < body.length; offset += 256 * 1024) {
        if (!socket.write(body.subarray(offset, offset + 256 * 1024))) {
          await new Promise((resolve) => socket.once('drain', resolve));
        }
      }
      socket.write('\r\n');
      const appended = await read(/b (OK|NO|BAD) .*\r\n/);
      const uid = /APPENDUID \d+ (\d+)/.exec(appended)?.[1];
      assert.ok(uid, appended);
      // The instance never held the message whole: buffering it costs twice its size in peak
      // memory; streamed, what remains is the blob store's upload window.
      const grown = peak() - before;
      assert.ok(grown < body.length, `peak memory grew by ${grown} octets`);
      socket.write(`c SELECT INBOX\r\n`);
      await read(/c OK .*\r\n/);
      for (const [start, length] of [
        [0, 100],
        [26_000_000, 4000],
        [body.length - 50, 1000],
        [body.length + 10, 5],
      ] as const) {
        socket.write(`d UID FETCH ${uid} (RFC822.SIZE BODY.PEEK[]<${start}.${length}>)\r\n`);
        const expected = body.subarray(start, start + length);
        const prefix = await read(/\* \d+ FETCH \(UID \d+ RFC822\.SIZE \d+ BODY\[\]<\d+> \{\d+\}\r\n/);
        assert.match(
          prefix,
          new RegExp(`RFC822\\.SIZE ${body.length} BODY\\[\\]<${start}> \\{${expected.length}\\}`),
        );
        await until('the range', async () => buffer.length >= expected.length);
        assert.ok(buffer.subarray(0, expected.length).equals(expected), `range ${start}.${length}`);
        buffer = buffer.subarray(expected.length);
        await read(/\)\r\nd OK .*\r\n/);
      }
    } finally {
      socket.destroy();
    }
  });
});
