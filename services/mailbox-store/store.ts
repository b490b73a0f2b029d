/**
 * The mailbox actor: every operation on a user's mailbox is one atomic Lua script on that user's
 * keys in Redis. Any mailbox-store replica can run any operation; after each change a
 * MailboxChange is published on mbox.changes.<user> for the sessions of that user on every node.
 *
 * Large requests are cut into batches of BATCH UIDs (one script each), so no script blocks Redis
 * for long and no reply grows without bound; each batch is atomic, a request as a whole is not.
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
  type MessagesOptions,
  type SummaryPage,
  parseSummaries as parseSummaryColumns,
  sortSummaries,
} from '../core/mailbox-api.ts';
import { canonicalAddress } from '../core/address.ts';
import { checkStructure, structureOf } from '../core/mime-structure.ts';
import { storeStreamedBody } from './stream-append.ts';
import * as S from './scripts.ts';

type Reply = (string | Buffer | number | null | Reply)[];

export type ChangePublisher = (user: string, change: MailboxChange) => void;

/** A user's quota limits; 0 means none. */
export interface QuotaLimits {
  bytes: number;
  messages: number;
}

export interface MailboxStoreOptions {
  /** The user's limits (RFC 9208), e.g. from the directory; none when omitted. */
  limits?: (user: string) => Promise<QuotaLimits>;
  /** Expunge journal entries kept per folder (the trimming policy in scripts.ts). */
  journalMax?: number;
  /** Told of each user whose blob references changed (the blob collector's work list). */
  blobsChanged?: (user: string) => Promise<void>;
  /** Where sessions hear of changes (the change subjects on NATS): for a store the front ends use directly. */
  watch?: MailboxClient['watch'];
}

/** UIDs per script call and per page: bounds the time a script holds Redis and the size of a reply. */
export const BATCH = 1000;
/** Folders up to this many messages are read whole, in one call, by summaries() of their full range. */
const WHOLE_MAX = 100_000;
/** Messages per page and per script call for summaries (about 40 octets each; one HMGET of them all, and Lua unpacks at most ~8,000 arguments). */
export const SUMMARY_BATCH = 5000;
/** Octets of summaries per page: a page stays well under NATS max_payload (1 MiB by default). */
const SUMMARY_PAGE_BYTES = 256 * 1024;
/** Default number of expunge journal entries kept per folder. */
export const JOURNAL_MAX = 10_000;
/** How long quota limits read from the directory are reused. */
const LIMITS_TTL_MS = 2_000;

const SCRIPTS = {
  mboxList: S.LIST_FOLDERS,
  mboxStatus: S.STATUS,
  mboxMessages: S.MESSAGES,
  mboxRange: S.MESSAGES_RANGE,
  mboxSummaries: S.SUMMARIES,
  mboxSummariesAll: S.SUMMARIES_ALL,
  mboxChanged: S.CHANGED,
  mboxExpunged: S.EXPUNGED,
  mboxUsage: S.USAGE,
  mboxAppend: S.APPEND,
  mboxStore: S.STORE_FLAGS,
  mboxExpunge: S.EXPUNGE,
  mboxCopy: S.COPY,
  mboxCreate: S.CREATE_FOLDER,
  mboxDelete: S.DELETE_FOLDER,
  mboxRename: S.RENAME_FOLDER,
  mboxSubscribe: S.SUBSCRIBE,
  mboxBlobDirty: S.BLOB_DIRTY,
  mboxBlobClean: S.BLOB_CLEAN,
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

/** A reply value as text (scripts run in Buffer mode return strings as Buffers). */
function text(v: Reply[number] | undefined): string {
  return Buffer.isBuffer(v) ? v.toString('utf8') : String(v ?? '');
}

function toFolder(r: Reply): FolderInfo {
  const [name, uidValidity, uidNext, exists, unseen, modseq, special, subscribed] = r.map(text);
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

/** A row {uid, flags, size, idate, blob, modseq[, structure]} of the scripts. */
function toMeta(row: Reply): MessageMeta {
  const [uid, flags, size, idate, blob, modseq] = row.slice(0, 6).map(text);
  const meta: MessageMeta = {
    uid: Number(uid),
    flags: splitFlags(flags ?? ''),
    size: Number(size),
    internalDate: Number(idate),
    blob: blob ?? '',
    modseq: Number(modseq),
  };
  const st = row[6];
  if (Buffer.isBuffer(st) && st.length > 0) meta.structure = st;
  return meta;
}

const LF = Buffer.from('\n');

/** The UID of the last row of packed summaries (0 if none). */
export function lastUid(packed: Uint8Array): number {
  let start = packed.length;
  while (start > 0 && packed[start - 1] !== 10) start--;
  let v = 0;
  for (let i = start; i < packed.length; i++) {
    const c = packed[i] as number;
    if (c < 48 || c > 57) break;
    v = v * 10 + (c - 48);
  }
  return v;
}

/** Rows `uid modseq size idate flags` joined by LF (the SUMMARIES script); identical flags share one array. */
export function parseSummaries(packed: string): MessageMeta[] {
  const out: MessageMeta[] = [];
  if (packed.length === 0) return out;
  const shared = new Map<string, string[]>();
  for (const row of packed.split('\n')) {
    const a = row.indexOf(' ');
    const b = row.indexOf(' ', a + 1);
    const c = row.indexOf(' ', b + 1);
    const d = row.indexOf(' ', c + 1);
    if (a < 0 || b < 0 || c < 0) continue;
    const f = d < 0 ? '' : row.slice(d + 1);
    let flags = shared.get(f);
    if (!flags) {
      flags = splitFlags(f);
      shared.set(f, flags);
    }
    out.push({
      uid: Number(row.slice(0, a)),
      flags,
      size: Number(row.slice(b + 1, c)),
      internalDate: Number(d < 0 ? row.slice(c + 1) : row.slice(c + 1, d)),
      blob: '',
      modseq: Number(row.slice(a + 1, b)),
    });
  }
  return out;
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

/** UIDs as valid, distinct, ascending integers (nz-number, RFC 3501 9), cut into batches. */
function batches(uids: number[], size = BATCH): number[][] {
  const clean = [...new Set(uids.filter((u) => Number.isInteger(u) && u > 0 && u <= 0xffffffff))].sort(
    (a, b) => a - b,
  );
  const out: number[][] = [];
  for (let i = 0; i < clean.length; i += size) out.push(clean.slice(i, i + size));
  return out;
}

export class MailboxStore implements MailboxClient {
  readonly #redis: Redis;
  readonly #prefix: string;
  readonly #blobs: BlobStore;
  readonly #publish: ChangePublisher;
  readonly #options: MailboxStoreOptions;
  readonly #journalMax: number;
  readonly #limits = new Map<string, { at: number; limits: QuotaLimits }>();

  constructor(
    redis: Redis,
    prefix: string,
    blobs: BlobStore,
    publish: ChangePublisher,
    options: MailboxStoreOptions = {},
  ) {
    this.#redis = redis;
    this.#prefix = prefix;
    this.#blobs = blobs;
    this.#publish = publish;
    this.#options = options;
    this.#journalMax = options.journalMax ?? JOURNAL_MAX;
    for (const [name, lua] of Object.entries(SCRIPTS)) {
      if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 1, lua });
    }
  }

  #key(user: string): string {
    // A mailbox is named by a canonical address (RFC 5321 4.5.3.1.3: at most 254 octets, here 320).
    if (!user || user.length > 320 || /[\x00-\x20{}]/.test(user)) {
      throw new MailboxError('INVALID', `invalid user ${JSON.stringify(user.slice(0, 64))}`);
    }
    return `${this.#prefix}{u:${canonicalAddress(user)}}`;
  }

  async #run(script: ScriptName, user: string, ...args: (string | number | Buffer)[]): Promise<Reply> {
    return this.#call(script, user, args);
  }

  /** The script in Buffer mode: its strings come back as bytes (structures are binary). */
  async #runBytes(script: ScriptName, user: string, ...args: (string | number | Buffer)[]): Promise<Reply> {
    return this.#call(`${script}Buffer`, user, args);
  }

  async #call(script: string, user: string, args: (string | number | Buffer)[]): Promise<Reply> {
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

  async #refsChanged(user: string): Promise<void> {
    await this.#options.blobsChanged?.(canonicalAddress(user));
  }

  async #limitsOf(user: string): Promise<QuotaLimits> {
    if (!this.#options.limits) return { bytes: 0, messages: 0 };
    const key = canonicalAddress(user);
    const hit = this.#limits.get(key);
    if (hit && Date.now() - hit.at < LIMITS_TTL_MS) return hit.limits;
    const limits = await this.#options.limits(key);
    if (this.#limits.size > 10_000) this.#limits.clear();
    this.#limits.set(key, { at: Date.now(), limits });
    return limits;
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
    options: MessagesOptions = {},
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    const name = checkFolderName(folder);
    const messages: MessageMeta[] = [];
    if (uids.length > 0 && options.summary && !options.structure) {
      let info: FolderInfo | undefined;
      for (const batch of batches(uids, SUMMARY_BATCH)) {
        const [f, packed] = await this.#run('mboxSummaries', user, name, 0, 0, 0, 0, ...batch);
        info = toFolder(f as Reply);
        for (const m of parseSummaries(text(packed as Reply[number]))) messages.push(m);
      }
      return { folder: info ?? (await this.status(user, name)), messages };
    }
    if (uids.length > 0) {
      let info: FolderInfo | undefined;
      for (const batch of batches(uids)) {
        const [f, ...rows] = options.structure
          ? await this.#runBytes('mboxMessages', user, name, '1', ...batch)
          : await this.#run('mboxMessages', user, name, '0', ...batch);
        info = toFolder(f as Reply);
        for (const row of rows) messages.push(toMeta(row as Reply));
      }
      return { folder: info ?? (await this.status(user, name)), messages };
    }
    let info: FolderInfo | undefined;
    for await (const page of this.pages(user, name, 1, 0xffffffff, options)) {
      info = page.folder;
      for (const m of page.messages) messages.push(m);
    }
    return { folder: info ?? (await this.status(user, name)), messages };
  }

  /**
   * Packed summaries (rows `uid modseq size idate flags` joined by LF, as the SUMMARIES script
   * returns them, never decoded here): of `uids`, or one page of the UID range first..last of at
   * most `limit` (capped at SUMMARY_BATCH) messages and about SUMMARY_PAGE_BYTES octets.
   */
  async packedSummaries(
    user: string,
    folder: string,
    range: { uids: readonly number[] } | { first: number; last: number; limit?: number },
  ): Promise<{ folder: FolderInfo; packed: Buffer }> {
    const name = checkFolderName(folder);
    if ('uids' in range) {
      let info: FolderInfo | undefined;
      const parts: Buffer[] = [];
      for (const batch of batches([...range.uids], SUMMARY_BATCH)) {
        const [f, packed] = await this.#runBytes('mboxSummaries', user, name, 0, 0, 0, 0, ...batch);
        info = toFolder(f as Reply);
        const bytes = Buffer.isBuffer(packed) ? packed : Buffer.from(text(packed as Reply[number]));
        if (bytes.length === 0) continue;
        if (parts.length > 0) parts.push(LF);
        parts.push(bytes);
      }
      return { folder: info ?? (await this.status(user, name)), packed: Buffer.concat(parts) };
    }
    const [f, packed] = await this.#runBytes(
      'mboxSummaries',
      user,
      name,
      Math.max(1, Math.floor(range.first)),
      Math.min(0xffffffff, Math.floor(range.last)),
      Math.max(1, Math.min(SUMMARY_BATCH, Math.floor(range.limit ?? SUMMARY_BATCH) || SUMMARY_BATCH)),
      SUMMARY_PAGE_BYTES,
    );
    const bytes = Buffer.isBuffer(packed) ? packed : Buffer.from(text(packed as Reply[number]));
    return { folder: toFolder(f as Reply), packed: bytes };
  }

  /** MailboxClient.summaries: every page of a range, or the given UIDs, in columns. */
  async summaries(
    user: string,
    folder: string,
    range: { uids: readonly number[] } | { first: number; last: number },
  ): Promise<SummaryPage> {
    if ('uids' in range) {
      const r = await this.packedSummaries(user, folder, range);
      // Batches read at different times: no lower bound claimed.
      return { folder: r.folder, summaries: parseSummaryColumns(r.packed), modseq: 0 };
    }
    if (range.first <= 1 && range.last >= 0xffffffff) {
      // A whole folder (SELECT): one atomic read when it is not too big.
      const [f, packed] = await this.#runBytes('mboxSummariesAll', user, checkFolderName(folder), WHOLE_MAX);
      const info = toFolder(f as Reply);
      if (packed !== null && packed !== undefined) {
        const bytes = Buffer.isBuffer(packed) ? packed : Buffer.from(text(packed as Reply[number]));
        return {
          folder: info,
          summaries: sortSummaries(parseSummaryColumns(bytes)),
          modseq: info.highestModseq,
        };
      }
    }
    const parts: Buffer[] = [];
    let info: FolderInfo | undefined;
    let modseq = -1;
    for (let first = range.first; first <= range.last;) {
      const page = await this.packedSummaries(user, folder, { first, last: range.last });
      info = page.folder;
      if (modseq < 0) modseq = info.highestModseq;
      if (page.packed.length === 0) break;
      if (parts.length > 0) parts.push(LF);
      parts.push(page.packed);
      const tail = lastUid(page.packed);
      if (tail === 0 || tail + 1 >= info.uidNext) break;
      first = tail + 1;
    }
    const folderInfo = info ?? (await this.status(user, folder));
    return {
      folder: folderInfo,
      summaries: parseSummaryColumns(Buffer.concat(parts)),
      modseq: modseq < 0 ? folderInfo.highestModseq : modseq,
    };
  }

  /** One page of a UID range, ascending, at most `limit` (capped at BATCH) messages. */
  async messageRange(
    user: string,
    folder: string,
    first: number,
    last: number,
    limit = BATCH,
    options: MessagesOptions = {},
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    if (options.summary && !options.structure) {
      const [f, packed] = await this.#run(
        'mboxSummaries',
        user,
        checkFolderName(folder),
        Math.max(1, Math.floor(first)),
        Math.min(0xffffffff, Math.floor(last)),
        Math.max(1, Math.min(SUMMARY_BATCH, Math.floor(limit) || SUMMARY_BATCH)),
        SUMMARY_PAGE_BYTES,
      );
      return { folder: toFolder(f as Reply), messages: parseSummaries(text(packed as Reply[number])) };
    }
    const [f, ...rows] = await (options.structure ? this.#runBytes : this.#run).call(
      this,
      'mboxRange',
      user,
      checkFolderName(folder),
      Math.max(1, Math.floor(first)),
      Math.min(0xffffffff, Math.floor(last)),
      Math.max(1, Math.min(BATCH, Math.floor(limit) || BATCH)),
      options.structure ? '1' : '0',
    );
    return { folder: toFolder(f as Reply), messages: rows.map((r) => toMeta(r as Reply)) };
  }

  /** Walks a UID range page by page: memory stays bounded by one page however big the folder. */
  async *pages(
    user: string,
    folder: string,
    first: number,
    last: number,
    options: MessagesOptions = {},
  ): AsyncIterable<{ folder: FolderInfo; messages: MessageMeta[] }> {
    // Summary pages are also cut by size: only an empty page ends them.
    const summary = !!options.summary && !options.structure;
    const size = summary ? SUMMARY_BATCH : BATCH;
    let from = first;
    for (;;) {
      const page = await this.messageRange(user, folder, from, last, size, options);
      yield page;
      const tail = page.messages.at(-1);
      if ((!summary && page.messages.length < BATCH) || !tail || tail.uid >= last) return;
      from = tail.uid + 1;
    }
  }

  async changedSince(
    user: string,
    folder: string,
    modseq: number,
    uids: number[] = [],
  ): Promise<MessageMeta[]> {
    const name = checkFolderName(folder);
    const out: MessageMeta[] = [];
    if (uids.length > 0) {
      for (const batch of batches(uids)) {
        for (const row of await this.#run('mboxChanged', user, name, modseq, BATCH, ...batch))
          out.push(toMeta(row as Reply));
      }
    } else {
      let since = modseq;
      for (;;) {
        const rows = (await this.#run('mboxChanged', user, name, since, BATCH)).map((r) =>
          toMeta(r as Reply),
        );
        out.push(...rows);
        const tail = rows.at(-1);
        if (rows.length < BATCH || !tail) break;
        since = tail.modseq;
      }
    }
    return out.sort((a, b) => a.uid - b.uid);
  }

  /** One page of CHANGEDSINCE in MODSEQ order (continue above the last MODSEQ while pages come back full). */
  async changedPage(user: string, folder: string, modseq: number, limit = BATCH): Promise<MessageMeta[]> {
    const n = Math.max(1, Math.min(BATCH, Math.floor(limit) || BATCH));
    return (await this.#run('mboxChanged', user, checkFolderName(folder), modseq, n)).map((r) =>
      toMeta(r as Reply),
    );
  }

  async expungedSince(user: string, folder: string, modseq: number): Promise<number[] | null> {
    const [complete, ...uids] = await this.#run('mboxExpunged', user, checkFolderName(folder), modseq);
    return complete === 1 ? (uids as number[]).map(Number) : null;
  }

  async quota(
    user: string,
  ): Promise<{ storageUsed: number; storageLimit: number; messagesUsed: number; messagesLimit: number }> {
    const [bytes, msgs] = await this.#run('mboxUsage', user);
    const limits = await this.#limitsOf(user);
    return {
      storageUsed: Number(bytes),
      storageLimit: limits.bytes,
      messagesUsed: Number(msgs),
      messagesLimit: limits.messages,
    };
  }

  /**
   * Appends an already stored body (the delivery path); idempotent per key. `structure` is the
   * body's MIME structure computed while it was stored (services/core/mime-structure.ts); without
   * one, IMAP parses the body when it needs the structure.
   */
  async appendBlob(
    user: string,
    folder: string,
    blob: { id: string; size: number },
    flags: string[],
    internalDate: number,
    idempotencyKey: string,
    origin = '',
    structure: Uint8Array | null = null,
  ): Promise<{ uid: number; uidValidity: number; created: boolean }> {
    if (!/^sha256:[0-9a-f]{64}$/.test(blob.id)) throw new MailboxError('INVALID', 'invalid blob reference');
    const limits = await this.#limitsOf(user);
    const [uid, uidValidity, created, modseq] = (await this.#run(
      'mboxAppend',
      user,
      checkFolderName(folder),
      idempotencyKey,
      blob.id,
      Math.max(0, Math.floor(blob.size)),
      sanitizeFlags(flags).join(' '),
      Math.floor(internalDate),
      limits.bytes,
      limits.messages,
      checkStructure(structure) ?? '',
    )) as number[];
    const res = { uid: Number(uid), uidValidity: Number(uidValidity), created: created === 1 };
    if (res.created) {
      // Sessions hear of it at once; the collector's mark is not on their path.
      this.#changed(user, { folder, kind: 'append', uids: [res.uid], modseq: Number(modseq), origin });
      await this.#refsChanged(user);
    }
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
    return this.#appendStored(user, folder, blob, flags, internalDate, origin, structureOf(body));
  }

  async appendStream(
    user: string,
    folder: string,
    body: AsyncIterable<Uint8Array>,
    flags: string[],
    internalDate = Date.now(),
    origin = '',
  ): Promise<{ uid: number; uidValidity: number }> {
    const { blob, structure } = await storeStreamedBody(this, this.#blobs, user, folder, body);
    return this.#appendStored(user, folder, blob, flags, internalDate, origin, structure);
  }

  /** appendBlob for a body just stored (no idempotency key), answering its UID and UIDVALIDITY. */
  async #appendStored(
    user: string,
    folder: string,
    blob: { id: string; size: number },
    flags: string[],
    internalDate: number,
    origin: string,
    structure: Buffer | null,
  ): Promise<{ uid: number; uidValidity: number }> {
    const { uid, uidValidity } = await this.appendBlob(
      user,
      folder,
      blob,
      flags,
      internalDate,
      '',
      origin,
      structure,
    );
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
    return (await this.#storeFlags(user, folder, uids, op, flags, -1, origin)).messages;
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
    return this.#storeFlags(user, folder, uids, op, flags, Math.max(0, unchangedSince), origin);
  }

  async #storeFlags(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    since: number,
    origin: string,
  ): Promise<{ messages: MessageMeta[]; failed: number[] }> {
    if (!['add', 'remove', 'replace'].includes(op))
      throw new MailboxError('INVALID', `invalid flag op ${op}`);
    const name = checkFolderName(folder);
    const messages: MessageMeta[] = [];
    const failed: number[] = [];
    for (const batch of batches(uids)) {
      const [modseq, rows, bad] = await this.#run(
        'mboxStore',
        user,
        name,
        op,
        sanitizeFlags(flags).join(' '),
        since,
        ...batch,
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
      messages.push(...out);
      failed.push(...(bad as number[]).map(Number));
      if (out.length > 0) {
        this.#changed(user, {
          folder: name,
          kind: 'flags',
          uids: out.map((m) => m.uid),
          modseq: Number(modseq),
          origin,
        });
      }
    }
    return { messages, failed };
  }

  async expunge(user: string, folder: string, uids: number[], force = false, origin = ''): Promise<number[]> {
    const name = checkFolderName(folder);
    const expunged: number[] = [];
    for (const batch of batches(uids)) {
      const [modseq, gone] = await this.#run(
        'mboxExpunge',
        user,
        name,
        force ? '1' : '0',
        this.#journalMax,
        ...batch,
      );
      const removed = (gone as number[]).map(Number);
      expunged.push(...removed);
      if (removed.length > 0) {
        this.#changed(user, { folder: name, kind: 'expunge', uids: removed, modseq: Number(modseq), origin });
        await this.#refsChanged(user);
      }
    }
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
    const name = checkFolderName(folder);
    const to = checkFolderName(target);
    const limits = await this.#limitsOf(user);
    const res = { uidValidity: 0, sourceUids: [] as number[], targetUids: [] as number[] };
    const parts = batches(uids);
    if (parts.length === 0) {
      // Nothing to copy: still a missing target is TRYCREATE (RFC 3501 6.4.7).
      res.uidValidity = (
        await this.status(user, to).catch((err: unknown) => {
          if (err instanceof MailboxError && err.code === 'NONEXISTENT')
            throw new MailboxError('TRYCREATE', 'no such target folder');
          throw err;
        })
      ).uidValidity;
    }
    for (const batch of parts) {
      const [uv, src, dst, tmod, smod] = await this.#run(
        'mboxCopy',
        user,
        name,
        to,
        move ? '1' : '0',
        this.#journalMax,
        limits.bytes,
        limits.messages,
        ...batch,
      );
      res.uidValidity = Number(uv);
      const s = (src as number[]).map(Number);
      const d = (dst as number[]).map(Number);
      res.sourceUids.push(...s);
      res.targetUids.push(...d);
      if (d.length > 0) {
        await this.#refsChanged(user);
        this.#changed(user, { folder: to, kind: 'append', uids: d, modseq: Number(tmod), origin });
        if (move)
          this.#changed(user, { folder: name, kind: 'expunge', uids: s, modseq: Number(smod), origin });
      }
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
    const removed = await this.#run('mboxDelete', user, checkFolderName(folder));
    if (Number(removed) > 0) await this.#refsChanged(user);
    this.#changed(user, { folder, kind: 'folder', uids: [], modseq: 0, origin: '' });
  }

  async renameFolder(user: string, folder: string, target: string): Promise<void> {
    await this.#run('mboxRename', user, checkFolderName(folder), checkFolderName(target));
    this.#changed(user, { folder, kind: 'folder', uids: [], modseq: 0, origin: '' });
  }

  async setSubscribed(user: string, folder: string, subscribed: boolean): Promise<void> {
    await this.#run('mboxSubscribe', user, checkFolderName(folder), subscribed ? '1' : '0');
  }

  /** Blobs whose holding by this user changed since last copied to the blob records (blob-refs.ts). */
  async dirtyBlobs(user: string, max: number): Promise<{ blob: string; version: string; held: boolean }[]> {
    const rows = await this.#run('mboxBlobDirty', user, max);
    return rows.map((r) => {
      const [blob, version, held] = (r as Reply).map(String);
      return { blob: blob ?? '', version: version ?? '', held: held === '1' };
    });
  }

  /** Clears a dirty mark unless it changed meanwhile; returns the number of marks left. */
  async cleanBlob(user: string, blob: string, version: string): Promise<number> {
    return Number(await this.#run('mboxBlobClean', user, blob, version));
  }

  openBody(blob: string): AsyncIterable<Uint8Array> {
    return this.#blobs.open(blob);
  }

  readBody(blob: string): Promise<Buffer> {
    return this.#blobs.read(blob);
  }

  watch(user: string, onChange: (change: MailboxChange) => void): Promise<() => void> {
    if (!this.#options.watch) throw new Error('watch is served by the NATS client, not the store');
    return this.#options.watch(user, onChange);
  }
}
