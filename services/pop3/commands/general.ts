/**
 * Commands about the session itself: CAPA (RFC 2449 section 5), STLS (RFC 2595 section 4) and
 * QUIT (RFC 1939 sections 4 and 6).
 */
import { err, ok } from '../replies.ts';
import { defineCommand } from './command.ts';

export const CAPA = defineCommand('CAPA', ['authorization', 'transaction'], (ctx) => {
  // RFC 2449 section 5: what is available in AUTHORIZATION is announced in both states.
  const capabilities = ['TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING'];
  if (ctx.plaintextAllowed) capabilities.push('USER', 'SASL PLAIN');
  if (ctx.tlsAvailable) capabilities.push('STLS');
  capabilities.push('IMPLEMENTATION Postino');
  return { reply: { kind: 'lines', text: 'capability list follows', lines: capabilities } };
});

export const STLS = defineCommand('STLS', ['authorization'], (ctx) => {
  if (ctx.secure) return { reply: err('TLS is already active') };
  if (!ctx.tlsAvailable) return { reply: err('STLS is not available') };
  // RFC 2595 section 4: after TLS the client starts over; nothing learnt before is kept.
  return {
    reply: ok('begin TLS negotiation'),
    next: { kind: 'authorization', pendingUser: null, sasl: null },
    then: 'starttls',
  };
});

export const QUIT = defineCommand('QUIT', ['authorization', 'transaction'], async (ctx) => {
  const bye = `${ctx.hostname} POP3 server signing off`;
  const state = ctx.state;
  // RFC 1939 section 4: QUIT in AUTHORIZATION ends the session, no UPDATE state.
  if (state.kind === 'authorization') return { reply: ok(bye), next: { kind: 'closed' }, then: 'close' };
  // RFC 1939 section 6: UPDATE removes the messages marked deleted, then the lock is released
  // (the session does that when it leaves TRANSACTION, before the reply goes out).
  const { user, maildrop } = state;
  const uids = maildrop.deletedUids();
  const next = { kind: 'update', user } as const;
  if (uids.length > 0) {
    try {
      await ctx.mailbox.expunge(user, 'INBOX', uids, true);
    } catch (error) {
      ctx.logger.error({ err: error, uids }, 'UPDATE failed, no message removed');
      return { reply: err('some deleted messages not removed', 'SYS/TEMP'), next, then: 'close' };
    }
    ctx.logger.info({ user, removed: uids.length }, 'messages removed');
  }
  const left = maildrop.count;
  return {
    reply: ok(left === 0 ? `${bye} (maildrop empty)` : `${bye} (${left} messages left)`),
    next,
    then: 'close',
  };
});
