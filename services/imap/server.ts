/**
 * The IMAP listeners: the plain port (143, STARTTLS offered per RFC 9051 6.2.1) and the
 * implicit-TLS port (993, RFC 8314 3.3: TLS from the first byte). Each accepted connection runs
 * one ImapSession. Storage and authentication are passed in; nothing here knows NATS or the blob
 * store. A rotated certificate applies to the next handshake on both ports.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { Authenticator, MailboxClient } from '../core/mailbox-api.ts';
import { resolveLimits } from './limits.ts';
import type { ImapLimits } from './limits.ts';
import { ImapSession } from './session.ts';
import { MessageCache } from './message-cache.ts';

export interface ImapServerOptions {
  mailbox: MailboxClient;
  auth: Authenticator;
  logger: Logger;
  /** Name in the greeting and BYE responses. */
  hostname: string;
  /** Allows LOGIN and AUTHENTICATE PLAIN/LOGIN without TLS from non-loopback peers. */
  allowPlaintextAuth: boolean;
  /** Peers whose connections count as secure without TLS (default: loopback). */
  trustedPeer?: (address: string | undefined) => boolean;
  /** Autologout after this much inactivity (default 30 minutes, RFC 9051 5.4). */
  idleTimeoutMs?: number;
  /**
   * Certificate and key for STARTTLS and the implicit-TLS port: fixed options, or a source that
   * emits 'change' on rotation (services/core/tls.ts). Without it STARTTLS is not offered.
   */
  tls?: tls.SecureContextOptions | TlsSource;
  /** Overrides of the limits in limits.ts. */
  limits?: Partial<ImapLimits>;
}

/** The current certificate, replaced on rotation (TlsProvider fits). */
export interface TlsSource {
  readonly options: tls.SecureContextOptions;
  readonly context: tls.SecureContext;
  on(event: 'change', listener: () => void): unknown;
  off(event: 'change', listener: () => void): unknown;
}

function isTlsSource(value: tls.SecureContextOptions | TlsSource): value is TlsSource {
  return 'context' in value && typeof (value as TlsSource).on === 'function';
}

/** RFC 8314 3.3: a peer that does not finish its handshake in this time is dropped. */
const TLS_HANDSHAKE_TIMEOUT_MS = 30_000;

export interface ImapServer {
  /** Starts the plain listener; resolves with the actual port (useful with port 0). */
  listen(port: number, host: string): Promise<number>;
  /** Starts the implicit-TLS listener (needs `tls`); resolves with the actual port. */
  listenTls(port: number, host: string): Promise<number>;
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
  const source = options.tls ? (isTlsSource(options.tls) ? options.tls : staticTls(options.tls)) : undefined;
  const logger = options.logger;
  const sessions = new Set<ImapSession>();
  const messages = new MessageCache(limits);
  let closing = false;

  const serve = (socket: net.Socket): void => {
    if (closing) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const session = new ImapSession(socket, {
      storage: options.mailbox,
      auth: options.auth,
      logger,
      hostname: options.hostname,
      allowPlaintextAuth: options.allowPlaintextAuth,
      trustedPeer: options.trustedPeer,
      limits,
      messages,
      ...(source ? { tls: () => source.context } : {}),
    });
    sessions.add(session);
    void session.done.then(() => sessions.delete(session));
    session.start();
  };

  const plain = net.createServer(serve);
  plain.on('error', (error) => logger.error({ err: error }, 'imap listener error'));
  let secure: tls.Server | null = null;
  const onRotate = (): void => {
    if (secure && source) secure.setSecureContext({ ...source.options, ...SERVER_TLS });
  };

  const listenOn = (server: net.Server, port: number, host: string, what: string): Promise<number> =>
    new Promise((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
        const address = server.address();
        const actual = typeof address === 'object' && address ? address.port : port;
        logger.info({ host, port: actual }, `${what} listening`);
        resolve(actual);
      });
    });

  const closeServer = (server: net.Server | null): Promise<void> =>
    new Promise((resolve) => {
      if (!server?.listening) resolve();
      else server.close(() => resolve());
    });

  return {
    listen(port, host) {
      return listenOn(plain, port, host, 'imap');
    },
    listenTls(port, host) {
      if (!source) return Promise.reject(new Error('the implicit-TLS port needs a certificate'));
      secure = tls.createServer(
        { ...source.options, ...SERVER_TLS, handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS },
        serve,
      );
      // A failed handshake is the peer's problem, not the listener's.
      // With a tlsClientError listener Node no longer destroys the socket itself: do it, or a client
      // that never finishes its handshake holds the connection forever.
      secure.on('tlsClientError', (error, socket) => {
        logger.debug({ err: error }, 'imaps handshake failed');
        socket.destroy();
      });
      secure.on('error', (error) => logger.error({ err: error }, 'imaps listener error'));
      source.on('change', onRotate);
      return listenOn(secure, port, host, 'imaps');
    },
    async close() {
      closing = true;
      source?.off('change', onRotate);
      const closed = Promise.all([closeServer(plain), closeServer(secure)]);
      await Promise.all([...sessions].map((session) => session.shutdown()));
      await Promise.all([...sessions].map((session) => session.done));
      await closed;
    },
    sessions() {
      return sessions.size;
    },
  };
}

/** Server-side TLS settings on top of the certificate: no client certificates asked for. */
const SERVER_TLS: tls.TlsOptions = { requestCert: false };

/** Fixed options as a source that never rotates. */
function staticTls(options: tls.SecureContextOptions): TlsSource {
  const context = tls.createSecureContext(options);
  return { options, context, on: () => undefined, off: () => undefined };
}
