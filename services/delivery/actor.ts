/**
 * A destination actor: everything delivery knows about one remote domain, owned by the replica
 * that holds the domain's partition — how many sessions are open (concurrency), how fast
 * transactions start (rate), whether the domain is failing (backoff), and the open connections,
 * reused for the next message after RSET.
 *
 * A failing domain never slows another: each actor has its own sessions and queue, and once its
 * sessions keep failing it answers "suspended" at once instead of trying (Postfix's dead
 * destination), so its messages leave the partition's consumer without holding a slot.
 */
import type { Logger } from 'pino';
import type { DeliveryLimits } from './limits.ts';
import { SmtpSession, type Endpoint, type Transaction, type TransactionResult } from './smtp-client.ts';

export interface Job {
  tx: Transaction;
  /** Endpoints in the order to try them (MX preference, addresses of each). */
  endpoints: Endpoint[];
  signal: AbortSignal;
}

export type JobOutcome =
  | (TransactionResult & { endpoint?: Endpoint; tlsProblem?: string })
  | { kind: 'suspended'; until: number; reason: string }
  | { kind: 'busy' }
  | { kind: 'aborted' };

/** Is a connection to `ep` one of the endpoints a job may use, with the TLS it asks for? */
function fits(ep: Endpoint, endpoints: Endpoint[]): boolean {
  return endpoints.some(
    (e) => e.address === ep.address && e.port === ep.port && e.host === ep.host && e.tls === ep.tls,
  );
}

interface Waiting {
  job: Job;
  resolve: (o: JobOutcome) => void;
}

export class DestinationActor {
  readonly domain: string;
  readonly #limits: DeliveryLimits;
  readonly #helo: string;
  readonly #log: Logger;
  readonly #waiting: Waiting[] = [];
  readonly #idle: { session: SmtpSession; timer: NodeJS.Timeout }[] = [];
  readonly #busy = new Set<SmtpSession>();
  /** Jobs that hold a session slot but have no session at work yet (waiting for the rate, connecting). */
  #connecting = 0;
  #resetting = 0;
  #failures = 0;
  #backoffUntil = 0;
  #lastError = '';
  #nextStart = 0;
  #closed = false;

  constructor(domain: string, limits: DeliveryLimits, helo: string, log: Logger) {
    this.domain = domain;
    this.#limits = limits;
    this.#helo = helo;
    this.#log = log;
  }

  /** True when the actor holds nothing (no session, no waiting job, no backoff): it can be forgotten. */
  get idle(): boolean {
    return (
      this.#waiting.length === 0 &&
      this.#idle.length === 0 &&
      this.#busy.size === 0 &&
      this.#connecting === 0 &&
      this.#resetting === 0 &&
      Date.now() >= this.#backoffUntil
    );
  }

  get suspendedUntil(): number {
    return this.#backoffUntil;
  }

  deliver(job: Job): Promise<JobOutcome> {
    if (this.#closed || job.signal.aborted) return Promise.resolve({ kind: 'aborted' });
    if (Date.now() < this.#backoffUntil) return Promise.resolve(this.#suspended());
    if (this.#waiting.length >= this.#limits.domainQueue) return Promise.resolve({ kind: 'busy' });
    return new Promise((resolve) => {
      const w: Waiting = { job, resolve };
      this.#waiting.push(w);
      job.signal.addEventListener(
        'abort',
        () => {
          const i = this.#waiting.indexOf(w);
          if (i >= 0) {
            this.#waiting.splice(i, 1);
            resolve({ kind: 'aborted' });
          }
        },
        { once: true },
      );
      this.#pump();
    });
  }

  #suspended(): JobOutcome {
    return {
      kind: 'suspended',
      until: this.#backoffUntil,
      reason: `delivery temporarily suspended: ${this.#lastError}`,
    };
  }

  #open(): number {
    return this.#busy.size + this.#idle.length + this.#connecting + this.#resetting;
  }

  #pump(): void {
    while (this.#waiting.length > 0 && !this.#closed) {
      if (Date.now() < this.#backoffUntil) {
        for (const w of this.#waiting.splice(0)) w.resolve(this.#suspended());
        return;
      }
      const next = this.#waiting[0];
      if (!next) return;
      // Only a connection made the way this job asks (same host and TLS requirement) is reused.
      let i = -1;
      for (let k = this.#idle.length - 1; k >= 0 && i < 0; k--) {
        const s = this.#idle[k];
        if (s && fits(s.session.endpoint, next.job.endpoints)) i = k;
      }
      const reuse = i >= 0 ? this.#idle.splice(i, 1)[0] : undefined;
      if (!reuse && this.#open() >= this.#limits.domainConcurrency) {
        // Every slot is taken; an idle connection that does not fit gives its slot up.
        const stale = this.#idle.shift();
        if (!stale) return;
        clearTimeout(stale.timer);
        stale.session.quit();
        continue;
      }
      const w = this.#waiting.shift();
      if (!w) return;
      if (reuse) clearTimeout(reuse.timer);
      // The slot is taken now, though the rate may hold the job back before it connects.
      this.#connecting++;
      void this.#run(w, reuse?.session).then(w.resolve, (err: unknown) => {
        this.#log.error({ err, domain: this.domain }, 'delivery job failed');
        w.resolve({ kind: 'unreachable', reply: `local error: ${String(err)}` });
      });
    }
  }

  async #rateSlot(signal: AbortSignal): Promise<void> {
    const interval = this.#limits.domainIntervalMs;
    if (interval <= 0) return;
    const now = Date.now();
    const at = Math.max(now, this.#nextStart);
    this.#nextStart = at + interval;
    if (at > now) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, at - now);
        signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
      });
    }
  }

  async #connect(endpoints: Endpoint[], signal: AbortSignal): Promise<SmtpSession | { reply: string }> {
    const errors: string[] = [];
    // RFC 5321 5.1: try the MX hosts (and each one's addresses) in order until one answers.
    for (const ep of endpoints) {
      if (signal.aborted) break;
      const r = await SmtpSession.open(ep, this.#helo, this.#limits.stepTimeoutMs);
      if ('session' in r) return r.session;
      errors.push(`${ep.host}[${ep.address}]: ${r.reply}`);
    }
    return { reply: errors.join('; ') || 'no MX host to try' };
  }

  async #run(w: Waiting, reused: SmtpSession | undefined): Promise<JobOutcome> {
    const { job } = w;
    let session = reused;
    /** This job's slot is still counted in #connecting (not yet as a busy session). */
    let holding = true;
    try {
      await this.#rateSlot(job.signal);
      if (job.signal.aborted) return { kind: 'aborted' };
      for (let round = 0; round < 2; round++) {
        if (!session) {
          const s = await this.#connect(job.endpoints, job.signal);
          if (!(s instanceof SmtpSession)) {
            this.#failed(s.reply);
            return { kind: 'unreachable', reply: s.reply };
          }
          session = s;
        }
        this.#busy.add(session);
        if (holding) {
          this.#connecting--;
          holding = false;
        }
        const onAbort = () => session?.close();
        job.signal.addEventListener('abort', onAbort, { once: true });
        const result = await session.send(job.tx);
        job.signal.removeEventListener('abort', onAbort);
        this.#busy.delete(session);
        if (job.signal.aborted) return { kind: 'aborted' };
        if (result.kind === 'unreachable' && reused && round === 0) {
          // A cached connection the server had closed: the message goes out on a new one.
          this.#connecting++;
          holding = true;
          session = undefined;
          reused = undefined;
          continue;
        }
        if (result.kind === 'unreachable') {
          this.#failed(`${session.endpoint.host}[${session.endpoint.address}]: ${result.reply}`);
          return { ...result, endpoint: session.endpoint };
        }
        this.#failures = 0;
        const ep = session.endpoint;
        const tlsProblem = session.tlsProblem;
        this.#keep(session);
        session = undefined;
        return { ...result, endpoint: ep, tlsProblem };
      }
      return { kind: 'unreachable', reply: 'connection lost' };
    } finally {
      if (holding) this.#connecting--;
      if (session) {
        this.#busy.delete(session);
        session.close();
      }
      this.#pump();
    }
  }

  #failed(reason: string): void {
    this.#lastError = reason;
    this.#failures++;
    if (this.#failures >= this.#limits.failuresBeforeBackoff) {
      const n = this.#failures - this.#limits.failuresBeforeBackoff;
      const pause = Math.min(this.#limits.backoffMaxMs, this.#limits.backoffMinMs * 2 ** Math.min(n, 16));
      this.#backoffUntil = Date.now() + pause;
      this.#log.info({ domain: this.domain, pauseMs: pause, reason }, 'destination failing; backing off');
    }
  }

  #keep(session: SmtpSession): void {
    if (this.#closed || session.transactions >= this.#limits.transactionsPerConnection) {
      session.quit();
      return;
    }
    this.#resetting++;
    void session.reset().then((ok) => {
      this.#resetting--;
      if (!ok || this.#closed) {
        session.close();
        this.#pump();
        return;
      }
      const entry = {
        session,
        timer: setTimeout(() => {
          const i = this.#idle.indexOf(entry);
          if (i >= 0) this.#idle.splice(i, 1);
          session.quit();
        }, this.#limits.idleConnectionMs),
      };
      entry.timer.unref();
      this.#idle.push(entry);
      this.#pump();
    });
  }

  /** Drops every connection and answers waiting jobs 'aborted' (partition lost, shutdown). */
  close(): void {
    this.#closed = true;
    for (const w of this.#waiting.splice(0)) w.resolve({ kind: 'aborted' });
    for (const { session, timer } of this.#idle.splice(0)) {
      clearTimeout(timer);
      session.quit();
    }
    for (const s of this.#busy) s.close();
  }
}
