/**
 * delivery: hands OUTBOUND entries to the destination domain's MX hosts (or the smarthost).
 *
 * Destinations are spread over PARTITIONS; each replica holds some partitions through leases in
 * NATS KV (leases.ts) and, for each, reads that partition's durable consumer (partition-consumer.ts)
 * and runs one destination actor per domain (actor.ts). Recipients answered 2xx are recorded as
 * delivered under the lease's fencing token (so a redelivered entry, or a stale former holder,
 * never sends twice); 5xx are bounced; 4xx and unreachable hosts are deferred to the retry
 * schedule in the deferred queue (queue-store.ts) until the message expires, then bounced.
 */
import { readFileSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { rootCertificates } from 'node:tls';
import type { JsMsg } from '@nats-io/jetstream';
import type { Runtime, Service } from '../core/runtime.ts';
import { publish, STREAMS, SUBJECTS } from '../core/nats.ts';
import { pb, decode, encode, type OutboundDelivery, type Recipient } from '../core/codec.ts';
import { recordEvent } from '../core/events.ts';
import { counter, histogram } from '../core/metrics.ts';
import { CachedMxResolver, MxResolver } from '../core/mx.ts';
import { sendDsn, type BounceSource, type Failure } from '../core/bounce.ts';
import { skipOctets } from '../core/return-path.ts';
import { BlobHolder } from '../core/blobs.ts';
import { SpanKind, withSpan } from '../core/telemetry.ts';
import { DestinationActor } from './actor.ts';
import { deliveryLimits } from './limits.ts';
import { PartitionLeases, type Lease } from './leases.ts';
import { consumePartition, ensurePartitionConsumer, type PartitionOutcome } from './partition-consumer.ts';
import { QueueStore } from './queue-store.ts';
import { parsePolicies, parseSmarthost, policyFor } from './policy.ts';
import { MtaSts, mxAllowed, type StsPolicy } from './mta-sts.ts';
import { BodyCache } from './body-cache.ts';
import type { Endpoint } from './smtp-client.ts';

const attempts = counter(
  'postino_delivery_attempts_total',
  'SMTP delivery attempts by result and destination domain',
  ['result', 'domain'],
);
const stsFailures = counter(
  'postino_delivery_mta_sts_failures_total',
  'MTA-STS policy failures (RFC 8461): an MX host not in the policy or TLS not verified, by policy mode',
  ['mode', 'reason'],
);
/** Distinct `domain` label values a replica reports; the rest are counted as "other" (bounded series). */
const DOMAIN_LABELS_MAX = 500;
const labelled = new Set<string>();
const domainLabel = (domain: string): string => {
  const d = domain.toLowerCase();
  if (labelled.has(d)) return d;
  if (labelled.size >= DOMAIN_LABELS_MAX) return 'other';
  labelled.add(d);
  return d;
};
/**
 * A message body that stops before its end when the partition's lease has run out. The end of
 * DATA is the point of no return (with its 250 the remote server has the message), so a replica
 * that was stopped or starved past its lease breaks the transaction off before it rather than
 * delivering what the partition's new holder is about to deliver too.
 */
async function* fenced(body: AsyncIterable<Uint8Array>, lease: Lease): AsyncIterable<Uint8Array> {
  for await (const chunk of body) {
    if (!lease.valid()) throw new Error('partition lease lost during DATA');
    yield chunk;
  }
  if (!lease.valid()) throw new Error('partition lease lost before the end of DATA');
}

const remoteLatency = histogram(
  'postino_remote_delivery_latency_seconds',
  'From the 250 at SMTP ingress to the remote server accepting the message',
  [],
  [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400],
);

/** Deferred entries republished per partition per scan. */
const SCAN_BATCH = 500;
/** How often due deferred entries are looked for. */
const SCAN_MS = 1000;

interface PartitionState {
  lease: Lease;
  actors: Map<string, DestinationActor>;
  done: Promise<void>;
}

export async function start(rt: Runtime): Promise<Service> {
  const { nats, config, blobs, redis } = rt;
  const log = rt.logger.child({ service: 'delivery' });
  const limits = deliveryLimits(config);
  const mx = new CachedMxResolver(new MxResolver(config.dnsServers), redis, config.redisPrefix);
  const queue = new QueueStore(redis, config.redisPrefix);
  const bodies = new BodyCache((id) => blobs.open(id), {
    maxEntryBytes: limits.bodyCacheEntryBytes,
    maxTotalBytes: limits.bodyCacheBytes,
  });
  const helo = config.deliveryHelo || config.hostname;
  const policies = parsePolicies(config.deliveryPolicy);
  // Outbound verification trusts the system roots plus DELIVERY_TLS_CA_FILE (a private CA).
  const ca = config.deliveryTlsCaFile
    ? [...rootCertificates, readFileSync(config.deliveryTlsCaFile, 'utf8')]
    : undefined;
  const relay = parseSmarthost(config.deliverySmarthost);
  const smarthost = relay ? { ...relay, ca } : null;
  const stsResolver = new Resolver({ timeout: 5000, tries: 2 });
  if (config.dnsServers.length > 0) stsResolver.setServers(config.dnsServers);
  const sts = config.deliveryMtaSts
    ? new MtaSts({
        resolver: stsResolver,
        store: redis,
        prefix: config.redisPrefix,
        logger: log,
        ca,
        fetchTimeoutMs: limits.mtaStsFetchMs,
        recheckMs: limits.mtaStsRecheckMs,
      })
    : null;
  const partitions = new Map<number, PartitionState>();
  const bounceDeps = { nats, blobs, logger: log, hostname: config.hostname };

  // The single shared consumer of earlier versions overlaps the partition consumers: remove it.
  await nats.jsm.consumers.delete(STREAMS.OUTBOUND, 'delivery').catch(() => undefined);

  const actorFor = (st: PartitionState, domain: string): DestinationActor => {
    let a = st.actors.get(domain);
    if (!a) {
      a = new DestinationActor(domain, limits, helo, log);
      st.actors.set(domain, a);
    }
    return a;
  };

  /**
   * The endpoints to try, in MX order. An MTA-STS `enforce` policy (RFC 8461 4.1, 4.2) keeps only
   * the MX hosts it names and asks for STARTTLS with a certificate valid for the MX name; `testing`
   * keeps every host and only reports. `problem` says why no endpoint is left.
   */
  const endpointsFor = (
    domain: string,
    hosts: OutboundDelivery['mx'],
    stsPolicy: StsPolicy | null,
  ): { endpoints: Endpoint[]; problem: string } => {
    const policy = policyFor(policies, domain);
    if (policy.smarthost && smarthost) return { endpoints: [smarthost], problem: '' };
    const enforce = stsPolicy?.mode === 'enforce';
    const tls: Endpoint['tls'] =
      policy.verifyTls || enforce ? 'verify' : policy.requireTls ? 'required' : 'opportunistic';
    let allowed = hosts ?? [];
    if (stsPolicy) {
      const outside = allowed.filter((h) => !mxAllowed(stsPolicy, h.host ?? ''));
      if (outside.length > 0) {
        stsFailures.inc({ mode: stsPolicy.mode, reason: 'mx_mismatch' }, outside.length);
        log.warn(
          { domain, mode: stsPolicy.mode, id: stsPolicy.id, mx: outside.map((h) => h.host) },
          'MX host not named by the MTA-STS policy',
        );
        if (enforce) allowed = allowed.filter((h) => !outside.includes(h));
      }
    }
    const endpoints = allowed.flatMap((h) =>
      (h.addresses ?? []).map((address): Endpoint => ({
        address,
        port: config.deliveryPort,
        host: h.host ?? '',
        secure: false,
        tls,
        ca,
      })),
    );
    const problem =
      enforce && endpoints.length === 0 && (hosts ?? []).length > 0
        ? `MTA-STS policy ${stsPolicy.id} of ${domain} (enforce) names none of its MX hosts (${(hosts ?? []).map((h) => h.host).join(', ')})`
        : '';
    return { endpoints, problem };
  };

  const handler = async (msg: JsMsg, lease: Lease): Promise<PartitionOutcome> => {
    const d = decode(pb.OutboundDelivery, msg.data);
    const id = `${d.queueId}:${d.domain}`;
    const st = partitions.get(lease.partition);
    if (!st || st.lease !== lease) return { nakMs: 0 };
    // One round trip: is the entry current, what was delivered already, and the partition's fence.
    const start = await queue.begin(lease.partition, lease.token, id, d.attempts, d.generation);
    log.debug({ id, partition: lease.partition, check: start.check, attempts: d.attempts }, 'outbound entry');
    if (start.check !== 'current') return { ack: true };
    // A newer holder of the partition has acted: this replica is stale and does nothing more.
    if (!start.fenced) return { nakMs: 0 };

    const done = start.delivered;
    let pending: Recipient[] = d.recipients.filter((r) => !done.has(r.address ?? ''));
    const failures: Failure[] = [];
    const successes: Failure[] = [];
    let lastError = d.lastError;
    let countsAsAttempt = true;
    let nextAt = 0;
    const now = Date.now();

    const policy = policyFor(policies, d.domain);
    let hosts = d.mx;
    if (pending.length > 0 && !(policy.smarthost && smarthost) && (hosts.length === 0 || d.attempts > 0)) {
      // A retry looks the MX up again (through the shared cache): the domain may have moved.
      const res = await withSpan(
        `dns MX ${d.domain}`,
        { kind: SpanKind.CLIENT, attributes: { 'dns.question.name': d.domain } },
        () => mx.resolve(d.domain),
      );
      if (res.kind === 'permanent') {
        for (const r of pending) failures.push({ recipient: r, status: res.code, diagnostic: res.reason });
        pending = [];
      } else if (res.kind === 'temporary') {
        lastError = res.reason;
        hosts = [];
      } else hosts = res.hosts;
    }
    // RFC 8461 5: the policy of the recipient domain applies to its MX hosts (not to a smarthost).
    const stsPolicy =
      sts && pending.length > 0 && hosts.length > 0 && !(policy.smarthost && smarthost)
        ? await sts.policy(d.domain).catch((err: unknown) => {
            log.warn({ err, domain: d.domain }, 'MTA-STS lookup failed');
            return null;
          })
        : null;
    const { endpoints, problem } =
      pending.length > 0 ? endpointsFor(d.domain, hosts, stsPolicy) : { endpoints: [], problem: '' };
    if (problem) lastError = problem;

    if (pending.length > 0 && endpoints.length > 0) {
      if (!lease.valid()) return { nakMs: 0 };
      const actor = actorFor(st, d.domain);
      log.debug({ id, endpoints: endpoints.length }, 'handing to the destination actor');
      const out = await withSpan(
        `smtp deliver ${d.domain}`,
        { kind: SpanKind.CLIENT, attributes: { 'server.address': d.domain } },
        (span) =>
          actor
            .deliver({
              endpoints,
              signal: lease.signal,
              tx: {
                mailFrom: d.mailFrom,
                recipients: pending.map((r) => ({ address: r.address ?? '' })),
                dsnRet: d.dsnRet,
                dsnEnvid: d.dsnEnvid,
                // Without the Return-Path the body was stored with (services/core/return-path.ts).
                size: Number(d.body?.size ?? 0) - (d.body?.returnPath ?? 0),
                body: () =>
                  fenced(
                    skipOctets(
                      bodies.open(d.body?.id ?? '', Number(d.body?.size ?? 0)),
                      d.body?.returnPath ?? 0,
                    ),
                    lease,
                  ),
                eightBit: true,
                smtputf8: d.smtputf8,
              },
            })
            .then((res) => {
              // The MX host and address that answered (OpenTelemetry network/server attributes).
              if ('endpoint' in res && res.endpoint) {
                span.setAttribute('server.address', res.endpoint.host);
                span.setAttribute('network.peer.address', res.endpoint.address);
                span.setAttribute('server.port', res.endpoint.port);
              }
              return res;
            }),
      );
      log.debug({ id, outcome: out.kind }, 'destination actor answered');
      if (out.kind === 'aborted') return { nakMs: 0 };
      if (out.kind === 'suspended' || out.kind === 'busy') {
        // Not an attempt: the domain is paused or saturated; wait outside the consumer.
        countsAsAttempt = false;
        attempts.inc({ result: out.kind, domain: domainLabel(d.domain) });
        if (out.kind === 'suspended') {
          lastError = out.reason;
          nextAt = out.until;
        } else nextAt = now + limits.busyRetryMs;
      } else if (out.kind === 'unreachable') {
        attempts.inc({ result: 'unreachable', domain: domainLabel(d.domain) });
        lastError = out.reply;
      } else if (out.kind === 'refused') {
        const where = out.endpoint ? `host ${out.endpoint.host}[${out.endpoint.address}] said: ` : '';
        lastError = `${where}${out.reply}`;
        attempts.inc({ result: out.permanent ? 'refused' : 'deferred', domain: domainLabel(d.domain) });
        if (out.permanent) {
          for (const r of pending)
            failures.push({
              recipient: r,
              status: out.code,
              diagnostic: out.reply,
              remoteMta: out.endpoint?.host,
            });
          pending = [];
        }
      } else {
        const ep = out.endpoint;
        if (stsPolicy?.mode === 'testing' && out.tlsProblem) {
          // RFC 8461 5: a "testing" policy's failure is reported, and the message delivered anyway.
          stsFailures.inc({ mode: 'testing', reason: 'tls' });
          log.warn(
            { domain: d.domain, id: stsPolicy.id, mx: ep?.host, problem: out.tlsProblem },
            'MTA-STS (testing): the MX connection would fail the policy',
          );
        }
        const byAddress = new Map(pending.map((r) => [(r.address ?? '').toLowerCase(), r]));
        const still: Recipient[] = [];
        const accepted: { r: Recipient; reply: string }[] = [];
        for (const rr of out.recipients) {
          const r = byAddress.get(rr.address.toLowerCase()) ?? { address: rr.address };
          if (rr.status === 'delivered') {
            accepted.push({ r, reply: rr.reply });
          } else if (rr.status === 'permanent') {
            attempts.inc({ result: 'rejected', domain: domainLabel(d.domain) });
            failures.push({ recipient: r, status: rr.code, diagnostic: rr.reply, remoteMta: ep?.host });
          } else {
            attempts.inc({ result: 'deferred', domain: domainLabel(d.domain) });
            lastError = `host ${ep?.host}[${ep?.address}] said: ${rr.reply}`;
            still.push(r);
          }
        }
        if (accepted.length > 0) {
          // Every accepted recipient recorded at once, under the lease's fencing token.
          const addresses = accepted.map(({ r }) => r.address ?? '');
          if (!(await queue.markDelivered(lease.partition, lease.token, id, addresses))) {
            log.warn({ partition: lease.partition }, 'fenced: a newer holder owns this partition');
            return { nakMs: 0 };
          }
          for (const { r, reply } of accepted) {
            attempts.inc({ result: 'delivered', domain: domainLabel(d.domain) });
            remoteLatency.observe((Date.now() - Number(d.receivedAt)) / 1000);
            successes.push({ recipient: r, status: '2.0.0', diagnostic: reply, remoteMta: ep?.host });
          }
          await Promise.all(
            accepted.map(({ r, reply }) =>
              recordEvent(
                nats,
                log,
                'delivered',
                {
                  queueId: d.queueId,
                  messageId: d.messageId,
                  recipient: r.address,
                  service: 'delivery',
                  detail: `${ep?.host}[${ep?.address}]: ${reply}`,
                  mailFrom: d.mailFrom,
                },
                `${d.queueId}:${r.address}`,
              ),
            ),
          );
        }
        // A 4xx to RCPT is the recipient's domain speaking (greylisting, full mailbox): retry later, not elsewhere.
        pending = still;
      }
    } else if (pending.length > 0 && problem) {
      attempts.inc({ result: 'deferred', domain: domainLabel(d.domain) });
    } else if (pending.length > 0 && !lastError) {
      lastError = `no MX host of ${d.domain} to try`;
    }

    const source: BounceSource = {
      queueId: d.queueId,
      mailFrom: d.mailFrom,
      messageId: d.messageId,
      receivedAt: Number(d.receivedAt),
      dsnRet: d.dsnRet,
      dsnEnvid: d.dsnEnvid,
      body: { id: d.body?.id ?? '', size: Number(d.body?.size ?? 0), returnPath: d.body?.returnPath ?? 0 },
      isBounce: d.isBounce,
    };
    if (!lease.valid()) return { nakMs: 0 };
    if (successes.length > 0) await sendDsn(bounceDeps, source, successes, 'relayed');

    if (pending.length > 0) {
      const age = Date.now() - Number(d.receivedAt);
      if (age >= config.deliveryExpiry) {
        // RFC 3464 / RFC 3463: a message that could not be delivered in time fails with 4.4.7.
        for (const r of pending)
          failures.push({
            recipient: r,
            status: '4.4.7',
            diagnostic: `delivery time expired; last error: ${lastError}`,
          });
        pending = [];
      } else {
        const n = d.attempts + (countsAsAttempt ? 1 : 0);
        const schedule = config.deliveryRetries;
        const delay = schedule[Math.min(Math.max(n, 1) - 1, schedule.length - 1)] ?? 3_600_000;
        const at = nextAt || Date.now() + delay;
        let warned = d.delayWarned;
        if (!warned && limits.delayWarningMs > 0 && age >= limits.delayWarningMs) {
          warned = true;
          await sendDsn(
            bounceDeps,
            source,
            pending.map((r) => ({
              recipient: r,
              status: lastError.match(/\b4\.\d{1,3}\.\d{1,3}\b/)?.[0] ?? '4.0.0',
              diagnostic: lastError,
            })),
            'delayed',
            Number(d.receivedAt) + config.deliveryExpiry,
          );
        }
        const retry: OutboundDelivery = {
          ...d,
          recipients: pending,
          attempts: n,
          lastError,
          mx: hosts,
          notBefore: at,
          delayWarned: warned,
          firstAttemptAt: Number(d.firstAttemptAt) || now,
        };
        await queue.defer(
          {
            id,
            queueId: d.queueId,
            domain: d.domain,
            partition: lease.partition,
            mailFrom: d.mailFrom,
            recipients: pending.map((r) => r.address ?? ''),
            attempts: n,
            generation: d.generation,
            nextAttempt: at,
            lastError,
            receivedAt: Number(d.receivedAt),
          },
          encode(pb.OutboundDelivery, retry),
        );
        if (countsAsAttempt) {
          log.info(
            { queueId: d.queueId, domain: d.domain, attempt: n, nextAt: at, lastError },
            'delivery deferred',
          );
          for (const r of pending) {
            await recordEvent(nats, log, 'deferred', {
              queueId: d.queueId,
              messageId: d.messageId,
              recipient: r.address,
              service: 'delivery',
              detail: `attempt ${n}: ${lastError}; next at ${new Date(at).toISOString()}`,
              mailFrom: d.mailFrom,
            });
          }
        }
      }
    }
    if (failures.length > 0) {
      log.info({ queueId: d.queueId, failed: failures.map((f) => f.recipient.address) }, 'bouncing');
      await sendDsn(bounceDeps, source, failures, 'failed');
    }
    if (pending.length === 0) {
      await queue.finish(id, lease.partition);
      // The final outcome (delivered, bounced, expired): the entry lets its body go (core/blobs.ts).
      await blobs.release(d.body?.id ?? '', BlobHolder.outbound(id));
    }
    return { ack: true };
  };

  // The queue manager's scan: deferred entries that are due go back to their partition's subject.
  const scan = async (): Promise<void> => {
    for (const [p, st] of partitions) {
      if (!st.lease.valid()) continue;
      for (const id of await queue.due(p, Date.now(), SCAN_BATCH)) {
        if (!st.lease.valid()) break;
        const rec = await queue.data(id);
        if (!rec) {
          await queue.remove(id);
          continue;
        }
        const d = decode(pb.OutboundDelivery, rec.data);
        d.attempts = rec.attempts;
        d.generation = rec.generation;
        d.notBefore = 0;
        await publish(nats, SUBJECTS.outbound(p), encode(pb.OutboundDelivery, d), {
          stream: STREAMS.OUTBOUND,
          msgId: `${id}:${rec.attempts}:${rec.generation}`,
        });
        await queue.markQueued(p, id, rec.attempts, rec.generation);
      }
    }
  };
  let scanning: Promise<void> | undefined;
  const scanTimer = setInterval(() => {
    if (scanning) return;
    scanning = scan()
      .catch((err: unknown) => log.warn({ err }, 'deferred queue scan failed'))
      .finally(() => (scanning = undefined));
  }, SCAN_MS);

  // Forget actors that hold nothing, so memory follows the active destinations.
  const sweepTimer = setInterval(() => {
    for (const st of partitions.values())
      for (const [domain, a] of st.actors) if (a.idle) st.actors.delete(domain);
  }, 30_000);

  const leases = await PartitionLeases.open(nats, {
    node: rt.node,
    partitions: config.partitions,
    leaseMs: limits.leaseMs,
    renewMs: limits.renewMs,
    safetyMs: limits.leaseSafetyMs,
    replicas: config.natsReplicas,
    logger: log,
    onAcquired(lease) {
      const st: PartitionState = { lease, actors: new Map(), done: Promise.resolve() };
      partitions.set(lease.partition, st);
      st.done = ensurePartitionConsumer(nats, lease.partition, limits.partitionInFlight, limits.ackWaitMs)
        .then(
          () =>
            consumePartition(nats, lease, {
              logger: log,
              maxMessages: 64,
              ackWaitMs: limits.ackWaitMs,
              handler,
            }).done,
        )
        .catch((err: unknown) => log.error({ err, partition: lease.partition }, 'partition consumer failed'));
    },
    async onLost(partition) {
      const st = partitions.get(partition);
      if (!st) return;
      partitions.delete(partition);
      // Stop acting at once: drop the domain's connections; unfinished messages are naked.
      for (const a of st.actors.values()) a.close();
      await st.done;
    },
    async onDrain(partition) {
      // Given back (a rebalance or a shutdown): the consumer takes nothing new, and the
      // transactions in flight end with their replies read and recorded.
      await partitions.get(partition)?.done;
    },
  });
  leases.start();

  return {
    async stop() {
      clearInterval(scanTimer);
      clearInterval(sweepTimer);
      await scanning;
      await leases.stop();
    },
  };
}
