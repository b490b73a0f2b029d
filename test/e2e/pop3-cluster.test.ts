/**
 * POP3 across the cluster: two pop3 replicas (`postino run pop3`, two processes) against one real
 * nats-server, redis-server and mailbox-store, driven by a raw socket client, Python's poplib and
 * curl, with imapflow watching the same INBOX.
 *
 * RFC 1939 section 8 (exclusive maildrop access across replicas, a crashed replica's lock expires),
 * section 7 (UIDL stable for a message's whole life, identical from every replica), section 6 (a
 * dropped connection deletes nothing) and the POP3/IMAP agreement (RETR sets \Seen, QUIT's UPDATE
 * is an IMAP EXPUNGE).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { after, afterEach, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import type { Running } from '../../services/core/runtime.ts';
import { MailboxRpcClient } from '../../services/mailbox-store/rpc.ts';
import { spawnServices, startServices, testConfig, type ServiceProcess } from '../helpers/postino.ts';
import { freePort, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';

const USER = 'alice@example.test';
const PASSWORD = 'alice-password';
/** Short, so that a SIGKILLed replica's lock frees within the test; renewals every third of it. */
const LEASE = '2s';

/** Clients still open; a failed test must not leave a maildrop locked for the next one. */
const OPEN = new Set<Socket>();

/** A POP3 client on a raw socket: one line at a time, so transcripts show exactly what is sent. */
class Pop3Line {
  readonly socket: Socket;
  #buffer = '';
  #lines: string[] = [];
  #waiters: ((line: string | null) => void)[] = [];
  #ended = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    OPEN.add(socket);
    socket.setEncoding('latin1');
    socket.on('data', (data: string) => {
      this.#buffer += data;
      for (let end = this.#buffer.indexOf('\r\n'); end >= 0; end = this.#buffer.indexOf('\r\n')) {
        const line = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const waiter = this.#waiters.shift();
        if (waiter) waiter(line);
        else this.#lines.push(line);
      }
    });
    socket.on('error', () => undefined);
    socket.once('close', () => {
      OPEN.delete(socket);
      this.#ended = true;
      for (const waiter of this.#waiters.splice(0)) waiter(null);
    });
  }

  static async open(port: number): Promise<Pop3Line> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(s));
      s.once('error', reject);
    });
    const client = new Pop3Line(socket);
    assert.match((await client.line()) ?? '', /^\+OK /);
    return client;
  }

  line(): Promise<string | null> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.#ended) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Sends a command and returns the status line. */
  async command(line: string): Promise<string> {
    this.socket.write(`${line}\r\n`);
    const reply = await this.line();
    assert.ok(reply !== null, `connection closed after ${line}`);
    return reply;
  }

  /** The lines of a multi-line response, "." removed and un-stuffed. */
  async multiline(): Promise<string[]> {
    const out: string[] = [];
    for (let line = await this.line(); line !== '.'; line = await this.line()) {
      assert.ok(line !== null, 'closed inside a multi-line response');
      out.push(line.startsWith('.') ? line.slice(1) : line);
    }
    return out;
  }

  async login(): Promise<string> {
    assert.equal(await this.command(`USER ${USER}`), '+OK send PASS');
    return this.command(`PASS ${PASSWORD}`);
  }
}

function run(file: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { encoding: 'latin1', timeout: 30_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * A client that leaves mail on the server (RFC 1939 section 7, UIDL): it downloads the messages
 * whose unique-id it has not seen yet, remembers their ids and quits without deleting anything.
 */
const LEAVE_ON_SERVER = `
import json, poplib, sys
port, user, password, seen = int(sys.argv[1]), sys.argv[2], sys.argv[3], set(json.loads(sys.argv[4]))
p = poplib.POP3('127.0.0.1', port, timeout=20)
p.user(user)
p.pass_(password)
got = {}
for entry in p.uidl()[1]:
    num, uid = entry.decode().split(' ', 1)
    if uid not in seen:
        got[uid] = b'\\r\\n'.join(p.retr(int(num))[1]).decode('latin1')
p.quit()
print(json.dumps(got))
`;

describe('POP3 across two replicas', () => {
  let nats: Proc;
  let redis: Proc;
  let main: Running;
  let mailbox: MailboxRpcClient;
  let env: Record<string, string>;
  let imapPort: number;
  const replicas: { proc: ServiceProcess; pop3: number; pop3s: number }[] = [];
  let sequence = 0;

  /** Files one new message into alice's INBOX through the mailbox-store, as local delivery does. */
  const deliver = async (subject = 'hello'): Promise<number> => {
    const n = ++sequence;
    const body = `From: bob@example.test\r\nTo: ${USER}\r\nSubject: ${subject} ${n}\r\nX-Seq: ${n}\r\n\r\nMessage number ${n}.\r\n`;
    return (await mailbox.append(USER, 'INBOX', Buffer.from(body), [])).uid;
  };

  const inbox = async (): Promise<number[]> =>
    (await mailbox.messages(USER, 'INBOX')).messages.map((m) => m.uid);

  /** Removes everything, so each test starts from an empty maildrop. */
  const empty = async (): Promise<void> => {
    const uids = await inbox();
    if (uids.length > 0) await mailbox.expunge(USER, 'INBOX', uids, true);
  };

  const spawnPop3 = async (): Promise<{ proc: ServiceProcess; pop3: number; pop3s: number }> => {
    const pop3 = await freePort();
    const pop3s = await freePort();
    const proc = await spawnServices({ ...env, POP3_PORT: String(pop3), POP3S_PORT: String(pop3s) }, [
      'pop3',
    ]);
    return { proc, pop3, pop3s };
  };

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const setup = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      POP3_LOCK_LEASE: LEASE,
      IMAPS_PORT: '0',
    });
    env = setup.env;
    imapPort = setup.ports.imap;
    // The mailbox-store and imap run here; the pop3 replicas are separate processes.
    main = await startServices(setup.config, ['mailbox-store', 'imap']);
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser(USER, PASSWORD);
    mailbox = new MailboxRpcClient(main.runtime.nats, main.runtime.blobs);
    // The runtime above has made the self-signed certificate the replicas share.
    const started = await Promise.allSettled([spawnPop3(), spawnPop3()]);
    for (const r of started) if (r.status === 'fulfilled') replicas.push(r.value);
    for (const r of started) if (r.status === 'rejected') throw r.reason;
  });

  afterEach(async () => {
    for (const socket of OPEN) socket.destroy();
    await until(
      'every maildrop lock to be released',
      async () => (await main.runtime.redis.keys('*pop3lock*')).length === 0,
    );
  });

  after(async () => {
    await Promise.all(replicas.map((r) => r.proc.stop('SIGKILL')));
    await main?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  test('RFC 2449 section 8.1.2: a second session on the other replica gets [IN-USE] until QUIT', async () => {
    await empty();
    await deliver();
    const [a, b] = replicas as [(typeof replicas)[0], (typeof replicas)[0]];
    const first = await Pop3Line.open(a.pop3);
    assert.match(await first.login(), /^\+OK maildrop has 1 messages/);
    const second = await Pop3Line.open(b.pop3);
    assert.equal(await second.login(), '-ERR [IN-USE] maildrop already locked');
    // Still in AUTHORIZATION: the same client may try again once the maildrop is free.
    assert.equal(await second.command('STAT'), '-ERR STAT is not valid in this state');
    // curl on the first replica too.
    const curl = await run('curl', [
      '-sS',
      '--max-time',
      '20',
      '-u',
      `${USER}:${PASSWORD}`,
      `pop3://127.0.0.1:${a.pop3}/`,
    ]);
    // curl reports any -ERR to PASS as a denied login (exit 67, CURLE_LOGIN_DENIED).
    assert.equal(curl.code, 67, curl.stderr);
    assert.match(curl.stderr, /Login denied/);
    assert.match(await first.command('QUIT'), /^\+OK /);
    assert.match(await second.login(), /^\+OK maildrop has 1 messages/);
    assert.match(await second.command('QUIT'), /^\+OK /);
  });

  test('RFC 1939 section 7: a client leaving mail on the server downloads each message once', async () => {
    await empty();
    for (let i = 0; i < 3; i++) await deliver('early');
    const seen = new Map<string, string>();
    const counts = new Map<string, number>();
    const fetchNew = async (round: number): Promise<void> => {
      const port = replicas[round % 2]?.pop3 ?? 0;
      const res = await run('python3', [
        '-c',
        LEAVE_ON_SERVER,
        String(port),
        USER,
        PASSWORD,
        JSON.stringify([...seen.keys()]),
      ]);
      assert.equal(res.code, 0, `python3 exited with ${res.code}: ${res.stderr}`);
      for (const [uid, body] of Object.entries(JSON.parse(res.stdout) as Record<string, string>)) {
        seen.set(uid, body);
        const seq = /X-Seq: (\d+)/.exec(body)?.[1] ?? '?';
        counts.set(seq, (counts.get(seq) ?? 0) + 1);
      }
    };
    // Mail keeps arriving while the client reconnects, alternately to each replica.
    for (let round = 0; round < 8; round++) {
      await Promise.all([fetchNew(round), deliver('during'), deliver('during')]);
    }
    await fetchNew(8);
    await fetchNew(9);
    const stored = (await mailbox.messages(USER, 'INBOX')).messages;
    assert.equal(seen.size, stored.length, 'every stored message downloaded');
    for (const [seq, count] of counts) assert.equal(count, 1, `message ${seq} downloaded ${count} times`);
    assert.equal(counts.size, stored.length);
    // The unique-ids are the same from both replicas, and nothing was deleted.
    const listings: string[][] = [];
    for (const replica of replicas) {
      const client = await Pop3Line.open(replica.pop3);
      await client.login();
      assert.match(await client.command('UIDL'), /^\+OK /);
      listings.push(await client.multiline());
      await client.command('QUIT');
    }
    assert.deepEqual(listings[0], listings[1]);
    assert.deepEqual(new Set(listings[0]?.map((l) => l.split(' ')[1])), new Set(seen.keys()));
  });

  test('POP3 and IMAP agree: RETR sets \\Seen, DELE and QUIT expunge in an IDLE session', async () => {
    await empty();
    const uids = [await deliver(), await deliver(), await deliver()];
    const imap = new ImapFlow({
      host: '127.0.0.1',
      port: imapPort,
      secure: false,
      // The replicas' certificate is self-signed; STARTTLS is not what this test is about.
      doSTARTTLS: false,
      // IDLE as soon as the client has nothing else to do (the default waits 15 s).
      autoIdleDelay: 50,
      auth: { user: USER, pass: PASSWORD },
      logger: false,
    });
    await imap.connect();
    try {
      const expunged: number[] = [];
      const flagged = new Map<number, Set<string>>();
      imap.on('expunge', (event: { seq: number }) => expunged.push(event.seq));
      imap.on('flags', (event: { uid?: number; seq: number; flags: Set<string> }) =>
        flagged.set(event.uid ?? event.seq, event.flags),
      );
      await imap.mailboxOpen('INBOX');
      assert.equal((imap.mailbox as { exists: number }).exists, 3);
      // With no command of its own, imapflow enters IDLE (RFC 2177): what follows is pushed.
      await until('imapflow to be IDLE', async () => imap.idling);
      const pop = await Pop3Line.open(replicas[1]?.pop3 ?? 0);
      try {
        assert.match(await pop.login(), /^\+OK maildrop has 3 messages/);
        assert.match(await pop.command('RETR 2'), /^\+OK \d+ octets$/);
        assert.ok((await pop.multiline()).includes(`X-Seq: ${sequence - 1}`));
        await until('IMAP to see \\Seen on message 2', async () =>
          [...flagged.entries()].some(
            ([key, flags]) => (key === uids[1] || key === 2) && flags.has('\\Seen'),
          ),
        );
        assert.equal(await pop.command('DELE 1'), '+OK message 1 deleted');
        assert.equal(await pop.command('DELE 3'), '+OK message 3 deleted');
        // DELE only marks (RFC 1939 section 5): the IMAP session sees nothing yet.
        assert.equal(expunged.length, 0);
        assert.match(await pop.command('QUIT'), /^\+OK .*\(1 messages left\)$/);
      } finally {
        pop.socket.destroy();
      }
      // RFC 3501 section 7.4.1: message 3 then message 1, or 1 then 1 (numbers shift after each).
      await until('IMAP to see two EXPUNGE responses', async () => expunged.length === 2);
      assert.equal((imap.mailbox as { exists: number }).exists, 1);
      const left = await imap.fetchAll('1:*', { uid: true, flags: true });
      assert.deepEqual(
        left.map((m) => [m.uid, m.flags?.has('\\Seen')]),
        [[uids[1], true]],
      );
    } finally {
      await imap.logout();
    }
  });

  test('RFC 2595 and RFC 8314: STLS on the plain port and implicit TLS on POP3S_PORT', async () => {
    await empty();
    await deliver('over tls');
    const replica = replicas[0];
    assert.ok(replica);
    const script = `
import json, poplib, ssl, sys
plain, implicit, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
out = {}
p = poplib.POP3('127.0.0.1', plain, timeout=20)
out['before'] = sorted(p.capa().keys())
out['stls'] = p.stls(context).decode()
out['after'] = sorted(p.capa().keys())
p.user(user)
p.pass_(password)
out['stat'] = list(p.stat())
p.quit()
s = poplib.POP3_SSL('127.0.0.1', implicit, timeout=20, context=context)
out['welcome'] = s.getwelcome().decode()
out['cipher'] = s.sock.version()
s.user(user)
s.pass_(password)
out['retr'] = [l.decode() for l in s.retr(1)[1]]
s.quit()
print(json.dumps(out))
`;
    const res = await run('python3', [
      '-c',
      script,
      String(replica.pop3),
      String(replica.pop3s),
      USER,
      PASSWORD,
    ]);
    assert.equal(res.code, 0, res.stderr);
    const out = JSON.parse(res.stdout) as Record<string, unknown>;
    assert.ok((out.before as string[]).includes('STLS'));
    assert.ok(!(out.after as string[]).includes('STLS'), 'STLS is not offered once TLS is active');
    assert.equal(out.stls, '+OK begin TLS negotiation');
    assert.equal((out.stat as number[])[0], 1);
    assert.match(out.welcome as string, /^\+OK mx\.example\.test POP3 ready/);
    assert.match(out.cipher as string, /^TLSv1\.[23]$/);
    assert.ok((out.retr as string[]).some((l) => l.startsWith('Subject: over tls')));
    // curl with implicit TLS (pop3s://) lists the maildrop.
    const curl = await run('curl', [
      '-sS',
      '-k',
      '--max-time',
      '20',
      '-u',
      `${USER}:${PASSWORD}`,
      `pop3s://127.0.0.1:${replica.pop3s}/`,
    ]);
    assert.equal(curl.code, 0, curl.stderr);
    assert.match(curl.stdout, /^1 \d+\r\n$/);
  });

  test('metrics: failed logins and commands are counted on the replica that served them', async () => {
    const replica = replicas[1];
    assert.ok(replica);
    const client = await Pop3Line.open(replica.pop3);
    assert.equal(await client.command(`USER ${USER}`), '+OK send PASS');
    assert.equal(await client.command('PASS wrong-password'), '-ERR [AUTH] invalid credentials');
    assert.equal(await client.command('XYZZY'), '-ERR unknown command');
    assert.match(await client.command('QUIT'), /^\+OK /);
    const metrics = await (await fetch(`http://127.0.0.1:${replica.proc.httpPort}/metrics`)).text();
    assert.match(metrics, /^postino_auth_failures_total\{protocol="pop3"\} [1-9]/m);
    assert.match(metrics, /^postino_pop3_commands_total\{command="PASS"\} [1-9]/m);
    assert.match(metrics, /^postino_pop3_commands_total\{command="unknown"\} [1-9]/m);
  });

  test('RFC 1939 sections 6 and 8: SIGKILL of a replica frees its lock within the lease and deletes nothing', async () => {
    await empty();
    const uids = [await deliver(), await deliver()];
    const [a, b] = replicas as [(typeof replicas)[0], (typeof replicas)[0]];
    const holder = await Pop3Line.open(a.pop3);
    assert.match(await holder.login(), /^\+OK maildrop has 2 messages/);
    assert.equal(await holder.command('DELE 1'), '+OK message 1 deleted');
    assert.equal(await holder.command('DELE 2'), '+OK message 2 deleted');
    const blocked = await Pop3Line.open(b.pop3);
    assert.equal(await blocked.login(), '-ERR [IN-USE] maildrop already locked');
    assert.equal(await a.proc.stop('SIGKILL'), null);
    assert.equal(await holder.line(), null, 'the killed replica drops the connection');
    // The lease runs out (nobody renews it) and the other replica lets the user in.
    await until('the lock of the killed replica to expire', async () =>
      /^\+OK maildrop has 2 messages/.test(await blocked.login()),
    );
    assert.deepEqual(await inbox(), uids, 'no UPDATE state, so nothing deleted');
    assert.match(await blocked.command('QUIT'), /^\+OK .*\(2 messages left\)$/);
  });
});
