/**
 * QUOTA (RFC 9208): one quota root, `""`, covering every mailbox of the user, with the
 * STORAGE (in units of 1024 octets, section 5.1) and MESSAGE (section 5.2) resources.
 * Limits are set by the administrator (admin API), so SETQUOTA is refused.
 */
import type { SessionContext } from '../context.ts';
import { atom, no, ok } from '../response.ts';
import type { ImapValue } from '../response.ts';
import { wireName } from './mailbox.ts';
import { AUTHENTICATED, attempt, userOf } from './common.ts';
import type { CommandFamily } from './common.ts';

/** The only quota root. */
const ROOT = '';

/** `* QUOTA "" (STORAGE used limit MESSAGE used limit)`; a resource without a limit is left out. */
async function quotaResponse(ctx: SessionContext): Promise<ImapValue[] | null> {
  const result = await attempt(ctx, () => ctx.storage.quota(userOf(ctx)));
  if (!result.ok) return null;
  const q = result.value;
  const resources: ImapValue[] = [];
  if (q.storageLimit > 0) {
    resources.push(atom('STORAGE'), Math.ceil(q.storageUsed / 1024), Math.floor(q.storageLimit / 1024));
  }
  if (q.messagesLimit > 0) resources.push(atom('MESSAGE'), q.messagesUsed, q.messagesLimit);
  return [ROOT, resources];
}

export const QUOTA_COMMANDS: CommandFamily<'GETQUOTA' | 'GETQUOTAROOT' | 'SETQUOTA'> = {
  GETQUOTAROOT: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const { mailbox } = command.args;
      const exists = await attempt(ctx, () => ctx.storage.status(userOf(ctx), mailbox));
      if (!exists.ok) return exists.outcome;
      const quota = await quotaResponse(ctx);
      if (!quota) return no('Quota unavailable', 'UNAVAILABLE');
      // RFC 9208 4.3.2: QUOTAROOT names the roots, then one QUOTA per root.
      await ctx.untagged('QUOTAROOT', [wireName(ctx, mailbox), ROOT]);
      await ctx.untagged('QUOTA', quota);
      return ok('GETQUOTAROOT completed');
    },
  },
  GETQUOTA: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      if (command.args.root !== ROOT) return no('No such quota root', 'NONEXISTENT');
      const quota = await quotaResponse(ctx);
      if (!quota) return no('Quota unavailable', 'UNAVAILABLE');
      await ctx.untagged('QUOTA', quota);
      return ok('GETQUOTA completed');
    },
  },
  SETQUOTA: {
    states: AUTHENTICATED,
    async handle() {
      // RFC 9208 4.1.3: only administrators set limits; users are refused.
      return no('Quotas are set by the administrator', 'NOPERM');
    },
  },
};
