/**
 * The maildrop of a POP3 session: a snapshot of INBOX taken at login.
 *
 * RFC 1939 section 5: message numbers 1..n and their sizes are fixed for the whole session; mail
 * that arrives meanwhile is not seen until the next session. Deletion only marks (DELE); the
 * marks are undone by RSET and carried out in the UPDATE state (QUIT).
 */
import type { MessageMeta } from '../core/mailbox-api.ts';

export interface MaildropEntry {
  /** Message number, 1-based. */
  readonly msg: number;
  readonly uid: number;
  /** Stored RFC822 size in octets. */
  readonly size: number;
  readonly blob: string;
}

export type Lookup = { ok: true; entry: MaildropEntry } | { ok: false; error: string };

export class Maildrop {
  readonly uidValidity: number;
  readonly #entries: readonly MaildropEntry[];
  readonly #deleted = new Set<number>();
  /** Messages known to carry \Seen: flagged at login, or flagged by this session's RETR. */
  readonly #seen = new Set<number>();

  constructor(uidValidity: number, messages: readonly MessageMeta[]) {
    this.uidValidity = uidValidity;
    this.#entries = messages.map((m, i) => ({ msg: i + 1, uid: m.uid, size: m.size, blob: m.blob }));
    messages.forEach((m, i) => {
      if (m.flags.includes('\\Seen')) this.#seen.add(i + 1);
    });
  }

  /** Messages not marked deleted (RFC 1939 section 5: deleted messages are not counted). */
  get count(): number {
    return this.#entries.length - this.#deleted.size;
  }

  /** Octets of the messages not marked deleted. */
  get octets(): number {
    let total = 0;
    for (const e of this.#entries) if (!this.#deleted.has(e.msg)) total += e.size;
    return total;
  }

  /** Messages not marked deleted, in order. */
  live(): MaildropEntry[] {
    return this.#entries.filter((e) => !this.#deleted.has(e.msg));
  }

  /** A message that exists and is not marked deleted. */
  get(msg: number): Lookup {
    const entry = this.#entries[msg - 1];
    if (msg < 1 || !entry) {
      return { ok: false, error: `no such message, only ${this.#entries.length} messages in maildrop` };
    }
    if (this.#deleted.has(msg)) return { ok: false, error: `message ${msg} already deleted` };
    return { ok: true, entry };
  }

  /** RFC 1939 section 7: unique-id, 1 to 70 characters in 0x21..0x7E, never reused for another message. */
  uniqueId(entry: MaildropEntry): string {
    // UIDVALIDITY.UID names one message for its whole life on every replica (RFC 3501 2.3.1.1).
    return `${this.uidValidity}.${entry.uid}`;
  }

  /**
   * Whether a RETR of the message still has to set \Seen: not when the login snapshot had it or a
   * RETR of this session set it (Dovecot likewise flags only messages not \Seen already).
   */
  needsSeen(msg: number): boolean {
    return !this.#seen.has(msg);
  }

  /** The message now carries \Seen (set after this session's RETR). */
  markSeen(msg: number): void {
    this.#seen.add(msg);
  }

  /**
   * The message after `msg` when a client downloading in order is likely to ask for it next: not
   * marked deleted and at most `maxOctets` (its body can be read ahead without holding much).
   */
  following(msg: number, maxOctets: number): MaildropEntry | null {
    const entry = this.#entries[msg];
    if (!entry || this.#deleted.has(entry.msg) || entry.size > maxOctets) return null;
    return entry;
  }

  markDeleted(msg: number): void {
    this.#deleted.add(msg);
  }

  /** RFC 1939 section 5 (RSET): unmark every message. */
  reset(): void {
    this.#deleted.clear();
  }

  /** UIDs of the messages marked deleted, for the UPDATE state. */
  deletedUids(): number[] {
    return this.#entries.filter((e) => this.#deleted.has(e.msg)).map((e) => e.uid);
  }
}
