/**
 * Requests over one reply subscription per connection, for the hot paths: JetStream publishes
 * (every envelope, entry, event and body chunk) and direct gets of bodies.
 *
 * nats.js makes an Error (with its stack) for every request it sends, answered or not, to report
 * a timeout well if one comes; `noAsyncTraces` does not avoid it. Under load that was about 5% of
 * the CPU. Here a request is a publish with a reply subject `<inbox>.<token>` on a subscription
 * made once, a map of tokens, and a timer: no Error unless something fails.
 *
 * The subscription is renewed by the client after a reconnect; a request in flight across one
 * gets its answer or times out, and callers treat a timeout as "unknown" as they would any other.
 */
import { createInbox, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';

interface Waiting {
  resolve: (m: Msg) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class MuxRequests {
  readonly #nc: NatsConnection;
  readonly #prefix = createInbox();
  readonly #waiting = new Map<string, Waiting>();
  /** The reply subscription, made on the first request (and made again after it failed). */
  #listening = false;
  #next = 0;

  constructor(nc: NatsConnection) {
    this.#nc = nc;
  }

  #listen(): void {
    this.#nc.subscribe(`${this.#prefix}.*`, {
      callback: (error, msg) => {
        if (error) {
          // The subscription is gone (a permissions violation, the connection closed): the
          // requests waiting fail now, and the next one subscribes again.
          this.#listening = false;
          for (const [token, waiting] of this.#waiting) {
            this.#waiting.delete(token);
            clearTimeout(waiting.timer);
            waiting.reject(error);
          }
          return;
        }
        const token = msg.subject.slice(this.#prefix.length + 1);
        const waiting = this.#waiting.get(token);
        if (!waiting) return;
        this.#waiting.delete(token);
        clearTimeout(waiting.timer);
        waiting.resolve(msg);
      },
    });
    this.#listening = true;
  }

  /** Sends `data` to `subject` and resolves with the first reply; rejects after `timeoutMs`. */
  request(subject: string, data: Uint8Array | undefined, timeoutMs: number, headers?: MsgHdrs): Promise<Msg> {
    if (!this.#listening) this.#listen();
    const token = (this.#next++).toString(36);
    const reply = new Promise<Msg>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(token);
        reject(new Error(`no reply to a request on ${subject} within ${timeoutMs}ms`));
      }, timeoutMs);
      this.#waiting.set(token, { resolve, reject, timer });
    });
    try {
      this.#nc.publish(subject, data, { reply: `${this.#prefix}.${token}`, headers });
    } catch (error) {
      // Not sent (the connection is closed or draining): nothing will answer, stop waiting.
      const waiting = this.#waiting.get(token);
      this.#waiting.delete(token);
      if (waiting) clearTimeout(waiting.timer);
      return Promise.reject(error as Error);
    }
    return reply;
  }
}

const muxes = new WeakMap<NatsConnection, MuxRequests>();

/** The connection's multiplexed requester (one reply subscription per connection). */
export function muxOf(nc: NatsConnection): MuxRequests {
  let m = muxes.get(nc);
  if (!m) {
    m = new MuxRequests(nc);
    muxes.set(nc, m);
  }
  return m;
}

/** How long a publish is tried again while no stream answers it. */
const NO_RESPONDERS_RETRY_MS = 3000;

/** A JetStream publish acknowledgement (the stream's PubAck). */
export interface PubAck {
  stream: string;
  seq: number;
  duplicate: boolean;
}

export class JetStreamPublishError extends Error {
  readonly code: number;
  constructor(message: string, code: number) {
    super(message);
    this.name = 'JetStreamPublishError';
    this.code = code;
  }
}

/**
 * Publishes to a JetStream stream and waits for its acknowledgement: the message is stored (and
 * replicated as the stream is) when this resolves. Headers (Nats-Msg-Id, Nats-Rollup, trace
 * context) are the caller's. No responders (no stream, or its leader being elected) and a stream's
 * error reply reject with a JetStreamPublishError; callers retry as for any failed publish.
 */
export async function publishAcked(
  nc: NatsConnection,
  subject: string,
  data: Uint8Array,
  timeoutMs: number,
  headers?: MsgHdrs,
  retryNoResponders = true,
): Promise<PubAck> {
  // No responders is what a stream says while its leader is being elected (a nats-server gone):
  // asked again a few times, within the time given and at most NO_RESPONDERS_RETRY_MS, before it
  // counts as a failure (and the caller's own retry, or a redelivery, takes over). Best-effort
  // publishes (trace events) do not wait for that.
  const deadline = Date.now() + (retryNoResponders ? Math.min(timeoutMs, NO_RESPONDERS_RETRY_MS) : 0);
  let msg = await muxOf(nc).request(subject, data, timeoutMs, headers);
  for (let wait = 100; (msg.headers?.code ?? 0) === 503 && Date.now() + wait < deadline; wait *= 2) {
    await new Promise((r) => setTimeout(r, wait));
    msg = await muxOf(nc).request(subject, data, timeoutMs, headers);
  }
  const status = msg.headers?.code ?? 0;
  if (status === 503) throw new JetStreamPublishError(`no stream answered a publish on ${subject}`, 503);
  if (status !== 0 && status !== 200)
    throw new JetStreamPublishError(
      `publish on ${subject} failed: ${status} ${msg.headers?.description ?? ''}`,
      status,
    );
  let ack: {
    stream?: string;
    seq?: number;
    duplicate?: boolean;
    error?: { code?: number; description?: string };
  };
  try {
    ack = JSON.parse(Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength).toString('utf8'));
  } catch {
    throw new JetStreamPublishError(`publish on ${subject}: the reply is not a PubAck`, 500);
  }
  if (ack.error)
    throw new JetStreamPublishError(
      `publish on ${subject} refused: ${ack.error.description ?? 'unknown error'}`,
      ack.error.code ?? 500,
    );
  if (!ack.stream || typeof ack.seq !== 'number')
    throw new JetStreamPublishError(`publish on ${subject}: the reply is not a PubAck`, 500);
  return { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate === true };
}
