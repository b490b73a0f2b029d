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
  /** Negotiates TLS on the connection (after the tagged OK of STARTTLS). */
  startTls(): Promise<void>;
  /** Ends the connection once pending output is written. */
  close(): Promise<void>;
  /** The parsed message, from the session cache or storage. */
  parsedMessage(meta: MessageMeta): Promise<ParsedMessage>;
  /** Writes output in order, honouring back-pressure. */
  write(parts: OutputPart[]): Promise<void>;
}
