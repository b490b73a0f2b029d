/**
 * The contract between the mailbox-store and its front ends (imap, pop3).
 *
 * In the cluster this is implemented by the NATS RPC client (services/mailbox-store/client.ts),
 * which reaches any mailbox-store replica over `mbox.rpc.*`; bodies are read straight from the
 * blob store, never carried over NATS. Protocol cores depend only on this interface.
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
