/**
 * Non-delivery reports (bounces) as DSNs: multipart/report with message/delivery-status
 * (RFC 3464, RFC 3462), sent to the reverse path through INGRESS like any other message.
 * A message with a null reverse path is never bounced (RFC 5321 6.1), which also stops loops.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { BlobHolder, type BlobStore } from './blobs.ts';
import { pb, encode, type Envelope, type Recipient } from './codec.ts';
import { publish, STREAMS, SUBJECTS, type Nats } from './nats.ts';
import { recordEvent } from './events.ts';

export interface Failure {
  recipient: Recipient;
  /** Enhanced status code, e.g. 5.1.1. */
  status: string;
  /** The remote reply or our reason. */
  diagnostic: string;
  /** Remote MTA that answered, if any. */
  remoteMta?: string;
}

/**
 * The three kinds of DSN (RFC 3464 2.3.3 Action): a failure (bounce), a delay warning
 * ("delayed", the message is still being retried) and a success report ("relayed": handed to a
 * server that was not asked to report further, RFC 3461 5.2.2).
 */
export type DsnKind = 'failed' | 'delayed' | 'relayed';

export interface BounceSource {
  queueId: string;
  mailFrom: string;
  messageId: string;
  receivedAt: number;
  dsnRet: string;
  dsnEnvid: string;
  /** The stored body; `returnPath`: octets of the Return-Path it begins with, left out of the DSN. */
  body: { id: string; size: number; returnPath?: number };
  isBounce: boolean;
}

/** Bodies up to this size are returned whole (RET=FULL); larger ones only by their headers. */
const RETURN_FULL_LIMIT = 1024 * 1024;

/** RFC 3461 4.1: NOTIFY=NEVER asks for nothing; without NOTIFY, FAILURE (and DELAY at our discretion: yes). */
export function wantsNotice(r: Recipient, kind: DsnKind): boolean {
  const notify = (r.dsn?.notify ?? []).map((n) => n.toUpperCase());
  if (notify.includes('NEVER')) return false;
  const word = kind === 'failed' ? 'FAILURE' : kind === 'delayed' ? 'DELAY' : 'SUCCESS';
  if (notify.length === 0) return kind !== 'relayed';
  return notify.includes(word);
}

const TEXT: Record<DsnKind, { subject: string; human: string }> = {
  failed: {
    subject: 'Undelivered Mail Returned to Sender',
    human: `I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.`,
  },
  delayed: {
    subject: 'Delayed Mail (still being retried)',
    human: `Your message could not be delivered yet to one or more recipients.
It will be retried until it is too old; you need not send it again.`,
  },
  relayed: {
    subject: 'Successful Mail Delivery Report',
    human: `Your message was successfully handed over to the destination
server of one or more recipients, as you asked.`,
  },
};

function headerBlock(body: Buffer): Buffer {
  const text = body.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  return end >= 0 ? body.subarray(0, end) : body;
}

const crlf = (s: string) => s.replace(/\r?\n/g, '\r\n');

export function buildDsn(
  hostname: string,
  source: BounceSource,
  failures: Failure[],
  original: Buffer,
  now = new Date(),
  kind: DsnKind = 'failed',
  retryUntil = 0,
): { text: Buffer; messageId: string } {
  const boundary = `=_postino_${randomBytes(12).toString('hex')}`;
  const messageId = `<${source.queueId}.${kind === 'failed' ? 'bounce' : kind}.${randomBytes(4).toString('hex')}@${hostname}>`;
  // RFC 3461 4.3: RET governs failure reports; delay and success reports carry the headers only.
  const full =
    kind === 'failed' && source.dsnRet.toUpperCase() !== 'HDRS' && original.length <= RETURN_FULL_LIMIT;
  const lines = failures.map((f) => `<${f.recipient.address}>: ${f.diagnostic}`).join('\n');
  const human = `This is the mail system at host ${hostname}.

${TEXT[kind].human}

${lines}
`;
  const perRecipient = failures
    .map((f) => {
      const out = [`Final-Recipient: rfc822; ${f.recipient.address}`];
      if (f.recipient.dsn?.orcpt) out.push(`Original-Recipient: ${f.recipient.dsn.orcpt}`);
      out.push(`Action: ${kind}`, `Status: ${f.status}`);
      if (f.remoteMta) out.push(`Remote-MTA: dns; ${f.remoteMta}`);
      out.push(`Diagnostic-Code: smtp; ${f.diagnostic.replace(/[\r\n]+/g, ' ')}`);
      // RFC 3464 2.3.9: a delayed report says until when the message is retried.
      if (kind === 'delayed' && retryUntil > 0)
        out.push(`Will-Retry-Until: ${rfc5322Date(new Date(retryUntil))}`);
      return out.join('\n');
    })
    .join('\n\n');
  const perMessage = [`Reporting-MTA: dns; ${hostname}`, `X-Postino-Queue-ID: ${source.queueId}`];
  if (source.dsnEnvid) perMessage.push(`Original-Envelope-Id: ${source.dsnEnvid}`);
  perMessage.push(`Arrival-Date: ${new Date(source.receivedAt).toUTCString().replace('GMT', '+0000')}`);
  const head = crlf(`From: Mail Delivery System <MAILER-DAEMON@${hostname}>
To: <${source.mailFrom}>
Subject: ${TEXT[kind].subject}
Date: ${now.toUTCString().replace('GMT', '+0000')}
Message-ID: ${messageId}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="${boundary}"

This is a MIME-encapsulated message.

--${boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

${human}
--${boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

${perMessage.join('\n')}

${perRecipient}

--${boundary}
Content-Description: ${full ? 'Undelivered Message' : 'Undelivered Message Headers'}
Content-Type: ${full ? 'message/rfc822' : 'text/rfc822-headers'}
${full ? 'Content-Transfer-Encoding: 8bit\n' : ''}
`);
  const tail = crlf(`\n--${boundary}--\n`);
  return {
    text: Buffer.concat([
      Buffer.from(head, 'utf8'),
      full ? original : headerBlock(original),
      Buffer.from(tail),
    ]),
    messageId,
  };
}

export interface BounceDeps {
  nats: Nats;
  blobs: BlobStore;
  logger: Logger;
  hostname: string;
}

const rfc5322Date = (d: Date) => d.toUTCString().replace('GMT', '+0000');

/** Sends one DSN for the failed recipients that asked for one; resolves once it is durable on INGRESS. */
export async function sendBounce(deps: BounceDeps, source: BounceSource, failures: Failure[]): Promise<void> {
  return sendDsn(deps, source, failures, 'failed');
}

/**
 * Sends one DSN of the given kind for the recipients whose NOTIFY asks for it (RFC 3461 4.1),
 * never to the null reverse path (RFC 5321 6.1 / RFC 3464 2: no DSN about a DSN).
 */
export async function sendDsn(
  deps: BounceDeps,
  source: BounceSource,
  failures: Failure[],
  kind: DsnKind,
  retryUntil = 0,
): Promise<void> {
  const wanted = failures.filter((f) => wantsNotice(f.recipient, kind));
  if (wanted.length === 0) return;
  if (!source.mailFrom || source.isBounce) {
    deps.logger.warn(
      { queueId: source.queueId, failures: wanted.length, kind },
      'no DSN for a message with a null sender',
    );
    return;
  }
  const original = await deps.blobs
    .read(source.body.id)
    .then((b) => b.subarray(source.body.returnPath ?? 0))
    .catch(() => Buffer.from('(original message no longer available)\r\n'));
  const dsn = buildDsn(deps.hostname, source, wanted, original, new Date(), kind, retryUntil);
  const letter = kind === 'failed' ? 'B' : kind === 'delayed' ? 'W' : 'S';
  const bounceId = `${source.queueId}${letter}${createHashShort(wanted.map((f) => f.recipient.address).join(','))}`;
  // Held for its INGRESS envelope like any accepted message (services/core/blobs.ts).
  const stored = await deps.blobs.put([dsn.text], { holder: BlobHolder.ingress(bounceId) });
  const envelope: Envelope = {
    queueId: bounceId,
    mailFrom: '',
    recipients: [{ address: source.mailFrom }],
    body: stored,
    receivedAt: Date.now(),
    helo: deps.hostname,
    messageId: dsn.messageId,
    isBounce: true,
    bodyType: '8bitmime',
  };
  await publish(deps.nats, SUBJECTS.ingress, encode(pb.Envelope, envelope), {
    stream: STREAMS.INGRESS,
    msgId: bounceId,
  });
  for (const f of wanted) {
    if (kind !== 'failed') continue;
    await recordEvent(deps.nats, deps.logger, 'bounced', {
      queueId: source.queueId,
      messageId: source.messageId,
      recipient: f.recipient.address ?? '',
      service: 'delivery',
      detail: `${f.status} ${f.diagnostic} (bounce ${bounceId})`,
      mailFrom: source.mailFrom,
    });
  }
}

function createHashShort(s: string): string {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) | 0;
  return (h >>> 0).toString(36).toUpperCase();
}
