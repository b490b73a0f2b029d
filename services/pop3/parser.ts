/**
 * POP3 command parser: one line (without its CRLF) → a typed command with validated arguments, or
 * the text of an -ERR. Pure: no I/O, no session state.
 *
 * RFC 1939 section 3: a command is a case-insensitive keyword of 3 or 4 characters, then zero or
 * more arguments separated by a space. Only printable ASCII is accepted, except in PASS, whose
 * single argument is the rest of the line and may contain spaces (RFC 1939 section 7) and UTF-8.
 */

interface CommandArgs {
  USER: { user: string };
  PASS: { password: string };
  AUTH: { mechanism: string; initialResponse: Buffer | null };
  CAPA: object;
  STLS: object;
  QUIT: object;
  NOOP: object;
  STAT: object;
  RSET: object;
  LIST: { msg: number | null };
  UIDL: { msg: number | null };
  RETR: { msg: number };
  DELE: { msg: number };
  TOP: { msg: number; lines: number };
}

/** Keywords this server knows. */
export type Keyword = keyof CommandArgs;

/** A parsed command; `Pop3Command<'TOP'>` is the TOP command. */
export type Pop3Command<K extends Keyword = Keyword> = { [P in K]: { name: P } & CommandArgs[P] }[K];

export type ParseResult =
  | { ok: true; command: Pop3Command }
  /** `keyword` is set when the keyword is known and only its arguments are wrong. */
  | { ok: false; keyword: Keyword | null; error: string };

interface Args {
  /** Arguments split on spaces. */
  tokens: string[];
  /** Everything after the keyword and one space, untouched (PASS). */
  rest: string;
}

const MESSAGE_NUMBER = /^[0-9]{1,10}$/;
// RFC 4422 section 3.1: a mechanism name is 1 to 20 of A-Z, 0-9, '-' and '_'.
const SASL_MECHANISM = /^[A-Z0-9_-]{1,20}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function noArgs<K extends Keyword>(name: K, make: () => Pop3Command<K>) {
  return (a: Args): Pop3Command<K> | string =>
    a.tokens.length === 0 ? make() : `${name} takes no arguments`;
}

/** RFC 1939 section 5: a message-number is a decimal number; its range is the session's business. */
function messageNumber(token: string): number | null {
  return MESSAGE_NUMBER.test(token) ? Number(token) : null;
}

function optionalMessage(name: 'LIST' | 'UIDL', a: Args): number | null | string {
  if (a.tokens.length > 1) return `${name} takes at most one argument`;
  const token = a.tokens[0];
  if (token === undefined) return null;
  return messageNumber(token) ?? 'invalid message number';
}

function requiredMessage(name: 'RETR' | 'DELE', a: Args): number | string {
  if (a.tokens.length !== 1) return `${name} takes exactly one argument: a message number`;
  return messageNumber(a.tokens[0] ?? '') ?? 'invalid message number';
}

/** Decodes strict base64 (RFC 4648 section 4, padded, no whitespace); '=' alone is empty. */
export function decodeBase64(text: string): Buffer | null {
  if (text === '=') return Buffer.alloc(0);
  if (text.length === 0 || !BASE64.test(text)) return null;
  return Buffer.from(text, 'base64');
}

/** Argument grammar of each command. Each entry returns the command, or the error text. */
const GRAMMAR: { [K in Keyword]: (a: Args) => Pop3Command<K> | string } = {
  USER(a) {
    // RFC 1939 section 7: USER name, one argument.
    const user = a.tokens[0];
    if (a.tokens.length !== 1 || user === undefined) return 'USER takes exactly one argument';
    return { name: 'USER', user };
  },
  PASS(a) {
    // RFC 1939 section 7: the password is everything after "PASS ", spaces included.
    if (a.rest.length === 0) return 'PASS takes exactly one argument';
    return { name: 'PASS', password: a.rest };
  },
  AUTH(a) {
    // RFC 5034 section 4: AUTH mechanism [initial-response]; "=" is an empty initial response.
    const [mech, initial, ...extra] = a.tokens;
    if (mech === undefined) return 'AUTH needs a mechanism name';
    if (extra.length > 0) return 'AUTH takes a mechanism and at most an initial response';
    const mechanism = mech.toUpperCase();
    if (!SASL_MECHANISM.test(mechanism)) return 'invalid mechanism name';
    if (initial === undefined) return { name: 'AUTH', mechanism, initialResponse: null };
    const initialResponse = decodeBase64(initial);
    if (!initialResponse) return 'invalid base64 in initial response';
    return { name: 'AUTH', mechanism, initialResponse };
  },
  CAPA: noArgs('CAPA', () => ({ name: 'CAPA' })),
  STLS: noArgs('STLS', () => ({ name: 'STLS' })),
  QUIT: noArgs('QUIT', () => ({ name: 'QUIT' })),
  NOOP: noArgs('NOOP', () => ({ name: 'NOOP' })),
  STAT: noArgs('STAT', () => ({ name: 'STAT' })),
  RSET: noArgs('RSET', () => ({ name: 'RSET' })),
  LIST(a) {
    const msg = optionalMessage('LIST', a);
    return typeof msg === 'string' ? msg : { name: 'LIST', msg };
  },
  UIDL(a) {
    const msg = optionalMessage('UIDL', a);
    return typeof msg === 'string' ? msg : { name: 'UIDL', msg };
  },
  RETR(a) {
    const msg = requiredMessage('RETR', a);
    return typeof msg === 'string' ? msg : { name: 'RETR', msg };
  },
  DELE(a) {
    const msg = requiredMessage('DELE', a);
    return typeof msg === 'string' ? msg : { name: 'DELE', msg };
  },
  TOP(a) {
    // RFC 1939 section 7: TOP msg n, n a non-negative number of body lines.
    if (a.tokens.length !== 2) return 'TOP takes two arguments: a message number and a line count';
    const msg = messageNumber(a.tokens[0] ?? '');
    if (msg === null) return 'invalid message number';
    const count = a.tokens[1] ?? '';
    if (!/^[0-9]+$/.test(count)) return 'invalid line count';
    // More lines than any message has means the whole message.
    const lines = Math.min(Number(count), Number.MAX_SAFE_INTEGER);
    return { name: 'TOP', msg, lines };
  },
};

function isKeyword(word: string): word is Keyword {
  return Object.hasOwn(GRAMMAR, word);
}

/** True for printable ASCII (SP to '~'). */
function isPrintableAscii(bytes: Uint8Array): boolean {
  for (const b of bytes) if (b < 0x20 || b > 0x7e) return false;
  return true;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Parses one command line (without CRLF). */
export function parseCommand(line: Buffer): ParseResult {
  const space = line.indexOf(0x20);
  const word = line.subarray(0, space < 0 ? line.length : space);
  if (word.length === 0) return { ok: false, keyword: null, error: 'empty command' };
  if (!isPrintableAscii(word)) return { ok: false, keyword: null, error: 'unknown command' };
  const upper = word.toString('latin1').toUpperCase();
  if (!isKeyword(upper)) return { ok: false, keyword: null, error: 'unknown command' };
  const restBytes = space < 0 ? Buffer.alloc(0) : line.subarray(space + 1);
  let rest: string;
  if (upper === 'PASS') {
    // Bytes from 0x80 up may be UTF-8; C0 controls and DEL never belong in a password.
    if (restBytes.some((b) => b < 0x20 || b === 0x7f)) {
      return { ok: false, keyword: upper, error: 'control character in password' };
    }
    try {
      rest = utf8.decode(restBytes);
    } catch {
      return { ok: false, keyword: upper, error: 'password is not valid UTF-8' };
    }
  } else {
    if (!isPrintableAscii(restBytes))
      return { ok: false, keyword: upper, error: 'arguments must be printable ASCII' };
    rest = restBytes.toString('latin1');
  }
  // Arguments are separated by spaces; runs of spaces and trailing spaces are tolerated.
  const tokens = rest.split(' ').filter((t) => t.length > 0);
  const result = GRAMMAR[upper]({ tokens, rest });
  return typeof result === 'string'
    ? { ok: false, keyword: upper, error: result }
    : { ok: true, command: result };
}

/** A client line during a SASL exchange (RFC 5034 section 4). */
export type SaslResponse =
  { kind: 'cancel' } | { kind: 'data'; data: Buffer } | { kind: 'invalid'; error: string };

/** Parses a SASL response line: "*" cancels, otherwise base64 (an empty line is an empty response). */
export function parseSaslResponse(line: Buffer): SaslResponse {
  const text = line.toString('latin1');
  if (text === '*') return { kind: 'cancel' };
  if (text.length === 0) return { kind: 'data', data: Buffer.alloc(0) };
  const data = decodeBase64(text);
  return data ? { kind: 'data', data } : { kind: 'invalid', error: 'invalid base64 in SASL response' };
}

export interface PlainCredentials {
  /** Identity to act as; '' when the client did not ask for one. */
  authzid: string;
  authcid: string;
  password: string;
}

/** Decodes a SASL PLAIN message (RFC 4616 section 2): [authzid] NUL authcid NUL passwd, UTF-8. */
export function decodeSaslPlain(data: Buffer): PlainCredentials | null {
  const first = data.indexOf(0);
  if (first < 0) return null;
  const second = data.indexOf(0, first + 1);
  if (second < 0 || data.indexOf(0, second + 1) >= 0) return null;
  try {
    const authzid = utf8.decode(data.subarray(0, first));
    const authcid = utf8.decode(data.subarray(first + 1, second));
    const password = utf8.decode(data.subarray(second + 1));
    if (authcid.length === 0 || password.length === 0) return null;
    return { authzid, authcid, password };
  } catch {
    return null;
  }
}
