/**
 * IMAP command parser: one framed command (line segments and literals) → a typed command,
 * or a parse error the session answers with BAD. Pure: no I/O, no storage.
 *
 * Grammar references are to RFC 9051 section 9 (formal syntax), which RFC 3501 clients also
 * follow for everything implemented here.
 */
import type { Frame } from './imap-stream.ts';
import { MAX_SEARCH_NESTING } from './limits.ts';
import { mailboxNameFromWire } from './mailbox-name.ts';
import { parseSequenceSet } from './sequence-set.ts';
import { SAVED_RESULT } from './sequence-set.ts';
import type { SequenceSet } from './sequence-set.ts';

// Byte constants of the grammar.
const SP = 0x20;
const DQUOTE = 0x22;
const BACKSLASH = 0x5c;
const LPAREN = 0x28;
const RPAREN = 0x29;
const LBRACE = 0x7b;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const LT = 0x3c;
const GT = 0x3e;
const DOT = 0x2e;
const PERCENT = 0x25;
const ASTERISK = 0x2a;
const PLUS = 0x2b;
const TILDE = 0x7e;
const DOLLAR = 0x24;

/** RFC 9051 9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials. */
function isAtomChar(c: number): boolean {
  return (
    c > 0x20 &&
    c < 0x7f &&
    c !== LPAREN &&
    c !== RPAREN &&
    c !== LBRACE &&
    c !== PERCENT &&
    c !== ASTERISK &&
    c !== DQUOTE &&
    c !== BACKSLASH &&
    c !== RBRACKET
  );
}

/** ASTRING-CHAR = ATOM-CHAR / resp-specials. */
function isAstringChar(c: number): boolean {
  return isAtomChar(c) || c === RBRACKET;
}

/** list-char = ATOM-CHAR / list-wildcards / resp-specials. */
function isListChar(c: number): boolean {
  return isAstringChar(c) || c === PERCENT || c === ASTERISK;
}

/** tag = 1*<any ASTRING-CHAR except "+">. */
function isTagChar(c: number): boolean {
  return isAstringChar(c) && c !== PLUS;
}

// ---------------------------------------------------------------------------------------------
// Command types

export interface Partial {
  start: number;
  length: number;
}

export type SectionText = 'HEADER' | 'HEADER.FIELDS' | 'HEADER.FIELDS.NOT' | 'TEXT' | 'MIME';

/** `BODY[1.2.HEADER.FIELDS (SUBJECT)]`: part path, then what of it. */
export interface Section {
  part: number[];
  text: SectionText | null;
  /** Header field names for HEADER.FIELDS (.NOT), as the client wrote them. */
  fields: string[];
}

export type SimpleFetchAttribute =
  | 'UID'
  | 'FLAGS'
  | 'INTERNALDATE'
  | 'RFC822.SIZE'
  | 'ENVELOPE'
  | 'BODYSTRUCTURE'
  | 'BODY'
  | 'RFC822'
  | 'RFC822.HEADER'
  | 'RFC822.TEXT'
  /** RFC 7162 3.1.4. */
  | 'MODSEQ';

export type FetchItem =
  | { kind: 'attribute'; name: SimpleFetchAttribute }
  /** BODY[...] / BODY.PEEK[...] / BINARY[...] / BINARY.PEEK[...] (RFC 3516). */
  | { kind: 'section'; peek: boolean; binary: boolean; section: Section; partial: Partial | null }
  | { kind: 'binarySize'; part: number[] };

export type SearchKey =
  | { op: 'all' }
  | { op: 'and'; keys: SearchKey[] }
  | { op: 'or'; left: SearchKey; right: SearchKey }
  | { op: 'not'; key: SearchKey }
  /** A system flag or keyword present (`set`) or absent. */
  | { op: 'flag'; flag: string; set: boolean }
  | { op: 'new' }
  | { op: 'old' }
  | { op: 'recent' }
  | { op: 'seq'; set: SequenceSet }
  | { op: 'uid'; set: SequenceSet }
  | { op: 'larger'; size: number }
  | { op: 'smaller'; size: number }
  /** Day comparisons; `day` is days since the Unix epoch. */
  | { op: 'date'; field: 'internal' | 'sent'; compare: 'before' | 'on' | 'since'; day: number }
  | { op: 'header'; name: string; value: string }
  | { op: 'body'; value: string }
  | { op: 'text'; value: string }
  /** RFC 7162 3.1.5: MODSEQ of the message at least `modseq`. */
  | { op: 'modseq'; modseq: number };

/** RFC 4731 / RFC 9051 6.4.4.1 result options; SAVE is RFC 5182. */
export type SearchReturn = 'MIN' | 'MAX' | 'ALL' | 'COUNT' | 'SAVE';

/** RFC 7162 3.2.5 QRESYNC parameters of SELECT/EXAMINE. */
export interface QresyncParams {
  uidValidity: number;
  modseq: number;
  knownUids: SequenceSet | null;
  /** Known sequence numbers and the UIDs they had, to narrow what VANISHED reports. */
  seqMatch: { seqs: SequenceSet; uids: SequenceSet } | null;
}

/** One message of a (MULTI)APPEND (RFC 3502). */
export interface AppendMessage {
  flags: string[];
  date: number | null;
  message: Buffer;
  /** The literal went to storage as it arrived (session.ts); `message` is then empty. */
  streamed?: true;
}

/** RFC 5258 selection options and RFC 5258/5819 return options of LIST. */
export interface ListArgs {
  reference: string;
  patterns: string[];
  selection: string[];
  returnOptions: string[];
  /** RFC 5819 RETURN (STATUS (...)). */
  statusItems: string[] | null;
  /** Whether the extended syntax was used (responses then may carry CHILDINFO). */
  extended: boolean;
}

export type StoreOperation = 'add' | 'remove' | 'replace';

/** Arguments of each command, by name. */
export interface CommandArgs {
  CAPABILITY: Record<string, never>;
  NOOP: Record<string, never>;
  LOGOUT: Record<string, never>;
  STARTTLS: Record<string, never>;
  LOGIN: { username: string; password: string };
  AUTHENTICATE: { mechanism: string; initialResponse: string | null };
  ID: { params: Array<[string, string | null]> | null };
  NAMESPACE: Record<string, never>;
  ENABLE: { capabilities: string[] };
  SELECT: SelectArgs;
  EXAMINE: SelectArgs;
  CREATE: { mailbox: string };
  DELETE: { mailbox: string };
  RENAME: { mailbox: string; target: string };
  SUBSCRIBE: { mailbox: string };
  UNSUBSCRIBE: { mailbox: string };
  LIST: ListArgs;
  LSUB: ListArgs;
  STATUS: { mailbox: string; items: string[] };
  APPEND: { mailbox: string; messages: AppendMessage[] };
  GETQUOTA: { root: string };
  COMPRESS: { mechanism: string };
  GETQUOTAROOT: { mailbox: string };
  SETQUOTA: { root: string; resources: Array<[string, number]> };
  CHECK: Record<string, never>;
  CLOSE: Record<string, never>;
  UNSELECT: Record<string, never>;
  /** `set` only for UID EXPUNGE (RFC 4315). */
  EXPUNGE: { set: SequenceSet | null };
  IDLE: Record<string, never>;
  /** `returns` is null for the RFC 3501 form, a list (possibly empty) for ESEARCH (RFC 4731). */
  SEARCH: { charset: string | null; key: SearchKey; returns: SearchReturn[] | null };
  /** RFC 5256 SORT (with RFC 5957 DISPLAYFROM/DISPLAYTO). */
  SORT: { criteria: SortCriterion[]; charset: string; key: SearchKey };
  /** RFC 5256 THREAD. */
  THREAD: { algorithm: string; charset: string; key: SearchKey };
  /** RFC 7162 3.1.4.1 CHANGEDSINCE, 3.2.6 VANISHED. */
  FETCH: { set: SequenceSet; items: FetchItem[]; changedSince: number | null; vanished: boolean };
  /** RFC 7162 3.1.3 UNCHANGEDSINCE. */
  STORE: {
    set: SequenceSet;
    operation: StoreOperation;
    silent: boolean;
    flags: string[];
    unchangedSince: number | null;
  };
  COPY: { set: SequenceSet; mailbox: string };
  MOVE: { set: SequenceSet; mailbox: string };
}

export type CommandName = keyof CommandArgs;

export type SortKey =
  'ARRIVAL' | 'CC' | 'DATE' | 'FROM' | 'SIZE' | 'SUBJECT' | 'TO' | 'DISPLAYFROM' | 'DISPLAYTO';

export interface SortCriterion {
  key: SortKey;
  reverse: boolean;
}

const SORT_KEYS = new Set([
  'ARRIVAL',
  'CC',
  'DATE',
  'FROM',
  'SIZE',
  'SUBJECT',
  'TO',
  'DISPLAYFROM',
  'DISPLAYTO',
]);

export interface SelectArgs {
  mailbox: string;
  /** RFC 7162 3.1.8 (CONDSTORE) parameter. */
  condstore: boolean;
  qresync: QresyncParams | null;
}

/** A parsed command: `uid` is true for the `UID` forms of FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE. */
export type Command = {
  [K in CommandName]: { tag: string; name: K; uid: boolean; args: CommandArgs[K] };
}[CommandName];

export type CommandOf<K extends CommandName> = Extract<Command, { name: K }>;

export type ParseResult =
  | { ok: true; command: Command }
  /** `tag` is null when the line has no usable tag: the answer is an untagged BAD. */
  | { ok: false; tag: string | null; text: string };

/** Commands that take a `UID` prefix (RFC 9051 6.4.9, RFC 4315, RFC 6851). */
const UID_COMMANDS = new Set<CommandName>([
  'FETCH',
  'STORE',
  'SEARCH',
  'COPY',
  'MOVE',
  'EXPUNGE',
  'SORT',
  'THREAD',
]);

// ---------------------------------------------------------------------------------------------
// Cursor over a frame

class ParseError extends Error {}

/** Reads a command left to right; a literal marker at the end of a segment yields the literal. */
class Cursor {
  readonly #segments: readonly Buffer[];
  readonly #literals: readonly Buffer[];
  readonly #streamed: ReadonlySet<number>;
  #seg = 0;
  #pos = 0;
  /** Whether the literal last read was streamed rather than buffered. */
  lastLiteralStreamed = false;

  constructor(frame: Frame) {
    this.#segments = frame.segments;
    this.#literals = frame.literals;
    this.#streamed = new Set(frame.streamed ?? []);
  }

  #buf(): Buffer {
    return this.#segments[this.#seg] ?? Buffer.alloc(0);
  }

  fail(message: string): never {
    throw new ParseError(message);
  }

  /** The byte at the cursor, or -1 at the end of a segment. */
  peek(): number {
    const buf = this.#buf();
    return this.#pos < buf.length ? (buf[this.#pos] as number) : -1;
  }

  atEnd(): boolean {
    return this.#seg >= this.#segments.length - 1 && this.#pos >= this.#buf().length;
  }

  end(): void {
    if (!this.atEnd()) this.fail('Unexpected characters at end of command');
  }

  sp(): void {
    if (this.peek() !== SP) this.fail('Expected a space');
    this.#pos++;
  }

  /** Consumes a space if one follows and more arguments come. */
  maybeSp(): boolean {
    if (this.peek() !== SP) return false;
    this.#pos++;
    return true;
  }

  /** Whether the segment continues with `text` (ASCII, case-insensitive), without consuming it. */
  lookingAt(text: string): boolean {
    const buf = this.#buf();
    const ahead = buf.subarray(this.#pos, this.#pos + text.length).toString('latin1');
    return ahead.toUpperCase() === text.toUpperCase();
  }

  byte(expected: number, what: string): void {
    if (this.peek() !== expected) this.fail(`Expected ${what}`);
    this.#pos++;
  }

  consume(expected: number): boolean {
    if (this.peek() !== expected) return false;
    this.#pos++;
    return true;
  }

  #takeWhile(accept: (c: number) => boolean): Buffer {
    const buf = this.#buf();
    const start = this.#pos;
    while (this.#pos < buf.length && accept(buf[this.#pos] as number)) this.#pos++;
    return buf.subarray(start, this.#pos);
  }

  /** 1*ATOM-CHAR as a string. */
  atom(what = 'an atom'): string {
    const bytes = this.#takeWhile(isAtomChar);
    if (bytes.length === 0) this.fail(`Expected ${what}`);
    return bytes.toString('latin1');
  }

  /** An atom, upper-cased (keywords of the grammar are case-insensitive). */
  keyword(what = 'a keyword'): string {
    return this.atom(what).toUpperCase();
  }

  tag(): string {
    const bytes = this.#takeWhile(isTagChar);
    if (bytes.length === 0) this.fail('Expected a tag');
    return bytes.toString('latin1');
  }

  /** number = 1*DIGIT, up to 2^63 as the RFC allows but kept within safe integers. */
  number(what = 'a number'): number {
    const digits = this.#takeWhile((c) => c >= 0x30 && c <= 0x39);
    if (digits.length === 0 || digits.length > 15) this.fail(`Expected ${what}`);
    return Number(digits.toString('latin1'));
  }

  /**
   * mod-sequence-value = 1*DIGIT up to 2^63-1 (RFC 7162 7). The store's values stay far below
   * 2^53; a larger one (from another server) is read approximately, which only errs towards
   * "nothing changed since".
   */
  modseq(what = 'a mod-sequence'): number {
    const digits = this.#takeWhile((c) => c >= 0x30 && c <= 0x39);
    if (digits.length === 0 || digits.length > 19) this.fail(`Expected ${what}`);
    const value = BigInt(digits.toString('latin1'));
    if (value > 0x7fffffffffffffffn) this.fail(`Expected ${what}`);
    return Number(value);
  }

  /** Characters allowed in sequence sets: digits, `:`, `,`, `*`. */
  sequenceSet(): SequenceSet {
    if (this.consume(DOLLAR)) return SAVED_RESULT;
    const text = this.#takeWhile(
      (c) => (c >= 0x30 && c <= 0x39) || c === 0x3a || c === 0x2c || c === ASTERISK,
    ).toString('latin1');
    const set = parseSequenceSet(text);
    if (!set) this.fail('Invalid sequence set');
    return set;
  }

  /** Letters, digits and dots: the names of fetch attributes and section specs. */
  dottedName(): string {
    return this.#takeWhile(
      (c) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === DOT,
    )
      .toString('latin1')
      .toUpperCase();
  }

  /** quoted = DQUOTE *QUOTED-CHAR DQUOTE, with `\"` and `\\` escapes. */
  quoted(): Buffer {
    this.byte(DQUOTE, 'a quoted string');
    const buf = this.#buf();
    const out: number[] = [];
    for (;;) {
      if (this.#pos >= buf.length) this.fail('Unterminated quoted string');
      const c = buf[this.#pos++] as number;
      if (c === DQUOTE) break;
      if (c === BACKSLASH) {
        const next = buf[this.#pos++];
        if (next !== DQUOTE && next !== BACKSLASH) this.fail('Invalid escape in quoted string');
        out.push(next);
      } else {
        out.push(c);
      }
    }
    return Buffer.from(out);
  }

  /** literal = "{" number ["+"] "}" CRLF *CHAR8, the data coming from the frame; `~{` (literal8) where allowed. */
  literal(allow8 = false): Buffer {
    const buf = this.#buf();
    const rest = buf.subarray(this.#pos).toString('latin1');
    const form = allow8 ? /^~?\{\d{1,20}\+?\}$/ : /^\{\d{1,20}\+?\}$/;
    if (!form.test(rest) || this.#seg >= this.#literals.length) {
      this.fail('Invalid literal');
    }
    const data = this.#literals[this.#seg] as Buffer;
    this.lastLiteralStreamed = this.#streamed.has(this.#seg);
    this.#seg++;
    this.#pos = 0;
    return data;
  }

  /** string = quoted / literal. */
  string(): Buffer {
    const c = this.peek();
    if (c === DQUOTE) return this.quoted();
    if (c === LBRACE) return this.literal();
    return this.fail('Expected a string');
  }

  /** astring = 1*ASTRING-CHAR / string. */
  astring(what = 'a string'): Buffer {
    const c = this.peek();
    if (c === DQUOTE || c === LBRACE) return this.string();
    const bytes = this.#takeWhile(isAstringChar);
    if (bytes.length === 0) this.fail(`Expected ${what}`);
    return bytes;
  }

  /** nstring = string / "NIL". */
  nstring(): Buffer | null {
    const c = this.peek();
    if (c === DQUOTE || c === LBRACE) return this.string();
    if (this.keyword('a string or NIL') !== 'NIL') this.fail('Expected a string or NIL');
    return null;
  }

  /** list-mailbox = 1*list-char / string. */
  listMailbox(): Buffer {
    const c = this.peek();
    if (c === DQUOTE || c === LBRACE) return this.string();
    const bytes = this.#takeWhile(isListChar);
    if (bytes.length === 0) this.fail('Expected a mailbox pattern');
    return bytes;
  }

  /** `(` item *(SP item) `)`; `allowEmpty` for lists that may be `()`. */
  list<T>(item: () => T, allowEmpty: boolean): T[] {
    this.byte(LPAREN, '(');
    const out: T[] = [];
    if (this.consume(RPAREN)) {
      if (!allowEmpty) this.fail('Empty list');
      return out;
    }
    for (;;) {
      out.push(item());
      if (this.consume(RPAREN)) return out;
      this.sp();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Shared argument readers

function mailbox(c: Cursor): string {
  return mailboxNameFromWire(c.astring('a mailbox name'));
}

/** flag = "\Answered" / "\Flagged" / "\Deleted" / "\Seen" / "\Draft" / flag-keyword / flag-extension. */
function flag(c: Cursor): string {
  if (c.consume(BACKSLASH)) return '\\' + canonicalSystemFlag(c.atom('a flag'));
  return c.atom('a flag');
}

const SYSTEM_FLAGS = ['\\Answered', '\\Flagged', '\\Deleted', '\\Seen', '\\Draft', '\\Recent'];

/** System flags are case-insensitive; the store keeps them in their RFC spelling. */
function canonicalSystemFlag(name: string): string {
  const known = SYSTEM_FLAGS.find((f) => f.slice(1).toLowerCase() === name.toLowerCase());
  return known ? known.slice(1) : name;
}

function flagList(c: Cursor): string[] {
  return c.list(() => flag(c), true);
}

function utf8(bytes: Buffer): string {
  return bytes.toString('utf8');
}

const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];

/** date = date-text / DQUOTE date-text DQUOTE; date-text = date-day "-" date-month "-" date-year. */
function searchDate(c: Cursor): number {
  const quoted = c.peek() === DQUOTE;
  const text = quoted ? c.quoted().toString('latin1') : c.atom('a date');
  const m = /^(\d{1,2})-([A-Za-z]{3})-(\d{4})$/.exec(text);
  const month = m ? MONTHS.indexOf((m[2] as string).toUpperCase()) : -1;
  if (!m || month < 0) return c.fail('Invalid date');
  const day = Number(m[1]);
  const ms = Date.UTC(Number(m[3]), month, day);
  if (day < 1 || new Date(ms).getUTCDate() !== day) return c.fail('Invalid date');
  return Math.floor(ms / 86_400_000);
}

/** date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE. */
function dateTime(c: Cursor): number {
  const text = c.quoted().toString('latin1');
  const m = /^([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$/.exec(text);
  const month = m ? MONTHS.indexOf((m[2] as string).toUpperCase()) : -1;
  if (!m || month < 0) return c.fail('Invalid date-time');
  const [, day, , year, hh, mm, ss, sign, zh, zm] = m as unknown as string[];
  const local = Date.UTC(Number(year), month, Number(day), Number(hh), Number(mm), Number(ss));
  const offset = (Number(zh) * 60 + Number(zm)) * 60_000 * (sign === '-' ? -1 : 1);
  if (Number.isNaN(local)) return c.fail('Invalid date-time');
  return local - offset;
}

// ---------------------------------------------------------------------------------------------
// FETCH

const FETCH_MACROS: Record<string, SimpleFetchAttribute[]> = {
  ALL: ['FLAGS', 'INTERNALDATE', 'RFC822.SIZE', 'ENVELOPE'],
  FAST: ['FLAGS', 'INTERNALDATE', 'RFC822.SIZE'],
  FULL: ['FLAGS', 'INTERNALDATE', 'RFC822.SIZE', 'ENVELOPE', 'BODY'],
};

const SIMPLE_ATTRIBUTES = new Set<string>([
  'UID',
  'FLAGS',
  'INTERNALDATE',
  'RFC822.SIZE',
  'ENVELOPE',
  'BODYSTRUCTURE',
  'BODY',
  'RFC822',
  'RFC822.HEADER',
  'RFC822.TEXT',
  'MODSEQ',
]);

/** section = "[" [section-spec] "]". */
function section(c: Cursor, binary: boolean): Section {
  c.byte(LBRACKET, '[');
  const spec = c.dottedName();
  const names = spec === '' ? [] : spec.split('.');
  const part: number[] = [];
  while (names.length > 0 && /^\d+$/.test(names[0] as string)) {
    const n = Number(names.shift());
    if (n < 1) c.fail('Invalid section part');
    part.push(n);
  }
  const rest = names.join('.');
  let text: SectionText | null = null;
  let fields: string[] = [];
  if (rest !== '') {
    if (binary) c.fail('BINARY takes only a part number');
    if (rest === 'HEADER' || rest === 'TEXT' || rest === 'HEADER.FIELDS' || rest === 'HEADER.FIELDS.NOT') {
      text = rest;
    } else if (rest === 'MIME' && part.length > 0) {
      text = 'MIME';
    } else {
      c.fail('Invalid section');
    }
    if (text === 'HEADER.FIELDS' || text === 'HEADER.FIELDS.NOT') {
      c.sp();
      fields = c.list(() => c.astring('a header field name').toString('latin1'), false);
    }
  }
  c.byte(RBRACKET, ']');
  return { part, text, fields };
}

/** partial = "<" number "." nz-number ">". */
function partial(c: Cursor): Partial | null {
  if (!c.consume(LT)) return null;
  const start = c.number('a partial origin');
  c.byte(DOT, '.');
  const length = c.number('a partial length');
  if (length < 1) c.fail('Invalid partial length');
  c.byte(GT, '>');
  return { start, length };
}

function fetchItem(c: Cursor): FetchItem {
  return namedFetchItem(c, c.dottedName());
}

function namedFetchItem(c: Cursor, name: string): FetchItem {
  if (c.peek() === LBRACKET) {
    if (name === 'BODY' || name === 'BODY.PEEK' || name === 'BINARY' || name === 'BINARY.PEEK') {
      const binary = name.startsWith('BINARY');
      const s = section(c, binary);
      return { kind: 'section', peek: name.endsWith('.PEEK'), binary, section: s, partial: partial(c) };
    }
    if (name === 'BINARY.SIZE') return { kind: 'binarySize', part: section(c, true).part };
    return c.fail(`Unknown fetch attribute ${name}`);
  }
  if (SIMPLE_ATTRIBUTES.has(name)) return { kind: 'attribute', name: name as SimpleFetchAttribute };
  return c.fail(name === '' ? 'Expected a fetch attribute' : `Unknown fetch attribute ${name.slice(0, 32)}`);
}

/** "ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")". */
function fetchArguments(c: Cursor): FetchItem[] {
  if (c.peek() === LPAREN) return c.list(() => fetchItem(c), false);
  const name = c.dottedName();
  const macro = c.peek() === LBRACKET ? undefined : FETCH_MACROS[name];
  if (macro) return macro.map((attribute) => ({ kind: 'attribute', name: attribute }));
  return [namedFetchItem(c, name)];
}

// ---------------------------------------------------------------------------------------------
// SEARCH

const FLAG_KEYS: Record<string, [string, boolean]> = {
  ANSWERED: ['\\Answered', true],
  DELETED: ['\\Deleted', true],
  DRAFT: ['\\Draft', true],
  FLAGGED: ['\\Flagged', true],
  SEEN: ['\\Seen', true],
  UNANSWERED: ['\\Answered', false],
  UNDELETED: ['\\Deleted', false],
  UNDRAFT: ['\\Draft', false],
  UNFLAGGED: ['\\Flagged', false],
  UNSEEN: ['\\Seen', false],
};

const ADDRESS_KEYS = new Set(['FROM', 'TO', 'CC', 'BCC', 'SUBJECT']);

const DATE_KEYS: Record<string, ['internal' | 'sent', 'before' | 'on' | 'since']> = {
  BEFORE: ['internal', 'before'],
  ON: ['internal', 'on'],
  SINCE: ['internal', 'since'],
  SENTBEFORE: ['sent', 'before'],
  SENTON: ['sent', 'on'],
  SENTSINCE: ['sent', 'since'],
};

function searchKey(c: Cursor, depth: number): SearchKey {
  if (depth > MAX_SEARCH_NESTING) c.fail('Search keys nested too deeply');
  const first = c.peek();
  if (first === LPAREN) {
    const keys = c.list(() => searchKey(c, depth + 1), false);
    return keys.length === 1 ? (keys[0] as SearchKey) : { op: 'and', keys };
  }
  if ((first >= 0x30 && first <= 0x39) || first === ASTERISK || first === DOLLAR) {
    return { op: 'seq', set: c.sequenceSet() };
  }
  const name = c.keyword('a search key');
  const flagKey = FLAG_KEYS[name];
  if (flagKey) return { op: 'flag', flag: flagKey[0], set: flagKey[1] };
  const dateKey = DATE_KEYS[name];
  if (dateKey) {
    c.sp();
    return { op: 'date', field: dateKey[0], compare: dateKey[1], day: searchDate(c) };
  }
  if (ADDRESS_KEYS.has(name)) {
    c.sp();
    return { op: 'header', name, value: utf8(c.astring()) };
  }
  switch (name) {
    case 'ALL':
      return { op: 'all' };
    case 'NEW':
      return { op: 'new' };
    case 'OLD':
      return { op: 'old' };
    case 'RECENT':
      return { op: 'recent' };
    case 'KEYWORD':
    case 'UNKEYWORD':
      c.sp();
      return { op: 'flag', flag: flag(c), set: name === 'KEYWORD' };
    case 'LARGER':
    case 'SMALLER': {
      c.sp();
      const size = c.number('a size');
      return name === 'LARGER' ? { op: 'larger', size } : { op: 'smaller', size };
    }
    case 'UID':
      c.sp();
      return { op: 'uid', set: c.sequenceSet() };
    case 'MODSEQ': {
      // RFC 7162 3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer.
      c.sp();
      if (c.peek() === DQUOTE) {
        c.quoted();
        c.sp();
        const type = c.keyword('an entry type');
        if (!['PRIV', 'SHARED', 'ALL'].includes(type)) c.fail('Invalid entry type');
        c.sp();
      }
      return { op: 'modseq', modseq: c.modseq() };
    }
    case 'HEADER': {
      c.sp();
      const field = c.astring('a header field name').toString('latin1');
      c.sp();
      return { op: 'header', name: field.toUpperCase(), value: utf8(c.astring()) };
    }
    case 'BODY':
      c.sp();
      return { op: 'body', value: utf8(c.astring()) };
    case 'TEXT':
      c.sp();
      return { op: 'text', value: utf8(c.astring()) };
    case 'NOT':
      c.sp();
      return { op: 'not', key: searchKey(c, depth + 1) };
    case 'OR': {
      c.sp();
      const left = searchKey(c, depth + 1);
      c.sp();
      return { op: 'or', left, right: searchKey(c, depth + 1) };
    }
    default:
      return c.fail(`Unknown search key ${name}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Command argument parsers

const none = (c: Cursor): Record<string, never> => {
  c.end();
  return {};
};

type ArgParsers = { [K in CommandName]: (c: Cursor) => CommandArgs[K] };

const ARGS: ArgParsers = {
  CAPABILITY: none,
  NOOP: none,
  LOGOUT: none,
  STARTTLS: none,
  NAMESPACE: none,
  CHECK: none,
  CLOSE: none,
  UNSELECT: none,
  IDLE: none,
  LOGIN(c) {
    c.sp();
    const username = utf8(c.astring('a user name'));
    c.sp();
    const password = utf8(c.astring('a password'));
    c.end();
    return { username, password };
  },
  AUTHENTICATE(c) {
    c.sp();
    const mechanism = c.keyword('a SASL mechanism');
    let initialResponse: string | null = null;
    // RFC 4959 SASL-IR: the initial response follows the mechanism, `=` for an empty one.
    if (c.maybeSp()) initialResponse = c.atom('an initial response');
    c.end();
    return { mechanism, initialResponse };
  },
  ID(c) {
    c.sp();
    if (c.peek() !== LPAREN) {
      if (c.keyword('a parameter list or NIL') !== 'NIL') c.fail('Expected a parameter list or NIL');
      c.end();
      return { params: null };
    }
    const flat = c.list(() => c.nstring(), true);
    c.end();
    if (flat.length % 2 !== 0) c.fail('ID parameters come in pairs');
    const params: Array<[string, string | null]> = [];
    for (let i = 0; i < flat.length; i += 2) {
      const key = flat[i];
      if (!key) return c.fail('ID field names cannot be NIL');
      const value = flat[i + 1];
      params.push([utf8(key), value ? utf8(value) : null]);
    }
    return { params };
  },
  ENABLE(c) {
    const capabilities: string[] = [];
    while (c.maybeSp()) capabilities.push(c.keyword('a capability'));
    if (capabilities.length === 0) c.fail('ENABLE needs a capability');
    c.end();
    return { capabilities };
  },
  SELECT: selectArgs,
  EXAMINE: selectArgs,
  CREATE: mailboxOnly,
  DELETE: mailboxOnly,
  SUBSCRIBE: mailboxOnly,
  UNSUBSCRIBE: mailboxOnly,
  RENAME(c) {
    c.sp();
    const from = mailbox(c);
    c.sp();
    const target = mailbox(c);
    c.end();
    return { mailbox: from, target };
  },
  LIST: (c) => listArgs(c, false),
  LSUB: (c) => listArgs(c, true),
  STATUS(c) {
    c.sp();
    const name = mailbox(c);
    c.sp();
    const items = c.list(() => c.keyword('a status item'), false);
    c.end();
    return { mailbox: name, items };
  },
  APPEND(c) {
    c.sp();
    const name = mailbox(c);
    const messages: AppendMessage[] = [];
    // RFC 3502 6: MULTIAPPEND repeats [flags] [date-time] message for each message.
    while (c.maybeSp()) messages.push(appendMessage(c));
    if (messages.length === 0) c.fail('APPEND needs a message');
    c.end();
    return { mailbox: name, messages };
  },
  GETQUOTA(c) {
    c.sp();
    const root = utf8(c.astring('a quota root'));
    c.end();
    return { root };
  },
  GETQUOTAROOT: mailboxOnlyPlain,
  COMPRESS(c) {
    c.sp();
    const mechanism = c.keyword('a compression mechanism');
    c.end();
    return { mechanism };
  },
  SETQUOTA(c) {
    c.sp();
    const root = utf8(c.astring('a quota root'));
    c.sp();
    const flat = c.list(() => (c.peek() >= 0x30 && c.peek() <= 0x39 ? c.number() : c.keyword()), true);
    c.end();
    const resources: Array<[string, number]> = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const resource = flat[i];
      const limit = flat[i + 1];
      if (typeof resource !== 'string' || typeof limit !== 'number')
        return c.fail('Invalid quota resource list');
      resources.push([resource, limit]);
    }
    if (flat.length % 2 !== 0) c.fail('Invalid quota resource list');
    return { root, resources };
  },
  EXPUNGE(c) {
    // Only UID EXPUNGE takes a set; parseCommand passes the cursor at the set when it is there.
    if (c.maybeSp()) {
      const set = c.sequenceSet();
      c.end();
      return { set };
    }
    c.end();
    return { set: null };
  },
  SEARCH: parseSearch,
  SORT(c) {
    // sort = ["UID" SP] "SORT" SP sort-criteria SP search-criteria (RFC 5256 5).
    c.sp();
    const criteria = c.list(() => {
      let name = c.keyword('a sort key');
      let reverse = false;
      if (name === 'REVERSE') {
        reverse = true;
        c.sp();
        name = c.keyword('a sort key');
      }
      if (!SORT_KEYS.has(name)) c.fail(`Unknown sort key ${name.slice(0, 32)}`);
      return { key: name as SortKey, reverse };
    }, false);
    c.sp();
    const charset = c.astring('a charset').toString('latin1').toUpperCase();
    return { criteria, charset, key: searchCriteria(c) };
  },
  THREAD(c) {
    // thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria (RFC 5256 5).
    c.sp();
    const algorithm = c.keyword('a thread algorithm');
    c.sp();
    const charset = c.astring('a charset').toString('latin1').toUpperCase();
    return { algorithm, charset, key: searchCriteria(c) };
  },
  FETCH(c) {
    c.sp();
    const set = c.sequenceSet();
    c.sp();
    const items = fetchArguments(c);
    let changedSince: number | null = null;
    let vanished = false;
    // RFC 7162 3.1.4.1, 3.2.6: fetch-modifiers (CHANGEDSINCE n [VANISHED]).
    if (c.maybeSp()) {
      for (const modifier of c.list(() => {
        const name = c.keyword('a fetch modifier');
        if (name === 'CHANGEDSINCE') {
          c.sp();
          changedSince = c.modseq();
        } else if (name !== 'VANISHED') {
          c.fail(`Unknown fetch modifier ${name.slice(0, 32)}`);
        }
        return name;
      }, false)) {
        if (modifier === 'VANISHED') vanished = true;
      }
      if (vanished && changedSince === null) c.fail('VANISHED needs CHANGEDSINCE');
    }
    c.end();
    return { set, items, changedSince, vanished };
  },
  STORE(c) {
    c.sp();
    const set = c.sequenceSet();
    c.sp();
    let unchangedSince: number | null = null;
    // RFC 7162 3.1.3: store-modifier (UNCHANGEDSINCE n) before the flags item.
    if (c.peek() === LPAREN) {
      c.list(() => {
        if (c.keyword('a store modifier') !== 'UNCHANGEDSINCE') c.fail('Unknown store modifier');
        c.sp();
        unchangedSince = c.modseq();
      }, false);
      c.sp();
    }
    const item = c.keyword('+FLAGS, -FLAGS or FLAGS');
    const m = /^([+-]?)FLAGS(\.SILENT)?$/.exec(item);
    if (!m) return c.fail('Expected +FLAGS, -FLAGS or FLAGS');
    const operation: StoreOperation = m[1] === '+' ? 'add' : m[1] === '-' ? 'remove' : 'replace';
    c.sp();
    return { set, operation, silent: m[2] !== undefined, flags: storeFlags(c), unchangedSince };
  },
  COPY: copyArgs,
  MOVE: copyArgs,
};

function storeFlags(c: Cursor): string[] {
  let flags: string[];
  if (c.peek() === LPAREN) {
    flags = flagList(c);
  } else {
    flags = [flag(c)];
    while (c.maybeSp()) flags.push(flag(c));
  }
  c.end();
  return flags;
}

function mailboxOnlyPlain(c: Cursor): { mailbox: string } {
  c.sp();
  const name = mailbox(c);
  c.end();
  return { mailbox: name };
}

function mailboxOnly(c: Cursor): { mailbox: string } {
  return mailboxOnlyPlain(c);
}

/** SELECT/EXAMINE mailbox [SP "(" select-param *(SP select-param) ")"] (RFC 4466 2.1, RFC 7162). */
function selectArgs(c: Cursor): SelectArgs {
  c.sp();
  const name = mailbox(c);
  let condstore = false;
  let qresync: QresyncParams | null = null;
  if (c.maybeSp()) {
    c.list(() => {
      const param = c.keyword('a select parameter');
      if (param === 'CONDSTORE') condstore = true;
      else if (param === 'QRESYNC') {
        c.sp();
        qresync = qresyncParams(c);
      } else c.fail(`Unknown select parameter ${param.slice(0, 32)}`);
    }, false);
  }
  c.end();
  return { mailbox: name, condstore, qresync };
}

/** "(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")" (RFC 7162 3.2.5). */
function qresyncParams(c: Cursor): QresyncParams {
  c.byte(LPAREN, '(');
  const uidValidity = c.number('a UIDVALIDITY');
  c.sp();
  const modseq = c.modseq();
  let knownUids: SequenceSet | null = null;
  let seqMatch: QresyncParams['seqMatch'] = null;
  if (c.maybeSp()) {
    if (c.peek() !== LPAREN) {
      knownUids = c.sequenceSet();
      if (!c.maybeSp()) {
        c.byte(RPAREN, ')');
        return { uidValidity, modseq, knownUids, seqMatch };
      }
    }
    c.byte(LPAREN, '(');
    const seqs = c.sequenceSet();
    c.sp();
    const uids = c.sequenceSet();
    c.byte(RPAREN, ')');
    seqMatch = { seqs, uids };
  }
  c.byte(RPAREN, ')');
  if (uidValidity < 1) c.fail('Invalid UIDVALIDITY');
  return { uidValidity, modseq, knownUids, seqMatch };
}

const LIST_SELECTION = new Set(['SUBSCRIBED', 'REMOTE', 'RECURSIVEMATCH', 'SPECIAL-USE']);
const LIST_RETURN = new Set(['SUBSCRIBED', 'CHILDREN', 'SPECIAL-USE', 'STATUS']);

/**
 * LIST [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts] (RFC 5258 3,
 * RFC 5819, RFC 6154 5.1). LSUB takes only the basic form.
 */
function listArgs(c: Cursor, lsub: boolean): ListArgs {
  c.sp();
  const selection: string[] = [];
  let extended = false;
  if (!lsub && c.peek() === LPAREN) {
    extended = true;
    for (const option of c.list(() => c.keyword('a selection option'), true)) {
      if (!LIST_SELECTION.has(option)) c.fail(`Unknown LIST selection option ${option.slice(0, 32)}`);
      selection.push(option);
    }
    // RFC 5258 3.1: RECURSIVEMATCH alone is an error.
    if (selection.includes('RECURSIVEMATCH') && selection.length === 1)
      c.fail('RECURSIVEMATCH needs another option');
    c.sp();
  }
  const reference = mailboxNameFromWire(c.astring('a reference'));
  c.sp();
  const patterns: string[] = [];
  if (!lsub && c.peek() === LPAREN) {
    extended = true;
    for (const p of c.list(() => c.listMailbox(), false)) patterns.push(mailboxNameFromWire(p));
  } else {
    patterns.push(mailboxNameFromWire(c.listMailbox()));
  }
  const returnOptions: string[] = [];
  let statusItems: string[] | null = null;
  if (!lsub && c.maybeSp()) {
    extended = true;
    if (c.keyword('RETURN') !== 'RETURN') c.fail('Expected RETURN');
    c.sp();
    c.list(() => {
      const option = c.keyword('a return option');
      if (!LIST_RETURN.has(option)) c.fail(`Unknown LIST return option ${option.slice(0, 32)}`);
      if (option === 'STATUS') {
        c.sp();
        statusItems = c.list(() => c.keyword('a status item'), false);
      }
      returnOptions.push(option);
    }, true);
  }
  c.end();
  return { reference, patterns, selection, returnOptions, statusItems, extended };
}

/** One MULTIAPPEND message: [flag-list SP] [date-time SP] (literal / literal8 / UTF8 (literal8)). */
function appendMessage(c: Cursor): AppendMessage {
  let flags: string[] = [];
  let date: number | null = null;
  if (c.peek() === LPAREN) {
    flags = flagList(c);
    c.sp();
  }
  if (c.peek() === DQUOTE) {
    date = dateTime(c);
    c.sp();
  }
  // RFC 6855 4: UTF8 (literal8) carries a message with UTF-8 headers.
  if (c.lookingAt('UTF8 (')) {
    c.keyword();
    c.sp();
    c.byte(LPAREN, '(');
    const message = c.literal(true);
    c.byte(RPAREN, ')');
    return { flags, date, message };
  }
  // RFC 3516 4.4: APPEND accepts a literal8 (`~{n}`).
  if (c.peek() !== LBRACE && c.peek() !== TILDE) c.fail('APPEND needs the message as a literal');
  const message = c.literal(true);
  return c.lastLiteralStreamed ? { flags, date, message, streamed: true } : { flags, date, message };
}

function copyArgs(c: Cursor): { set: SequenceSet; mailbox: string } {
  c.sp();
  const set = c.sequenceSet();
  c.sp();
  const name = mailbox(c);
  c.end();
  return { set, mailbox: name };
}

// ---------------------------------------------------------------------------------------------

const KNOWN = new Set<string>(Object.keys(ARGS));

/** Parses one framed command; malformed input is a result, never an exception. */
export function parseCommand(frame: Frame): ParseResult {
  const c = new Cursor(frame);
  let tag: string | null = null;
  try {
    tag = c.tag();
    c.sp();
    let name = c.keyword('a command');
    let uid = false;
    if (name === 'UID') {
      c.sp();
      name = c.keyword('a command after UID');
      if (!UID_COMMANDS.has(name as CommandName)) c.fail(`UID ${name} is not a command`);
      uid = true;
    } else if (name === 'EXPUNGE' && c.peek() === SP) {
      c.fail('EXPUNGE takes no arguments');
    }
    if (!KNOWN.has(name)) return { ok: false, tag, text: `Unknown command ${name.slice(0, 32)}` };
    const commandName = name as CommandName;
    const args = ARGS[commandName](c);
    if (commandName === 'EXPUNGE' && uid && !(args as CommandArgs['EXPUNGE']).set) {
      return { ok: false, tag, text: 'UID EXPUNGE needs a sequence set' };
    }
    return { ok: true, command: { tag, name: commandName, uid, args } as Command };
  } catch (error) {
    if (error instanceof ParseError) return { ok: false, tag, text: error.message };
    // Input too pathological for the recursion is still just bad input; anything else is a bug.
    if (error instanceof RangeError) return { ok: false, tag, text: 'Invalid command' };
    throw error;
  }
}

/** SEARCH [SP "CHARSET" SP astring] 1*(SP search-key). */
function parseSearch(c: Cursor): CommandArgs['SEARCH'] {
  c.sp();
  let charset: string | null = null;
  let returns: SearchReturn[] | null = null;
  const keys: SearchKey[] = [];
  // RFC 4731 3: search-return-opts come first.
  if (c.lookingAt('RETURN ')) {
    c.keyword();
    c.sp();
    returns = c.list(() => {
      const option = c.keyword('a search return option');
      if (!['MIN', 'MAX', 'ALL', 'COUNT', 'SAVE'].includes(option)) {
        c.fail(`Unknown search return option ${option.slice(0, 32)}`);
      }
      return option as SearchReturn;
    }, true);
    c.sp();
  }
  if (charsetAhead(c)) {
    c.keyword();
    c.sp();
    charset = c.astring('a charset').toString('latin1').toUpperCase();
    c.sp();
  }
  for (;;) {
    keys.push(searchKey(c, 0));
    if (!c.maybeSp()) break;
  }
  c.end();
  return { charset, returns, key: keys.length === 1 ? (keys[0] as SearchKey) : { op: 'and', keys } };
}

/** 1*(SP search-key) to the end of the command. */
function searchCriteria(c: Cursor): SearchKey {
  const keys: SearchKey[] = [];
  while (c.maybeSp()) keys.push(searchKey(c, 0));
  if (keys.length === 0) c.fail('Expected a search key');
  c.end();
  return keys.length === 1 ? (keys[0] as SearchKey) : { op: 'and', keys };
}

function charsetAhead(c: Cursor): boolean {
  return c.lookingAt('CHARSET ');
}
