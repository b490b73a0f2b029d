/** Prometheus metrics shared by the services of one process, exposed on /metrics. */
import { isMainThread } from 'node:worker_threads';
import client from 'prom-client';

export const registry = new client.Registry();
// Process metrics once per process: a worker thread's registry is summed with the main thread's
// (services/core/threads.ts), and the process's CPU and memory would count once per thread.
if (isMainThread) client.collectDefaultMetrics({ register: registry, prefix: 'postino_' });

const cache = new Map<string, unknown>();

function once<T>(name: string, make: () => T): T {
  let m = cache.get(name) as T | undefined;
  if (!m) {
    m = make();
    cache.set(name, m);
  }
  return m;
}

export function counter(name: string, help: string, labelNames: string[] = []): client.Counter<string> {
  return once(name, () => new client.Counter({ name, help, labelNames, registers: [registry] }));
}

export function gauge(name: string, help: string, labelNames: string[] = []): client.Gauge<string> {
  return once(name, () => new client.Gauge({ name, help, labelNames, registers: [registry] }));
}

export function histogram(
  name: string,
  help: string,
  labelNames: string[] = [],
  buckets: number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
): client.Histogram<string> {
  return once(name, () => new client.Histogram({ name, help, labelNames, buckets, registers: [registry] }));
}

/** Command durations: most commands take well under a millisecond, DATA and FETCH of a big message seconds. */
const COMMAND_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/** postino_<protocol>_command_seconds{command}: the time from a command to its (final) reply. */
export function commandHistogram(protocol: string): client.Histogram<string> {
  return histogram(
    `postino_${protocol}_command_seconds`,
    `Time from a ${protocol.toUpperCase()} command to its final reply, by command (unknown commands: other)`,
    ['command'],
    COMMAND_BUCKETS,
  );
}
