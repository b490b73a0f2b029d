/**
 * Leader election with a coordination.k8s.io/v1 Lease, the scheme of client-go's leaderelection:
 * a candidate takes the Lease when it is absent or when its holder has not renewed it within
 * leaseDurationSeconds, and the leader renews it every `renewMs`. Every write carries the
 * resourceVersion it read, so of two candidates racing for an expired Lease exactly one wins (the
 * other gets 409 Conflict). A leader that cannot renew before its lease would expire steps down
 * first, so two replicas never both act.
 */
import { CoordinationV1Api, V1MicroTime, type KubeConfig, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { statusOf } from './kube.ts';

export interface LeaderOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseMs: number;
  /** How often to renew or retry (default a third of the lease). */
  renewMs?: number;
  onStarted: () => void;
  onStopped: () => void;
}

export class LeaderElector {
  readonly #api: CoordinationV1Api;
  readonly #o: Required<LeaderOptions>;
  readonly #logger: Logger;
  #leading = false;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** When our last successful renewal happened (monotonic). */
  #renewedAt = 0;

  constructor(kc: KubeConfig, options: LeaderOptions, logger: Logger) {
    this.#api = kc.makeApiClient(CoordinationV1Api);
    this.#o = { renewMs: Math.max(200, Math.floor(options.leaseMs / 3)), ...options };
    this.#logger = logger;
  }

  get leading(): boolean {
    return this.#leading;
  }

  start(): void {
    void this.#tick();
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    try {
      const won = await this.#tryAcquireOrRenew();
      if (won) this.#renewedAt = performance.now();
      if (won && !this.#leading) {
        this.#leading = true;
        this.#logger.info({ lease: this.#o.name, identity: this.#o.identity }, 'became leader');
        this.#o.onStarted();
      } else if (!won && this.#leading) {
        this.#stepDown('lease held by another replica');
      }
    } catch (err) {
      this.#logger.warn({ err, lease: this.#o.name }, 'lease renewal failed');
      // Not renewed: step down before the lease can expire and another replica take it.
      if (this.#leading && performance.now() - this.#renewedAt > this.#o.leaseMs - this.#o.renewMs)
        this.#stepDown('could not renew the lease in time');
    }
    if (!this.#stopped) this.#timer = setTimeout(() => void this.#tick(), this.#o.renewMs);
  }

  #stepDown(why: string): void {
    this.#leading = false;
    this.#logger.warn({ lease: this.#o.name, why }, 'stopped leading');
    this.#o.onStopped();
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity } = this.#o;
    const now = new V1MicroTime();
    const leaseDurationSeconds = Math.max(1, Math.ceil(this.#o.leaseMs / 1000));
    let lease: V1Lease;
    try {
      lease = await this.#api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
      try {
        await this.#api.createNamespacedLease({
          namespace,
          body: {
            apiVersion: 'coordination.k8s.io/v1',
            kind: 'Lease',
            metadata: { name, namespace },
            spec: {
              holderIdentity: identity,
              leaseDurationSeconds,
              acquireTime: now,
              renewTime: now,
              leaseTransitions: 0,
            },
          },
        });
        return true;
      } catch (e) {
        if (statusOf(e) === 409) return false; // another replica created it first
        throw e;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const renewed = spec.renewTime ? new Date(spec.renewTime).getTime() : 0;
    const expired = !holder || renewed + (spec.leaseDurationSeconds ?? 0) * 1000 < Date.now();
    if (holder !== identity && !expired) return false;
    const next: V1Lease = {
      ...lease,
      spec: {
        ...spec,
        holderIdentity: identity,
        leaseDurationSeconds,
        renewTime: now,
        ...(holder === identity
          ? {}
          : { acquireTime: now, leaseTransitions: (spec.leaseTransitions ?? 0) + 1 }),
      },
    };
    try {
      await this.#api.replaceNamespacedLease({ name, namespace, body: next });
      return true;
    } catch (err) {
      if (statusOf(err) === 409) return false;
      throw err;
    }
  }

  /** Stops campaigning; a leader releases the Lease so that a standby takes over at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    if (!this.#leading) return;
    this.#leading = false;
    this.#o.onStopped();
    try {
      const lease = await this.#api.readNamespacedLease({ name: this.#o.name, namespace: this.#o.namespace });
      if (lease.spec?.holderIdentity === this.#o.identity) {
        await this.#api.replaceNamespacedLease({
          name: this.#o.name,
          namespace: this.#o.namespace,
          body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1 } },
        });
      }
    } catch (err) {
      this.#logger.warn({ err }, 'could not release the lease; it expires on its own');
    }
  }
}
