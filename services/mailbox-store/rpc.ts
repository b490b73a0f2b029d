/**
 * Mailbox RPC over core NATS request/reply (mbox.rpc.<op>), protobuf on the wire.
 * The server side runs in every mailbox-store replica (queue group); the client implements
 * MailboxClient for imap and pop3. Bodies never travel here: they go through the blob store.
 */
import type { Subscription } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { pb, encode, decode } from '../core/codec.ts';
import type { BlobStore } from '../core/blobs.ts';
import { request, notify, SUBJECTS, type Nats } from '../core/nats.ts';
import { SpanKind, extractTrace, withSpan } from '../core/telemetry.ts';
import { userToken } from '../core/address.ts';
import {
  MailboxError,
  allocSummaries,
  type FlagOp,
  type FolderInfo,
  type MailboxChange,
  type MailboxClient,
  type MessageMeta,
  type MessagesOptions,
  type Summaries,
  type SummaryPage,
  parseSummaries,
  summariesOf,
  copySummary,
} from '../core/mailbox-api.ts';
import { structureOf } from '../core/mime-structure.ts';
import { storeStreamedBody } from './stream-append.ts';
import { histogram } from '../core/metrics.ts';
import { BATCH, SUMMARY_BATCH, lastUid, type MailboxStore } from './store.ts';

const LF = Buffer.from('\n');

/** Two sets of summaries as one, in ascending UID order. */
function mergeSummaries(a: Summaries, b: Summaries): Summaries {
  const rows = [
    ...Array.from({ length: a.length }, (_, i) => [a, i] as const),
    ...Array.from({ length: b.length }, (_, i) => [b, i] as const),
  ];
  rows.sort((x, y) => (x[0].uids[x[1]] as number) - (y[0].uids[y[1]] as number));
  const out = allocSummaries(rows.length);
  rows.forEach(([s, i], k) => copySummary(out, k, s, i));
  return out;
}

/**
 * Replies stay under this many bytes (NATS max_payload defaults to 1 MiB): a longer page is cut
 * and the client asks again from `next_uid`.
 */
export const MAX_REPLY_BYTES = 768 * 1024;
/** UIDs per request from the client: a request stays far below max_payload (5 bytes a UID at most). */
const UIDS_PER_REQUEST = 5_000;

function chunks(uids: number[], size = UIDS_PER_REQUEST): number[][] {
  const sorted = [...new Set(uids)].sort((a, b) => a - b);
  const out: number[][] = [];
  for (let i = 0; i < sorted.length; i += size) out.push(sorted.slice(i, i + size));
  return out;
}

/** Encodes a MessagesReply, cutting the page (and telling where to go on) if it would be too big. */
function messagesReply(folder: FolderInfo | null, messages: MessageMeta[]): Uint8Array {
  let n = messages.length;
  for (;;) {
    const page = messages.slice(0, n);
    const next = n < messages.length ? (messages[n]?.uid ?? 0) : 0;
    const bytes = encode(pb.MessagesReply, {
      folder: folder ? folderOut(folder) : null,
      messages: page,
      nextUid: next,
    });
    if (bytes.length <= MAX_REPLY_BYTES || n <= 1) return bytes;
    n = Math.ceil(n / 2);
  }
}

/**
 * A MessagesReply of packed summaries, cut at a row boundary (telling where to go on) if it would
 * be too big.
 */
function packedReply(folder: FolderInfo, packed: Buffer): Uint8Array {
  let summaries = packed;
  let next = 0;
  if (packed.length > MAX_REPLY_BYTES - 4096) {
    const cut = packed.lastIndexOf(10, MAX_REPLY_BYTES - 4096);
    if (cut > 0) {
      summaries = packed.subarray(0, cut);
      next = firstUid(packed.subarray(cut + 1));
    }
  }
  return encode(pb.MessagesReply, { folder: folderOut(folder), summaries, nextUid: next });
}

function firstUid(packed: Uint8Array): number {
  let v = 0;
  for (const c of packed) {
    if (c < 48 || c > 57) break;
    v = v * 10 + (c - 48);
  }
  return v;
}

type Folder = ConstructorParameters<typeof pb.Folder>[0];

function folderOut(f: FolderInfo): NonNullable<ConstructorParameters<typeof pb.Folder>[0]> {
  return {
    name: f.name,
    uidValidity: f.uidValidity,
    uidNext: f.uidNext,
    exists: f.exists,
    unseen: f.unseen,
    recent: f.recent,
    highestModseq: f.highestModseq,
    specialUse: f.specialUse,
    subscribed: f.subscribed,
  };
}

function folderIn(f: Folder | null | undefined): FolderInfo {
  return {
    name: f?.name ?? '',
    uidValidity: f?.uidValidity ?? 0,
    uidNext: f?.uidNext ?? 0,
    exists: f?.exists ?? 0,
    unseen: f?.unseen ?? 0,
    recent: f?.recent ?? 0,
    highestModseq: num(f?.highestModseq),
    specialUse: f?.specialUse ?? '',
    subscribed: f?.subscribed ?? false,
  };
}

/**
 * A 64-bit field as a number. protobufjs decodes them as Long objects (typed `number`), and
 * Number(long) goes through a decimal string: this is many times faster on a page of thousands.
 */
function num(v: unknown): number {
  if (typeof v === 'number') return v;
  if (v && typeof (v as { toNumber?: unknown }).toNumber === 'function')
    return (v as { toNumber(): number }).toNumber();
  return Number(v ?? 0);
}

function metaIn(m: ConstructorParameters<typeof pb.MessageMeta>[0]): MessageMeta {
  m ??= {};
  const meta: MessageMeta = {
    uid: m.uid ?? 0,
    flags: m.flags ?? [],
    size: num(m.size),
    internalDate: num(m.internalDate),
    blob: m.blob ?? '',
    modseq: num(m.modseq),
  };
  if (m.structure && m.structure.length > 0) meta.structure = m.structure;
  return meta;
}

function errorOut(err: unknown): string {
  if (err instanceof MailboxError) return `${err.code} ${err.message}`;
  return `UNAVAILABLE ${(err as Error).message}`;
}

function check(error: string): void {
  if (!error) return;
  const sp = error.indexOf(' ');
  throw new MailboxError(sp > 0 ? error.slice(0, sp) : error, sp > 0 ? error.slice(sp + 1) : error);
}

const rpcSeconds = histogram('postino_mailbox_rpc_seconds', 'Mailbox RPC handling time', ['op']);

/** Op name → handler taking request bytes and returning reply bytes (what serveRpc answers with). */
export function handlers(store: MailboxStore): Record<string, (data: Uint8Array) => Promise<Uint8Array>> {
  return {
    list: async (d) => {
      const q = decode(pb.ListFoldersRequest, d);
      try {
        return encode(pb.ListFoldersReply, { folders: (await store.listFolders(q.user)).map(folderOut) });
      } catch (err) {
        return encode(pb.ListFoldersReply, { error: errorOut(err) });
      }
    },
    status: async (d) => {
      const q = decode(pb.FolderRequest, d);
      try {
        return encode(pb.FolderReply, { folder: folderOut(await store.status(q.user, q.folder)) });
      } catch (err) {
        return encode(pb.FolderReply, { error: errorOut(err) });
      }
    },
    messages: async (d) => {
      const q = decode(pb.MessagesRequest, d);
      try {
        if (q.uids.length > UIDS_PER_REQUEST)
          throw new MailboxError('INVALID', 'too many UIDs in one request');
        // Paged: one page of a UID range. Unpaged without UIDs: the first page only, cut below.
        const options = { structure: q.withStructure };
        const r =
          q.limit > 0 || q.uids.length === 0
            ? await store.messageRange(
                q.user,
                q.folder,
                q.firstUid || 1,
                q.lastUid || 0xffffffff,
                q.limit || BATCH,
                options,
              )
            : await store.messages(q.user, q.folder, q.uids, options);
        return messagesReply(r.folder, r.messages);
      } catch (err) {
        return encode(pb.MessagesReply, { error: errorOut(err) });
      }
    },
    // Summaries (MessagesOptions.summary): the same request and reply as `messages`, with blob and
    // structure left out, and pages of up to SUMMARY_BATCH messages.
    summaries: async (d) => {
      const q = decode(pb.MessagesRequest, d);
      try {
        if (q.uids.length > UIDS_PER_REQUEST)
          throw new MailboxError('INVALID', 'too many UIDs in one request');
        if (q.packedSummaries) {
          const r = await store.packedSummaries(
            q.user,
            q.folder,
            q.uids.length === 0
              ? { first: q.firstUid || 1, last: q.lastUid || 0xffffffff, limit: q.limit || SUMMARY_BATCH }
              : { uids: q.uids },
          );
          return packedReply(r.folder, r.packed);
        }
        const options = { summary: true };
        const r =
          q.uids.length === 0
            ? await store.messageRange(
                q.user,
                q.folder,
                q.firstUid || 1,
                q.lastUid || 0xffffffff,
                q.limit || SUMMARY_BATCH,
                options,
              )
            : await store.messages(q.user, q.folder, q.uids, options);
        return messagesReply(r.folder, r.messages);
      } catch (err) {
        return encode(pb.MessagesReply, { error: errorOut(err) });
      }
    },
    changed: async (d) => {
      const q = decode(pb.ChangedSinceRequest, d);
      try {
        if (q.uids.length > UIDS_PER_REQUEST)
          throw new MailboxError('INVALID', 'too many UIDs in one request');
        // With UIDs: those changed, ascending UID. Without: one page in MODSEQ order.
        const rows =
          q.uids.length > 0
            ? await store.changedSince(q.user, q.folder, Number(q.modseq), q.uids)
            : await store.changedPage(q.user, q.folder, Number(q.modseq), q.limit || BATCH);
        return messagesReply(null, rows);
      } catch (err) {
        return encode(pb.MessagesReply, { error: errorOut(err) });
      }
    },
    expunged: async (d) => {
      const q = decode(pb.ExpungedSinceRequest, d);
      try {
        const uids = await store.expungedSince(q.user, q.folder, Number(q.modseq));
        return encode(pb.ExpungedSinceReply, { complete: uids !== null, uids: uids ?? [] });
      } catch (err) {
        return encode(pb.ExpungedSinceReply, { error: errorOut(err) });
      }
    },
    quota: async (d) => {
      const q = decode(pb.QuotaRequest, d);
      try {
        return encode(pb.QuotaReply, await store.quota(q.user));
      } catch (err) {
        return encode(pb.QuotaReply, { error: errorOut(err) });
      }
    },
    store: async (d) => {
      const q = decode(pb.StoreFlagsRequest, d);
      try {
        if (q.uids.length > UIDS_PER_REQUEST)
          throw new MailboxError('INVALID', 'too many UIDs in one request');
        const r = q.conditional
          ? await store.storeFlagsIf(
              q.user,
              q.folder,
              q.uids,
              q.op as FlagOp,
              q.flags,
              Number(q.unchangedSince),
              q.origin,
            )
          : {
              messages: await store.storeFlags(q.user, q.folder, q.uids, q.op as FlagOp, q.flags, q.origin),
              failed: [],
            };
        // Flags are bounded (128 octets each), but a reply of thousands of messages is cut: the
        // client then re-reads the rest with `messages`.
        return encode(pb.StoreFlagsReply, { messages: r.messages, modified: r.failed });
      } catch (err) {
        return encode(pb.StoreFlagsReply, { error: errorOut(err) });
      }
    },
    expunge: async (d) => {
      const q = decode(pb.ExpungeRequest, d);
      try {
        return encode(pb.ExpungeReply, {
          expunged: await store.expunge(q.user, q.folder, q.uids, q.force, q.origin),
        });
      } catch (err) {
        return encode(pb.ExpungeReply, { error: errorOut(err) });
      }
    },
    append: async (d) => {
      const q = decode(pb.AppendRequest, d);
      try {
        const r = await store.appendBlob(
          q.user,
          q.folder,
          { id: q.blob, size: Number(q.size) },
          q.flags,
          Number(q.internalDate) || Date.now(),
          q.idempotencyKey,
          q.origin,
          q.structure,
        );
        return encode(pb.AppendReply, { uid: r.uid, uidValidity: r.uidValidity });
      } catch (err) {
        return encode(pb.AppendReply, { error: errorOut(err) });
      }
    },
    copy: async (d) => {
      const q = decode(pb.CopyRequest, d);
      try {
        const r = await store.copy(q.user, q.folder, q.uids, q.target, q.move, q.origin);
        return encode(pb.CopyReply, r);
      } catch (err) {
        return encode(pb.CopyReply, { error: errorOut(err) });
      }
    },
    create: simple((q) => store.createFolder(q.user, q.folder), pb.CreateFolderRequest),
    delete: simple((q) => store.deleteFolder(q.user, q.folder), pb.CreateFolderRequest),
    rename: simple((q) => store.renameFolder(q.user, q.folder, q.target), pb.RenameFolderRequest),
    subscribe: simple((q) => store.setSubscribed(q.user, q.folder, q.subscribe), pb.SubscribeRequest),
  };
}

function simple<T>(
  fn: (q: T) => Promise<void>,
  type: { decode(d: Uint8Array): T },
): (data: Uint8Array) => Promise<Uint8Array> {
  return async (d) => {
    try {
      await fn(type.decode(d));
      return encode(pb.SimpleReply, {});
    } catch (err) {
      return encode(pb.SimpleReply, { error: errorOut(err) });
    }
  };
}

/** Serves mbox.rpc.* in the queue group of the mailbox-store replicas. */
export function serveRpc(nats: Nats, store: MailboxStore, logger: Logger): Subscription {
  const table = handlers(store);
  return nats.nc.subscribe(SUBJECTS.rpc('*'), {
    queue: 'mailbox-store',
    callback: (err, msg) => {
      if (err) {
        logger.warn({ err }, 'rpc subscription error');
        return;
      }
      const op = msg.subject.slice(SUBJECTS.rpc('').length);
      const handler = table[op];
      if (!handler) {
        msg.respond(encode(pb.SimpleReply, { error: `INVALID unknown operation ${op}` }));
        return;
      }
      const end = rpcSeconds.startTimer({ op });
      void withSpan(
        `process ${msg.subject}`,
        {
          kind: SpanKind.SERVER,
          parent: extractTrace(msg.headers),
          attributes: {
            'messaging.system': 'nats',
            'messaging.destination.name': msg.subject,
            'messaging.operation.type': 'process',
          },
        },
        () => handler(msg.data),
      )
        .then((reply) => msg.respond(reply))
        .catch((e: unknown) => {
          // Undecodable request or a bug: answer anyway, so the caller never waits for a timeout.
          // Every reply type has the error string as field 1, so a SimpleReply decodes as any.
          logger.warn({ err: e, op }, 'rpc request failed');
          msg.respond(encode(pb.SimpleReply, { error: `INVALID ${(e as Error).message}` }));
        })
        .finally(() => end());
    },
  });
}

/** Publishes a change for the sessions of a user on every node. */
export function changePublisher(nats: Nats): (user: string, change: MailboxChange) => void {
  return (user, change) =>
    notify(nats, SUBJECTS.changes(userToken(user)), encode(pb.MailboxChange, { user, ...change }));
}

/** MailboxClient over NATS: what imap and pop3 use. */
export class MailboxRpcClient implements MailboxClient {
  readonly #nats: Nats;
  readonly #blobs: BlobStore;
  /** Set once a store answered that it has no `summaries` op (an older replica): full rows then. */
  #noSummaries = false;

  constructor(nats: Nats, blobs: BlobStore) {
    this.#nats = nats;
    this.#blobs = blobs;
  }

  async #call<R>(op: string, data: Uint8Array, type: { decode(d: Uint8Array): R }): Promise<R> {
    try {
      const msg = await request(this.#nats, SUBJECTS.rpc(op), data);
      return type.decode(msg.data);
    } catch (err) {
      throw new MailboxError('UNAVAILABLE', `mailbox store unavailable: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** A `messages` request, or `summaries` when only summaries are asked for and the store has them. */
  async #messagesCall(
    request: ConstructorParameters<typeof pb.MessagesRequest>[0],
    options: MessagesOptions,
  ): Promise<ReturnType<typeof pb.MessagesReply.decode>> {
    if (options.summary && !options.structure && !this.#noSummaries) {
      const r = await this.#call('summaries', encode(pb.MessagesRequest, request), pb.MessagesReply);
      if (!r.error.startsWith('INVALID unknown operation')) return r;
      this.#noSummaries = true;
    }
    return this.#call('messages', encode(pb.MessagesRequest, request), pb.MessagesReply);
  }

  /**
   * Summaries as packed rows, parsed into columns here: no object per message on either side. A
   * store that does not fill `summaries` (an older replica) answers with rows, used as they are.
   */
  async summaries(
    user: string,
    folder: string,
    range: { uids: readonly number[] } | { first: number; last: number },
  ): Promise<SummaryPage> {
    if (this.#noSummaries) {
      const r =
        'uids' in range
          ? await this.messages(user, folder, [...range.uids], { summary: true })
          : await this.#rangeRows(user, folder, range.first, range.last);
      // Pages read at different times: the lowest bound is unknown, so none is claimed.
      return { folder: r.folder, summaries: summariesOf(r.messages), modseq: 0 };
    }
    const parts: Uint8Array[] = [];
    let modseq = -1;
    const rows: MessageMeta[] = [];
    let info: FolderInfo | undefined;
    const take = (r: ReturnType<typeof pb.MessagesReply.decode>): void => {
      info = folderIn(r.folder);
      if (modseq < 0) modseq = info.highestModseq;
      if (r.summaries.length > 0) {
        if (parts.length > 0) parts.push(LF);
        parts.push(r.summaries);
      }
      for (const m of r.messages) rows.push(metaIn(m));
    };
    if ('uids' in range) {
      for (let todo of chunks([...range.uids])) {
        while (todo.length > 0) {
          const r = await this.#messagesCall(
            { user, folder, uids: todo, packedSummaries: true },
            { summary: true },
          );
          check(r.error);
          take(r);
          todo = r.nextUid ? todo.filter((u) => u >= r.nextUid) : [];
        }
      }
    } else {
      for (let first = range.first; first <= range.last;) {
        const r = await this.#messagesCall(
          { user, folder, firstUid: first, lastUid: range.last, limit: SUMMARY_BATCH, packedSummaries: true },
          { summary: true },
        );
        check(r.error);
        take(r);
        // Pages are cut by size: go on from the last UID + 1 until the folder's UIDNEXT.
        const tail = r.summaries.length > 0 ? lastUid(r.summaries) : (r.messages.at(-1)?.uid ?? 0);
        if (tail === 0 || tail + 1 >= (info as FolderInfo).uidNext) break;
        first = tail + 1;
      }
    }
    const summaries = parseSummaries(parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts));
    const folderInfo = info ?? (await this.status(user, folder));
    return {
      folder: folderInfo,
      modseq: modseq < 0 ? folderInfo.highestModseq : modseq,
      // Rows only from a replica of an older version, met during an upgrade.
      summaries: rows.length === 0 ? summaries : mergeSummaries(summaries, summariesOf(rows)),
    };
  }

  /** Every summary row of a UID range, page by page (stores without packed summaries). */
  async #rangeRows(
    user: string,
    folder: string,
    first: number,
    last: number,
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    const messages: MessageMeta[] = [];
    let info: FolderInfo | undefined;
    for (let from = first; from <= last;) {
      const page = await this.messageRange(user, folder, from, last, SUMMARY_BATCH, { summary: true });
      info = page.folder;
      for (const m of page.messages) messages.push(m);
      const tail = page.messages.at(-1);
      if (!tail) break;
      from = tail.uid + 1;
    }
    return { folder: info ?? (await this.status(user, folder)), messages };
  }

  async listFolders(user: string): Promise<FolderInfo[]> {
    const r = await this.#call('list', encode(pb.ListFoldersRequest, { user }), pb.ListFoldersReply);
    check(r.error);
    return r.folders.map(folderIn);
  }

  async status(user: string, folder: string): Promise<FolderInfo> {
    const r = await this.#call('status', encode(pb.FolderRequest, { user, folder }), pb.FolderReply);
    check(r.error);
    return folderIn(r.folder);
  }

  async messages(
    user: string,
    folder: string,
    uids: number[] = [],
    options: MessagesOptions = {},
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    const messages: MessageMeta[] = [];
    let info: FolderInfo | undefined;
    if (uids.length === 0) {
      const limit = options.summary && !options.structure ? SUMMARY_BATCH : BATCH;
      let first = 1;
      for (;;) {
        const page = await this.messageRange(user, folder, first, 0xffffffff, limit, options);
        info = page.folder;
        for (const m of page.messages) messages.push(m);
        const tail = page.messages.at(-1);
        if (!tail) break;
        first = tail.uid + 1;
      }
      return { folder: info, messages };
    }
    for (let todo of chunks(uids)) {
      while (todo.length > 0) {
        const r = await this.#messagesCall(
          { user, folder, uids: todo, withStructure: !!options.structure },
          options,
        );
        check(r.error);
        info = folderIn(r.folder);
        for (const m of r.messages) messages.push(metaIn(m));
        todo = r.nextUid ? todo.filter((u) => u >= r.nextUid) : [];
      }
    }
    return { folder: info ?? (await this.status(user, folder)), messages };
  }

  async messageRange(
    user: string,
    folder: string,
    first: number,
    last: number,
    limit = BATCH,
    options: MessagesOptions = {},
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    const r = await this.#messagesCall(
      {
        user,
        folder,
        firstUid: first,
        lastUid: last,
        limit: Math.max(1, limit),
        withStructure: !!options.structure,
      },
      options,
    );
    check(r.error);
    // A page cut for size simply ends early; the caller goes on from its last UID + 1.
    return { folder: folderIn(r.folder), messages: r.messages.map(metaIn) };
  }

  async changedSince(
    user: string,
    folder: string,
    modseq: number,
    uids: number[] = [],
  ): Promise<MessageMeta[]> {
    const out: MessageMeta[] = [];
    if (uids.length > 0) {
      for (let todo of chunks(uids)) {
        while (todo.length > 0) {
          const r = await this.#call(
            'changed',
            encode(pb.ChangedSinceRequest, { user, folder, modseq, uids: todo }),
            pb.MessagesReply,
          );
          check(r.error);
          for (const m of r.messages) out.push(metaIn(m));
          todo = r.nextUid ? todo.filter((u) => u >= r.nextUid) : [];
        }
      }
    } else {
      // Pages in MODSEQ order (unique per message): go on above the last MODSEQ while a page is
      // full or was cut for size.
      for (let since = modseq; ;) {
        const r = await this.#call(
          'changed',
          encode(pb.ChangedSinceRequest, { user, folder, modseq: since, limit: BATCH }),
          pb.MessagesReply,
        );
        check(r.error);
        for (const m of r.messages) out.push(metaIn(m));
        const tail = r.messages.at(-1);
        if (!tail || (r.messages.length < BATCH && !r.nextUid)) break;
        since = Number(tail.modseq);
      }
    }
    return out.sort((a, b) => a.uid - b.uid);
  }

  async expungedSince(user: string, folder: string, modseq: number): Promise<number[] | null> {
    const r = await this.#call(
      'expunged',
      encode(pb.ExpungedSinceRequest, { user, folder, modseq }),
      pb.ExpungedSinceReply,
    );
    check(r.error);
    return r.complete ? r.uids : null;
  }

  async quota(
    user: string,
  ): Promise<{ storageUsed: number; storageLimit: number; messagesUsed: number; messagesLimit: number }> {
    const r = await this.#call('quota', encode(pb.QuotaRequest, { user }), pb.QuotaReply);
    check(r.error);
    return {
      storageUsed: Number(r.storageUsed),
      storageLimit: Number(r.storageLimit),
      messagesUsed: Number(r.messagesUsed),
      messagesLimit: Number(r.messagesLimit),
    };
  }

  async storeFlags(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    origin = '',
  ): Promise<MessageMeta[]> {
    return (await this.#store(user, folder, uids, op, flags, null, origin)).messages;
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
    return this.#store(user, folder, uids, op, flags, unchangedSince, origin);
  }

  async #store(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    unchangedSince: number | null,
    origin: string,
  ): Promise<{ messages: MessageMeta[]; failed: number[] }> {
    const messages: MessageMeta[] = [];
    const failed: number[] = [];
    // A page of STORE replies: 1,000 messages with flags of at most 128 octets stay under the limit
    // for any reasonable number of keywords per message.
    for (const part of chunks(uids, BATCH)) {
      const r = await this.#call(
        'store',
        encode(pb.StoreFlagsRequest, {
          user,
          folder,
          uids: part,
          op,
          flags,
          origin,
          conditional: unchangedSince !== null,
          unchangedSince: unchangedSince ?? 0,
        }),
        pb.StoreFlagsReply,
      );
      check(r.error);
      for (const m of r.messages) messages.push(metaIn(m));
      failed.push(...r.modified);
    }
    return { messages, failed };
  }

  async expunge(user: string, folder: string, uids: number[], force = false, origin = ''): Promise<number[]> {
    const out: number[] = [];
    for (const part of chunks(uids)) {
      const r = await this.#call(
        'expunge',
        encode(pb.ExpungeRequest, { user, folder, uids: part, force, origin }),
        pb.ExpungeReply,
      );
      check(r.error);
      out.push(...r.expunged);
    }
    return out;
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
    return this.#append({ user, folder, flags, internalDate, origin }, blob, structure);
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
    return this.#append({ user, folder, flags, internalDate, origin }, blob, structureOf(body));
  }

  /** The append RPC for a body already in the blob store, with its MIME structure. */
  async #append(
    message: { user: string; folder: string; flags: string[]; internalDate: number; origin: string },
    blob: { id: string; size: number },
    structure: Buffer | null,
  ): Promise<{ uid: number; uidValidity: number }> {
    const request = { ...message, blob: blob.id, size: blob.size, structure };
    const r = await this.#call('append', encode(pb.AppendRequest, request), pb.AppendReply);
    check(r.error);
    return { uid: r.uid, uidValidity: r.uidValidity };
  }

  async copy(user: string, folder: string, uids: number[], target: string, move: boolean, origin = '') {
    const res = { uidValidity: 0, sourceUids: [] as number[], targetUids: [] as number[] };
    const parts = chunks(uids);
    for (const part of parts.length > 0 ? parts : [[]]) {
      const r = await this.#call(
        'copy',
        encode(pb.CopyRequest, { user, folder, uids: part, target, move, origin }),
        pb.CopyReply,
      );
      check(r.error);
      res.uidValidity = r.uidValidity;
      res.sourceUids.push(...r.sourceUids);
      res.targetUids.push(...r.targetUids);
    }
    return res;
  }

  async createFolder(user: string, folder: string): Promise<void> {
    check(
      (await this.#call('create', encode(pb.CreateFolderRequest, { user, folder }), pb.SimpleReply)).error,
    );
  }

  async deleteFolder(user: string, folder: string): Promise<void> {
    check(
      (await this.#call('delete', encode(pb.CreateFolderRequest, { user, folder }), pb.SimpleReply)).error,
    );
  }

  async renameFolder(user: string, folder: string, target: string): Promise<void> {
    check(
      (await this.#call('rename', encode(pb.RenameFolderRequest, { user, folder, target }), pb.SimpleReply))
        .error,
    );
  }

  async setSubscribed(user: string, folder: string, subscribed: boolean): Promise<void> {
    check(
      (
        await this.#call(
          'subscribe',
          encode(pb.SubscribeRequest, { user, folder, subscribe: subscribed }),
          pb.SimpleReply,
        )
      ).error,
    );
  }

  openBody(blob: string): AsyncIterable<Uint8Array> {
    return this.#blobs.open(blob);
  }

  readBody(blob: string): Promise<Buffer> {
    return this.#blobs.read(blob);
  }

  async watch(user: string, onChange: (change: MailboxChange) => void): Promise<() => void> {
    const sub = this.#nats.nc.subscribe(SUBJECTS.changes(userToken(user)), {
      callback: (err, msg) => {
        if (err) return;
        const c = decode(pb.MailboxChange, msg.data);
        onChange({
          folder: c.folder,
          kind: c.kind as MailboxChange['kind'],
          uids: c.uids,
          modseq: Number(c.modseq),
          origin: c.origin,
        });
      },
    });
    await this.#nats.nc.flush();
    return () => sub.unsubscribe();
  }
}
