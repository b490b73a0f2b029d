/**
 * Authenticated-state mailbox commands (RFC 9051 6.3): SELECT, EXAMINE, CREATE, DELETE,
 * RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, NAMESPACE (RFC 2342), ENABLE
 * (RFC 5161); and CLOSE, UNSELECT (RFC 3691), CHECK of the selected state.
 */
import type { FolderInfo } from '../../core/mailbox-api.ts';
import type { SessionContext } from '../context.ts';
import { DELIMITER, encodeMailboxName, listMatcher } from '../mailbox-name.ts';
import { atom, bad, no, ok } from '../response.ts';
import type { ImapValue, Outcome } from '../response.ts';
import { SelectedMailbox } from '../selected-mailbox.ts';
import { AUTHENTICATED, SELECTED, attempt, selectedOf, userOf } from './common.ts';
import type { CommandFamily } from './common.ts';

const SYSTEM_FLAGS = ['\\Answered', '\\Flagged', '\\Deleted', '\\Seen', '\\Draft'];

/** The name as sent to clients: modified UTF-7, quoted. */
function wireName(name: string): Buffer {
  return Buffer.from(encodeMailboxName(name), 'latin1');
}

async function select(ctx: SessionContext, name: string, readOnly: boolean): Promise<Outcome> {
  const user = userOf(ctx);
  if (ctx.state.kind === 'selected') {
    // RFC 9051 6.3.2: selecting closes the current mailbox (without expunge), said with [CLOSED].
    ctx.setState({ kind: 'authenticated', user });
    await ctx.untagged('OK [CLOSED] Previous mailbox closed');
  }
  const mark = ctx.changeMark();
  const loaded = await attempt(ctx, () => ctx.storage.messages(user, name));
  if (!loaded.ok) return loaded.outcome;
  const { folder, messages } = loaded.value;
  const mailbox = new SelectedMailbox(folder, messages, readOnly);
  const flags = [...SYSTEM_FLAGS, ...mailbox.keywords()];
  await ctx.untagged('FLAGS', [flags.map(atom)]);
  const permanent = readOnly ? '()' : `(${SYSTEM_FLAGS.join(' ')} \\*)`;
  await ctx.untagged(`OK [PERMANENTFLAGS ${permanent}] Flags permitted`);
  await ctx.untagged(`${mailbox.exists} EXISTS`);
  await ctx.untagged(`${mailbox.recentCount} RECENT`);
  const firstUnseen = mailbox.uids.findIndex((uid) => !mailbox.flags(uid).includes('\\Seen'));
  if (firstUnseen >= 0) await ctx.untagged(`OK [UNSEEN ${firstUnseen + 1}] First unseen`);
  await ctx.untagged(`OK [UIDVALIDITY ${folder.uidValidity}] UIDs valid`);
  await ctx.untagged(`OK [UIDNEXT ${folder.uidNext}] Predicted next UID`);
  ctx.setState({ kind: 'selected', user, mailbox });
  // Changes that arrived while the mailbox loaded are reported after this command.
  ctx.replayChanges(mark);
  return ok(`${readOnly ? 'EXAMINE' : 'SELECT'} completed`, readOnly ? 'READ-ONLY' : 'READ-WRITE');
}

/** LIST attributes (RFC 9051 7.3.1, RFC 3348 CHILDREN, RFC 6154 SPECIAL-USE). */
function attributes(folder: FolderInfo, names: ReadonlySet<string>): string[] {
  const prefix = folder.name + DELIMITER;
  const hasChildren = [...names].some((n) => n.startsWith(prefix));
  const attrs = [hasChildren ? '\\HasChildren' : '\\HasNoChildren'];
  if (folder.specialUse) attrs.push(folder.specialUse);
  return attrs;
}

async function list(
  ctx: SessionContext,
  reference: string,
  pattern: string,
  lsub: boolean,
): Promise<Outcome> {
  const kind = lsub ? 'LSUB' : 'LIST';
  if (pattern === '' && !lsub) {
    // RFC 9051 6.3.9: an empty pattern asks for the delimiter and the root.
    await ctx.untagged(kind, [[atom('\\Noselect')], DELIMITER, '']);
    return ok('LIST completed');
  }
  const user = userOf(ctx);
  const loaded = await attempt(ctx, () => ctx.storage.listFolders(user));
  if (!loaded.ok) return loaded.outcome;
  const folders = [...loaded.value].sort((a, b) =>
    a.name === 'INBOX' ? -1 : b.name === 'INBOX' ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
  );
  const names = new Set(folders.map((f) => f.name));
  const matches = listMatcher(reference + pattern);
  for (const folder of folders) {
    if (lsub && !folder.subscribed) continue;
    if (!matches(folder.name)) continue;
    const attrs = lsub ? [] : attributes(folder, names);
    await ctx.untagged(kind, [attrs.map(atom), DELIMITER, wireName(folder.name)]);
  }
  if (pattern.includes('%')) {
    // RFC 9051 6.3.9: `%` lists a level whose mailbox does not exist as \Noselect (or \NonExistent).
    const implied = new Set<string>();
    for (const folder of folders) {
      if (lsub && !folder.subscribed) continue;
      const parts = folder.name.split(DELIMITER);
      for (let i = 1; i < parts.length; i++) {
        const parent = parts.slice(0, i).join(DELIMITER);
        if (!names.has(parent) && !implied.has(parent) && matches(parent)) implied.add(parent);
      }
    }
    for (const parent of implied) {
      const attrs = lsub ? ['\\Noselect'] : ['\\Noselect', '\\HasChildren'];
      await ctx.untagged(kind, [attrs.map(atom), DELIMITER, wireName(parent)]);
    }
  }
  return ok(`${kind} completed`);
}

const STATUS_ITEMS = new Set(['MESSAGES', 'RECENT', 'UIDNEXT', 'UIDVALIDITY', 'UNSEEN', 'DELETED', 'SIZE']);

export const MAILBOX_COMMANDS: CommandFamily<
  | 'SELECT'
  | 'EXAMINE'
  | 'CREATE'
  | 'DELETE'
  | 'RENAME'
  | 'SUBSCRIBE'
  | 'UNSUBSCRIBE'
  | 'LIST'
  | 'LSUB'
  | 'STATUS'
  | 'NAMESPACE'
  | 'ENABLE'
  | 'CLOSE'
  | 'UNSELECT'
  | 'CHECK'
> = {
  SELECT: {
    states: AUTHENTICATED,
    handle: (ctx, command) => select(ctx, command.args.mailbox, false),
  },
  EXAMINE: {
    states: AUTHENTICATED,
    handle: (ctx, command) => select(ctx, command.args.mailbox, true),
  },
  CREATE: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      // RFC 9051 6.3.4: a trailing delimiter only says the client means to create children.
      let name = command.args.mailbox;
      while (name.endsWith(DELIMITER)) name = name.slice(0, -1);
      if (name === '') return bad('Empty mailbox name');
      if (name === 'INBOX') return no('INBOX always exists', 'ALREADYEXISTS');
      const result = await attempt(ctx, () => ctx.storage.createFolder(userOf(ctx), name));
      return result.ok ? ok('CREATE completed') : result.outcome;
    },
  },
  DELETE: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const name = command.args.mailbox;
      if (name === 'INBOX') return no('INBOX cannot be deleted', 'CANNOT');
      const user = userOf(ctx);
      const result = await attempt(ctx, () => ctx.storage.deleteFolder(user, name));
      if (!result.ok) return result.outcome;
      const state = ctx.state;
      if (state.kind === 'selected' && state.mailbox.name === name) {
        ctx.setState({ kind: 'authenticated', user });
      }
      return ok('DELETE completed');
    },
  },
  RENAME: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const { mailbox, target } = command.args;
      const user = userOf(ctx);
      const result = await attempt(ctx, () => ctx.storage.renameFolder(user, mailbox, target));
      if (!result.ok) return result.outcome;
      const state = ctx.state;
      if (state.kind === 'selected' && state.mailbox.name === mailbox && mailbox !== 'INBOX') {
        // The selected name is gone; the client selects the new one if it wants it. (RFC 9051
        // 6.3.6: renaming INBOX moves its messages and leaves INBOX in place.)
        ctx.setState({ kind: 'authenticated', user });
      }
      return ok('RENAME completed');
    },
  },
  SUBSCRIBE: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const name = command.args.mailbox;
      const result = await attempt(ctx, () => ctx.storage.setSubscribed(userOf(ctx), name, true));
      return result.ok ? ok('SUBSCRIBE completed') : result.outcome;
    },
  },
  UNSUBSCRIBE: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const name = command.args.mailbox;
      const result = await attempt(ctx, () => ctx.storage.setSubscribed(userOf(ctx), name, false));
      return result.ok ? ok('UNSUBSCRIBE completed') : result.outcome;
    },
  },
  LIST: {
    states: AUTHENTICATED,
    handle: (ctx, command) => list(ctx, command.args.reference, command.args.pattern, false),
  },
  LSUB: {
    states: AUTHENTICATED,
    handle: (ctx, command) => list(ctx, command.args.reference, command.args.pattern, true),
  },
  STATUS: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const { mailbox, items } = command.args;
      const unknown = items.find((item) => !STATUS_ITEMS.has(item));
      if (unknown) return bad(`Unknown status item ${unknown.slice(0, 20)}`);
      const user = userOf(ctx);
      const needsMessages = items.includes('DELETED') || items.includes('SIZE');
      const loaded = await attempt(ctx, async () =>
        needsMessages
          ? ctx.storage.messages(user, mailbox)
          : { folder: await ctx.storage.status(user, mailbox), messages: [] },
      );
      if (!loaded.ok) return loaded.outcome;
      const { folder, messages } = loaded.value;
      const values: ImapValue[] = [];
      for (const item of items) {
        values.push(atom(item));
        switch (item) {
          case 'MESSAGES':
            values.push(folder.exists);
            break;
          case 'RECENT':
            values.push(folder.recent);
            break;
          case 'UIDNEXT':
            values.push(folder.uidNext);
            break;
          case 'UIDVALIDITY':
            values.push(folder.uidValidity);
            break;
          case 'UNSEEN':
            values.push(folder.unseen);
            break;
          case 'DELETED':
            values.push(messages.filter((m) => m.flags.includes('\\Deleted')).length);
            break;
          case 'SIZE':
            values.push(messages.reduce((n, m) => n + m.size, 0));
            break;
        }
      }
      await ctx.untagged('STATUS', [wireName(folder.name), values]);
      return ok('STATUS completed');
    },
  },
  NAMESPACE: {
    states: AUTHENTICATED,
    async handle(ctx) {
      // RFC 2342: one personal namespace at the root, no shared or other users' namespaces.
      await ctx.untagged('NAMESPACE', [[['', DELIMITER]], null, null]);
      return ok('NAMESPACE completed');
    },
  },
  ENABLE: {
    states: AUTHENTICATED,
    async handle(ctx) {
      // RFC 5161 3.1: unknown or unsupported capabilities are ignored; none of ours need enabling.
      await ctx.untagged('ENABLED');
      return ok('ENABLE completed');
    },
  },
  CLOSE: {
    states: SELECTED,
    async handle(ctx) {
      const mailbox = selectedOf(ctx);
      const user = userOf(ctx);
      if (!mailbox.readOnly && mailbox.exists > 0) {
        // RFC 9051 6.4.1: CLOSE expunges \Deleted messages without EXPUNGE responses.
        const uids = [...mailbox.uids];
        const result = await attempt(ctx, () => ctx.storage.expunge(user, mailbox.name, uids, false, ctx.id));
        if (!result.ok) return result.outcome;
      }
      ctx.setState({ kind: 'authenticated', user });
      return ok('CLOSE completed');
    },
  },
  UNSELECT: {
    states: SELECTED,
    async handle(ctx) {
      ctx.setState({ kind: 'authenticated', user: userOf(ctx) });
      return ok('UNSELECT completed');
    },
  },
  CHECK: {
    states: SELECTED,
    async handle() {
      // RFC 3501 6.4.1: a checkpoint; the store is always consistent, so nothing to do.
      return ok('CHECK completed');
    },
  },
};
