/**
 * smtp-ingress: the door of the cluster. SMTP_PORT takes mail for hosted domains from other
 * servers (STARTTLS offered; SPF, DKIM and DMARC checked); SUBMISSION_PORT (STARTTLS) and
 * SMTPS_PORT (implicit TLS, RFC 8314) take mail from authenticated users to anywhere, DKIM-signed
 * for hosted domains. A message is accepted (250) only after its body is in the blob store and its
 * envelope is acknowledged by JetStream (invariant 1); if either fails the client gets 451 4.3.0.
 *
 * The protocol core (smtp-stream → parser → session + commands) knows nothing of NATS or Redis;
 * this file builds its hooks from the runtime and runs the listeners. Behind a load balancer each
 * listener can take a PROXY protocol header from trusted sources (PROXY_PROTOCOL_TRUSTED): the
 * session, its rate limits, SPF and the Received header then see the client, not the balancer.
 */
import { BlockList, createServer, isIP, type Server, type Socket } from 'node:net';
import type { Runtime, Service } from '../core/runtime.ts';
import { counter, gauge } from '../core/metrics.ts';
import { DirectoryError } from '../core/directory.ts';
import { acceptor, isLoopback, proxyProtocolFor, type Acceptor } from '../core/net.ts';
import { REPLIES, SmtpReply } from './replies.ts';
import {
  Session,
  type PortKind,
  type SessionHooks,
  type SessionInfo,
  type SessionOptions,
} from './session.ts';
import { LIMITS, limitsFrom } from './limits.ts';
import { Rates } from './rates.ts';
import { dnsResolver } from './mail-auth.ts';
import { acceptMessage, type AcceptDeps } from './accept.ts';
import { COMMANDS } from './commands.ts';
import { ProtocolTelemetry } from '../core/telemetry.ts';

const rejected = counter('postino_smtp_rejected_total', 'SMTP commands rejected, by reason', [
  'port',
  'reason',
]);
const authFailures = counter('postino_auth_failures_total', 'Failed authentications', ['protocol']);
const sessionsOpen = gauge('postino_smtp_sessions_open', 'Open SMTP sessions', ['port']);
/** `SMTP session` → `SMTP MAIL`... spans and postino_smtp_command_seconds{command}. */
const telemetry = new ProtocolTelemetry('SMTP', Object.keys(COMMANDS));

/** Network numbers in SMTP_TRUSTED_NETWORKS ("none" for none). */
function trustedNetworks(list: string[]): BlockList {
  const b = new BlockList();
  for (const item of list) {
    if (item === 'none') continue;
    const [net, bits] = item.split('/');
    if (!net || !isIP(net)) throw new Error(`SMTP_TRUSTED_NETWORKS: not a network: ${item}`);
    const type = isIP(net) === 6 ? 'ipv6' : 'ipv4';
    b.addSubnet(net, Number(bits ?? (type === 'ipv6' ? 128 : 32)), type);
  }
  return b;
}

export async function start(rt: Runtime): Promise<Service> {
  const { config, directory } = rt;
  const log = rt.logger.child({ service: 'smtp-ingress' });
  const rates = new Rates(rt.redis, config.redisPrefix);
  const trusted = trustedNetworks(config.smtpTrustedNetworks);
  const limits = limitsFrom(config);
  const openPerIp = new Map<string, number>();
  const sessions = new Set<Session>();
  let stopping = false;

  // JetStream is unreachable while the connection is down: answer 451 at once rather than queue.
  let natsConnected = true;
  const status = rt.nats.nc.status();
  void (async () => {
    for await (const s of status) {
      if (s.type === 'disconnect') natsConnected = false;
      else if (s.type === 'reconnect') natsConnected = true;
    }
  })();

  const deps: AcceptDeps = {
    config,
    nats: rt.nats,
    blobs: rt.blobs,
    directory,
    log,
    resolver: dnsResolver(config.dnsServers, 2000),
    natsConnected: () => natsConnected,
    isTrusted: (ip) => trusted.check(ip, isIP(ip) === 6 ? 'ipv6' : 'ipv4'),
    rejected: (port, reason) => rejected.inc({ port, reason }),
  };

  const refuse = (info: SessionInfo, reason: string, reply: SmtpReply): SmtpReply => {
    rejected.inc({ port: info.port, reason });
    return reply;
  };

  const hooks: SessionHooks = {
    async connect(info) {
      sessionsOpen.inc({ port: info.port });
      const n = (openPerIp.get(info.remoteAddress) ?? 0) + 1;
      openPerIp.set(info.remoteAddress, n);
      if (stopping) return REPLIES.shuttingDown();
      if (sessions.size > config.smtpMaxConnections || n > config.smtpMaxConnectionsPerIp)
        return refuse(info, 'too_many_connections', REPLIES.tooManyConnections());
      if (!(await rates.take('conn', info.remoteAddress, LIMITS.rateWindowMs, config.smtpConnectionRate)))
        return refuse(info, 'connection_rate', REPLIES.connectionRate());
      return null;
    },
    close(info) {
      sessionsOpen.dec({ port: info.port });
      const n = (openPerIp.get(info.remoteAddress) ?? 1) - 1;
      if (n <= 0) openPerIp.delete(info.remoteAddress);
      else openPerIp.set(info.remoteAddress, n);
    },
    error(info, err) {
      log.error({ err, session: info.id, ip: info.remoteAddress }, 'smtp command failed');
    },
    async authenticate(info, login, password) {
      const account = login.trim().toLowerCase();
      const window = LIMITS.authFailureWindowMs;
      const [byIp, byAccount] = await Promise.all([
        rates.peek('authfail', info.remoteAddress, window),
        rates.peek('authfail', `u:${account}`, window),
      ]);
      if (byIp >= config.smtpAuthFailures || byAccount >= config.smtpAuthFailures)
        return refuse(info, 'auth_throttled', REPLIES.authThrottled());
      const user = await directory.authenticate(login, password).catch((err: unknown) => {
        log.error({ err }, 'auth lookup failed');
        return REPLIES.authTempFailure();
      });
      if (user instanceof SmtpReply) return user;
      if (!user) {
        authFailures.inc({ protocol: 'smtp' });
        await Promise.all([
          rates.hit('authfail', info.remoteAddress, window),
          rates.hit('authfail', `u:${account}`, window),
        ]);
        log.info({ login: account, ip: info.remoteAddress }, 'smtp auth failed');
        return refuse(info, 'bad_credentials', REPLIES.badCredentials());
      }
      return { user };
    },
    async mailFrom(info, from) {
      const submission = info.port !== 'smtp';
      if (submission) {
        if (!from) return refuse(info, 'null_sender', REPLIES.nullSenderForbidden());
        if (config.submissionSenderCheck && !(await owns(info.user, from.address)))
          return refuse(info, 'sender_not_owned', REPLIES.senderNotOwned(from.address));
      }
      const whos = [info.remoteAddress, ...(info.user ? [`u:${info.user}`] : [])];
      const allowed = await Promise.all(
        whos.map((w) => rates.take('msg', w, LIMITS.rateWindowMs, config.smtpMessageRate)),
      );
      if (allowed.includes(false)) return refuse(info, 'message_rate', REPLIES.rateExceeded('messages'));
      return null;
    },
    async rcptTo(info, _tx, to) {
      const whos = [info.remoteAddress, ...(info.user ? [`u:${info.user}`] : [])];
      const literal = to.domain.startsWith('[');
      // The rate lease and the directory lookups at once (Redis is asked only for what is not at
      // hand); the lookups' answers count only once the rate allows the recipient.
      const [allowed, local, expansion] = await Promise.all([
        Promise.all(whos.map((w) => rates.take('rcpt', w, LIMITS.rateWindowMs, config.smtpRecipientRate))),
        literal ? false : directory.isLocalDomain(to.domain),
        literal ? null : directory.resolveRecipient(to.address).catch((err: unknown) => err as Error),
      ]);
      if (allowed.includes(false)) return refuse(info, 'recipient_rate', REPLIES.rateExceeded('recipients'));
      if (literal) {
        // An address literal is never hosted here: only authenticated users may relay to it.
        return info.user ? null : refuse(info, 'relay_denied', REPLIES.relayDenied(to.address));
      }
      if (!local) {
        // No open relay (invariant 5): foreign domains only for authenticated users.
        return info.user ? null : refuse(info, 'relay_denied', REPLIES.relayDenied(to.address));
      }
      try {
        if (expansion instanceof Error) throw expansion;
        if (!expansion) return refuse(info, 'unknown_user', REPLIES.unknownUser(to.address));
      } catch (err) {
        if (err instanceof DirectoryError && err.code === 'LOOP')
          return refuse(info, 'alias_loop', REPLIES.aliasLoop(to.address));
        throw err;
      }
      return null;
    },
    accept: (info, tx) => acceptMessage(deps, info, tx),
    observe(info, local) {
      const trace = telemetry.session(
        {
          remoteAddress: info.remoteAddress,
          remotePort: info.remotePort,
          localAddress: local.address,
          localPort: local.port,
        },
        { 'smtp.listener': info.port },
      );
      return {
        // One message, one trace: a second transaction on the connection starts a new trace.
        command: (verb) => {
          if (verb === 'MAIL' && info.transactions > 0) trace.newTrace();
          return trace.command(verb);
        },
        end: () => trace.end(),
      };
    },
  };

  /** RFC 6409 6.1: the sender is the user, one of their plus-addresses, or an alias leading to them. */
  async function owns(user: string, address: string): Promise<boolean> {
    if (!user) return false;
    if (address.toLowerCase() === user) return true;
    const exp = await directory.resolveRecipient(address).catch(() => null);
    return !!exp?.users.includes(user);
  }

  const sessionOptions = (port: PortKind, socket: Socket): SessionOptions => {
    const ip = socket.remoteAddress ?? '';
    return {
      port,
      hostname: config.hostname,
      limits,
      tlsContext: () => rt.tls.context,
      authEnabled: port !== 'smtp',
      authRequired: port !== 'smtp',
      // RFC 8314 / RFC 4954 4: passwords only over TLS, unless loopback or configured.
      plaintextAuthAllowed: config.allowPlaintextAuth || isLoopback(ip),
    };
  };

  const run = (port: PortKind, socket: Socket) => {
    socket.on('error', () => socket.destroy());
    const session = new Session(socket, sessionOptions(port, socket), hooks);
    sessions.add(session);
    socket.once('close', () => sessions.delete(session));
    void session.start();
  };

  const listener = (port: PortKind): { port: PortKind; server: Server; accept: Acceptor } => {
    const accept = acceptor(
      {
        name: port,
        logger: log,
        proxy: proxyProtocolFor(config, port),
        // RFC 8314 3.3: TLS from the first byte (after the PROXY header); the context is read per
        // connection, so a rotated certificate (cert-manager renewals) applies to the next one.
        tls: port === 'smtps' ? { context: () => rt.tls.context, handshakeTimeoutMs: 30_000 } : undefined,
      },
      (socket) => run(port, socket),
    );
    // allowHalfOpen: a client that pipelines its last commands and closes its side still gets
    // every reply (the session closes once it has answered); otherwise Node would end our side
    // with the client's, and the replies to commands read after that would be lost. noDelay: set
    // on each accepted socket by the server, not by a setsockopt call from JavaScript per session.
    return { port, server: createServer({ allowHalfOpen: true, noDelay: true }, accept), accept };
  };
  const servers = [listener('smtp'), listener('submission')];
  if (config.smtpsPort > 0) servers.push(listener('smtps'));
  const portOf = { smtp: config.smtpPort, submission: config.submissionPort, smtps: config.smtpsPort };
  for (const { port, server } of servers) {
    server.maxConnections = config.smtpMaxConnections + 100;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: portOf[port], host: config.bindHost, reusePort: config.smtpReusePort }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.address();
    log.info(
      { port: typeof addr === 'object' && addr ? addr.port : portOf[port], mode: port },
      'smtp listening',
    );
  }
  rt.health.add('smtp-ingress', () => (stopping ? 'stopping' : null));

  return {
    async stop() {
      stopping = true;
      const closed = Promise.all(
        servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))),
      );
      for (const { accept } of servers) accept.close();
      // Idle sessions get 421 now; busy ones finish their command (the reply is durable or 451).
      const end = Date.now() + LIMITS.closeTimeoutMs;
      while (sessions.size > 0 && Date.now() < end) {
        for (const s of sessions) s.shutdown();
        await new Promise((r) => setTimeout(r, 50));
      }
      for (const s of sessions) s.close(true);
      await closed;
    },
  };
}
