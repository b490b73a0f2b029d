/**
 * One IMAP session per connection: reads framed commands, checks each against the command
 * table's allowed states, runs its handler and writes the tagged outcome. Every policy gate
 * (state, BAD floods, limits, timeouts) is here; every storage exception stops here and
 * becomes `NO [UNAVAILABLE]`.
 *
 * Output goes through one ordered write chain, so a `+` continuation or an untagged change
 * can never land inside another response, and every write waits for the socket to drain.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import type { Writable } from 'node:stream';
import tls from 'node:tls';
import zlib from 'node:zlib';
import type { Logger } from 'pino';
import type { Authenticator, MailboxChange, MailboxClient, MessageMeta } from '../core/mailbox-api.ts';
import { MailboxError } from '../core/mailbox-api.ts';
import { COMMANDS } from './commands/index.ts';
import type { CommandSpec } from './commands/common.ts';
import { storageFailure } from './commands/common.ts';
import type { SessionContext, SessionState, StreamedAppend } from './context.ts';
import { LiteralPipe } from './literal-pipe.ts';
import { MessageCache } from './message-cache.ts';
import type { LiteralSink } from './imap-stream.ts';
import { storableFlags, isOutcome } from './commands/common.ts';
import { ImapStream } from './imap-stream.ts';
import type { Frame, Rejection } from './imap-stream.ts';
import type { ImapLimits } from './limits.ts';
import { parseMessage } from './mime-tree.ts';
import type { ParsedMessage } from './mime-tree.ts';
import { parseCommand } from './parser.ts';
import type { Command, CommandName } from './parser.ts';
import { atom, responseLine, statusLine } from './response.ts';
import { formatSequenceSet } from './sequence-set.ts';
import type { SelectedMailbox } from './selected-mailbox.ts';
import { loadSummaries } from './summaries.ts';
import type { ImapValue, Outcome, OutputPart, StreamLiteral } from './response.ts';

export interface SessionOptions {
  storage: MailboxClient;
  auth: Authenticator;
  logger: Logger;
  hostname: string;
  allowPlaintextAuth: boolean;
  /** Peers whose connections count as secure without TLS (default: loopback, as Dovecot does). */
  trustedPeer?: (address: string | undefined) => boolean;
  limits: ImapLimits;
  /** Parsed messages shared with the other sessions of the server. */
  messages?: MessageCache;
  /** The current certificate for STARTTLS; absent when STARTTLS is not offered. */
  tls?: () => tls.SecureContext;
  /** Tracing and metrics; the protocol core knows no telemetry library. */
  hooks?: ImapHooks;
}

/** Observability hooks of the sessions. */
export interface ImapHooks {
  /** A connection starts: its observer sees every command. */
  session?(peer: { remoteAddress: string; remotePort: number; localAddress: string; localPort: number }): {
    /** A command starts (`UID FETCH`; `other` for input that is no valid command). */
    command(name: string): CommandObserver;
    /** The connection is gone. */
    end(): void;
  };
}

/** One command, from its complete input (literals included) to its tagged response. */
export interface CommandObserver {
  /** Runs fn as part of the command (its span is the active one). */
  run<T>(fn: () => T): T;
  /** OK, NO or BAD with the response code's atom; `+` for IDLE once idling; null if cut short. */
  end(result: { status: string; code?: string; failed?: boolean } | null): void;
}

type Input = { kind: 'frame'; frame: Frame } | { kind: 'reject'; rejection: Rejection };

/** Changes remembered so a SELECT can apply those that arrived while it loaded the mailbox. */
const CHANGE_LOG_SIZE = 256;

/** RFC 9051 7.5.1: FETCH, STORE and SEARCH must not report EXPUNGE; their UID forms may. */
const NO_EXPUNGE_COMMANDS = new Set<CommandName>(['FETCH', 'STORE', 'SEARCH', 'SORT', 'THREAD']);

/** 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

/** Writes smaller than this are gathered until the end of the tick (a socket's default high-water mark). */
const CORK_BYTES = 16 * 1024;

export class ImapSession implements SessionContext {
  readonly id = `imap-${randomBytes(8).toString('hex')}`;
  readonly storage: MailboxClient;
  readonly auth: Authenticator;
  readonly logger: Logger;
  readonly limits: ImapLimits;
  readonly hostname: string;

  readonly #options: SessionOptions;
  readonly #raw: net.Socket;
  #socket: net.Socket;
  #secure: boolean;
  #state: SessionState = { kind: 'notAuthenticated' };
  readonly #stream: ImapStream;
  #input: Input[] = [];
  #inputWaiter: ((input: Input | null) => void) | null = null;
  #paused = false;
  #closed = false;
  #closing = false;
  #writeChain: Promise<void> = Promise.resolve();
  /** The socket corked until the end of the tick (see #writeNow), if any. */
  #corked: net.Socket | null = null;
  #timer: NodeJS.Timeout | null = null;
  #unwatch: (() => void) | null = null;
  /** One promise shared by everyone waiting for the next change (IDLE). */
  #nextChange: { promise: Promise<void>; resolve: () => void } | null = null;
  #changeLog: MailboxChange[] = [];
  #changeCount = 0;
  readonly #messages: MessageCache;
  readonly enabled = new Set<string>();
  #authFailures = 0;
  /** The APPEND being streamed to storage, until its command takes the result. */
  #streamedAppend: Promise<StreamedAppend> | null = null;
  #streamedFolder = '';
  /** COMPRESS=DEFLATE (RFC 4978): the decompressor of input and compressor of output. */
  #inflate: zlib.InflateRaw | null = null;
  #deflate: zlib.DeflateRaw | null = null;
  /** Reading is paused because storage is behind on a streamed literal. */
  #literalPaused = false;
  #badCommands = 0;
  readonly #observer: ReturnType<NonNullable<ImapHooks['session']>> | null;
  /** The command being run, with how it ended so far. */
  #command: {
    name: string;
    observer: CommandObserver;
    result: { status: string; code?: string; failed?: boolean } | null;
  } | null = null;
  readonly #closedPromise: Promise<void>;
  #resolveClosed: () => void = () => undefined;

  constructor(socket: net.Socket, options: SessionOptions) {
    this.#options = options;
    this.storage = options.storage;
    this.#messages = options.messages ?? new MessageCache(options.limits);
    this.auth = options.auth;
    this.limits = options.limits;
    this.hostname = options.hostname;
    this.#raw = socket;
    this.#socket = socket;
    this.#secure = socket instanceof tls.TLSSocket;
    this.logger = options.logger.child({ session: this.id, remote: socket.remoteAddress });
    this.#observer =
      options.hooks?.session?.({
        remoteAddress: socket.remoteAddress ?? '',
        remotePort: socket.remotePort ?? 0,
        localAddress: socket.localAddress ?? '',
        localPort: socket.localPort ?? 0,
      }) ?? null;
    this.#closedPromise = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    this.#stream = new ImapStream(
      { ...options.limits, streamThreshold: options.limits.appendStreamThreshold },
      {
        streamLiteral: (segments, size) => this.#streamLiteral(segments, size),
        frame: (frame) => this.#enqueue({ kind: 'frame', frame }),
        reject: (rejection) => this.#enqueue({ kind: 'reject', rejection }),
        continueLiteral: () => {
          void this.write([Buffer.from('+ Ready for literal data\r\n')]);
        },
        fatal: (reason) => {
          this.logger.info({ reason }, 'closing: unframeable input');
          void this.write([statusLine('*', 'BYE', reason)]).then(() => this.#destroy());
        },
      },
    );
  }

  /** Greets the client and serves it until the connection ends. */
  start(): void {
    this.#attach(this.#socket);
    this.#raw.on('close', () => this.#onClosed());
    this.#resetTimer();
    void this.#run();
  }

  /** Resolves once the connection is closed. */
  get done(): Promise<void> {
    return this.#closedPromise;
  }

  get state(): SessionState {
    return this.#state;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get secure(): boolean {
    return this.#secure;
  }

  get tlsAvailable(): boolean {
    return this.#options.tls !== undefined && !this.#secure;
  }

  setState(next: SessionState): void {
    if (next.kind !== this.#state.kind) this.logger.debug({ from: this.#state.kind, to: next.kind }, 'state');
    this.#state = next;
    this.#resetTimer();
  }

  plaintextAuthAllowed(): boolean {
    return (
      this.#secure ||
      this.#options.allowPlaintextAuth ||
      (this.#options.trustedPeer ?? isLoopback)(this.#raw.remoteAddress)
    );
  }

  capabilities(): string[] {
    const caps = ['IMAP4rev1', 'IMAP4rev2'];
    if (this.#state.kind === 'notAuthenticated') {
      if (this.tlsAvailable) caps.push('STARTTLS');
      // RFC 9051 6.2.3: LOGINDISABLED when password logins are refused on this connection.
      if (this.plaintextAuthAllowed()) caps.push('AUTH=PLAIN', 'AUTH=LOGIN');
      else caps.push('LOGINDISABLED');
      caps.push('SASL-IR');
    }
    caps.push('LITERAL+', 'ID', 'IDLE', 'NAMESPACE', 'UIDPLUS', 'MOVE', 'UNSELECT', 'ENABLE');
    caps.push('SPECIAL-USE', 'CHILDREN');
    if (this.#state.kind !== 'notAuthenticated') {
      if (!this.#deflate) caps.push('COMPRESS=DEFLATE');
      // Extensions of the authenticated states (RFC 9051 7.2.2: the list may grow after login).
      caps.push('LIST-EXTENDED', 'LIST-STATUS', 'ESEARCH', 'SEARCHRES', 'CONDSTORE', 'QRESYNC');
      caps.push('MULTIAPPEND', `APPENDLIMIT=${this.limits.maxLiteralBytes}`, 'BINARY', 'UTF8=ACCEPT');
      caps.push('QUOTA', 'QUOTA=RES-STORAGE', 'QUOTA=RES-MESSAGE', 'STATUS=SIZE');
      caps.push('SORT', 'SORT=DISPLAY', 'THREAD=ORDEREDSUBJECT');
    }
    return caps;
  }

  async reportExpunged(uids: readonly number[]): Promise<void> {
    const state = this.#state;
    if (state.kind !== 'selected') return;
    const mailbox = state.mailbox;
    const sorted = [...uids].sort((a, b) => a - b);
    if (this.enabled.has('QRESYNC')) {
      const gone = sorted.filter((uid) => mailbox.remove(uid) > 0);
      if (gone.length > 0) await this.untagged(`VANISHED ${formatSequenceSet(gone)}`);
      return;
    }
    // RFC 9051 7.5.1: each EXPUNGE renumbers the rest, so ascending UIDs keep their order right.
    for (const uid of sorted) {
      const seq = mailbox.remove(uid);
      if (seq > 0) await this.untagged(`${seq} EXPUNGE`);
    }
  }

  /** Tells the client the server is going away and closes (server shutdown). */
  async shutdown(): Promise<void> {
    if (this.#closed) return;
    // A client that stopped reading would hold the BYE (and the shutdown) forever.
    const timer = setTimeout(() => this.#destroy(), this.limits.shutdownGraceMs);
    void this.done.then(() => clearTimeout(timer));
    await this.write([statusLine('*', 'BYE', 'Server shutting down')]);
    await this.close();
  }

  // -------------------------------------------------------------------------------------------
  // Input

  #attach(socket: net.Socket): void {
    socket.on('data', (chunk: Buffer) => {
      if (socket !== this.#socket) return;
      if (this.#inflate) this.#inflate.write(chunk);
      else this.#stream.push(chunk);
    });
    socket.on('error', (error) => {
      this.logger.debug({ err: error }, 'socket error');
      this.#destroy();
    });
  }

  #enqueue(input: Input): void {
    if (this.#inputWaiter) {
      const waiter = this.#inputWaiter;
      this.#inputWaiter = null;
      waiter(input);
      return;
    }
    this.#input.push(input);
    if (this.#input.length >= this.limits.maxQueuedCommands && !this.#paused) {
      // Pipelining is fine; an unbounded backlog is not: stop reading until it drains.
      this.#paused = true;
      this.#socket.pause();
    }
  }

  #nextInput(): Promise<Input | null> {
    const next = this.#input.shift();
    if (this.#paused && this.#input.length < this.limits.maxQueuedCommands) {
      this.#paused = false;
      if (!this.#literalPaused) this.#socket.resume();
    }
    if (next) {
      this.#resetTimer();
      return Promise.resolve(next);
    }
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => {
      this.#inputWaiter = (input) => {
        if (input) this.#resetTimer();
        resolve(input);
      };
    });
  }

  async readLine(): Promise<Buffer | null> {
    const input = await this.#nextInput();
    if (!input) return null;
    // A line over the limits is no valid answer to anything.
    if (input.kind === 'reject') return Buffer.from('*');
    return Buffer.concat(input.frame.segments);
  }

  // -------------------------------------------------------------------------------------------
  // Command loop

  async #run(): Promise<void> {
    try {
      const greeting = `${this.hostname} Postino IMAP4rev1 ready`;
      await this.write([statusLine('*', 'OK', greeting, `CAPABILITY ${this.capabilities().join(' ')}`)]);
      while (this.#state.kind !== 'logout') {
        const input = await this.#nextInput();
        if (!input) break;
        await this.#handle(input);
      }
    } catch (error) {
      this.logger.error({ err: error }, 'session failed');
      this.#destroy();
    }
  }

  async #handle(input: Input): Promise<void> {
    const owns =
      input.kind === 'frame' ? (input.frame.streamed?.length ?? 0) > 0 : input.rejection.streamed === true;
    try {
      await this.#dispatch(input);
    } finally {
      // A streamed APPEND whose command did not take it (BAD, rejected) must not stay stored.
      const orphan = owns ? this.#streamedAppend : null;
      if (owns) this.#streamedAppend = null;
      this.#streamedAppend = null;
      if (orphan) await this.#rollBack(orphan);
    }
  }

  async #rollBack(orphan: Promise<StreamedAppend>): Promise<void> {
    const result = await orphan;
    const state = this.#state;
    if (!result.ok || (state.kind !== 'authenticated' && state.kind !== 'selected')) return;
    const folder = this.#streamedFolder;
    await this.storage.expunge(state.user, folder, [result.uid], true, this.id).catch((error: unknown) => {
      this.logger.warn({ err: error, folder, uid: result.uid }, 'could not remove an abandoned APPEND');
    });
  }

  /**
   * RFC 9051 6.3.12: a large APPEND goes to storage while its literal arrives, when it is the
   * only thing pending: single message, state allows APPEND, nothing queued before it. Anything
   * else is buffered and handled as usual.
   */
  #streamLiteral(segments: readonly Buffer[], size: number): LiteralSink | null {
    const state = this.#state;
    if (state.kind !== 'authenticated' && state.kind !== 'selected') return null;
    if (segments.length !== 1 || this.#input.length > 0 || this.#streamedAppend) return null;
    const head = parseCommand({
      segments: [segments[0] as Buffer, Buffer.alloc(0)],
      literals: [Buffer.alloc(size > 0 ? 1 : 0)],
    });
    if (!head.ok || head.command.name !== 'APPEND') return null;
    const { mailbox, messages } = head.command.args;
    const first = messages[0];
    if (messages.length !== 1 || !first) return null;
    const flags = storableFlags(first.flags);
    if (isOutcome(flags)) return null;
    const pipe = new LiteralPipe(this.limits.literalHighWater, () => {
      if (!this.#literalPaused) return;
      this.#literalPaused = false;
      if (!this.#paused) this.#socket.resume();
    });
    const user = state.user;
    this.#streamedFolder = mailbox;
    this.#streamedAppend = this.storage
      .appendStream(user, mailbox, pipe, flags, first.date ?? undefined, this.id)
      .then(
        (r): StreamedAppend => ({ ok: true, uid: r.uid, uidValidity: r.uidValidity }),
        (error: unknown): StreamedAppend => ({ ok: false, error }),
      )
      .finally(() => pipe.discard());
    return {
      write: (chunk) => {
        const more = pipe.write(chunk);
        if (!more && !this.#literalPaused) {
          this.#literalPaused = true;
          this.#socket.pause();
        }
        return more;
      },
      end: () => pipe.end(),
      abort: (reason) => pipe.abort(reason),
    };
  }

  takeStreamedAppend(): Promise<StreamedAppend> | null {
    const taken = this.#streamedAppend;
    this.#streamedAppend = null;
    return taken;
  }

  async #dispatch(input: Input): Promise<void> {
    if (input.kind === 'reject') {
      const rejection = input.rejection;
      const name =
        rejection.command && Object.hasOwn(COMMANDS, rejection.command) ? rejection.command : 'other';
      await this.#traced(name, () => this.#rejected(rejection));
      return;
    }
    const parsed = parseCommand(input.frame);
    if (!parsed.ok) {
      await this.#traced('other', () => this.#bad(parsed.tag, parsed.text));
      return;
    }
    const command = parsed.command;
    await this.#traced(command.uid ? `UID ${command.name}` : command.name, () => this.#execute(command));
  }

  /**
   * Runs one command in its span. The span starts once the command is complete (literals
   * included), so a slow literal is not in it; IDLE's ends when idling starts.
   */
  async #traced(name: string, fn: () => Promise<void>): Promise<void> {
    if (!this.#observer) return fn();
    const current = { name, observer: this.#observer.command(name), result: null };
    this.#command = current;
    try {
      await current.observer.run(fn);
    } finally {
      this.#command = null;
      current.observer.end(current.result);
    }
  }

  /** Records the tagged response of the command being run. */
  #answered(status: string, code?: string, failed = false): void {
    if (this.#command) this.#command.result = { status, code: code?.split(' ', 1)[0], failed };
  }

  async #execute(command: Command): Promise<void> {
    const spec = COMMANDS[command.name] as CommandSpec<CommandName>;
    if (!spec.states.includes(this.#state.kind)) {
      await this.#bad(command.tag, this.#wrongState(command.name, spec));
      return;
    }
    let outcome: Outcome;
    try {
      outcome = await spec.handle(this, command as never);
    } catch (error) {
      outcome = storageFailure(this, error);
      this.#answered(outcome.status, outcome.code, true);
    }
    if (outcome.status === 'BAD') {
      await this.#bad(command.tag, outcome.text, outcome.code);
      return;
    }
    this.#badCommands = 0;
    if (command.name !== 'LOGOUT' && command.name !== 'IDLE') {
      await this.syncSelected({ expunge: !(NO_EXPUNGE_COMMANDS.has(command.name) && !command.uid) });
    }
    if (!this.#command?.result?.failed) this.#answered(outcome.status, outcome.code);
    await this.write([statusLine(command.tag, outcome.status, outcome.text, outcome.code)]);
    this.logger.debug({ command: describe(command), status: outcome.status }, 'command');
    if (outcome.after) await outcome.after();
  }

  #wrongState(name: CommandName, spec: CommandSpec<CommandName>): string {
    const current = this.#state.kind;
    if (spec.states.includes('selected') && current === 'notAuthenticated')
      return `${name} needs authentication`;
    if (spec.states.includes('selected') && current === 'authenticated')
      return `${name} needs a selected mailbox`;
    return `${name} is not allowed now`;
  }

  async #bad(tag: string | null, text: string, code?: string): Promise<void> {
    this.#answered('BAD', code);
    await this.write([statusLine(tag ?? '*', 'BAD', text, code)]);
    if (++this.#badCommands >= this.limits.maxBadCommands) {
      await this.write([statusLine('*', 'BYE', 'Too many invalid commands')]);
      await this.close();
    }
  }

  async #rejected(rejection: Rejection): Promise<void> {
    switch (rejection.reason) {
      case 'literalTooBig':
        // RFC 7889: an APPEND over the size limit is answered NO [TOOBIG].
        if (rejection.command === 'APPEND' && rejection.tag) {
          this.#answered('NO', 'TOOBIG');
          await this.write([statusLine(rejection.tag, 'NO', 'Message too large', 'TOOBIG')]);
          return;
        }
        await this.#bad(rejection.tag, 'Literal too large', 'TOOBIG');
        return;
      case 'lineTooLong':
        await this.#bad(rejection.tag, 'Command line too long');
        return;
      case 'tooManyLiterals':
        await this.#bad(rejection.tag, 'Too many literals');
        return;
      case 'commandTooBig':
        await this.#bad(rejection.tag, 'Command too large', 'TOOBIG');
        return;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Output

  write(parts: OutputPart[]): Promise<void> {
    const run = this.#writeChain.then(() => this.#writeNow(parts));
    this.#writeChain = run.catch(() => undefined);
    return run;
  }

  async untagged(prefix: string, values: readonly ImapValue[] = []): Promise<void> {
    await this.write(responseLine(`* ${prefix}`, values));
  }

  async continuation(text: string): Promise<void> {
    await this.write([Buffer.from(`+ ${text}\r\n`, 'latin1')]);
    // RFC 2177: IDLE may last until the autologout; its span ends once the server is idling.
    const current = this.#command;
    if (current?.name === 'IDLE') {
      this.#command = null;
      current.observer.end({ status: '+' });
    }
  }

  async #writeNow(parts: OutputPart[]): Promise<void> {
    // Small writes until the end of this tick (a FETCH response and the tagged OK after it) go
    // out in one syscall; a big one goes at once (corked, it would wait for a drain).
    let bytes = 0;
    for (const part of parts) bytes += Buffer.isBuffer(part) ? part.length : CORK_BYTES;
    if (bytes >= CORK_BYTES) this.#uncork();
    else if (!this.#corked && !this.#deflate && !this.#socket.destroyed) {
      const socket = this.#socket;
      socket.cork();
      this.#corked = socket;
      process.nextTick(() => {
        if (this.#corked === socket) this.#uncork();
      });
    }
    for (let i = 0; i < parts.length;) {
      if (this.#closed || this.#socket.destroyed) return;
      const part = parts[i] as OutputPart;
      if (!Buffer.isBuffer(part)) {
        await this.#writeStream(part);
        i++;
        continue;
      }
      // Adjacent buffers (a batch of FETCH responses) go out in one write: one syscall, not one each.
      let j = i + 1;
      while (j < parts.length && Buffer.isBuffer(parts[j])) j++;
      const chunk = j - i === 1 ? part : Buffer.concat(parts.slice(i, j) as Buffer[]);
      i = j;
      if (!this.#out().write(chunk)) await this.#drain();
    }
    // RFC 4978 4: each response is flushed so the client can decompress it at once.
    this.#deflate?.flush(zlib.constants.Z_SYNC_FLUSH);
  }

  /** Sends what the socket holds corked now (before it is wrapped, ended or destroyed). */
  #uncork(): void {
    const socket = this.#corked;
    this.#corked = null;
    socket?.uncork();
  }

  /** Where output goes: the socket, or the compressor in front of it (COMPRESS=DEFLATE). */
  #out(): Writable {
    return this.#deflate ?? this.#socket;
  }

  /** Streams a literal body; its announced size must be exact or the connection is lost. */
  async #writeStream(part: StreamLiteral): Promise<void> {
    let sent = 0;
    try {
      for await (const chunk of part.source) {
        if (this.#closed || this.#socket.destroyed) return;
        const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        const take = bytes.subarray(0, part.size - sent);
        sent += take.length;
        if (take.length > 0 && !this.#out().write(take)) await this.#drain();
        if (sent >= part.size) break;
      }
    } catch (error) {
      // The literal is announced and half sent: the connection cannot be brought back in step.
      this.logger.error({ err: error }, 'reading a body failed while streaming it');
      this.#destroy();
      throw error;
    }
    if (sent !== part.size) {
      this.logger.error({ expected: part.size, sent }, 'body shorter than its stored size');
      this.#destroy();
      throw new Error('Message body does not match its size');
    }
  }

  #drain(): Promise<void> {
    const socket = this.#out();
    if (socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        socket.off('drain', done);
        socket.off('close', done);
        resolve();
      };
      socket.on('drain', done);
      socket.on('close', done);
    });
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  #resetTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#closed) return;
    // RFC 9051 5.4: at least 30 minutes once authenticated; before that a shorter wait is allowed.
    const timeout =
      this.#state.kind === 'notAuthenticated'
        ? Math.min(this.limits.authTimeoutMs, this.limits.idleTimeoutMs)
        : this.limits.idleTimeoutMs;
    this.#timer = setTimeout(() => {
      this.logger.info('autologout');
      void this.write([statusLine('*', 'BYE', 'Autologout; idle for too long')]).then(() => this.close());
    }, timeout);
  }

  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    await this.#writeChain;
    this.#uncork();
    if (this.#deflate) this.#deflate.end();
    else this.#socket.end();
    // A peer that does not close its side is cut off after the grace period; the timer goes once
    // the session is done (left pending, it would keep the closed session alive).
    const timer = setTimeout(() => this.#destroy(), this.limits.shutdownGraceMs);
    timer.unref();
    void this.done.then(() => clearTimeout(timer));
  }

  #destroy(): void {
    this.#uncork();
    this.#socket.destroy();
    this.#raw.destroy();
  }

  #onClosed(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stream.close();
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#unwatch) {
      this.#unwatch();
      this.#unwatch = null;
    }
    this.setState({ kind: 'logout' });
    this.#observer?.end();
    this.#input = [];
    const waiter = this.#inputWaiter;
    this.#inputWaiter = null;
    waiter?.(null);
    this.#wakeChangeWaiters();
    this.#resolveClosed();
  }

  get compressed(): boolean {
    return this.#deflate !== null;
  }

  startCompression(): void {
    if (this.#deflate || this.#closed) return;
    this.#uncork();
    // RFC 4978 4: raw DEFLATE (RFC 1951) both ways, from the octet after the tagged OK.
    const inflate = zlib.createInflateRaw();
    const deflate = zlib.createDeflateRaw();
    inflate.on('data', (chunk: Buffer) => this.#stream.push(chunk));
    const broken = (error: Error): void => {
      this.logger.info({ err: error }, 'compressed stream broken');
      this.#destroy();
    };
    inflate.on('error', broken);
    deflate.on('error', broken);
    deflate.pipe(this.#socket);
    this.#inflate = inflate;
    this.#deflate = deflate;
  }

  async startTls(): Promise<void> {
    const context = this.#options.tls?.();
    if (!context) return;
    this.#uncork();
    // RFC 9051 6.2.1: anything the client sent after STARTTLS in plaintext is discarded.
    this.#stream.reset();
    this.#input = [];
    const secure = new tls.TLSSocket(this.#raw, { isServer: true, secureContext: context });
    this.#socket = secure;
    this.#attach(secure);
    await new Promise<void>((resolve) => {
      const done = (): void => {
        secure.off('secure', done);
        secure.off('close', done);
        resolve();
      };
      secure.on('secure', done);
      secure.on('close', done);
    });
    if (!this.#closed) {
      this.#secure = true;
      this.logger.debug('TLS established');
    }
  }

  // -------------------------------------------------------------------------------------------
  // Authentication and changes

  authFailed(): boolean {
    this.#authFailures++;
    return this.#authFailures >= this.limits.maxAuthFailures;
  }

  async loggedIn(user: string): Promise<void> {
    this.#unwatch = await this.storage.watch(user, (change) => this.#onChange(change));
    if (this.#closed) {
      this.#unwatch();
      this.#unwatch = null;
      return;
    }
    this.setState({ kind: 'authenticated', user });
    this.logger.info({ user }, 'logged in');
  }

  #onChange(change: MailboxChange): void {
    this.#changeCount++;
    this.#changeLog.push(change);
    if (this.#changeLog.length > CHANGE_LOG_SIZE) this.#changeLog.shift();
    if (this.#apply(change)) this.#wakeChangeWaiters();
  }

  /** Records a change for the selected mailbox; true if it concerns it. */
  #apply(change: MailboxChange): boolean {
    const state = this.#state;
    if (state.kind !== 'selected' || change.folder !== state.mailbox.name) return false;
    const mailbox = state.mailbox;
    // This session reported its own flag changes and expunges already.
    const own = change.origin === this.id;
    switch (change.kind) {
      case 'append':
        mailbox.appendPending = true;
        break;
      case 'flags':
        if (own) return false;
        for (const uid of change.uids) if (mailbox.has(uid)) mailbox.flagsPending.add(uid);
        break;
      case 'expunge':
        if (own) return false;
        for (const uid of change.uids) if (mailbox.has(uid)) mailbox.expungePending.add(uid);
        break;
      case 'folder':
        mailbox.folderChanged = true;
        break;
    }
    return true;
  }

  /** A position in the change log, to replay what arrives during a SELECT. */
  changeMark(): number {
    return this.#changeCount;
  }

  /** Applies the changes received since `mark` to the (newly) selected mailbox. */
  replayChanges(mark: number): void {
    const missed = this.#changeCount - mark;
    if (this.#state.kind === 'selected' && missed > this.#changeLog.length) {
      this.#state.mailbox.appendPending = true;
    }
    for (const change of this.#changeLog.slice(Math.max(0, this.#changeLog.length - missed))) {
      this.#apply(change);
    }
  }

  nextChange(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (!this.#nextChange) {
      let resolve: () => void = () => undefined;
      const promise = new Promise<void>((r) => {
        resolve = r;
      });
      this.#nextChange = { promise, resolve };
    }
    return this.#nextChange.promise;
  }

  #wakeChangeWaiters(): void {
    const next = this.#nextChange;
    this.#nextChange = null;
    next?.resolve();
  }

  async syncSelected(options: { expunge: boolean; appends?: boolean }): Promise<void> {
    const state = this.#state;
    if (state.kind !== 'selected' || this.#closed) return;
    const { user, mailbox } = state;
    try {
      if (mailbox.folderChanged) {
        mailbox.folderChanged = false;
        const info = await this.storage.status(user, mailbox.name);
        if (info.uidValidity !== mailbox.uidValidity)
          throw new MailboxError('NONEXISTENT', 'Mailbox replaced');
      }
      if (options.expunge && mailbox.expungePending.size > 0) {
        await this.reportExpunged([...mailbox.expungePending]);
      }
      if (mailbox.appendPending || options.appends) {
        mailbox.appendPending = false;
        await this.#syncAppends(user, mailbox);
      }
      if (mailbox.flagsPending.size > 0) {
        const uids = [...mailbox.flagsPending].sort((a, b) => a - b);
        mailbox.flagsPending.clear();
        for (let i = 0; i < uids.length; i += this.limits.storageBatch) {
          const batch = uids.slice(i, i + this.limits.storageBatch);
          const { messages } = await this.storage.messages(user, mailbox.name, batch, { summary: true });
          for (const meta of messages) {
            if (!mailbox.setFlags(meta.uid, meta.flags)) continue;
            const seq = mailbox.seqOf(meta.uid);
            const values: ImapValue[] = [atom('UID'), meta.uid, atom('FLAGS'), this.reportedFlags(meta.uid)];
            // RFC 7162 3.1.4: once CONDSTORE is on, unsolicited FETCH carries MODSEQ.
            if (this.enabled.has('CONDSTORE')) values.push(atom('MODSEQ'), [meta.modseq]);
            await this.untagged(`${seq} FETCH`, [values]);
          }
        }
      }
    } catch (error) {
      if (error instanceof MailboxError && error.code === 'NONEXISTENT') {
        // RFC 9051 7.1.5: the selected mailbox is gone; the session cannot go on with it.
        await this.write([statusLine('*', 'BYE', 'Selected mailbox was deleted or renamed')]);
        await this.close();
        return;
      }
      // Reported on a later command instead.
      mailbox.appendPending = true;
      this.logger.warn({ err: error }, 'could not report mailbox changes');
    }
  }

  async #syncAppends(user: string, mailbox: SelectedMailbox): Promise<void> {
    const info = await this.storage.status(user, mailbox.name);
    const from = mailbox.maxUid + 1;
    const to = info.uidNext - 1;
    if (to < from) return;
    // One UID range (pages of packed summaries), however many arrived.
    const { summaries } = await loadSummaries(this.storage, user, mailbox.name, { first: from, last: to });
    const added = mailbox.addSummaries(summaries);
    if (added > 0) {
      await this.untagged(`${mailbox.exists} EXISTS`);
      // RFC 9051 7.4: IMAP4rev2 has no RECENT response.
      if (!this.enabled.has('IMAP4rev2')) await this.untagged(`${mailbox.recentCount} RECENT`);
    }
  }

  /** FLAGS as reported: `\Recent` only for IMAP4rev1 clients (RFC 9051 removed it). */
  reportedFlags(uid: number): ImapValue[] {
    const state = this.#state;
    if (state.kind !== 'selected') return [];
    const flags = state.mailbox.reportedFlags(uid);
    const shown = this.enabled.has('IMAP4rev2') ? flags.filter((f) => f !== '\\Recent') : flags;
    return shown.map(atom);
  }

  // -------------------------------------------------------------------------------------------
  // Message cache

  cachedMessage(blob: string): ParsedMessage | null {
    return this.#messages.peek(blob);
  }

  async parsedMessage(meta: MessageMeta): Promise<ParsedMessage> {
    return this.#messages.get(meta.blob, async () =>
      parseMessage(await this.storage.readBody(meta.blob), this.limits),
    );
  }
}

/** A command for the log, without secrets or message bodies. */
function describe(command: Command): string {
  return `${command.tag} ${command.uid ? 'UID ' : ''}${command.name}`;
}
