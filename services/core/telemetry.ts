/**
 * OpenTelemetry start-up and W3C trace-context propagation through NATS headers.
 *
 * Exporters and sampling follow the standard OTEL_* variables (OTEL_TRACES_EXPORTER,
 * OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER...). Without an exporter configured, spans are
 * still created with their ids (so trace ids reach logs, headers and Received lines), but neither
 * recorded nor exported. Configure the exporter on every service of a cluster: a trace started
 * where nothing records it is not recorded downstream either (its traceparent says unsampled).
 */
import {
  ROOT_CONTEXT,
  context,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  type Context,
  type Span,
  type SpanContext,
  type Tracer,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { AlwaysOffSampler, NoopSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { MsgHdrs } from '@nats-io/transport-node';
import { commandHistogram } from './metrics.ts';

export { SpanKind, SpanStatusCode, context, trace };
export type { Span, Tracer, Context };

let sdk: NodeSDK | undefined;

/**
 * True when spans are neither recorded nor exported (no exporter, no sampler asked for). Then a
 * span under another one is not made at all: it would record nothing, and the trace id, which is
 * all logs and headers need, is its parent's. Only root spans (a session, a consumed message
 * without a trace) are made, for their new trace ids.
 */
let recordingOff = false;

/** Whether child spans are made (see recordingOff): the Redis and NATS wrappers ask before making one. */
export function childSpansOff(): boolean {
  return recordingOff;
}

/**
 * Starts the SDK once per process.
 *
 * Redis calls are traced by core/redis.ts on each client it builds, not by
 * @opentelemetry/instrumentation-ioredis: its 0.72 release depends on @opentelemetry/instrumentation
 * 0.300, which needs @opentelemetry/api 1.10 (the `logs` API) while the SDK here is on api 1.9, so
 * its constructor throws; and patching a CommonJS module by require hooks would also depend on the
 * SDK starting before any ESM import of ioredis.
 */
export function startTelemetry(serviceName: string): void {
  if (sdk) return;
  process.env.OTEL_SERVICE_NAME ??= serviceName;
  const exporterConfigured =
    process.env.OTEL_TRACES_EXPORTER !== undefined ||
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT !== undefined ||
    process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT !== undefined;
  // No exporter asked for: keep a real tracer provider that exports nothing, and records nothing
  // either (a sampler that says no, unless OTEL_TRACES_SAMPLER says otherwise): every span still
  // gets its trace and span ids, for logs, NATS headers and Received lines, but no attributes,
  // events or timing are kept for a span nobody will see. That was 4-6% of the CPU under load.
  if (!exporterConfigured) process.env.OTEL_TRACES_EXPORTER = 'none';
  process.env.OTEL_METRICS_EXPORTER ??= 'none';
  process.env.OTEL_LOGS_EXPORTER ??= 'none';
  const sampler =
    exporterConfigured || process.env.OTEL_TRACES_SAMPLER !== undefined ? undefined : new AlwaysOffSampler();
  recordingOff = sampler !== undefined;
  sdk = new NodeSDK({
    spanProcessors: exporterConfigured ? undefined : [new NoopSpanProcessor()],
    ...(sampler ? { sampler } : {}),
  });
  sdk.start();
}

export async function stopTelemetry(): Promise<void> {
  const s = sdk;
  sdk = undefined;
  await s?.shutdown().catch(() => undefined);
}

export function tracer(name = 'postino'): Tracer {
  return trace.getTracer(name);
}

/** NATS header names are case-insensitive on read (some clients send Traceparent). */
const natsGetter: TextMapGetter<MsgHdrs> = {
  keys: (carrier) => [...carrier.keys()],
  get: (carrier, key) => {
    const v = carrier.get(key) || carrier.get(key.toLowerCase()) || findCaseInsensitive(carrier, key);
    return v === '' ? undefined : v;
  },
};

function findCaseInsensitive(h: MsgHdrs, key: string): string {
  for (const k of h.keys()) if (k.toLowerCase() === key.toLowerCase()) return h.get(k);
  return '';
}

const natsSetter: TextMapSetter<MsgHdrs> = {
  set: (carrier, key, value) => carrier.set(key, value),
};

/** Writes traceparent/tracestate of the given (or active) context into NATS headers. */
export function injectTrace(h: MsgHdrs, ctx: Context = context.active()): void {
  propagation.inject(ctx, h, natsSetter);
}

/** Continues the trace carried by NATS headers. */
export function extractTrace(h: MsgHdrs | undefined): Context {
  if (!h) return context.active();
  return propagation.extract(context.active(), h, natsGetter);
}

/** The trace id of the active span, or '' when there is none. */
export function currentTraceId(): string {
  const span = trace.getActiveSpan();
  const id = span?.spanContext().traceId ?? '';
  return /^0+$/.test(id) ? '' : id;
}

/** Runs fn in a new active span, recording an exception and ending it however fn returns. */
export async function withSpan<T>(
  name: string,
  options: { kind?: SpanKind; attributes?: Record<string, string | number | boolean>; parent?: Context },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? context.active();
  const parentSpan = recordingOff ? trace.getSpan(parent) : undefined;
  if (parentSpan) return context.with(parent, () => fn(parentSpan));
  return tracer().startActiveSpan(
    name,
    { kind: options.kind, attributes: options.attributes },
    parent,
    async (span) => {
      try {
        return await fn(span);
      } catch (err) {
        span.recordException(err as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
        throw err;
      } finally {
        span.end();
      }
    },
  );
}

// ---- sessions and commands of the mail protocols ----------------------------------------------

/** Both ends of a client connection (OpenTelemetry semantic conventions: network and server). */
export interface PeerInfo {
  remoteAddress: string;
  remotePort: number;
  localAddress: string;
  localPort: number;
}

/** How a command ended: the reply code or status, and whether a bug or a broken dependency failed it. */
export interface CommandResult {
  /** SMTP reply code (250), IMAP status (OK, NO, BAD), POP3 status (+OK, -ERR). */
  status: string | number;
  /** SMTP enhanced status code (2.1.5) or IMAP response code (TRYCREATE); never free text. */
  code?: string;
  /** The command failed inside the server (the span is marked as an error). */
  failed?: boolean;
}

/** One command in flight: its span and its duration. */
export interface CommandTrace {
  /** Runs fn with the command's span active (the storage calls it makes become its children). */
  run<T>(fn: () => T): T;
  /** Ends the span and records the duration; later calls do nothing. */
  end(result: CommandResult | null): void;
}

/**
 * A session's trace is cut into segments, each a root span (`SMTP session`) with the commands as
 * children, so no trace and no span grows without bound on a connection that lasts for hours (an
 * IMAP client in IDLE): a segment ends after this many commands or this long, and the next
 * command starts a new segment, linked to the first.
 */
export const SESSION_SEGMENT = { maxCommands: 100, maxAgeMs: 5 * 60_000 } as const;

/** The span and metric names of one protocol: `SMTP RCPT`, postino_smtp_command_seconds. */
export class ProtocolTelemetry {
  readonly protocol: string;
  readonly #known: ReadonlySet<string>;
  readonly #seconds;
  readonly #segment: { maxCommands: number; maxAgeMs: number };

  /** `known`: the command names that get their own metric label; any other is counted as `other`. */
  constructor(
    protocol: 'SMTP' | 'IMAP' | 'POP3',
    known: Iterable<string>,
    segment: { maxCommands: number; maxAgeMs: number } = SESSION_SEGMENT,
  ) {
    this.protocol = protocol;
    this.#known = new Set(known);
    this.#seconds = commandHistogram(protocol.toLowerCase());
    this.#segment = segment;
  }

  /** The metric label of a command name: bounded to the known commands. */
  label(name: string): string {
    return this.#known.has(name) ? name : 'other';
  }

  /** Starts tracing one connection. */
  session(peer: PeerInfo, attributes: Record<string, string | number | boolean> = {}): SessionTrace {
    return new SessionTrace(this, peer, attributes, this.#segment);
  }

  /** Starts timing a command; the returned function records its duration. */
  timer(name: string): () => void {
    const end = this.#seconds.startTimer({ command: this.label(name) });
    return () => void end();
  }
}

interface Segment {
  span: Span;
  context: Context;
  commands: number;
  timer: NodeJS.Timeout;
}

/** The trace of one connection: session segments as root spans, one child span per command. */
export class SessionTrace {
  readonly #telemetry: ProtocolTelemetry;
  readonly #peerAttributes: Record<string, string | number>;
  readonly #attributes: Record<string, string | number | boolean>;
  readonly #limits: { maxCommands: number; maxAgeMs: number };
  #segment: Segment | null = null;
  /** The first segment, which later ones link to (its context only: the span itself is let go). */
  #first: SpanContext | null = null;
  #segments = 0;
  #ended = false;

  constructor(
    telemetry: ProtocolTelemetry,
    peer: PeerInfo,
    attributes: Record<string, string | number | boolean>,
    limits: { maxCommands: number; maxAgeMs: number },
  ) {
    this.#telemetry = telemetry;
    this.#limits = limits;
    this.#attributes = attributes;
    this.#peerAttributes = {
      'network.peer.address': peer.remoteAddress.replace(/^::ffff:/, ''),
      'network.peer.port': peer.remotePort,
      'server.address': peer.localAddress.replace(/^::ffff:/, ''),
      'server.port': peer.localPort,
    };
    this.#open();
  }

  /** Starts a command: a child of the current segment, which is opened if there is none. */
  command(name: string): CommandTrace {
    const protocol = this.#telemetry.protocol;
    const segment = this.#segment ?? this.#open();
    const end = this.#telemetry.timer(name);
    let span: Span | null = null;
    if (segment) {
      segment.commands++;
      // Not recording: the command runs in its session's context (its trace id), with no span.
      if (!recordingOff)
        span = tracer().startSpan(
          `${protocol} ${name}`,
          {
            kind: SpanKind.INTERNAL,
            attributes: { ...this.#peerAttributes, [`${protocol.toLowerCase()}.command`]: name },
          },
          segment.context,
        );
      // The segment is full: the next command starts a new one.
      if (segment.commands >= this.#limits.maxCommands) this.#close();
    }
    const active = segment ? (span ? trace.setSpan(segment.context, span) : segment.context) : null;
    let done = false;
    return {
      run: (fn) => (active ? context.with(active, fn) : fn()),
      end: (result) => {
        if (done) return;
        done = true;
        end();
        if (!span) return;
        const prefix = protocol.toLowerCase();
        if (result) {
          span.setAttribute(`${prefix}.response.status`, result.status);
          if (result.code) span.setAttribute(`${prefix}.response.code`, result.code);
          if (result.failed) span.setStatus({ code: SpanStatusCode.ERROR });
        } else {
          span.setAttribute(`${prefix}.response.status`, 'none');
        }
        span.end();
      },
    };
  }

  /** The next command starts a new trace (SMTP: each mail transaction after the first is its own trace). */
  newTrace(): void {
    this.#close();
  }

  /** The connection is gone. */
  end(): void {
    this.#ended = true;
    this.#close();
  }

  #open(): Segment | null {
    if (this.#ended) return null;
    const protocol = this.#telemetry.protocol;
    const span = tracer().startSpan(
      `${protocol} session`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          ...this.#peerAttributes,
          'network.transport': 'tcp',
          'network.protocol.name': protocol.toLowerCase(),
          'postino.session.segment': ++this.#segments,
          ...this.#attributes,
        },
        // Later segments point at the start of the connection.
        links: this.#first ? [{ context: this.#first }] : [],
      },
      ROOT_CONTEXT,
    );
    this.#first ??= span.spanContext();
    const timer = setTimeout(() => this.#close(), this.#limits.maxAgeMs);
    timer.unref();
    this.#segment = { span, context: trace.setSpan(ROOT_CONTEXT, span), commands: 0, timer };
    return this.#segment;
  }

  #close(): void {
    const segment = this.#segment;
    if (!segment) return;
    this.#segment = null;
    clearTimeout(segment.timer);
    segment.span.setAttribute('postino.session.commands', segment.commands);
    segment.span.end();
  }
}
