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
    // RFC 6851 4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
    if (code) await ctx.untagged(`OK [${code}] Moved`);
    for (const uid of [...sourceUids].sort((a, b) => b - a)) {
      const seq = mailbox.remove(uid);
      if (seq > 0) await ctx.untagged(`${seq} EXPUNGE`);
    }
  }
  if (target === mailbox.name) await ctx.syncSelected({ expunge: false, appends: true });
  return move ? ok('MOVE completed') : ok('COPY completed', code);
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
      if (uids.length === 0) return ok('STORE completed');
      const { operation, silent } = command.args;
      const user = userOf(ctx);
      for (let i = 0; i < uids.length; i += ctx.limits.storageBatch) {
        const batch = uids.slice(i, i + ctx.limits.storageBatch);
        const result = await attempt(ctx, () =>
          ctx.storage.storeFlags(user, mailbox.name, batch, operation, flags, ctx.id),
        );
        if (!result.ok) return result.outcome;
        for (const meta of result.value.sort((a, b) => a.uid - b.uid)) {
          const seq = mailbox.seqOf(meta.uid);
          if (seq === 0) continue;
          mailbox.setFlags(meta.uid, meta.flags);
          // RFC 9051 6.4.6: without .SILENT, the new flags of each message are reported.
          if (silent) continue;
          const values: ImapValue[] = [atom('FLAGS'), mailbox.reportedFlags(meta.uid).map(atom)];
          if (command.uid) values.unshift(atom('UID'), meta.uid);
          await ctx.untagged(`${seq} FETCH`, [values]);
        }
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
      for (const uid of [...result.value].sort((a, b) => a - b)) {
        const seq = mailbox.remove(uid);
        if (seq > 0) await ctx.untagged(`${seq} EXPUNGE`);
      }
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
      const { mailbox, date, message } = command.args;
      const flags = storableFlags(command.args.flags);
      if (isOutcome(flags)) return flags;
      if (message.length === 0) return no('Empty message', 'CANNOT');
      const user = userOf(ctx);
      const result = await attempt(
        ctx,
        () => ctx.storage.append(user, mailbox, message, flags, date ?? undefined, ctx.id),
        { tryCreate: true },
      );
      if (!result.ok) return result.outcome;
      const state = ctx.state;
      if (state.kind === 'selected' && state.mailbox.name === mailbox) {
        // RFC 9051 6.3.12: appending to the selected mailbox reports the new message.
        await ctx.syncSelected({ expunge: false, appends: true });
      }
      return ok('APPEND completed', `APPENDUID ${result.value.uidValidity} ${result.value.uid}`);
    },
  },
};
