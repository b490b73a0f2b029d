/**
 * The session's view of its selected mailbox: the sequence number ↔ UID map, the flags last
 * reported, `\Recent`, and the changes other sessions made that are not yet reported.
 *
 * RFC 9051 2.3.1.2: sequence numbers are the UIDs in ascending order as *this session* knows
 * them; they change only when this session reports EXISTS or EXPUNGE. So the map changes here,
 * and only when the session writes the matching untagged response.
 */
import type { FolderInfo, MessageMeta, Summaries } from '../core/mailbox-api.ts';

export class SelectedMailbox {
  readonly name: string;
  readonly readOnly: boolean;
  readonly uidValidity: number;
  #uids: number[];
  /**
   * Flags last known, by sequence number - 1 (beside #uids: no map entry per message). Arrays are
   * shared between messages with the same flags and never changed in place.
   */
  #flags: (readonly string[])[];
  /** MODSEQ of each message, beside #flags (exact while syncedModseq holds). */
  #modseqs: number[];
  /**
   * The folder's HIGHESTMODSEQ at which #flags and #modseqs were read whole from the store, or -1:
   * while the store's HIGHESTMODSEQ is still this, nothing in the folder changed (every append,
   * flag change and expunge raises it), and they answer a FETCH of flags without reading them again.
   */
  syncedModseq = -1;
  /** RFC 3501 2.3.2 `\Recent`: new to this session (approximated by the store's count at SELECT). */
  readonly #recent = new Set<number>();

  /** UIDs other sessions added, flag changes and expunges not yet reported. */
  appendPending = false;
  readonly flagsPending = new Set<number>();
  readonly expungePending = new Set<number>();
  /** The folder may have been deleted or renamed under us. */
  folderChanged = false;
  /** RFC 5182 SEARCHRES: UIDs of the last SEARCH RETURN (SAVE), what `$` stands for. */
  savedSearch = new Set<number>();

  /**
   * `summaries` in ascending UID order (as the store lists them), of every message of the folder
   * as it was at HIGHESTMODSEQ `syncedModseq` or later (-1 if unknown).
   */
  constructor(folder: FolderInfo, summaries: Summaries, readOnly: boolean, syncedModseq = -1) {
    this.name = folder.name;
    this.readOnly = readOnly;
    this.uidValidity = folder.uidValidity;
    const n = summaries.length;
    // Plain packed arrays (they grow and shrink with EXISTS and EXPUNGE).
    this.#uids = [];
    this.#modseqs = [];
    for (let i = 0; i < n; i++) {
      this.#uids.push(summaries.uids[i] as number);
      this.#modseqs.push(summaries.modseqs[i] as number);
    }
    this.#flags = summaries.flags.slice(0, n);
    this.syncedModseq = syncedModseq;
    // The store counts messages no session has seen yet; they are the newest ones.
    const recent = Math.min(folder.recent, n);
    for (let i = n - recent; i < n; i++) this.#recent.add(this.#uids[i] as number);
  }

  get exists(): number {
    return this.#uids.length;
  }

  get recentCount(): number {
    return this.#recent.size;
  }

  /** UIDs in sequence order (index = sequence number - 1). */
  get uids(): readonly number[] {
    return this.#uids;
  }

  get maxUid(): number {
    return this.#uids[this.#uids.length - 1] ?? 0;
  }

  uidAt(seq: number): number | undefined {
    return this.#uids[seq - 1];
  }

  /** Sequence number of a UID, or 0 if this session does not know it. */
  seqOf(uid: number): number {
    let lo = 0;
    let hi = this.#uids.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const value = this.#uids[mid] as number;
      if (value === uid) return mid + 1;
      if (value < uid) lo = mid + 1;
      else hi = mid - 1;
    }
    return 0;
  }

  has(uid: number): boolean {
    return this.seqOf(uid) > 0;
  }

  flags(uid: number): readonly string[] {
    const seq = this.seqOf(uid);
    return seq === 0 ? [] : (this.#flags[seq - 1] as readonly string[]);
  }

  /** Flags last known of the message with sequence number `seq`. */
  flagsAt(seq: number): readonly string[] {
    return this.#flags[seq - 1] ?? [];
  }

  /** MODSEQ last known of the message with sequence number `seq`. */
  modseqAt(seq: number): number {
    return this.#modseqs[seq - 1] ?? 0;
  }

  /** Sequence number of the first message without `\Seen`, or 0. */
  firstUnseen(): number {
    const seen = new Map<readonly string[], boolean>();
    for (let i = 0; i < this.#flags.length; i++) {
      const flags = this.#flags[i] as readonly string[];
      let s = seen.get(flags);
      if (s === undefined) {
        s = flags.includes('\\Seen');
        seen.set(flags, s);
      }
      if (!s) return i + 1;
    }
    return 0;
  }

  isRecent(uid: number): boolean {
    return this.#recent.has(uid);
  }

  /** Flags as reported in FETCH: the stored ones plus `\Recent` where it applies. */
  reportedFlags(uid: number): string[] {
    const flags = [...this.flags(uid)];
    if (this.#recent.has(uid)) flags.push('\\Recent');
    return flags;
  }

  /** Records flags; true if they differ from what was last known. */
  setFlags(uid: number, flags: readonly string[]): boolean {
    return this.setFlagsAt(this.seqOf(uid), flags);
  }

  /** setFlags by sequence number (0: unknown, nothing recorded), with the MODSEQ if known. */
  setFlagsAt(seq: number, flags: readonly string[], modseq?: number): boolean {
    if (seq === 0) return false;
    const before = this.#flags[seq - 1];
    if (before === undefined) return false;
    if (modseq !== undefined) this.#modseqs[seq - 1] = modseq;
    // The common case (nothing changed, same order) costs no copy and no Set.
    if (before === flags || sameOrder(before, flags)) return false;
    this.#flags[seq - 1] = flags;
    return !sameFlags(before, flags);
  }

  /** Adds messages with UIDs above all known ones (RFC 9051 2.3.1.1: UIDs only grow). */
  add(messages: readonly MessageMeta[]): number {
    let added = 0;
    for (const meta of [...messages].sort((a, b) => a.uid - b.uid)) {
      if (meta.uid <= this.maxUid) continue;
      this.#uids.push(meta.uid);
      this.#flags.push(meta.flags);
      this.#modseqs.push(meta.modseq);
      this.#recent.add(meta.uid);
      added++;
    }
    return added;
  }

  /** add() from summaries (ascending UID order). */
  addSummaries(summaries: Summaries): number {
    let added = 0;
    for (let i = 0; i < summaries.length; i++) {
      const uid = summaries.uids[i] as number;
      if (uid <= this.maxUid) continue;
      this.#uids.push(uid);
      this.#flags.push(summaries.flags[i] as readonly string[]);
      this.#modseqs.push(summaries.modseqs[i] as number);
      this.#recent.add(uid);
      added++;
    }
    return added;
  }

  /** Removes a message; returns the sequence number it had (0 if unknown). */
  remove(uid: number): number {
    const seq = this.seqOf(uid);
    if (seq === 0) return 0;
    this.#uids.splice(seq - 1, 1);
    this.#flags.splice(seq - 1, 1);
    this.#modseqs.splice(seq - 1, 1);
    this.#recent.delete(uid);
    this.flagsPending.delete(uid);
    this.savedSearch.delete(uid);
    this.expungePending.delete(uid);
    return seq;
  }

  /** Keywords in use, for the FLAGS response. */
  keywords(): string[] {
    const set = new Set<string>();
    const lists = new Set(this.#flags);
    for (const flags of lists) for (const f of flags) if (!f.startsWith('\\')) set.add(f);
    return [...set].sort();
  }
}

function sameOrder(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function sameFlags(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a.map((f) => f.toLowerCase()));
  return b.every((f) => set.has(f.toLowerCase()));
}
