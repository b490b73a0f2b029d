/**
 * DKIM signing (RFC 6376) of submitted mail: rsa-sha256 (RFC 8301), relaxed/relaxed
 * canonicalization. Written here rather than taken from mailauth, so that mailauth's verifier,
 * used by the tests and by port 25, checks an independent implementation.
 */
import { createHash, createSign, type KeyObject } from 'node:crypto';

/** Header fields signed when present (RFC 6376 5.4.1: From is required; these are the recommended ones). */
const SIGNED_HEADERS = [
  'from',
  'sender',
  'reply-to',
  'subject',
  'date',
  'message-id',
  'to',
  'cc',
  'mime-version',
  'content-type',
  'content-transfer-encoding',
  'in-reply-to',
  'references',
];

export interface DkimKey {
  domain: string;
  selector: string;
  privateKey: string | KeyObject;
}

interface HeaderField {
  name: string;
  /** The whole field as it appears, folded, without its final CRLF. */
  raw: string;
}

/** Splits a message into its header fields and its body (RFC 5322 2.1). */
function split(message: Buffer): { fields: HeaderField[]; body: Buffer } {
  const text = message.toString('latin1');
  const m = /\r?\n\r?\n/.exec(text);
  const headEnd = m ? m.index : text.length;
  const bodyStart = m ? m.index + m[0].length : text.length;
  const fields: HeaderField[] = [];
  for (const line of text.slice(0, headEnd).split(/\r?\n/)) {
    const last = fields[fields.length - 1];
    if (/^[ \t]/.test(line) && last) last.raw += `\r\n${line}`;
    else {
      const colon = line.indexOf(':');
      if (colon > 0) fields.push({ name: line.slice(0, colon).trim().toLowerCase(), raw: line });
    }
  }
  return { fields, body: message.subarray(Buffer.byteLength(text.slice(0, bodyStart), 'latin1')) };
}

/** RFC 6376 3.4.2: relaxed header canonicalization. */
export function relaxedHeader(raw: string): string {
  const colon = raw.indexOf(':');
  const name = raw.slice(0, colon).trim().toLowerCase();
  const value = raw
    .slice(colon + 1)
    .replace(/\r\n/g, '')
    .replace(/[ \t]+/g, ' ')
    .trim();
  return `${name}:${value}`;
}

/** RFC 6376 3.4.4: relaxed body canonicalization. */
export function relaxedBody(body: Buffer): Buffer {
  const lines = body
    .toString('latin1')
    .split(/\r?\n/)
    .map((l) => l.replace(/[ \t]+/g, ' ').replace(/ $/, ''));
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return Buffer.from(lines.length > 0 ? `${lines.join('\r\n')}\r\n` : '', 'latin1');
}

/** Returns the DKIM-Signature header field (ending in CRLF) for `message`. */
export function dkimSign(message: Buffer, key: DkimKey, now = Date.now()): string {
  const { fields, body } = split(message);
  const bh = createHash('sha256').update(relaxedBody(body)).digest('base64');
  // RFC 6376 5.4.2: for a repeated field, sign the last instance (signers work bottom up).
  const signed: HeaderField[] = [];
  for (const name of SIGNED_HEADERS) {
    for (let i = fields.length - 1; i >= 0; i--) {
      const f = fields[i];
      if (f?.name === name) {
        signed.push(f);
        break;
      }
    }
  }
  const tags = [
    'v=1',
    'a=rsa-sha256',
    'c=relaxed/relaxed',
    `d=${key.domain}`,
    `s=${key.selector}`,
    `t=${Math.floor(now / 1000)}`,
    `h=${signed.map((f) => f.name).join(':')}`,
    `bh=${bh}`,
  ];
  const unsigned = `DKIM-Signature: ${tags.join('; ')}; b=`;
  // RFC 6376 3.7: the signed fields, then the signature field with an empty b= and no final CRLF.
  const input = signed.map((f) => `${relaxedHeader(f.raw)}\r\n`).join('') + relaxedHeader(unsigned);
  const b = createSign('sha256').update(input, 'latin1').sign(key.privateKey, 'base64');
  // RFC 6376 3.5: the value may be folded; fold b= every 72 characters.
  const folded = (b.match(/.{1,72}/g) ?? []).join('\r\n\t ');
  return `DKIM-Signature: ${tags.join(';\r\n\t')};\r\n\tb=${folded}\r\n`;
}

/** The header From's domain (first address), lowercased, or ''. */
export function headerFromDomain(message: Buffer): string {
  const { fields } = split(message.subarray(0, 256 * 1024));
  const from = fields.find((f) => f.name === 'from');
  if (!from) return '';
  const m = /@([A-Za-z0-9.-]+)\s*>?/.exec(from.raw.slice(5).replace(/\r\n/g, ''));
  return (m?.[1] ?? '').toLowerCase().replace(/\.$/, '');
}
