/**
 * The JetStream side of a destination partition: one durable pull consumer per partition
 * (`delivery-<n>`, filter mail.outbound.<n>), read only by the replica that holds the partition's
 * lease. nats-server 2.9 allows one filter subject per consumer and no overlapping consumers on a
 * work-queue stream, so per-partition durables are what lets ownership move: the new holder binds
 * to the same durable and gets whatever the old one had not acked (after its ack wait, or at once
 * when the old one naked on losing the lease).
 */
import { AckPolicy, DeliverPolicy, type JsMsg } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import { outboundConsumer, type Nats } from '../core/nats.ts';
import { SpanKind, context, extractTrace, trace, withSpan } from '../core/telemetry.ts';
import { counter } from '../core/metrics.ts';
import type { Lease } from './leases.ts';

const ns = (ms: number) => ms * 1_000_000;

const processed = counter('postino_delivery_partition_processed_total', 'OUTBOUND entries handled', [
  'outcome',
]);

export type PartitionOutcome = { ack: true } | { nakMs: number };

/** Creates (or updates) the partition's durable consumer. Idempotent, safe from every replica. */
export async function ensurePartitionConsumer(
  nats: Nats,
  partition: number,
  maxAckPending: number,
  ackWaitMs: number,
): Promise<void> {
  const c = outboundConsumer(partition);
  const existing = await nats.jsm.consumers.info(c.stream, c.durable).catch(() => null);
  if (existing) return;
  await nats.jsm.consumers
    .add(c.stream, {
      durable_name: c.durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: c.filter,
      ack_wait: ns(ackWaitMs),
      max_deliver: -1,
      max_ack_pending: maxAckPending,
    })
    .catch(async (err: unknown) => {
      if (!(await nats.jsm.consumers.info(c.stream, c.durable).catch(() => null))) throw err;
    });
}

/**
 * Consumes a partition while its lease is held. Each message runs the handler at once (the
 * destination actors limit what reaches the network); when the lease is lost the loop stops
 * pulling, and whatever the handler had not finished is naked for the next holder.
 */
export function consumePartition(
  nats: Nats,
  lease: Lease,
  opts: {
    logger: Logger;
    maxMessages: number;
    ackWaitMs: number;
    handler: (msg: JsMsg, lease: Lease) => Promise<PartitionOutcome>;
  },
): { done: Promise<void> } {
  const c = outboundConsumer(lease.partition);
  const inFlight = new Set<Promise<void>>();
  const log = opts.logger;

  const handle = async (msg: JsMsg): Promise<void> => {
    const heartbeat = setInterval(() => msg.working(), Math.max(1000, opts.ackWaitMs / 3));
    try {
      const outcome = await withSpan(
        `process ${c.stream}`,
        {
          kind: SpanKind.CONSUMER,
          parent: extractTrace(msg.headers),
          attributes: {
            'messaging.system': 'nats',
            'messaging.destination.name': msg.subject,
            'messaging.operation.type': 'process',
            'messaging.consumer.group.name': c.durable,
            'messaging.message.id': String(msg.seq),
          },
        },
        () => opts.handler(msg, lease),
      ).catch((err: unknown): PartitionOutcome => {
        log.error({ err, subject: msg.subject, seq: msg.seq }, 'delivery handler failed; will retry');
        return { nakMs: Math.min(60_000, 1000 * 2 ** Math.min(msg.info.deliveryCount, 6)) };
      });
      if ('ack' in outcome && lease.valid()) {
        // Not waited for (no ackAck round trip): a lost ack only redelivers the entry, which the
        // handler then finds finished or superseded in the queue store and drops.
        msg.ack();
        processed.inc({ outcome: 'ack' });
      } else {
        // Lost the lease meanwhile: hand the message straight to the next holder.
        msg.nak('nakMs' in outcome ? outcome.nakMs : 0);
        processed.inc({ outcome: 'nak' });
      }
    } finally {
      clearInterval(heartbeat);
    }
  };

  const loop = async (): Promise<void> => {
    // Draining (the partition is given back, or lost) stops taking messages; those in flight finish.
    while (!lease.draining.aborted) {
      try {
        const consumer = await nats.js.consumers.get(c.stream, c.durable);
        const iter = await consumer.consume({ max_messages: opts.maxMessages, expires: 5000 });
        const stop = () => void iter.stop();
        lease.draining.addEventListener('abort', stop, { once: true });
        try {
          for await (const msg of iter) {
            if (lease.draining.aborted) {
              msg.nak();
              continue;
            }
            const p = context.with(trace.deleteSpan(context.active()), () => handle(msg));
            inFlight.add(p);
            void p.finally(() => inFlight.delete(p));
          }
        } finally {
          lease.draining.removeEventListener('abort', stop);
        }
      } catch (err) {
        if (lease.draining.aborted) break;
        log.warn({ err, consumer: c.durable }, 'partition consumer failed; restarting');
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    await Promise.allSettled([...inFlight]);
  };
  return { done: loop() };
}
