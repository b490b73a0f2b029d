/**
 * TLS on the IMAP listeners: implicit TLS (RFC 8314 3.3) and STARTTLS (RFC 9051 6.2.1) with
 * openssl s_client as the client, and a certificate rotated under a running server.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { TlsProvider } from '../../services/core/tls.ts';
import { createImapServer } from '../../services/imap/server.ts';
import type { ImapServer } from '../../services/imap/server.ts';
import { MemoryAuthenticator, MemoryMailbox } from '../helpers/memory-mailbox.ts';
import { until } from '../helpers/servers.ts';

const logger = pino({ level: 'silent' });

function makePair(dir: string, cn: string): { certFile: string; keyFile: string } {
  const certFile = join(dir, `${cn}.crt`);
  const keyFile = join(dir, `${cn}.key`);
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
      .concat(['-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', `/CN=${cn}`])
      .concat(['-addext', 'subjectAltName=IP:127.0.0.1']),
    { stdio: 'ignore' },
  );
  return { certFile, keyFile };
}

/** Greeting of an implicit-TLS connection, and the certificate's CN. */
function connectTls(port: number): Promise<{ greeting: string; cn: string }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
      const cn = String(socket.getPeerCertificate().subject?.CN ?? '');
      socket.once('data', (chunk: Buffer) => {
        socket.destroy();
        resolve({ greeting: chunk.toString('latin1'), cn });
      });
    });
    socket.once('error', reject);
  });
}

/** openssl s_client with the given lines on its standard input; resolves with what it printed. */
function sClient(args: string[], input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      'openssl',
      ['s_client', '-quiet', '-crlf', ...args],
      { timeout: 20_000 },
      (err, stdout) => {
        if (err && !stdout) reject(err);
        else resolve(stdout);
      },
    );
    child.stdin?.end(input);
  });
}

describe('IMAP over TLS', () => {
  let dir: string;
  let provider: TlsProvider;
  let server: ImapServer;
  let plainPort: number;
  let tlsPort: number;
  let first: { certFile: string; keyFile: string };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'imap-tls-'));
    first = makePair(dir, 'first.test');
    provider = await TlsProvider.load({ ...first, hostname: 'imap.test', dataDir: dir, pollMs: 50 }, logger);
    const store = new MemoryMailbox();
    await store.deliver('bob@example.com', 'Subject: over TLS\n\nhello\n');
    server = createImapServer({
      mailbox: store,
      auth: new MemoryAuthenticator({ 'bob@example.com': 'secret' }),
      logger,
      hostname: 'imap.test',
      allowPlaintextAuth: false,
      tls: provider,
    });
    plainPort = await server.listen(0, '127.0.0.1');
    tlsPort = await server.listenTls(0, '127.0.0.1');
  });

  after(async () => {
    await server.close();
    provider.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('speaks IMAP over implicit TLS from the first byte, with AUTH and without STARTTLS', async () => {
    const { greeting, cn } = await connectTls(tlsPort);
    assert.equal(cn, 'first.test');
    assert.match(greeting, /^\* OK \[CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN AUTH=LOGIN SASL-IR /);
    assert.doesNotMatch(greeting, /STARTTLS/);
    const out = await sClient(
      ['-connect', `127.0.0.1:${tlsPort}`, '-CAfile', first.certFile, '-verify_return_error'],
      'a LOGIN bob@example.com secret\nb SELECT INBOX\nc FETCH 1 BODY[TEXT]\nd LOGOUT\n',
    );
    assert.match(out, /a OK \[CAPABILITY [^\]]*\] Logged in/);
    assert.match(out, /\* 1 FETCH \(BODY\[TEXT\] \{7\}\r\nhello\r\n/);
    assert.match(out, /d OK LOGOUT completed/);
  });

  it('offers STARTTLS on the plain port and upgrades (openssl s_client -starttls imap)', async () => {
    const out = await sClient(
      [
        '-starttls',
        'imap',
        '-connect',
        `127.0.0.1:${plainPort}`,
        '-CAfile',
        first.certFile,
        '-verify_return_error',
      ],
      'a CAPABILITY\nb LOGIN bob@example.com secret\nc LOGOUT\n',
    );
    assert.match(out, /\* CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN/);
    assert.doesNotMatch(out, /\* CAPABILITY [^\r]*STARTTLS/);
    assert.match(out, /b OK \[CAPABILITY/);
  });

  it('serves a rotated certificate to new connections without a restart', async () => {
    const second = makePair(dir, 'second.test');
    renameSync(second.certFile, first.certFile);
    renameSync(second.keyFile, first.keyFile);
    await until('the new certificate', async () => (await connectTls(tlsPort)).cn === 'second.test', 10_000);
    // STARTTLS too: the session is only verified against the new certificate.
    const out = await sClient(
      [
        '-starttls',
        'imap',
        '-connect',
        `127.0.0.1:${plainPort}`,
        '-CAfile',
        first.certFile,
        '-verify_return_error',
      ],
      'a LOGOUT\n',
    );
    assert.match(out, /a OK LOGOUT completed/);
  });
});
