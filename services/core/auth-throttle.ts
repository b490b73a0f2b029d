/**
 * AUTH brute-force throttling for IMAP and POP3, on the same counters as SMTP AUTH
 * (services/smtp-ingress/rates.ts): failures per client IP and per account in a fixed window, in
 * Redis, so that every replica and every protocol meets one limit (SMTP_AUTH_FAILURES). A client
 * that reconnects after each refusal, or moves from IMAP to POP3 to SMTP, is still counted.
 *
 * Once a counter reaches the limit, authentication is refused before the password is checked,
 * whatever it is, until the window ends: the refusal tells nothing about the password.
 */
import { MailboxError, type Authenticator } from './mailbox-api.ts';

/** The counters (smtp-ingress's Rates): `authfail` per `<ip>` and per `u:<account>`. */
export interface FailureCounter {
  peek(kind: 'authfail', who: string, windowMs: number): Promise<number>;
  hit(kind: 'authfail', who: string, windowMs: number): Promise<number>;
}

export interface AuthThrottleOptions {
  /** Failures per IP and per account within the window before AUTH is refused. */
  limit: number;
  windowMs: number;
  /** Called on each failure (metrics). */
  onFailure?: () => void;
}

/** An authenticator that knows its client: what a protocol server hands each session. */
export interface ClientAuthenticator extends Authenticator {
  /** The authenticator for one connection from `ip` (the PROXY header's client behind a balancer). */
  forClient(ip: string): Authenticator;
}

/** The error a throttled login gets: IMAP answers NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]. */
export const THROTTLED = 'Too many authentication failures, try again later';

/** Wraps an authenticator with the shared failure counters. */
export function throttledAuthenticator(
  auth: Authenticator,
  counter: FailureCounter,
  options: AuthThrottleOptions,
): ClientAuthenticator {
  const check = async (ip: string, login: string, password: string): Promise<string | null> => {
    const account = `u:${login.trim().toLowerCase()}`;
    const whos = ip ? [ip, account] : [account];
    const counts = await Promise.all(whos.map((w) => counter.peek('authfail', w, options.windowMs)));
    if (counts.some((n) => n >= options.limit)) throw new MailboxError('UNAVAILABLE', THROTTLED);
    const user = await auth.authenticate(login, password);
    if (user === null) {
      options.onFailure?.();
      await Promise.all(whos.map((w) => counter.hit('authfail', w, options.windowMs)));
    }
    return user;
  };
  return {
    authenticate: (login, password) => check('', login, password),
    forClient: (ip) => ({ authenticate: (login, password) => check(ip, login, password) }),
  };
}

/** The authenticator for one connection: `auth.forClient(ip)` when it counts per client, else `auth`. */
export function authenticatorFor(auth: Authenticator, ip: string): Authenticator {
  const perClient = (auth as Partial<ClientAuthenticator>).forClient;
  return typeof perClient === 'function' ? perClient.call(auth, ip) : auth;
}
