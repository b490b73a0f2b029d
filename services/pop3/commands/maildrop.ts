/**
 * TRANSACTION state commands (RFC 1939 sections 5 and 7): STAT, LIST, UIDL, RETR, TOP, DELE,
 * RSET, NOOP. They work on the session's snapshot; only RETR (\Seen) reaches the store.
 */
import { err, ok } from '../replies.ts';
import { defineCommand } from './command.ts';

export const STAT = defineCommand('STAT', ['transaction'], (ctx) => {
  // RFC 1939 section 5: "+OK nn mm", deleted messages not counted.
  const { maildrop } = ctx.state;
  return { reply: ok(`${maildrop.count} ${maildrop.octets}`) };
});

export const LIST = defineCommand('LIST', ['transaction'], (ctx, { msg }) => {
  const { maildrop } = ctx.state;
  if (msg === null) {
    const lines = maildrop.live().map((e) => `${e.msg} ${e.size}`);
    return {
      reply: { kind: 'lines', text: `${maildrop.count} messages (${maildrop.octets} octets)`, lines },
    };
  }
  const found = maildrop.get(msg);
  if (!found.ok) return { reply: err(found.error) };
  return { reply: ok(`${found.entry.msg} ${found.entry.size}`) };
});

export const UIDL = defineCommand('UIDL', ['transaction'], (ctx, { msg }) => {
  const { maildrop } = ctx.state;
  if (msg === null) {
    const lines = maildrop.live().map((e) => `${e.msg} ${maildrop.uniqueId(e)}`);
    return { reply: { kind: 'lines', text: 'unique-id listing follows', lines } };
  }
  const found = maildrop.get(msg);
  if (!found.ok) return { reply: err(found.error) };
  return { reply: ok(`${found.entry.msg} ${maildrop.uniqueId(found.entry)}`) };
});

export const RETR = defineCommand('RETR', ['transaction'], (ctx, { msg }) => {
  const { maildrop } = ctx.state;
  const found = maildrop.get(msg);
  if (!found.ok) return { reply: err(found.error) };
  const { uid, size, blob } = found.entry;
  // A client downloading its maildrop asks for the next message right after this one: its body
  // is read ahead while this one is sent, so it is in memory when the client asks.
  const next = maildrop.following(msg, ctx.limits.prefetchMaxOctets);
  const reply = {
    kind: 'message' as const,
    text: `${size} octets`,
    blob,
    maxBodyLines: null,
    ...(next ? { prefetch: next.blob } : {}),
  };
  if (!ctx.retrSetsSeen || !maildrop.needsSeen(msg)) return { reply };
  // Once the last byte is written: a RETR cut short does not mark the message read.
  return {
    reply: {
      ...reply,
      delivered: async () => {
        maildrop.markSeen(msg);
        ctx.markSeen(uid);
      },
    },
  };
});

export const TOP = defineCommand('TOP', ['transaction'], (ctx, { msg, lines }) => {
  // RFC 1939 section 7: the header, the blank line, then `lines` lines of the body.
  const found = ctx.state.maildrop.get(msg);
  if (!found.ok) return { reply: err(found.error) };
  return {
    reply: { kind: 'message', text: 'top of message follows', blob: found.entry.blob, maxBodyLines: lines },
  };
});

export const DELE = defineCommand('DELE', ['transaction'], (ctx, { msg }) => {
  // RFC 1939 section 5: DELE only marks; the message goes in the UPDATE state.
  const { maildrop } = ctx.state;
  const found = maildrop.get(msg);
  if (!found.ok) return { reply: err(found.error) };
  maildrop.markDeleted(msg);
  return { reply: ok(`message ${msg} deleted`) };
});

export const RSET = defineCommand('RSET', ['transaction'], (ctx) => {
  const { maildrop } = ctx.state;
  maildrop.reset();
  return { reply: ok(`maildrop has ${maildrop.count} messages (${maildrop.octets} octets)`) };
});

// RFC 1939 section 5: NOOP is a TRANSACTION state command.
export const NOOP = defineCommand('NOOP', ['transaction'], () => ({ reply: ok('') }));
