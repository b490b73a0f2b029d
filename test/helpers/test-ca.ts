/**
 * A throwaway certificate authority for TLS tests, made with the real openssl in a temporary
 * folder: EC P-256 keys, two days of validity. Nothing here is a mock.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

export class TestCa {
  readonly dir: string;

  /** Makes the CA (ca.key, ca.pem) with the common name `cn`, in `dir` or a new temporary folder. */
  constructor(cn: string, dir = mkdtempSync(join(tmpdir(), 'postino-ca-'))) {
    this.dir = dir;
    openssl(
      'req',
      '-x509',
      ...ecKey,
      '-keyout',
      this.file('ca.key'),
      '-out',
      this.file('ca.pem'),
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    );
  }

  /** A path in the CA's folder: ca.pem, or `name`.key and `name`.pem of a certificate. */
  file(name: string): string {
    return join(this.dir, name);
  }

  /**
   * A key and certificate (`name`.key, `name`.pem) signed by the CA, for subjectAltName entries
   * such as 'DNS:mx.example.test' or 'IP:127.0.0.1'; the first one, without its type, is the CN.
   */
  issue(name: string, altNames: string[]): void {
    openssl(
      'req',
      ...ecKey,
      '-keyout',
      this.file(`${name}.key`),
      '-out',
      this.file(`${name}.csr`),
      '-subj',
      `/CN=${(altNames[0] ?? name).replace(/^\w+:/, '')}`,
    );
    writeFileSync(this.file(`${name}.ext`), `subjectAltName=${altNames.join(',')}\n`);
    openssl(
      'x509',
      '-req',
      '-in',
      this.file(`${name}.csr`),
      '-CA',
      this.file('ca.pem'),
      '-CAkey',
      this.file('ca.key'),
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      this.file(`${name}.ext`),
      '-out',
      this.file(`${name}.pem`),
    );
  }

  /** A self-signed key and certificate (`name`.key, `name`.pem): no chain to this or any CA. */
  selfSigned(name: string, altNames: string[]): void {
    openssl(
      'req',
      '-x509',
      ...ecKey,
      '-keyout',
      this.file(`${name}.key`),
      '-out',
      this.file(`${name}.pem`),
      '-days',
      '2',
      '-subj',
      `/CN=${(altNames[0] ?? name).replace(/^\w+:/, '')}`,
      '-addext',
      `subjectAltName=${altNames.join(',')}`,
    );
  }

  /** Removes the CA's folder. */
  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
