/**
 * Every limit and timeout of the POP3 service, with the reason for its value. Each can be
 * overridden through the service configuration (`limits` option of createPop3Server).
 */

export interface Pop3Limits {
  /** Longest command line in octets, CRLF included. */
  maxCommandOctets: number;
  /** Longest SASL client response line in octets, CRLF included. */
  maxSaslResponseOctets: number;
  /** Inactivity autologout timer. */
  idleTimeoutMs: number;
  /** Time a client gets to finish the TLS handshake after STLS. */
  tlsHandshakeTimeoutMs: number;
  /** Failed logins on one connection before the server hangs up. */
  maxAuthFailures: number;
  /** Protocol errors (unknown command, bad syntax, wrong state, overlong line) before hanging up. */
  maxProtocolErrors: number;
  /** Concurrent connections one server accepts. */
  maxConnections: number;
  /** Concurrent connections from one client address. */
  maxConnectionsPerIp: number;
  /** Time sessions get to flush their last reply when the server closes. */
  shutdownGraceMs: number;
  /** Size of one write when sending a multi-line listing or a message. */
  writeBatchOctets: number;
  /** Largest next message whose body a RETR reads ahead (and the blob store keeps in memory). */
  prefetchMaxOctets: number;
}

export const DEFAULT_LIMITS: Readonly<Pop3Limits> = Object.freeze({
  // RFC 2449 section 4: a command is at most 255 octets including the terminating CRLF.
  maxCommandOctets: 255,
  // RFC 5034 section 4: SASL responses are not bound by the command limit; RFC 4616 caps each of
  // authzid, authcid and password at 255 octets, so PLAIN needs at most 1024 base64 chars + CRLF.
  maxSaslResponseOctets: 2048,
  // RFC 1939 section 3: an autologout timer MUST be at least 10 minutes.
  idleTimeoutMs: 10 * 60 * 1000,
  // A handshake takes a few round trips; a peer that stalls longer is holding a socket for nothing.
  tlsHandshakeTimeoutMs: 30 * 1000,
  // RFC 1939 section 13 asks servers to slow password guessing; three tries is what clients need.
  maxAuthFailures: 3,
  // A real client rarely errs; a peer that keeps erring is confused or probing the server.
  maxProtocolErrors: 20,
  // File descriptors, memory and maildrop locks are finite; beyond this, clients should retry later.
  maxConnections: 2000,
  // One maildrop is locked by one session at a time (RFC 1939 section 8); an address holding
  // dozens of connections is a flood, not a household of mail clients.
  maxConnectionsPerIp: 50,
  // Long enough to flush a short reply, short enough not to delay a rolling restart.
  shutdownGraceMs: 2000,
  // Large enough for few syscalls, small enough that a huge LIST does not sit in memory at once.
  writeBatchOctets: 64 * 1024,
  // Most mail is a few KiB; reading a larger body ahead would hold memory for a guess.
  prefetchMaxOctets: 64 * 1024,
});

/** Merges overrides into the defaults; a value that is not a positive integer is refused. */
export function resolveLimits(overrides: Partial<Pop3Limits> = {}): Pop3Limits {
  const limits: Pop3Limits = { ...DEFAULT_LIMITS };
  for (const key of Object.keys(DEFAULT_LIMITS) as (keyof Pop3Limits)[]) {
    const value = overrides[key];
    if (value === undefined) continue;
    if (!Number.isSafeInteger(value) || value <= 0) {
      throw new RangeError(`POP3 limit ${key} must be a positive integer, got ${String(value)}`);
    }
    limits[key] = value;
  }
  // RFC 1939 section 3: the autologout timer MUST be of at least 10 minutes. A shorter value is
  // allowed for tests and for operators who knowingly deviate, so it is not clamped here.
  return limits;
}
