/**
 * The POP3 listeners: the plain port (110, STLS offered per RFC 2595 section 4) and the
 * implicit-TLS port (995, RFC 8314 section 3.3: TLS from the first byte). Each accepted connection
 * runs one Pop3Session. A rotated certificate applies to the next handshake on both ports. Behind
 * a load balancer, either port can take a PROXY protocol header from trusted sources
 * (services/core/net.ts).
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import type { Logger } from 'pino';
import { acceptor, type Acceptor, type ProxyProtocolOptions } from '../core/net.ts';
import type { Authenticator, MailboxClient, MaildropLock } from '../core/mailbox-api.ts';
import { authenticatorFor } from '../core/auth-throttle.ts';
import { resolveLimits, type Pop3Limits } from './limits.ts';
import { Pop3Session, type Pop3Hooks } from './session.ts';

export interface Pop3ServerOptions {
  mailbox: MailboxClient;
  auth: Authenticator;
  lock: MaildropLock;
  logger: Logger;
  /** Name in the greeting and the sign-off. */
  hostname: string;
  /** Allow USER/PASS and SASL PLAIN without TLS from any peer (loopback peers always may). */
  allowPlaintextAuth: boolean;
  /** Peers whose connections count as secure without TLS (default: loopback, as Dovecot does). */
  trustedPeer?: (address: string | undefined) => boolean;
  /** RETR sets \Seen on the message. */
  retrSetsSeen: boolean;
  /** Inactivity autologout; default 10 minutes (RFC 1939 section 3). */
  idleTimeoutMs?: number;
  /**
   * Certificate and key for STLS (RFC 2595) and the implicit-TLS port: fixed options, or a source
   * that emits 'change' on rotation (services/core/tls.ts). Without it STLS is not offered.
   */
  tls?: SecureContextOptions | TlsSource;
  /** Overrides of the limits in limits.ts. */
  limits?: Partial<Pop3Limits>;
  /** Tracing and metrics around each command. */
  hooks?: Pop3Hooks;
  /**
   * PROXY protocol from trusted load balancers, per listener: the session sees the client of the
   * header (logs, and `trustedPeer`, which then judges the real client, not the balancer).
   */
  proxyProtocol?: { plain?: ProxyProtocolOptions | undefined; tls?: ProxyProtocolOptions | undefined };
}

/** The current certificate, replaced on rotation (TlsProvider fits). */
export interface TlsSource {
  readonly options: SecureContextOptions;
  readonly context: SecureContext;
  on(event: 'change', listener: () => void): unknown;
  off(event: 'change', listener: () => void): unknown;
}

function isTlsSource(value: SecureContextOptions | TlsSource): value is TlsSource {
  return 'context' in value && typeof (value as TlsSource).on === 'function';
}

/** Fixed options as a source that never rotates. */
function staticTls(options: SecureContextOptions): TlsSource {
  const context = createSecureContext(options);
  return { options, context, on: () => undefined, off: () => undefined };
}

export interface Pop3Server {
  /** Starts the plain listener; resolves with the port actually bound (useful with port 0). */
  listen(port: number, host: string): Promise<number>;
  /** Starts the implicit-TLS listener (needs `tls`); resolves with the port actually bound. */
  listenTls(port: number, host: string): Promise<number>;
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
  const source = options.tls ? (isTlsSource(options.tls) ? options.tls : staticTls(options.tls)) : null;
  const logger = options.logger;
  const sessions = new Set<Pop3Session>();
  let closing = false;

  const refuse = (socket: Socket, text: string): void => {
    // RFC 2449 section 8.1.2 / RFC 3206: [SYS/TEMP], the client may try again later.
    socket.on('error', (error) => logger.debug({ err: error }, 'refused connection error'));
    socket.setTimeout(limits.shutdownGraceMs, () => socket.destroy());
    socket.end(`-ERR [SYS/TEMP] ${text}\r\n`);
  };

  /** One connection; `implicitTls` when it came in on the TLS port, handshake done. */
  const openPerIp = new Map<string, number>();
  const accept = (socket: Socket, implicitTls: boolean, client?: { remoteAddress: string }): void => {
    if (closing) {
      refuse(socket, 'server shutting down');
      return;
    }
    if (sessions.size >= limits.maxConnections) {
      logger.warn({ sessions: sessions.size }, 'connection limit reached');
      refuse(socket, 'too many connections, try again later');
      return;
    }
    // Behind a PROXY-protocol balancer the client is the one of the header, not the socket's peer.
    const ip = client?.remoteAddress ?? socket.remoteAddress ?? '';
    const open = openPerIp.get(ip) ?? 0;
    if (open >= limits.maxConnectionsPerIp) {
      logger.warn({ ip, open }, 'connection limit per address reached');
      refuse(socket, 'too many connections from your address, try again later');
      return;
    }
    openPerIp.set(ip, open + 1);
    // Replies go out in a few writes (status, body, "."): without this, Nagle's algorithm and the
    // peer's delayed ACK hold each RETR back by tens of milliseconds.
    socket.setNoDelay(true);
    const session = new Pop3Session(socket, {
      mailbox: options.mailbox,
      // AUTH failures are counted per client address across connections (core/auth-throttle.ts).
      auth: authenticatorFor(options.auth, ip),
      lock: options.lock,
      logger,
      hostname: options.hostname,
      allowPlaintextAuth: options.allowPlaintextAuth,
      trustedPeer: options.trustedPeer,
      retrSetsSeen: options.retrSetsSeen,
      // Read at STLS time, so a session upgrades with the certificate current then.
      secureContext: source ? () => source.context : null,
      implicitTls,
      limits,
      ...(options.hooks ? { hooks: options.hooks } : {}),
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

  // allowHalfOpen: a client that sends its last commands and closes its side still gets replies.
  const acceptPlain = acceptor(
    { name: 'pop3', logger, proxy: options.proxyProtocol?.plain },
    (socket, client) => accept(socket, false, client),
  );
  const plain = createServer({ allowHalfOpen: true }, acceptPlain);
  plain.on('error', (error) => logger.error({ err: error }, 'listener error'));
  let secure: Server | null = null;
  let acceptSecure: Acceptor | null = null;

  const listenOn = (server: Server, port: number, host: string, what: string): Promise<number> =>
    new Promise((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
        const address = server.address() as AddressInfo;
        logger.debug({ host, port: address.port }, `${what} listening`);
        resolve(address.port);
      });
    });

  const closeServer = (server: Server | null): Promise<void> =>
    new Promise((resolve) => {
      if (!server?.listening) resolve();
      else server.close(() => resolve());
    });

  return {
    listen(port, host) {
      return listenOn(plain, port, host, 'POP3');
    },
    listenTls(port, host) {
      if (!source) return Promise.reject(new Error('the implicit-TLS port needs a certificate'));
      // RFC 8314 section 3.3: TLS from the first byte (after the PROXY header, when a balancer
      // sends one); the greeting comes after the handshake. The context is read per connection, so
      // a rotated certificate applies to the next handshake. A failed or stalled handshake closes
      // that connection only.
      acceptSecure = acceptor(
        {
          name: 'pop3s',
          logger,
          proxy: options.proxyProtocol?.tls,
          tls: { context: () => source.context, handshakeTimeoutMs: limits.tlsHandshakeTimeoutMs },
        },
        (socket, client) => accept(socket, true, client),
      );
      // allowHalfOpen here is inherited by the TLS socket built on each connection.
      secure = createServer({ allowHalfOpen: true }, acceptSecure);
      secure.on('error', (error) => logger.error({ err: error }, 'POP3S listener error'));
      return listenOn(secure, port, host, 'POP3S');
    },
    async close() {
      closing = true;
      const stopped = Promise.all([closeServer(plain), closeServer(secure)]);
      acceptPlain.close();
      acceptSecure?.close();
      await Promise.all([...sessions].map((session) => session.shutdown()));
      await stopped;
    },
    sessions() {
      return sessions.size;
    },
  };
}
