/**
 * mailbox-store: files LOCAL deliveries into mailboxes (exactly once, by idempotency key) and serves
 * the mailbox RPC API that imap and pop3 use.
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { consume } from '../core/nats.ts';
import { pb, decode } from '../core/codec.ts';
import { recordEvent } from '../core/events.ts';
import { counter, histogram } from '../core/metrics.ts';
import { MailboxError } from '../core/mailbox-api.ts';
import { MailboxStore } from './store.ts';
import { changePublisher, serveRpc } from './rpc.ts';

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
  const store = new MailboxStore(rt.redis, rt.config.redisPrefix, rt.blobs, changePublisher(nats));
  const rpc = serveRpc(nats, store, log);

  const consumer = consume(nats, {
    name: 'mailboxStore',
    logger: log,
    concurrency: 32,
    handler: async (msg) => {
      const d = decode(pb.LocalDelivery, msg.data);
      const folder = d.folder || 'INBOX';
      let res;
      try {
        res = await store.appendBlob(
          d.user,
          folder,
          { id: d.body?.id ?? '', size: Number(d.body?.size ?? 0) },
          [],
          Number(d.receivedAt) || Date.now(),
          d.idempotencyKey,
        );
      } catch (err) {
        if (err instanceof MailboxError && err.code === 'NONEXISTENT' && folder !== 'INBOX') {
          res = await store.appendBlob(
            d.user,
            'INBOX',
            { id: d.body?.id ?? '', size: Number(d.body?.size ?? 0) },
            [],
            Number(d.receivedAt) || Date.now(),
            d.idempotencyKey,
          );
        } else throw err;
      }
      stored.inc({ result: res.created ? 'stored' : 'duplicate' });
      if (res.created) endToEnd.observe((Date.now() - Number(d.receivedAt)) / 1000);
      log.info({ queueId: d.queueId, user: d.user, uid: res.uid, duplicate: !res.created }, 'message stored');
      await recordEvent(
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
      return { ack: true };
    },
  });

  return {
    async stop() {
      await rpc.drain().catch(() => rpc.unsubscribe());
      await consumer.stop();
    },
  };
}
