/**
 * The mailbox actor: every operation on a user's mailbox is one atomic Lua script on that user's
 * keys in Redis. Any mailbox-store replica can run any operation; after each change a
 * MailboxChange is published on mbox.changes.<user> for the sessions of that user on every node.
 */
import type { Redis } from 'ioredis';
import type { BlobStore } from '../core/blobs.ts';
import {
  MailboxError,
  type FlagOp,
  type FolderInfo,
  type MailboxChange,
  type MailboxClient,
  type MessageMeta,
} from '../core/mailbox-api.ts';
import { canonicalAddress } from '../core/address.ts';
import * as S from './scripts.ts';

type Reply = (string | number | Reply)[];

export type ChangePublisher = (user: string, change: MailboxChange) => void;

const SCRIPTS = {
  mboxList: S.LIST_FOLDERS,
  mboxStatus: S.STATUS,
  mboxMessages: S.MESSAGES,
  mboxAppend: S.APPEND,
  mboxStore: S.STORE_FLAGS,
  mboxExpunge: S.EXPUNGE,
  mboxCopy: S.COPY,
  mboxCreate: S.CREATE_FOLDER,
  mboxDelete: S.DELETE_FOLDER,
  mboxRename: S.RENAME_FOLDER,
  mboxSubscribe: S.SUBSCRIBE,
} as const;

type ScriptName = keyof typeof SCRIPTS;

/** Folder names: no control characters, no empty hierarchy levels, bounded length. */
function checkFolderName(name: string): string {
  if (name.toUpperCase() === 'INBOX') return 'INBOX';
  if (name.length === 0 || name.length > 512 || /[\x00-\x1f\x7f*%]/.test(name) || /(^|\/)(\/|$)/.test(name)) {
    throw new MailboxError('CANNOT', `invalid folder name ${JSON.stringify(name)}`);
  }
  return name;
}

function toFolder(r: Reply): FolderInfo {
  const [name, uidValidity, uidNext, exists, unseen, modseq, special, subscribed] = r.map((v) =>
    String(v ?? ''),
  );
  return {
    name: name ?? '',
    uidValidity: Number(uidValidity),
    uidNext: Number(uidNext),
    exists: Number(exists),
    unseen: Number(unseen),
    recent: 0,
    highestModseq: Number(modseq),
    specialUse: special ?? '',
    subscribed: subscribed === '1',
  };
}

function splitFlags(s: string): string[] {
  return s.split(' ').filter(Boolean);
}

function sanitizeFlags(flags: string[]): string[] {
  // \Recent is session state, never stored (RFC 3501 2.3.2); flags are atoms without spaces.
  return flags.filter(
    (f) => f.length > 0 && f.length <= 128 && !/[\s()\x00-\x1f]/.test(f) && f.toLowerCase() !== '\\recent',
  );
}

export class MailboxStore implements MailboxClient {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #blobs: BlobStore;
  readonly #publish: ChangePublisher;

  constructor(redis: Redis, prefix: string, blobs: BlobStore, publish: ChangePublisher) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#blobs = blobs;
    this.#publish = publish;
    for (const [name, lua] of Object.entries(SCRIPTS)) {
      if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 1, lua });
    }
  }

  #key(user: string): string {
    return `${this.#prefix}{u:${canonicalAddress(user)}}`;
  }

  async #run(script: ScriptName, user: string, ...args: (string | number)[]): Promise<Reply> {
    const fn = (this.#redis as unknown as Record<string, (...a: unknown[]) => Promise<Reply>>)[script];
    if (!fn) throw new Error(`script ${script} not defined`);
    try {
      return await fn.call(this.#redis, this.#key(user), Math.floor(Date.now() / 1000), ...args);
    } catch (err) {
      const m = /^(NONEXISTENT|ALREADYEXISTS|CANNOT|TRYCREATE|OVERQUOTA) (.*)$/.exec((err as Error).message);
      if (m) throw new MailboxError(m[1] as string, m[2] as string);
      throw err;
    }
  }

  #changed(user: string, change: MailboxChange): void {
    this.#publish(canonicalAddress(user), change);
  }

  async listFolders(user: string): Promise<FolderInfo[]> {
    const r = await this.#run('mboxList', user);
    return r
      .map((f) => toFolder(f as Reply))
      .sort((a, b) => (a.name === 'INBOX' ? -1 : b.name === 'INBOX' ? 1 : a.name.localeCompare(b.name)));
  }

  async status(user: string, folder: string): Promise<FolderInfo> {
    return toFolder(await this.#run('mboxStatus', user, checkFolderName(folder)));
  }

  async messages(
    user: string,
    folder: string,
    uids: number[] = [],
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    const [f, ...rows] = await this.#run('mboxMessages', user, checkFolderName(folder), ...uids);
    return {
      folder: toFolder(f as Reply),
      messages: rows.map((row) => {
        const [uid, flags, size, idate, blob, modseq] = (row as Reply).map(String);
        return {
          uid: Number(uid),
          flags: splitFlags(flags ?? ''),
          size: Number(size),
          internalDate: Number(idate),
          blob: blob ?? '',
          modseq: Number(modseq),
        };
      }),
    };
  }

  /** Appends an already stored body (the delivery path); idempotent per key. */
  async appendBlob(
    user: string,
    folder: string,
    blob: { id: string; size: number },
    flags: string[],
    internalDate: number,
    idempotencyKey: string,
    origin = '',
  ): Promise<{ uid: number; uidValidity: number; created: boolean }> {
    const [uid, uidValidity, created] = (await this.#run(
      'mboxAppend',
      user,
      checkFolderName(folder),
      idempotencyKey,
      blob.id,
      blob.size,
      sanitizeFlags(flags).join(' '),
      internalDate,
    )) as number[];
    const res = { uid: Number(uid), uidValidity: Number(uidValidity), created: created === 1 };
    if (res.created) this.#changed(user, { folder, kind: 'append', uids: [res.uid], modseq: 0, origin });
    return res;
  }

  async append(
    user: string,
    folder: string,
    body: Buffer,
    flags: string[],
    internalDate = Date.now(),
    origin = '',
  ): Promise<{ uid: number; uidValidity: number }> {
    const blob = await this.#blobs.put([body]);
    const { uid, uidValidity } = await this.appendBlob(user, folder, blob, flags, internalDate, '', origin);
    return { uid, uidValidity };
  }

  async storeFlags(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    origin = '',
  ): Promise<MessageMeta[]> {
    if (uids.length === 0) return [];
    const [modseq, rows] = await this.#run(
      'mboxStore',
      user,
      checkFolderName(folder),
      op,
      sanitizeFlags(flags).join(' '),
      ...uids,
    );
    const out = (rows as Reply).map((row) => {
      const [uid, f, m, size, idate, blob] = (row as Reply).map(String);
      return {
        uid: Number(uid),
        flags: splitFlags(f ?? ''),
        size: Number(size),
        internalDate: Number(idate),
        blob: blob ?? '',
        modseq: Number(m),
      };
    });
    if (out.length > 0) {
      this.#changed(user, {
        folder,
        kind: 'flags',
        uids: out.map((m) => m.uid),
        modseq: Number(modseq),
        origin,
      });
    }
    return out;
  }

  async expunge(user: string, folder: string, uids: number[], force = false, origin = ''): Promise<number[]> {
    if (uids.length === 0) return [];
    const [modseq, gone] = await this.#run(
      'mboxExpunge',
      user,
      checkFolderName(folder),
      force ? '1' : '0',
      ...uids,
    );
    const expunged = (gone as number[]).map(Number);
    if (expunged.length > 0)
      this.#changed(user, { folder, kind: 'expunge', uids: expunged, modseq: Number(modseq), origin });
    return expunged;
  }

  async copy(
    user: string,
    folder: string,
    uids: number[],
    target: string,
    move: boolean,
    origin = '',
  ): Promise<{ uidValidity: number; sourceUids: number[]; targetUids: number[] }> {
    const [uv, src, dst] = await this.#run(
      'mboxCopy',
      user,
      checkFolderName(folder),
      checkFolderName(target),
      move ? '1' : '0',
      ...uids,
    );
    const res = {
      uidValidity: Number(uv),
      sourceUids: (src as number[]).map(Number),
      targetUids: (dst as number[]).map(Number),
    };
    if (res.targetUids.length > 0) {
      this.#changed(user, { folder: target, kind: 'append', uids: res.targetUids, modseq: 0, origin });
      if (move) this.#changed(user, { folder, kind: 'expunge', uids: res.sourceUids, modseq: 0, origin });
    }
    return res;
  }

  async createFolder(user: string, folder: string): Promise<void> {
    const name = checkFolderName(folder.replace(/\/+$/, ''));
    // CREATE makes the missing parents too (RFC 3501 6.3.3).
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) {
      await this.#run('mboxCreate', user, parts.slice(0, i).join('/')).catch((err: unknown) => {
        if (!(err instanceof MailboxError && err.code === 'ALREADYEXISTS')) throw err;
      });
    }
    await this.#run('mboxCreate', user, name);
    this.#changed(user, { folder: name, kind: 'folder', uids: [], modseq: 0, origin: '' });
  }

  async deleteFolder(user: string, folder: string): Promise<void> {
    await this.#run('mboxDelete', user, checkFolderName(folder));
    this.#changed(user, { folder, kind: 'folder', uids: [], modseq: 0, origin: '' });
  }

  async renameFolder(user: string, folder: string, target: string): Promise<void> {
    await this.#run('mboxRename', user, checkFolderName(folder), checkFolderName(target));
    this.#changed(user, { folder, kind: 'folder', uids: [], modseq: 0, origin: '' });
  }

  async setSubscribed(user: string, folder: string, subscribed: boolean): Promise<void> {
    await this.#run('mboxSubscribe', user, checkFolderName(folder), subscribed ? '1' : '0');
  }

  openBody(blob: string): AsyncIterable<Uint8Array> {
    return this.#blobs.open(blob);
  }

  readBody(blob: string): Promise<Buffer> {
    return this.#blobs.read(blob);
  }

  watch(): Promise<() => void> {
    throw new Error('watch is served by the NATS client, not the store');
  }
}
