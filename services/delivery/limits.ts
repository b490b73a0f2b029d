/**
 * Every limit and timeout of delivery in one place, each with the reason for its number. The ones
 * an operator tunes come from the configuration schema (DELIVERY_*); the rest are fixed here.
 */
import type { Config } from '../core/config.ts';

export interface DeliveryLimits {
  /** Lease time of a partition (bucket max_age): a dead replica's partitions move after at most this. */
  leaseMs: number;
  /** Renewal period: three chances to renew before the lease lapses. */
  renewMs: number;
  /** A holder stops acting this long before its lease could lapse (clock drift and a slow renewal). */
  leaseSafetyMs: number;
  /** SMTP sessions open at once to one destination domain (Postfix: default_destination_concurrency_limit 20). */
  domainConcurrency: number;
  /** Least time between two transactions to one domain (0: no rate limit). */
  domainIntervalMs: number;
  /** Messages waiting in one actor beyond its sessions; past it they go back to JetStream for a moment. */
  domainQueue: number;
  /** How long a message refused for lack of a session waits in JetStream before it is offered again. */
  busyRetryMs: number;
  /** Consecutive failed sessions after which a domain is considered failing (Postfix: 1 with dead-host backoff). */
  failuresBeforeBackoff: number;
  /** First and largest pause of a failing domain (Postfix: minimal_backoff_time / maximal_backoff_time, scaled down). */
  backoffMinMs: number;
  backoffMaxMs: number;
  /** An idle connection kept for reuse closes after this (Postfix: smtp_connection_cache_time_limit 2s). */
  idleConnectionMs: number;
  /** Transactions on one connection before it is closed (Postfix: smtp_connection_reuse_count_limit, unbounded there). */
  transactionsPerConnection: number;
  /** Timeout of each SMTP step. */
  stepTimeoutMs: number;
  /** Messages a partition consumer holds at once (JetStream max_ack_pending of the partition's consumer). */
  partitionInFlight: number;
  /** Ack wait of a partition consumer; in-flight messages are kept alive with progress acks. */
  ackWaitMs: number;
  /** A delay warning is sent once a message has waited this long (0: never). */
  delayWarningMs: number;
  /** Overall time of one MTA-STS policy fetch (RFC 8461 3.3 suggests about a minute; a message waits on it). */
  mtaStsFetchMs: number;
  /** A replica checks a domain's `_mta-sts` TXT record again after this (the policy itself is cached for max_age). */
  mtaStsRecheckMs: number;
  /** Bodies up to this size are kept in memory for the next domain or retry of the same message. */
  bodyCacheEntryBytes: number;
  /** Memory for kept bodies per replica (most mail is far smaller than the entry limit). */
  bodyCacheBytes: number;
}

export function deliveryLimits(config: Config): DeliveryLimits {
  const leaseMs = config.deliveryLease;
  return {
    leaseMs,
    renewMs: Math.max(200, Math.floor(leaseMs / 3)),
    leaseSafetyMs: Math.max(200, Math.floor(leaseMs / 4)),
    domainConcurrency: config.deliveryDomainConcurrency,
    domainIntervalMs: config.deliveryDomainRate > 0 ? Math.ceil(1000 / config.deliveryDomainRate) : 0,
    domainQueue: 200,
    busyRetryMs: 1000,
    failuresBeforeBackoff: 2,
    backoffMinMs: 5_000,
    backoffMaxMs: 300_000,
    idleConnectionMs: 2_000,
    transactionsPerConnection: 100,
    stepTimeoutMs: config.deliveryTimeout,
    partitionInFlight: 256,
    // Short enough that a dead holder's unacked messages reach the next holder within seconds of takeover.
    ackWaitMs: Math.max(5_000, 2 * leaseMs),
    delayWarningMs: config.deliveryDelayWarning,
    mtaStsFetchMs: Math.min(60_000, config.deliveryTimeout),
    mtaStsRecheckMs: 60_000,
    bodyCacheEntryBytes: 256 * 1024,
    bodyCacheBytes: 32 * 1024 * 1024,
  };
}
