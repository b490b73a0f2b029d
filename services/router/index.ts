/**
 * router: takes each accepted envelope from INGRESS and splits it by recipient — hosted domains to
 * LOCAL (one entry per mailbox), other domains to OUTBOUND (one entry per destination domain, with
 * its MX hosts). The envelope is acked only after every entry it produced is durable (invariant 2);
 * entries carry de-duplication ids so a redelivered envelope produces nothing twice.
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { consume, publish, STREAMS, SUBJECTS } from '../core/nats.ts';
import {
  pb,
  decode,
  encode,
  type LocalDelivery,
  type OutboundDelivery,
  type Recipient,
} from '../core/codec.ts';
import { recordEvent } from '../core/events.ts';
import { counter } from '../core/metrics.ts';
import { canonicalAddress, domainOf } from '../core/address.ts';
import { DirectoryError, type Expansion } from '../core/directory.ts';
import { CachedMxResolver, MxResolver } from '../core/mx.ts';
import { BlobHolder } from '../core/blobs.ts';
import { sendBounce, type Failure } from '../core/bounce.ts';
import { SpanKind, withSpan } from '../core/telemetry.ts';
import { partitionOf } from '../core/partition.ts';

/** Local entries of one envelope published at once. */
const LOCAL_BATCH = 64;

const routed = counter('postino_recipients_routed_total', 'Recipients routed', ['destination']);

/** Where one recipient goes: out, nowhere (a DSN), or into mailboxes (and forwarded out). */
type Route =
  | { kind: 'remote' }
  | { kind: 'failed'; status: string; diagnostic: string }
  | { kind: 'local'; users: string[]; external: string[] };

export async function start(rt: Runtime): Promise<Service> {
  const { nats, directory, config, blobs, redis } = rt;
  const log = rt.logger.child({ service: 'router' });
  // One DNS cache in Redis for every router and delivery replica, honouring the answers' TTLs.
  const mx = new CachedMxResolver(new MxResolver(config.dnsServers), redis, config.redisPrefix);

  async function routeOf(address: string): Promise<Route> {
    let expansion: Expansion | null;
    try {
      expansion = await directory.resolveRecipient(address);
    } catch (err) {
      if (!(err instanceof DirectoryError && err.code === 'LOOP')) throw err;
      return { kind: 'failed', status: '5.4.6', diagnostic: `550 5.4.6 ${err.message}` };
    }
    if (expansion) {
      return expansion.hosted
        ? { kind: 'local', users: expansion.users, external: expansion.external }
        : { kind: 'remote' };
    }
    // Not found: unknown here, or an address the directory cannot parse, which goes by its domain.
    return (await directory.isLocalDomain(domainOf(address)))
      ? { kind: 'failed', status: '5.1.1', diagnostic: '550 5.1.1 User unknown in virtual mailbox table' }
      : { kind: 'remote' };
  }

  /** Every recipient's route, a bounded number asked at once (a message may have a thousand). */
  async function resolveAll(addresses: string[]): Promise<Route[]> {
    const routes: Route[] = [];
    for (let i = 0; i < addresses.length; i += LOCAL_BATCH)
      routes.push(...(await Promise.all(addresses.slice(i, i + LOCAL_BATCH).map(routeOf))));
    return routes;
  }

  const consumer = consume(nats, {
    name: 'router',
    logger: log,
    concurrency: 32,
    handler: async (msg) => {
      const env = decode(pb.Envelope, msg.data);
      const bodyId = env.body?.id ?? '';
      // Most recipients are mailboxes of their own name: their entries' holds are made while the
      // directory is asked and the entries are published, not before; the envelope's hold covers
      // the body until they are in (it goes only after them, below), and a hold that lands after
      // its entry was filed and released finds the release's tombstone and makes nothing. Guesses
      // that miss are taken back at the end; holds that existed before (a redelivery) are left alone.
      const guesses =
        env.recipients.length <= LOCAL_BATCH
          ? env.recipients.map((r) => BlobHolder.local(`${env.queueId}:${canonicalAddress(r.address ?? '')}`))
          : [];
      const holding = blobs.holdAll(bodyId, guesses);
      // Awaited below in every case; a failure is seen there, not as an unhandled rejection.
      holding.catch(() => undefined);
      const resolved = await resolveAll(env.recipients.map((r) => r.address ?? ''));
      const locals: LocalDelivery[] = [];
      const remote = new Map<string, Recipient[]>();
      const failures: Failure[] = [];
      const seen = new Set<string>();
      env.recipients.forEach((r, i) => {
        const address = r.address ?? '';
        const route = resolved[i] as Route;
        if (route.kind === 'remote') {
          const domain = domainOf(address);
          const list = remote.get(domain) ?? [];
          list.push(r);
          remote.set(domain, list);
          return;
        }
        if (route.kind === 'failed') {
          failures.push({ recipient: r, status: route.status, diagnostic: route.diagnostic });
          return;
        }
        for (const user of route.users) {
          // Each mailbox gets one copy, however many of its addresses were named.
          if (seen.has(user)) continue;
          seen.add(user);
          locals.push({
            queueId: env.queueId,
            user,
            originalRecipient: address,
            folder: 'INBOX',
            body: env.body,
            mailFrom: env.mailFrom,
            receivedAt: env.receivedAt,
            messageId: env.messageId,
            idempotencyKey: `${env.queueId}:${user}`,
          });
        }
        // Forwarding: an alias that points outside goes out like any remote recipient.
        for (const ext of route.external) {
          if (seen.has(ext)) continue;
          seen.add(ext);
          const d = domainOf(ext);
          const list = remote.get(d) ?? [];
          list.push({ address: ext, dsn: r.dsn });
          remote.set(d, list);
        }
      });
      // Events (for `postino trace`) are published beside the work, and all of them are acked by
      // JetStream before the envelope is: one round trip less per entry, and none is lost to a crash.
      const events: Promise<void>[] = [];
      const routedEvent = (recipient: string, detail: string, key: string) =>
        events.push(
          recordEvent(
            nats,
            log,
            'routed',
            {
              queueId: env.queueId,
              messageId: env.messageId,
              recipient,
              service: 'router',
              detail,
              mailFrom: env.mailFrom,
            },
            key,
          ),
        );
      // Each mailbox's entry independently: one envelope for many local users takes one round trip.
      const routeLocal = async (d: LocalDelivery) => {
        await publish(
          nats,
          SUBJECTS.local(partitionOf(d.user ?? '', config.partitions)),
          encode(pb.LocalDelivery, d),
          {
            stream: STREAMS.LOCAL,
            msgId: d.idempotencyKey ?? undefined,
          },
        );
        routed.inc({ destination: 'local' });
        routedEvent(d.originalRecipient ?? '', `local mailbox ${d.user}`, d.idempotencyKey ?? '');
      };
      // An entry that was not guessed holds the body before it exists; the envelope's hold goes
      // once all are out and held. A bounded number at a time: a list alias can expand to
      // thousands of mailboxes.
      const guessSet = new Set(guesses);
      for (let i = 0; i < locals.length; i += LOCAL_BATCH) {
        const batch = locals.slice(i, i + LOCAL_BATCH);
        const unheld = batch
          .map((d) => BlobHolder.local(d.idempotencyKey ?? ''))
          .filter((h) => !guessSet.has(h));
        await blobs.holdAll(bodyId, unheld);
        await Promise.all(batch.map(routeLocal));
      }
      const guessed = await holding;
      const used = new Set(locals.map((d) => BlobHolder.local(d.idempotencyKey ?? '')));
      const missed = [...guessed].filter((h) => !used.has(h));

      for (const [domain, rcpts] of remote) {
        const result = await withSpan(
          `dns MX ${domain}`,
          { kind: SpanKind.CLIENT, attributes: { 'dns.question.name': domain } },
          () => mx.resolve(domain),
        );
        if (result.kind === 'permanent') {
          for (const r of rcpts)
            failures.push({ recipient: r, status: result.code, diagnostic: result.reason });
          continue;
        }
        // A temporary DNS failure does not hold the other recipients: delivery looks the MX up again.
        const out: OutboundDelivery = {
          queueId: env.queueId,
          domain,
          recipients: rcpts,
          // The structure is for mailboxes only.
          body: env.body
            ? { id: env.body.id, size: env.body.size, returnPath: env.body.returnPath }
            : env.body,
          mailFrom: env.mailFrom,
          receivedAt: env.receivedAt,
          messageId: env.messageId,
          mx: result.kind === 'ok' ? result.hosts : [],
          attempts: 0,
          dsnRet: env.dsnRet,
          dsnEnvid: env.dsnEnvid,
          smtputf8: env.smtputf8,
          isBounce: env.isBounce,
          lastError: result.kind === 'temporary' ? result.reason : '',
        };
        await blobs.hold(bodyId, BlobHolder.outbound(`${env.queueId}:${domain}`));
        await publish(
          nats,
          SUBJECTS.outbound(partitionOf(domain, config.partitions)),
          encode(pb.OutboundDelivery, out),
          {
            stream: STREAMS.OUTBOUND,
            msgId: `${env.queueId}:${domain}:0`,
          },
        );
        routed.inc({ destination: 'remote' }, rcpts.length);
        routedEvent(
          rcpts.map((r) => r.address).join(','),
          result.kind === 'ok'
            ? `remote ${domain} via ${result.hosts.map((h) => h.host).join(', ')}`
            : `remote ${domain}: ${result.reason}`,
          `${env.queueId}:${domain}`,
        );
      }

      if (failures.length > 0) {
        await sendBounce(
          { nats, blobs, logger: log, hostname: config.hostname },
          {
            queueId: env.queueId,
            mailFrom: env.mailFrom,
            messageId: env.messageId,
            receivedAt: Number(env.receivedAt),
            dsnRet: env.dsnRet,
            dsnEnvid: env.dsnEnvid,
            body: {
              id: env.body?.id ?? '',
              size: Number(env.body?.size ?? 0),
              returnPath: env.body?.returnPath ?? 0,
            },
            isBounce: env.isBounce,
          },
          failures,
        );
      }
      // Every entry holds the body now (and the bounce has its own): the envelope lets it go.
      await Promise.all([
        blobs.release(bodyId, BlobHolder.ingress(env.queueId)),
        blobs.withdraw(bodyId, missed),
        ...events,
      ]);
      log.info(
        { queueId: env.queueId, local: locals.length, remoteDomains: remote.size, failed: failures.length },
        'envelope routed',
      );
      return { ack: true };
    },
  });

  return { stop: () => consumer.stop() };
}
