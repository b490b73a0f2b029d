/**
 * One SMTP transaction to one remote address, with a result per recipient. Uses nodemailer's
 * SMTP connection: EHLO, STARTTLS whenever offered (opportunistic, as RFC 3207 allows MTAs),
 * MAIL FROM with DSN parameters, RCPT per recipient, DATA streamed from the blob store.
 */
import { Readable } from 'node:stream';
import SMTPConnection from 'nodemailer/lib/smtp-connection';

export interface AttemptInput {
  address: string;
  port: number;
  /** MX host name: TLS SNI and Remote-MTA in bounces. */
  host: string;
  helo: string;
  timeoutMs: number;
  mailFrom: string;
  recipients: { address: string; notify: string[]; orcpt: string }[];
  dsnRet: string;
  dsnEnvid: string;
  size: number;
  body: () => AsyncIterable<Uint8Array>;
  eightBit: boolean;
}

export type RecipientResult =
  | { address: string; status: 'delivered'; reply: string }
  | { address: string; status: 'temporary' | 'permanent'; reply: string; code: string };

export type AttemptResult =
  /** The server could not be reached or the session failed before any recipient was answered. */
  | { kind: 'unreachable'; reply: string }
  /** The transaction was refused as a whole (MAIL FROM or DATA). */
  | { kind: 'refused'; permanent: boolean; reply: string; code: string }
  | { kind: 'answered'; recipients: RecipientResult[] };

interface SmtpError extends Error {
  code?: string;
  responseCode?: number;
  response?: string;
  rejected?: string[];
  rejectedErrors?: SmtpError[];
  recipient?: string;
  command?: string;
}

function enhanced(reply: string, basic: number): string {
  const m = /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})/.exec(reply);
  if (m?.[1]) return m[1];
  return basic >= 500 ? '5.0.0' : '4.0.0';
}

export async function attempt(input: AttemptInput): Promise<AttemptResult> {
  const conn = new SMTPConnection({
    host: input.address,
    port: input.port,
    name: input.helo,
    // RFC 3207: opportunistic STARTTLS; certificates of MX hosts are not verified without a policy (MTA-STS/DANE).
    opportunisticTLS: true,
    tls: { rejectUnauthorized: false, servername: input.host.replace(/\.$/, ''), minVersion: 'TLSv1.2' },
    connectionTimeout: Math.min(input.timeoutMs, 30_000),
    greetingTimeout: Math.min(input.timeoutMs, 60_000),
    socketTimeout: input.timeoutMs,
    logger: false,
  });
  const closed = new Promise<void>((resolve) => conn.once('end', () => resolve()));
  conn.on('error', () => undefined);
  try {
    await new Promise<void>((resolve, reject) => conn.connect((err) => (err ? reject(err) : resolve())));
  } catch (err) {
    conn.close();
    return { kind: 'unreachable', reply: describe(err as SmtpError) };
  }
  try {
    const info = await new Promise<{
      accepted: string[];
      rejected: string[];
      rejectedErrors?: SmtpError[];
      response: string;
    }>((resolve, reject) =>
      conn.send(
        {
          from: input.mailFrom,
          to: input.recipients.map((r) => r.address),
          size: input.size,
          use8BitMime: input.eightBit,
          dsn:
            input.dsnRet || input.dsnEnvid
              ? { ret: input.dsnRet || undefined, envid: input.dsnEnvid || undefined }
              : undefined,
        },
        Readable.from(input.body()),
        (err, result) => (err ? reject(err) : resolve(result as never)),
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
    if (
      e.code === 'EENVELOPE' &&
      e.rejectedErrors &&
      e.rejectedErrors.length > 0 &&
      e.command !== 'MAIL FROM'
    ) {
      return { kind: 'answered', recipients: e.rejectedErrors.map(rejection) };
    }
    if (e.responseCode) {
      return {
        kind: 'refused',
        permanent: e.responseCode >= 500,
        reply: describe(e),
        code: enhanced(e.response ?? '', e.responseCode),
      };
    }
    return { kind: 'unreachable', reply: describe(e) };
  } finally {
    conn.quit();
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
    conn.close();
  }
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
