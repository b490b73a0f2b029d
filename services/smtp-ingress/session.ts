/**
 * One SMTP session per connection: its state, the policy gates every command passes, and the I/O.
 * Framing is in smtp-stream.ts, parsing in parser.ts, the commands in commands.ts; storage and
 * policy that need the network are reached through `SessionHooks`, so this core has no NATS or
 * Redis imports and is tested on its own as well as end to end.
 */
import { pooledRandomBytes } from '../core/random.ts';
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { SmtpStream, type Frame } from './smtp-stream.ts';
import { decodeLine, parseCommand, type Mailbox, type MailParams, type RcptParams } from './parser.ts';
import { REPLIES, SmtpReply } from './replies.ts';
import { LIMITS, type SessionLimits } from './limits.ts';
import { COMMANDS, saslStep } from './commands.ts';

/** Which door the client came through. */
export type PortKind = 'smtp' | 'submission' | 'smtps';

export interface AcceptedRecipient {
  mailbox: Mailbox;
  params: RcptParams;
}

/** One mail transaction (RFC 5321 3.3): from MAIL to the end of the body. */
export interface Transaction {
  from: Mailbox | null;
  params: MailParams;
  rcpts: AcceptedRecipient[];
  /** Body so far (DATA: unstuffed, CRLF line ends; BDAT: as sent). */
  chunks: Buffer[];
  size: number;
  tooBig: boolean;
  /** 'data' once DATA started, 'bdat' once a BDAT chunk came (RFC 3030 2: they do not mix). */
  via: '' | 'data' | 'bdat';
}

/** The session's state, changed only through `Session.setState`. */
export type SessionState =
  | { name: 'greeting' }
  | { name: 'ready' }
  | { name: 'mail'; tx: Transaction }
  | { name: 'data'; tx: Transaction }
  | { name: 'bdat'; tx: Transaction | null; last: boolean; failure: SmtpReply | null }
  | { name: 'sasl'; mechanism: 'PLAIN' | 'LOGIN'; login: string }
  | { name: 'closed' };

export type StateName = SessionState['name'];

/** What the hooks know about the client. */
export interface SessionInfo {
  id: string;
  port: PortKind;
  remoteAddress: string;
  remotePort: number;
  /** TLS in place (465, or after STARTTLS). */
  secure: boolean;
  tlsVersion: string;
  tlsCipher: string;
  /** Name given in HELO/EHLO. */
  helo: string;
  esmtp: boolean;
  /** Authenticated user ('' until AUTH succeeds). */
  user: string;
  transactions: number;
}

/** Storage and policy, outside the protocol core. A returned reply refuses; null lets it through. */
export interface SessionHooks {
  connect(info: SessionInfo): Promise<SmtpReply | null>;
  authenticate(info: SessionInfo, login: string, password: string): Promise<{ user: string } | SmtpReply>;
  mailFrom(info: SessionInfo, from: Mailbox | null, params: MailParams): Promise<SmtpReply | null>;
  rcptTo(info: SessionInfo, tx: Transaction, to: Mailbox): Promise<SmtpReply | null>;
  /** Makes the message durable; resolves with the final reply (250 only when durable). */
  accept(info: SessionInfo, tx: Transaction): Promise<SmtpReply>;
  close(info: SessionInfo): void;
  /** A bug or a broken dependency inside a command (answered with 451 4.3.0). */
  error(info: SessionInfo, err: unknown): void;
  /** Tracing and metrics of the session, if wanted (called once, at the start). */
  observe?(info: SessionInfo, local: { address: string; port: number }): SessionObserver;
}

/** Tracing and metrics of one session; the protocol core knows no telemetry library. */
export interface SessionObserver {
  /** A command starts (its verb, or `other` for a line that is not one). */
  command(verb: string): CommandObserver;
  /** The connection is gone. */
  end(): void;
}

/** One command, from its line to its final reply. */
export interface CommandObserver {
  /** Runs fn as part of the command (its span is the active one). */
  run<T>(fn: () => T): T;
  /** The final reply (null when the connection ended first); `failed`: the 451 of an exception. */
  end(result: { status: number; code?: string; failed?: boolean } | null): void;
}

/** The verb of a command line for spans and metrics: a known command, else `other`. */
function verbOf(line: Buffer): string {
  const space = line.indexOf(0x20);
  const verb = line
    .subarray(0, Math.min(space < 0 ? line.length : space, 16))
    .toString('latin1')
    .replace(/\r?\n$/, '')
    .toUpperCase();
  return Object.hasOwn(COMMANDS, verb) ? verb : 'other';
}

export interface SessionOptions {
  port: PortKind;
  hostname: string;
  limits: SessionLimits;
  /** The current TLS context, null when STARTTLS is not offered. */
  tlsContext: () => SecureContext | null;
  /** AUTH is offered on this port. */
  authEnabled: boolean;
  /** MAIL needs AUTH first (submission). */
  authRequired: boolean;
  /** AUTH may be used on this connection without TLS (loopback, or configured). */
  plaintextAuthAllowed: boolean;
}

export class Session {
  readonly info: SessionInfo;
  readonly opts: SessionOptions;
  readonly hooks: SessionHooks;
  #socket: Socket;
  #stream = new SmtpStream(LIMITS.maxCommandLine, LIMITS.maxDataLine);
  #state: SessionState = { name: 'greeting' };
  #busy = false;
  #errors = 0;
  #commands = 0;
  #idleTimer: NodeJS.Timeout | null = null;
  #sessionTimer: NodeJS.Timeout | null = null;
  #onData = (chunk: Buffer) => this.#receive(chunk);
  #closed = false;
  #stopping = false;
  /** The client half-closed: answer what it sent, then close. */
  #eof = false;
  #observer: SessionObserver | null = null;
  /**
   * The command whose final reply is still to come: DATA and BDAT (after the body), AUTH (after
   * the SASL exchange). No span per body line: the body is part of its command.
   */
  #pending: CommandObserver | null = null;
  /** The last reply written in the command in progress, and whether an exception made it. */
  #lastReply: SmtpReply | null = null;
  #failed = false;

  constructor(socket: Socket, opts: SessionOptions, hooks: SessionHooks) {
    this.#socket = socket;
    this.opts = opts;
    this.hooks = hooks;
    const tls = socket instanceof TLSSocket;
    const cipher = tls ? socket.getCipher() : null;
    this.info = {
      id: pooledRandomBytes(6).toString('hex'),
      port: opts.port,
      remoteAddress: (socket.remoteAddress ?? '').replace(/^::ffff:/, ''),
      remotePort: socket.remotePort ?? 0,
      secure: tls,
      tlsVersion: tls ? (socket.getProtocol() ?? '') : '',
      tlsCipher: cipher?.name ?? '',
      helo: '',
      esmtp: false,
      user: '',
      transactions: 0,
    };
  }

  get state(): SessionState {
    return this.#state;
  }

  setState(next: SessionState): void {
    if (this.#state.name === 'closed') return;
    this.#state = next;
  }

  /** The transaction in progress, if any. */
  get tx(): Transaction | null {
    const s = this.#state;
    return s.name === 'mail' || s.name === 'data' ? s.tx : s.name === 'bdat' ? s.tx : null;
  }

  /** AUTH may be used now: offered on this port, and TLS in place unless plaintext is allowed. */
  get authUsable(): boolean {
    return this.opts.authEnabled && (this.info.secure || this.opts.plaintextAuthAllowed);
  }

  get stream(): SmtpStream {
    return this.#stream;
  }

  async start(): Promise<void> {
    this.#observer =
      this.hooks.observe?.(this.info, {
        address: this.#socket.localAddress ?? '',
        port: this.#socket.localPort ?? 0,
      }) ?? null;
    this.#socket.on('error', () => this.#teardown());
    this.#socket.on('close', () => this.#teardown());
    // RFC 5321 4.1.1.10: a client that goes away without QUIT ends the session all the same.
    this.#socket.on('end', () => this.#ended());
    this.#touch();
    this.#sessionTimer = setTimeout(() => this.#expire(), this.opts.limits.sessionTimeoutMs);
    let gate: SmtpReply | null;
    try {
      gate = await this.hooks.connect(this.info);
    } catch (err) {
      this.hooks.error(this.info, err);
      gate = new SmtpReply(421, '4.3.0', `${this.opts.hostname} Service not available`, true);
    }
    if (this.#closed) return;
    // RFC 5321 4.2: the greeting carries no enhanced code (RFC 2034 3).
    await this.write(gate ?? new SmtpReply(220, '', `${this.opts.hostname} Postino ESMTP`));
    if (gate) return this.close();
    this.#socket.on('data', this.#onData);
  }

  newTransaction(from: Mailbox | null, params: MailParams): Transaction {
    this.info.transactions++;
    return { from, params, rcpts: [], chunks: [], size: 0, tooBig: false, via: '' };
  }

  /** Writes a reply, honouring back-pressure from a client that does not read. */
  async write(reply: SmtpReply | string): Promise<void> {
    if (this.#closed || this.#socket.destroyed) return;
    if (typeof reply !== 'string') this.#lastReply = reply;
    const text = typeof reply === 'string' ? reply : reply.format();
    if (!this.#socket.write(text)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.#socket.off('drain', done);
          this.#socket.off('close', done);
          resolve();
        };
        this.#socket.once('drain', done);
        this.#socket.once('close', done);
      });
    }
  }

  /**
   * Ends the session after the replies written so far (`force`: at once). `quit`: the client said
   * QUIT and has its 221, so nothing more is read: the socket is closed as soon as the reply is
   * flushed, as Postfix's smtpd does, instead of waiting for the client to close its side (a
   * client that closes with a reset, as load generators do, then finds the socket already gone).
   */
  close(force = false, quit = false): void {
    if (force) this.#socket.destroy();
    if (this.#closed) return;
    const socket = this.#socket;
    this.#teardown(false);
    socket.end();
    if (quit) socket.once('finish', () => socket.destroy());
    // A client that does not read cannot hold the socket open. The timer goes with the socket:
    // left to run, it would keep every closed session (socket, buffers, state) alive for 5 s,
    // long enough to be promoted out of the young generation and cost a full GC later.
    const linger = setTimeout(() => socket.destroy(), 5000).unref();
    socket.once('close', () => clearTimeout(linger));
  }

  /** Stop: 421 to an idle session now; a busy one is answered when its command completes. */
  shutdown(): void {
    if (this.#busy || this.#closed || this.#stopping) return;
    this.#stopping = true;
    void this.write(REPLIES.shuttingDown()).then(() => this.close());
  }

  /** RFC 3207 4.2: after 220, the TLS handshake; then the session starts over as if just connected. */
  upgrade(context: SecureContext): void {
    const raw = this.#socket;
    raw.off('data', this.#onData);
    // RFC 3207 5: commands pipelined after STARTTLS were sent in clear text; they are discarded.
    this.#stream.discard();
    const tls = new TLSSocket(raw, { isServer: true, secureContext: context });
    this.#socket = tls;
    tls.on('error', () => this.#teardown());
    tls.on('close', () => this.#teardown());
    tls.once('secure', () => {
      const cipher = tls.getCipher();
      this.info.secure = true;
      this.info.tlsVersion = tls.getProtocol() ?? '';
      this.info.tlsCipher = cipher?.name ?? '';
      this.info.helo = '';
      this.info.esmtp = false;
      this.setState({ name: 'greeting' });
      tls.on('data', this.#onData);
    });
  }

  /** Ends the session's life: timers, state, hooks; `destroy` also drops the socket (it failed or closed). */
  #teardown(destroy = true): void {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    if (this.#sessionTimer) clearTimeout(this.#sessionTimer);
    this.#idleTimer = this.#sessionTimer = null;
    if (destroy) this.#socket.destroy();
    if (this.#closed) return;
    this.#closed = true;
    this.#state = { name: 'closed' };
    // A command cut short by the connection ends with the last reply it got.
    if (this.#pending) this.#endCommand(this.#pending);
    this.#pending = null;
    this.#observer?.end();
    this.hooks.close(this.info);
  }

  #ended(): void {
    this.#eof = true;
    if (!this.#busy) this.close();
  }

  #touch(): void {
    if (this.#closed) return;
    // RFC 5321 4.5.3.2.7: the server waits for the next command (and each data block) this long.
    // Restarted in place (twice per command): no new timer object per command.
    if (this.#idleTimer) this.#idleTimer.refresh();
    else this.#idleTimer = setTimeout(() => this.#idle(), this.opts.limits.idleTimeoutMs);
  }

  /**
   * The idle time ran out: the client's silence counts, and a client that does not read our
   * replies, but not our own slow work on a command (a slow store is answered by its own timeout).
   */
  #idle(): void {
    if (this.#busy && !this.#socket.writableNeedDrain) this.#touch();
    else this.#expire();
  }

  /** Idle or session time used up: 421 (RFC 5321 4.5.3.2), without waiting on a client that does not read. */
  #expire(): void {
    if (this.#closed) return;
    if (!this.#socket.destroyed) this.#socket.write(REPLIES.timeout().format());
    this.close();
  }

  #receive(chunk: Buffer): void {
    // Each body block restarts the timer (RFC 5321 4.5.3.2.5-6); a command line must arrive whole
    // within it (the timer restarts per command, in #pump), so a client that drips one byte at a
    // time cannot hold a session open.
    if (this.#stream.mode !== 'line') this.#touch();
    this.#stream.push(chunk);
    // Stop reading a client that pipelines far ahead of our replies (invariant 4).
    if (this.#stream.buffered > LIMITS.maxPipelineBuffer && this.#stream.mode === 'line')
      this.#socket.pause();
    void this.#pump();
  }

  async #pump(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      for (let frame = this.#stream.next(); frame && !this.#closed; frame = this.#stream.next()) {
        this.#touch();
        await this.#frame(frame);
        this.#touch();
      }
    } finally {
      this.#busy = false;
    }
    if (this.#eof) this.close();
    else if (!this.#closed && this.#socket.isPaused()) this.#socket.resume();
  }

  async #frame(frame: Frame): Promise<void> {
    const s = this.#state;
    switch (frame.kind) {
      case 'data':
      case 'chunk': {
        const tx = s.name === 'data' || s.name === 'bdat' ? s.tx : null;
        if (!tx) return;
        tx.size += frame.data.length;
        if (tx.size > this.opts.limits.maxMessageSize) {
          // RFC 1870 6.2: keep reading to the end, then 552; nothing more is kept.
          tx.tooBig = true;
          tx.chunks = [];
        } else tx.chunks.push(frame.data);
        return;
      }
      case 'dataEnd':
        if (s.name === 'data') await this.#completing(() => this.#finish(s.tx));
        return;
      case 'chunkEnd':
        if (s.name === 'bdat') await this.#completing(() => this.#chunkEnd(s));
        return;
      case 'lineTooLong':
        if (this.#pending) return this.#completing(() => this.#reply(REPLIES.lineTooLong()));
        return this.#traced('other', () => this.#reply(REPLIES.lineTooLong()));
      case 'line':
        // A SASL response belongs to the AUTH command that asked for it.
        if (this.#pending) return this.#completing(() => this.#line(frame.line));
        return this.#traced(verbOf(frame.line), () => this.#line(frame.line));
    }
  }

  /** Runs one command in its span; one still waiting for its body or SASL exchange stays open. */
  async #traced(verb: string, fn: () => Promise<void>): Promise<void> {
    const observer = this.#observer;
    if (!observer) return fn();
    const command = observer.command(verb);
    this.#lastReply = null;
    this.#failed = false;
    try {
      await command.run(fn);
    } finally {
      if (this.#awaitingMore()) this.#pending = command;
      else this.#endCommand(command);
    }
  }

  /** Continues the pending command (its body ended, or a SASL line came) and ends it once answered. */
  async #completing(fn: () => Promise<void>): Promise<void> {
    const command = this.#pending;
    if (!command) return fn();
    try {
      await command.run(fn);
    } finally {
      if (!this.#awaitingMore()) {
        this.#pending = null;
        this.#endCommand(command);
      }
    }
  }

  /** The command in progress has more to come from the client before its final reply. */
  #awaitingMore(): boolean {
    const name = this.#state.name;
    return name === 'data' || name === 'bdat' || name === 'sasl';
  }

  #endCommand(command: CommandObserver): void {
    const reply = this.#lastReply;
    command.end(
      reply ? { status: reply.code, code: reply.enhanced || undefined, failed: this.#failed } : null,
    );
  }

  async #finish(tx: Transaction): Promise<void> {
    this.setState({ name: 'ready' });
    if (tx.tooBig) return this.#reply(REPLIES.tooBig());
    await this.#reply(await this.#guard(() => this.hooks.accept(this.info, tx)));
  }

  async #chunkEnd(s: Extract<SessionState, { name: 'bdat' }>): Promise<void> {
    if (s.failure || !s.tx) {
      this.setState({ name: 'ready' });
      return this.#reply(s.failure ?? REPLIES.badSequence('need MAIL and RCPT before BDAT'));
    }
    if (s.tx.tooBig) {
      // RFC 3030 2: a failed chunk fails the whole transaction.
      this.setState({ name: 'ready' });
      return this.#reply(REPLIES.tooBig());
    }
    if (s.last) return this.#finish(s.tx);
    this.setState({ name: 'mail', tx: s.tx });
    await this.#reply(new SmtpReply(250, '2.0.0', `${s.tx.size} octets received`));
  }

  /** Writes a reply, counts errors, and closes when the reply says so. */
  async #reply(reply: SmtpReply): Promise<void> {
    if (reply.code >= 500) this.#errors++;
    await this.write(reply);
    if (reply.close) return this.close(false, reply.code === 221);
    if (this.#errors > LIMITS.maxErrors) {
      await this.write(REPLIES.budgetExceeded());
      this.close();
    }
  }

  /** The one boundary where exceptions become 451 4.3.0 (STYLE: outcomes are values). */
  async #guard(fn: () => Promise<SmtpReply>): Promise<SmtpReply> {
    try {
      return await fn();
    } catch (err) {
      this.#failed = true;
      this.hooks.error(this.info, err);
      return REPLIES.tempFailure();
    }
  }

  async #line(line: Buffer): Promise<void> {
    const s = this.#state;
    if (s.name === 'sasl') return this.#reply(await this.#guard(() => saslStep(this, s, line)));
    this.#commands++;
    if (this.#commands > LIMITS.maxCommands) return this.#reply(REPLIES.budgetExceeded());
    // Submission: a client that never authenticates gets a bounded number of commands.
    if (this.opts.authRequired && !this.info.user && this.#commands > LIMITS.maxUnauthenticatedCommands)
      return this.#reply(REPLIES.budgetExceeded());
    const text = decodeLine(line);
    if (text === null) return this.#reply(REPLIES.syntax('invalid characters in command'));
    const parsed = parseCommand(text);
    if (!parsed.ok) return this.#reply(parsed.reply);
    const cmd = parsed.command;
    const entry = COMMANDS[cmd.verb];
    // Every gate in one place, before any handler (STYLE: smtp-server's model).
    if (!entry.states.includes(s.name)) {
      const reply =
        s.name === 'greeting'
          ? REPLIES.badSequence('send HELO/EHLO first')
          : s.name === 'mail' && cmd.verb === 'MAIL'
            ? REPLIES.badSequence('nested MAIL command')
            : REPLIES.badSequence(`${cmd.verb} not allowed now`);
      // RFC 3030 2: the octets of a refused BDAT still follow and must be consumed.
      if (cmd.verb === 'BDAT') {
        this.setState({ name: 'bdat', tx: null, last: cmd.last, failure: reply });
        this.#stream.expectChunk(cmd.size);
        return;
      }
      return this.#reply(reply);
    }
    const reply = await this.#guard(() => entry.run(this, cmd as never));
    // A handler that switched to reading a body answers later (354 was written by it, or BDAT).
    if (reply.code === 0) return;
    await this.#reply(reply);
  }
}
