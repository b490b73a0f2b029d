/**
 * An in-memory MailboxClient for protocol tests: the same contract as the mailbox-store
 * (services/core/mailbox-api.ts) without NATS or a blob store.
 *
 * Faithful where front ends can tell the difference: UIDs only ascend, UIDVALIDITY is fixed
 * per folder incarnation, expunge without `force` only removes `\Deleted` messages, `\Recent`
 * is never stored, failures are MailboxErrors with the store's codes, and every change is
 * pushed asynchronously to every watcher of the user (as NATS would), tagged with its origin.
 */
import { createHash } from 'node:crypto';
import type {
  Authenticator,
  FlagOp,
  FolderInfo,
  MailboxChange,
  MailboxClient,
  MessageMeta,
} from '../../services/core/mailbox-api.ts';
import { MailboxError } from '../../services/core/mailbox-api.ts';

/** Folder hierarchy delimiter the store uses in folder names. */
const DELIMITER = '/';

interface Folder {
  name: string;
  uidValidity: number;
  uidNext: number;
  highestModseq: number;
  specialUse: string;
  subscribed: boolean;
  messages: MessageMeta[];
  /** UIDs not yet seen by a full listing (the store's approximation of `\Recent`). */
  recent: Set<number>;
  /** Expunge journal (RFC 7162 3.2.5): UID and the MODSEQ of its expunge, ascending. */
  expunged: { uid: number; modseq: number }[];
}

interface User {
  folders: Map<string, Folder>;
  watchers: Set<(change: MailboxChange) => void>;
}

export interface MemoryMailboxOptions {
  /** Folders every new user starts with, besides INBOX: name → special-use (or ''). */
  folders?: Record<string, string>;
  /** Per-user quota in octets (sum of message sizes); append/copy beyond it fail with OVERQUOTA. */
  quotaBytes?: number;
  /** Per-user limit on the number of messages; append/copy beyond it fail with OVERQUOTA. */
  quotaMessages?: number;
}

const DEFAULT_FOLDERS: Record<string, string> = {
  Drafts: '\\Drafts',
  Sent: '\\Sent',
  Junk: '\\Junk',
  Trash: '\\Trash',
};

/** Message flags the store keeps: `\Recent` is session state, never stored. */
function cleanFlags(flags: string[]): string[] {
  const out: string[] = [];
  for (const flag of flags) {
    if (flag.toLowerCase() === '\\recent') continue;
    if (!out.some((f) => f.toLowerCase() === flag.toLowerCase())) out.push(flag);
  }
  return out;
}

function cloneMeta(meta: MessageMeta): MessageMeta {
  return { ...meta, flags: [...meta.flags] };
}

export class MemoryMailbox implements MailboxClient {
  readonly blobs = new Map<string, Buffer>();
  readonly #users = new Map<string, User>();
  readonly #options: MemoryMailboxOptions;
  #uidValidity = 1_700_000_000;
  /** Errors to throw from the next call of a method (tests of storage failures). */
  readonly #failures = new Map<string, Error>();

  constructor(options: MemoryMailboxOptions = {}) {
    this.#options = options;
  }

  /** Makes the next call of `method` reject with `error`. */
  failNext(method: keyof MailboxClient, error: Error): void {
    this.#failures.set(method, error);
  }

  /** Number of watch() subscriptions currently open for a user. */
  watcherCount(user: string): number {
    return this.#users.get(user)?.watchers.size ?? 0;
  }

  /** Delivers a message as the delivery agent would (origin ''). */
  async deliver(
    user: string,
    raw: string | Buffer,
    options: { folder?: string; flags?: string[]; internalDate?: number } = {},
  ): Promise<number> {
    const body = typeof raw === 'string' ? Buffer.from(raw.replace(/\r?\n/g, '\r\n')) : raw;
    const result = await this.append(
      user,
      options.folder ?? 'INBOX',
      body,
      options.flags ?? [],
      options.internalDate,
    );
    return result.uid;
  }

  async listFolders(user: string): Promise<FolderInfo[]> {
    this.#fail('listFolders');
    return [...this.#user(user).folders.values()].map((f) => this.#info(f));
  }

  async status(user: string, folder: string): Promise<FolderInfo> {
    this.#fail('status');
    return this.#info(this.#folder(user, folder));
  }

  async messages(
    user: string,
    folder: string,
    uids?: number[],
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    this.#fail('messages');
    const f = this.#folder(user, folder);
    const info = this.#info(f);
    if (!uids || uids.length === 0) {
      f.recent.clear();
      return { folder: info, messages: f.messages.map(cloneMeta) };
    }
    const wanted = new Set(uids);
    return { folder: info, messages: f.messages.filter((m) => wanted.has(m.uid)).map(cloneMeta) };
  }

  async storeFlags(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    origin = '',
  ): Promise<MessageMeta[]> {
    this.#fail('storeFlags');
    const f = this.#folder(user, folder);
    const wanted = new Set(uids);
    const clean = cleanFlags(flags);
    const changed: number[] = [];
    const out: MessageMeta[] = [];
    for (const meta of f.messages) {
      if (!wanted.has(meta.uid)) continue;
      const before = [...meta.flags].sort().join(' ');
      let next: string[];
      if (op === 'replace') next = clean;
      else if (op === 'add') next = cleanFlags([...meta.flags, ...clean]);
      else next = meta.flags.filter((x) => !clean.some((c) => c.toLowerCase() === x.toLowerCase()));
      if ([...next].sort().join(' ') !== before) {
        meta.flags = next;
        meta.modseq = ++f.highestModseq;
        changed.push(meta.uid);
      }
      out.push(cloneMeta(meta));
    }
    if (changed.length > 0) this.#notify(user, { folder: f.name, kind: 'flags', uids: changed, origin }, f);
    return out;
  }

  async expunge(user: string, folder: string, uids: number[], force = false, origin = ''): Promise<number[]> {
    this.#fail('expunge');
    const f = this.#folder(user, folder);
    const wanted = new Set(uids);
    const removed: number[] = [];
    f.messages = f.messages.filter((m) => {
      const goes = wanted.has(m.uid) && (force || m.flags.includes('\\Deleted'));
      if (goes) removed.push(m.uid);
      return !goes;
    });
    for (const uid of removed) f.recent.delete(uid);
    if (removed.length > 0) {
      f.highestModseq++;
      for (const uid of removed) f.expunged.push({ uid, modseq: f.highestModseq });
      this.#notify(user, { folder: f.name, kind: 'expunge', uids: removed, origin }, f);
    }
    return removed;
  }

  async append(
    user: string,
    folder: string,
    body: Buffer,
    flags: string[],
    internalDate?: number,
    origin = '',
  ): Promise<{ uid: number; uidValidity: number }> {
    this.#fail('append');
    const f = this.#folder(user, folder);
    this.#checkQuota(user, body.length);
    this.#checkMessages(user, 1);
    const blob = `sha256:${createHash('sha256').update(body).digest('hex')}`;
    this.blobs.set(blob, Buffer.from(body));
    const uid = f.uidNext++;
    f.messages.push({
      uid,
      flags: cleanFlags(flags),
      size: body.length,
      internalDate: internalDate ?? Date.now(),
      blob,
      modseq: ++f.highestModseq,
    });
    f.recent.add(uid);
    this.#notify(user, { folder: f.name, kind: 'append', uids: [uid], origin }, f);
    return { uid, uidValidity: f.uidValidity };
  }

  async copy(
    user: string,
    folder: string,
    uids: number[],
    target: string,
    move: boolean,
    origin = '',
  ): Promise<{ uidValidity: number; sourceUids: number[]; targetUids: number[] }> {
    this.#fail('copy');
    const source = this.#folder(user, folder);
    const dest = this.#folder(user, target);
    const wanted = new Set(uids);
    const picked = source.messages.filter((m) => wanted.has(m.uid));
    if (!move || source !== dest) {
      this.#checkQuota(user, move ? 0 : picked.reduce((n, m) => n + m.size, 0));
      this.#checkMessages(user, move ? 0 : picked.length);
    }
    const sourceUids: number[] = [];
    const targetUids: number[] = [];
    for (const meta of picked) {
      const uid = dest.uidNext++;
      dest.messages.push({ ...cloneMeta(meta), uid, modseq: ++dest.highestModseq });
      dest.recent.add(uid);
      sourceUids.push(meta.uid);
      targetUids.push(uid);
    }
    if (move && sourceUids.length > 0) {
      const moved = new Set(sourceUids);
      source.messages = source.messages.filter((m) => !moved.has(m.uid));
      source.highestModseq++;
      for (const uid of sourceUids) source.expunged.push({ uid, modseq: source.highestModseq });
    }
    if (targetUids.length > 0) {
      this.#notify(user, { folder: dest.name, kind: 'append', uids: targetUids, origin }, dest);
    }
    if (move && sourceUids.length > 0) {
      this.#notify(user, { folder: source.name, kind: 'expunge', uids: sourceUids, origin }, source);
    }
    return { uidValidity: dest.uidValidity, sourceUids, targetUids };
  }

  async createFolder(user: string, folder: string): Promise<void> {
    this.#fail('createFolder');
    const u = this.#user(user);
    const name = normalizeName(folder);
    if (name === '' || name.split(DELIMITER).some((p) => p === '')) {
      throw new MailboxError('INVALID', `Invalid folder name: ${folder}`);
    }
    if (u.folders.has(name)) throw new MailboxError('ALREADYEXISTS', `Folder exists: ${folder}`);
    u.folders.set(name, this.#newFolder(name, ''));
    this.#notify(user, { folder: name, kind: 'folder', uids: [], origin: '' });
  }

  async deleteFolder(user: string, folder: string): Promise<void> {
    this.#fail('deleteFolder');
    const u = this.#user(user);
    const f = this.#folder(user, folder);
    if (f.name === 'INBOX') throw new MailboxError('CANNOT', 'INBOX cannot be deleted');
    u.folders.delete(f.name);
    this.#notify(user, { folder: f.name, kind: 'folder', uids: [], origin: '' });
  }

  async renameFolder(user: string, folder: string, target: string): Promise<void> {
    this.#fail('renameFolder');
    const u = this.#user(user);
    const f = this.#folder(user, folder);
    const to = normalizeName(target);
    if (to === '' || to.split(DELIMITER).some((p) => p === '')) {
      throw new MailboxError('INVALID', `Invalid folder name: ${target}`);
    }
    if (u.folders.has(to)) throw new MailboxError('ALREADYEXISTS', `Folder exists: ${target}`);
    if (f.name === 'INBOX') {
      // RFC 3501 6.3.5: renaming INBOX moves its messages to a new folder and leaves INBOX empty.
      const moved = this.#newFolder(to, '');
      for (const meta of f.messages) moved.messages.push({ ...meta, uid: moved.uidNext++ });
      const uids = f.messages.map((m) => m.uid);
      f.messages = [];
      f.highestModseq++;
      for (const uid of uids) f.expunged.push({ uid, modseq: f.highestModseq });
      u.folders.set(to, moved);
      this.#notify(user, { folder: 'INBOX', kind: 'expunge', uids, origin: '' }, f);
      return;
    }
    const prefix = f.name + DELIMITER;
    for (const [name, sub] of [...u.folders]) {
      if (name !== f.name && !name.startsWith(prefix)) continue;
      u.folders.delete(name);
      const renamed = to + name.slice(f.name.length);
      // A renamed folder is a new incarnation for clients that cached its UIDs.
      sub.name = renamed;
      sub.uidValidity = ++this.#uidValidity;
      u.folders.set(renamed, sub);
      this.#notify(user, { folder: name, kind: 'folder', uids: [], origin: '' });
    }
  }

  async setSubscribed(user: string, folder: string, subscribed: boolean): Promise<void> {
    this.#fail('setSubscribed');
    this.#folder(user, folder).subscribed = subscribed;
  }

  async *openBody(blob: string): AsyncIterable<Uint8Array> {
    const body = this.blobs.get(blob);
    if (!body) throw new MailboxError('NONEXISTENT', `No such blob: ${blob}`);
    // Small chunks, so readers are exercised across chunk boundaries.
    for (let i = 0; i < body.length; i += 1024) yield body.subarray(i, i + 1024);
  }

  async readBody(blob: string): Promise<Buffer> {
    this.#fail('readBody');
    const body = this.blobs.get(blob);
    if (!body) throw new MailboxError('NONEXISTENT', `No such blob: ${blob}`);
    return Buffer.from(body);
  }

  async watch(user: string, onChange: (change: MailboxChange) => void): Promise<() => void> {
    this.#fail('watch');
    const u = this.#user(user);
    u.watchers.add(onChange);
    return () => {
      u.watchers.delete(onChange);
    };
  }

  async messageRange(
    user: string,
    folder: string,
    first: number,
    last: number,
    limit = 1000,
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    this.#fail('messageRange');
    const f = this.#folder(user, folder);
    const page = f.messages.filter((m) => m.uid >= first && m.uid <= last).slice(0, Math.min(limit, 1000));
    return { folder: this.#info(f), messages: page.map(cloneMeta) };
  }

  async changedSince(user: string, folder: string, modseq: number, uids?: number[]): Promise<MessageMeta[]> {
    this.#fail('changedSince');
    const f = this.#folder(user, folder);
    const wanted = uids && uids.length > 0 ? new Set(uids) : null;
    return f.messages.filter((m) => m.modseq > modseq && (!wanted || wanted.has(m.uid))).map(cloneMeta);
  }

  async expungedSince(user: string, folder: string, modseq: number): Promise<number[] | null> {
    this.#fail('expungedSince');
    const f = this.#folder(user, folder);
    return f.expunged
      .filter((e) => e.modseq > modseq)
      .map((e) => e.uid)
      .sort((a, b) => a - b);
  }

  async storeFlagsIf(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    unchangedSince: number,
    origin = '',
  ): Promise<{ messages: MessageMeta[]; failed: number[] }> {
    this.#fail('storeFlagsIf');
    const f = this.#folder(user, folder);
    const wanted = new Set(uids);
    const failed: number[] = [];
    const allowed: number[] = [];
    for (const m of f.messages) {
      if (!wanted.has(m.uid)) continue;
      if (m.modseq > unchangedSince) failed.push(m.uid);
      else allowed.push(m.uid);
    }
    const messages =
      allowed.length > 0 ? await this.storeFlags(user, folder, allowed, op, flags, origin) : [];
    return { messages, failed };
  }

  async quota(
    user: string,
  ): Promise<{ storageUsed: number; storageLimit: number; messagesUsed: number; messagesLimit: number }> {
    this.#fail('quota');
    let storageUsed = 0;
    let messagesUsed = 0;
    for (const f of this.#user(user).folders.values()) {
      for (const m of f.messages) {
        storageUsed += m.size;
        messagesUsed++;
      }
    }
    return {
      storageUsed,
      storageLimit: this.#options.quotaBytes ?? 0,
      messagesUsed,
      messagesLimit: this.#options.quotaMessages ?? 0,
    };
  }

  async appendStream(
    user: string,
    folder: string,
    body: AsyncIterable<Uint8Array>,
    flags: string[],
    internalDate?: number,
    origin = '',
  ): Promise<{ uid: number; uidValidity: number }> {
    const chunks: Buffer[] = [];
    for await (const c of body) chunks.push(Buffer.from(c));
    return this.append(user, folder, Buffer.concat(chunks), flags, internalDate, origin);
  }

  #fail(method: string): void {
    const error = this.#failures.get(method);
    if (error) {
      this.#failures.delete(method);
      throw error;
    }
  }

  #user(user: string): User {
    let u = this.#users.get(user);
    if (!u) {
      u = { folders: new Map(), watchers: new Set() };
      u.folders.set('INBOX', this.#newFolder('INBOX', ''));
      for (const [name, use] of Object.entries(this.#options.folders ?? DEFAULT_FOLDERS)) {
        u.folders.set(name, this.#newFolder(name, use));
      }
      this.#users.set(user, u);
    }
    return u;
  }

  #folder(user: string, folder: string): Folder {
    const f = this.#user(user).folders.get(normalizeName(folder));
    if (!f) throw new MailboxError('NONEXISTENT', `No such folder: ${folder}`);
    return f;
  }

  #newFolder(name: string, specialUse: string): Folder {
    return {
      name,
      uidValidity: ++this.#uidValidity,
      uidNext: 1,
      highestModseq: 1,
      specialUse,
      subscribed: true,
      messages: [],
      recent: new Set(),
      expunged: [],
    };
  }

  #info(f: Folder): FolderInfo {
    return {
      name: f.name,
      uidValidity: f.uidValidity,
      uidNext: f.uidNext,
      exists: f.messages.length,
      unseen: f.messages.filter((m) => !m.flags.includes('\\Seen')).length,
      recent: f.recent.size,
      highestModseq: f.highestModseq,
      specialUse: f.specialUse,
      subscribed: f.subscribed,
    };
  }

  #checkQuota(user: string, extra: number): void {
    const quota = this.#options.quotaBytes;
    if (quota === undefined) return;
    let used = 0;
    for (const f of this.#user(user).folders.values()) for (const m of f.messages) used += m.size;
    if (used + extra > quota) throw new MailboxError('OVERQUOTA', 'Quota exceeded');
  }

  #checkMessages(user: string, extra: number): void {
    const limit = this.#options.quotaMessages;
    if (limit === undefined || extra === 0) return;
    let used = 0;
    for (const f of this.#user(user).folders.values()) used += f.messages.length;
    if (used + extra > limit) throw new MailboxError('OVERQUOTA', 'Message quota exceeded');
  }

  #notify(user: string, change: Omit<MailboxChange, 'modseq'>, folder?: Folder): void {
    const full: MailboxChange = { ...change, uids: [...change.uids], modseq: folder?.highestModseq ?? 0 };
    const watchers = [...this.#user(user).watchers];
    // Changes arrive asynchronously, as they would from NATS.
    setImmediate(() => {
      for (const watcher of watchers) watcher(full);
    });
  }
}

/** INBOX is case-insensitive (RFC 3501 5.1); other names are kept as given. */
function normalizeName(name: string): string {
  const trimmed = name.endsWith(DELIMITER) ? name.slice(0, -1) : name;
  return trimmed.toUpperCase() === 'INBOX' ? 'INBOX' : trimmed;
}

/** An Authenticator over a fixed table of login → password; the canonical user is the login lowercased. */
export class MemoryAuthenticator implements Authenticator {
  readonly #users: Map<string, string>;

  constructor(users: Record<string, string>) {
    this.#users = new Map(Object.entries(users).map(([k, v]) => [k.toLowerCase(), v]));
  }

  async authenticate(login: string, password: string): Promise<string | null> {
    const key = login.toLowerCase();
    return this.#users.get(key) === password ? key : null;
  }
}
