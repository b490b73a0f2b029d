/** Message tracking: the events of one message (by queue id or Message-ID) from the EVENTS stream. */
import { DeliverPolicy } from '@nats-io/jetstream';
import { pb, decode } from '../core/codec.ts';
import { STREAMS, SUBJECTS, type Nats } from '../core/nats.ts';

export interface TrackedEvent {
  at: string;
  kind: string;
  queueId: string;
  messageId: string;
  recipient: string;
  service: string;
  detail: string;
  traceId: string;
  mailFrom: string;
  node: string;
}

/** Scans the EVENTS stream (bounded by its retention) and returns the matching events in order. */
export async function traceMessage(nats: Nats, id: string): Promise<TrackedEvent[]> {
  const info = await nats.jsm.streams.info(STREAMS.EVENTS);
  const last = info.state.last_seq;
  if (info.state.messages === 0) return [];
  const consumer = await nats.js.consumers.get(STREAMS.EVENTS, { deliver_policy: DeliverPolicy.All });
  const wanted = new Set([id]);
  const out: TrackedEvent[] = [];
  /** `kind dedupe` of the events kept: a redelivered stage's repeat is left out. */
  const kept = new Set<string>();
  const iter = await consumer.consume({ max_messages: 1000 });
  for await (const m of iter) {
    // Batches (MessageEvents), and single events as older releases published them.
    const batch =
      m.subject === SUBJECTS.eventBatch
        ? decode(pb.MessageEvents, m.data).events.map((e) => pb.MessageEvent.fromObject(e))
        : [decode(pb.MessageEvent, m.data)];
    for (const e of batch) {
      // A bounce's queue id is <original>B<n>: following one id shows its bounce too.
      const matches =
        wanted.has(e.queueId) ||
        wanted.has(e.messageId) ||
        [...wanted].some((w) => e.queueId.startsWith(`${w}B`));
      if (!matches) continue;
      if (e.dedupe) {
        const key = `${e.kind} ${e.dedupe}`;
        if (kept.has(key)) continue;
        kept.add(key);
      }
      if (e.queueId) wanted.add(e.queueId);
      out.push({
        at: new Date(Number(e.at)).toISOString(),
        kind: e.kind,
        queueId: e.queueId,
        messageId: e.messageId,
        recipient: e.recipient,
        service: e.service,
        detail: e.detail,
        traceId: e.traceId,
        mailFrom: e.mailFrom,
        node: e.node,
      });
    }
    if (m.seq >= last) break;
  }
  iter.stop();
  // Stages publish concurrently: order by the time each event happened.
  return out.sort((a, b) => a.at.localeCompare(b.at));
}
