/**
 * The contract between the mailbox-store and its front ends (imap, pop3).
 *
 * In the cluster this is implemented by the NATS RPC client (services/mailbox-store/rpc.ts),
 * which reaches any mailbox-store replica over `mbox.rpc.*`; bodies are read straight from the
 * blob store, never carried over NATS. Where the store runs in the same process (`postino up`),
 * by the store itself (MAILBOX_ACCESS, services/mailbox-store/access.ts). Protocol cores depend
 * only on this interface.
 */

/** One folder (IMAP mailbox) and its counters. */
export interface FolderInfo {
  name: string;
  uidValidity: number;
  uidNext: number;
  exists: number;
  unseen: number;
  recent: number;
  highestModseq: number;
  /** RFC 6154 special-use attribute such as `\Sent`, or '' for none. */
  specialUse: string;
  subscribed: boolean;
}

/** What the store keeps of one message. */
export interface MessageMeta {
  uid: number;
  /** System flags (`\Seen`, `\Deleted`...) and keywords, as stored. `\Recent` is never stored. */
  flags: string[];
  /** RFC822.SIZE in octets. */
  size: number;
  /** INTERNALDATE, Unix milliseconds. */
  internalDate: number;
  /** Blob reference (`sha256:<hex>`) for reading the body. */
  blob: string;
  modseq: number;
  /**
   * The MIME structure parsed at append (an encoded pb.MimeStructure, services/core/mime-structure.ts):
   * only when asked for with `{ structure: true }`, and absent for messages stored before it was kept.
   */
  structure?: Uint8Array;
}

/** Options of the message listings. */
export interface MessagesOptions {
  /** Include each message's stored MIME structure (FETCH ENVELOPE/BODYSTRUCTURE, header SEARCH). */
  structure?: boolean;
  /**
   * Summaries only: uid, flags, modseq, size and internalDate, with `blob` left '' (SELECT, and a
   * FETCH of flags and sizes, read a big folder much faster so). Pages may then hold more than
   * 1,000 messages. Ignored together with `structure`; a store may always answer in full.
   */
  summary?: boolean;
}

/**
 * Summaries of many messages in columns (SELECT, FETCH of flags and sizes): no object per message.
 * Row i is uids[i], modseqs[i]...; `flags[i]` is shared by every row with the same flags, so it
 * must not be changed in place. Rows are in ascending UID order.
 */
export interface Summaries {
  length: number;
  uids: Uint32Array;
  modseqs: Float64Array;
  sizes: Float64Array;
  internalDates: Float64Array;
  flags: (readonly string[])[];
}

/** Summaries and the folder's counters (as read with the last page). */
export interface SummaryPage {
  folder: FolderInfo;
  summaries: Summaries;
  /**
   * The folder's HIGHESTMODSEQ when the first page was read: every row is at least that recent,
   * and any change after it has a higher MODSEQ (what a session may safely report and resync from).
   */
  modseq: number;
}

/**
 * The positions of `uids` (distinct) in ascending order. UIDs of a folder are mostly dense: they
 * are then placed by value in one pass; sparse ones are sorted.
 */
function ascendingOrder(uids: Uint32Array, n: number): Uint32Array {
  let min = Infinity;
  let max = 0;
  for (let i = 0; i < n; i++) {
    const u = uids[i] as number;
    if (u < min) min = u;
    if (u > max) max = u;
  }
  const span = max - min + 1;
  if (n === 0 || span > 4 * n) {
    return Uint32Array.from({ length: n }, (_, i) => i).sort(
      (a, b) => (uids[a] as number) - (uids[b] as number),
    );
  }
  const at = new Int32Array(span).fill(-1);
  for (let i = 0; i < n; i++) at[(uids[i] as number) - min] = i;
  const order = new Uint32Array(n);
  let k = 0;
  for (let v = 0; v < span; v++) if ((at[v] as number) >= 0) order[k++] = at[v] as number;
  return order;
}

/** Copies row `i` of `from` into row `k` of `to`. */
export function copySummary(to: Summaries, k: number, from: Summaries, i: number): void {
  to.uids[k] = from.uids[i] as number;
  to.modseqs[k] = from.modseqs[i] as number;
  to.sizes[k] = from.sizes[i] as number;
  to.internalDates[k] = from.internalDates[i] as number;
  to.flags[k] = from.flags[i] as readonly string[];
}

/** The summaries in ascending UID order (unchanged when they are already). */
export function sortSummaries(s: Summaries): Summaries {
  let sorted = true;
  for (let i = 1; i < s.length && sorted; i++) sorted = (s.uids[i - 1] as number) < (s.uids[i] as number);
  if (sorted) return s;
  const order = ascendingOrder(s.uids, s.length);
  const out = allocSummaries(s.length);
  order.forEach((from, to) => copySummary(out, to, s, from));
  return out;
}

/**
 * Parses packed summaries: rows `uid modseq size idate flags` joined by LF, flags space-separated
 * atoms (the store's summary index, carried as is over the RPC). Identical flags share one array.
 */
export function parseSummaries(packed: Uint8Array | string): Summaries {
  const buf =
    typeof packed === 'string'
      ? Buffer.from(packed, 'utf8')
      : Buffer.from(packed.buffer, packed.byteOffset, packed.byteLength);
  const end = buf.length;
  let rows = end > 0 ? 1 : 0;
  for (let i = buf.indexOf(10); i >= 0; i = buf.indexOf(10, i + 1)) rows++;
  const uids = new Uint32Array(rows);
  const modseqs = new Float64Array(rows);
  const sizes = new Float64Array(rows);
  const internalDates = new Float64Array(rows);
  const flags: (readonly string[])[] = [];
  const shared = new Map<string, readonly string[]>();
  const none: readonly string[] = [];
  // Consecutive rows mostly have the same flags: compared as bytes with the previous row's first.
  let prevStart = 0;
  let prevEnd = 0;
  let prevList = none;
  let n = 0;
  let pos = 0;
  while (pos < end) {
    let ok = true;
    let uid = 0;
    let modseq = 0;
    let size = 0;
    let idate = 0;
    // Four numbers, each but the last ended by a space; INTERNALDATE may be before 1970.
    for (let k = 0; k < 4; k++) {
      const negative = buf[pos] === 45;
      if (negative) pos++;
      let v = 0;
      const from = pos;
      for (let c = buf[pos] as number; c >= 48 && c <= 57; c = buf[++pos] as number) v = v * 10 + (c - 48);
      if (pos === from) ok = false;
      if (negative) v = -v;
      if (k === 0) uid = v;
      else if (k === 1) modseq = v;
      else if (k === 2) size = v;
      else idate = v;
      if (k < 3) {
        if (buf[pos] === 32) pos++;
        else ok = false;
      }
    }
    let lf = buf.indexOf(10, pos);
    if (lf < 0) lf = end;
    let list = none;
    if (buf[pos] === 32 && pos + 1 < lf) {
      const start = pos + 1;
      let same = lf - start === prevEnd - prevStart;
      for (let i = 0; same && i < lf - start; i++) same = buf[start + i] === buf[prevStart + i];
      if (same) list = prevList;
      else {
        const f = buf.toString('utf8', start, lf);
        let hit = shared.get(f);
        if (!hit) {
          hit = f.split(' ').filter(Boolean);
          shared.set(f, hit);
        }
        list = hit;
        prevStart = start;
        prevEnd = lf;
        prevList = list;
      }
    }
    pos = lf + 1;
    if (!ok) continue;
    uids[n] = uid;
    modseqs[n] = modseq;
    sizes[n] = size;
    internalDates[n] = idate;
    flags.push(list);
    n++;
  }
  return {
    length: n,
    uids: n === rows ? uids : uids.subarray(0, n),
    modseqs: n === rows ? modseqs : modseqs.subarray(0, n),
    sizes: n === rows ? sizes : sizes.subarray(0, n),
    internalDates: n === rows ? internalDates : internalDates.subarray(0, n),
    flags,
  };
}

/** Room for `n` summaries, to be filled in UID order. */
export function allocSummaries(n: number): Summaries {
  return {
    length: n,
    uids: new Uint32Array(n),
    modseqs: new Float64Array(n),
    sizes: new Float64Array(n),
    internalDates: new Float64Array(n),
    flags: new Array<readonly string[]>(n),
  };
}

/** Summaries of message rows (a store or client without packed summaries). */
export function summariesOf(messages: readonly MessageMeta[]): Summaries {
  const sorted = messages.every((m, i) => i === 0 || (messages[i - 1] as MessageMeta).uid < m.uid)
    ? messages
    : [...messages].sort((a, b) => a.uid - b.uid);
  const out = allocSummaries(sorted.length);
  sorted.forEach((m, i) => {
    out.uids[i] = m.uid;
    out.modseqs[i] = m.modseq;
    out.sizes[i] = m.size;
    out.internalDates[i] = m.internalDate;
    out.flags[i] = m.flags;
  });
  return out;
}

/** Row i of summaries as a MessageMeta (no blob). */
export function summaryMeta(s: Summaries, i: number): MessageMeta {
  return {
    uid: s.uids[i] as number,
    flags: s.flags[i] as string[],
    size: s.sizes[i] as number,
    internalDate: s.internalDates[i] as number,
    blob: '',
    modseq: s.modseqs[i] as number,
  };
}

export type FlagOp = 'add' | 'remove' | 'replace';

/** A change made to a folder, pushed to every session of the user on any node. */
export interface MailboxChange {
  folder: string;
  kind: 'append' | 'flags' | 'expunge' | 'folder';
  uids: number[];
  modseq: number;
  /** Id of the session that made the change ('' if none), so it can skip its own echo. */
  origin: string;
}

/** Error with an IMAP-style code: NONEXISTENT, ALREADYEXISTS, OVERQUOTA, INVALID, CANNOT, UNAVAILABLE. */
export class MailboxError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'MailboxError';
    this.code = code;
  }
}

export interface MailboxClient {
  listFolders(user: string): Promise<FolderInfo[]>;
  /** Folder counters; throws MailboxError('NONEXISTENT') if there is no such folder. */
  status(user: string, folder: string): Promise<FolderInfo>;
  /** Messages of a folder in ascending UID order (all of them when `uids` is omitted or empty). */
  messages(
    user: string,
    folder: string,
    uids?: number[],
    options?: MessagesOptions,
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }>;
  /**
   * Summaries (MessagesOptions.summary) in columns, without an object per message: of `uids`
   * (those that exist), or, without them, of every message with a UID in first..last. Optional: a
   * front end falls back to `messages` with `{ summary: true }`.
   */
  summaries?(
    user: string,
    folder: string,
    range: { uids: readonly number[] } | { first: number; last: number },
  ): Promise<SummaryPage>;
  /** Changes flags; returns the messages as they are afterwards (only those that still exist). */
  storeFlags(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    origin?: string,
  ): Promise<MessageMeta[]>;
  /**
   * Removes messages for good. Without `force` only those among `uids` flagged `\Deleted` go.
   * Returns the UIDs that were removed.
   */
  expunge(user: string, folder: string, uids: number[], force?: boolean, origin?: string): Promise<number[]>;
  /** Stores a new message from raw bytes; returns its UID and the folder's UIDVALIDITY. */
  append(
    user: string,
    folder: string,
    body: Buffer,
    flags: string[],
    internalDate?: number,
    origin?: string,
  ): Promise<{ uid: number; uidValidity: number }>;
  copy(
    user: string,
    folder: string,
    uids: number[],
    target: string,
    move: boolean,
    origin?: string,
  ): Promise<{ uidValidity: number; sourceUids: number[]; targetUids: number[] }>;
  createFolder(user: string, folder: string): Promise<void>;
  deleteFolder(user: string, folder: string): Promise<void>;
  renameFolder(user: string, folder: string, target: string): Promise<void>;
  setSubscribed(user: string, folder: string, subscribed: boolean): Promise<void>;
  /** Streams a body from the blob store. */
  openBody(blob: string): AsyncIterable<Uint8Array>;
  /** Reads a whole body (bounded by the message size limit). */
  readBody(blob: string): Promise<Buffer>;
  /** Subscribes to the user's changes on every node; returns the function that unsubscribes. */
  watch(user: string, onChange: (change: MailboxChange) => void): Promise<() => void>;
  /** CONDSTORE (RFC 7162 3.1.4.1 CHANGEDSINCE): messages whose MODSEQ > modseq, ascending UID; restricted to `uids` if given. */
  changedSince(user: string, folder: string, modseq: number, uids?: number[]): Promise<MessageMeta[]>;
  /** QRESYNC (RFC 7162 3.2.5): UIDs expunged with a MODSEQ > modseq, ascending; null when the journal was trimmed past modseq. */
  expungedSince(user: string, folder: string, modseq: number): Promise<number[] | null>;
  /** STORE with UNCHANGEDSINCE (RFC 7162 3.1.3): messages whose MODSEQ > unchangedSince are left alone and listed in `failed`. */
  storeFlagsIf(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    unchangedSince: number,
    origin?: string,
  ): Promise<{ messages: MessageMeta[]; failed: number[] }>;
  /** QUOTA (RFC 9208): usage and limits of the user's storage (octets) and message count; a limit of 0 means none. */
  quota(
    user: string,
  ): Promise<{ storageUsed: number; storageLimit: number; messagesUsed: number; messagesLimit: number }>;
  /**
   * One page of the messages with UIDs first..last, ascending, at most `limit` (the store caps it at
   * 1,000): walk a big folder page by page (next first = last UID returned + 1) with bounded memory.
   */
  messageRange(
    user: string,
    folder: string,
    first: number,
    last: number,
    limit?: number,
    options?: MessagesOptions,
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }>;
  /** APPEND of a large literal, streamed to the blob store without holding it whole. */
  appendStream(
    user: string,
    folder: string,
    body: AsyncIterable<Uint8Array>,
    flags: string[],
    internalDate?: number,
    origin?: string,
  ): Promise<{ uid: number; uidValidity: number }>;
}

/** Checks a user's password. Returns the canonical user address, or null if the credentials are wrong. */
export interface Authenticator {
  authenticate(login: string, password: string): Promise<string | null>;
}

/** A lease on a user's maildrop (POP3, RFC 1939 section 8: exclusive access). */
export interface MaildropLock {
  /** Takes the lock; returns a release function, or null if another session holds it. */
  acquire(user: string): Promise<(() => Promise<void>) | null>;
}

/** True when a user has no room left for one more message (a limit of 0 means none). */
export function quotaReached(q: {
  storageUsed: number;
  storageLimit: number;
  messagesUsed: number;
  messagesLimit: number;
}): boolean {
  return (
    (q.storageLimit > 0 && q.storageUsed >= q.storageLimit) ||
    (q.messagesLimit > 0 && q.messagesUsed >= q.messagesLimit)
  );
}
