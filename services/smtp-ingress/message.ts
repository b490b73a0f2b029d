/** What ingress writes into a message's header block: Received, and on submission Message-ID and Date. */
import { pooledRandomBytes } from '../core/random.ts';

/** Bytes of the header block to examine (headers past this are not inspected, only stored). */
const HEADER_SCAN_LIMIT = 256 * 1024;

export interface HeaderFacts {
  /** Number of Received headers (hop count, RFC 5321 6.3). */
  hops: number;
  messageId: string;
  hasDate: boolean;
}

/** Reads what ingress needs from the header block (up to the first empty line). */
export function scanHeaders(body: Buffer): HeaderFacts {
  const text = body.subarray(0, HEADER_SCAN_LIMIT).toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  const block = end >= 0 ? text.slice(0, end) : text;
  const unfolded = block.replace(/\r?\n[ \t]+/g, ' ');
  let hops = 0;
  let messageId = '';
  let hasDate = false;
  for (const line of unfolded.split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    if (name === 'received') hops++;
    else if (name === 'message-id' && !messageId) messageId = line.slice(colon + 1).trim();
    else if (name === 'date') hasDate = true;
  }
  return { hops, messageId, hasDate };
}

/** RFC 5322 date-time, e.g. "Thu, 26 Nov 2026 09:20:01 +0000". */
export function rfc5322Date(d = new Date()): string {
  const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const p = (n: number) => String(n).padStart(2, '0');
  return `${days[d.getUTCDay()]}, ${d.getUTCDate()} ${months[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** A queue id: time-ordered, unique across replicas (ms time + 40 random bits), base-36 upper case. */
export function newQueueId(): string {
  return (
    Date.now().toString(36) + pooledRandomBytes(5).readUIntBE(0, 5).toString(36).padStart(8, '0')
  ).toUpperCase();
}

export interface ReceivedInfo {
  helo: string;
  clientHostname: string;
  clientIp: string;
  hostname: string;
  /** RFC 3848 protocol: ESMTP, ESMTPA, ESMTPS, ESMTPSA, SMTP. */
  protocol: string;
  tls: string;
  queueId: string;
  traceId: string;
  recipient?: string;
  /** The message is SMTPUTF8 (RFC 6532 3.7: the header may carry the UTF-8 address). */
  utf8?: boolean;
}

/** A Received header (RFC 5321 4.4), folded, ending in CRLF. */
export function receivedHeader(r: ReceivedInfo, date = new Date()): string {
  const clean = (s: string) => s.replace(/[^\x21-\x7e]/g, '').slice(0, 255) || 'unknown';
  const cleanRcpt = (s: string) => (r.utf8 ? s.replace(/[\s\p{Cc}]/gu, '').slice(0, 255) : clean(s));
  const lines = [
    `Received: from ${clean(r.helo)} (${clean(r.clientHostname)} [${clean(r.clientIp)}])`,
    `\tby ${clean(r.hostname)} (Postino) with ${r.protocol} id ${r.queueId}`,
  ];
  if (r.tls) lines.push(`\t(${r.tls})`);
  if (r.traceId) lines.push(`\t(trace ${r.traceId})`);
  lines.push(`\t${r.recipient ? `for <${cleanRcpt(r.recipient)}>; ` : ''}${rfc5322Date(date)}`);
  return `${lines.join('\r\n')}\r\n`;
}

export function newMessageId(queueId: string, hostname: string): string {
  return `<${queueId}.${pooledRandomBytes(6).toString('hex')}@${hostname}>`;
}
