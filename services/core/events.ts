/** Message lifecycle events on the EVENTS stream (message tracking: `postino trace`), in batches. */
import type { Logger } from 'pino';
import { pb, encode, type MessageEvent } from './codec.ts';
import { publish, STREAMS, SUBJECTS, type Nats } from './nats.ts';
import { context, currentTraceId, trace } from './telemetry.ts';
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

/** Most events in one batch, and about the most octets (well under NATS's 1 MiB payload). */
const BATCH_EVENTS = 256;
const BATCH_BYTES = 256 * 1024;

/** About the encoded size of an event: its strings and a little for the rest. */
function sizeOf(e: MessageEvent): number {
  let n = 48;
  for (const v of Object.values(e)) if (typeof v === 'string') n += v.length;
  return n;
}

/**
 * At most one batch per this many ms while events keep coming (a lone event goes out at once).
 * Under load a stage records an event or more per message: at 1,000 messages a second a batch per
 * turn of the event loop holds one or two, a batch per 10 ms about ten.
 */
const BATCH_INTERVAL_MS = 10;

/**
 * The events a process records meanwhile (up to BATCH_EVENTS), published as one MessageEvents:
 * one JetStream write for what would be a write each. A batch goes out at the next turn of the
 * event loop, or, when the one before left less than BATCH_INTERVAL_MS ago, once that much time
 * has passed: like Nagle's algorithm, a quiet process loses nothing to the wait and a busy one
 * writes a batch per interval. Each caller's promise resolves once its batch is acked, or the
 * failure logged.
 */
class EventBatcher {
  readonly #nats: Nats;
  readonly #logger: Logger;
  #pending: { event: MessageEvent; done: () => void }[] = [];
  #bytes = 0;
  #scheduled = false;
  #lastFlush = 0;

  constructor(nats: Nats, logger: Logger) {
    this.#nats = nats;
    this.#logger = logger;
  }

  add(event: MessageEvent): Promise<void> {
    return new Promise((done) => {
      this.#pending.push({ event, done });
      this.#bytes += sizeOf(event);
      if (this.#pending.length >= BATCH_EVENTS || this.#bytes >= BATCH_BYTES) this.#flush();
      else if (!this.#scheduled) {
        this.#scheduled = true;
        const run = () => {
          this.#scheduled = false;
          this.#flush();
        };
        const wait = this.#lastFlush + BATCH_INTERVAL_MS - performance.now();
        if (wait > 0) setTimeout(run, wait);
        else setImmediate(run);
      }
    });
  }

  #flush(): void {
    const batch = this.#pending;
    if (batch.length === 0) return;
    this.#pending = [];
    this.#bytes = 0;
    this.#lastFlush = performance.now();
    // Not part of any one message's trace: each event carries its own trace id.
    void context.with(trace.deleteSpan(context.active()), () => this.#send(batch));
  }

  async #send(batch: { event: MessageEvent; done: () => void }[]): Promise<void> {
    try {
      await publish(
        this.#nats,
        SUBJECTS.eventBatch,
        encode(pb.MessageEvents, { events: batch.map((b) => b.event) }),
        {
          stream: STREAMS.EVENTS,
          // Tracking only: the mail it describes does not wait for a stream that is not there.
          retryNoResponders: false,
          timeoutMs: 5000,
        },
      );
    } catch (err) {
      this.#logger.warn(
        { err, events: batch.length, queueIds: [...new Set(batch.map((b) => b.event.queueId))].slice(0, 10) },
        'events not recorded',
      );
    }
    for (const b of batch) b.done();
  }
}

const batchers = new WeakMap<Nats, EventBatcher>();

/**
 * Records an event, in a batch with the others this process records meanwhile (EventBatcher).
 * Tracking must never hold mail back: a failed publish is logged, not thrown. `dedupeKey` marks
 * the event a redelivered stage records again: readers keep the first of each kind and key.
 */
export function recordEvent(
  nats: Nats,
  logger: Logger,
  kind: EventKind,
  ev: Omit<MessageEvent, 'kind' | 'at' | 'traceId'>,
  dedupeKey?: string,
  at = Date.now(),
): Promise<void> {
  const event: MessageEvent = {
    ...ev,
    kind,
    at,
    traceId: currentTraceId(),
    node: eventNode,
    dedupe: dedupeKey ?? '',
  };
  events.inc({ kind });
  let batcher = batchers.get(nats);
  if (!batcher) {
    batcher = new EventBatcher(nats, logger);
    batchers.set(nats, batcher);
  }
  return batcher.add(event);
}
