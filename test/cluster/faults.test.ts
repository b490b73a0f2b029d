/**
 * Faults under load, checked Jepsen-style: a whole cluster (three nats-servers with R3 streams, a
 * Redis primary with a replica and AOF fsynced on every write, two replicas of every service as
 * separate processes) takes a steady load of local and remote mail while the test kills, stops and
 * restarts its parts. An independent checker then compares what every client was told with what
 * the mailboxes (over IMAP) and the remote sinks hold: nothing accepted is lost, nothing arrives
 * twice, nothing refused arrives.
 *
 * The profile is short by default (CI); `npm run soak` runs it longer (CLUSTER_PROFILE=long).
 * Each scenario prints a line with its figures: sent, accepted, refused, unknown, delivered,
 * lost, duplicated, and the time the cluster needed to be ready and to settle after the fault.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster, SERVICE_NAMES, type Managed } from './harness.ts';
import { Load, settle, type Verdict } from './load.ts';

const LONG = process.env.CLUSTER_PROFILE === 'long';
/** Seconds of load per scenario; the fault happens in its first third and is repaired in the second. */
const SECONDS = Number(process.env.CLUSTER_SECONDS ?? (LONG ? 60 : 9));
const RATE = Number(process.env.CLUSTER_RATE ?? (LONG ? 20 : 8));
/** How long the cluster may take to deliver everything after the load ends. */
const SETTLE_MS = 90_000;
/** Per scenario: the load, the fault, readiness and settling, on a slow machine. */
const T = { timeout: 300_000 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Row {
  scenario: string;
  verdict: Verdict;
  readyMs: number;
  settledMs: number;
}
const rows: Row[] = [];

describe('the cluster under faults loses nothing and duplicates nothing', { timeout: 900_000 }, () => {
  const cluster = new Cluster({ replicas: 2, remoteDomains: 2, localUsers: 4 });

  before(
    async () => {
      await cluster.start();
    },
    { timeout: 600_000 },
  );

  after(async () => {
    await cluster.stop();
    if (rows.length > 0) {
      const lines = rows.map(
        (r) =>
          `${r.scenario.padEnd(34)} sent ${r.verdict.sent} accepted ${r.verdict.accepted} refused ${r.verdict.refused} ` +
          `unknown ${r.verdict.unknown} delivered ${r.verdict.delivered} lost ${r.verdict.lost.length} ` +
          `duplicated ${r.verdict.duplicated.length} ready ${r.readyMs} ms settled ${r.settledMs} ms`,
      );
      console.log(['cluster fault scenarios:', ...lines].join('\n'));
    }
  });

  /** Runs the load, applies the fault in the middle, then checks the history. */
  async function scenario(name: string, fault: (third: number) => Promise<void>): Promise<void> {
    const load = new Load(cluster, { rate: RATE, prefix: name.replace(/\W+/g, '_') });
    const third = (SECONDS * 1000) / 3;
    load.start();
    await sleep(third);
    await fault(third);
    await sleep(third);
    await load.stop();
    const readyMs = await cluster.ready();
    const { verdict, waitedMs } = await settle(cluster, load.ops, SETTLE_MS);
    rows.push({ scenario: name, verdict, readyMs, settledMs: waitedMs });
    assert.ok(
      verdict.accepted > 0,
      `${name}: the cluster accepted nothing (${JSON.stringify(load.ops.slice(-3))})`,
    );
    const dupIds = new Set(verdict.duplicated.map((d) => d.split(' ')[0]));
    const dupAt = cluster.sinks.flatMap((s) => s.received.filter((r) => dupIds.has(r.id)));
    assert.deepEqual(
      verdict.duplicated,
      [],
      `${name}: recipients got a message twice ${JSON.stringify(dupAt)}`,
    );
    assert.deepEqual(verdict.refusedDelivered, [], `${name}: a refused message was delivered`);
    if (verdict.lost.length > 0) {
      // Where the lost ones went, from message tracking, to make the failure actionable.
      const tracks = await Promise.all(
        verdict.lost.slice(0, 3).map(async (l) => {
          const id = l.split(' ')[0] ?? '';
          const res = await fetch(
            `${cluster.adminUrl()}/api/trace/${encodeURIComponent(`<${id}@load.test>`)}`,
          );
          return `${l}: ${await res.text()}`;
        }),
      );
      assert.fail(`${name}: accepted messages were lost: ${verdict.lost.join(', ')}\n${tracks.join('\n')}`);
    }
  }

  const bounce = async (p: Managed, downMs: number) => {
    await p.kill();
    await sleep(downMs);
    await p.start();
  };

  test('no fault: the baseline', T, async () => {
    await scenario('baseline', async () => undefined);
  });

  for (const service of SERVICE_NAMES) {
    test(`SIGKILL of a ${service} replica`, T, async () => {
      await scenario(`SIGKILL ${service}`, async (third) => {
        await bounce(cluster.replica(service, 0).proc, third / 2);
      });
    });
  }

  test('SIGKILL of one nats-server', T, async () => {
    await scenario('SIGKILL nats-server', async (third) => {
      const n = cluster.nats[1];
      assert.ok(n);
      await bounce(n, third);
    });
  });

  test('restart of Redis (SIGKILL of the primary, AOF replayed)', T, async () => {
    await scenario('restart Redis', async (third) => {
      await bounce(cluster.redis, third / 3);
    });
  });

  test('SIGSTOP of delivery and mailbox-store replicas for longer than their leases', T, async () => {
    await scenario('SIGSTOP delivery+mailbox-store', async (third) => {
      const stopped = [cluster.replica('delivery', 0).proc, cluster.replica('mailbox-store', 0).proc];
      for (const p of stopped) await p.signal('SIGSTOP');
      // DELIVERY_LEASE is 3 s: the other replica takes the partitions over meanwhile.
      await sleep(Math.max(third, 5000));
      for (const p of stopped) await p.signal('SIGCONT');
    });
  });

  test('a full cluster restart', T, async () => {
    await scenario('full restart', async () => {
      await Promise.all(cluster.all.map((p) => p.kill()));
      // NATS and Redis first, then the services, as a cluster comes back after a power cut.
      await Promise.all(cluster.nats.map((n) => n.start()));
      await cluster.redis.start();
      await cluster.redisReplica.start();
      await Promise.all(cluster.services.map((s) => s.proc.start()));
    });
  });
});
