import { isIP } from 'node:net';

/** Loopback peers may authenticate without TLS (as Dovecot treats local connections as secure). */
export function isLoopback(ip: string): boolean {
  const a = ip.replace(/^::ffff:/, '');
  return a === '::1' || (isIP(a) === 4 && a.startsWith('127.'));
}
