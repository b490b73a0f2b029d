/**
 * IDLE (RFC 2177): the client waits for changes; the server pushes EXISTS, EXPUNGE and
 * FETCH FLAGS as they happen until the client sends DONE. The autologout timer keeps running
 * (RFC 2177 3: clients re-issue IDLE at least every 29 minutes).
 */
import { bad, ok } from '../response.ts';
import { AUTHENTICATED } from './common.ts';
import type { CommandFamily } from './common.ts';

export const IDLE_COMMANDS: CommandFamily<'IDLE'> = {
  IDLE: {
    states: AUTHENTICATED,
    async handle(ctx) {
      await ctx.continuation('idling');
      const line = ctx.readLine().then((bytes) => ({ bytes }));
      for (;;) {
        // Wait for the next change before reporting, so none slips between report and wait.
        const change = ctx.nextChange().then(() => null);
        await ctx.syncSelected({ expunge: true });
        const next = await Promise.race([line, change]);
        if (next === null) {
          if (ctx.closed) return ok('IDLE ended');
          continue;
        }
        if (next.bytes === null) return ok('IDLE ended');
        if (next.bytes.toString('latin1').trim().toUpperCase() === 'DONE') return ok('IDLE terminated');
        return bad('Expected DONE');
      }
    },
  },
};
