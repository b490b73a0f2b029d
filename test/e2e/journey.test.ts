/**
 * The whole journey of a message on real servers and real clients: nodemailer submits over SMTP
 * with AUTH, curl reads over POP3, imapflow reads over IMAP, dnsmasq answers the MX of a remote
 * domain whose "MX" is a second SMTP server on another loopback address.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { ImapFlow } from 'imapflow';
import type { SMTPServer } from 'smtp-server';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startSink, type Received } from '../helpers/sink.ts';
import {
  POSTINO,
  spawnServices,
  startServices,
  testConfig,
  type Ports,
  type ServiceProcess,
} from '../helpers/postino.ts';
import type { Running } from '../../services/core/runtime.ts';
import type { Config } from '../../services/core/config.ts';
import { SERVICES } from '../../services/services.ts';
import { CONSUMERS, STREAMS } from '../../services/core/nats.ts';

const run = promisify(execFile);

async function inboxCount(client: ImapFlow): Promise<number> {
  const status = await client.status('INBOX', { messages: true });
  return status ? (status.messages ?? 0) : 0;
}

describe('the journey of a message', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let sink: SMTPServer;
  const sunk: Received[] = [];
  let env: Record<string, string>;
  let ports: Ports;
  let main: Running;
  /** The router runs as its own process (`postino run router`), so the test can stop it with SIGTERM. */
  let router: ServiceProcess;
  let adminUrl: string;

  const postino = (...args: string[]) =>
    run(process.execPath, [POSTINO, ...args], { env: { ...process.env, ADMIN_URL: adminUrl } });

  const submit = (user: string, pass: string) =>
    nodemailer.createTransport({
      host: '127.0.0.1',
      port: ports.submission,
      secure: false,
      ignoreTLS: true,
      auth: { user, pass },
    });

  /** imapflow upgrades with STARTTLS when offered: it trusts the cluster's generated certificate. */
  const imapClient = (user: string, pass: string) =>
    new ImapFlow({
      host: '127.0.0.1',
      port: ports.imap,
      secure: false,
      auth: { user, pass },
      logger: false,
      tls: { ca: readFileSync(join(env.POSTINO_DATA_DIR ?? '', 'tls', 'cert.pem')) },
    });

  const curl = (...args: string[]) => run('curl', ['-sS', '--max-time', '20', ...args]);

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const sinkPort = await freePort('127.0.0.2');
    sink = await startSink({ host: '127.0.0.2', port: sinkPort, received: sunk });
    dns = await startDns([
      '--mx-host=remote.test,mx.remote.test,10',
      '--host-record=mx.remote.test,127.0.0.2',
      '--mx-host=nullmx.test,.,0',
    ]);
    let config: Config;
    ({ config, ports, env } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(sinkPort),
    }));
    main = await startServices(
      config,
      Object.keys(SERVICES).filter((s) => s !== 'router'),
    );
    router = await spawnServices(env, ['router']);
    adminUrl = `http://127.0.0.1:${main.runtime.http.port}`;
    await postino('admin', 'domain', 'add', 'example.test');
    await postino('admin', 'user', 'add', 'alice@example.test', '--password', 'alice-password');
    // The password may also come on standard input.
    await new Promise<void>((resolve, reject) => {
      const child = execFile(
        process.execPath,
        [POSTINO, 'admin', 'user', 'add', 'bob@example.test'],
        { env: { ...process.env, ADMIN_URL: adminUrl } },
        (err) => (err ? reject(err) : resolve()),
      );
      child.stdin?.end('bob-password\n');
    });
  });

  after(async () => {
    await router?.stop();
    await main?.stop();
    sink?.close();
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  test('the admin CLI lists what it added', async () => {
    assert.equal((await postino('admin', 'domain', 'list')).stdout.trim(), 'example.test');
    assert.deepEqual((await postino('admin', 'user', 'list')).stdout.trim().split('\n'), [
      'alice@example.test',
      'bob@example.test',
    ]);
    await assert.rejects(
      postino('admin', 'user', 'add', 'carol@elsewhere.test', '--password', 'carol-password'),
      /not hosted here/,
    );
  });

  test('bob reads a message over POP3, and after QUIT it is gone from the server', async () => {
    const info = await submit('alice@example.test', 'alice-password').sendMail({
      from: 'alice@example.test',
      to: 'bob@example.test',
      subject: 'over POP3',
      text: 'Hello Bob,\n.a line that starts with a dot\nbye\n',
    });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as [0-9A-Z]+$/);
    const pop = `pop3://127.0.0.1:${ports.pop3}`;
    const list = await until('the message in the maildrop', async () => {
      const { stdout } = await curl('-u', 'bob@example.test:bob-password', `${pop}/`);
      return stdout.trim() ? stdout : null;
    });
    assert.match(list, /^1 \d+\r?$/m);
    const { stdout: message } = await curl('-u', 'bob@example.test:bob-password', `${pop}/1`);
    assert.match(message, /Subject: over POP3/);
    // RFC 5321 4.4: the final delivery put the reverse path in front.
    assert.match(message, /^Return-Path: <alice@example\.test>\r?\n/);
    assert.match(message, /^\.a line that starts with a dot\r?$/m);
    assert.match(message, /Received: from [^\r\n]*\r?\n\s+by mx\.example\.test \(Postino\) with ESMTPA id /);
    // DELE then QUIT: deleted in the UPDATE state.
    await curl('-u', 'bob@example.test:bob-password', '-X', 'DELE', `${pop}/1`, '-I');
    const { stdout: after } = await curl('-u', 'bob@example.test:bob-password', `${pop}/`);
    assert.equal(after.trim(), '');
  });

  test('bob reads a message over IMAP, and after logout it is still there with \\Seen', async () => {
    await submit('alice@example.test', 'alice-password').sendMail({
      from: 'alice@example.test',
      to: 'bob@example.test',
      subject: 'over IMAP',
      text: 'Hello again, Bob.',
    });
    const connect = async () => {
      const client = imapClient('bob@example.test', 'bob-password');
      await client.connect();
      return client;
    };
    let client = await connect();
    const lock = await client.getMailboxLock('INBOX');
    try {
      await until('the message in the INBOX', async () => (await inboxCount(client)) === 1);
      await client.mailboxOpen('INBOX');
      const msg = await client.fetchOne('*', { uid: true, flags: true, envelope: true, source: true });
      assert.ok(msg);
      assert.equal(msg.envelope?.subject, 'over IMAP');
      assert.equal(msg.envelope?.from?.[0]?.address, 'alice@example.test');
      assert.ok(!msg.flags?.has('\\Seen'));
      assert.match(msg.source?.toString() ?? '', /Hello again, Bob\./);
      await client.messageFlagsAdd({ uid: String(msg.uid) }, ['\\Seen'], { uid: true });
    } finally {
      lock.release();
    }
    await client.logout();

    client = await connect();
    let uid: number;
    try {
      await client.mailboxOpen('INBOX');
      const again = await client.fetchOne('*', { uid: true, flags: true, envelope: true });
      assert.ok(again);
      uid = again.uid;
      assert.equal(again.envelope?.subject, 'over IMAP');
      assert.ok(again.flags?.has('\\Seen'), 'the \\Seen flag survives logout');
    } finally {
      await client.logout();
    }
    // curl as a second IMAP client: a plain UID FETCH of BODY[] streams the whole message.
    const { stdout: body } = await curl(
      '-u',
      'bob@example.test:bob-password',
      `imap://127.0.0.1:${ports.imap}/INBOX;UID=${uid}`,
    );
    assert.match(body, /Subject: over IMAP/);
    assert.match(body, /Hello again, Bob\./);
  });

  test('a message to a remote domain goes to the MX that DNS names', async () => {
    await submit('alice@example.test', 'alice-password').sendMail({
      from: 'alice@example.test',
      to: 'someone@remote.test',
      subject: 'to the world',
      text: 'Over the wire.',
    });
    const got = await until('the remote MX to receive it', async () =>
      sunk.find((m) => m.body.includes('to the world')),
    );
    assert.deepEqual(got.to, ['someone@remote.test']);
    assert.equal(got.from, 'alice@example.test');
    assert.match(got.body, /Over the wire\./);
  });

  test('a domain with a null MX bounces back to the sender at once', async () => {
    await submit('alice@example.test', 'alice-password').sendMail({
      from: 'alice@example.test',
      to: 'nobody@nullmx.test',
      subject: 'into the void',
      text: 'This cannot be delivered.',
    });
    const client = imapClient('alice@example.test', 'alice-password');
    await client.connect();
    try {
      await until("the bounce in alice's INBOX", async () => (await inboxCount(client)) === 1);
      await client.mailboxOpen('INBOX');
      const msg = await client.fetchOne('*', { envelope: true, source: true });
      assert.ok(msg);
      assert.equal(msg.envelope?.subject, 'Undelivered Mail Returned to Sender');
      const src = msg.source?.toString() ?? '';
      assert.match(src, /Content-Type: multipart\/report; report-type=delivery-status/);
      assert.match(src, /Status: 5\.1\.10/);
      assert.match(src, /Final-Recipient: rfc822; nobody@nullmx\.test/);
    } finally {
      await client.logout();
    }
  });

  test('stopping the router (SIGTERM) after the 250 and starting it again loses nothing and duplicates nothing', async () => {
    // SIGTERM drains: the process exits 0 within its grace period.
    assert.equal(await router.stop('SIGTERM'), 0);
    const info = await submit('alice@example.test', 'alice-password').sendMail({
      from: 'alice@example.test',
      to: 'bob@example.test',
      subject: 'while the router was down',
      text: 'Patience.',
    });
    assert.match(info.response, /^250 /);
    router = await spawnServices(env, ['router']);
    const rt = main.runtime;
    // Wait until every stage has drained: nothing pending or unacknowledged anywhere.
    await until('the pipeline to drain', async () => {
      for (const c of Object.values(CONSUMERS)) {
        const ci = await rt.nats.jsm.consumers.info(c.stream, c.durable);
        if (ci.num_pending > 0 || ci.num_ack_pending > 0) return false;
      }
      const local = await rt.nats.jsm.streams.info(STREAMS.LOCAL);
      return local.state.messages === 0;
    });
    const client = imapClient('bob@example.test', 'bob-password');
    await client.connect();
    try {
      await client.mailboxOpen('INBOX');
      const subjects: string[] = [];
      for await (const m of client.fetch('1:*', { envelope: true })) subjects.push(m.envelope?.subject ?? '');
      assert.equal(subjects.filter((s) => s === 'while the router was down').length, 1);
    } finally {
      await client.logout();
    }
  });

  test('an unknown recipient is refused at RCPT with 550 5.1.1', async () => {
    await assert.rejects(
      submit('alice@example.test', 'alice-password').sendMail({
        from: 'alice@example.test',
        to: 'nobody@example.test',
        text: 'x',
      }),
      (err: Error & { rejectedErrors?: { response?: string }[] }) => {
        assert.match(err.rejectedErrors?.[0]?.response ?? '', /^550 5\.1\.1 /);
        return true;
      },
    );
  });

  test('relaying without AUTH is refused', async () => {
    const port25 = nodemailer.createTransport({
      host: '127.0.0.1',
      port: ports.smtp,
      secure: false,
      ignoreTLS: true,
    });
    await assert.rejects(
      port25.sendMail({ from: 'spammer@evil.test', to: 'victim@remote.test', text: 'x' }),
      (err: Error & { rejectedErrors?: { response?: string }[] }) => {
        assert.match(err.rejectedErrors?.[0]?.response ?? '', /^554 5\.7\.1 .*Relay access denied/);
        return true;
      },
    );
    // Mail from the Internet to a hosted user needs no AUTH.
    const info = await port25.sendMail({
      from: 'friend@remote.test',
      to: 'bob@example.test',
      subject: 'inbound',
      text: 'x',
    });
    assert.match(info.response, /^250 /);
  });

  test('a wrong password is refused by SMTP AUTH, POP3 PASS and IMAP LOGIN', async () => {
    await assert.rejects(
      submit('alice@example.test', 'wrong-password').sendMail({
        from: 'alice@example.test',
        to: 'bob@example.test',
        text: 'x',
      }),
      (err: Error & { responseCode?: number; response?: string }) => {
        assert.equal(err.responseCode, 535);
        assert.match(err.response ?? '', /^535 5\.7\.8 /);
        return true;
      },
    );
    await assert.rejects(
      curl('-u', 'bob@example.test:wrong-password', `pop3://127.0.0.1:${ports.pop3}/`),
      /Login denied|67/,
    );
    const client = imapClient('bob@example.test', 'wrong-password');
    await assert.rejects(
      client.connect(),
      (err: Error & { authenticationFailed?: boolean; serverResponseCode?: string }) => {
        assert.ok(err.authenticationFailed || err.serverResponseCode === 'AUTHENTICATIONFAILED', err.message);
        return true;
      },
    );
  });

  test('one trace follows a message through every service, and `postino trace` shows its journey', async () => {
    const info = await submit('alice@example.test', 'alice-password').sendMail({
      from: 'alice@example.test',
      to: 'bob@example.test',
      subject: 'follow me',
      text: 'Where am I?',
    });
    const queueId = /queued as ([0-9A-Z]+)/.exec(info.response)?.[1];
    assert.ok(queueId);
    const journey = await until('the message to be stored', async () => {
      const { stdout } = await postino('trace', queueId);
      return /\bstored\b/.test(stdout) ? stdout : null;
    });
    const lines = journey.trim().split('\n');
    const kinds = lines.map((l) => l.split(/\s+/)[1]);
    assert.deepEqual(kinds, ['received', 'routed', 'stored']);
    const traces = new Set(lines.map((l) => /trace=([0-9a-f]{32})/.exec(l)?.[1]));
    assert.equal(traces.size, 1, 'smtp-ingress, router (another process) and mailbox-store share one trace');
    const [traceId] = traces;
    assert.ok(traceId);
    // The same trace id is in the stored message's Received header.
    const client = imapClient('bob@example.test', 'bob-password');
    await client.connect();
    try {
      await client.mailboxOpen('INBOX');
      const found = await client.search({ header: { subject: 'follow me' } }, { uid: true });
      const uid = Array.isArray(found) ? found[0] : undefined;
      assert.ok(uid);
      const msg = await client.fetchOne(String(uid), { source: true }, { uid: true });
      assert.ok(msg);
      assert.match(
        msg.source?.toString() ?? '',
        new RegExp(`id ${queueId}\\r?\\n\\s+\\(trace ${traceId}\\)`),
      );
    } finally {
      await client.logout();
    }
  });

  test('every process answers /healthz, /readyz and /metrics', async () => {
    for (const port of [main.runtime.http.port, router.httpPort]) {
      assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
      assert.equal((await fetch(`http://127.0.0.1:${port}/readyz`)).status, 200);
    }
    const metrics = await (await fetch(`http://127.0.0.1:${main.runtime.http.port}/metrics`)).text();
    assert.match(metrics, /^postino_smtp_messages_accepted_total\{port="submission"\} [1-9]/m);
    assert.match(metrics, /^postino_mailbox_appended_total\{result="stored"\} [1-9]/m);
    // Queue depth per stage and the blob store's size are read from JetStream at each scrape.
    assert.match(metrics, /^postino_queue_depth\{stream="INGRESS",consumer="router",state="pending"\} 0$/m);
    assert.match(metrics, /^postino_queue_oldest_age_seconds\{stream="OUTBOUND"\} \d/m);
    assert.match(metrics, /^postino_blob_store_bytes [1-9]\d*$/m);
    const routerMetrics = await (await fetch(`http://127.0.0.1:${router.httpPort}/metrics`)).text();
    assert.match(routerMetrics, /^postino_recipients_routed_total\{destination="local"\} [1-9]/m);
  });

  test('a bad setting stops a service at start, naming the variable', async () => {
    await assert.rejects(
      run(process.execPath, [POSTINO, 'run', 'router'], {
        env: { ...process.env, ...env, SMTP_PORT: 'twenty-five' },
      }),
      (err: Error & { code?: number; stderr?: string }) => {
        assert.equal(err.code, 78);
        assert.match(err.stderr ?? '', /SMTP_PORT: expected an integer, got "twenty-five"/);
        return true;
      },
    );
  });
});
