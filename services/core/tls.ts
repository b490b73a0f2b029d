/**
 * TLS material for every listener (SMTP STARTTLS and 465, IMAP STARTTLS and 993, POP3 STLS and 995).
 *
 * Certificate and key come from PEM files (TLS_CERT_FILE, TLS_KEY_FILE) and are reloaded when the
 * files change, as when cert-manager rotates a Secret volume (the kubelet swaps a symlink, so the
 * files are polled by stat rather than watched by inode). Without files, a self-signed pair for
 * POSTINO_HOSTNAME is generated once under POSTINO_DATA_DIR/tls and reused.
 *
 * Protocol floor TLS 1.2, and only AEAD ciphers with forward secrecy (Mozilla "intermediate").
 */
import { EventEmitter } from 'node:events';
import { chmodSync, existsSync, mkdirSync, readFileSync, unwatchFile, watchFile } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { gauge } from './metrics.ts';

const certExpiry = gauge(
  'postino_tls_certificate_expiry_timestamp_seconds',
  'When the served TLS certificate expires (Unix seconds)',
  ['subject'],
);
import type { Logger } from 'pino';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Mozilla intermediate configuration (TLS 1.2 part; TLS 1.3 suites are always AEAD). */
export const TLS_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
  'DHE-RSA-AES128-GCM-SHA256',
  'DHE-RSA-AES256-GCM-SHA384',
].join(':');

export const TLS_MIN_VERSION = 'TLSv1.2' as const;

/** How often the certificate files are checked for a change. */
const POLL_MS = 10_000;

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

/** Holds the current certificate; emits 'change' after a reload. */
export class TlsProvider extends EventEmitter {
  #options: SecureContextOptions;
  #context: SecureContext;
  readonly #files: TlsFiles;
  readonly #logger: Logger;

  private constructor(files: TlsFiles, logger: Logger) {
    super();
    this.#files = files;
    this.#logger = logger;
    this.#options = TlsProvider.#read(files);
    this.#context = createSecureContext(this.#options);
    exportExpiry(this.#options);
  }

  static #read(files: TlsFiles): SecureContextOptions {
    return {
      cert: readFileSync(files.certFile),
      key: readFileSync(files.keyFile),
      minVersion: TLS_MIN_VERSION,
      ciphers: TLS_CIPHERS,
      honorCipherOrder: true,
    };
  }

  /**
   * Loads the configured files, or generates (once) a self-signed pair for `hostname` in
   * `dataDir/tls` when no files are configured.
   */
  static async load(
    opts: { certFile: string; keyFile: string; hostname: string; dataDir: string; pollMs?: number },
    logger: Logger,
  ): Promise<TlsProvider> {
    let files: TlsFiles;
    if (opts.certFile || opts.keyFile) {
      if (!opts.certFile || !opts.keyFile) throw new Error('TLS_CERT_FILE and TLS_KEY_FILE go together');
      files = { certFile: opts.certFile, keyFile: opts.keyFile };
    } else {
      files = await selfSigned(opts.hostname, join(opts.dataDir, 'tls'), logger);
    }
    const provider = new TlsProvider(files, logger);
    provider.#watch(opts.pollMs ?? POLL_MS);
    return provider;
  }

  /** Options for `tls.createServer` / `new TLSSocket` (the current certificate). */
  get options(): SecureContextOptions {
    return this.#options;
  }

  /** The current secure context, for upgrading a socket (STARTTLS/STLS). */
  get context(): SecureContext {
    return this.#context;
  }

  #watch(pollMs: number): void {
    const onChange = () => {
      try {
        const next = TlsProvider.#read(this.#files);
        const context = createSecureContext(next);
        this.#options = next;
        this.#context = context;
        exportExpiry(next);
        this.#logger.info({ cert: this.#files.certFile }, 'TLS certificate reloaded');
        this.emit('change', context);
      } catch (err) {
        // A half-written rotation: keep serving the old pair, the next poll retries.
        this.#logger.warn(
          { err, cert: this.#files.certFile },
          'TLS certificate reload failed; keeping the previous one',
        );
      }
    };
    for (const f of [this.#files.certFile, this.#files.keyFile]) {
      watchFile(f, { interval: pollMs, persistent: false }, (cur, prev) => {
        if (cur.mtimeMs !== prev.mtimeMs || cur.ino !== prev.ino || cur.size !== prev.size) onChange();
      });
    }
  }

  close(): void {
    unwatchFile(this.#files.certFile);
    unwatchFile(this.#files.keyFile);
    this.removeAllListeners();
  }
}

function exportExpiry(options: SecureContextOptions): void {
  try {
    const cert = new X509Certificate(options.cert as Buffer);
    certExpiry.reset();
    certExpiry.set(
      { subject: cert.subject.replace(/\n/g, ', ') },
      Math.floor(Date.parse(cert.validTo) / 1000),
    );
  } catch {
    // A chain the X509 parser cannot read still serves; only the metric is missing.
    certExpiry.reset();
  }
}

async function selfSigned(hostname: string, dir: string, logger: Logger): Promise<TlsFiles> {
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  if (existsSync(certFile) && existsSync(keyFile)) return { certFile, keyFile };
  mkdirSync(dir, { recursive: true });
  // openssl (Debian package openssl) makes an EC P-256 pair valid for 825 days.
  try {
    await run('openssl', [
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
      '825',
      '-subj',
      `/CN=${hostname}`,
      '-addext',
      `subjectAltName=DNS:${hostname},DNS:localhost,IP:127.0.0.1`,
      '-addext',
      'extendedKeyUsage=serverAuth',
    ]);
  } catch (err) {
    throw new Error(
      `no TLS_CERT_FILE/TLS_KEY_FILE and no self-signed pair could be made with openssl (install openssl or set the files): ${(err as Error).message}`,
      { cause: err },
    );
  }
  chmodSync(keyFile, 0o600);
  logger.warn(
    { certFile },
    'no TLS_CERT_FILE/TLS_KEY_FILE: generated a self-signed certificate (clients will not trust it)',
  );
  return { certFile, keyFile };
}
