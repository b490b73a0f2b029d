/**
 * `postino up` on more than one core. A Node.js process runs JavaScript on one core; the embedded
 * default runs every service, so under load one core saturates while the other idles. Here the
 * services run in groups, each group on a worker thread of its own: its own event loop, NATS and
 * Redis connections, exactly as separate processes would (they share no state but what is in NATS
 * and Redis), yet still one process with one PID, one HTTP port and one SIGTERM.
 *
 * The main thread keeps the HTTP port (/healthz, /readyz, /metrics and the admin API). Each worker
 * pushes its readiness problems when they change, and answers metric requests with its registry as
 * JSON, which the main thread sums with its own (prom-client's AggregatorRegistry). Process-wide
 * gauges (default process metrics, queue depths, dependency status) are registered on the main
 * thread only, so the sum counts them once.
 *
 * A worker that fails stops the process: a broken thread is a crashed service, to be restarted
 * with the rest rather than left half-running.
 */
import { readlinkSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import { loadConfig, type Config } from './config.ts';
import { registry } from './metrics.ts';
import { takeHandlingPeak } from './nats.ts';
import { runServices, type Running, type ServiceStart } from './runtime.ts';
import type { Health } from './http.ts';

type Metrics = MetricObjectWithValues<MetricValue<string>>[];

/** Main thread → worker. */
type Command = { type: 'stop' } | { type: 'metrics'; id: number };

/** Worker → main thread. */
type Report =
  | { type: 'started' }
  | { type: 'failed'; error: string }
  | { type: 'health'; problems: string[] }
  | { type: 'metrics'; id: number; metrics: Metrics };

export interface ThreadPlan {
  /**
   * Groups in start order; the group `main` runs on the main thread. `shared`: the group is one of
   * several replicas of the same services, which share their listening ports (SO_REUSEPORT).
   */
  groups: { name: string; services: string[]; shared?: boolean }[];
}

/**
 * The split of `postino up`'s services (given in start order) over `threads` threads: the mail
 * pipeline behind the doors (router, mailbox-store, delivery) first, then the SMTP door, on
 * `smtpThreads` threads of its own that share its ports. Access (IMAP, POP3) and admin stay on the
 * main thread, which holds the HTTP port the admin API needs.
 *
 * More than one SMTP thread: an SMTP session is a chain of short round trips (to the client, to
 * NATS, to Redis), and one thread answers one session's command at a time, so on its own it
 * leaves CPU unused while it waits for the next; Postfix runs many smtpd processes for the same
 * reason. Each thread is an ingress replica, as a pod would be: its own connections, leases and
 * limits (SMTP_MAX_CONNECTIONS and SMTP_MAX_CONNECTIONS_PER_IP count per replica).
 */
export function planThreads(services: string[], threads: number, smtpThreads = 1): ThreadPlan {
  const pipeline = ['mailbox-store', 'router', 'delivery'];
  const ingress = ['smtp-ingress'];
  if (threads <= 1) return { groups: [{ name: 'main', services }] };
  const pick = (names: string[]) => services.filter((s) => names.includes(s));
  const apart = threads >= 3 ? [...pipeline, ...ingress] : pipeline;
  const doors = threads >= 3 && pick(ingress).length > 0 ? Math.max(1, smtpThreads) : 0;
  const groups = [
    { name: 'pipeline', services: pick(pipeline) },
    { name: 'main', services: services.filter((s) => !apart.includes(s)) },
    ...Array.from({ length: doors }, (_, i) => ({
      name: i === 0 ? 'ingress' : `ingress-${i + 1}`,
      services: pick(ingress),
      ...(doors > 1 ? { shared: true } : {}),
    })),
  ];
  return { groups: groups.filter((g) => g.services.length > 0) };
}

/** A worker thread running one group of services. */
class ServiceThread {
  readonly name: string;
  readonly #worker: Worker;
  #problems: string[] = ['starting'];
  #nextId = 0;
  readonly #pending = new Map<number, (m: Metrics) => void>();
  readonly #stopped: Promise<void>;
  #started!: Promise<void>;

  constructor(name: string, services: string[], shared: boolean, onFailure: (err: Error) => void) {
    this.name = name;
    this.#worker = new Worker(new URL(import.meta.url), {
      workerData: { thread: name, services },
      name: `postino-${name}`,
      // Replicas of the same door on one host share its ports.
      env: shared ? { ...process.env, SMTP_REUSE_PORT: 'true' } : process.env,
    });
    let stopping = false;
    let resolveStarted!: () => void;
    let rejectStarted!: (err: Error) => void;
    this.#started = new Promise((resolve, reject) => {
      resolveStarted = resolve;
      rejectStarted = reject;
    });
    this.#stopped = new Promise((resolve) => {
      this.#worker.once('exit', (code) => {
        for (const reply of this.#pending.values()) reply([]);
        this.#pending.clear();
        this.#problems = ['stopped'];
        const err = new Error(`thread ${name} exited with code ${code}`);
        rejectStarted(err);
        if (!stopping) onFailure(err);
        resolve();
      });
    });
    this.#worker.on('error', (err) => {
      rejectStarted(err);
      if (!stopping) onFailure(err);
    });
    this.#worker.on('message', (m: Report) => {
      switch (m.type) {
        case 'started':
          return resolveStarted();
        case 'failed':
          return rejectStarted(new Error(`thread ${name}: ${m.error}`));
        case 'health':
          this.#problems = m.problems;
          return;
        case 'metrics': {
          const reply = this.#pending.get(m.id);
          this.#pending.delete(m.id);
          return reply?.(m.metrics);
        }
      }
    });
    this.stop = async () => {
      stopping = true;
      this.#send({ type: 'stop' });
      await this.#stopped;
    };
  }

  readonly stop: () => Promise<void>;

  started(): Promise<void> {
    return this.#started;
  }

  problems(): string[] {
    return this.#problems;
  }

  /** This thread's metrics; none when it does not answer within a second (a scrape is never stuck). */
  metrics(): Promise<Metrics> {
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        resolve([]);
      }, 1000);
      this.#pending.set(id, (m) => {
        clearTimeout(timer);
        resolve(m);
      });
      this.#send({ type: 'metrics', id });
    });
  }

  #send(c: Command): void {
    try {
      this.#worker.postMessage(c);
    } catch {
      // The thread is gone: its exit handler has answered everything.
    }
  }
}

/**
 * Starts `services` over the threads of `plan`: the groups in order, each only once the one before
 * it is up (the consumers before the doors, as in one thread). Stops them in the reverse order.
 */
export async function runThreaded(
  config: Config,
  plan: ThreadPlan,
  table: Record<string, ServiceStart>,
  onFailure: (err: Error) => void,
): Promise<Running> {
  const threads: ServiceThread[] = [];
  let main: Running | undefined;
  // Not ready while a later group (the SMTP door) is still starting after the main thread's.
  let starting = true;
  const stopAll = async () => {
    // Reverse start order: the doors close first, the pipeline behind them drains last.
    for (const g of [...plan.groups].reverse()) {
      if (g.name === 'main') await main?.stop();
      else await threads.find((t) => t.name === g.name)?.stop();
    }
  };
  try {
    for (const g of plan.groups) {
      if (g.name === 'main') {
        main = await runServices(config, g.services, table, { gatherMetrics, addReadiness });
        continue;
      }
      const t = new ServiceThread(g.name, g.services, g.shared ?? false, onFailure);
      threads.push(t);
      await t.started();
      if (main) addReadiness(main.runtime.health);
    }
  } catch (err) {
    await stopAll();
    throw err;
  }
  if (!main) throw new Error('no group runs on the main thread');
  starting = false;
  return { runtime: main.runtime, stop: stopAll };

  function gatherMetrics(): Promise<Metrics[]> {
    return Promise.all(threads.map((t) => t.metrics()));
  }
  function addReadiness(health: Health): void {
    health.add('threads', () => (starting ? 'starting threads' : null));
    for (const t of threads)
      health.add(`thread ${t.name}`, () => (t.problems().length > 0 ? t.problems().join('; ') : null));
  }
}

/** How often a yielding thread looks at its own load. */
const YIELD_SAMPLE_MS = 100;
/** A backlog: this many messages in flight at once in a sample, and the thread yields. */
const YIELD_BUSY = 8;
/** Fewer than this for YIELD_QUIET_SAMPLES samples in a row: it stops yielding. */
const YIELD_QUIET = 4;
const YIELD_QUIET_SAMPLES = 5;

/**
 * While the calling thread has a backlog (`load()`, the most messages it was handling at once
 * since it was last asked, reaches YIELD_BUSY), it runs `nice` lower than the rest of the process
 * (Linux, where niceness belongs to each thread and /proc/thread-self names the caller); once the
 * backlog is gone it gets its priority back. So under a burst the other threads (the doors) get the
 * CPU first, and a lone message meets no penalty on its way. The backlog, not the thread's busy
 * time, is the signal: a thread starved of CPU looks busy without having more work. Taking the
 * priority back needs CAP_SYS_NICE (or RLIMIT_NICE); without it the thread stays lower after its
 * first burst. Returns a function that stops sampling, or the reason the thread cannot yield.
 */
export function yieldWhenBusy(
  nice: number,
  load: () => number,
  onStuck: (reason: string) => void,
): { stop: () => void } | { failed: string } {
  let tid: number;
  let base: number;
  try {
    tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (!Number.isInteger(tid) || tid <= 0) return { failed: 'no thread id in /proc/thread-self' };
    base = getPriority(tid);
  } catch (err) {
    return { failed: (err as Error).message };
  }
  const lowered = Math.min(19, base + nice);
  let yielding = false;
  let canRestore = true;
  let quiet = 0;
  const timer = setInterval(() => {
    const peak = load();
    try {
      if (!yielding && peak >= YIELD_BUSY) {
        setPriority(tid, lowered);
        yielding = true;
        quiet = 0;
      } else if (yielding && canRestore) {
        quiet = peak < YIELD_QUIET ? quiet + 1 : 0;
        if (quiet >= YIELD_QUIET_SAMPLES) {
          setPriority(tid, base);
          yielding = false;
        }
      }
    } catch (err) {
      // Raising a thread's priority back is refused without the privilege: it stays yielding.
      canRestore = false;
      onStuck((err as Error).message);
    }
  }, YIELD_SAMPLE_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}

/** The worker side: run the group, report readiness, answer metric requests, stop when told. */
async function workerMain(): Promise<void> {
  const port = parentPort;
  if (!port) return;
  const { thread, services } = workerData as { thread: string; services: string[] };
  const report = (r: Report) => port.postMessage(r);
  const config = loadConfig();
  const { SERVICES } = await import('../services.ts');
  let running: Running;
  try {
    running = await runServices(config, services, SERVICES, { thread });
  } catch (err) {
    report({ type: 'failed', error: (err as Error).stack ?? String(err) });
    port.close();
    return;
  }
  // The pipeline yields the CPU to the doors while it has a backlog: a burst is accepted first,
  // filed right after.
  const yielding =
    thread === 'pipeline' && config.upPipelineNice > 0 && process.platform === 'linux'
      ? yieldWhenBusy(config.upPipelineNice, takeHandlingPeak, (reason) =>
          running.runtime.logger.info({ thread, reason }, 'thread priority kept low after a burst'),
        )
      : null;
  if (yielding && 'failed' in yielding)
    running.runtime.logger.warn({ thread, error: yielding.failed }, 'thread priority left as it was');
  let last: string | undefined;
  const pushHealth = () => {
    const problems = running.runtime.health.problems();
    const key = problems.join('\n');
    if (key === last) return;
    last = key;
    report({ type: 'health', problems });
  };
  pushHealth();
  const healthTimer = setInterval(pushHealth, 500);
  report({ type: 'started' });
  port.on('message', (c: Command) => {
    if (c.type === 'metrics') {
      void registry.getMetricsAsJSON().then(
        (metrics) => report({ type: 'metrics', id: c.id, metrics: metrics as Metrics }),
        () => report({ type: 'metrics', id: c.id, metrics: [] }),
      );
      return;
    }
    clearInterval(healthTimer);
    if (yielding && 'stop' in yielding) yielding.stop();
    // process.exit in a worker ends this thread only, whatever handles are still open.
    void running.stop().finally(() => process.exit(0));
  });
}

if (!isMainThread && (workerData as { thread?: string } | null)?.thread) void workerMain();
