/**
 * Limits of smtp-ingress, each with its reason. Those an operator may want to change are read from
 * the configuration (see `limitsFrom`); the rest are protocol constants.
 */
import type { Config } from '../core/config.ts';

export const LIMITS = {
  /**
   * RFC 5321 4.5.3.1.4 puts a command line at 512 octets, but extensions (RFC 1869 parameters,
   * SASL-IR initial responses, RFC 4954 4: up to 12288 octets) make them longer; Postfix accepts 2048.
   */
  maxCommandLine: 4096,
  /** Longest DATA line kept in memory before it is passed on in pieces (RFC 5321 4.5.3.1.6: 1000 is the norm). */
  maxDataLine: 64 * 1024,
  /** Bytes a pipelining client may send ahead of our replies before we stop reading its socket. */
  maxPipelineBuffer: 256 * 1024,
  /** RFC 5321 6.3: a loop is assumed past this many Received headers (Postfix uses 50). */
  maxHops: 50,
  /** Invalid commands before the session is closed (Postfix smtpd_hard_error_limit is 20). */
  maxErrors: 20,
  /** Commands before AUTH on submission, so unauthenticated clients cannot loop forever. */
  maxUnauthenticatedCommands: 20,
  /** Commands in one session (a budget: a session is for a few transactions, not a stream of NOOPs). */
  maxCommands: 50_000,
  /** RSET/MAIL transactions in one session. */
  maxTransactions: 1000,
  /** Longest HELO/EHLO name kept (RFC 1035 2.3.4: 255 octets). */
  maxHeloLength: 255,
  /** How long stop() lets sessions finish before dropping them (inside the shutdown grace). */
  closeTimeoutMs: 10_000,
  /** Total time budget of DNS lookups for SPF/DKIM/DMARC of one message. */
  mailAuthTimeoutMs: 10_000,
  /** Window of the AUTH failure counters (per IP and per account). */
  authFailureWindowMs: 15 * 60_000,
  /** Window of the connection, message and recipient rate counters. */
  rateWindowMs: 60_000,
} as const;

/** The configurable limits of one listener, read once at start. */
export interface SessionLimits {
  maxMessageSize: number;
  maxRecipients: number;
  idleTimeoutMs: number;
  sessionTimeoutMs: number;
  acceptTimeoutMs: number;
}

export function limitsFrom(config: Config): SessionLimits {
  return {
    maxMessageSize: config.maxMessageSize,
    maxRecipients: config.maxRecipients,
    idleTimeoutMs: config.smtpIdleTimeout,
    sessionTimeoutMs: config.smtpSessionTimeout,
    acceptTimeoutMs: config.smtpAcceptTimeout,
  };
}
