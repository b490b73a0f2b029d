/**
 * The end of a transaction: trace headers, mail authentication (port 25), DKIM signing
 * (submission), then the body into the blob store and the envelope onto INGRESS. 250 only when
 * both are durable (invariant 1); 451 4.3.0 when either is unavailable, within a bounded time.
 */
import type { Logger } from 'pino';
import type { Config } from '../core/config.ts';
import { BlobHolder, type BlobStore } from '../core/blobs.ts';
import type { Directory } from '../core/directory.ts';
import { pb, encode, type Envelope } from '../core/codec.ts';
import { publish, STREAMS, SUBJECTS, type Nats } from '../core/nats.ts';
import { recordEvent } from '../core/events.ts';
import { counter } from '../core/metrics.ts';
import { SpanKind, currentTraceId, withSpan } from '../core/telemetry.ts';
import { REPLIES, SmtpReply } from './replies.ts';
import type { SessionInfo, Transaction } from './session.ts';
import { LIMITS } from './limits.ts';
import { newMessageId, newQueueId, receivedHeader, rfc5322Date, scanHeaders } from './message.ts';
import { checkMailAuth, type dnsResolver } from './mail-auth.ts';
import { dkimSign, headerFromDomain } from './dkim-sign.ts';
import { returnPathField } from '../core/return-path.ts';
import { STRUCTURE_LIMITS, StructureBuilder } from '../core/mime-structure.ts';

const accepted = counter('postino_smtp_messages_accepted_total', 'Messages accepted with 250', ['port']);

export interface AcceptDeps {
  config: Config;
  nats: Nats;
  blobs: BlobStore;
  directory: Directory;
  log: Logger;
  resolver: ReturnType<typeof dnsResolver>;
  natsConnected: () => boolean;
  isTrusted: (ip: string) => boolean;
  rejected: (port: string, reason: string) => void;
}

/** Time kept back from SMTP_ACCEPT_TIMEOUT: no publish is still in flight when the 451 goes out. */
const ACCEPT_MARGIN_MS = 250;

class Unavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Unavailable';
  }
}

/** Resolves with `p`, or rejects when it takes longer than `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Unavailable(`${what} took longer than ${ms}ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** RFC 3848 / RFC 6531 3.7.3: the "with" keyword of the Received header. */
function protocolName(info: SessionInfo, tx: Transaction): string {
  if (!info.esmtp) return 'SMTP';
  const base = tx.params.smtputf8 ? 'UTF8SMTP' : 'ESMTP';
  return `${base}${info.secure ? 'S' : ''}${info.user ? 'A' : ''}`;
}

export function acceptMessage(deps: AcceptDeps, info: SessionInfo, tx: Transaction): Promise<SmtpReply> {
  const { config, log } = deps;
  const reject = (reason: string, reply: SmtpReply) => {
    deps.rejected(info.port, reason);
    return reply;
  };
  // A child of the `SMTP DATA` (or last `SMTP BDAT`) command span: making the message durable.
  return withSpan(
    'smtp accept',
    {
      kind: SpanKind.INTERNAL,
      attributes: {
        'network.peer.address': info.remoteAddress,
        'smtp.port': info.port,
        'smtp.recipients': tx.rcpts.length,
      },
    },
    async () => {
      const queueId = newQueueId();
      const body = Buffer.concat(tx.chunks);
      const facts = scanHeaders(body);
      if (facts.hops >= LIMITS.maxHops) return reject('loop', REPLIES.loop());
      const mailFrom = tx.from?.address ?? '';
      const prepend: string[] = [
        receivedHeader({
          helo: info.helo || 'unknown',
          clientHostname: 'unknown',
          clientIp: info.remoteAddress,
          hostname: config.hostname,
          protocol: protocolName(info, tx),
          tls: info.secure ? `using ${info.tlsVersion} with cipher ${info.tlsCipher}` : '',
          queueId,
          traceId: currentTraceId(),
          recipient: tx.rcpts.length === 1 ? tx.rcpts[0]?.mailbox.address : undefined,
          utf8: tx.params.smtputf8,
        }),
      ];
      const submission = info.port !== 'smtp';
      if (!submission && config.mailAuthChecks && !deps.isTrusted(info.remoteAddress)) {
        // RFC 8601 5: Authentication-Results goes above the message's own fields.
        const auth = await within(
          checkMailAuth(
            { body, ip: info.remoteAddress, helo: info.helo, sender: mailFrom, hostname: config.hostname },
            deps.resolver,
          ),
          LIMITS.mailAuthTimeoutMs,
          'SPF/DKIM/DMARC checks',
        ).catch((err: unknown) => {
          log.warn({ err, queueId }, 'mail authentication checks failed; accepting without them');
          return null;
        });
        if (auth?.dmarcReject && config.dmarcReject)
          return reject('dmarc_reject', REPLIES.dmarcReject(auth.fromDomain));
        if (auth) prepend.push(auth.headers);
      }
      let messageId = facts.messageId;
      const added: string[] = [];
      if (submission) {
        // RFC 6409 8.2/8.3: a submission server may add a missing Message-ID and Date.
        if (!messageId) {
          messageId = newMessageId(queueId, config.hostname);
          added.push(`Message-ID: ${messageId}\r\n`);
        }
        if (!facts.hasDate) added.push(`Date: ${rfc5322Date()}\r\n`);
      }
      let signed = Buffer.concat([Buffer.from(added.join(''), 'latin1'), body]);
      if (submission && info.user) {
        // DKIM-sign mail from a hosted domain that has a key (RFC 6376 5), when the header From is
        // in the domain of the envelope sender (which the sender check ties to the user).
        const domain = headerFromDomain(signed);
        const key = domain && domain === tx.from?.domain ? await deps.directory.getDkimKey(domain) : null;
        if (key) {
          const sig = dkimSign(signed, { domain, selector: key.selector, privateKey: key.privateKey });
          signed = Buffer.concat([Buffer.from(sig, 'latin1'), signed]);
        }
      }
      const envelope: Envelope = {
        queueId,
        mailFrom,
        recipients: tx.rcpts.map((r) => ({
          address: r.mailbox.address,
          dsn:
            r.params.notify || r.params.orcpt
              ? { notify: r.params.notify ?? [], orcpt: r.params.orcpt ?? '' }
              : undefined,
        })),
        body: { id: '', size: 0 },
        receivedAt: Date.now(),
        clientIp: info.remoteAddress,
        helo: info.helo,
        authUser: info.user,
        messageId,
        dsnRet: tx.params.ret ?? '',
        dsnEnvid: tx.params.envid ?? '',
        smtputf8: tx.params.smtputf8,
        bodyType: (tx.params.body ?? '7BIT').toLowerCase(),
      };
      // When a nats-server dies, its clients reconnect to another and the streams it led elect
      // new leaders within seconds: each step is tried again until the accept timeout instead of
      // answering 451 at the first failure. Both steps are idempotent (a content-addressed body,
      // an envelope de-duplicated by its queue id). The last try ends before the deadline, so a
      // publish that lands late cannot follow a 451 that the client already has.
      const deadline = Date.now() + config.smtpAcceptTimeout;
      const retrying = async <T>(step: (timeoutMs: number) => Promise<T>): Promise<T> => {
        for (let wait = 100; ; wait = Math.min(wait * 2, 2000)) {
          const left = deadline - Date.now() - ACCEPT_MARGIN_MS;
          try {
            if (left <= 0) throw new Unavailable('no time left to store the message');
            if (!deps.natsConnected()) throw new Unavailable('NATS is disconnected');
            return await step(left);
          } catch (err) {
            if (deadline - Date.now() - ACCEPT_MARGIN_MS - wait <= 0) throw err;
            log.warn({ err, queueId }, 'storing the message failed; trying again');
            await new Promise((r) => setTimeout(r, wait));
          }
        }
      };
      // Stored as the final delivery files it: Return-Path first (services/core/return-path.ts),
      // with its MIME structure, so that mailbox-store neither copies nor parses the body.
      const returnPath = returnPathField(mailFrom);
      const chunks = [returnPath, Buffer.from(prepend.join(''), 'utf8'), signed];
      const structure = new StructureBuilder(STRUCTURE_LIMITS);
      for (const c of chunks) structure.write(c);
      const structureBytes = structure.end();
      const durable = async () => {
        // Held for the envelope before the 250 (the router moves the hold to its entries).
        const stored = await retrying(() =>
          // Fresh bytes: the Received field names this new queue id (see PutOptions.fresh).
          deps.blobs.put(chunks, { holder: BlobHolder.ingress(queueId), fresh: true }),
        );
        envelope.body = {
          id: stored.id,
          size: stored.size,
          returnPath: returnPath.byteLength,
          structure: structureBytes ?? undefined,
        };
        const data = encode(pb.Envelope, envelope);
        await retrying((left) =>
          publish(deps.nats, SUBJECTS.ingress, data, {
            stream: STREAMS.INGRESS,
            msgId: queueId,
            timeoutMs: Math.min(10_000, left),
          }),
        );
        return stored.size - returnPath.byteLength;
      };
      let size: number;
      try {
        size = await within(durable(), config.smtpAcceptTimeout, 'storing the message');
      } catch (err) {
        log.error({ err, queueId }, 'message not accepted: blob store or JetStream unavailable');
        return reject('temp_failure', REPLIES.tempFailure());
      }
      accepted.inc({ port: info.port });
      log.info(
        {
          queueId,
          from: mailFrom,
          rcpts: tx.rcpts.length,
          size,
          authUser: info.user,
          ip: info.remoteAddress,
        },
        'message accepted',
      );
      // Tracking only (the EVENTS stream): not on the path to the 250, which waits for nothing more.
      void recordEvent(
        deps.nats,
        log,
        'received',
        {
          queueId,
          messageId,
          recipient: tx.rcpts.map((r) => r.mailbox.address).join(','),
          service: 'smtp-ingress',
          detail: `from ${info.remoteAddress} size ${size}`,
          mailFrom,
        },
        queueId,
        Number(envelope.receivedAt),
      ).catch((err: unknown) => log.warn({ err, queueId }, 'received event not recorded'));
      return new SmtpReply(250, '2.0.0', `Ok: queued as ${queueId}`);
    },
  );
}
