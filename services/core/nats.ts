/**
 * NATS and JetStream: connection, idempotent provisioning of streams and consumers, traced
 * publish/request, and the consume loop every stage uses.
 */
import { muxOf, publishAcked } from './nats-mux.ts';
import { readFileSync } from 'node:fs';
import {
  connect,
  credsAuthenticator,
  headers,
  nkeyAuthenticator,
  type ConnectionOptions,
  type NatsConnection,
  type Msg,
} from '@nats-io/transport-node';
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
  /** A single event (as older releases published them; readers still take them). */
  event: (kind: string) => `mail.events.${kind}`,
  /** A batch of events (MessageEvents). */
  eventBatch: 'mail.events.batch',
  rpc: (op: string) => `mbox.rpc.${op}`,
  changes: (userToken: string) => `mbox.changes.${userToken}`,
  directoryChanges: 'dir.changes',
} as const;

/**
 * How long a delivered message stays with a consumer without an ack or a progress heartbeat
 * (handlers send one every third of it): the in-flight work of a replica that died comes back to
 * the others after at most this long.
 */
const ACK_WAIT_MS = 15_000;

/** Durable consumers: one per stage, shared by that stage's replicas. */
export const CONSUMERS = {
  router: { stream: STREAMS.INGRESS, durable: 'router', filter: 'mail.ingress', ackWaitMs: ACK_WAIT_MS },
  mailboxStore: {
    stream: STREAMS.LOCAL,
    durable: 'mailbox-store',
    filter: 'mail.local.>',
    ackWaitMs: ACK_WAIT_MS,
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

/**
 * How a client proves who it is to NATS and checks the server. Credentials may also ride in
 * NATS_URL (`nats://user:password@host` or `nats://token@host`); a creds file (JWT + nkey seed) or
 * an nkey seed file take precedence over them.
 */
export interface NatsSecurity {
  user?: string;
  password?: string;
  /** A `.creds` file (decentralized JWT auth, `nsc generate creds`). */
  credsFile?: string;
  /** A file holding an nkey user seed (`SU...`). */
  nkeySeedFile?: string;
  /** PEM CA bundle the server certificate must chain to (default: the system roots). */
  tlsCaFile?: string;
  /** Client certificate and key, for servers that verify clients (`verify: true`). */
  tlsCertFile?: string;
  tlsKeyFile?: string;
}

/**
 * The connect options for NATS_URL and the security settings: the servers without their
 * credentials (so they never reach a log), one authenticator, and TLS when the URL says `tls://` or
 * a TLS file is set (the client then refuses a server that does not offer TLS).
 */
export function natsConnectOptions(url: string, security: NatsSecurity = {}): ConnectionOptions {
  const servers: string[] = [];
  let user = security.user ?? '';
  let password = security.password ?? '';
  let token = '';
  let tls = false;
  for (const raw of url
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const u = new URL(raw);
    if (u.protocol === 'tls:') tls = true;
    if (u.username && !user && !token) {
      if (u.password) {
        user = decodeURIComponent(u.username);
        password = decodeURIComponent(u.password);
      } else token = decodeURIComponent(u.username);
    }
    servers.push(`${u.protocol}//${u.host}`);
  }
  const opts: ConnectionOptions = { servers };
  if (security.credsFile) {
    const file = security.credsFile;
    opts.authenticator = credsAuthenticator(() => readFileSync(file));
  } else if (security.nkeySeedFile) {
    const file = security.nkeySeedFile;
    opts.authenticator = nkeyAuthenticator(() => new TextEncoder().encode(readFileSync(file, 'utf8').trim()));
  } else if (user) {
    opts.user = user;
    opts.pass = password;
  } else if (token) {
    opts.token = token;
  }
  if (tls || security.tlsCaFile || security.tlsCertFile) {
    opts.tls = {
      ...(security.tlsCaFile ? { caFile: security.tlsCaFile } : {}),
      ...(security.tlsCertFile ? { certFile: security.tlsCertFile } : {}),
      ...(security.tlsKeyFile ? { keyFile: security.tlsKeyFile } : {}),
    };
  }
  return opts;
}

export async function connectNats(
  url: string,
  name: string,
  logger: Logger,
  security: NatsSecurity = {},
): Promise<Nats> {
  const nc = await connect({
    ...natsConnectOptions(url, security),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: false,
    // Every request otherwise captures stack traces up front in case it fails (several Error
    // objects per message on the hot paths); failures still carry their message and code.
    noAsyncTraces: true,
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

/** True when every field of `want` already has that value in `have`. */
function sameConfig(want: object, have: object): boolean {
  const h = have as Record<string, unknown>;
  return Object.entries(want).every(([k, v]) => JSON.stringify(h[k]) === JSON.stringify(v));
}

/**
 * Runs a JetStream management call again while it fails (a request times out while a clustered
 * JetStream elects its leaders, or while every replica of every service starts at once after a
 * full restart), with a growing wait, until the deadline; then the last error is thrown.
 */
export async function retryJetStream<T>(fn: () => Promise<T>, deadlineMs = 60_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (let wait = 250; ; wait = Math.min(wait * 2, 5000)) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() + wait > end) throw err;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/**
 * Creates or updates every stream and durable consumer. Safe to run from every replica at every
 * start: nothing is written when the configuration is already right (on a clustered JetStream,
 * every replica of every service updating the streams at once would queue behind one another in
 * the meta group), and calls that time out are tried again.
 */
export async function provision(nats: Nats, replicas: number): Promise<void> {
  await retryJetStream(() => provisionOnce(nats, replicas));
}

async function provisionOnce(nats: Nats, replicas: number): Promise<void> {
  for (const cfg of streamConfigs(replicas)) {
    const name = cfg.name;
    const existing = await nats.jsm.streams.info(name).catch(() => null);
    if (!existing) {
      await nats.jsm.streams.add(cfg).catch(async (err: unknown) => {
        // Another replica created it between our info and add.
        if (!(await nats.jsm.streams.info(name).catch(() => null))) throw err;
      });
    } else if (!sameConfig(cfg, existing.config)) {
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
      const update = { ack_wait: cfg.ack_wait, max_ack_pending: cfg.max_ack_pending };
      if (!sameConfig(update, existing.config)) await nats.jsm.consumers.update(c.stream, c.durable, update);
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
  opts: {
    msgId?: string;
    stream: string;
    timeoutMs?: number;
    /** False for a best-effort publish: no waiting out a stream's leader election. */
    retryNoResponders?: boolean;
  },
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
      if (opts.msgId) h.set('Nats-Msg-Id', opts.msgId);
      // One reply subscription per connection, not nats.js's request per publish (nats-mux.ts).
      await publishAcked(nats.nc, subject, data, opts.timeoutMs ?? 10_000, h, opts.retryNoResponders ?? true);
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
      // One reply subscription per connection (nats-mux.ts), not nats.js's request per call.
      const reply = await muxOf(nats.nc).request(subject, data, timeoutMs, h);
      if ((reply.headers?.code ?? 0) === 503) throw new Error(`no responders on ${subject}`);
      return reply;
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

/** Messages being handled by every consumer of this thread, and the most at once since last asked. */
let handling = 0;
let handlingPeak = 0;

/**
 * The most messages this thread's consumers were handling at once since the last call: a backlog
 * shows as a full window of in-flight messages, a lone message as one.
 */
export function takeHandlingPeak(): number {
  const peak = handlingPeak;
  handlingPeak = handling;
  return peak;
}

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
        // Not waited for (no ackAck round trip, as delivery's partition consumer): everything the
        // handler produced is acked by JetStream already (invariant 2), and a lost ack only
        // redelivers the message, which these stages handle idempotently (msg ids, idempotency
        // keys, tombstoned holds, deduplicated events). One server reply less per message.
        msg.ack();
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
        // Pull requests last 5 s (heartbeats every 2.5 s), not the default 30 s: when the
        // nats-server holding them dies, the loss is noticed and the pull renewed within seconds.
        const iter = await consumer.consume({ max_messages: opts.concurrency, expires: 5_000 });
        iterStop = () => void iter.stop();
        for await (const msg of iter) {
          if (stopped) {
            msg.nak();
            continue;
          }
          const p = context.with(trace.deleteSpan(context.active()), () => handle(msg));
          inFlight.add(p);
          handling++;
          if (handling > handlingPeak) handlingPeak = handling;
          void p.finally(() => {
            inFlight.delete(p);
            handling--;
          });
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
