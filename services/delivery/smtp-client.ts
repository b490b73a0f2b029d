/**
 * One SMTP client session to a remote MX (or the smarthost), on nodemailer's SMTP connection,
 * kept open for several transactions: EHLO, STARTTLS whenever offered (RFC 3207; required and
 * verified when the domain's policy says so), AUTH for a smarthost (RFC 4954), then per message
 * MAIL FROM with DSN parameters (RFC 3461), RCPT per recipient, DATA streamed from the blob store,
 * and RSET (RFC 5321 4.1.1.5) before the session is reused.
 */
import { Readable } from 'node:stream';
import { checkServerIdentity, type TLSSocket } from 'node:tls';
import SMTPConnection from 'nodemailer/lib/smtp-connection';

/** Where and how to connect. */
export interface Endpoint {
  address: string;
  port: number;
  /** MX host name: TLS SNI, certificate name and Remote-MTA in bounces. */
  host: string;
  /** Implicit TLS (smtps). */
  secure: boolean;
  /** opportunistic: STARTTLS if offered, any certificate; required: STARTTLS must succeed; verify: and a valid certificate for host. */
  tls: 'opportunistic' | 'required' | 'verify';
  auth?: { user: string; pass: string };
  /** Trust anchors for certificate verification (undefined: the system roots). */
  ca?: string[];
}

export interface Transaction {
  mailFrom: string;
  recipients: { address: string }[];
  dsnRet: string;
  dsnEnvid: string;
  size: number;
  body: () => AsyncIterable<Uint8Array>;
  eightBit: boolean;
  smtputf8: boolean;
}

export type RecipientResult =
  | { address: string; status: 'delivered'; reply: string }
  | { address: string; status: 'temporary' | 'permanent'; reply: string; code: string };

export type TransactionResult =
  /** The server could not be reached or the session broke before any recipient was answered. */
  | { kind: 'unreachable'; reply: string }
  /** The transaction was refused as a whole (MAIL FROM or DATA). */
  | { kind: 'refused'; permanent: boolean; reply: string; code: string }
  | { kind: 'answered'; recipients: RecipientResult[] };

interface SmtpError extends Error {
  code?: string;
  responseCode?: number;
  response?: string;
  rejectedErrors?: SmtpError[];
  recipient?: string;
  command?: string;
}

/** RFC 3463: the enhanced status code of a reply, or the class default. */
export function enhanced(reply: string, basic: number): string {
  const m = /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})/.exec(reply);
  if (m?.[1]) return m[1];
  return basic >= 500 ? '5.0.0' : '4.0.0';
}

export class SmtpSession {
  readonly endpoint: Endpoint;
  readonly #conn: SMTPConnection;
  #closed = false;
  /** Transactions made on this connection. */
  transactions = 0;
  /**
   * Why this connection is not verified TLS for the endpoint's host ('' when it is): no STARTTLS,
   * an untrusted chain, or a certificate for another name. MTA-STS "testing" reports it (RFC 8461 5).
   */
  tlsProblem = '';

  /** Settles the pending command when the connection drops (nodemailer then never calls back). */
  #onDrop: ((err: Error) => void) | undefined;

  private constructor(endpoint: Endpoint, conn: SMTPConnection) {
    this.endpoint = endpoint;
    this.#conn = conn;
    const dropped = (err: Error) => {
      this.#closed = true;
      this.#onDrop?.(err);
    };
    conn.on('end', () => dropped(new Error('connection closed by the server')));
    conn.on('error', (err: Error) => dropped(err));
  }

  /** Runs one nodemailer command, failing it if the connection drops before its callback. */
  #guard<T>(run: (done: (err: Error | null, value?: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#closed) return reject(new Error('connection closed'));
      this.#onDrop = reject;
      run((err, value) => {
        this.#onDrop = undefined;
        if (err) reject(err);
        else resolve(value as T);
      });
    });
  }

  get alive(): boolean {
    return !this.#closed;
  }

  /** Connects, greets, negotiates TLS and authenticates; 'unreachable' with the reason otherwise. */
  static async open(
    ep: Endpoint,
    helo: string,
    timeoutMs: number,
  ): Promise<{ session: SmtpSession } | { kind: 'unreachable'; reply: string }> {
    const servername = ep.host.replace(/\.$/, '');
    const conn = new SMTPConnection({
      host: ep.address,
      port: ep.port,
      secure: ep.secure,
      name: helo,
      // RFC 3207 / RFC 7672 2.2: an MTA encrypts whenever it can; without a policy the certificate is not checked.
      opportunisticTLS: ep.tls === 'opportunistic',
      requireTLS: ep.tls !== 'opportunistic' && !ep.secure,
      tls: { rejectUnauthorized: ep.tls === 'verify', servername, minVersion: 'TLSv1.2', ca: ep.ca },
      connectionTimeout: Math.min(timeoutMs, 30_000),
      greetingTimeout: Math.min(timeoutMs, 60_000),
      socketTimeout: timeoutMs,
      logger: false,
    });
    let failed: ((err: Error) => void) | undefined;
    conn.on('error', (err: Error) => failed?.(err));
    conn.once('end', () => failed?.(new Error('connection closed')));
    try {
      // nodemailer reports a failed connect through 'error', not the callback.
      await new Promise<void>((resolve, reject) => {
        failed = reject;
        conn.connect((err) => (err ? reject(err) : resolve()));
      });
      failed = undefined;
      if (ep.auth) {
        const auth = ep.auth;
        await new Promise<void>((resolve, reject) =>
          conn.login({ user: auth.user, pass: auth.pass }, (err) => (err ? reject(err) : resolve())),
        );
      }
    } catch (err) {
      conn.close();
      return { kind: 'unreachable', reply: describe(err as SmtpError) };
    }
    const session = new SmtpSession(ep, conn);
    session.tlsProblem = tlsProblem(conn, servername);
    return { session };
  }

  async send(tx: Transaction): Promise<TransactionResult> {
    this.transactions++;
    try {
      const info = await this.#guard<{ accepted: string[]; rejectedErrors?: SmtpError[]; response: string }>(
        (done) =>
          this.#conn.send(
            {
              from: tx.mailFrom,
              to: tx.recipients.map((r) => r.address),
              size: tx.size,
              use8BitMime: tx.eightBit,
              useSmtpUtf8: tx.smtputf8,
              dsn:
                tx.dsnRet || tx.dsnEnvid
                  ? { ret: tx.dsnRet || undefined, envid: tx.dsnEnvid || undefined }
                  : undefined,
            } as never,
            Readable.from(tx.body()),
            (err, result) => done(err, result as never),
          ),
      );
      const results: RecipientResult[] = info.accepted.map((address) => ({
        address,
        status: 'delivered',
        reply: info.response,
      }));
      for (const e of info.rejectedErrors ?? []) results.push(rejection(e));
      return { kind: 'answered', recipients: results };
    } catch (err) {
      const e = err as SmtpError;
      // RFC 5321 3.3: each RCPT is answered on its own; a transaction with no accepted recipient ends before DATA.
      if (
        e.code === 'EENVELOPE' &&
        e.rejectedErrors &&
        e.rejectedErrors.length > 0 &&
        e.command !== 'MAIL FROM'
      ) {
        return { kind: 'answered', recipients: e.rejectedErrors.map(rejection) };
      }
      if (e.responseCode && e.responseCode !== 421) {
        return {
          kind: 'refused',
          permanent: e.responseCode >= 500,
          reply: describe(e),
          code: enhanced(e.response ?? '', e.responseCode),
        };
      }
      // 421 (RFC 5321 3.8: the server is closing) and broken connections: try elsewhere or later.
      this.close();
      return { kind: 'unreachable', reply: describe(e) };
    }
  }

  /** RSET before reuse (RFC 5321 4.1.1.5): also proves the cached connection is still alive. */
  async reset(): Promise<boolean> {
    try {
      await this.#guard<unknown>((done) => this.#conn.reset((err) => done(err)));
      return true;
    } catch {
      // 421 or a dropped connection: this session is not reusable.
      this.close();
      return false;
    }
  }

  /** QUIT politely; the socket is destroyed if the server does not answer. */
  quit(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#conn.quit();
    setTimeout(() => this.#conn.close(), 2000).unref();
  }

  /** Drops the connection at once (lease lost, shutdown). */
  close(): void {
    this.#closed = true;
    this.#conn.close();
  }
}

/** RFC 8461 4.2 / RFC 6125: a trusted chain and a certificate valid for the MX host name. */
function tlsProblem(conn: SMTPConnection, servername: string): string {
  const c = conn as unknown as { secure?: boolean; _socket?: TLSSocket };
  const socket = c._socket;
  if (!c.secure || !socket || typeof socket.getPeerCertificate !== 'function')
    return 'no TLS (STARTTLS not offered)';
  if (!socket.authorized) return `certificate not trusted: ${String(socket.authorizationError)}`;
  const err = checkServerIdentity(servername, socket.getPeerCertificate());
  return err ? `certificate not valid for ${servername}: ${err.message}` : '';
}

function rejection(e: SmtpError): RecipientResult {
  const code = e.responseCode ?? 450;
  return {
    address: e.recipient ?? '',
    status: code >= 500 ? 'permanent' : 'temporary',
    reply: describe(e),
    code: enhanced(e.response ?? '', code),
  };
}

function describe(e: SmtpError): string {
  return (e.response ?? e.message ?? String(e)).replace(/[\r\n]+/g, ' ').slice(0, 500);
}
