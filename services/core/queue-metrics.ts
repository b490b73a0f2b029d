/**
 * Queue metrics read from JetStream on each scrape: how much work waits at each stage and for how
 * long, and how much the blob store holds. Read, not counted, so every replica reports the same
 * truth and a restarted replica starts right.
 */
import client from 'prom-client';
import { BLOB_BUCKET } from './blobs.ts';
import { STREAMS, type Nats } from './nats.ts';

/** The streams whose messages are work waiting for a stage. */
const WORK_QUEUES = [STREAMS.INGRESS, STREAMS.LOCAL, STREAMS.OUTBOUND];
import { registry } from './metrics.ts';
import type { Health } from './http.ts';

let registered = false;

/** Registers the gauges once per process; each scrape asks JetStream for consumer and stream info. */
export function registerQueueMetrics(nats: Nats): void {
  if (registered) return;
  registered = true;
  new client.Gauge({
    name: 'postino_queue_depth',
    help: 'Messages waiting for a stage: not yet delivered to it (pending) plus delivered and not yet acknowledged (unacked)',
    labelNames: ['stream', 'consumer', 'state'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const stream of WORK_QUEUES) {
        // Per-partition consumers (delivery-0, delivery-1...) are summed under their stage's name.
        const sums = new Map<string, { pending: number; unacked: number }>();
        try {
          for await (const info of nats.jsm.consumers.list(stream)) {
            const stage = info.name.replace(/-\d+$/, '');
            const sum = sums.get(stage) ?? { pending: 0, unacked: 0 };
            sum.pending += info.num_pending;
            sum.unacked += info.num_ack_pending;
            sums.set(stage, sum);
          }
        } catch {
          continue;
        }
        for (const [consumer, sum] of sums) {
          this.set({ stream, consumer, state: 'pending' }, sum.pending);
          this.set({ stream, consumer, state: 'unacked' }, sum.unacked);
        }
      }
    },
  });
  new client.Gauge({
    name: 'postino_queue_oldest_age_seconds',
    help: 'Age of the oldest message still in a work-queue stream (0 when empty)',
    labelNames: ['stream'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const stream of WORK_QUEUES) {
        const info = await nats.jsm.streams.info(stream).catch(() => null);
        if (!info) continue;
        const first = info.state.messages > 0 ? Date.parse(info.state.first_ts) : NaN;
        this.set({ stream }, Number.isFinite(first) ? Math.max(0, (Date.now() - first) / 1000) : 0);
      }
    },
  });
  new client.Gauge({
    name: 'postino_blob_store_bytes',
    help: 'Bytes held by the blob store (the JetStream object store bucket, including chunk overhead)',
    registers: [registry],
    async collect() {
      const info = await nats.jsm.streams.info(`OBJ_${BLOB_BUCKET}`).catch(() => null);
      this.set(info?.state.bytes ?? 0);
    },
  });
}

let dependencyRegistered = false;

/** postino_dependency_up{dependency="nats"|"redis"}: 1 while this process reaches it (its readiness checks). */
export function registerDependencyMetric(health: Health): void {
  if (dependencyRegistered) return;
  dependencyRegistered = true;
  new client.Gauge({
    name: 'postino_dependency_up',
    help: 'Whether this process reaches a dependency (1) or not (0)',
    labelNames: ['dependency'],
    registers: [registry],
    collect() {
      const problems = health.problems();
      for (const dependency of ['nats', 'redis']) {
        this.set({ dependency }, problems.some((p) => p.startsWith(`${dependency}:`)) ? 0 : 1);
      }
    },
  });
}
