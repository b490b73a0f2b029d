/**
 * Commands valid in every state: CAPABILITY, NOOP, LOGOUT (RFC 9051 6.1) and ID (RFC 2971);
 * and COMPRESS (RFC 4978), which changes the connection rather than the mailbox.
 */
import { atom, bad, no, ok, statusLine } from '../response.ts';
import { ANY_STATE, AUTHENTICATED } from './common.ts';
import type { CommandFamily } from './common.ts';

/** RFC 2971 3.3: what the server says about itself. No version: it helps attackers more than users. */
const SERVER_ID = ['name', 'Postino', 'vendor', 'Postino'];

export const ANY_STATE_COMMANDS: CommandFamily<'CAPABILITY' | 'NOOP' | 'LOGOUT' | 'ID' | 'COMPRESS'> = {
  COMPRESS: {
    // RFC 4978 3: after authentication, once per connection, DEFLATE only.
    states: AUTHENTICATED,
    async handle(ctx, command) {
      if (command.args.mechanism !== 'DEFLATE') return bad('Unknown compression mechanism');
      if (ctx.compressed) return no('Compression is already active', 'COMPRESSIONACTIVE');
      return { status: 'OK', text: 'DEFLATE active', after: async () => ctx.startCompression() };
    },
  },
  CAPABILITY: {
    states: ANY_STATE,
    async handle(ctx) {
      await ctx.untagged('CAPABILITY', ctx.capabilities().map(atom));
      return ok('CAPABILITY completed');
    },
  },
  NOOP: {
    // Changes of the selected mailbox are reported by the session after every command.
    states: ANY_STATE,
    async handle() {
      return ok('NOOP completed');
    },
  },
  LOGOUT: {
    states: ANY_STATE,
    async handle(ctx) {
      // RFC 9051 6.1.3: untagged BYE, then the tagged OK, then the server closes.
      await ctx.write([statusLine('*', 'BYE', `${ctx.hostname} logging out`)]);
      ctx.setState({ kind: 'logout' });
      return { status: 'OK', text: 'LOGOUT completed', after: () => ctx.close() };
    },
  },
  ID: {
    states: ANY_STATE,
    async handle(ctx, command) {
      if (command.args.params) {
        ctx.logger.debug({ client: Object.fromEntries(command.args.params.slice(0, 16)) }, 'client id');
      }
      await ctx.untagged('ID', [SERVER_ID]);
      return ok('ID completed');
    },
  },
};
