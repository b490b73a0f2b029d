/**
 * mailbox-store: files LOCAL deliveries into mailboxes (exactly once, by idempotency key) and serves
 * the mailbox RPC API that imap and pop3 use.
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { returnPathField } from '../core/return-path.ts';
import { BlobHolder, type BlobInfo, type BlobStore } from '../core/blobs.ts';
import { consume } from '../core/nats.ts';
import { pb, decode } from '../core/codec.ts';
import { recordEvent } from '../core/events.ts';
import { counter, histogram } from '../core/metrics.ts';
import { MailboxError } from '../core/mailbox-api.ts';
import { withStructure } from '../core/mime-structure.ts';
import { serveRpc } from './rpc.ts';
import { storeReplica } from './access.ts';

/** How often each replica copies reference stamps to the blob records, and sweeps unreferenced bodies. */
const COLLECT_EVERY_MS = 2_000;
const SWEEP_EVERY_MS = 60_000;

const stored = counter('postino_mailbox_appended_total', 'Messages filed into mailboxes', ['result']);
const endToEnd = histogram(
  'postino_local_delivery_latency_seconds',
  'From the 250 at SMTP ingress to the message in the mailbox',
  [],
  [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600],
);

export async function start(rt: Runtime): Promise<Service> {
  const { nats, logger } = rt;
  const log = logger.child({ service: 'mailbox-store' });
  const { store, refs } = storeReplica(rt, log);
  const rpc = serveRpc(nats, store, log);

  // Background rounds, one at a time per replica; a failed round is logged and the next one retries.
  let busy = false;
  let lastSweep = Date.now();
  // A short grace (tests) is swept as often as it allows; at most every SWEEP_EVERY_MS.
  const sweepEvery = Math.min(SWEEP_EVERY_MS, Math.max(COLLECT_EVERY_MS, rt.config.blobGcGrace));
  const gc = setInterval(() => {
    if (busy) return;
    busy = true;
    void (async () => {
      await refs.collect(store);
      if (Date.now() - lastSweep >= sweepEvery) {
        lastSweep = Date.now();
        await refs.sweep();
      }
    })()
      .catch((err: unknown) => log.warn({ err }, 'blob collector round failed'))
      .finally(() => (busy = false));
  }, COLLECT_EVERY_MS);

  const consumer = consume(nats, {
    name: 'mailboxStore',
    logger: log,
    concurrency: 32,
    handler: async (msg) => {
      const d = decode(pb.LocalDelivery, msg.data);
      const folder = d.folder || 'INBOX';
      // RFC 5321 4.4: the final delivery adds Return-Path with the reverse path (<> for a bounce).
      // smtp-ingress stored the body with it, and its structure: filed as it is. A body without it
      // (a bounce, or an entry from an older ingress) gets a copy with it, shared by every local
      // recipient of the envelope, so that copy is stored once.
      const ref = { id: d.body?.id ?? '', size: Number(d.body?.size ?? 0) };
      const body: StructuredBlob = d.body?.returnPath
        ? { ...ref, structure: d.body.structure?.length ? Buffer.from(d.body.structure) : null }
        : await withReturnPath(rt.blobs, ref, d.mailFrom);
      const receivedAt = Number(d.receivedAt) || Date.now();
      // The idempotency key makes a redelivered entry a no-op (invariant 3).
      const fileInto = (f: string) =>
        store.appendBlob(d.user, f, body, [], receivedAt, d.idempotencyKey, '', body.structure);
      let res;
      try {
        try {
          res = await fileInto(folder);
        } catch (err) {
          // A folder named by a filter that does not exist (any more): the INBOX gets it.
          if (err instanceof MailboxError && err.code === 'NONEXISTENT' && folder !== 'INBOX') {
            res = await fileInto('INBOX');
          } else throw err;
        }
      } catch (err) {
        // Over quota: defer (RFC 3463 4.2.2 "mailbox full" is temporary); JetStream redelivers later.
        if (err instanceof MailboxError && err.code === 'OVERQUOTA') {
          stored.inc({ result: 'overquota' });
          log.info({ queueId: d.queueId, user: d.user }, 'mailbox full, delivery deferred');
          return { retryInMs: rt.config.mailboxOverQuotaRetry, reason: '452 4.2.2 mailbox full' };
        }
        throw err;
      }
      // Filed (now or before): this entry no longer needs the body it was given (core/blobs.ts).
      const released = rt.blobs.release(d.body?.id ?? '', BlobHolder.local(d.idempotencyKey));
      stored.inc({ result: res.created ? 'stored' : 'duplicate' });
      if (res.created) endToEnd.observe((Date.now() - Number(d.receivedAt)) / 1000);
      log.info({ queueId: d.queueId, user: d.user, uid: res.uid, duplicate: !res.created }, 'message stored');
      // The event beside the release; both done before the ack (a redelivery repeats neither).
      const recorded = recordEvent(
        nats,
        log,
        'stored',
        {
          queueId: d.queueId,
          messageId: d.messageId,
          recipient: d.originalRecipient,
          service: 'mailbox-store',
          detail: `${folder} uid ${res.uid}`,
          mailFrom: d.mailFrom,
        },
        d.idempotencyKey,
      );
      await Promise.all([released, recorded]);
      return { ack: true };
    },
  });

  return {
    async stop() {
      clearInterval(gc);
      await rpc.drain().catch(() => rpc.unsubscribe());
      await consumer.stop();
    },
  };
}

/** Recent Return-Path copies by (body, sender): the recipients of one envelope share one copy. */
const RETURN_PATH_MEMO_MAX = 1000;
const returnPathMemo = new Map<string, Promise<StructuredBlob>>();

/** A stored body and its MIME structure (services/core/mime-structure.ts; null over its caps). */
type StructuredBlob = BlobInfo & { structure: Buffer | null };

/**
 * A copy of the body with a Return-Path header in front, streamed (never held whole). Deliveries
 * of the same envelope running at once wait for one copy instead of each writing it. The MIME
 * structure IMAP needs is built from the same stream, once per copy, not once per recipient.
 */
function withReturnPath(blobs: BlobStore, body: BlobInfo, mailFrom: string): Promise<StructuredBlob> {
  const key = `${body.id}\n${mailFrom}`;
  let copy = returnPathMemo.get(key);
  if (!copy) {
    const header = returnPathField(mailFrom);
    async function* bytes(): AsyncIterable<Uint8Array> {
      yield header;
      yield* blobs.open(body.id);
    }
    copy = body.size <= IN_MEMORY_COPY_MAX ? copyInMemory(blobs, bytes()) : copyStreamed(blobs, bytes());
    returnPathMemo.set(key, copy);
    // A failed copy is not remembered: the redelivery tries again.
    copy.catch(() => returnPathMemo.delete(key));
    if (returnPathMemo.size > RETURN_PATH_MEMO_MAX) {
      const oldest = returnPathMemo.keys().next().value;
      if (oldest !== undefined) returnPathMemo.delete(oldest);
    }
  }
  return copy;
}

/**
 * Most mail is small: its copy is made in memory and stored with one put, without the temporary
 * file a streamed copy is spooled through (whose name is known only once the content is hashed).
 */
const IN_MEMORY_COPY_MAX = 1024 * 1024;

async function copyInMemory(blobs: BlobStore, source: AsyncIterable<Uint8Array>): Promise<StructuredBlob> {
  const tee = withStructure(source);
  const chunks: Uint8Array[] = [];
  for await (const c of tee.body) chunks.push(c);
  const blob = await blobs.put(chunks);
  return { ...blob, structure: tee.result() };
}

async function copyStreamed(blobs: BlobStore, source: AsyncIterable<Uint8Array>): Promise<StructuredBlob> {
  const tee = withStructure(source);
  const blob = await blobs.putStream(tee.body);
  return { ...blob, structure: tee.result() };
}
