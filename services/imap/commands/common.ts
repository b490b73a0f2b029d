/**
 * Helpers shared by the command families: the command table types, sequence set resolution
 * and the mapping of storage errors to IMAP response codes.
 */
import { MailboxError } from '../../core/mailbox-api.ts';
import type { SessionContext, StateKind } from '../context.ts';
import type { CommandName, CommandOf } from '../parser.ts';
import { bad, no } from '../response.ts';
import type { Outcome } from '../response.ts';
import type { SelectedMailbox } from '../selected-mailbox.ts';
import { SAVED_RESULT, maxExplicit, resolveSequenceNumbers, resolveUids } from '../sequence-set.ts';
import type { SequenceSet } from '../sequence-set.ts';

/** One entry of the command table: the states it is allowed in, and its handler. */
export interface CommandSpec<K extends CommandName> {
  states: readonly StateKind[];
  handle(ctx: SessionContext, command: CommandOf<K>): Promise<Outcome>;
}

/** A family of commands (one file), typed by the names it implements. */
export type CommandFamily<K extends CommandName> = { [P in K]: CommandSpec<P> };

export const ANY_STATE: readonly StateKind[] = ['notAuthenticated', 'authenticated', 'selected'];
export const AUTHENTICATED: readonly StateKind[] = ['authenticated', 'selected'];
export const SELECTED: readonly StateKind[] = ['selected'];
export const NOT_AUTHENTICATED: readonly StateKind[] = ['notAuthenticated'];

/** The user of an authenticated session (the table guarantees the state). */
export function userOf(ctx: SessionContext): string {
  const state = ctx.state;
  if (state.kind === 'authenticated' || state.kind === 'selected') return state.user;
  throw new Error(`No user in state ${state.kind}`);
}

/** The selected mailbox (the table guarantees the state). */
export function selectedOf(ctx: SessionContext): SelectedMailbox {
  const state = ctx.state;
  if (state.kind === 'selected') return state.mailbox;
  throw new Error(`No mailbox selected in state ${state.kind}`);
}

/**
 * The UIDs a set addresses, in sequence order. RFC 9051 6.4.8: sequence numbers beyond the
 * mailbox are a client error (BAD); UIDs that do not exist are simply ignored.
 */
export function resolveSet(mailbox: SelectedMailbox, set: SequenceSet, uid: boolean): number[] | Outcome {
  // RFC 5182 2.1: `$` is the saved result, UIDs of messages still there, in either form.
  if (set === SAVED_RESULT) return mailbox.uids.filter((u) => mailbox.savedSearch.has(u));
  if (uid) return resolveUids(set, mailbox.uids);
  if (maxExplicit(set) > mailbox.exists) return bad('Invalid message sequence number');
  return resolveSequenceNumbers(set, mailbox.exists).map((seq) => mailbox.uidAt(seq) as number);
}

/** RFC 5530 response codes for the store's error codes. */
const CODES: Record<string, string> = {
  NONEXISTENT: 'NONEXISTENT',
  ALREADYEXISTS: 'ALREADYEXISTS',
  OVERQUOTA: 'OVERQUOTA',
  INVALID: 'CANNOT',
  CANNOT: 'CANNOT',
  UNAVAILABLE: 'UNAVAILABLE',
};

/** A storage failure → NO with its response code; anything unexpected is NO [UNAVAILABLE]. */
export function storageFailure(
  ctx: SessionContext,
  error: unknown,
  options: { tryCreate?: boolean } = {},
): Outcome {
  if (error instanceof MailboxError) {
    // RFC 9051 7.1: TRYCREATE tells the client that creating the target would help.
    if (error.code === 'NONEXISTENT' && options.tryCreate) return no('No such mailbox', 'TRYCREATE');
    const code = CODES[error.code] ?? 'UNAVAILABLE';
    if (code === 'UNAVAILABLE') ctx.logger.warn({ err: error }, 'storage unavailable');
    return no(error.message, code);
  }
  ctx.logger.error({ err: error }, 'storage call failed');
  return no('Temporary failure, try again later', 'UNAVAILABLE');
}

/** Runs a storage call; a failure becomes the outcome. */
export async function attempt<T>(
  ctx: SessionContext,
  call: () => Promise<T>,
  options: { tryCreate?: boolean } = {},
): Promise<{ ok: true; value: T } | { ok: false; outcome: Outcome }> {
  try {
    return { ok: true, value: await call() };
  } catch (error) {
    return { ok: false, outcome: storageFailure(ctx, error, options) };
  }
}

export function isOutcome(value: unknown): value is Outcome {
  return typeof value === 'object' && value !== null && 'status' in value && !Array.isArray(value);
}

/** System flags a client may set (RFC 9051 2.3.2); `\Recent` is the server's. */
const SETTABLE_SYSTEM_FLAGS = new Set(['\\answered', '\\flagged', '\\deleted', '\\seen', '\\draft']);

/** Flags to store: `\Recent` dropped; unknown system flags are an error. */
export function storableFlags(flags: readonly string[]): string[] | Outcome {
  const out: string[] = [];
  for (const flag of flags) {
    const lower = flag.toLowerCase();
    if (lower === '\\recent') continue;
    if (flag.startsWith('\\') && !SETTABLE_SYSTEM_FLAGS.has(lower)) return bad(`Invalid flag ${flag}`);
    out.push(flag);
  }
  return out;
}
