/**
 * What command handlers see of their session: its state, its storage, and its I/O.
 * Handlers depend on this interface only, never on the socket.
 */
import type { Logger } from 'pino';
import type { Authenticator, MailboxClient, MessageMeta } from '../core/mailbox-api.ts';
import type { ImapLimits } from './limits.ts';
import type { ParsedMessage } from './mime-tree.ts';
import type { ImapValue, OutputPart } from './response.ts';
import type { SelectedMailbox } from './selected-mailbox.ts';

/** RFC 9051 3: the connection states. */
export type SessionState =
  | { kind: 'notAuthenticated' }
  | { kind: 'authenticated'; user: string }
  | { kind: 'selected'; user: string; mailbox: SelectedMailbox }
  | { kind: 'logout' };

export type StateKind = SessionState['kind'];

/** How a streamed APPEND ended in storage. */
export type StreamedAppend = { ok: true; uid: number; uidValidity: number } | { ok: false; error: unknown };

export interface SessionContext {
  /** Session id, passed to storage as the origin of this session's changes. */
  readonly id: string;
  readonly storage: MailboxClient;
  readonly auth: Authenticator;
  readonly logger: Logger;
  readonly limits: ImapLimits;
  readonly hostname: string;
  readonly state: SessionState;
  /** The one place the state changes. */
  setState(next: SessionState): void;
  /** True once the connection is gone: long loops stop early. */
  readonly closed: boolean;
  /** True on TLS. */
  readonly secure: boolean;
  /** True when STARTTLS can be offered. */
  readonly tlsAvailable: boolean;
  /** Password mechanisms are allowed (TLS, loopback, or allowed by configuration). */
  plaintextAuthAllowed(): boolean;
  /** Capabilities for the current state. */
  capabilities(): string[];
  /**
   * Extensions turned on for this connection: by ENABLE (RFC 5161: CONDSTORE, QRESYNC,
   * UTF8=ACCEPT, IMAP4rev2) or, for CONDSTORE, by the first command that uses it (RFC 7162 3.1).
   */
  readonly enabled: Set<string>;
  /**
   * Reports messages gone from the selected mailbox and drops them from the sequence map:
   * `* VANISHED` once QRESYNC is enabled (RFC 7162 3.2.10), `* n EXPUNGE` otherwise.
   */
  reportExpunged(uids: readonly number[]): Promise<void>;
  /** Writes `* prefix values...`. */
  untagged(prefix: string, values?: readonly ImapValue[]): Promise<void>;
  /** Writes a `+ text` continuation request. */
  continuation(text: string): Promise<void>;
  /** The next line the client sends (AUTHENTICATE exchanges, IDLE's DONE); null once closed. */
  readLine(): Promise<Buffer | null>;
  /** Resolves at the next change notification that concerns this session. */
  nextChange(): Promise<void>;
  /**
   * Reports what changed in the selected mailbox since it was last reported: EXISTS, FETCH
   * FLAGS and, when `expunge` is true, EXPUNGE (RFC 9051 7.5.1: never while FETCH, STORE
   * or SEARCH respond). `appends` checks for new messages even without a notification.
   */
  syncSelected(options: { expunge: boolean; appends?: boolean }): Promise<void>;
  /** A position in the stream of change notifications (taken before SELECT loads a mailbox). */
  changeMark(): number;
  /** Applies the notifications received since `mark` to the newly selected mailbox. */
  replayChanges(mark: number): void;
  /** Completes a login: subscribes to changes and enters the authenticated state. */
  loggedIn(user: string): Promise<void>;
  /** Counts a failed authentication; true when the connection must now close. */
  authFailed(): boolean;
  /** True once COMPRESS=DEFLATE is active. */
  readonly compressed: boolean;
  /** Turns compression on (after the tagged OK of COMPRESS, RFC 4978 3). */
  startCompression(): void;
  /** Negotiates TLS on the connection (after the tagged OK of STARTTLS). */
  startTls(): Promise<void>;
  /**
   * The result of the APPEND whose literal was streamed to storage while it arrived (the
   * command's own); null if there is none. Taking it makes the command responsible for it.
   */
  takeStreamedAppend(): Promise<StreamedAppend> | null;
  /** FLAGS of a message of the selected mailbox as this client is shown them. */
  reportedFlags(uid: number): ImapValue[];
  /** Ends the connection once pending output is written. */
  close(): Promise<void>;
  /** The parsed message if the instance has it cached (no storage call). */
  cachedMessage(blob: string): ParsedMessage | null;
  /** The parsed message, from the instance's cache or storage. */
  parsedMessage(meta: MessageMeta): Promise<ParsedMessage>;
  /** Writes output in order, honouring back-pressure. */
  write(parts: OutputPart[]): Promise<void>;
}
