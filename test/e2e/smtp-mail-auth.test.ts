/**
 * Mail authentication end to end: dnsmasq serves SPF, DKIM and DMARC TXT records; mail on port 25
 * gets an Authentication-Results header and DMARC p=reject failures are refused; mail submitted
 * for a domain with a key made by the admin API is DKIM-signed and verified by mailauth.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { promisify } from 'node:util';
import { connect } from 'node:net';
import { dkimVerify } from 'mailauth/lib/dkim/verify.js';
import { startDns, startNats, startRedis, type Proc } from '../helpers/servers.ts';
import { POSTINO, startServices, testConfig, type Ports } from '../helpers/postino.ts';
import type { Running } from '../../services/core/runtime.ts';
import { decode, pb } from '../../services/core/codec.ts';
import { STREAMS } from '../../services/core/nats.ts';
import { dkimSign } from '../../services/smtp-ingress/dkim-sign.ts';
import { dnsResolver } from '../../services/smtp-ingress/mail-auth.ts';
import { Wire, transcript } from '../helpers/smtp-wire.ts';
import { submit } from '../helpers/clients.ts';

const run = promisify(execFile);

/** Every envelope on INGRESS (nothing consumes them here). */
async function bodyOf(rt: Running, reply: string): Promise<string> {
  const queueId = /queued as ([0-9A-Z]+)/.exec(reply)?.[1];
  assert.ok(queueId, reply);
  const jsm = rt.runtime.nats.jsm;
  const info = await jsm.streams.info(STREAMS.INGRESS);
  for (let seq = info.state.last_seq; seq >= info.state.first_seq && seq > 0; seq--) {
    const m = await jsm.streams.getMessage(STREAMS.INGRESS, { seq }).catch(() => null);
    const env = m ? decode(pb.Envelope, m.data) : null;
    if (env?.queueId === queueId) return (await rt.runtime.blobs.read(env.body?.id ?? '')).toString('utf8');
  }
  throw new Error(`envelope ${queueId} not on INGRESS`);
}

/** A test signing key for the external domain signed.test (1024 bits: one TXT string). */
const SIGNER = generateKeyPairSync('rsa', {
  modulusLength: 1024,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});
const pOf = (pem: string) => pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');

function message(from: string, subject: string, text = 'Hello.\r\n'): string {
  return `From: <${from}>\r\nTo: <bob@example.test>\r\nSubject: ${subject}\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <${subject.replace(/\W/g, '')}@test>\r\n\r\n${text}`;
}

describe('SPF, DKIM and DMARC on port 25, and DKIM signing on submission', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let main: Running;
  let lenient: Running;
  let ports: Ports;
  let lenientPorts: Ports;
  let adminUrl: string;

  const send = async (port: number, mailFrom: string, data: string): Promise<string> => {
    const sock = connect({ host: '127.0.0.1', port });
    await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const w = new Wire(sock);
    try {
      await transcript(
        w,
        `S: 220\nC: EHLO mta.remote.test\nS: 250\nC: MAIL FROM:<${mailFrom}>\nS: 250\nC: RCPT TO:<bob@example.test>\nS: 250\nC: DATA\nS: 354`,
      );
      return await w.cmd(`${data.replace(/\r\n$/, '')}\r\n.`);
    } finally {
      w.end();
    }
  };

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    dns = await startDns([
      '--txt-record=spf-pass.test,v=spf1 ip4:127.0.0.0/8 -all',
      '--txt-record=spf-fail.test,v=spf1 ip4:192.0.2.99 -all',
      '--txt-record=_dmarc.spf-pass.test,v=DMARC1; p=none',
      '--txt-record=reject.test,v=spf1 ip4:192.0.2.99 -all',
      '--txt-record=_dmarc.reject.test,v=DMARC1; p=reject',
      `--txt-record=sel._domainkey.signed.test,v=DKIM1; k=rsa; p=${pOf(SIGNER.publicKey)}`,
      '--txt-record=_dmarc.signed.test,v=DMARC1; p=reject',
    ]);
    const common = {
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      SMTP_TRUSTED_NETWORKS: 'none',
      SMTPS_PORT: '0',
    };
    const t = await testConfig(common);
    ports = t.ports;
    main = await startServices(t.config, ['smtp-ingress', 'admin']);
    const l = await testConfig({ ...common, DMARC_REJECT: 'false' });
    lenientPorts = l.ports;
    lenient = await startServices(l.config, ['smtp-ingress']);
    adminUrl = `http://127.0.0.1:${main.runtime.http.port}`;
    await main.runtime.directory.addDomain('example.test');
    await main.runtime.directory.addUser('alice@example.test', 'alice-password');
    await main.runtime.directory.addUser('bob@example.test', 'bob-password');
  });

  after(async () => {
    await lenient?.stop();
    await main?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  const authResults = (body: string) => {
    const m = /^Authentication-Results: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)/m.exec(body);
    assert.ok(m, `no Authentication-Results in\n${body.slice(0, 800)}`);
    return m[1]?.replace(/\r\n[ \t]+/g, ' ') ?? '';
  };

  test('SPF pass, fail and none (RFC 7208), with DMARC pass and none, in Authentication-Results', async () => {
    const pass = authResults(
      await bodyOf(main, await send(ports.smtp, 'a@spf-pass.test', message('a@spf-pass.test', 'spf pass'))),
    );
    assert.match(pass, /^mx\.example\.test;/);
    assert.match(pass, /spf=pass [^;]*smtp\.mailfrom=a@spf-pass\.test/);
    assert.match(pass, /dmarc=pass [^;]*header\.from=spf-pass\.test/);
    assert.match(pass, /dkim=none/);
    const fail = authResults(
      await bodyOf(main, await send(ports.smtp, 'a@spf-fail.test', message('a@spf-fail.test', 'spf fail'))),
    );
    assert.match(fail, /spf=fail [^;]*smtp\.mailfrom=a@spf-fail\.test/);
    assert.match(fail, /dmarc=none/);
    const none = authResults(
      await bodyOf(main, await send(ports.smtp, 'a@nospf.test', message('a@nospf.test', 'spf none'))),
    );
    assert.match(none, /spf=none/);
  });

  test('DKIM pass and fail (RFC 6376): a signature that verifies, and one broken by a changed body', async () => {
    const msg = message('news@signed.test', 'dkim signed', 'Signed text.\r\n');
    const sig = dkimSign(Buffer.from(msg), {
      domain: 'signed.test',
      selector: 'sel',
      privateKey: SIGNER.privateKey,
    });
    const good = authResults(await bodyOf(main, await send(ports.smtp, 'news@signed.test', sig + msg)));
    assert.match(good, /dkim=pass [^;]*header\.[id]=@?signed\.test/);
    assert.match(good, /dmarc=pass/);
    const tampered = sig + msg.replace('Signed text.', 'Changed text.');
    const lenientBody = await bodyOf(lenient, await send(lenientPorts.smtp, 'news@signed.test', tampered));
    const bad = authResults(lenientBody);
    // mailauth reports a body hash mismatch as neutral (RFC 6376 6.1.3 lets a verifier say so).
    assert.match(bad, /dkim=(fail|neutral) \(body hash did not verify\)/);
    assert.match(bad, /dmarc=fail/);
  });

  test('RFC 7489 6.6.2: DMARC failure under p=reject is 550 5.7.1, or accepted when DMARC_REJECT=false', async () => {
    const msg = message('ceo@reject.test', 'dmarc reject');
    assert.match(await send(ports.smtp, 'ceo@reject.test', msg), /^550 5\.7\.1 .*reject\.test/);
    const body = await bodyOf(lenient, await send(lenientPorts.smtp, 'ceo@reject.test', msg));
    assert.match(authResults(body), /dmarc=fail [^;]*p=REJECT/);
  });

  test('the admin API makes a DKIM key; submitted mail is signed and an independent verifier (mailauth) passes it', async () => {
    const cli = await run(
      process.execPath,
      [POSTINO, 'admin', 'dkim', 'generate', 'example.test', '--selector', 's2026'],
      {
        env: { ...process.env, ADMIN_URL: adminUrl },
      },
    );
    const record = /^(s2026\._domainkey\.example\.test)\. IN TXT ((?:"[^"]+" ?)+)$/.exec(cli.stdout.trim());
    assert.ok(record, cli.stdout);
    const strings = [...(record[2] ?? '').matchAll(/"([^"]+)"/g)].map((m) => m[1] ?? '');
    assert.match(strings.join(''), /^v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]{300,}$/);
    const shown = (await (await fetch(`${adminUrl}/api/domains/example.test/dkim`)).json()) as {
      txt: string;
    };
    assert.equal(shown.txt, strings.join(''));

    const info = await submit(ports.submission, {
      from: 'Alice <alice@example.test>',
      to: 'friend@remote.test',
      subject: 'signed for you',
      text: 'Hello,\n\n  spaced   text  \n\n\n',
    });
    const body = await bodyOf(main, info.response);
    assert.match(
      body,
      /\r\nDKIM-Signature: v=1;\r\n\ta=rsa-sha256;\r\n\tc=relaxed\/relaxed;\r\n\td=example\.test;\r\n\ts=s2026;/,
    );

    // The published record, served by a DNS server of its own, and mailauth's verifier.
    // dnsmasq takes the strings of one TXT record separated by commas.
    const keyDns = await startDns([`--txt-record=${record[1]},${strings.join(',')}`]);
    try {
      const resolver = dnsResolver([keyDns.url], 2000);
      const verified = await dkimVerify(Buffer.from(body), { resolver });
      const result = verified.results?.[0];
      assert.equal(result?.status?.result, 'pass', JSON.stringify(result));
      assert.equal(result?.signingDomain, 'example.test');
      const broken = await dkimVerify(Buffer.from(body.replace('spaced', 'changed')), { resolver });
      assert.notEqual(broken.results?.[0]?.status?.result, 'pass');
      assert.match(String(broken.results?.[0]?.status?.comment), /body hash did not verify/);
    } finally {
      await keyDns.cleanup();
    }
  });
});
