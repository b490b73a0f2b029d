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
import type { ListArgs, QresyncParams, SelectArgs } from '../parser.ts';
import { SelectedMailbox } from '../selected-mailbox.ts';
import { loadSummaries } from '../summaries.ts';
import { formatSequenceSet, inSet } from '../sequence-set.ts';
import { AUTHENTICATED, SELECTED, attempt, selectedOf, userOf } from './common.ts';
import type { CommandFamily } from './common.ts';

const SYSTEM_FLAGS = ['\\Answered', '\\Flagged', '\\Deleted', '\\Seen', '\\Draft'];

/** The name as sent to clients: modified UTF-7, or UTF-8 once UTF8=ACCEPT is on (RFC 6855 3). */
export function wireName(ctx: SessionContext, name: string): Buffer {
  if (ctx.enabled.has('UTF8=ACCEPT')) return Buffer.from(name, 'utf8');
  return Buffer.from(encodeMailboxName(name), 'latin1');
}

async function select(ctx: SessionContext, args: SelectArgs, readOnly: boolean): Promise<Outcome> {
  const user = userOf(ctx);
  const name = args.mailbox;
  // RFC 7162 3.2.5: QRESYNC parameters need ENABLE QRESYNC first.
  if (args.qresync && !ctx.enabled.has('QRESYNC')) return bad('QRESYNC is not enabled');
  if (ctx.state.kind === 'selected') {
    // RFC 9051 6.3.2: selecting closes the current mailbox (without expunge), said with [CLOSED].
    ctx.setState({ kind: 'authenticated', user });
    await ctx.untagged('OK [CLOSED] Previous mailbox closed');
  }
  // RFC 7162 3.1.8: SELECT (CONDSTORE) is a CONDSTORE-enabling command.
  if (args.condstore) ctx.enabled.add('CONDSTORE');
  const mark = ctx.changeMark();
  // The sequence map and flags only: summaries, without blob references, in big pages.
  const loaded = await attempt(ctx, () =>
    loadSummaries(ctx.storage, user, name, { first: 1, last: 0xffffffff }),
  );
  if (!loaded.ok) return loaded.outcome;
  const { folder, summaries, modseq } = loaded.value;
  const mailbox = new SelectedMailbox(folder, summaries, readOnly, modseq);
  const rev2 = ctx.enabled.has('IMAP4rev2');
  const flags = [...SYSTEM_FLAGS, ...mailbox.keywords()];
  await ctx.untagged('FLAGS', [flags.map(atom)]);
  const permanent = readOnly ? '()' : `(${SYSTEM_FLAGS.join(' ')} \\*)`;
  await ctx.untagged(`OK [PERMANENTFLAGS ${permanent}] Flags permitted`);
  await ctx.untagged(`${mailbox.exists} EXISTS`);
  // RFC 9051 7.4: IMAP4rev2 drops RECENT and UNSEEN from SELECT.
  if (!rev2) {
    await ctx.untagged(`${mailbox.recentCount} RECENT`);
    const firstUnseen = mailbox.firstUnseen();
    if (firstUnseen > 0) await ctx.untagged(`OK [UNSEEN ${firstUnseen}] First unseen`);
  }
  await ctx.untagged(`OK [UIDVALIDITY ${folder.uidValidity}] UIDs valid`);
  await ctx.untagged(`OK [UIDNEXT ${folder.uidNext}] Predicted next UID`);
  // RFC 7162 3.1.2.1: HIGHESTMODSEQ on every successful SELECT/EXAMINE.
  await ctx.untagged(`OK [HIGHESTMODSEQ ${folder.highestModseq}] Highest`);
  if (rev2) await ctx.untagged('LIST', [[], DELIMITER, wireName(ctx, folder.name)]);
  ctx.setState({ kind: 'selected', user, mailbox });
  const q = args.qresync;
  if (q && q.uidValidity === folder.uidValidity) {
    const resynced = await attempt(ctx, () => qresync(ctx, user, mailbox, q));
    if (!resynced.ok) return resynced.outcome;
  }
  // Changes that arrived while the mailbox loaded are reported after this command.
  ctx.replayChanges(mark);
  return ok(`${readOnly ? 'EXAMINE' : 'SELECT'} completed`, readOnly ? 'READ-ONLY' : 'READ-WRITE');
}

/**
 * RFC 7162 3.2.5.1: what changed since the client's mod-sequence — VANISHED (EARLIER) for
 * expunged UIDs, then FETCH of the changed messages' flags.
 */
async function qresync(
  ctx: SessionContext,
  user: string,
  mailbox: SelectedMailbox,
  q: QresyncParams,
): Promise<void> {
  const star = Math.max(mailbox.maxUid, 1);
  let known = (uid: number): boolean => (q.knownUids ? inSet(q.knownUids, uid, star) : true);
  // RFC 7162 3.2.5.2: seq-match-data only narrows the search of a server without a full
  // expunge journal; with the journal it is not needed, and is ignored.
  let vanished = await ctx.storage.expungedSince(user, mailbox.name, q.modseq);
  if (vanished === null) {
    // The journal no longer reaches that far: every known UID that is gone is reported.
    const present = new Set(mailbox.uids);
    const top = mailbox.maxUid;
    vanished = [];
    if (q.knownUids) {
      for (const range of q.knownUids) {
        const a = range.start === '*' ? top : range.start;
        const b = range.end === '*' ? top : range.end;
        for (let uid = Math.min(a, b); uid <= Math.max(a, b) && uid <= top; uid++) {
          if (!present.has(uid)) vanished.push(uid);
        }
      }
    } else {
      for (let uid = 1; uid <= top; uid++) if (!present.has(uid)) vanished.push(uid);
    }
    known = () => true;
  }
  const gone = vanished.filter((uid) => known(uid) && !mailbox.has(uid));
  if (gone.length > 0) await ctx.untagged(`VANISHED (EARLIER) ${formatSequenceSet(gone)}`);
  const changed = await ctx.storage.changedSince(user, mailbox.name, q.modseq);
  for (const meta of changed) {
    const seq = mailbox.seqOf(meta.uid);
    if (seq === 0 || !known(meta.uid)) continue;
    mailbox.setFlags(meta.uid, meta.flags);
    await ctx.untagged(`${seq} FETCH`, [
      [atom('UID'), meta.uid, atom('FLAGS'), ctx.reportedFlags(meta.uid), atom('MODSEQ'), [meta.modseq]],
    ]);
  }
}

/** LIST attributes (RFC 9051 7.3.1, RFC 3348 CHILDREN, RFC 6154 SPECIAL-USE, RFC 5258 \Subscribed). */
function attributes(folder: FolderInfo, names: ReadonlySet<string>, subscribedAttr: boolean): string[] {
  const prefix = folder.name + DELIMITER;
  const hasChildren = [...names].some((n) => n.startsWith(prefix));
  const attrs = [hasChildren ? '\\HasChildren' : '\\HasNoChildren'];
  if (folder.specialUse) attrs.push(folder.specialUse);
  if (subscribedAttr && folder.subscribed) attrs.push('\\Subscribed');
  return attrs;
}

async function list(ctx: SessionContext, args: ListArgs, lsub: boolean): Promise<Outcome> {
  const kind = lsub ? 'LSUB' : 'LIST';
  const { reference, patterns, selection, returnOptions, statusItems } = args;
  if (patterns.length === 1 && patterns[0] === '' && !lsub && !args.extended) {
    // RFC 9051 6.3.9: an empty pattern asks for the delimiter and the root.
    await ctx.untagged(kind, [[atom('\\Noselect')], DELIMITER, '']);
    return ok('LIST completed');
  }
  if (statusItems) {
    const unknown = statusItems.find((item) => !STATUS_ITEMS.has(item));
    if (unknown) return bad(`Unknown status item ${unknown.slice(0, 20)}`);
  }
  const user = userOf(ctx);
  const loaded = await attempt(ctx, () => ctx.storage.listFolders(user));
  if (!loaded.ok) return loaded.outcome;
  const folders = [...loaded.value].sort((a, b) =>
    a.name === 'INBOX' ? -1 : b.name === 'INBOX' ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
  );
  const names = new Set(folders.map((f) => f.name));
  const matchers = patterns.map((pattern) => listMatcher(reference + pattern));
  const matches = (name: string): boolean => matchers.some((m) => m(name));
  // RFC 5258 3.1: SUBSCRIBED selects subscribed names; RFC 6154 5.1: SPECIAL-USE those with a use.
  const onlySubscribed = lsub || selection.includes('SUBSCRIBED');
  const onlySpecial = selection.includes('SPECIAL-USE');
  const recursive = selection.includes('RECURSIVEMATCH');
  const subscribedAttr = !lsub && (selection.includes('SUBSCRIBED') || returnOptions.includes('SUBSCRIBED'));
  const selected = (f: FolderInfo): boolean =>
    (!onlySubscribed || f.subscribed) && (!onlySpecial || f.specialUse !== '');
  for (const folder of folders) {
    if (!matches(folder.name)) continue;
    let childInfo = false;
    if (!selected(folder)) {
      // RFC 5258 3.5: with RECURSIVEMATCH a parent is listed when a child matches the selection.
      if (!recursive) continue;
      const prefix = folder.name + DELIMITER;
      childInfo = folders.some((f) => f.name.startsWith(prefix) && selected(f));
      if (!childInfo) continue;
    }
    const attrs = lsub ? [] : attributes(folder, names, subscribedAttr);
    if (childInfo && !subscribedAttr) attrs.length = 0;
    const values: ImapValue[] = [attrs.map(atom), DELIMITER, wireName(ctx, folder.name)];
    if (childInfo)
      values.push([
        atom('CHILDINFO'),
        [atom(selection.includes('SUBSCRIBED') ? 'SUBSCRIBED' : 'SPECIAL-USE')],
      ]);
    await ctx.untagged(kind, values);
    // RFC 5819 2: the STATUS of each listed, selectable mailbox follows its LIST response.
    if (statusItems && statusItems.length > 0) {
      const status = await attempt(ctx, () => statusValues(ctx, user, folder.name, statusItems));
      if (status.ok) await ctx.untagged('STATUS', [wireName(ctx, folder.name), status.value]);
    }
  }
  const wildcard = patterns.some((p) => p.includes('%'));
  if (wildcard && !onlySpecial) {
    // RFC 9051 6.3.9: `%` lists a level whose mailbox does not exist as \Noselect (or \NonExistent).
    const implied = new Set<string>();
    for (const folder of folders) {
      if (onlySubscribed && !folder.subscribed) continue;
      const parts = folder.name.split(DELIMITER);
      for (let i = 1; i < parts.length; i++) {
        const parent = parts.slice(0, i).join(DELIMITER);
        if (!names.has(parent) && !implied.has(parent) && matches(parent)) implied.add(parent);
      }
    }
    for (const parent of implied) {
      const attrs = lsub ? ['\\Noselect'] : ['\\NonExistent', '\\HasChildren'];
      if (!lsub && !args.extended && !ctx.enabled.has('IMAP4rev2')) attrs[0] = '\\Noselect';
      await ctx.untagged(kind, [attrs.map(atom), DELIMITER, wireName(ctx, parent)]);
    }
  }
  return ok(`${kind} completed`);
}

const STATUS_ITEMS = new Set([
  'MESSAGES',
  'RECENT',
  'UIDNEXT',
  'UIDVALIDITY',
  'UNSEEN',
  'DELETED',
  'SIZE',
  'HIGHESTMODSEQ',
  'APPENDLIMIT',
]);

/** The values of a STATUS response (RFC 9051 6.3.11, RFC 7162 3.1.6, RFC 7889 4). */
async function statusValues(
  ctx: SessionContext,
  user: string,
  mailbox: string,
  items: readonly string[],
): Promise<ImapValue[]> {
  const needsMessages = items.includes('DELETED') || items.includes('SIZE');
  const { folder, messages } = needsMessages
    ? await ctx.storage.messages(user, mailbox, [], { summary: true })
    : { folder: await ctx.storage.status(user, mailbox), messages: [] };
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
      case 'HIGHESTMODSEQ':
        values.push(folder.highestModseq);
        break;
      case 'APPENDLIMIT':
        values.push(ctx.limits.maxLiteralBytes);
        break;
    }
  }
  return values;
}

/** RFC 5161 3.1 / RFC 9051 6.3.1: the extensions ENABLE can turn on. */
const ENABLEABLE = new Map([
  ['CONDSTORE', 'CONDSTORE'],
  ['QRESYNC', 'QRESYNC'],
  ['UTF8=ACCEPT', 'UTF8=ACCEPT'],
  ['UTF8=ONLY', 'UTF8=ACCEPT'],
  ['IMAP4REV2', 'IMAP4rev2'],
]);

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
    handle: (ctx, command) => select(ctx, command.args, false),
  },
  EXAMINE: {
    states: AUTHENTICATED,
    handle: (ctx, command) => select(ctx, command.args, true),
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
    handle: (ctx, command) => list(ctx, command.args, false),
  },
  LSUB: {
    states: AUTHENTICATED,
    handle: (ctx, command) => list(ctx, command.args, true),
  },
  STATUS: {
    states: AUTHENTICATED,
    async handle(ctx, command) {
      const { mailbox, items } = command.args;
      const unknown = items.find((item) => !STATUS_ITEMS.has(item));
      if (unknown) return bad(`Unknown status item ${unknown.slice(0, 20)}`);
      const user = userOf(ctx);
      const loaded = await attempt(ctx, () => statusValues(ctx, user, mailbox, items));
      if (!loaded.ok) return loaded.outcome;
      await ctx.untagged('STATUS', [wireName(ctx, mailbox), loaded.value]);
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
    async handle(ctx, command) {
      // RFC 5161 3.1: unknown capabilities are ignored; ENABLED lists those newly turned on.
      const now: string[] = [];
      for (const requested of command.args.capabilities) {
        const name = ENABLEABLE.get(requested);
        if (!name || ctx.enabled.has(name)) continue;
        ctx.enabled.add(name);
        // RFC 7162 3.2.3: enabling QRESYNC enables CONDSTORE too.
        if (name === 'QRESYNC') ctx.enabled.add('CONDSTORE');
        now.push(name === 'UTF8=ACCEPT' ? requested : name);
      }
      await ctx.untagged('ENABLED', now.map(atom));
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
