/**
 * The controller loop: informers (list + watch) of MailDomain and MailUser feed a work queue of
 * object keys; a periodic resync re-queues every known object (Secrets are not watched, and the
 * directory can be changed behind the operator's back). One key is reconciled by one worker at a
 * time; failures are retried with exponential backoff, conflicts (a stale resourceVersion) at once.
 */
import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { KINDS, keyOf, type Kind, type MailDomain, type MailUser } from './crd.ts';
import type { KubeStore } from './kube.ts';
import { statusOf } from './kube.ts';
import { reconcileDomain, reconcileUser, type Deps, type Result } from './reconcile.ts';

/** Backoff of a failing key: from 500 ms, doubling, at most a minute. */
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 60_000;
/** Time before an informer that failed is started again. */
const INFORMER_RESTART_MS = 2_000;

type AnyInformer = ReturnType<KubeStore['informer']>;

export interface ControllerOptions {
  kc: KubeConfig;
  store: KubeStore;
  deps: Deps;
  namespace: string;
  resyncMs: number;
  logger: Logger;
}

export class Controller {
  readonly #o: ControllerOptions;
  readonly #informers = new Map<Kind, AnyInformer>();
  readonly #timers = new Map<string, NodeJS.Timeout>();
  readonly #due = new Map<string, number>();
  readonly #running = new Set<string>();
  readonly #dirty = new Set<string>();
  readonly #failures = new Map<string, number>();
  #resync: NodeJS.Timeout | undefined;
  #active = false;
  /** Reconciles finished (for tests and metrics). */
  reconciled = 0;

  constructor(options: ControllerOptions) {
    this.#o = options;
  }

  get active(): boolean {
    return this.#active;
  }

  /** Starts watching and reconciling (when this replica becomes leader). */
  async start(): Promise<void> {
    if (this.#active) return;
    this.#active = true;
    for (const kind of Object.keys(KINDS) as Kind[]) {
      const inf = this.#o.store.informer(this.#o.kc, kind, this.#o.namespace);
      const enqueue = (obj: KubernetesObject) => this.enqueue(kind, keyOf(obj.metadata as { name: string }));
      inf.on('add', enqueue);
      inf.on('update', enqueue);
      inf.on('error', (err: unknown) => {
        if (!this.#active) return;
        this.#o.logger.warn({ err, kind }, 'watch failed; listing again shortly');
        const t = setTimeout(() => {
          this.#timers.delete(`informer:${kind}`);
          if (this.#active) void inf.start().catch(() => undefined);
        }, INFORMER_RESTART_MS);
        this.#timers.set(`informer:${kind}`, t);
      });
      this.#informers.set(kind, inf);
      await inf
        .start()
        .catch((err: unknown) => this.#o.logger.warn({ err, kind }, 'first list failed; retrying'));
    }
    this.#resync = setInterval(() => this.resyncAll(), this.#o.resyncMs);
    this.#resync.unref();
  }

  /** Stops watching; reconciles in progress finish, nothing new starts. */
  async stop(): Promise<void> {
    this.#active = false;
    clearInterval(this.#resync);
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    this.#due.clear();
    for (const inf of this.#informers.values()) await inf.stop();
    this.#informers.clear();
    await waitFor(() => this.#running.size === 0);
  }

  /** Queues every object the informers know. */
  resyncAll(): void {
    for (const [kind, inf] of this.#informers) {
      for (const obj of inf.list(this.#o.namespace))
        this.enqueue(kind, keyOf(obj.metadata as { name: string }));
    }
  }

  /** Queues a reconcile of the object after `delayMs`; an earlier run already due wins. */
  enqueue(kind: Kind, key: string, delayMs = 0): void {
    if (!this.#active) return;
    const id = `${kind}:${key}`;
    if (delayMs === 0 && this.#running.has(id)) return void this.#dirty.add(id);
    const due = Date.now() + delayMs;
    const existing = this.#due.get(id);
    if (existing !== undefined && existing <= due) return;
    clearTimeout(this.#timers.get(id));
    this.#due.set(id, due);
    this.#timers.set(
      id,
      setTimeout(() => {
        this.#timers.delete(id);
        this.#due.delete(id);
        void this.#run(kind, key, id);
      }, delayMs),
    );
  }

  async #run(kind: Kind, key: string, id: string): Promise<void> {
    if (!this.#active) return;
    if (this.#running.has(id)) return void this.#dirty.add(id);
    const inf = this.#informers.get(kind);
    const [namespace = '', name = ''] = key.split('/');
    const obj = inf?.get(name, namespace);
    if (!obj) return; // gone (deleted after its finalizer was removed)
    this.#running.add(id);
    let next: Result;
    try {
      next =
        kind === 'MailDomain'
          ? await reconcileDomain(structuredClone(obj) as unknown as MailDomain, this.#o.deps)
          : await reconcileUser(structuredClone(obj) as unknown as MailUser, this.#o.deps);
      this.#failures.delete(id);
      this.reconciled++;
    } catch (err) {
      const conflict = statusOf(err) === 409;
      const n = (this.#failures.get(id) ?? 0) + 1;
      this.#failures.set(id, n);
      const delay = conflict ? 100 : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (n - 1));
      if (!conflict) this.#o.logger.warn({ err, kind, key, retryInMs: delay }, 'reconcile failed');
      next = { requeueAfterMs: delay };
    } finally {
      this.#running.delete(id);
    }
    if (this.#dirty.delete(id)) this.enqueue(kind, key);
    else if (next.requeueAfterMs !== undefined) this.enqueue(kind, key, next.requeueAfterMs);
  }
}

async function waitFor(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 20));
}
