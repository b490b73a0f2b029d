/**
 * AUTHORIZATION state commands: USER and PASS (RFC 1939 section 7), AUTH PLAIN (RFC 5034,
 * RFC 4616), and what follows a successful login: the maildrop lock and the INBOX snapshot.
 */
import { MailboxError } from '../../core/mailbox-api.ts';
import { Maildrop } from '../maildrop.ts';
import { decodeSaslPlain, parseSaslResponse } from '../parser.ts';
import { err, ok } from '../replies.ts';
import {
  releaseLock,
  type CommandContext,
  defineCommand,
  type Outcome,
  type SessionState,
} from './command.ts';

/** Store error codes that opening the maildrop again will not cure. */
const PERMANENT: ReadonlySet<string> = new Set(['NONEXISTENT', 'CANNOT', 'INVALID']);

/** The AUTHORIZATION state with nothing pending. */
const FRESH: SessionState = { kind: 'authorization', pendingUser: null, sasl: null };

// RFC 2595 section 2.3 / RFC 4616 section 4: no cleartext passwords on an unprotected link.
const PLAINTEXT_DISALLOWED = 'plaintext authentication is not allowed without TLS';

export const USER = defineCommand('USER', ['authorization'], (ctx, { user }) => {
  if (!ctx.plaintextAllowed) return { reply: err(PLAINTEXT_DISALLOWED, 'AUTH'), next: FRESH };
  // RFC 1939 section 13: the reply does not tell whether the user exists.
  return { reply: ok('send PASS'), next: { kind: 'authorization', pendingUser: user, sasl: null } };
});

export const PASS = defineCommand('PASS', ['authorization'], (ctx, { password }) => {
  // RFC 1939 section 7: PASS is valid only right after a successful USER.
  const user = ctx.state.pendingUser;
  if (user === null) return { reply: err('send USER first') };
  if (!ctx.plaintextAllowed) return { reply: err(PLAINTEXT_DISALLOWED, 'AUTH'), next: FRESH };
  return login(ctx, user, password, '');
});

export const AUTH = defineCommand('AUTH', ['authorization'], (ctx, { mechanism, initialResponse }) => {
  // RFC 5034 section 4: an unsupported mechanism is refused with -ERR.
  if (mechanism !== 'PLAIN') return { reply: err('unsupported authentication mechanism'), next: FRESH };
  if (!ctx.plaintextAllowed) return { reply: err(PLAINTEXT_DISALLOWED, 'AUTH'), next: FRESH };
  if (initialResponse === null) {
    // RFC 4616 section 2: PLAIN starts with the client, so the challenge is empty ("+ ").
    return { reply: { kind: 'challenge', data: Buffer.alloc(0) }, next: { ...FRESH, sasl: 'PLAIN' } };
  }
  return plain(ctx, initialResponse);
});

/** The client's line after a SASL challenge (RFC 5034 section 4). */
export function continueSasl(ctx: CommandContext<'authorization'>, line: Buffer): Promise<Outcome> | Outcome {
  const response = parseSaslResponse(line);
  // RFC 5034 section 4: "*" cancels; the server MUST reject the AUTH command with -ERR.
  if (response.kind === 'cancel') return { reply: err('authentication cancelled'), next: FRESH };
  if (response.kind === 'invalid') return { reply: err(response.error), next: FRESH };
  return plain(ctx, response.data);
}

function plain(ctx: CommandContext<'authorization'>, data: Buffer): Promise<Outcome> | Outcome {
  const credentials = decodeSaslPlain(data);
  if (!credentials) return { reply: err('malformed PLAIN message'), next: FRESH };
  return login(ctx, credentials.authcid, credentials.password, credentials.authzid);
}

/**
 * Checks the credentials, locks the maildrop (RFC 1939 section 8) and takes the INBOX snapshot.
 * A failure leaves the session in AUTHORIZATION with nothing held.
 */
async function login(
  ctx: CommandContext<'authorization'>,
  login: string,
  password: string,
  authzid: string,
): Promise<Outcome> {
  let user: string | null;
  try {
    user = await ctx.auth.authenticate(login, password);
  } catch (error) {
    ctx.logger.error({ err: error }, 'authenticator failed');
    return { reply: err('authentication is unavailable, try again later', 'SYS/TEMP'), next: FRESH };
  }
  // RFC 4616 section 2: acting as another identity (authzid) is not supported; only oneself.
  if (user === null || (authzid !== '' && authzid !== login && authzid !== user)) {
    ctx.logger.info({ login }, 'authentication failed');
    const exhausted = ctx.authFailed();
    // RFC 3206 section 4: [AUTH] says the credentials are wrong, retrying them will not help.
    const outcome: Outcome = { reply: err('invalid credentials', 'AUTH'), next: FRESH };
    if (exhausted) outcome.then = 'close';
    return outcome;
  }
  let release: (() => Promise<void>) | null;
  try {
    release = await ctx.lock.acquire(user);
  } catch (error) {
    ctx.logger.error({ err: error }, 'maildrop lock unavailable');
    return { reply: err('maildrop lock is unavailable, try again later', 'SYS/TEMP'), next: FRESH };
  }
  // RFC 2449 section 8.1.2: [IN-USE] when another session holds the maildrop.
  if (!release) return { reply: err('maildrop already locked', 'IN-USE'), next: FRESH };
  let maildrop: Maildrop;
  try {
    const snapshot = await ctx.mailbox.messages(user, 'INBOX');
    maildrop = new Maildrop(snapshot.folder.uidValidity, snapshot.messages);
  } catch (error) {
    ctx.logger.error({ err: error }, 'cannot read the maildrop');
    await releaseLock(ctx.logger, release);
    // RFC 3206 section 4: [SYS/PERM] when the store says the maildrop itself is broken (no INBOX,
    // refused), so trying again will not help; anything else (a store down) is [SYS/TEMP].
    if (error instanceof MailboxError && PERMANENT.has(error.code)) {
      return { reply: err('maildrop cannot be opened, contact the postmaster', 'SYS/PERM'), next: FRESH };
    }
    return { reply: err('maildrop is unavailable, try again later', 'SYS/TEMP'), next: FRESH };
  }
  ctx.logger.info({ user, messages: maildrop.count }, 'logged in');
  return {
    reply: ok(`maildrop has ${maildrop.count} messages (${maildrop.octets} octets)`),
    next: { kind: 'transaction', user, maildrop, release },
  };
}
