/**
 * NATS and JetStream: connection, idempotent provisioning of streams and consumers, traced
 * publish/request, and the consume loop every stage uses.
 */
import { connect, headers, type NatsConnection, type Msg } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type ConsumerConfig,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type StreamConfig,
} from '@nats-io/jetstream';
import type { Logger } from 'pino';
import { SpanKind, context, extractTrace, injectTrace, trace, withSpan } from './telemetry.ts';
import { counter, histogram } from './metrics.ts';

export const STREAMS = {
  INGRESS: 'INGRESS',
  LOCAL: 'LOCAL',
  OUTBOUND: 'OUTBOUND',
  EVENTS: 'EVENTS',
} as const;

export const SUBJECTS = {
  ingress: 'mail.ingress',
  local: (partition: number) => `mail.local.${partition}`,
  outbound: (partition: number) => `mail.outbound.${partition}`,
  event: (kind: string) => `mail.events.${kind}`,
  rpc: (op: string) => `mbox.rpc.${op}`,
  changes: (userToken: string) => `mbox.changes.${userToken}`,
  directoryChanges: 'dir.changes',
} as const;

/** Durable consumers: one per stage, shared by that stage's replicas. */
export const CONSUMERS = {
  router: { stream: STREAMS.INGRESS, durable: 'router', filter: 'mail.ingress', ackWaitMs: 60_000 },
  mailboxStore: {
    stream: STREAMS.LOCAL,
    durable: 'mailbox-store',
    filter: 'mail.local.>',
    ackWaitMs: 60_000,
  },
  // OUTBOUND has no shared consumer: one durable per partition (`delivery-<n>` on
  // mail.outbound.<n>), consumed only by the replica holding the partition's lease (services/delivery).
} as const;

/** The durable consumer of one OUTBOUND partition (work-queue streams forbid overlapping filters). */
export const outboundConsumer = (partition: number) => ({
  stream: STREAMS.OUTBOUND,
  durable: `delivery-${partition}`,
  filter: SUBJECTS.outbound(partition),
});

export type ConsumerName = keyof typeof CONSUMERS;

export interface Nats {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
}

export async function connectNats(url: string, name: string, logger: Logger): Promise<Nats> {
  const nc = await connect({
    servers: url.split(',').map((s) => s.trim()),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: false,
  });
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect' || s.type === 'error') {
        logger.warn({ nats: s.type, server: 'server' in s ? s.server : undefined }, 'nats connection status');
      }
    }
  })();
  const jsm = await jetstreamManager(nc);
  return { nc, js: jetstream(nc), jsm };
}

const DAY = 86_400_000;
const ns = (ms: number) => ms * 1_000_000;

function streamConfigs(replicas: number): (Partial<StreamConfig> & { name: string })[] {
  const common = {
    storage: StorageType.File,
    num_replicas: replicas,
    duplicate_window: ns(2 * 60_000),
    discard: DiscardPolicy.Old,
  };
  return [
    { ...common, name: STREAMS.INGRESS, subjects: ['mail.ingress'], retention: RetentionPolicy.Workqueue },
    { ...common, name: STREAMS.LOCAL, subjects: ['mail.local.>'], retention: RetentionPolicy.Workqueue },
    {
      ...common,
      name: STREAMS.OUTBOUND,
      subjects: ['mail.outbound.>'],
      retention: RetentionPolicy.Workqueue,
    },
    {
      ...common,
      name: STREAMS.EVENTS,
      subjects: ['mail.events.>'],
      retention: RetentionPolicy.Limits,
      max_age: ns(30 * DAY),
      max_bytes: 1024 ** 3,
    },
  ];
}

/** Creates or updates every stream and durable consumer. Safe to run from every replica at every start. */
export async function provision(nats: Nats, replicas: number): Promise<void> {
  for (const cfg of streamConfigs(replicas)) {
    const name = cfg.name;
    const existing = await nats.jsm.streams.info(name).catch(() => null);
    if (!existing) {
      await nats.jsm.streams.add(cfg).catch(async (err: unknown) => {
        // Another replica created it between our info and add.
        if (!(await nats.jsm.streams.info(name).catch(() => null))) throw err;
      });
    } else {
      await nats.jsm.streams.update(name, { ...existing.config, ...cfg });
    }
  }
  for (const c of Object.values(CONSUMERS)) {
    const cfg: Partial<ConsumerConfig> = {
      durable_name: c.durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: c.filter,
      ack_wait: ns(c.ackWaitMs),
      max_deliver: -1,
      max_ack_pending: 10_000,
    };
    const existing = await nats.jsm.consumers.info(c.stream, c.durable).catch(() => null);
    if (!existing) {
      await nats.jsm.consumers.add(c.stream, cfg).catch(async (err: unknown) => {
        if (!(await nats.jsm.consumers.info(c.stream, c.durable).catch(() => null))) throw err;
      });
    } else {
      await nats.jsm.consumers.update(c.stream, c.durable, {
        ack_wait: cfg.ack_wait,
        max_ack_pending: cfg.max_ack_pending,
      });
    }
  }
}

const published = counter('postino_nats_published_total', 'Messages published to JetStream', ['stream']);

/**
 * Publishes to JetStream with the active trace context in the headers, and waits for the ack
 * (the message is durable when this resolves). `msgId` de-duplicates redeliveries.
 */
export async function publish(
  nats: Nats,
  subject: string,
  data: Uint8Array,
  opts: { msgId?: string; stream: string },
): Promise<void> {
  await withSpan(
    `send ${opts.stream}`,
    {
      kind: SpanKind.PRODUCER,
      attributes: {
        'messaging.system': 'nats',
        'messaging.destination.name': subject,
        'messaging.operation.type': 'send',
        ...(opts.msgId ? { 'messaging.message.id': opts.msgId } : {}),
      },
    },
    async () => {
      const h = headers();
      injectTrace(h);
      await nats.js.publish(subject, data, { headers: h, msgID: opts.msgId, timeout: 10_000 });
      published.inc({ stream: opts.stream });
    },
  );
}

/** Core NATS request with trace context (mailbox RPC). */
export async function request(
  nats: Nats,
  subject: string,
  data: Uint8Array,
  timeoutMs = 10_000,
): Promise<Msg> {
  return withSpan(
    `send ${subject}`,
    {
      kind: SpanKind.CLIENT,
      attributes: {
        'messaging.system': 'nats',
        'messaging.destination.name': subject,
        'messaging.operation.type': 'send',
      },
    },
    async () => {
      const h = headers();
      injectTrace(h);
      return nats.nc.request(subject, data, { timeout: timeoutMs, headers: h });
    },
  );
}

/** Core NATS publish with trace context (notifications). */
export function notify(nats: Nats, subject: string, data: Uint8Array): void {
  const h = headers();
  injectTrace(h);
  nats.nc.publish(subject, data, { headers: h });
}

/** What a handler decides for one message. */
export type Outcome = { ack: true } | { retryInMs: number; reason: string } | { drop: string };

export interface ConsumeOptions {
  name: ConsumerName;
  logger: Logger;
  /** Messages processed at once by this replica. */
  concurrency: number;
  handler: (msg: JsMsg) => Promise<Outcome>;
}

const processed = counter('postino_stage_processed_total', 'Messages processed by a stage', [
  'consumer',
  'outcome',
]);
const processSeconds = histogram('postino_stage_process_seconds', 'Time to process one message', [
  'consumer',
]);

/**
 * Pulls from a durable consumer and runs the handler for each message in the trace carried by its
 * headers. The message is acked only after the handler resolved with `ack` (invariant 2); a thrown
 * error or a retry outcome naks it with a delay, so JetStream redelivers it.
 */
export function consume(nats: Nats, opts: ConsumeOptions): { stop(): Promise<void> } {
  const c = CONSUMERS[opts.name];
  let stopped = false;
  const inFlight = new Set<Promise<void>>();
  let iterStop: (() => void) | undefined;

  const handle = async (msg: JsMsg): Promise<void> => {
    const parent = extractTrace(msg.headers);
    const heartbeat = setInterval(() => msg.working(), Math.max(1000, c.ackWaitMs / 3));
    const endTimer = processSeconds.startTimer({ consumer: c.durable });
    try {
      const outcome = await withSpan(
        `process ${c.stream}`,
        {
          kind: SpanKind.CONSUMER,
          parent,
          attributes: {
            'messaging.system': 'nats',
            'messaging.destination.name': msg.subject,
            'messaging.operation.type': 'process',
            'messaging.consumer.group.name': c.durable,
            'messaging.message.id': String(msg.seq),
          },
        },
        () => opts.handler(msg),
      ).catch((err: unknown): Outcome => {
        opts.logger.error({ err, subject: msg.subject, seq: msg.seq }, 'handler failed; will retry');
        return {
          retryInMs: Math.min(60_000, 1000 * 2 ** Math.min(msg.info.deliveryCount, 6)),
          reason: String(err),
        };
      });
      if ('ack' in outcome) {
        await msg
          .ackAck()
          .catch((err: unknown) =>
            opts.logger.warn({ err }, 'ack not confirmed; message may be redelivered'),
          );
        processed.inc({ consumer: c.durable, outcome: 'ack' });
      } else if ('retryInMs' in outcome) {
        msg.nak(outcome.retryInMs);
        processed.inc({ consumer: c.durable, outcome: 'retry' });
      } else {
        opts.logger.error({ subject: msg.subject, seq: msg.seq, reason: outcome.drop }, 'message dropped');
        msg.term(outcome.drop);
        processed.inc({ consumer: c.durable, outcome: 'drop' });
      }
    } finally {
      clearInterval(heartbeat);
      endTimer();
    }
  };

  const loop = async (): Promise<void> => {
    while (!stopped) {
      try {
        const consumer = await nats.js.consumers.get(c.stream, c.durable);
        const iter = await consumer.consume({ max_messages: opts.concurrency });
        iterStop = () => void iter.stop();
        for await (const msg of iter) {
          if (stopped) {
            msg.nak();
            continue;
          }
          const p = context.with(trace.deleteSpan(context.active()), () => handle(msg));
          inFlight.add(p);
          void p.finally(() => inFlight.delete(p));
          while (inFlight.size >= opts.concurrency) await Promise.race(inFlight);
        }
      } catch (err) {
        if (stopped) break;
        opts.logger.warn({ err, consumer: c.durable }, 'consumer loop failed; restarting');
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  };
  const done = loop();

  return {
    async stop() {
      stopped = true;
      iterStop?.();
      await Promise.allSettled([...inFlight]);
      await Promise.race([done, new Promise((r) => setTimeout(r, 2000))]);
    },
  };
}
