/**
 * The POP3 listener: accepts connections and runs one Pop3Session per connection.
 */
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { Authenticator, MailboxClient, MaildropLock } from '../core/mailbox-api.ts';
import { resolveLimits, type Pop3Limits } from './limits.ts';
import { Pop3Session } from './session.ts';

export interface Pop3ServerOptions {
  mailbox: MailboxClient;
  auth: Authenticator;
  lock: MaildropLock;
  logger: Logger;
  /** Name in the greeting and the sign-off. */
  hostname: string;
  /** Allow USER/PASS and SASL PLAIN without TLS from any peer (loopback peers always may). */
  allowPlaintextAuth: boolean;
  /** RETR sets \Seen on the message. */
  retrSetsSeen: boolean;
  /** Inactivity autologout; default 10 minutes (RFC 1939 section 3). */
  idleTimeoutMs?: number;
  /** Offers STLS (RFC 2595) with this certificate and key. */
  tls?: SecureContextOptions;
  /** Overrides of the limits in limits.ts. */
  limits?: Partial<Pop3Limits>;
}

export interface Pop3Server {
  /** Starts listening; resolves with the port actually bound (useful with port 0). */
  listen(port: number, host: string): Promise<number>;
  /** Stops accepting, ends every session without the UPDATE state (nothing deleted), releases locks. */
  close(): Promise<void>;
  /** Number of open sessions. */
  sessions(): number;
}

export function createPop3Server(options: Pop3ServerOptions): Pop3Server {
  const limits = resolveLimits({
    ...options.limits,
    ...(options.idleTimeoutMs === undefined ? {} : { idleTimeoutMs: options.idleTimeoutMs }),
  });
  const secureContext = options.tls ? createSecureContext(options.tls) : null;
  const logger = options.logger;
  const sessions = new Set<Pop3Session>();
  let closing = false;

  const refuse = (socket: Socket, text: string): void => {
    // RFC 2449 section 8.1.2 / RFC 3206: [SYS/TEMP], the client may try again later.
    socket.on('error', (error) => logger.debug({ err: error }, 'refused connection error'));
    socket.setTimeout(limits.shutdownGraceMs, () => socket.destroy());
    socket.end(`-ERR [SYS/TEMP] ${text}\r\n`);
  };

  // allowHalfOpen: a client that sends its last commands and closes its side still gets replies.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    if (closing) {
      refuse(socket, 'server shutting down');
      return;
    }
    if (sessions.size >= limits.maxConnections) {
      logger.warn({ sessions: sessions.size }, 'connection limit reached');
      refuse(socket, 'too many connections, try again later');
      return;
    }
    const session = new Pop3Session(socket, {
      mailbox: options.mailbox,
      auth: options.auth,
      lock: options.lock,
      logger,
      hostname: options.hostname,
      allowPlaintextAuth: options.allowPlaintextAuth,
      retrSetsSeen: options.retrSetsSeen,
      secureContext,
      limits,
    });
    sessions.add(session);
    void session.done.then(() => sessions.delete(session));
    session.start();
  });
  server.on('error', (error) => logger.error({ err: error }, 'listener error'));

  return {
    listen(port, host) {
      return new Promise((resolve, reject) => {
        const onError = (error: Error): void => reject(error);
        server.once('error', onError);
        server.listen(port, host, () => {
          server.off('error', onError);
          const address = server.address() as AddressInfo;
          logger.debug({ host, port: address.port }, 'POP3 listening');
          resolve(address.port);
        });
      });
    },
    async close() {
      closing = true;
      const stopped = new Promise<void>((resolve) => {
        if (!server.listening) {
          resolve();
          return;
        }
        server.close(() => resolve());
      });
      await Promise.all([...sessions].map((session) => session.shutdown()));
      await stopped;
    },
    sessions() {
      return sessions.size;
    },
  };
}
