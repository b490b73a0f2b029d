/** Message lifecycle events on the EVENTS stream (message tracking: `postino trace`). */
import type { Logger } from 'pino';
import { pb, encode, type MessageEvent } from './codec.ts';
import { publish, STREAMS, SUBJECTS, type Nats } from './nats.ts';
import { currentTraceId } from './telemetry.ts';
import { counter } from './metrics.ts';

const events = counter(
  'postino_message_events_total',
  'Message lifecycle events recorded, by kind (received, routed, stored, delivered, deferred, bounced...)',
  ['kind'],
);

export type EventKind =
  | 'received'
  | 'rejected'
  | 'routed'
  | 'stored'
  | 'delivered'
  | 'deferred'
  | 'bounced'
  | 'fetched'
  | 'expunged';

let eventNode = '';

/** Names the replica in every event this process records. */
export function setEventNode(node: string): void {
  eventNode = node;
}

/**
 * Records an event. Tracking must never hold mail back: a failed publish is logged, not thrown.
 * The msgId makes a redelivered stage's event a duplicate that JetStream drops.
 */
export async function recordEvent(
  nats: Nats,
  logger: Logger,
  kind: EventKind,
  ev: Omit<MessageEvent, 'kind' | 'at' | 'traceId'>,
  dedupeKey?: string,
  at = Date.now(),
): Promise<void> {
  const event: MessageEvent = { ...ev, kind, at, traceId: currentTraceId(), node: eventNode };
  events.inc({ kind });
  try {
    await publish(nats, SUBJECTS.event(kind), encode(pb.MessageEvent, event), {
      stream: STREAMS.EVENTS,
      msgId: dedupeKey ? `${kind}:${dedupeKey}` : undefined,
      // Tracking only: the mail it describes does not wait for a stream that is not there.
      retryNoResponders: false,
      timeoutMs: 5000,
    });
  } catch (err) {
    logger.warn({ err, kind, queueId: ev.queueId }, 'event not recorded');
  }
}
