/**
 * OpenTelemetry start-up and W3C trace-context propagation through NATS headers.
 *
 * Exporters and sampling follow the standard OTEL_* variables (OTEL_TRACES_EXPORTER,
 * OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER...). Without an exporter configured, spans are
 * still created (so trace ids reach logs, headers and Received lines) and simply not exported.
 */
import {
  context,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  type Context,
  type Span,
  type Tracer,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { NoopSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { MsgHdrs } from '@nats-io/transport-node';

export { SpanKind, SpanStatusCode, context, trace };
export type { Span, Tracer, Context };

let sdk: NodeSDK | undefined;

/** Starts the SDK once per process. */
export function startTelemetry(serviceName: string): void {
  if (sdk) return;
  process.env.OTEL_SERVICE_NAME ??= serviceName;
  const exporterConfigured =
    process.env.OTEL_TRACES_EXPORTER !== undefined ||
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT !== undefined ||
    process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT !== undefined;
  // No exporter asked for: keep a real tracer provider (ids for logs and headers) that exports nothing.
  if (!exporterConfigured) process.env.OTEL_TRACES_EXPORTER = 'none';
  process.env.OTEL_METRICS_EXPORTER ??= 'none';
  process.env.OTEL_LOGS_EXPORTER ??= 'none';
  sdk = new NodeSDK({ spanProcessors: exporterConfigured ? undefined : [new NoopSpanProcessor()] });
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
