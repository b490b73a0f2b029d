/**
 * The IMAP listener: accepts connections and runs one ImapSession per connection.
 * Storage and authentication are passed in; nothing here knows NATS or the blob store.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { Authenticator, MailboxClient } from '../core/mailbox-api.ts';
import { resolveLimits } from './limits.ts';
import type { ImapLimits } from './limits.ts';
import { ImapSession } from './session.ts';

export interface ImapServerOptions {
  mailbox: MailboxClient;
  auth: Authenticator;
  logger: Logger;
  /** Name in the greeting and BYE responses. */
  hostname: string;
  /** Allows LOGIN and AUTHENTICATE PLAIN/LOGIN without TLS from non-loopback peers. */
  allowPlaintextAuth: boolean;
  /** Autologout after this much inactivity (default 30 minutes, RFC 9051 5.4). */
  idleTimeoutMs?: number;
  /** Certificate and key for STARTTLS; without it STARTTLS is not offered. */
  tls?: tls.SecureContextOptions;
  /** Overrides of the limits in limits.ts. */
  limits?: Partial<ImapLimits>;
}

export interface ImapServer {
  /** Starts listening; resolves with the actual port (useful with port 0). */
  listen(port: number, host: string): Promise<number>;
  /** Stops accepting, tells every session `* BYE` and closes it. */
  close(): Promise<void>;
  /** Number of open sessions. */
  sessions(): number;
}

export function createImapServer(options: ImapServerOptions): ImapServer {
  const limits = resolveLimits({
    ...options.limits,
    ...(options.idleTimeoutMs !== undefined ? { idleTimeoutMs: options.idleTimeoutMs } : {}),
  });
  const secureContext = options.tls ? tls.createSecureContext(options.tls) : undefined;
  const logger = options.logger;
  const sessions = new Set<ImapSession>();

  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    const session = new ImapSession(socket, {
      storage: options.mailbox,
      auth: options.auth,
      logger,
      hostname: options.hostname,
      allowPlaintextAuth: options.allowPlaintextAuth,
      limits,
      ...(secureContext ? { tls: secureContext } : {}),
    });
    sessions.add(session);
    void session.done.then(() => sessions.delete(session));
    session.start();
  });
  server.on('error', (error) => logger.error({ err: error }, 'imap listener error'));

  return {
    listen(port, host) {
      return new Promise((resolve, reject) => {
        const onError = (error: Error): void => reject(error);
        server.once('error', onError);
        server.listen(port, host, () => {
          server.off('error', onError);
          const address = server.address();
          const actual = typeof address === 'object' && address ? address.port : port;
          logger.info({ host, port: actual }, 'imap listening');
          resolve(actual);
        });
      });
    },
    async close() {
      const closed = new Promise<void>((resolve) => {
        if (!server.listening) resolve();
        else server.close(() => resolve());
      });
      await Promise.all([...sessions].map((session) => session.shutdown()));
      await Promise.all([...sessions].map((session) => session.done));
      await closed;
    },
    sessions() {
      return sessions.size;
    },
  };
}
