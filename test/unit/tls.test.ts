import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { pino } from 'pino';
import { TlsProvider } from '../../services/core/tls.ts';

const logger = pino({ level: 'silent' });

function makePair(dir: string, cn: string): { certFile: string; keyFile: string } {
  const certFile = join(dir, `${cn}.crt`);
  const keyFile = join(dir, `${cn}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '1',
      '-subj',
      `/CN=${cn}`,
    ],
    { stdio: 'ignore' },
  );
  return { certFile, keyFile };
}

test('without files a self-signed pair for the host name is made once and reused', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'postino-tls-'));
  const a = await TlsProvider.load(
    { certFile: '', keyFile: '', hostname: 'mx.example.test', dataDir },
    logger,
  );
  const cert = new X509Certificate(a.options.cert as Buffer);
  assert.match(cert.subject, /CN=mx\.example\.test/);
  assert.match(cert.subjectAltName ?? '', /DNS:mx\.example\.test/);
  assert.equal(a.options.minVersion, 'TLSv1.2');
  const b = await TlsProvider.load(
    { certFile: '', keyFile: '', hostname: 'mx.example.test', dataDir },
    logger,
  );
  assert.deepEqual(b.options.cert, a.options.cert);
  a.close();
  b.close();
});

test('a rotated certificate (the Secret volume swapped) is picked up without a restart', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postino-tls-'));
  const first = makePair(dir, 'first');
  const provider = await TlsProvider.load({ ...first, hostname: 'x', dataDir: dir, pollMs: 50 }, logger);
  assert.match(new X509Certificate(provider.options.cert as Buffer).subject, /CN=first/);
  const second = makePair(dir, 'second');
  const changed = once(provider, 'change');
  // Replace both files atomically, as the kubelet does.
  renameSync(second.keyFile, first.keyFile);
  renameSync(second.certFile, first.certFile);
  await changed;
  assert.match(new X509Certificate(provider.options.cert as Buffer).subject, /CN=second/);
  assert.deepEqual(provider.options.cert, readFileSync(first.certFile));
  provider.close();
});

test('only one of the two files is a configuration error', async () => {
  await assert.rejects(
    TlsProvider.load({ certFile: '/x.pem', keyFile: '', hostname: 'x', dataDir: '/tmp' }, logger),
    /TLS_CERT_FILE and TLS_KEY_FILE go together/,
  );
});
