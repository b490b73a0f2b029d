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
  type FlagOp,
  type FolderInfo,
  type MailboxChange,
  type MailboxClient,
  type MessageMeta,
} from '../core/mailbox-api.ts';
import { histogram } from '../core/metrics.ts';
import type { MailboxStore } from './store.ts';

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
    highestModseq: Number(f?.highestModseq ?? 0),
    specialUse: f?.specialUse ?? '',
    subscribed: f?.subscribed ?? false,
  };
}

function metaIn(m: ConstructorParameters<typeof pb.MessageMeta>[0]): MessageMeta {
  m ??= {};
  return {
    uid: m.uid ?? 0,
    flags: m.flags ?? [],
    size: Number(m.size),
    internalDate: Number(m.internalDate),
    blob: m.blob ?? '',
    modseq: Number(m.modseq),
  };
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

/** Op name → handler taking request bytes and returning reply bytes. */
function handlers(store: MailboxStore): Record<string, (data: Uint8Array) => Promise<Uint8Array>> {
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
        const r = await store.messages(q.user, q.folder, q.uids);
        return encode(pb.MessagesReply, { folder: folderOut(r.folder), messages: r.messages });
      } catch (err) {
        return encode(pb.MessagesReply, { error: errorOut(err) });
      }
    },
    store: async (d) => {
      const q = decode(pb.StoreFlagsRequest, d);
      try {
        const r = await store.storeFlags(q.user, q.folder, q.uids, q.op as FlagOp, q.flags, q.origin);
        return encode(pb.StoreFlagsReply, { messages: r });
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
        .catch((e: unknown) => logger.error({ err: e, op }, 'rpc handler failed'))
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
  ): Promise<{ folder: FolderInfo; messages: MessageMeta[] }> {
    const r = await this.#call(
      'messages',
      encode(pb.MessagesRequest, { user, folder, uids }),
      pb.MessagesReply,
    );
    check(r.error);
    return { folder: folderIn(r.folder), messages: r.messages.map(metaIn) };
  }

  async storeFlags(
    user: string,
    folder: string,
    uids: number[],
    op: FlagOp,
    flags: string[],
    origin = '',
  ): Promise<MessageMeta[]> {
    const r = await this.#call(
      'store',
      encode(pb.StoreFlagsRequest, { user, folder, uids, op, flags, origin }),
      pb.StoreFlagsReply,
    );
    check(r.error);
    return r.messages.map(metaIn);
  }

  async expunge(user: string, folder: string, uids: number[], force = false, origin = ''): Promise<number[]> {
    const r = await this.#call(
      'expunge',
      encode(pb.ExpungeRequest, { user, folder, uids, force, origin }),
      pb.ExpungeReply,
    );
    check(r.error);
    return r.expunged;
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
    const r = await this.#call(
      'append',
      encode(pb.AppendRequest, { user, folder, blob: blob.id, size: blob.size, flags, internalDate, origin }),
      pb.AppendReply,
    );
    check(r.error);
    return { uid: r.uid, uidValidity: r.uidValidity };
  }

  async copy(user: string, folder: string, uids: number[], target: string, move: boolean, origin = '') {
    const r = await this.#call(
      'copy',
      encode(pb.CopyRequest, { user, folder, uids, target, move, origin }),
      pb.CopyReply,
    );
    check(r.error);
    return { uidValidity: r.uidValidity, sourceUids: r.sourceUids, targetUids: r.targetUids };
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
