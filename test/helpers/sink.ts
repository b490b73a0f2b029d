/**
 * A remote MX for delivery tests: a real smtp-server on a loopback address that answers each
 * recipient as the test says and records every message it takes. Nothing here is a mock.
 */
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';

/** One message the sink took. */
export interface Received {
  /** The address the sink listens on (which MX took the message). */
  host: string;
  /** MAIL FROM ('' for the null sender). */
  from: string;
  to: string[];
  /** The message as received, decoded as UTF-8. */
  body: string;
  /** The AUTH identity of the session ('' when none). */
  user: string;
  /** Whether the session was under TLS. */
  secure: boolean;
  /** When MAIL FROM arrived (ms). */
  mailAt: number;
}

/** A reply to RCPT TO: a code (with a text by its class) or a code and its text. */
export type Reply = number | { code: number; text: string };

export interface SinkOptions {
  host: string;
  port: number;
  /** Where received messages are pushed. */
  received?: Received[];
  /** The reply to each recipient; 250 (accept) when absent. */
  rcpt?: (address: string) => Reply;
  /** How long to hold the answer to DATA (ms): keeps the session busy, so sessions overlap. */
  holdMs?: number;
  /**
   * smtp-server options over the defaults (AUTH optional, no limit on commands before AUTH,
   * no STARTTLS): e.g. key and cert with `disabledCommands: []` for a STARTTLS MX.
   */
  smtp?: Partial<SMTPServerOptions>;
}

/**
 * Replies from a script: per lower-cased recipient a list of codes consumed one per attempt, the
 * last one repeating; recipients not in the script are accepted. The map stays the test's to fill.
 */
export function scripted(script: Map<string, number[]>): (address: string) => Reply {
  return (address) => {
    const plan = script.get(address.toLowerCase());
    return plan && plan.length > 1 ? (plan.shift() ?? 250) : (plan?.[0] ?? 250);
  };
}

export async function startSink(o: SinkOptions): Promise<SMTPServer> {
  const mailAt = new WeakMap<object, number>();
  const s = new SMTPServer({
    authOptional: true,
    // An MX takes mail without AUTH: no limit on commands before it (smtp-server's default is 10).
    maxAllowedUnauthenticatedCommands: Infinity,
    disabledCommands: ['STARTTLS'],
    logger: false,
    onMailFrom(_addr, session, cb) {
      mailAt.set(session, Date.now());
      cb();
    },
    onRcptTo(addr, _session, cb) {
      const reply = o.rcpt?.(addr.address) ?? 250;
      const { code, text } =
        typeof reply === 'number'
          ? { code: reply, text: reply >= 500 ? '5.1.1 no such user here' : '4.2.1 try again later' }
          : reply;
      if (code === 250) return cb();
      cb(Object.assign(new Error(text), { responseCode: code }));
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        o.received?.push({
          host: o.host,
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          body: Buffer.concat(chunks).toString('utf8'),
          user: String(session.user ?? ''),
          secure: session.secure,
          mailAt: mailAt.get(session) ?? 0,
        });
        if (o.holdMs) setTimeout(() => cb(), o.holdMs);
        else cb();
      });
    },
    ...o.smtp,
  });
  s.on('error', () => undefined); // a sender that resets is not a test failure
  await new Promise<void>((resolve) => s.listen(o.port, o.host, () => resolve()));
  return s;
}
