/**
 * What a POP3 command handler sees and returns: the session state it runs in, the dependencies it
 * may use, and an Outcome value (reply, next state, what to do with the connection).
 */
import type { Logger } from 'pino';
import type { Authenticator, MailboxClient, MaildropLock } from '../../core/mailbox-api.ts';
import type { Pop3Limits } from '../limits.ts';
import type { Maildrop } from '../maildrop.ts';
import type { Keyword, Pop3Command } from '../parser.ts';
import type { Reply } from '../replies.ts';

/**
 * RFC 1939 section 3: AUTHORIZATION → TRANSACTION → UPDATE. `closed` is the end of a session
 * that did not go through UPDATE (connection lost, timeout, server shutdown).
 */
export type SessionState =
  | {
      kind: 'authorization';
      /** Name given by USER, waiting for PASS (RFC 1939 section 7). */
      pendingUser: string | null;
      /** A SASL exchange waiting for the client's response (RFC 5034 section 4). */
      sasl: 'PLAIN' | null;
    }
  | {
      kind: 'transaction';
      user: string;
      maildrop: Maildrop;
      /** Releases the maildrop lock (RFC 1939 section 8). */
      release: () => Promise<void>;
    }
  | { kind: 'update'; user: string }
  | { kind: 'closed' };

export type StateKind = SessionState['kind'];
export type StateOf<S extends StateKind> = Extract<SessionState, { kind: S }>;

/** What a command returns. */
export interface Outcome {
  reply: Reply;
  /** The state to move to, if it changes. */
  next?: SessionState;
  /** After the reply: hang up, or start TLS (RFC 2595 section 4). */
  then?: 'close' | 'starttls';
}

/** Everything a command may use. Storage is reached only through these interfaces. */
export interface CommandContext<S extends StateKind = StateKind> {
  readonly state: StateOf<S>;
  readonly mailbox: MailboxClient;
  readonly auth: Authenticator;
  readonly lock: MaildropLock;
  readonly logger: Logger;
  readonly hostname: string;
  readonly limits: Pop3Limits;
  readonly retrSetsSeen: boolean;
  /** The connection is under TLS. */
  readonly secure: boolean;
  /** STLS can be offered (TLS configured and not active yet). */
  readonly tlsAvailable: boolean;
  /** USER/PASS and SASL PLAIN may be used on this connection (TLS, loopback, or allowed by configuration). */
  readonly plaintextAllowed: boolean;
  /** Flags a message \Seen in the background (RETR); done before the maildrop lock is released. */
  markSeen(uid: number): void;
  /** Counts a failed login; true when the connection has used up its attempts. */
  authFailed(): boolean;
}

/** What a handler returns, possibly later. */
export type Handler<K extends Keyword, S extends StateKind> = (
  ctx: CommandContext<S>,
  command: Pop3Command<K>,
) => Promise<Outcome> | Outcome;

/** One entry of the command table: the states the command is valid in, and its handler. */
export interface CommandSpec<K extends Keyword> {
  readonly name: K;
  readonly states: readonly StateKind[];
  /** Runs the handler; the caller has checked `states` first. */
  run(ctx: CommandContext, command: Pop3Command<K>): Promise<Outcome> | Outcome;
}

export type CommandTable = { readonly [K in Keyword]: CommandSpec<K> };

/**
 * Declares a command. The handler is typed for the states it accepts, so a TRANSACTION command
 * sees the maildrop without a cast; the state is checked again here as an invariant.
 */
export function defineCommand<K extends Keyword, S extends StateKind>(
  name: K,
  states: readonly S[],
  handler: Handler<K, S>,
): CommandSpec<K> {
  return {
    name,
    states,
    run(ctx, command) {
      const state = ctx.state;
      if (!inState(states, state)) throw new Error(`${name} dispatched in state ${state.kind}`);
      return handler({ ...ctx, state }, command);
    },
  };
}

/** Narrows the state to the kinds a command accepts. */
export function inState<S extends StateKind>(states: readonly S[], state: SessionState): state is StateOf<S> {
  return (states as readonly StateKind[]).includes(state.kind);
}

/** Releases a maildrop lock; a failure is logged, not raised (the lock's lease ends it anyway). */
export async function releaseLock(logger: Logger, release: () => Promise<void>): Promise<void> {
  try {
    await release();
  } catch (error) {
    logger.warn({ err: error }, 'could not release the maildrop lock');
  }
}
