/**
 * smtp-ingress end to end: real nats-server and redis-server, the directory, real clients
 * (raw sockets, swaks, openssl s_client, nodemailer). Policy, TLS, rates shared by replicas
 * through Redis, a flood of connections, and nats-server stopped in the middle of a transaction.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { connect, type Socket } from 'node:net';
import nodemailer from 'nodemailer';
import { freePort, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startServices, testConfig, type Ports } from '../helpers/postino.ts';
import type { Running } from '../../services/core/runtime.ts';
import { decode, pb, type Envelope } from '../../services/core/codec.ts';
import { STREAMS } from '../../services/core/nats.ts';
import { Wire, transcript } from '../helpers/smtp-wire.ts';

const run = promisify(execFile);

/** Every envelope on INGRESS (only smtp-ingress runs here, so nothing consumes them). */
async function envelopes(rt: Running): Promise<Envelope[]> {
  const jsm = rt.runtime.nats.jsm;
  const info = await jsm.streams.info(STREAMS.INGRESS);
  const out: Envelope[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(STREAMS.INGRESS, { seq }).catch(() => null);
    if (m) out.push(decode(pb.Envelope, m.data));
  }
  return out;
}

async function envelopeOf(rt: Running, reply: string): Promise<{ env: Envelope; body: string }> {
  const queueId = /queued as ([0-9A-Z]+)/.exec(reply)?.[1];
  assert.ok(queueId, reply);
  const env = (await envelopes(rt)).find((e) => e.queueId === queueId);
  assert.ok(env, `envelope ${queueId} on INGRESS`);
  const body = (await rt.runtime.blobs.read(env.body?.id ?? '')).toString('utf8');
  return { env, body };
}

const b64 = (s: string) => Buffer.from(s).toString('base64');
const plain = (user: string, pass: string) => b64(`\0${user}\0${pass}`);

describe('smtp-ingress end to end', () => {
  let nats: Proc;
  let redis: Proc;
  let main: Running;
  let ports: Ports;
  let smtps: number;
  let env: Record<string, string>;

  /** A session on a port, from a given loopback address (so each test has its own client IP). */
  const open = async (port: number, localAddress = '127.0.0.1'): Promise<Wire> => {
    const sock = connect({ host: '127.0.0.1', port, localAddress });
    await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    return new Wire(sock);
  };

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    smtps = await freePort();
    let config;
    ({ config, ports, env } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      SMTPS_PORT: String(smtps),
      MAX_MESSAGE_SIZE: '64k',
      MAIL_AUTH_CHECKS: 'false',
      SMTP_ACCEPT_TIMEOUT: '3s',
      SMTP_MAX_CONNECTIONS_PER_IP: '5000',
      SMTP_MAX_CONNECTIONS: '5000',
      SMTP_CONNECTION_RATE: '100000',
    }));
    main = await startServices(config, ['smtp-ingress']);
    const d = main.runtime.directory;
    await d.addDomain('example.test');
    await d.addDomain('catch.test');
    await d.addUser('alice@example.test', 'alice-password');
    await d.addUser('bob@example.test', 'bob-password');
    await d.addUser('dave@example.test', 'dave-password');
    await d.addAlias('sales@example.test', ['bob@example.test']);
    await d.addAlias('alice.smith@example.test', ['alice@example.test']);
    await d.setCatchAll('catch.test', 'bob@example.test');
  });

  after(async () => {
    await main?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  test('port 25: users, aliases and catch-all accepted; unknown users, relays and relay tricks refused', async () => {
    const w = await open(ports.smtp);
    await transcript(
      w,
      `S: 220 mx.example.test Postino ESMTP
       C: EHLO relay.remote.test
       S: 250-mx.example.test Hello relay.remote.test
       C: MAIL FROM:<someone@remote.test>
       S: 250 2.1.0
       C: RCPT TO:<Bob@Example.TEST>
       S: 250 2.1.5
       C: RCPT TO:<sales@example.test>
       S: 250 2.1.5
       C: RCPT TO:<anything@catch.test>
       S: 250 2.1.5
       C: RCPT TO:<bob+tag@example.test>
       S: 250 2.1.5
       C: RCPT TO:<nobody@example.test>
       S: 550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown
       C: RCPT TO:<victim@remote.test>
       S: 554 5.7.1 <victim@remote.test>: Relay access denied
       C: RCPT TO:<victim@[192.0.2.1]>
       S: 554 5.7.1
       C: RCPT TO:<victim%remote.test@example.test>
       S: 553 5.7.1
       C: RCPT TO:<remote.test!victim@example.test>
       S: 553 5.7.1
       C: RCPT TO:<@example.test:victim@remote.test>
       S: 553 5.7.1
       C: RCPT TO:<"victim@remote.test"@example.test>
       S: 553 5.7.1
       C: RCPT TO:<victim@remote.test@example.test>
       S: 553 5.1.3
       C: AUTH PLAIN ${plain('alice@example.test', 'alice-password')}
       S: 502 5.5.1
       C: DATA
       S: 354
       C: Subject: hello
       C:
       C: hi
       C: .
       S: 250 2.0.0 Ok: queued as
       C: QUIT
       S: 221 2.0.0`,
    );
    await w.closed();
  });

  test('the envelope carries DSN, SMTPUTF8 and 8BITMIME; the Received header names protocol and TLS', async () => {
    const w = await open(ports.smtp);
    await w.reply();
    await w.cmd('EHLO relay.remote.test');
    assert.match(await w.cmd('STARTTLS'), /^220 2\.0\.0/);
    await w.startTls();
    await w.cmd('EHLO relay.remote.test');
    await transcript(
      w,
      `C: MAIL FROM:<jöran@remote.test> SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=abc+2B1
       S: 250 2.1.0
       C: RCPT TO:<δοκιμή@catch.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob@example.test
       S: 250 2.1.5
       C: DATA
       S: 354`,
    );
    const reply = await w.cmd('Subject: grüße\r\n\r\nnaïve café\r\n.');
    const { env: e, body } = await envelopeOf(main, reply);
    assert.equal(e.mailFrom, 'jöran@remote.test');
    assert.equal(e.recipients?.[0]?.address, 'δοκιμή@catch.test');
    assert.deepEqual(e.recipients?.[0]?.dsn?.notify, ['SUCCESS', 'DELAY']);
    assert.equal(e.recipients?.[0]?.dsn?.orcpt, 'rfc822;bob@example.test');
    assert.equal(e.dsnRet, 'HDRS');
    assert.equal(e.dsnEnvid, 'abc+2B1');
    assert.equal(e.smtputf8, true);
    assert.equal(e.bodyType, '8bitmime');
    // Stored as the final delivery files it (RFC 5321 4.4); the envelope says how long the
    // Return-Path field is, for delivery elsewhere to leave it out.
    const returnPath = 'Return-Path: <jöran@remote.test>\r\n';
    assert.ok(body.startsWith(returnPath));
    assert.equal(e.body?.returnPath, Buffer.byteLength(returnPath));
    assert.match(
      body.slice(returnPath.length),
      /^Received: from relay\.remote\.test \(unknown \[127\.0\.0\.1\]\)\r\n\tby mx\.example\.test \(Postino\) with UTF8SMTPS id [0-9A-Z]+\r\n\t\(using TLSv1\.3 with cipher TLS_[A-Z0-9_]+\)\r\n/,
    );
    assert.ok(body.endsWith('Subject: grüße\r\n\r\nnaïve café\r\n'));
    assert.match(body, /\tfor <δοκιμή@catch\.test>; /);
    w.end();
  });

  test('RFC 5321 6.3: a message with 50 Received headers is refused with 554 5.4.6', async () => {
    const w = await open(ports.smtp);
    await transcript(
      w,
      'S: 220\nC: EHLO r\nS: 250\nC: MAIL FROM:<a@remote.test>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354',
    );
    const hops = 'Received: from a by b; Thu, 26 Nov 2026 09:00:00 +0000\r\n'.repeat(50);
    assert.match(await w.cmd(`${hops}Subject: loop\r\n\r\nx\r\n.`), /^554 5\.4\.6/);
    w.end();
  });

  test('submission: MAIL needs AUTH; the sender must be the user or an alias; Message-ID and Date are added', async () => {
    const w = await open(ports.submission);
    await transcript(
      w,
      `S: 220
       C: EHLO client
       S: 250-
       C: MAIL FROM:<alice@example.test>
       S: 530 5.7.0
       C: AUTH PLAIN ${plain('alice@example.test', 'alice-password')}
       S: 235 2.7.0
       C: MAIL FROM:<bob@example.test>
       S: 553 5.7.1
       C: MAIL FROM:<>
       S: 553 5.7.1
       C: MAIL FROM:<alice.smith@example.test>
       S: 250 2.1.0
       C: RSET
       S: 250
       C: MAIL FROM:<Alice@example.test>
       S: 250 2.1.0
       C: RCPT TO:<friend@remote.test>
       S: 250 2.1.5
       C: DATA
       S: 354`,
    );
    const { env: e, body } = await envelopeOf(main, await w.cmd('Subject: no id\r\n\r\nbody\r\n.'));
    assert.equal(e.authUser, 'alice@example.test');
    assert.match(body, /with ESMTPA id /);
    assert.match(body, /\r\nMessage-ID: <[0-9A-Z]+\.[0-9a-f]+@mx\.example\.test>\r\n/);
    assert.match(body, /\r\nDate: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n/);
    assert.equal(e.messageId, /Message-ID: (<[^>]+>)/.exec(body)?.[1]);
    w.end();
  });

  test('TLS: STARTTLS on 25 and 587 and implicit TLS on 465 with openssl s_client; TLS 1.1 refused', async () => {
    const sclient = async (args: string[]) => {
      const { stdout } = await run('sh', [
        '-c',
        `printf 'EHLO s-client\\r\\nQUIT\\r\\n' | timeout 20 openssl s_client -ign_eof ${args.join(' ')} 2>&1`,
      ]);
      return stdout;
    };
    for (const port of [ports.smtp, ports.submission]) {
      const out = await sclient(['-connect', `127.0.0.1:${port}`, '-starttls', 'smtp']);
      assert.match(out, /Protocol\s*: TLSv1\.3/);
      assert.match(out, /250-ENHANCEDSTATUSCODES/);
      assert.match(out, /221 2\.0\.0/);
    }
    const out465 = await sclient(['-connect', `127.0.0.1:${smtps}`]);
    assert.match(out465, /220 mx\.example\.test Postino ESMTP/);
    assert.match(out465, /250 AUTH PLAIN LOGIN/);
    const old = await sclient(['-connect', `127.0.0.1:${smtps}`, '-tls1_1']).catch(
      (e: { stdout: string }) => e.stdout,
    );
    assert.doesNotMatch(old, /220 mx\.example\.test/);
  });

  test('TLS with nodemailer: 465 (implicit) and 587 (STARTTLS required), AUTH, and swaks on 25', async () => {
    for (const [port, secure] of [
      [smtps, true],
      [ports.submission, false],
    ] as const) {
      const info = await nodemailer
        .createTransport({
          host: '127.0.0.1',
          port,
          secure,
          requireTLS: !secure,
          tls: { rejectUnauthorized: false },
          auth: { user: 'alice@example.test', pass: 'alice-password' },
        })
        .sendMail({ from: 'alice@example.test', to: 'bob@example.test', subject: `tls ${port}`, text: 'hi' });
      assert.match(info.response, /^250 2\.0\.0 Ok: queued as/);
      const { body } = await envelopeOf(main, info.response);
      assert.match(body, /with ESMTPSA id [0-9A-Z]+\r\n\t\(using TLSv1\.3 with cipher/);
    }
    const { stdout } = await run('swaks', [
      '--server',
      '127.0.0.1',
      '--port',
      String(ports.smtp),
      '--tls',
      '--from',
      'x@remote.test',
      '--to',
      'bob@example.test',
      '--helo',
      'swaks.remote.test',
      '--timeout',
      '20',
    ]);
    assert.match(stdout, /<~ {2}250 2\.0\.0 Ok: queued as/);
  });

  test('1,000 concurrent connections are greeted while another session delivers a message', async () => {
    const socks: Socket[] = [];
    const greeted = await Promise.all(
      Array.from(
        { length: 1000 },
        () =>
          new Promise<string>((resolve, reject) => {
            const s = connect({ host: '127.0.0.1', port: ports.smtp, localAddress: '127.0.0.9' });
            socks.push(s);
            s.once('data', (c: Buffer) => resolve(c.toString().slice(0, 3)));
            s.once('error', reject);
          }),
      ),
    );
    try {
      assert.equal(greeted.filter((g) => g === '220').length, 1000);
      const w = await open(ports.smtp);
      await transcript(
        w,
        'S: 220\nC: EHLO r\nS: 250\nC: MAIL FROM:<a@remote.test>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354\nC: Subject: busy\nC:\nC: .\nS: 250 2.0.0',
      );
      w.end();
    } finally {
      for (const s of socks) s.destroy();
    }
  });

  describe('rates and AUTH failures, shared by two more replicas through Redis', () => {
    let b: Running;
    let c: Running;
    let bPorts: Ports;
    let cPorts: Ports;
    before(async () => {
      const replica = async () => {
        const t = await testConfig({
          ...Object.fromEntries(Object.entries(env).filter(([k]) => !k.endsWith('_PORT'))),
          SMTPS_PORT: '0',
          SMTP_CONNECTION_RATE: '4',
          SMTP_MESSAGE_RATE: '3',
          SMTP_AUTH_FAILURES: '3',
        });
        return { rt: await startServices(t.config, ['smtp-ingress']), ports: t.ports };
      };
      ({ rt: b, ports: bPorts } = await replica());
      ({ rt: c, ports: cPorts } = await replica());
      // Fixed one-minute windows: keep the counting inside one of them.
      await until(
        'the start of a fresh rate window',
        async () => Date.now() % 60_000 < 50_000 && Date.now() % 900_000 < 890_000,
        15_000,
      );
    });
    after(async () => {
      await b?.stop();
      await c?.stop();
    });

    const send = async (port: number, ip: string): Promise<string> => {
      const w = await open(port, ip);
      try {
        await w.reply();
        await w.cmd('EHLO r');
        const mail = await w.cmd('MAIL FROM:<a@remote.test>');
        if (!mail.startsWith('250')) return mail;
        await w.cmd('RCPT TO:<bob@example.test>');
        await w.cmd('DATA');
        return await w.cmd('Subject: rate\r\n\r\nx\r\n.');
      } finally {
        w.end();
      }
    };

    test('messages per client IP: the 4th across two replicas gets 451 4.7.1', async () => {
      assert.match(await send(bPorts.smtp, '127.0.0.21'), /^250 /);
      assert.match(await send(cPorts.smtp, '127.0.0.21'), /^250 /);
      assert.match(await send(bPorts.smtp, '127.0.0.21'), /^250 /);
      assert.match(await send(cPorts.smtp, '127.0.0.21'), /^451 4\.7\.1/);
      assert.match(await send(cPorts.smtp, '127.0.0.22'), /^250 /);
    });

    test('messages per user: the 4th across two replicas and three addresses gets 451 4.7.1', async () => {
      const submit = async (port: number, ip: string): Promise<string> => {
        const w = await open(port, ip);
        try {
          await w.reply();
          await w.cmd('EHLO c');
          await w.cmd(`AUTH PLAIN ${plain('bob@example.test', 'bob-password')}`);
          const mail = await w.cmd('MAIL FROM:<bob@example.test>');
          if (!mail.startsWith('250')) return mail;
          await w.cmd('RCPT TO:<friend@remote.test>');
          await w.cmd('DATA');
          return await w.cmd('Subject: user rate\r\n\r\nx\r\n.');
        } finally {
          w.end();
        }
      };
      assert.match(await submit(bPorts.submission, '127.0.0.41'), /^250 /);
      assert.match(await submit(cPorts.submission, '127.0.0.42'), /^250 /);
      assert.match(await submit(bPorts.submission, '127.0.0.41'), /^250 /);
      assert.match(await submit(cPorts.submission, '127.0.0.43'), /^451 4\.7\.1/);
    });

    test('connections per client IP: the 5th across two replicas gets 421 4.7.0', async () => {
      const greet = async (port: number) => {
        const w = await open(port, '127.0.0.23');
        const g = await w.reply();
        w.end();
        return g;
      };
      for (const port of [bPorts.smtp, cPorts.smtp, bPorts.submission, cPorts.submission])
        assert.match(await greet(port), /^220 /);
      assert.match(await greet(bPorts.smtp), /^421 4\.7\.0/);
    });

    test('AUTH failures: after 3 per IP, and after 3 per account, AUTH gets 454 4.7.0', async () => {
      const auth = async (port: number, ip: string, user: string, pass: string) => {
        const w = await open(port, ip);
        await w.reply();
        await w.cmd('EHLO c');
        const r = await w.cmd(`AUTH PLAIN ${plain(user, pass)}`);
        w.end();
        return r;
      };
      for (const port of [bPorts.submission, cPorts.submission, bPorts.submission])
        assert.match(await auth(port, '127.0.0.31', 'dave@example.test', 'wrong'), /^535 5\.7\.8/);
      // The account is throttled on every replica, from every address, even with the right password.
      assert.match(
        await auth(cPorts.submission, '127.0.0.32', 'dave@example.test', 'dave-password'),
        /^454 4\.7\.0/,
      );
      // And the address is throttled for every account.
      assert.match(
        await auth(cPorts.submission, '127.0.0.31', 'bob@example.test', 'bob-password'),
        /^454 4\.7\.0/,
      );
      assert.match(
        await auth(cPorts.submission, '127.0.0.33', 'bob@example.test', 'bob-password'),
        /^235 2\.7\.0/,
      );
    });
  });

  test('stopping a replica (as on SIGTERM) tells an idle session 421 4.3.2 and closes it', async () => {
    const t = await testConfig({
      ...Object.fromEntries(Object.entries(env).filter(([k]) => !k.endsWith('_PORT'))),
      SMTPS_PORT: '0',
    });
    const d = await startServices(t.config, ['smtp-ingress']);
    const w = await open(t.ports.smtp);
    await w.reply();
    await w.cmd('EHLO idle');
    await d.stop();
    assert.match(await w.reply(), /^421 4\.3\.2/);
    await w.closed();
  });

  test('nats-server stopped mid-transaction: 451 4.3.0, and the retry after it is back is queued once', async () => {
    const messageId = `<retry-${Date.now()}@remote.test>`;
    const attempt = async (): Promise<string> => {
      const w = await open(ports.smtp);
      try {
        await transcript(
          w,
          'S: 220\nC: EHLO r\nS: 250\nC: MAIL FROM:<a@remote.test>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354',
        );
        return await w.cmd(`Message-ID: ${messageId}\r\nSubject: retry\r\n\r\nx\r\n.`);
      } finally {
        w.end();
      }
    };
    const w = await open(ports.smtp);
    await transcript(
      w,
      'S: 220\nC: EHLO r\nS: 250\nC: MAIL FROM:<a@remote.test>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354',
    );
    await nats.kill();
    assert.match(await w.cmd(`Message-ID: ${messageId}\r\nSubject: retry\r\n\r\nx\r\n.`), /^451 4\.3\.0/);
    w.end();
    await nats.restart();
    // The client retries, as an MTA does after a 4xx, until it is accepted.
    await until('the retry to be accepted', async () => (await attempt()).startsWith('250 '), 30_000);
    const queued = (await envelopes(main)).filter((e) => e.messageId === messageId);
    assert.equal(queued.length, 1);
  });
});
