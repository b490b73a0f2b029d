/** Limits of smtp-ingress, each with its reason. Message size and recipients come from the configuration. */
export const LIMITS = {
  /** Concurrent sessions per ingress replica, so a flood cannot exhaust file descriptors. */
  maxClients: 1000,
  /** RFC 5321 4.5.3.2.7: a server should wait at least 5 minutes for the next command. */
  socketTimeoutMs: 5 * 60_000,
  /** How long stop() lets sessions finish before dropping them (inside the shutdown grace). */
  closeTimeoutMs: 15_000,
  /** Commands before AUTH on submission, so unauthenticated clients cannot loop forever. */
  maxUnauthenticatedCommands: 20,
  /** RFC 5321 6.3: a loop is assumed past this many Received headers (Postfix uses 50). */
  maxHops: 50,
} as const;
