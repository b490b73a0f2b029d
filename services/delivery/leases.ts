/**
 * Partition leases in a NATS KV bucket: which delivery replica owns which destination partition.
 *
 * The bucket's max_age is the lease time (nats-server 2.9 has no per-message TTL): a key not
 * rewritten within it disappears, and a replica that stops renewing (SIGKILL, partition from NATS)
 * loses its partitions after at most one lease time. Claims and renewals are compare-and-set on the
 * key's revision (create = "no current value", update = "still the revision I wrote"), so two
 * replicas never both believe they hold a partition with the bucket's agreement.
 *
 * A holder stops acting on its own clock before the bucket could give the key away (leaseMs −
 * safety since the last successful renewal), so it is never still acting when another replica
 * claims. Every lease carries a fencing token — the revision of the create that won it; revisions
 * only grow in a KV bucket, so a newer holder's token is always larger, and effects recorded with
 * a token (see fence.ts) refuse a stale holder.
 *
 * Replicas announce themselves under `m.<node>` with the same lease time; each claims its fair
 * share ⌈partitions / live replicas⌉ and gives back what it holds beyond it, so partitions spread
 * when a replica joins and move when one dies.
 */
import { Kvm, type KV } from '@nats-io/kv';
import { JetStreamApiCodes, JetStreamApiError, StorageType } from '@nats-io/jetstream';
import type { Logger } from 'pino';
import type { Nats } from '../core/nats.ts';
import { gauge } from '../core/metrics.ts';

const owned = gauge(
  'postino_delivery_partitions_owned',
  'Destination partitions whose lease this replica holds',
);
/** Lease sets of this process (one per delivery service; tests may run several): the gauge is their sum. */
const live = new Set<PartitionLeases>();
const countOwned = () => owned.set([...live].reduce((n, l) => n + l.held().length, 0));

export const LEASE_BUCKET = 'delivery_leases';

export interface Lease {
  partition: number;
  /** Fencing token: the KV revision of the claim. */
  token: number;
  /** Aborted the moment this replica stops holding the partition. */
  signal: AbortSignal;
  /**
   * Aborted when this replica starts giving the partition back (or loses it): take no new work,
   * finish what is in flight. A transaction past its end of DATA must read its reply and record
   * it, or the next holder sends the message again.
   */
  draining: AbortSignal;
  /** True while the lease is held and not about to lapse. */
  valid(): boolean;
}

export interface LeaseOptions {
  node: string;
  partitions: number;
  leaseMs: number;
  renewMs: number;
  safetyMs: number;
  replicas: number;
  logger: Logger;
  /** A partition was won: start acting for it. */
  onAcquired(lease: Lease): void;
  /** A partition is no longer held (already aborted); resolves when its work has stopped. */
  onLost(partition: number, reason: string): Promise<void>;
  /**
   * A partition is being given back (its `draining` signal is aborted, the lease still renewed):
   * resolves when its work in flight has finished. Bounded by the caller.
   */
  onDrain?(partition: number): Promise<void>;
}

interface Held {
  lease: Lease;
  controller: AbortController;
  drain: AbortController;
  revision: number;
  /** Local time until which acting is safe. */
  deadline: number;
  releasing: boolean;
}

const keyOf = (p: number) => `p.${p}`;
const safeKey = (s: string) => s.replace(/[^A-Za-z0-9_-]/g, '_');

export class PartitionLeases {
  readonly #kv: KV;
  readonly #o: LeaseOptions;
  readonly #held = new Map<number, Held>();
  readonly #memberKey: string;
  #timer: NodeJS.Timeout | undefined;
  #watchdog: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #stopped = false;

  private constructor(kv: KV, o: LeaseOptions) {
    this.#kv = kv;
    this.#o = o;
    this.#memberKey = `m.${safeKey(o.node)}`;
    live.add(this);
  }

  /** Opens (creating on first use) the lease bucket with max_age = the lease time. */
  static async open(nats: Nats, o: LeaseOptions): Promise<PartitionLeases> {
    const kv = await new Kvm(nats.js).create(LEASE_BUCKET, {
      history: 1,
      ttl: o.leaseMs,
      storage: StorageType.File,
      replicas: o.replicas,
    });
    return new PartitionLeases(kv, o);
  }

  /** Partitions held now. */
  held(): number[] {
    return [...this.#held.keys()].sort((a, b) => a - b);
  }

  start(): void {
    const tick = () => {
      if (this.#stopped || this.#ticking) return;
      this.#ticking = this.#tick()
        .catch((err: unknown) => this.#o.logger.warn({ err }, 'lease round failed'))
        .finally(() => (this.#ticking = undefined));
    };
    tick();
    this.#timer = setInterval(tick, this.#o.renewMs);
    // Independent of the KV round trip: a holder whose renewals stall stops acting on time.
    this.#watchdog = setInterval(() => this.#expireLocally(), Math.max(50, Math.floor(this.#o.safetyMs / 2)));
  }

  #expireLocally(): void {
    const now = Date.now();
    for (const [p, h] of this.#held) if (now >= h.deadline) this.#lose(p, 'lease not renewed in time');
  }

  #lose(partition: number, reason: string): Promise<void> {
    const h = this.#held.get(partition);
    if (!h) return Promise.resolve();
    this.#held.delete(partition);
    countOwned();
    h.drain.abort(new Error(reason));
    h.controller.abort(new Error(reason));
    this.#o.logger.info({ partition, reason }, 'partition lease lost');
    return this.#o.onLost(partition, reason);
  }

  async #tick(): Promise<void> {
    const { leaseMs, safetyMs, partitions, node } = this.#o;
    await this.#kv.put(this.#memberKey, node);
    // Renew: CAS on the revision we wrote last. A wrong revision means someone else has it now.
    for (const [p, h] of [...this.#held]) {
      if (h.releasing) continue;
      const started = Date.now();
      try {
        h.revision = await this.#kv.update(keyOf(p), node, h.revision);
        if (this.#held.get(p) === h) h.deadline = started + leaseMs - safetyMs;
      } catch (err) {
        // Wrong last sequence: the key lapsed and was claimed, or was deleted — no longer ours.
        const code = err instanceof JetStreamApiError ? err.code : 0;
        if (code === JetStreamApiCodes.StreamWrongLastSequence) await this.#lose(p, 'lease taken over');
        else this.#o.logger.warn({ err, partition: p }, 'lease renewal failed; retrying');
      }
    }
    this.#expireLocally();

    const members = new Set<string>();
    const owners = new Map<number, string>();
    for await (const k of await this.#kv.keys()) {
      if (k.startsWith('m.')) members.add(k);
      else if (k.startsWith('p.')) owners.set(Number(k.slice(2)), k);
    }
    members.add(this.#memberKey);
    const share = Math.ceil(partitions / members.size);

    const mine = this.held();
    if (mine.length > share) {
      // Give back the surplus so a new replica gets its share; it acts only after we stopped.
      for (const p of mine.slice(share)) void this.#release(p);
      return;
    }
    let want = share - mine.length;
    if (want <= 0) return;
    const start = hashOf(node) % partitions;
    for (let i = 0; i < partitions && want > 0; i++) {
      const p = (start + i) % partitions;
      if (this.#held.has(p) || owners.has(p)) continue;
      const claimed = Date.now();
      const rev = await this.#kv.create(keyOf(p), node).catch(() => 0);
      if (!rev || this.#stopped) continue;
      want--;
      const controller = new AbortController();
      const drain = new AbortController();
      const held: Held = {
        controller,
        drain,
        revision: rev,
        deadline: claimed + leaseMs - safetyMs,
        releasing: false,
        lease: {
          partition: p,
          token: rev,
          signal: controller.signal,
          draining: drain.signal,
          valid: () => this.#held.get(p) === held && Date.now() < held.deadline,
        },
      };
      this.#held.set(p, held);
      countOwned();
      this.#o.logger.info({ partition: p, token: rev }, 'partition lease acquired');
      this.#o.onAcquired(held.lease);
    }
  }

  async #release(p: number): Promise<void> {
    const h = this.#held.get(p);
    if (!h || h.releasing || h.drain.signal.aborted) return;
    // Give back gracefully: no new work, and what is in flight finishes under the lease (still
    // renewed meanwhile), so a rebalance never cuts a transaction after its end of DATA.
    h.drain.abort(new Error('released'));
    if (this.#o.onDrain) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.#o.onDrain(p).catch(() => undefined),
        new Promise<void>((r) => (timer = setTimeout(r, this.#o.leaseMs))),
      ]);
      clearTimeout(timer);
    }
    if (this.#held.get(p) !== h) return; // lost meanwhile
    h.releasing = true;
    await this.#ticking;
    const revision = h.revision;
    await this.#lose(p, 'released');
    // Only our own revision is deleted: if it lapsed meanwhile, the new holder's key stays.
    await this.#kv.delete(keyOf(p), { previousSeq: revision }).catch(() => undefined);
  }

  /** Stops renewing, stops every partition's work and gives the partitions back at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearInterval(this.#watchdog);
    await this.#ticking;
    await Promise.allSettled(this.held().map((p) => this.#release(p)));
    await this.#kv.delete(this.#memberKey).catch(() => undefined);
    live.delete(this);
    countOwned();
  }
}

function hashOf(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}
