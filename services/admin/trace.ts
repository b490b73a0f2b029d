/** Message tracking: the events of one message (by queue id or Message-ID) from the EVENTS stream. */
import { DeliverPolicy } from '@nats-io/jetstream';
import { pb, decode } from '../core/codec.ts';
import { STREAMS, type Nats } from '../core/nats.ts';

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
  const iter = await consumer.consume({ max_messages: 1000 });
  for await (const m of iter) {
    const e = decode(pb.MessageEvent, m.data);
    // A bounce's queue id is <original>B<n>: following one id shows its bounce too.
    if (
      wanted.has(e.queueId) ||
      wanted.has(e.messageId) ||
      [...wanted].some((w) => e.queueId.startsWith(`${w}B`))
    ) {
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
