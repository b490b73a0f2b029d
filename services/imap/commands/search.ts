/**
 * SEARCH and UID SEARCH (RFC 9051 6.4.4, RFC 3501 6.4.4 result form `* SEARCH n...`).
 *
 * Flag, size, date, sequence and UID keys use metadata only; header and sent-date keys use the
 * header fields stored with the message at append (services/core/mime-structure.ts KEPT_FIELDS)
 * when it has them; other header fields, TEXT and BODY read and parse the message, lazily, once
 * per message. String matching is a case-insensitive
 * substring match on decoded text (RFC 2047 words in headers, transfer encoding and charset in
 * bodies).
 */
import libmime from 'libmime';
import type { MessageMeta } from '../../core/mailbox-api.ts';
import { KEPT_FIELDS, decodeStructure } from '../../core/mime-structure.ts';
import type { Field, StructureNode } from '../../core/mime-structure.ts';
import type { SessionContext } from '../context.ts';
import { bodyText, decodeCharset } from '../mime-tree.ts';
import type { ParsedMessage } from '../mime-tree.ts';
import type { SearchKey } from '../parser.ts';
import { atom, no, ok } from '../response.ts';
import type { ImapValue } from '../response.ts';
import type { SelectedMailbox } from '../selected-mailbox.ts';
import { SAVED_RESULT, formatSequenceSet, inSet } from '../sequence-set.ts';
import { SELECTED, selectedOf, userOf } from './common.ts';
import type { CommandFamily } from './common.ts';

/** RFC 9051 6.4.4: the charsets a server must support. */
export const CHARSETS = new Set(['UTF-8', 'US-ASCII']);

const DAY_MS = 86_400_000;
const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];

/** One message being tested, with what is loaded lazily. */
export class Candidate {
  readonly seq: number;
  readonly meta: MessageMeta;
  readonly #ctx: SessionContext;
  #parsed: Promise<ParsedMessage> | null = null;
  #body: string | null = null;
  #stored: StructureNode | null | undefined;

  constructor(ctx: SessionContext, seq: number, meta: MessageMeta) {
    this.#ctx = ctx;
    this.seq = seq;
    this.meta = meta;
  }

  parsed(): Promise<ParsedMessage> {
    this.#parsed ??= this.#ctx.parsedMessage(this.meta);
    return this.#parsed;
  }

  async body(): Promise<string> {
    this.#body ??= bodyText(await this.parsed()).toLowerCase();
    return this.#body;
  }

  /**
   * The structure stored at append; null for a message stored before it was kept, and for one the
   * instance has parsed already (its cache is cheaper than decoding).
   */
  #structure(): StructureNode | null {
    if (this.#stored === undefined) {
      this.#stored = this.#ctx.cachedMessage(this.meta.blob)
        ? null
        : decodeStructure(this.meta.structure, this.#ctx.limits);
    }
    return this.#stored;
  }

  /** Every field of that name in the message header (stored when kept, else parsed), in order. */
  async fields(name: string): Promise<readonly Field[]> {
    const lower = name.toLowerCase();
    const stored = KEPT_FIELDS.has(lower) ? this.#structure() : null;
    const all = stored ? stored.headers : (await this.parsed()).root.headers;
    return all.filter((h) => h.name === lower);
  }

  async headers(name: string): Promise<string[]> {
    return (await this.fields(name)).map((h) => decodeHeader(h.value));
  }
}

/** Whether a key reads header fields that are stored (SEARCH then asks storage for the structures). */
export function usesHeaders(key: SearchKey): boolean {
  switch (key.op) {
    case 'header':
      return KEPT_FIELDS.has(key.name.toLowerCase());
    case 'date':
      return key.field !== 'internal';
    case 'and':
      return key.keys.some(usesHeaders);
    case 'or':
      return usesHeaders(key.left) || usesHeaders(key.right);
    case 'not':
      return usesHeaders(key.key);
    default:
      return false;
  }
}

/** RFC 2047 words decoded; 8-bit header bytes taken as UTF-8 (RFC 6532). */
function decodeHeader(value: Buffer): string {
  const text = decodeCharset(value, 'utf-8');
  return libmime.decodeWords(text);
}

/** Milliseconds of a Date header (RFC 5322 3.3), or null when it cannot be read. */
export function sentTime(value: string): number | null {
  const parsed = Date.parse(value.replace(/\([^)]*\)/g, ' ').trim());
  return Number.isNaN(parsed) ? null : parsed;
}

/** The calendar day of the Date header as written (RFC 9051 6.4.4: time and timezone disregarded). */
function sentDay(value: string): number | null {
  const m = /(\d{1,2})\s+([A-Za-z]{3})[a-z]*\s+(\d{2,4})/.exec(value);
  if (m) {
    const month = MONTHS.indexOf((m[2] as string).toLowerCase());
    let year = Number(m[3]);
    // RFC 5322 4.3: two-digit years below 50 are 20xx, others 19xx.
    if (year < 100) year += year < 50 ? 2000 : 1900;
    if (month >= 0) return Math.floor(Date.UTC(year, month, Number(m[1])) / DAY_MS);
  }
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? null : Math.floor(parsed / DAY_MS);
}

function compareDay(day: number, key: Extract<SearchKey, { op: 'date' }>): boolean {
  switch (key.compare) {
    case 'before':
      return day < key.day;
    case 'on':
      return day === key.day;
    case 'since':
      return day >= key.day;
  }
}

function hasFlag(flags: readonly string[], flag: string): boolean {
  const lower = flag.toLowerCase();
  return flags.some((f) => f.toLowerCase() === lower);
}

async function matches(key: SearchKey, m: Candidate, mailbox: SelectedMailbox): Promise<boolean> {
  switch (key.op) {
    case 'all':
      return true;
    case 'and':
      for (const sub of key.keys) if (!(await matches(sub, m, mailbox))) return false;
      return true;
    case 'or':
      return (await matches(key.left, m, mailbox)) || (await matches(key.right, m, mailbox));
    case 'not':
      return !(await matches(key.key, m, mailbox));
    case 'flag':
      return hasFlag(m.meta.flags, key.flag) === key.set;
    case 'recent':
      return mailbox.isRecent(m.meta.uid);
    case 'new':
      return mailbox.isRecent(m.meta.uid) && !hasFlag(m.meta.flags, '\\Seen');
    case 'old':
      return !mailbox.isRecent(m.meta.uid);
    case 'seq':
    case 'uid':
      // RFC 5182 2.1: `$` is the saved result, whether written as a sequence set or after UID.
      if (key.set === SAVED_RESULT) return mailbox.savedSearch.has(m.meta.uid);
      return key.op === 'seq'
        ? inSet(key.set, m.seq, mailbox.exists)
        : inSet(key.set, m.meta.uid, mailbox.maxUid);
    case 'modseq':
      return m.meta.modseq >= key.modseq;
    case 'larger':
      return m.meta.size > key.size;
    case 'smaller':
      return m.meta.size < key.size;
    case 'date': {
      if (key.field === 'internal') return compareDay(Math.floor(m.meta.internalDate / DAY_MS), key);
      const dates = await m.headers('date');
      const day = dates.length > 0 ? sentDay(dates[0] as string) : null;
      return day !== null && compareDay(day, key);
    }
    case 'header': {
      const values = await m.headers(key.name);
      // RFC 9051 6.4.4: an empty string matches every message that has the field.
      if (key.value === '') return values.length > 0;
      const needle = key.value.toLowerCase();
      return values.some((v) => v.toLowerCase().includes(needle));
    }
    case 'body':
      return (await m.body()).includes(key.value.toLowerCase());
    case 'text': {
      const needle = key.value.toLowerCase();
      const msg = await m.parsed();
      const header = msg.root.headers.map((h) => `${h.name}: ${decodeHeader(h.value)}`).join('\n');
      return header.toLowerCase().includes(needle) || (await m.body()).includes(needle);
    }
  }
}

/**
 * The messages of the selected mailbox that match `key`, in sequence order; null if the connection
 * closed. `headers`: the caller reads header fields of the matches (SORT, THREAD).
 */
export async function findMatches(
  ctx: SessionContext,
  key: SearchKey,
  headers = false,
): Promise<Candidate[] | null> {
  const mailbox = selectedOf(ctx);
  const user = userOf(ctx);
  const found: Candidate[] = [];
  const uids = [...mailbox.uids];
  const structure = headers || usesHeaders(key);
  for (let i = 0; i < uids.length; i += ctx.limits.storageBatch) {
    const batch = uids.slice(i, i + ctx.limits.storageBatch);
    const { messages } = await ctx.storage.messages(user, mailbox.name, batch, { structure });
    for (const meta of messages) {
      if (ctx.closed) return null;
      const seq = mailbox.seqOf(meta.uid);
      if (seq === 0) continue;
      const candidate = new Candidate(ctx, seq, meta);
      if (await matches(key, candidate, mailbox)) found.push(candidate);
    }
  }
  return found.sort((a, b) => a.seq - b.seq);
}

/** Whether a MODSEQ key appears (RFC 7162 3.1.5: the response then carries the highest MODSEQ). */
function usesModseq(key: SearchKey): boolean {
  switch (key.op) {
    case 'modseq':
      return true;
    case 'and':
      return key.keys.some(usesModseq);
    case 'or':
      return usesModseq(key.left) || usesModseq(key.right);
    case 'not':
      return usesModseq(key.key);
    default:
      return false;
  }
}

export const SEARCH_COMMANDS: CommandFamily<'SEARCH'> = {
  SEARCH: {
    states: SELECTED,
    async handle(ctx, command) {
      const { charset, key } = command.args;
      if (charset !== null && !CHARSETS.has(charset)) {
        return no('Unsupported charset', `BADCHARSET (${[...CHARSETS].join(' ')})`);
      }
      const modseq = usesModseq(key);
      // RFC 7162 3.1: SEARCH MODSEQ is a CONDSTORE-enabling command.
      if (modseq) ctx.enabled.add('CONDSTORE');
      const mailbox = selectedOf(ctx);
      const matched = await findMatches(ctx, key);
      if (!matched) return ok('SEARCH aborted');
      const found = matched.map((c) => ({ seq: c.seq, uid: c.meta.uid }));
      const highest = matched.reduce((n, c) => Math.max(n, c.meta.modseq), 0);
      const numbers = found.map((f) => (command.uid ? f.uid : f.seq));
      // RFC 9051 6.4.4: IMAP4rev2 answers a plain SEARCH as RETURN (ALL), with ESEARCH.
      let returns = command.args.returns;
      if (returns === null && ctx.enabled.has('IMAP4rev2')) returns = ['ALL'];
      if (returns === null) {
        const values = numbers.map((n) => atom(String(n)));
        if (modseq && numbers.length > 0)
          await ctx.untagged('SEARCH', [...values, [atom('MODSEQ'), highest]]);
        else await ctx.untagged('SEARCH', values);
        return ok('SEARCH completed');
      }
      // RFC 4731 3.1: RETURN () means RETURN (ALL).
      const options = new Set(returns.length === 0 ? ['ALL'] : returns);
      if (options.has('SAVE')) {
        // RFC 5182 2.4: with MIN/MAX, only those are saved.
        let saved = found;
        if (options.has('MIN') || options.has('MAX')) {
          saved = [];
          if (found.length > 0 && options.has('MIN')) saved.push(found[0] as (typeof found)[0]);
          if (found.length > 1 && options.has('MAX'))
            saved.push(found[found.length - 1] as (typeof found)[0]);
        }
        mailbox.savedSearch = new Set(saved.map((f) => f.uid));
        options.delete('SAVE');
        // RFC 5182 2.4: SAVE alone returns no ESEARCH response.
        if (options.size === 0) return ok('SEARCH completed, result saved');
      }
      // RFC 4731 3.1: `* ESEARCH (TAG "t") [UID] MIN n MAX n COUNT n ALL set`.
      const values: ImapValue[] = [[atom('TAG'), command.tag]];
      if (command.uid) values.push(atom('UID'));
      if (numbers.length > 0) {
        if (options.has('MIN')) values.push(atom('MIN'), numbers[0] as number);
        if (options.has('MAX')) values.push(atom('MAX'), numbers[numbers.length - 1] as number);
      }
      if (options.has('ALL') && numbers.length > 0)
        values.push(atom('ALL'), atom(formatSequenceSet(numbers)));
      if (options.has('COUNT')) values.push(atom('COUNT'), numbers.length);
      if (modseq && numbers.length > 0) values.push(atom('MODSEQ'), highest);
      await ctx.untagged('ESEARCH', values);
      return ok('SEARCH completed');
    },
  },
};
