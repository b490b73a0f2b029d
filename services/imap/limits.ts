/**
 * Every size limit and timeout of the IMAP front end, in one place, each with its reason.
 * All are overridable per server through `createImapServer({ limits })`.
 */
export interface ImapLimits {
  /** Longest command line (one segment between literals), in octets. */
  maxLineBytes: number;
  /** Largest literal a client may send (an APPEND message is one literal). */
  maxLiteralBytes: number;
  /** Most literals in one command line. */
  maxLiterals: number;
  /** Largest whole command: every line segment and literal combined. */
  maxCommandBytes: number;
  /** Commands parsed but not yet executed, before the session stops reading the socket. */
  maxQueuedCommands: number;
  /** Failed authentications on one connection before it is closed. */
  maxAuthFailures: number;
  /** Consecutive BAD commands before the connection is closed. */
  maxBadCommands: number;
  /** Inactivity before the autologout, reset by every command (IDLE included). */
  idleTimeoutMs: number;
  /** How long an unauthenticated connection may stay before it is closed. */
  authTimeoutMs: number;
  /** How long close() waits for sessions to say BYE before destroying their sockets. */
  shutdownGraceMs: number;
  /** Open connections per server; past it a new one gets `* BYE [UNAVAILABLE]`. */
  maxConnections: number;
  /** Open connections from one client address; past it a new one gets `* BYE [UNAVAILABLE]`. */
  maxConnectionsPerIp: number;
  /** Deepest MIME nesting parsed for BODYSTRUCTURE and body sections. */
  maxMimeDepth: number;
  /** Most MIME parts in one message that are parsed. */
  maxMimeParts: number;
  /** Parsed messages (ENVELOPE, BODYSTRUCTURE, bytes) kept per server, shared by its sessions. */
  parsedMessageCache: number;
  /** Largest total of message bytes cached per server. */
  parsedMessageCacheBytes: number;
  /** Messages whose metadata is fetched from storage in one call. */
  storageBatch: number;
  /** Messages whose summaries (flags, sizes, MODSEQ: FETCH without body items) are fetched in one call. */
  summaryBatch: number;
  /** Octets of FETCH responses gathered before they are written to the socket in one go. */
  outputBatchBytes: number;
  /** Whole bodies (BODY[], RFC822) up to this size are read whole and sent with their response line. */
  inlineBodyBytes: number;
  /** Whole bodies of one FETCH read ahead of the one being written. */
  bodyPrefetch: number;
  /** APPEND literals this large go to storage as they arrive instead of being buffered. */
  appendStreamThreshold: number;
  /** Octets of a streamed literal queued for storage before the socket is paused. */
  literalHighWater: number;
}

export const DEFAULT_LIMITS: Readonly<ImapLimits> = {
  // RFC 7162 3 recommends clients keep lines under 8192 octets; UID sets of big mailboxes need more.
  maxLineBytes: 64 * 1024,
  // Matches the mailbox-store's message size cap; a bigger APPEND is answered NO [TOOBIG].
  maxLiteralBytes: 50 * 1024 * 1024,
  // No command we implement needs more than a few (APPEND: one; LOGIN: two); this stops floods.
  maxLiterals: 32,
  // One literal at its maximum plus the line segments around it.
  maxCommandBytes: 50 * 1024 * 1024 + 256 * 1024,
  // Pipelined commands are fine, an unbounded queue of them is not.
  maxQueuedCommands: 64,
  // Password guessing: three tries per connection, then reconnect (and be seen by rate limits).
  maxAuthFailures: 3,
  // A peer that keeps sending garbage is not an IMAP client.
  maxBadCommands: 20,
  // RFC 3501 5.4: the autologout timer must be at least 30 minutes.
  idleTimeoutMs: 30 * 60 * 1000,
  // Unauthenticated connections cost a socket and give nothing; RFC 3501 5.4 allows a shorter timer.
  authTimeoutMs: 60 * 1000,
  // Long enough to flush a BYE, short enough for a rolling restart.
  shutdownGraceMs: 5000,
  // Sockets, memory and change subscriptions are finite; IDLE keeps one or two per device open.
  maxConnections: 5000,
  // A household or office behind one NAT address runs a few devices with a few connections each;
  // a single address holding more is a flood (Dovecot limits 10 per user and address).
  maxConnectionsPerIp: 50,
  // Real mail nests a handful of levels; deeper is an attack on the recursive parser.
  maxMimeDepth: 32,
  // Bounds BODYSTRUCTURE output and parse time for messages built to explode.
  maxMimeParts: 1000,
  // Bodies are immutable (content-addressed): ENVELOPE, headers and SEARCH of the messages every
  // device of every user keeps asking for should not be read from the blob store each time.
  parsedMessageCache: 8192,
  // But the cache must stay a small part of the instance's memory.
  parsedMessageCacheBytes: 64 * 1024 * 1024,
  // Keeps a FETCH 1:* of a large mailbox from asking storage for everything at once.
  storageBatch: 500,
  // A summary is ~40 octets: 5,000 is a 200 KB reply and a few ms of Redis, not 10 round trips.
  summaryBatch: 5000,
  // One write (one syscall) per 64 KiB instead of one per message; a client sees no delay.
  outputBatchBytes: 64 * 1024,
  // Most mail is a few KiB: one read and one write instead of a stream, at a bounded cost per session.
  inlineBodyBytes: 256 * 1024,
  // A few reads in flight hide the blob store's latency; more only hold memory (4 x inlineBodyBytes).
  bodyPrefetch: 4,
  // Below this a buffer is cheaper than a stream; above it a few concurrent APPENDs add up.
  appendStreamThreshold: 1024 * 1024,
  // Enough to keep the blob store busy, small enough that many APPENDs fit in memory.
  literalHighWater: 1024 * 1024,
};

/** The defaults with the given overrides applied. */
export function resolveLimits(overrides: Partial<ImapLimits> = {}): ImapLimits {
  return { ...DEFAULT_LIMITS, ...overrides };
}

/** Deepest nesting of SEARCH keys (parentheses, NOT, OR): the parser recurses once per level. */
export const MAX_SEARCH_NESTING = 64;
