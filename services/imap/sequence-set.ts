/**
 * IMAP sequence sets (RFC 9051 9, `sequence-set`): `1:*`, `2,4:7`, `*`.
 * Pure functions; the same syntax addresses sequence numbers and UIDs.
 */

/** `*` is kept symbolic until the set is resolved against a mailbox. */
export type SeqNumber = number | '*';

export interface SeqRange {
  start: SeqNumber;
  end: SeqNumber;
}

export type SequenceSet = readonly SeqRange[];

/** RFC 5182 2.1: `$`, the result of the last SEARCH RETURN (SAVE); compared by identity. */
export const SAVED_RESULT: SequenceSet = Object.freeze([]);

const NUMBER = /^[1-9]\d{0,9}$/;
/** RFC 9051 9: nz-number fits in 32 bits. */
const MAX_NUMBER = 0xffffffff;

function parseNumber(text: string): SeqNumber | null {
  if (text === '*') return '*';
  if (!NUMBER.test(text)) return null;
  const n = Number(text);
  return n <= MAX_NUMBER ? n : null;
}

/** Parses `1:*,5,7:9`; null if malformed. */
export function parseSequenceSet(text: string): SequenceSet | null {
  if (text === '') return null;
  const ranges: SeqRange[] = [];
  for (const part of text.split(',')) {
    const bounds = part.split(':');
    if (bounds.length > 2) return null;
    const start = parseNumber(bounds[0] ?? '');
    const end = bounds.length === 2 ? parseNumber(bounds[1] ?? '') : start;
    if (start === null || end === null) return null;
    ranges.push({ start, end });
  }
  return ranges;
}

/** The set's explicit numbers (not `*`), to check them against the mailbox size. */
export function maxExplicit(set: SequenceSet): number {
  let max = 0;
  for (const r of set) {
    if (r.start !== '*') max = Math.max(max, r.start);
    if (r.end !== '*') max = Math.max(max, r.end);
  }
  return max;
}

/**
 * Whether `n` is in the set, `*` standing for `star` (the largest number in use).
 * RFC 9051 6.4.8: `a:b` is the same range as `b:a`.
 */
export function inSet(set: SequenceSet, n: number, star: number): boolean {
  for (const r of set) {
    const a = r.start === '*' ? star : r.start;
    const b = r.end === '*' ? star : r.end;
    if (n >= Math.min(a, b) && n <= Math.max(a, b)) return true;
  }
  return false;
}

/** Sequence numbers 1..count that the set addresses, ascending and without duplicates. */
export function resolveSequenceNumbers(set: SequenceSet, count: number): number[] {
  const out: number[] = [];
  if (count === 0) return out;
  // One range (`5`, `1:*`, the common case): no pass over the whole mailbox.
  if (set.length === 1) {
    const r = set[0] as SequenceSet[number];
    const a = r.start === '*' ? count : r.start;
    const b = r.end === '*' ? count : r.end;
    const hi = Math.min(count, Math.max(a, b));
    for (let i = Math.max(1, Math.min(a, b)); i <= hi; i++) out.push(i);
    return out;
  }
  const marks = new Uint8Array(count + 1);
  for (const r of set) {
    const a = r.start === '*' ? count : r.start;
    const b = r.end === '*' ? count : r.end;
    const lo = Math.max(1, Math.min(a, b));
    const hi = Math.min(count, Math.max(a, b));
    for (let i = lo; i <= hi; i++) marks[i] = 1;
  }
  for (let i = 1; i <= count; i++) if (marks[i]) out.push(i);
  return out;
}

/**
 * UIDs among `uids` (ascending) that the set addresses. `*` is the largest UID in use, so
 * `UID FETCH 100:*` returns the last message even when its UID is below 100 (RFC 9051 6.4.9).
 */
export function resolveUids(set: SequenceSet, uids: readonly number[]): number[] {
  if (uids.length === 0) return [];
  const star = uids[uids.length - 1] ?? 0;
  if (set.length === 1) {
    // One range: found by binary search, not a pass over the whole mailbox.
    const r = set[0] as SequenceSet[number];
    const a = r.start === '*' ? star : r.start;
    const b = r.end === '*' ? star : r.end;
    const lo = Math.min(a, b);
    const hi = Math.max(a, b);
    const out: number[] = [];
    for (let i = lowerBound(uids, lo); i < uids.length && (uids[i] as number) <= hi; i++) {
      out.push(uids[i] as number);
    }
    return out;
  }
  return uids.filter((uid) => inSet(set, uid, star));
}

/** Index of the first of `sorted` (ascending) that is >= value. */
function lowerBound(sorted: readonly number[], value: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((sorted[mid] as number) < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Compact form of ascending-or-not numbers, in the given order: `[1,2,3,7]` → `1:3,7`. */
export function formatSequenceSet(numbers: readonly number[]): string {
  const parts: string[] = [];
  let i = 0;
  while (i < numbers.length) {
    const start = numbers[i] as number;
    let end = start;
    while (i + 1 < numbers.length && numbers[i + 1] === end + 1) {
      end++;
      i++;
    }
    parts.push(start === end ? String(start) : `${start}:${end}`);
    i++;
  }
  return parts.join(',');
}
