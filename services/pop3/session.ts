/**
 * One POP3 connection: its state (RFC 1939 section 3: AUTHORIZATION → TRANSACTION → UPDATE), the
 * policy gates checked before any handler runs, and the I/O of replies.
 *
 * Lines come from the framing layer one at a time; each is parsed, checked against the state the
 * command is valid in, and handed to the command table. Handlers return Outcome values; this is
 * the one place where the state changes and the one boundary where an exception becomes
 * `-ERR [SYS/TEMP]`. Whatever ends the connection other than QUIT (drop, timeout, shutdown)
 * releases the maildrop lock and deletes nothing.
 */
import { randomBytes } from 'node:crypto';
import { isIPv4, isIPv6, type Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import type { Authenticator, MailboxClient, MaildropLock } from '../core/mailbox-api.ts';
import { continueSasl } from './commands/auth.ts';
import {
  inState,
  releaseLock,
  type CommandContext,
  type CommandSpec,
  type Outcome,
  type SessionState,
} from './commands/command.ts';
import { COMMANDS } from './commands/index.ts';
import { DotStuffer, stuffLine } from './dot-stuffing.ts';
import type { Pop3Limits } from './limits.ts';
import { parseCommand, type Keyword, type Pop3Command } from './parser.ts';
import { Pop3Stream, type Frame } from './pop3-stream.ts';
import { SeenMarker } from './seen-marker.ts';
import { err, statusLine, type Reply } from './replies.ts';

export interface SessionOptions {
  mailbox: MailboxClient;
  auth: Authenticator;
  lock: MaildropLock;
  logger: Logger;
  hostname: string;
  allowPlaintextAuth: boolean;
  /** Peers whose connections count as secure without TLS (default: loopback). */
  trustedPeer?: (address: string | undefined) => boolean;
  retrSetsSeen: boolean;
  /** The current certificate, when STLS is offered (read at STLS time, so rotation applies). */
  secureContext: (() => SecureContext) | null;
  /** Tracing and metrics; the protocol core itself knows no telemetry library. */
  hooks?: Pop3Hooks;
  /** The connection came in on the implicit-TLS port (RFC 8314 section 3.3), handshake done. */
  implicitTls?: boolean;
  limits: Pop3Limits;
}

/** Observability hooks of a session. */
export interface Pop3Hooks {
  /** Runs one command, its reply included (a tracing span around it, a counter). */
  command?(name: string, run: () => Promise<void>): Promise<void>;
  /** A login was refused for wrong credentials. */
  authFailure?(): void;
}

/** Name of the command a frame carries, for spans and metrics: a known keyword or a fixed word. */
function commandName(frame: Frame, sasl: boolean): string {
  if (sasl) return 'AUTH';
  if (frame.kind === 'overlong') return 'overlong';
  const space = frame.line.indexOf(0x20);
  const keyword = frame.line
    .subarray(0, space < 0 ? frame.line.length : space)
    .toString('latin1')
    .toUpperCase();
  return Object.hasOwn(COMMANDS, keyword) ? keyword : 'unknown';
}

/** 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8: traffic that never leaves the host. */
export function isLoopbackAddress(address: string | undefined): boolean {
  if (!address) return false;
  const lower = address.toLowerCase();
  if (isIPv4(lower)) return lower.startsWith('127.');
  if (!isIPv6(lower)) return false;
  if (lower === '::1' || lower === '0:0:0:0:0:0:0:1') return true;
  const mapped = /^(?:0{0,4}:){0,5}:?ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower)?.[1];
  return mapped !== undefined && isIPv4(mapped) && mapped.startsWith('127.');
}

export class Pop3Session {
  readonly id: string;
  /** Settles once the connection is closed and the lock, if any, released. */
  readonly done: Promise<void>;

  readonly #options: SessionOptions;
  readonly #limits: Pop3Limits;
  readonly #logger: Logger;
  readonly #remoteAddress: string;
  readonly #plaintextPeer: boolean;
  #resolveDone!: () => void;
  #socket: Socket;
  #stream: Pop3Stream | null = null;
  #state: SessionState = { kind: 'authorization', pendingUser: null, sasl: null };
  #secure = false;
  /** The command being handled, awaited before the session tears down. */
  #current: Promise<void> | null = null;
  #closing = false;
  #teardown: Promise<void> | null = null;
  #authFailures = 0;
  /** \Seen updates of the TRANSACTION state, flushed before the lock goes. */
  #seen: SeenMarker | null = null;
  #protocolErrors = 0;
  /** The body being read ahead for the next RETR, if any. */
  #prefetching: Promise<void> | null = null;
  /**
   * RFC 1939 section 3: the autologout timer, restarted by each command rather than by each byte
   * (the socket's own timeout), so a client dripping a line one byte at a time is logged out too.
   */
  #autologout: NodeJS.Timeout | null = null;

  constructor(socket: Socket, options: SessionOptions) {
    this.id = randomBytes(6).toString('hex');
    this.done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
    this.#options = options;
    this.#limits = options.limits;
    this.#socket = socket;
    this.#remoteAddress = socket.remoteAddress ?? '';
    this.#plaintextPeer =
      options.allowPlaintextAuth || (options.trustedPeer ?? isLoopbackAddress)(socket.remoteAddress);
    this.#secure = options.implicitTls === true;
    this.#logger = options.logger.child({ session: this.id, remote: this.#remoteAddress });
  }

  /** Sends the greeting and starts reading commands. */
  start(): void {
    this.#attach(this.#socket);
    this.#socket.setTimeout(this.#limits.idleTimeoutMs);
    this.#armAutologout();
    this.#logger.debug('connected');
    // RFC 1939 section 4: greeting; the <...> part is the APOP timestamp form of section 7.
    const banner = `<${process.pid}.${Date.now()}.${randomBytes(4).toString('hex')}@${this.#options.hostname}>`;
    void this.#write(`+OK ${this.#options.hostname} POP3 ready ${banner}\r\n`);
  }

  /**
   * Server shutdown: stop reading, let the current command finish, end the connection without
   * the UPDATE state (nothing is deleted), release the lock.
   */
  shutdown(): Promise<void> {
    if (!this.#closing) {
      this.#closing = true;
      this.#stream?.stop();
      // The grace period starts now: a RETR to a client that stopped reading must not hold the
      // shutdown, so the timeout handler destroys the socket and the RETR ends.
      this.#socket.setTimeout(this.#limits.shutdownGraceMs);
      void (this.#current ?? Promise.resolve()).then(() => this.#hangUp());
    }
    return this.done;
  }

  /** Ends our side after what is written; a peer that does not close in time is cut off. */
  #hangUp(): void {
    this.#closing = true;
    this.#stream?.stop();
    // The timeout handler destroys the socket once the grace period is over.
    this.#socket.setTimeout(this.#limits.shutdownGraceMs);
    this.#socket.end();
  }

  // ---- connection -------------------------------------------------------------------------

  readonly #onClose = (): void => {
    this.#logger.debug('connection closed');
    void this.#tearDown().then(() => this.#resolveDone());
  };

  readonly #onError = (error: Error): void => {
    // 'close' follows; nothing else to do but record why.
    this.#logger.debug({ err: error }, 'connection error');
  };

  readonly #onTimeout = (): void => {
    // RFC 1939 section 3: when the autologout timer expires the server closes the connection
    // without entering UPDATE and without a response.
    if (this.#closing) this.#logger.debug('peer did not close in time');
    else this.#logger.info({ state: this.#state.kind }, 'idle timeout');
    this.#socket.destroy();
  };

  #attach(socket: Socket): void {
    this.#socket = socket;
    socket.on('close', this.#onClose);
    socket.on('error', this.#onError);
    socket.on('timeout', this.#onTimeout);
    const stream = new Pop3Stream(
      (frame) => this.#onFrame(frame),
      () => this.#lineLimit(),
    );
    // The client closed its side: once every line it sent is answered, close ours.
    stream.on('finish', () => this.#hangUp());
    stream.on('error', (error) => {
      this.#logger.error({ err: error }, 'input handling failed');
      this.#socket.destroy();
    });
    this.#stream = stream;
    socket.pipe(stream);
  }

  #detach(socket: Socket): void {
    if (this.#stream) {
      socket.unpipe(this.#stream);
      this.#stream.stop();
    }
    socket.off('close', this.#onClose);
    socket.off('error', this.#onError);
    socket.off('timeout', this.#onTimeout);
    socket.setTimeout(0);
  }

  /** RFC 2595 section 4: TLS starts right after the +OK to STLS. */
  #startTls(): void {
    const secureContext = this.#options.secureContext?.();
    if (!secureContext) throw new Error('STLS accepted without a TLS configuration');
    const raw = this.#socket;
    // Built before anything is detached, so a failure leaves the plaintext session intact.
    const secure = new TLSSocket(raw, { isServer: true, secureContext });
    // Anything the client sent after STLS in plaintext is dropped with the old stream, never run
    // as a command under TLS (the command injection of CVE-2011-0411).
    this.#detach(raw);
    secure.setTimeout(this.#limits.tlsHandshakeTimeoutMs);
    secure.once('secure', () => {
      this.#secure = true;
      secure.setTimeout(this.#limits.idleTimeoutMs);
      this.#logger.debug({ protocol: secure.getProtocol() }, 'TLS established');
    });
    this.#attach(secure);
  }

  /** Writes pieces as one gathered write (writev), waiting for the socket to drain; false once gone. */
  #writeAll(pieces: readonly Uint8Array[]): Promise<boolean> {
    if (pieces.length === 1) return this.#write(pieces[0] as Uint8Array);
    const socket = this.#socket;
    if (socket.destroyed || !socket.writable) return Promise.resolve(false);
    socket.cork();
    let last: Promise<boolean> = Promise.resolve(true);
    for (const piece of pieces) last = this.#write(piece);
    // Uncorked before waiting: corked data is not flushed, so 'drain' would never come.
    socket.uncork();
    return last;
  }

  /** Writes, waiting for the socket to drain; false once the connection is gone. */
  #write(data: string | Uint8Array): Promise<boolean> {
    const socket = this.#socket;
    if (socket.destroyed || !socket.writable) return Promise.resolve(false);
    if (socket.write(data)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const finish = (drained: boolean): void => {
        socket.off('drain', onDrain);
        socket.off('close', onClose);
        resolve(drained);
      };
      const onDrain = (): void => finish(true);
      const onClose = (): void => finish(false);
      socket.on('drain', onDrain);
      socket.on('close', onClose);
    });
  }

  // ---- commands ---------------------------------------------------------------------------

  #lineLimit(): number {
    const state = this.#state;
    return state.kind === 'authorization' && state.sasl
      ? this.#limits.maxSaslResponseOctets
      : this.#limits.maxCommandOctets;
  }

  #armAutologout(): void {
    if (this.#autologout) clearTimeout(this.#autologout);
    this.#autologout = this.#closing ? null : setTimeout(this.#onTimeout, this.#limits.idleTimeoutMs);
  }

  async #onFrame(frame: Frame): Promise<void> {
    if (this.#closing) return;
    // A command in progress (a long RETR) is bounded by the socket's timeout, not by this one.
    if (this.#autologout) clearTimeout(this.#autologout);
    const traced = this.#options.hooks?.command;
    const state = this.#state;
    const work = traced
      ? traced(commandName(frame, state.kind === 'authorization' && state.sasl !== null), () =>
          this.#handle(frame),
        )
      : this.#handle(frame);
    this.#current = work;
    try {
      await work;
    } finally {
      this.#current = null;
      this.#armAutologout();
    }
  }

  async #handle(frame: Frame): Promise<void> {
    let outcome: Outcome;
    try {
      outcome = await this.#evaluate(frame);
    } catch (error) {
      // The one boundary where a bug or a broken dependency becomes a reply.
      this.#logger.error({ err: error }, 'command failed');
      outcome = { reply: err('temporary server error', 'SYS/TEMP') };
    }
    if (outcome.next) await this.#transition(outcome.next);
    try {
      await this.#send(outcome.reply);
    } catch (error) {
      this.#logger.error({ err: error }, 'reply failed');
      this.#socket.destroy();
      return;
    }
    if (outcome.then === 'close') {
      this.#hangUp();
    } else if (outcome.then === 'starttls') {
      this.#startTls();
    }
  }

  /** Every policy gate, in one place, before a handler runs. */
  #evaluate(frame: Frame): Promise<Outcome> | Outcome {
    const state = this.#state;
    const sasl = state.kind === 'authorization' && state.sasl !== null;
    if (frame.kind === 'overlong') {
      this.#logger.debug({ octets: frame.octets }, 'overlong line');
      // RFC 2449 section 4: commands are at most 255 octets; RFC 5034 section 4: a SASL
      // response too long for the mechanism ends the exchange.
      const outcome = this.#protocolError(sasl ? 'SASL response too long' : 'line too long');
      if (sasl) outcome.next = { kind: 'authorization', pendingUser: null, sasl: null };
      return outcome;
    }
    if (state.kind === 'authorization' && state.sasl) return continueSasl(this.#context(state), frame.line);
    const parsed = parseCommand(frame.line);
    if (!parsed.ok) {
      this.#logger.debug({ keyword: parsed.keyword, error: parsed.error }, 'bad command');
      if (parsed.keyword && !inState(COMMANDS[parsed.keyword].states, state)) {
        return this.#protocolError(`${parsed.keyword} is not valid in this state`);
      }
      return this.#protocolError(parsed.error);
    }
    return this.#dispatch(parsed.command);
  }

  #dispatch<K extends Keyword>(command: Pop3Command<K>): Promise<Outcome> | Outcome {
    const spec: CommandSpec<K> = COMMANDS[command.name];
    const state = this.#state;
    this.#logger.debug({ command: spec.name, state: state.kind }, 'command');
    // RFC 1939 section 3: a command outside the state it belongs to gets -ERR.
    if (!inState(spec.states, state)) return this.#protocolError(`${spec.name} is not valid in this state`);
    return spec.run(this.#context(state), command);
  }

  /** -ERR for a protocol error; past the limit, the connection is closed. */
  #protocolError(text: string): Outcome {
    this.#protocolErrors++;
    if (this.#protocolErrors >= this.#limits.maxProtocolErrors) {
      this.#logger.info('too many protocol errors');
      return { reply: err(`${text}; too many errors, closing connection`), then: 'close' };
    }
    return { reply: err(text) };
  }

  #context<S extends SessionState>(state: S): CommandContext & { state: S } {
    const options = this.#options;
    return {
      state,
      mailbox: options.mailbox,
      auth: options.auth,
      lock: options.lock,
      logger: this.#logger,
      hostname: options.hostname,
      limits: this.#limits,
      retrSetsSeen: options.retrSetsSeen,
      secure: this.#secure,
      tlsAvailable: options.secureContext !== null && !this.#secure,
      // RFC 2595 section 2.3: cleartext passwords only under TLS, on loopback, or if configured.
      plaintextAllowed: this.#secure || this.#plaintextPeer,
      markSeen: (uid) => this.#seen?.mark(uid),
      authFailed: () => {
        options.hooks?.authFailure?.();
        return ++this.#authFailures >= this.#limits.maxAuthFailures;
      },
    };
  }

  /** The one place the state changes. Leaving TRANSACTION releases the maildrop lock. */
  async #transition(next: SessionState): Promise<void> {
    const previous = this.#state;
    this.#state = next;
    if (next.kind === 'transaction' && previous.kind !== 'transaction') {
      this.#seen = new SeenMarker(this.#options.mailbox, next.user, this.#logger);
    }
    if (previous.kind === 'transaction' && next.kind !== 'transaction') {
      // The next session, on any replica, finds every \Seen of this one in place.
      await this.#seen?.drain();
      this.#seen = null;
      await releaseLock(this.#logger, previous.release);
    }
  }

  /** Ends the session: no UPDATE state, so nothing is deleted; the lock is released. */
  #tearDown(): Promise<void> {
    this.#teardown ??= (async () => {
      this.#closing = true;
      if (this.#autologout) clearTimeout(this.#autologout);
      this.#stream?.stop();
      // A command in flight (a login, a RETR) finishes first, so its outcome is known here.
      await this.#current;
      await this.#transition({ kind: 'closed' });
    })();
    return this.#teardown;
  }

  // ---- replies ----------------------------------------------------------------------------

  async #send(reply: Reply): Promise<void> {
    switch (reply.kind) {
      case 'ok':
      case 'err':
      case 'challenge':
        await this.#write(statusLine(reply));
        return;
      case 'lines':
        await this.#sendLines(statusLine(reply), reply.lines);
        return;
      case 'message':
        await this.#sendMessage(reply);
        return;
    }
  }

  /** A multi-line response from memory, in batches so a long listing is not one huge string. */
  async #sendLines(status: string, lines: readonly string[]): Promise<void> {
    let batch = status;
    for (const line of lines) {
      batch += stuffLine(line);
      if (batch.length >= this.#limits.writeBatchOctets) {
        if (!(await this.#write(batch))) return;
        batch = '';
      }
    }
    await this.#write(`${batch}.\r\n`);
  }

  /**
   * RETR and TOP: the stored body, streamed from the blob store and dot-stuffed on the way. The
   * status line, the body and the final "." go out in writes of up to writeBatchOctets (one write
   * for most mail), each a single gathered write of the pieces, without copying the body.
   */
  async #sendMessage(reply: Extract<Reply, { kind: 'message' }>): Promise<void> {
    const body = this.#options.mailbox.openBody(reply.blob)[Symbol.asyncIterator]();
    let chunk: IteratorResult<Uint8Array>;
    try {
      // The first chunk is read before +OK, so a missing body can still be answered with -ERR.
      chunk = await body.next();
    } catch (error) {
      this.#logger.error({ err: error, blob: reply.blob }, 'cannot open message body');
      await this.#write(statusLine(err('message is unavailable, try again later', 'SYS/TEMP')));
      return;
    }
    if (reply.prefetch) this.#prefetch(reply.prefetch);
    let finished = chunk.done === true;
    let pieces: Uint8Array[] = [Buffer.from(statusLine(reply), 'utf8')];
    let octets = pieces[0]?.length ?? 0;
    const flush = async (): Promise<boolean> => {
      const out = pieces;
      pieces = [];
      octets = 0;
      return this.#writeAll(out);
    };
    try {
      const stuffer = new DotStuffer(reply.maxBodyLines);
      while (!chunk.done) {
        const out = stuffer.push(chunk.value);
        if (out.length > 0) {
          pieces.push(out);
          octets += out.length;
        }
        if (octets >= this.#limits.writeBatchOctets && !(await flush())) return;
        if (stuffer.done) break;
        chunk = await body.next();
        finished = chunk.done === true;
      }
      pieces.push(stuffer.end());
      if (!(await flush())) return;
    } catch (error) {
      finished = true;
      // +OK and the start of the body are on their way (written now if still batched): -ERR
      // cannot follow, and "." would pass a truncated message off as whole. Hang up; the session
      // ends without UPDATE, so nothing is deleted.
      this.#logger.error({ err: error, blob: reply.blob }, 'message body failed mid-stream');
      if (pieces.length > 0) await this.#writeAll(pieces);
      this.#socket.destroy();
      return;
    } finally {
      // Stop reading the blob when the client is gone or TOP has what it needs.
      if (!finished) await body.return?.();
    }
    if (reply.delivered) await reply.delivered();
  }

  /**
   * Reads a body ahead (the next message of a RETR) into the blob store's memory, one at a time
   * per session; a failure only means the RETR that asks for it reads it again (and reports it).
   */
  #prefetch(blob: string): void {
    if (this.#prefetching) return;
    const body = this.#options.mailbox.openBody(blob)[Symbol.asyncIterator]();
    this.#prefetching = body
      .next()
      .then((first) => (first.done ? undefined : body.return?.()))
      .then(
        () => undefined,
        (error: unknown) => this.#logger.debug({ err: error, blob }, 'read-ahead of a body failed'),
      )
      .finally(() => {
        this.#prefetching = null;
      });
  }
}
