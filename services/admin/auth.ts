/**
 * Who may use the admin API: a client that presents `Authorization: Bearer <ADMIN_TOKEN>`
 * (compared in constant time), or, with no token configured, only a client on loopback.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { isLoopback } from '../core/net.ts';

export function adminAuthorizer(token: string): (req: IncomingMessage) => boolean {
  const want = Buffer.from(`Bearer ${token}`);
  return (req) => {
    if (!token) return isLoopback(req.socket.remoteAddress ?? '');
    const given = Buffer.from(req.headers.authorization ?? '');
    return given.length === want.length && timingSafeEqual(given, want);
  };
}
