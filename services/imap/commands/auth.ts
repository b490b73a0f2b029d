/**
 * Not-authenticated state: LOGIN, AUTHENTICATE PLAIN and LOGIN (RFC 4616, with SASL-IR
 * RFC 4959), and STARTTLS (RFC 9051 6.2).
 *
 * Passwords travel in the clear unless the connection is TLS, so password mechanisms are
 * refused with NO [PRIVACYREQUIRED] (and LOGINDISABLED is advertised) unless the connection is
 * TLS, from loopback, or the configuration allows plaintext.
 */
import type { SessionContext } from '../context.ts';
import { bad, no, ok, statusLine } from '../response.ts';
import type { Outcome } from '../response.ts';
import { NOT_AUTHENTICATED, storageFailure } from './common.ts';
import type { CommandFamily } from './common.ts';

const MECHANISMS = new Set(['PLAIN', 'LOGIN']);

/** RFC 4648 base64, as SASL uses it (RFC 9051 6.2.2). */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function decodeBase64(text: string): Buffer | null {
  if (text === '=') return Buffer.alloc(0);
  if (!BASE64.test(text)) return null;
  return Buffer.from(text, 'base64');
}

/** Checks the credentials and completes the login, or counts the failure. */
async function verify(ctx: SessionContext, login: string, password: string, authzid = ''): Promise<Outcome> {
  let user: string | null;
  try {
    user = await ctx.auth.authenticate(login, password);
  } catch (error) {
    return storageFailure(ctx, error);
  }
  // RFC 4616 2: acting as another user is not offered; an authzid must name the same user.
  if (user && authzid !== '' && authzid.toLowerCase() !== login.toLowerCase() && authzid !== user) {
    return failed(ctx, 'Authorization identity refused', 'AUTHORIZATIONFAILED');
  }
  if (!user) return failed(ctx, 'Invalid credentials', 'AUTHENTICATIONFAILED');
  try {
    await ctx.loggedIn(user);
  } catch (error) {
    return storageFailure(ctx, error);
  }
  return ok('Logged in', `CAPABILITY ${ctx.capabilities().join(' ')}`);
}

/** RFC 5530 AUTHENTICATIONFAILED; after too many, BYE and close. */
async function failed(ctx: SessionContext, text: string, code: string): Promise<Outcome> {
  ctx.logger.info({ code }, 'authentication failed');
  if (!ctx.authFailed()) return no(text, code);
  return {
    status: 'NO',
    code,
    text,
    after: async () => {
      await ctx.write([statusLine('*', 'BYE', 'Too many authentication failures')]);
      await ctx.close();
    },
  };
}

/** A SASL response line: `*` cancels (RFC 9051 6.2.2). */
async function saslResponse(ctx: SessionContext, prompt: string): Promise<Buffer | Outcome> {
  await ctx.continuation(prompt);
  const line = await ctx.readLine();
  if (line === null) return bad('Connection closed');
  const text = line.toString('latin1').trim();
  if (text === '*') return bad('Authentication cancelled');
  const decoded = decodeBase64(text);
  if (decoded === null) return bad('Invalid base64');
  return decoded;
}

function isOutcomeValue(value: Buffer | Outcome): value is Outcome {
  return !Buffer.isBuffer(value);
}

export const AUTH_COMMANDS: CommandFamily<'LOGIN' | 'AUTHENTICATE' | 'STARTTLS'> = {
  LOGIN: {
    states: NOT_AUTHENTICATED,
    async handle(ctx, command) {
      if (!ctx.plaintextAuthAllowed()) return no('Use STARTTLS or TLS first', 'PRIVACYREQUIRED');
      return verify(ctx, command.args.username, command.args.password);
    },
  },
  AUTHENTICATE: {
    states: NOT_AUTHENTICATED,
    async handle(ctx, command) {
      const { mechanism, initialResponse } = command.args;
      if (!MECHANISMS.has(mechanism)) return no(`Unsupported mechanism ${mechanism.slice(0, 20)}`, 'CANNOT');
      if (!ctx.plaintextAuthAllowed()) return no('Use STARTTLS or TLS first', 'PRIVACYREQUIRED');
      let first: Buffer | Outcome;
      if (initialResponse !== null) {
        const decoded = decodeBase64(initialResponse);
        first = decoded ?? bad('Invalid base64');
      } else {
        // RFC 4616: PLAIN starts with an empty challenge; LOGIN asks for the user name.
        first = await saslResponse(
          ctx,
          mechanism === 'PLAIN' ? '' : Buffer.from('Username:').toString('base64'),
        );
      }
      if (isOutcomeValue(first)) return first;
      if (mechanism === 'PLAIN') {
        // message = [authzid] UTF8NUL authcid UTF8NUL passwd
        const parts = first.toString('utf8').split('\0');
        if (parts.length !== 3) return bad('Invalid PLAIN response');
        const [authzid, authcid, password] = parts as [string, string, string];
        return verify(ctx, authcid, password, authzid);
      }
      const password = await saslResponse(ctx, Buffer.from('Password:').toString('base64'));
      if (isOutcomeValue(password)) return password;
      return verify(ctx, first.toString('utf8'), password.toString('utf8'));
    },
  },
  STARTTLS: {
    states: NOT_AUTHENTICATED,
    async handle(ctx) {
      if (!ctx.tlsAvailable) return bad(ctx.secure ? 'TLS is already active' : 'STARTTLS is not available');
      return { status: 'OK', text: 'Begin TLS negotiation now', after: () => ctx.startTls() };
    },
  },
};
