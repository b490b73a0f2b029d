/**
 * delivery: hands OUTBOUND entries to the destination domain's MX hosts over SMTP, in preference
 * order. Recipients answered 2xx are recorded as delivered (so a redelivered entry never sends
 * twice), 5xx are bounced to the sender, 4xx and unreachable hosts are retried on the retry
 * schedule until the message expires, then bounced.
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { consume, publish, STREAMS, SUBJECTS } from '../core/nats.ts';
import { pb, decode, encode, type OutboundDelivery, type Recipient } from '../core/codec.ts';
import { recordEvent } from '../core/events.ts';
import { counter, histogram } from '../core/metrics.ts';
import { MxResolver } from '../core/mx.ts';
import { sendBounce, type Failure } from '../core/bounce.ts';
import { SpanKind, withSpan } from '../core/telemetry.ts';
import { partitionOf } from '../core/partition.ts';
import { attempt } from './smtp-client.ts';

const attempts = counter('postino_delivery_attempts_total', 'SMTP delivery attempts by result', ['result']);
const remoteLatency = histogram(
  'postino_remote_delivery_latency_seconds',
  'From the 250 at SMTP ingress to the remote server accepting the message',
  [],
  [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400],
);

/** How long a delivered-recipients record is kept: longer than any redelivery of the entry. */
const DELIVERED_TTL_S = 7 * 86_400;

export async function start(rt: Runtime): Promise<Service> {
  const { nats, config, blobs, redis } = rt;
  const log = rt.logger.child({ service: 'delivery' });
  const mx = new MxResolver(config.dnsServers);
  const helo = config.deliveryHelo || config.hostname;

  const consumer = consume(nats, {
    name: 'delivery',
    logger: log,
    concurrency: 16,
    handler: async (msg) => {
      const d = decode(pb.OutboundDelivery, msg.data);
      const now = Date.now();
      if (Number(d.notBefore) > now) return { retryInMs: Number(d.notBefore) - now, reason: 'scheduled' };

      const doneKey = `${config.redisPrefix}dlv:${d.queueId}:${d.domain}`;
      const done = new Set(await redis.smembers(doneKey));
      let pending: Recipient[] = d.recipients.filter((r) => !done.has(r.address ?? ''));
      if (pending.length === 0) return { ack: true };

      const failures: Failure[] = [];
      let lastError = d.lastError;
      let hosts = d.mx;
      if (hosts.length === 0) {
        const res = await mx.resolve(d.domain);
        if (res.kind === 'permanent') {
          for (const r of pending) failures.push({ recipient: r, status: res.code, diagnostic: res.reason });
          pending = [];
        } else if (res.kind === 'temporary') {
          lastError = res.reason;
        } else hosts = res.hosts;
      }

      outer: for (const host of hosts) {
        for (const address of host.addresses ?? []) {
          if (pending.length === 0) break outer;
          const result = await withSpan(
            `smtp deliver ${d.domain}`,
            {
              kind: SpanKind.CLIENT,
              attributes: {
                'server.address': host.host ?? '',
                'network.peer.address': address,
                'server.port': config.deliveryPort,
              },
            },
            () =>
              attempt({
                address,
                port: config.deliveryPort,
                host: host.host ?? '',
                helo,
                timeoutMs: config.deliveryTimeout,
                mailFrom: d.mailFrom,
                recipients: pending.map((r) => ({
                  address: r.address ?? '',
                  notify: r.dsn?.notify ?? [],
                  orcpt: r.dsn?.orcpt ?? '',
                })),
                dsnRet: d.dsnRet,
                dsnEnvid: d.dsnEnvid,
                size: Number(d.body?.size ?? 0),
                body: () => blobs.open(d.body?.id ?? ''),
                eightBit: true,
              }),
          );
          if (result.kind === 'unreachable') {
            attempts.inc({ result: 'unreachable' });
            lastError = `${host.host}[${address}]: ${result.reply}`;
            log.info(
              { queueId: d.queueId, host: host.host, address, reply: result.reply },
              'remote host unreachable',
            );
            continue;
          }
          if (result.kind === 'refused') {
            attempts.inc({ result: result.permanent ? 'refused' : 'deferred' });
            lastError = `host ${host.host}[${address}] said: ${result.reply}`;
            if (result.permanent) {
              for (const r of pending)
                failures.push({
                  recipient: r,
                  status: result.code,
                  diagnostic: result.reply,
                  remoteMta: host.host ?? '',
                });
              pending = [];
              break outer;
            }
            continue;
          }
          const byAddress = new Map(pending.map((r) => [r.address ?? '', r]));
          const still: Recipient[] = [];
          for (const rr of result.recipients) {
            const r = byAddress.get(rr.address) ?? { address: rr.address };
            if (rr.status === 'delivered') {
              attempts.inc({ result: 'delivered' });
              await redis.multi().sadd(doneKey, rr.address).expire(doneKey, DELIVERED_TTL_S).exec();
              remoteLatency.observe((Date.now() - Number(d.receivedAt)) / 1000);
              log.info(
                { queueId: d.queueId, rcpt: rr.address, host: host.host, reply: rr.reply },
                'delivered',
              );
              await recordEvent(
                nats,
                log,
                'delivered',
                {
                  queueId: d.queueId,
                  messageId: d.messageId,
                  recipient: rr.address,
                  service: 'delivery',
                  detail: `${host.host}[${address}]: ${rr.reply}`,
                  mailFrom: d.mailFrom,
                },
                `${d.queueId}:${rr.address}`,
              );
            } else if (rr.status === 'permanent') {
              attempts.inc({ result: 'rejected' });
              failures.push({
                recipient: r,
                status: rr.code,
                diagnostic: rr.reply,
                remoteMta: host.host ?? '',
              });
            } else {
              attempts.inc({ result: 'deferred' });
              lastError = `host ${host.host}[${address}] said: ${rr.reply}`;
              still.push(r);
            }
          }
          // A 4xx to RCPT is the recipient's domain speaking (greylisting, full mailbox): retry later, not elsewhere.
          pending = still;
          break outer;
        }
      }

      const source = {
        queueId: d.queueId,
        mailFrom: d.mailFrom,
        messageId: d.messageId,
        receivedAt: Number(d.receivedAt),
        dsnRet: d.dsnRet,
        dsnEnvid: d.dsnEnvid,
        body: { id: d.body?.id ?? '', size: Number(d.body?.size ?? 0) },
        isBounce: d.isBounce,
      };
      if (pending.length > 0) {
        const age = Date.now() - Number(d.receivedAt);
        if (age >= config.deliveryExpiry) {
          // RFC 3464: a message that could not be delivered in time fails with 4.4.7.
          for (const r of pending)
            failures.push({
              recipient: r,
              status: '4.4.7',
              diagnostic: `delivery time expired; last error: ${lastError}`,
            });
        } else {
          const n = d.attempts + 1;
          const schedule = config.deliveryRetries;
          const delay = schedule[Math.min(n - 1, schedule.length - 1)] ?? 3_600_000;
          const retry: OutboundDelivery = {
            ...d,
            recipients: pending,
            attempts: n,
            lastError,
            notBefore: Date.now() + delay,
            mx: hosts,
          };
          await publish(
            nats,
            SUBJECTS.outbound(partitionOf(d.domain, config.partitions)),
            encode(pb.OutboundDelivery, retry),
            {
              stream: STREAMS.OUTBOUND,
              msgId: `${d.queueId}:${d.domain}:${n}`,
            },
          );
          log.info(
            { queueId: d.queueId, domain: d.domain, attempt: n, delayMs: delay, lastError },
            'delivery deferred',
          );
          for (const r of pending) {
            await recordEvent(nats, log, 'deferred', {
              queueId: d.queueId,
              messageId: d.messageId,
              recipient: r.address,
              service: 'delivery',
              detail: `attempt ${n}: ${lastError}; next in ${Math.round(delay / 1000)}s`,
              mailFrom: d.mailFrom,
            });
          }
        }
      }
      if (failures.length > 0) {
        log.info({ queueId: d.queueId, failed: failures.map((f) => f.recipient.address) }, 'bouncing');
        await sendBounce({ nats, blobs, logger: log, hostname: config.hostname }, source, failures);
      }
      return { ack: true };
    },
  });

  return { stop: () => consumer.stop() };
}
