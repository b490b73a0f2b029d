/**
 * Message commands: STORE, EXPUNGE and UID EXPUNGE (RFC 4315), COPY with COPYUID, MOVE
 * (RFC 6851), APPEND with APPENDUID (RFC 9051 6.3.12).
 */
import type { SessionContext } from '../context.ts';
import { atom, no, ok } from '../response.ts';
import type { ImapValue, Outcome } from '../response.ts';
import { formatSequenceSet } from '../sequence-set.ts';
import type { SequenceSet } from '../sequence-set.ts';
import {
  AUTHENTICATED,
  SELECTED,
  attempt,
  isOutcome,
  resolveSet,
  selectedOf,
  storableFlags,
  storageFailure,
  userOf,
} from './common.ts';
import type { CommandFamily } from './common.ts';

const READ_ONLY = no('Mailbox is read-only', 'CANNOT');

function copyUid(uidValidity: number, source: number[], target: number[]): string {
  return `COPYUID ${uidValidity} ${formatSequenceSet(source)} ${formatSequenceSet(target)}`;
}

async function copyOrMove(
  ctx: SessionContext,
  command: { uid: boolean; args: { set: SequenceSet; mailbox: string } },
  move: boolean,
): Promise<Outcome> {
  const mailbox = selectedOf(ctx);
  const user = userOf(ctx);
  const verb = move ? 'MOVE' : 'COPY';
  if (move && mailbox.readOnly) return READ_ONLY;
  const uids = resolveSet(mailbox, command.args.set, command.uid);
  if (isOutcome(uids)) return uids;
  if (uids.length === 0) return ok(`${verb} completed, nothing to do`);
  const target = command.args.mailbox;
  const result = await attempt(ctx, () => ctx.storage.copy(user, mailbox.name, uids, target, move, ctx.id), {
    tryCreate: true,
  });
  if (!result.ok) return result.outcome;
  const { uidValidity, sourceUids, targetUids } = result.value;
  const code = sourceUids.length > 0 ? copyUid(uidValidity, sourceUids, targetUids) : undefined;
  if (move) {
    // RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs (or VANISHED, 4.4).
    if (code) await ctx.untagged(`OK [${code}] Moved`);
    await ctx.reportExpunged(sourceUids);
  }
  if (target === mailbox.name) await ctx.syncSelected({ expunge: false, appends: true });
  return move ? ok('MOVE completed') : ok('COPY completed', code);
}

/** The APPEND whose literal went to storage while it arrived (session.ts #streamLiteral). */
async function streamedAppend(ctx: SessionContext, mailbox: string): Promise<Outcome> {
  const pending = ctx.takeStreamedAppend();
  if (!pending) return no('Message was not received', 'UNAVAILABLE');
  const result = await pending;
  if (!result.ok) return storageFailure(ctx, result.error, { tryCreate: true });
  const state = ctx.state;
  if (state.kind === 'selected' && state.mailbox.name === mailbox) {
    await ctx.syncSelected({ expunge: false, appends: true });
  }
  return ok('APPEND completed', `APPENDUID ${result.uidValidity} ${result.uid}`);
}

export const MESSAGE_COMMANDS: CommandFamily<'STORE' | 'EXPUNGE' | 'COPY' | 'MOVE' | 'APPEND'> = {
  STORE: {
    states: SELECTED,
    async handle(ctx, command) {
      const mailbox = selectedOf(ctx);
      if (mailbox.readOnly) return READ_ONLY;
      const flags = storableFlags(command.args.flags);
      if (isOutcome(flags)) return flags;
      const uids = resolveSet(mailbox, command.args.set, command.uid);
      if (isOutcome(uids)) return uids;
      const { operation, silent, unchangedSince } = command.args;
      // RFC 7162 3.1: UNCHANGEDSINCE is a CONDSTORE-enabling modifier.
      if (unchangedSince !== null) ctx.enabled.add('CONDSTORE');
      const condstore = ctx.enabled.has('CONDSTORE');
      if (uids.length === 0) return ok('STORE completed');
      const user = userOf(ctx);
      const modified: number[] = [];
      for (let i = 0; i < uids.length; i += ctx.limits.storageBatch) {
        const batch = uids.slice(i, i + ctx.limits.storageBatch);
        const result = await attempt(ctx, async () =>
          unchangedSince === null
            ? {
                messages: await ctx.storage.storeFlags(user, mailbox.name, batch, operation, flags, ctx.id),
                failed: [],
              }
            : ctx.storage.storeFlagsIf(user, mailbox.name, batch, operation, flags, unchangedSince, ctx.id),
        );
        if (!result.ok) return result.outcome;
        modified.push(...result.value.failed);
        for (const meta of result.value.messages.sort((a, b) => a.uid - b.uid)) {
          const seq = mailbox.seqOf(meta.uid);
          if (seq === 0) continue;
          mailbox.setFlags(meta.uid, meta.flags);
          const values: ImapValue[] = [];
          if (command.uid) values.push(atom('UID'), meta.uid);
          // RFC 9051 6.4.6: without .SILENT, the new flags of each message are reported.
          if (!silent) values.push(atom('FLAGS'), ctx.reportedFlags(meta.uid));
          // RFC 7162 3.1.3: with CONDSTORE the new MODSEQ is reported, even with .SILENT.
          if (condstore) values.push(atom('MODSEQ'), [meta.modseq]);
          if (values.length > (command.uid ? 2 : 0)) await ctx.untagged(`${seq} FETCH`, [values]);
        }
      }
      if (modified.length > 0) {
        // RFC 7162 3.1.3: MODIFIED names (by UID or sequence number) what was left alone.
        const numbers = command.uid
          ? modified
          : modified.map((uid) => mailbox.seqOf(uid)).filter((n) => n > 0);
        numbers.sort((a, b) => a - b);
        return ok('Conditional STORE failed for some messages', `MODIFIED ${formatSequenceSet(numbers)}`);
      }
      return ok('STORE completed');
    },
  },
  EXPUNGE: {
    states: SELECTED,
    async handle(ctx, command) {
      const mailbox = selectedOf(ctx);
      if (mailbox.readOnly) return READ_ONLY;
      let uids: number[] = [...mailbox.uids];
      if (command.args.set) {
        // RFC 4315 2.1: UID EXPUNGE removes only the \Deleted messages among the given UIDs.
        const resolved = resolveSet(mailbox, command.args.set, true);
        if (isOutcome(resolved)) return resolved;
        uids = resolved;
      }
      if (uids.length === 0) return ok('EXPUNGE completed');
      const user = userOf(ctx);
      const result = await attempt(ctx, () => ctx.storage.expunge(user, mailbox.name, uids, false, ctx.id));
      if (!result.ok) return result.outcome;
      await ctx.reportExpunged(result.value);
      return ok('EXPUNGE completed');
    },
  },
  COPY: {
    states: SELECTED,
    handle: (ctx, command) => copyOrMove(ctx, command, false),
  },
  MOVE: {
    states: SELECTED,
    handle: (ctx, command) => copyOrMove(ctx, command, true),
  },
  APPEND: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const { mailbox, messages } = command.args;
      if (messages[0]?.streamed) return streamedAppend(ctx, mailbox);
      const prepared: Array<{ flags: string[]; date: number | null; message: Buffer }> = [];
      for (const m of messages) {
        const flags = storableFlags(m.flags);
        if (isOutcome(flags)) return flags;
        if (m.message.length === 0) return no('Empty message', 'CANNOT');
        prepared.push({ flags, date: m.date, message: m.message });
      }
      const user = userOf(ctx);
      const appended: number[] = [];
      let uidValidity = 0;
      for (const m of prepared) {
        const result = await attempt(
          ctx,
          () => ctx.storage.append(user, mailbox, m.message, m.flags, m.date ?? undefined, ctx.id),
          { tryCreate: true },
        );
        if (!result.ok) {
          // RFC 3502 6.3.11: MULTIAPPEND is all or nothing; what went in already comes out.
          if (appended.length > 0) {
            await attempt(ctx, () => ctx.storage.expunge(user, mailbox, appended, true, ctx.id));
          }
          return result.outcome;
        }
        appended.push(result.value.uid);
        uidValidity = result.value.uidValidity;
      }
      const state = ctx.state;
      if (state.kind === 'selected' && state.mailbox.name === mailbox) {
        // RFC 9051 6.3.12: appending to the selected mailbox reports the new message.
        await ctx.syncSelected({ expunge: false, appends: true });
      }
      // RFC 4315 3: APPENDUID carries a UID set for MULTIAPPEND.
      return ok('APPEND completed', `APPENDUID ${uidValidity} ${formatSequenceSet(appended)}`);
    },
  },
};
