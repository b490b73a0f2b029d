/**
 * SORT and THREAD=ORDEREDSUBJECT (RFC 5256), with DISPLAYFROM/DISPLAYTO (RFC 5957), and their UID
 * forms. Messages are selected as SEARCH selects them (search.ts); the sort keys come from the
 * header fields stored with the message, or from the parsed header for older messages. Ties keep mailbox order (RFC 5256 3).
 */
import libmime from 'libmime';
import type { SessionContext } from '../context.ts';
import { addressList } from '../envelope.ts';
import { decodeCharset } from '../mime-tree.ts';
import type { SearchKey, SortCriterion } from '../parser.ts';
import { atom, no, ok } from '../response.ts';
import type { ImapValue } from '../response.ts';
import { CHARSETS, findMatches, sentTime } from './search.ts';
import type { Candidate } from './search.ts';
import { SELECTED } from './common.ts';
import type { CommandFamily } from './common.ts';

/** RFC 5256 2.1 comparator i;ascii-casemap: ASCII letters compared upper-cased. */
function casemap(text: string): string {
  return text.replace(/[a-z]+/g, (s) => s.toUpperCase());
}

const BLOB = String.raw`\[[^[\]]*\]\s*`;
const LEADER = new RegExp(String.raw`^(?:${BLOB})*(?:re|fwd?)\s*(?:${BLOB})?:\s*`, 'i');
const LEADING_BLOB = new RegExp(`^${BLOB}`);

/** RFC 5256 2.1: the base subject, without Re:, Fwd:, [list] prefixes and (fwd) trailers. */
export function baseSubject(raw: string): string {
  let s = raw.replace(/\s+/g, ' ').trim();
  for (;;) {
    const before = s;
    // (2) trailing "(fwd)" and whitespace.
    while (/\s*\(fwd\)\s*$/i.test(s)) s = s.replace(/\s*\(fwd\)\s*$/i, '');
    // (3)-(5) leading subj-refwd and subj-blob, while something remains.
    for (;;) {
      const inner = s;
      s = s.replace(LEADER, '');
      const stripped = s.replace(LEADING_BLOB, '');
      if (stripped !== '') s = stripped;
      if (s === inner) break;
    }
    // (6) [fwd: ...] around the whole subject.
    const fwd = /^\[fwd:\s*(.*)\]$/i.exec(s);
    if (fwd) s = (fwd[1] as string).trim();
    if (s === before) break;
  }
  return casemap(s);
}

function decodedHeader(candidate: Candidate, name: string): Promise<string[]> {
  return candidate.headers(name);
}

/** The first address of a header: its mailbox (local part), or display name for DISPLAY* keys. */
async function firstAddress(candidate: Candidate, name: string, display: boolean): Promise<string> {
  const field = (await candidate.fields(name))[0];
  const list = addressList(field ? field.value : null);
  const first = Array.isArray(list) ? (list[0] as ImapValue[] | undefined) : undefined;
  if (!first) return '';
  const text = (v: ImapValue | undefined): string =>
    Buffer.isBuffer(v) ? libmime.decodeWords(decodeCharset(v, 'utf-8')) : '';
  const mailbox = text(first[2]);
  if (!display) return casemap(mailbox);
  // RFC 5957 3: the display name, or the address when there is none.
  const nameText = text(first[0]).trim();
  return casemap(nameText !== '' ? nameText : `${mailbox}@${text(first[3])}`);
}

/** RFC 5256 3: the sent date, or the internal date when there is no readable Date header. */
async function sentDate(candidate: Candidate): Promise<number> {
  const dates = await decodedHeader(candidate, 'date');
  const time = dates.length > 0 ? sentTime(dates[0] as string) : null;
  return time ?? candidate.meta.internalDate;
}

async function sortValue(candidate: Candidate, criterion: SortCriterion): Promise<string | number> {
  switch (criterion.key) {
    case 'ARRIVAL':
      return candidate.meta.internalDate;
    case 'SIZE':
      return candidate.meta.size;
    case 'DATE':
      return sentDate(candidate);
    case 'SUBJECT':
      return baseSubject((await decodedHeader(candidate, 'subject'))[0] ?? '');
    case 'FROM':
    case 'TO':
    case 'CC':
      return firstAddress(candidate, criterion.key.toLowerCase(), false);
    case 'DISPLAYFROM':
      return firstAddress(candidate, 'from', true);
    case 'DISPLAYTO':
      return firstAddress(candidate, 'to', true);
  }
}

function compare(a: string | number, b: string | number): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

async function select(
  ctx: SessionContext,
  charset: string,
  key: SearchKey,
  headers: boolean,
): Promise<Candidate[] | { badCharset: true } | null> {
  if (!CHARSETS.has(charset)) return { badCharset: true };
  return findMatches(ctx, key, headers);
}

const BAD_CHARSET = no('Unsupported charset', `BADCHARSET (${[...CHARSETS].join(' ')})`);

export const SORT_COMMANDS: CommandFamily<'SORT' | 'THREAD'> = {
  SORT: {
    states: SELECTED,
    async handle(ctx, command) {
      const { criteria, charset, key } = command.args;
      // Sort keys other than ARRIVAL and SIZE read header fields (stored with the message).
      const headers = criteria.some((c) => c.key !== 'ARRIVAL' && c.key !== 'SIZE');
      const found = await select(ctx, charset, key, headers);
      if (found === null) return ok('SORT aborted');
      if (!Array.isArray(found)) return BAD_CHARSET;
      const keyed = [];
      for (const candidate of found) {
        const values = [];
        for (const criterion of criteria) values.push(await sortValue(candidate, criterion));
        keyed.push({ candidate, values });
      }
      keyed.sort((a, b) => {
        for (let i = 0; i < criteria.length; i++) {
          const order = compare(a.values[i] as string | number, b.values[i] as string | number);
          if (order !== 0) return (criteria[i] as SortCriterion).reverse ? -order : order;
        }
        // RFC 5256 3: otherwise in the order of the mailbox.
        return a.candidate.seq - b.candidate.seq;
      });
      const numbers = keyed.map((k) => (command.uid ? k.candidate.meta.uid : k.candidate.seq));
      await ctx.untagged(
        'SORT',
        numbers.map((n) => atom(String(n))),
      );
      return ok('SORT completed');
    },
  },
  THREAD: {
    states: SELECTED,
    async handle(ctx, command) {
      const { algorithm, charset, key } = command.args;
      if (algorithm !== 'ORDEREDSUBJECT') return no('Unsupported threading algorithm', 'CANNOT');
      const found = await select(ctx, charset, key, true);
      if (found === null) return ok('THREAD aborted');
      if (!Array.isArray(found)) return BAD_CHARSET;
      // RFC 5256 4: group by base subject, each group in sent-date order; threads ordered by
      // their first message's date; the first message is the parent of all the others.
      const groups = new Map<string, Array<{ n: number; date: number; seq: number }>>();
      for (const candidate of found) {
        const subject = baseSubject((await decodedHeader(candidate, 'subject'))[0] ?? '');
        const entry = {
          n: command.uid ? candidate.meta.uid : candidate.seq,
          date: await sentDate(candidate),
          seq: candidate.seq,
        };
        const group = groups.get(subject);
        if (group) group.push(entry);
        else groups.set(subject, [entry]);
      }
      const byDate = (a: { date: number; seq: number }, b: { date: number; seq: number }): number =>
        a.date - b.date || a.seq - b.seq;
      const threads = [...groups.values()].map((g) => g.sort(byDate)).sort((a, b) => byDate(a[0]!, b[0]!));
      const text = threads
        .map(([parent, ...children]) => {
          if (children.length === 0) return `(${parent!.n})`;
          if (children.length === 1) return `(${parent!.n} ${children[0]!.n})`;
          return `(${parent!.n} ${children.map((c) => `(${c.n})`).join('')})`;
        })
        .join('');
      await ctx.untagged(text === '' ? 'THREAD' : `THREAD ${text}`);
      return ok('THREAD completed');
    },
  },
};
