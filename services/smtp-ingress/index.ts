/**
 * smtp-ingress: the door of the cluster. Port SMTP_PORT takes mail for hosted domains from other
 * servers; SUBMISSION_PORT takes mail from authenticated users to anywhere. A message is accepted
 * (250) only after its body is in the blob store and its envelope is acknowledged by JetStream
 * (invariant 1); if either fails the client gets 451 and retries.
 */
import { SMTPServer, type SMTPServerSession, type SMTPServerOptions } from 'smtp-server';
import type { Runtime, Service } from '../core/runtime.ts';
import { pb, encode, type Envelope } from '../core/codec.ts';
import { publish, STREAMS, SUBJECTS } from '../core/nats.ts';
import { recordEvent } from '../core/events.ts';
import { counter, gauge } from '../core/metrics.ts';
import { SpanKind, currentTraceId, withSpan } from '../core/telemetry.ts';
import { domainOf } from '../core/address.ts';
import { DirectoryError } from '../core/directory.ts';
import { isLoopback } from '../core/net.ts';
import { REPLIES, SmtpReply } from './replies.ts';
import { useOwnEnhancedCodes } from './enhanced-codes.ts';
import { newMessageId, newQueueId, rfc5322Date, receivedHeader, scanHeaders } from './message.ts';
import { LIMITS } from './limits.ts';

const accepted = counter('postino_smtp_messages_accepted_total', 'Messages accepted with 250', ['port']);
const rejected = counter('postino_smtp_rejected_total', 'SMTP commands rejected, by reason', [
  'port',
  'reason',
]);
const authFailures = counter('postino_auth_failures_total', 'Failed authentications', ['protocol']);
const sessionsOpen = gauge('postino_smtp_sessions_open', 'Open SMTP sessions', ['port']);

interface Mode {
  name: 'smtp' | 'submission';
  port: number;
}

export async function start(rt: Runtime): Promise<Service> {
  useOwnEnhancedCodes();
  const { config, directory, nats, blobs } = rt;
  const log = rt.logger.child({ service: 'smtp-ingress' });

  const reject = (mode: Mode, reason: string, reply: SmtpReply): SmtpReply => {
    rejected.inc({ port: mode.name, reason });
    return reply;
  };

  const makeServer = (mode: Mode): SMTPServer => {
    const submission = mode.name === 'submission';
    const options: SMTPServerOptions = {
      name: config.hostname,
      banner: 'Postino ESMTP',
      size: config.maxMessageSize,
      authMethods: ['PLAIN', 'LOGIN'],
      // Port 25 never takes AUTH from strangers in this foundation; submission requires it.
      authOptional: !submission,
      disabledCommands: submission ? ['STARTTLS'] : ['STARTTLS', 'AUTH'],
      // AUTH without TLS is refused per connection in onAuth unless the peer is loopback.
      allowInsecureAuth: true,
      disableReverseLookup: true,
      maxClients: LIMITS.maxClients,
      socketTimeout: LIMITS.socketTimeoutMs,
      closeTimeout: LIMITS.closeTimeoutMs,
      maxAllowedUnauthenticatedCommands: LIMITS.maxUnauthenticatedCommands,
      hideDSN: false,
      logger: false,
      onConnect(session, cb) {
        sessionsOpen.inc({ port: mode.name });
        cb();
      },
      onClose() {
        sessionsOpen.dec({ port: mode.name });
      },
      onAuth(auth, session, cb) {
        if (!session.secure && !config.allowPlaintextAuth && !isLoopback(session.remoteAddress)) {
          cb(reject(mode, 'auth_needs_tls', REPLIES.encryptionRequired()));
          return;
        }
        const login = auth.username ?? '';
        directory
          .authenticate(login, auth.password ?? '')
          .then((user) => {
            if (!user) {
              authFailures.inc({ protocol: 'smtp' });
              log.info({ login, ip: session.remoteAddress }, 'smtp auth failed');
              cb(REPLIES.badCredentials());
            } else cb(null, { user });
          })
          .catch((err: unknown) => {
            log.error({ err }, 'auth lookup failed');
            cb(new SmtpReply(454, '4.7.0', 'Temporary authentication failure'));
          });
      },
      onMailFrom(address, session, cb) {
        if (submission && !session.user) return cb(reject(mode, 'auth_required', REPLIES.authRequired()));
        cb();
      },
      onRcptTo(address, session, cb) {
        if (session.envelope.rcptTo.length >= config.maxRecipients) {
          return cb(reject(mode, 'too_many_recipients', REPLIES.tooManyRecipients()));
        }
        const domain = domainOf(address.address);
        if (!domain) return cb(reject(mode, 'bad_address', REPLIES.badAddress(address.address)));
        directory
          .isLocalDomain(domain)
          .then(async (local) => {
            if (!local) {
              // No open relay (invariant 5): foreign domains only for authenticated submission.
              if (!session.user)
                return cb(reject(mode, 'relay_denied', REPLIES.relayDenied(address.address)));
              return cb();
            }
            const expansion = await directory.resolveRecipient(address.address);
            if (!expansion) return cb(reject(mode, 'unknown_user', REPLIES.unknownUser(address.address)));
            cb();
          })
          .catch((err: unknown) => {
            if (err instanceof DirectoryError && err.code === 'LOOP') {
              return cb(reject(mode, 'alias_loop', REPLIES.aliasLoop(address.address)));
            }
            log.error({ err }, 'recipient lookup failed');
            cb(reject(mode, 'temp_failure', REPLIES.tempFailure()));
          });
      },
      onData(stream, session, cb) {
        const chunks: Buffer[] = [];
        let size = 0;
        stream.on('data', (c: Buffer) => {
          size += c.length;
          // Past the limit keep reading (to answer 552 after the final dot) but store nothing.
          if (size <= config.maxMessageSize) chunks.push(c);
        });
        stream.once('error', (err) => cb(err));
        stream.once('end', () => {
          if (stream.sizeExceeded || size > config.maxMessageSize) {
            return cb(reject(mode, 'too_big', REPLIES.tooBig()));
          }
          accept(mode, session, chunks).then(
            (queueId) => cb(null, `2.0.0 Ok: queued as ${queueId}`),
            (err: unknown) => {
              if (err instanceof SmtpReply) return cb(err);
              log.error({ err }, 'message not accepted: blob store or JetStream unavailable');
              cb(reject(mode, 'temp_failure', REPLIES.tempFailure()));
            },
          );
        });
      },
    };
    const server = new SMTPServer(options);
    server.on('error', (err) => log.warn({ err, port: mode.name }, 'smtp server error'));
    return server;
  };

  /** Stores the body, then publishes the envelope; resolves with the queue id once both are durable. */
  const accept = (mode: Mode, session: SMTPServerSession, chunks: Buffer[]): Promise<string> =>
    withSpan(
      'smtp DATA',
      {
        kind: SpanKind.SERVER,
        attributes: { 'network.peer.address': session.remoteAddress, 'smtp.port': mode.name },
      },
      async () => {
        const queueId = newQueueId();
        const body = Buffer.concat(chunks);
        const facts = scanHeaders(body);
        if (facts.hops >= LIMITS.maxHops) throw reject(mode, 'loop', REPLIES.loop());
        const rcpts = session.envelope.rcptTo;
        const authUser = typeof session.user === 'string' ? session.user : '';
        const protocol = `ESMTP${session.secure ? 'S' : ''}${authUser ? 'A' : ''}`;
        const prepend: string[] = [
          receivedHeader({
            helo: session.hostNameAppearsAs || 'unknown',
            clientHostname:
              session.clientHostname && !session.clientHostname.startsWith('[')
                ? session.clientHostname
                : 'unknown',
            clientIp: session.remoteAddress,
            hostname: config.hostname,
            protocol,
            tls: session.tlsOptions
              ? `using ${session.tlsOptions.version ?? 'TLS'} with cipher ${session.tlsOptions.name}`
              : '',
            queueId,
            traceId: currentTraceId(),
            recipient: rcpts.length === 1 ? rcpts[0]?.address : undefined,
          }),
        ];
        let messageId = facts.messageId;
        if (mode.name === 'submission') {
          // RFC 6409 8.2/8.3: a submission server may add a missing Message-ID and Date.
          if (!messageId) {
            messageId = newMessageId(queueId, config.hostname);
            prepend.push(`Message-ID: ${messageId}\r\n`);
          }
          if (!facts.hasDate) prepend.push(`Date: ${rfc5322Date()}\r\n`);
        }
        const stored = await blobs.put([Buffer.from(prepend.join(''), 'latin1'), body]);
        const mailFrom = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
        const envelope: Envelope = {
          queueId,
          mailFrom,
          recipients: rcpts.map((r) => ({
            address: r.address,
            dsn: r.dsn ? { notify: r.dsn.notify ?? [], orcpt: r.dsn.orcpt ?? '' } : undefined,
          })),
          body: { id: stored.id, size: stored.size },
          receivedAt: Date.now(),
          clientIp: session.remoteAddress,
          helo: session.hostNameAppearsAs,
          authUser,
          messageId,
          dsnRet: session.envelope.dsn?.ret ?? '',
          dsnEnvid: session.envelope.dsn?.envid ?? '',
          smtputf8: !!session.envelope.smtpUtf8,
          bodyType: session.envelope.bodyType ?? '7bit',
        };
        await publish(nats, SUBJECTS.ingress, encode(pb.Envelope, envelope), {
          stream: STREAMS.INGRESS,
          msgId: queueId,
        });
        accepted.inc({ port: mode.name });
        log.info(
          {
            queueId,
            from: mailFrom,
            rcpts: rcpts.length,
            size: stored.size,
            authUser,
            ip: session.remoteAddress,
          },
          'message accepted',
        );
        await recordEvent(
          nats,
          log,
          'received',
          {
            queueId,
            messageId,
            recipient: rcpts.map((r) => r.address).join(','),
            service: 'smtp-ingress',
            detail: `from ${session.remoteAddress} size ${stored.size}`,
            mailFrom,
          },
          queueId,
          Number(envelope.receivedAt),
        );
        return queueId;
      },
    );

  const modes: Mode[] = [
    { name: 'smtp', port: config.smtpPort },
    { name: 'submission', port: config.submissionPort },
  ];
  const servers: { mode: Mode; server: SMTPServer }[] = [];
  for (const mode of modes) {
    const server = makeServer(mode);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(mode.port, config.bindHost, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const addr = server.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : mode.port;
    log.info({ port, mode: mode.name }, 'smtp listening');
    servers.push({ mode: { ...mode, port }, server });
  }
  rt.health.add('smtp-ingress', () => null);

  return {
    async stop() {
      // smtp-server's close waits for sessions to end (up to closeTimeout), then drops them.
      await Promise.all(
        servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))),
      );
    },
  };
}
