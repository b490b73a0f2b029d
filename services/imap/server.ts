/**
 * The IMAP listeners: the plain port (143, STARTTLS offered per RFC 9051 6.2.1) and the
 * implicit-TLS port (993, RFC 8314 3.3: TLS from the first byte). Each accepted connection runs
 * one ImapSession. Storage and authentication are passed in; nothing here knows NATS or the blob
 * store. A rotated certificate applies to the next handshake on both ports. Behind a load balancer,
 * either port can take a PROXY protocol header from trusted sources (services/core/net.ts).
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { acceptor, type Acceptor, type ProxyProtocolOptions } from '../core/net.ts';
import type { Authenticator, MailboxClient } from '../core/mailbox-api.ts';
import { authenticatorFor } from '../core/auth-throttle.ts';
import { resolveLimits } from './limits.ts';
import type { ImapLimits } from './limits.ts';
import { ImapSession, type ImapHooks } from './session.ts';
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
  /** Tracing and metrics of the sessions. */
  hooks?: ImapHooks;
  /**
   * PROXY protocol from trusted load balancers, per listener: the session sees the client of the
   * header (logs, and `trustedPeer`, which then judges the real client, not the balancer).
   */
  proxyProtocol?: { plain?: ProxyProtocolOptions | undefined; tls?: ProxyProtocolOptions | undefined };
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

  const openPerIp = new Map<string, number>();
  const serve = (socket: net.Socket, client?: { remoteAddress: string }): void => {
    if (closing) {
      socket.destroy();
      return;
    }
    // Behind a PROXY-protocol balancer the client is the one of the header, not the socket's peer.
    const ip = client?.remoteAddress ?? socket.remoteAddress ?? '';
    const open = openPerIp.get(ip) ?? 0;
    if (sessions.size >= limits.maxConnections || open >= limits.maxConnectionsPerIp) {
      // RFC 9051 7.1.5: BYE as the greeting of a connection the server will not serve.
      logger.warn({ ip, open, sessions: sessions.size }, 'imap connection limit reached');
      socket.on('error', () => socket.destroy());
      socket.setTimeout(limits.shutdownGraceMs, () => socket.destroy());
      socket.end('* BYE [UNAVAILABLE] Too many connections, try again later\r\n');
      return;
    }
    openPerIp.set(ip, open + 1);
    socket.setNoDelay(true);
    const session = new ImapSession(socket, {
      storage: options.mailbox,
      // AUTH failures are counted per client address across connections (core/auth-throttle.ts).
      auth: authenticatorFor(options.auth, ip),
      logger,
      hostname: options.hostname,
      allowPlaintextAuth: options.allowPlaintextAuth,
      trustedPeer: options.trustedPeer,
      limits,
      messages,
      hooks: options.hooks,
      ...(source ? { tls: () => source.context } : {}),
    });
    sessions.add(session);
    void session.done.then(() => {
      sessions.delete(session);
      const left = (openPerIp.get(ip) ?? 1) - 1;
      if (left > 0) openPerIp.set(ip, left);
      else openPerIp.delete(ip);
    });
    session.start();
  };

  const acceptPlain = acceptor({ name: 'imap', logger, proxy: options.proxyProtocol?.plain }, serve);
  const plain = net.createServer(acceptPlain);
  plain.on('error', (error) => logger.error({ err: error }, 'imap listener error'));
  let secure: net.Server | null = null;
  let acceptSecure: Acceptor | null = null;

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
      // RFC 8314 3.3: TLS from the first byte — after the PROXY header, when a balancer sends one.
      // The context is read per connection, so a rotated certificate applies to the next handshake.
      acceptSecure = acceptor(
        {
          name: 'imaps',
          logger,
          proxy: options.proxyProtocol?.tls,
          tls: { context: () => source.context, handshakeTimeoutMs: TLS_HANDSHAKE_TIMEOUT_MS },
        },
        serve,
      );
      secure = net.createServer(acceptSecure);
      secure.on('error', (error) => logger.error({ err: error }, 'imaps listener error'));
      return listenOn(secure, port, host, 'imaps');
    },
    async close() {
      closing = true;
      const closed = Promise.all([closeServer(plain), closeServer(secure)]);
      acceptPlain.close();
      acceptSecure?.close();
      await Promise.all([...sessions].map((session) => session.shutdown()));
      await Promise.all([...sessions].map((session) => session.done));
      await closed;
    },
    sessions() {
      return sessions.size;
    },
  };
}

/** Fixed options as a source that never rotates. */
function staticTls(options: tls.SecureContextOptions): TlsSource {
  const context = tls.createSecureContext(options);
  return { options, context, on: () => undefined, off: () => undefined };
}
