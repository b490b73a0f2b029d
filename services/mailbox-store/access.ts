/**
 * How the front ends (imap, pop3, admin) reach the mailboxes: MAILBOX_ACCESS.
 *
 * - `rpc` (a cluster): they ask the mailbox-store replicas over `mbox.rpc.*` (rpc.ts).
 * - `direct` (`postino up`, where the mailbox-store runs in the same process): they run the mailbox
 *   operations themselves. The mailbox actor is virtual (ARCHITECTURE.md): every operation is one
 *   atomic script in Redis, so any process that has the store's code is a replica of it, and the
 *   answer is the same. What goes away is two NATS hops and a protobuf encoding each way per
 *   command: an IMAP STATUS takes half the time, a SELECT of a large folder no longer pages its
 *   summaries through NATS. Changes are still announced on `mbox.changes.<user>` and watched there,
 *   so sessions on every node hear of them, whichever replica made them.
 */
import type { Logger } from 'pino';
import type { Runtime } from '../core/runtime.ts';
import type { MailboxClient } from '../core/mailbox-api.ts';
import { BlobRefs } from './blob-refs.ts';
import { MailboxRpcClient, changePublisher } from './rpc.ts';
import { MailboxStore } from './store.ts';

/** A replica of the store as the mailbox-store service runs it: its reference marks, quotas and journal. */
export interface StoreReplica {
  store: MailboxStore;
  refs: BlobRefs;
}

const replicas = new WeakMap<Runtime, StoreReplica>();

/**
 * The runtime's store replica, made once per runtime (the mailbox-store service and the front ends
 * of the same thread share it). Puts of its blob store touch the reference records (blob-refs.ts),
 * so that a body about to be relied on is not swept meanwhile; changes are watched on NATS.
 */
export function storeReplica(rt: Runtime, logger: Logger): StoreReplica {
  const known = replicas.get(rt);
  if (known) return known;
  const refs = new BlobRefs(rt.redis, rt.config.redisPrefix, {
    graceMs: rt.config.blobGcGrace,
    deleteBody: (id) => rt.blobs.delete(id),
    logger,
  });
  rt.blobs.onPut(refs.touch);
  const changes = new MailboxRpcClient(rt.nats, rt.blobs);
  const store = new MailboxStore(rt.redis, rt.config.redisPrefix, rt.blobs, changePublisher(rt.nats), {
    limits: (user) => rt.directory.quotaOf(user),
    journalMax: rt.config.mailboxJournalMax,
    blobsChanged: refs.changed,
    watch: (user, onChange) => changes.watch(user, onChange),
  });
  const replica = { store, refs };
  replicas.set(rt, replica);
  return replica;
}

/** The mailbox client MAILBOX_ACCESS asks for. */
export function mailboxAccess(rt: Runtime, logger: Logger): MailboxClient {
  return rt.config.mailboxAccess === 'direct'
    ? storeReplica(rt, logger).store
    : new MailboxRpcClient(rt.nats, rt.blobs);
}
