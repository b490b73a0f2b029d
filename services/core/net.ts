/**
 * What the SMTP, IMAP and POP3 listeners share about their connections: who the client is (the
 * PROXY protocol header of a trusted load balancer, services/core/proxy-protocol.ts), and the TLS
 * handshake of the implicit-TLS ports (465, 993, 995), which starts only after that header.
 */
import { isIP, type Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import {
  acceptProxied,
  HEADER_TIMEOUT_MS,
  ProxyProtocolError,
  reportClient,
  TrustedSources,
  type ClientInfo,
} from './proxy-protocol.ts';

/** Loopback peers may authenticate without TLS (as Dovecot treats local connections as secure). */
export function isLoopback(ip: string): boolean {
  const a = ip.replace(/^::ffff:/, '');
  return a === '::1' || (isIP(a) === 4 && a.startsWith('127.'));
}

/** The listeners that can take a PROXY header (PROXY_PROTOCOL_LISTENERS). */
export const PROXY_LISTENERS = ['smtp', 'submission', 'smtps', 'imap', 'imaps', 'pop3', 'pop3s'] as const;
export type ListenerName = (typeof PROXY_LISTENERS)[number];

/** PROXY protocol on one listener. */
export interface ProxyProtocolOptions {
  /** Balancers whose connections must start with a PROXY header; nobody else's header counts. */
  trusted: TrustedSources;
  /** Time a trusted peer gets to send a complete header (default 10 s). */
  timeoutMs?: number;
}

/** The PROXY settings of `listener` from the configuration, or undefined when it takes no header. */
export function proxyProtocolFor(
  config: { proxyTrusted: string[]; proxyListeners: string[]; proxyTimeout: number },
  listener: ListenerName,
): ProxyProtocolOptions | undefined {
  if (config.proxyTrusted.length === 0 || !config.proxyListeners.includes(listener)) return undefined;
  return { trusted: new TrustedSources(config.proxyTrusted), timeoutMs: config.proxyTimeout };
}

/** The part of a pino logger used here. */
interface Log {
  debug(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface AcceptOptions {
  /** Listener name, in logs. */
  name: string;
  logger: Log;
  /** Read a PROXY header from trusted balancers first. */
  proxy?: ProxyProtocolOptions | undefined;
  /** Implicit TLS (RFC 8314 3.3): the handshake, with the context current at each connection. */
  tls?: { context: () => SecureContext; handshakeTimeoutMs: number } | undefined;
}

/** A listener's 'connection' handler. */
export interface Acceptor {
  (socket: Socket): void;
  /** Drops the connections still waiting for their PROXY header or TLS handshake. */
  close(): void;
}

/**
 * The 'connection' handler of a plain `net.Server`: takes the PROXY header from a trusted balancer
 * (when `proxy` is set), then on an implicit-TLS listener runs the TLS handshake over the same
 * socket — the header comes before the ClientHello, so a `tls.Server` cannot read it — and hands
 * `serve` the socket the session speaks over (the TLSSocket on a TLS port), reporting the client's
 * address and port. A bad or missing header, or a failed handshake, closes that connection only.
 *
 * On an untrusted peer's connection nothing is read: a PROXY header it sends is protocol input like
 * any other (a syntax error in SMTP, IMAP and POP3, a failed handshake on a TLS port). The header
 * spec (§2) requires receivers never to guess whether one is present; here the source address,
 * not the bytes, decides, so clients inside the cluster that bypass the balancer keep working and
 * no client can forge its address.
 */
export function acceptor(
  options: AcceptOptions,
  serve: (socket: Socket, client: ClientInfo) => void,
): Acceptor {
  const pending = new Set<Socket>();
  const { logger, name } = options;

  const startTls = (raw: Socket, client: ClientInfo): void => {
    const tls = options.tls;
    if (!tls) return;
    // Built on the socket (not its handle's bytes): anything read past the PROXY header and put
    // back with unshift() is the start of the ClientHello.
    const secure = new TLSSocket(raw, { isServer: true, secureContext: tls.context(), requestCert: false });
    if (client.proxy) reportClient(secure, client);
    // A total deadline, not an inactivity timeout: a client trickling its handshake is dropped too.
    const timer = setTimeout(() => {
      logger.debug({ listener: name, ip: client.remoteAddress }, 'TLS handshake timed out');
      secure.destroy();
    }, tls.handshakeTimeoutMs);
    const onError = (err: Error): void => {
      logger.debug({ err, listener: name, ip: client.remoteAddress }, 'TLS handshake failed');
      secure.destroy();
    };
    secure.on('error', onError);
    secure.once('close', () => {
      clearTimeout(timer);
      pending.delete(raw);
    });
    secure.once('secure', () => {
      clearTimeout(timer);
      pending.delete(raw);
      serve(secure, client);
      secure.off('error', onError);
    });
  };

  const accept = ((raw: Socket) => {
    // An error before the session owns the socket must not reach the process as unhandled.
    raw.on('error', () => raw.destroy());
    const peer = raw.remoteAddress ?? '';
    if (!options.proxy && !options.tls) {
      serve(raw, { remoteAddress: peer, remotePort: raw.remotePort ?? 0 });
      return;
    }
    pending.add(raw);
    raw.once('close', () => pending.delete(raw));
    const ready = options.proxy
      ? acceptProxied(raw, options.proxy.trusted, options.proxy.timeoutMs ?? HEADER_TIMEOUT_MS)
      : Promise.resolve<ClientInfo>({ remoteAddress: peer, remotePort: raw.remotePort ?? 0 });
    ready.then(
      (client) => {
        if (raw.destroyed) return;
        if (options.tls) return startTls(raw, client);
        pending.delete(raw);
        serve(raw, client);
      },
      (err: Error) => {
        pending.delete(raw);
        // A balancer's TCP health check opens and closes without a header: not worth a warning.
        const quiet = !(err instanceof ProxyProtocolError) || /closed before/.test(err.message);
        (quiet ? logger.debug : logger.warn).call(
          logger,
          { err, listener: name, balancer: peer },
          'PROXY protocol header missing or invalid; connection closed',
        );
      },
    );
  }) as Acceptor;
  accept.close = () => {
    for (const socket of pending) socket.destroy();
    pending.clear();
  };
  return accept;
}
