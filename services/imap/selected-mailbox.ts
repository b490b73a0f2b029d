/**
 * The session's view of its selected mailbox: the sequence number ↔ UID map, the flags last
 * reported, `\Recent`, and the changes other sessions made that are not yet reported.
 *
 * RFC 9051 2.3.1.2: sequence numbers are the UIDs in ascending order as *this session* knows
 * them; they change only when this session reports EXISTS or EXPUNGE. So the map changes here,
 * and only when the session writes the matching untagged response.
 */
import type { FolderInfo, MessageMeta } from '../core/mailbox-api.ts';

export class SelectedMailbox {
  readonly name: string;
  readonly readOnly: boolean;
  readonly uidValidity: number;
  #uids: number[] = [];
  readonly #flags = new Map<number, string[]>();
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

  constructor(folder: FolderInfo, messages: readonly MessageMeta[], readOnly: boolean) {
    this.name = folder.name;
    this.readOnly = readOnly;
    this.uidValidity = folder.uidValidity;
    for (const meta of messages) {
      this.#uids.push(meta.uid);
      this.#flags.set(meta.uid, meta.flags);
    }
    this.#uids.sort((a, b) => a - b);
    // The store counts messages no session has seen yet; they are the newest ones.
    const recent = Math.min(folder.recent, this.#uids.length);
    for (const uid of this.#uids.slice(this.#uids.length - recent)) this.#recent.add(uid);
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
    return this.#flags.get(uid) ?? [];
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
    const before = this.#flags.get(uid);
    if (before === undefined) return false;
    // The common case (nothing changed, same order) costs no copy and no Set.
    if (before === flags || sameOrder(before, flags)) return false;
    this.#flags.set(uid, [...flags]);
    return !sameFlags(before, flags);
  }

  /** Adds messages with UIDs above all known ones (RFC 9051 2.3.1.1: UIDs only grow). */
  add(messages: readonly MessageMeta[]): number {
    let added = 0;
    for (const meta of [...messages].sort((a, b) => a.uid - b.uid)) {
      if (meta.uid <= this.maxUid) continue;
      this.#uids.push(meta.uid);
      this.#flags.set(meta.uid, meta.flags);
      this.#recent.add(meta.uid);
      added++;
    }
    return added;
  }

  /** Removes a message; returns the sequence number it had (0 if unknown). */
  remove(uid: number): number {
    const seq = this.seqOf(uid);
    if (seq === 0) return 0;
    this.#uids.splice(seq - 1, 1);
    this.#flags.delete(uid);
    this.#recent.delete(uid);
    this.flagsPending.delete(uid);
    this.savedSearch.delete(uid);
    this.expungePending.delete(uid);
    return seq;
  }

  /** Keywords in use, for the FLAGS response. */
  keywords(): string[] {
    const set = new Set<string>();
    for (const flags of this.#flags.values()) for (const f of flags) if (!f.startsWith('\\')) set.add(f);
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
