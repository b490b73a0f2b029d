/**
 * SMTP command parser: one command line (without its CRLF) → a typed command or the reply that
 * rejects it. Pure: no I/O, no policy, no storage. RFC 5321 4.1 grammar, with the parameters of
 * SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN (RFC 3461), AUTH (RFC 4954)
 * and CHUNKING (RFC 3030).
 */
import { domainToASCII } from 'node:url';
import { REPLIES, type SmtpReply } from './replies.ts';

export interface Mailbox {
  /** Local part as given, unquoted (UTF-8 allowed under SMTPUTF8). */
  local: string;
  /** Domain, lowercased, in its A-label (ASCII) form; or an address literal such as "[192.0.2.1]". */
  domain: string;
  /** local@domain, the local part re-quoted when it needs quotes. */
  address: string;
  /** The address has non-ASCII characters (needs SMTPUTF8, RFC 6531 3.4). */
  utf8: boolean;
}

export interface MailParams {
  size?: number;
  body?: '7BIT' | '8BITMIME' | 'BINARYMIME';
  smtputf8: boolean;
  ret?: 'FULL' | 'HDRS';
  envid?: string;
}

export interface RcptParams {
  notify?: string[];
  orcpt?: string;
}

export type Command =
  | { verb: 'EHLO' | 'HELO'; domain: string }
  | { verb: 'MAIL'; from: Mailbox | null; params: MailParams }
  | { verb: 'RCPT'; to: Mailbox; params: RcptParams }
  | { verb: 'BDAT'; size: number; last: boolean }
  | { verb: 'AUTH'; mechanism: string; initial?: string }
  | { verb: 'VRFY' | 'EXPN' | 'HELP'; arg: string }
  | { verb: 'DATA' | 'RSET' | 'NOOP' | 'QUIT' | 'STARTTLS' };

export type Verb = Command['verb'];

export type Parsed = { ok: true; command: Command } | { ok: false; reply: SmtpReply };

const fail = (reply: SmtpReply): Parsed => ({ ok: false, reply });
const ok = (command: Command): Parsed => ({ ok: true, command });

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes a command line: ASCII, or UTF-8 (RFC 6531 3.3 lets addresses carry UTF-8); null if neither or if it holds controls. */
export function decodeLine(line: Buffer): string | null {
  let text: string;
  try {
    text = utf8.decode(line);
  } catch {
    return null;
  }
  // RFC 5321 4.1.1: commands are printable text; NUL and other controls (bar HT) are garbage.
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(text)) return null;
  return text;
}

// RFC 5322 3.2.3 atext, plus UTF-8 (RFC 6532 3.2).
const ATEXT = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\uffff]+$/u;
const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const IPV4_LITERAL = /^\[(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\]$/;
const IPV6_LITERAL = /^\[IPv6:[0-9a-f:.]+\]$/i;
const NON_ASCII = /[^\x00-\x7f]/;

/** Normalises a domain to lowercase A-labels (RFC 5890), or '' if it is not a domain. */
function normalDomain(raw: string): string {
  if (raw.startsWith('[')) {
    const v4 = IPV4_LITERAL.exec(raw);
    if (v4 && v4.slice(1).every((o) => Number(o) <= 255)) return raw;
    return IPV6_LITERAL.test(raw) ? raw.toLowerCase() : '';
  }
  const d = (NON_ASCII.test(raw) ? domainToASCII(raw) : raw).toLowerCase().replace(/\.$/, '');
  if (!d || d.length > 255) return '';
  return d.split('.').every((l) => LABEL.test(l)) ? d : '';
}

export type AddressResult = { ok: true; mailbox: Mailbox } | { ok: false; reply: SmtpReply };

/**
 * Parses a Mailbox (RFC 5321 4.1.2). Source routes (4.1.2 A-d-l, deprecated by Appendix C), the
 * percent hack and bang paths (RFC 1123 5.2.16, RFC 2505 2.6.1) and quoted local parts that hide
 * one of them are refused outright: here they can only be relay tricks.
 */
export function parseMailbox(raw: string): AddressResult {
  const bad = (): AddressResult => ({ ok: false, reply: REPLIES.badAddress(raw) });
  const trick = (): AddressResult => ({ ok: false, reply: REPLIES.relayTrick(raw) });
  if (raw.startsWith('@')) return trick();
  let local: string;
  let rest: string;
  let quoted = false;
  if (raw.startsWith('"')) {
    // Quoted-string (RFC 5321 4.1.2): qtextSMTP or a backslash pair.
    let i = 1;
    local = '';
    for (; i < raw.length && raw[i] !== '"'; i++) {
      if (raw[i] === '\\') i++;
      if (i >= raw.length) return bad();
      local += raw[i];
    }
    if (raw[i] !== '"' || raw[i + 1] !== '@') return bad();
    rest = raw.slice(i + 2);
    quoted = true;
  } else {
    const at = raw.lastIndexOf('@');
    if (at <= 0) return raw.includes('!') || raw.includes('%') ? trick() : bad();
    local = raw.slice(0, at);
    rest = raw.slice(at + 1);
    if (local.includes('@')) return bad();
    if (!local.split('.').every((atom) => ATEXT.test(atom))) return bad();
  }
  if (/[@%!]/.test(local)) return trick();
  if (local.length === 0 || Buffer.byteLength(local) > 64) return bad();
  const domain = normalDomain(rest);
  if (!domain) return bad();
  const needsQuotes = quoted && !local.split('.').every((atom) => ATEXT.test(atom));
  const shown = needsQuotes ? `"${local.replace(/(["\\])/g, '\\$1')}"` : local;
  const address = `${shown}@${domain}`;
  // RFC 5321 4.5.3.1.3: a path is at most 256 octets including the brackets.
  if (Buffer.byteLength(address) > 254) return bad();
  return {
    ok: true,
    mailbox: { local, domain, address, utf8: NON_ASCII.test(address) || NON_ASCII.test(rest) },
  };
}

/** Splits "<path> params" after "FROM:" or "TO:". */
function splitPath(arg: string): { path: string; params: string[] } | null {
  const s = arg.trimStart();
  if (!s.startsWith('<')) return null;
  const end = s.indexOf('>');
  if (end < 0) return null;
  const after = s.slice(end + 1);
  if (after && !after.startsWith(' ')) return null;
  return { path: s.slice(1, end), params: after.split(' ').filter(Boolean) };
}

function parseParams(list: string[]): Map<string, string | true> | SmtpReply {
  const out = new Map<string, string | true>();
  for (const p of list) {
    const eq = p.indexOf('=');
    const key = (eq < 0 ? p : p.slice(0, eq)).toUpperCase();
    if (!/^[A-Z0-9][A-Z0-9-]*$/.test(key)) return REPLIES.badParameter(`bad parameter ${p}`);
    if (out.has(key)) return REPLIES.badParameter(`duplicate parameter ${key}`);
    out.set(key, eq < 0 ? true : p.slice(eq + 1));
  }
  return out;
}

/** RFC 3461 4: xtext is printable ASCII with "+XX" for '+', '=' and anything outside 33..126. */
function isXtext(s: string): boolean {
  return /^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$/.test(s);
}

function parseMail(arg: string): Parsed {
  const m = /^FROM:/i.exec(arg);
  const sp = m ? splitPath(arg.slice(m[0].length)) : null;
  if (!sp) return fail(REPLIES.badParameter('Syntax: MAIL FROM:<address>'));
  let from: Mailbox | null = null;
  if (sp.path !== '') {
    const a = parseMailbox(sp.path);
    if (!a.ok) return a;
    from = a.mailbox;
  }
  const params = parseParams(sp.params);
  if (!(params instanceof Map)) return fail(params);
  const out: MailParams = { smtputf8: false };
  for (const [key, value] of params) {
    switch (key) {
      case 'SIZE': // RFC 1870 6
        if (value === true || !/^\d{1,15}$/.test(value)) return fail(REPLIES.badParameter('bad SIZE'));
        out.size = Number(value);
        break;
      case 'BODY': {
        // RFC 6152 2, RFC 3030 3 (BINARYMIME).
        const v = value === true ? '' : value.toUpperCase();
        if (v !== '7BIT' && v !== '8BITMIME' && v !== 'BINARYMIME')
          return fail(REPLIES.badParameter('bad BODY'));
        out.body = v;
        break;
      }
      case 'SMTPUTF8': // RFC 6531 3.4: no value
        if (value !== true) return fail(REPLIES.badParameter('SMTPUTF8 takes no value'));
        out.smtputf8 = true;
        break;
      case 'RET': {
        // RFC 3461 4.3
        const v = value === true ? '' : value.toUpperCase();
        if (v !== 'FULL' && v !== 'HDRS') return fail(REPLIES.badParameter('bad RET'));
        out.ret = v;
        break;
      }
      case 'ENVID': // RFC 3461 4.4: xtext, at most 100 characters
        if (value === true || value.length > 100 || !isXtext(value))
          return fail(REPLIES.badParameter('bad ENVID'));
        out.envid = value;
        break;
      case 'AUTH': // RFC 4954 5: accepted, not trusted (we do not relay on its word)
        if (value === true) return fail(REPLIES.badParameter('bad AUTH'));
        break;
      default:
        return fail(REPLIES.unknownParameter(key));
    }
  }
  return ok({ verb: 'MAIL', from, params: out });
}

function parseRcpt(arg: string): Parsed {
  const m = /^TO:/i.exec(arg);
  const sp = m ? splitPath(arg.slice(m[0].length)) : null;
  if (!sp) return fail(REPLIES.badParameter('Syntax: RCPT TO:<address>'));
  if (sp.path === '') return fail(REPLIES.badAddress(''));
  // RFC 5321 4.5.1: "Postmaster" without a domain must be accepted; the session adds ours.
  const postmaster = /^postmaster$/i.test(sp.path);
  const a: AddressResult = postmaster
    ? { ok: true, mailbox: { local: 'postmaster', domain: '', address: 'postmaster', utf8: false } }
    : parseMailbox(sp.path);
  if (!a.ok) return a;
  const params = parseParams(sp.params);
  if (!(params instanceof Map)) return fail(params);
  const out: RcptParams = {};
  for (const [key, value] of params) {
    if (key === 'NOTIFY') {
      // RFC 3461 4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
      const list = value === true ? [] : value.toUpperCase().split(',');
      const known = list.every((v) => ['SUCCESS', 'FAILURE', 'DELAY', 'NEVER'].includes(v));
      if (!known || list.length === 0 || (list.includes('NEVER') && list.length > 1))
        return fail(REPLIES.badParameter('bad NOTIFY'));
      out.notify = [...new Set(list)];
    } else if (key === 'ORCPT') {
      // RFC 3461 4.2: addr-type ";" xtext
      if (value === true || !/^[A-Za-z0-9-]+;/.test(value) || value.length > 500)
        return fail(REPLIES.badParameter('bad ORCPT'));
      const semi = value.indexOf(';');
      if (!isXtext(value.slice(semi + 1))) return fail(REPLIES.badParameter('bad ORCPT'));
      out.orcpt = value;
    } else return fail(REPLIES.unknownParameter(key));
  }
  return ok({ verb: 'RCPT', to: a.mailbox, params: out });
}

/** Parses one decoded command line. */
export function parseCommand(text: string): Parsed {
  const sp = text.indexOf(' ');
  const verb = (sp < 0 ? text : text.slice(0, sp)).toUpperCase();
  const arg = sp < 0 ? '' : text.slice(sp + 1).trim();
  switch (verb) {
    case 'EHLO':
    case 'HELO':
      // RFC 5321 4.1.1.1: a domain or an address literal; we keep any single token (Postfix does).
      if (!arg || /\s/.test(arg)) return fail(REPLIES.badParameter(`Syntax: ${verb} hostname`));
      return ok({ verb, domain: arg.slice(0, 255) });
    case 'MAIL':
      return parseMail(arg);
    case 'RCPT':
      return parseRcpt(arg);
    case 'BDAT': {
      // RFC 3030 2: BDAT chunk-size [LAST]
      const m = /^(\d{1,15})(?: +(LAST))?$/i.exec(arg);
      if (!m) return fail(REPLIES.badParameter('Syntax: BDAT size [LAST]'));
      return ok({ verb: 'BDAT', size: Number(m[1]), last: !!m[2] });
    }
    case 'AUTH': {
      // RFC 4954 4: AUTH mechanism [initial-response]
      const m = /^([A-Za-z0-9_-]{1,20})(?: +(\S+))?$/.exec(arg);
      if (!m?.[1]) return fail(REPLIES.badParameter('Syntax: AUTH mechanism [initial-response]'));
      return ok({ verb: 'AUTH', mechanism: m[1].toUpperCase(), initial: m[2] });
    }
    case 'VRFY':
    case 'EXPN':
    case 'HELP':
      return ok({ verb, arg });
    case 'DATA':
    case 'RSET':
    case 'NOOP':
    case 'QUIT':
    case 'STARTTLS':
      // RFC 5321 4.1.1.9: NOOP may carry a string; the others take none.
      if (arg && verb !== 'NOOP') return fail(REPLIES.badParameter(`Syntax: ${verb}`));
      return ok({ verb });
    default:
      return fail(REPLIES.unknownCommand());
  }
}
