/**
 * The SMTP command table: each entry declares the session states it is allowed in and returns its
 * reply as a value. The session checks the states (and every other gate) before calling `run`.
 */
import type { Command, Verb } from './parser.ts';
import { NO_REPLY, REPLIES, SmtpReply } from './replies.ts';
import type { Session, SessionState, StateName } from './session.ts';

/** The command (or commands) of verb V. */
type CommandOf<V extends Verb> = Command extends infer C
  ? C extends { verb: infer W }
    ? V extends W
      ? C
      : never
    : never
  : never;

interface CommandEntry<V extends Verb> {
  states: readonly StateName[];
  run(s: Session, cmd: CommandOf<V>): Promise<SmtpReply>;
}

type Table = { [V in Verb]: CommandEntry<V> };

const ANY: readonly StateName[] = ['greeting', 'ready', 'mail'];

/** RFC 5321 4.1.1.1 + the ESMTP keywords of RFC 1869 and its extensions. */
function ehloLines(s: Session): string[] {
  const lines = [
    `${s.opts.hostname} Hello ${s.info.helo}`,
    'PIPELINING', // RFC 2920
    `SIZE ${s.opts.limits.maxMessageSize}`, // RFC 1870
    '8BITMIME', // RFC 6152
    'SMTPUTF8', // RFC 6531
    'ENHANCEDSTATUSCODES', // RFC 2034
    'CHUNKING', // RFC 3030
    'BINARYMIME', // RFC 3030 3
    'DSN', // RFC 3461
  ];
  if (!s.info.secure && s.opts.tlsContext()) lines.push('STARTTLS'); // RFC 3207
  // RFC 4954 4 + RFC 8314 3.3: AUTH is offered only where a password may be sent.
  if (s.authUsable && !s.info.user) lines.push('AUTH PLAIN LOGIN');
  return lines;
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

/** RFC 4648 4: strict base64, or null. */
function unbase64(text: string): Buffer | null {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) return null;
  return Buffer.from(text, 'base64');
}

async function login(s: Session, user: string, password: string): Promise<SmtpReply> {
  s.setState({ name: 'ready' });
  const outcome = await s.hooks.authenticate(s.info, user, password);
  if (outcome instanceof SmtpReply) return outcome;
  s.info.user = outcome.user;
  return new SmtpReply(235, '2.7.0', 'Authentication successful');
}

/** RFC 4616 2: [authzid] NUL authcid NUL passwd. */
function plain(s: Session, data: Buffer): Promise<SmtpReply> {
  const parts = data.toString('utf8').split('\0');
  if (parts.length !== 3 || !parts[1] || (parts[0] && parts[0] !== parts[1])) {
    s.setState({ name: 'ready' });
    return Promise.resolve(new SmtpReply(501, '5.5.2', 'Invalid PLAIN response'));
  }
  return login(s, parts[1], parts[2] ?? '');
}

/** A continuation line of AUTH (RFC 4954 4): base64, or "*" to cancel. */
export async function saslStep(
  s: Session,
  st: Extract<SessionState, { name: 'sasl' }>,
  line: Buffer,
): Promise<SmtpReply> {
  const text = line.toString('latin1').trim();
  if (text === '*') {
    s.setState({ name: 'ready' });
    return new SmtpReply(501, '5.7.0', 'Authentication aborted');
  }
  const data = unbase64(text);
  if (!data) {
    s.setState({ name: 'ready' });
    return new SmtpReply(501, '5.5.2', 'Invalid base64 in AUTH response');
  }
  if (st.mechanism === 'PLAIN') return plain(s, data);
  if (!st.login) {
    s.setState({ name: 'sasl', mechanism: 'LOGIN', login: data.toString('utf8') || '\0' });
    return new SmtpReply(334, '', b64('Password:'));
  }
  return login(s, st.login, data.toString('utf8'));
}

export const COMMANDS: Table = {
  EHLO: {
    states: ANY,
    async run(s, cmd) {
      // RFC 5321 4.1.4: EHLO in a session resets the transaction like RSET.
      s.info.helo = cmd.domain;
      s.info.esmtp = true;
      s.setState({ name: 'ready' });
      return new SmtpReply(250, '', ehloLines(s));
    },
  },
  HELO: {
    states: ANY,
    async run(s, cmd) {
      s.info.helo = cmd.domain;
      s.info.esmtp = false;
      s.setState({ name: 'ready' });
      return new SmtpReply(250, '', s.opts.hostname);
    },
  },
  STARTTLS: {
    states: ['ready'],
    async run(s) {
      const context = s.opts.tlsContext();
      if (s.info.secure) return REPLIES.badSequence('TLS already active');
      if (!context) return new SmtpReply(454, '4.7.0', 'TLS not available');
      await s.write(new SmtpReply(220, '2.0.0', 'Ready to start TLS'));
      s.upgrade(context);
      return NO_REPLY;
    },
  },
  AUTH: {
    states: ['ready', 'mail'],
    async run(s, cmd) {
      if (!s.opts.authEnabled) return REPLIES.notImplemented('AUTH');
      // RFC 4954 4: not during a mail transaction.
      if (s.state.name !== 'ready') return REPLIES.badSequence('AUTH not allowed during a mail transaction');
      if (s.info.user) return REPLIES.badSequence('already authenticated'); // RFC 4954 4
      // RFC 4954 4 + RFC 3207: no password in clear text unless the policy allows it.
      if (!s.authUsable) return REPLIES.encryptionRequired();
      if (cmd.mechanism !== 'PLAIN' && cmd.mechanism !== 'LOGIN')
        return new SmtpReply(504, '5.5.4', 'Unrecognized authentication type');
      // RFC 4954 4: "=" is an empty initial response.
      const initial = cmd.initial === '=' ? '' : cmd.initial;
      if (initial === undefined) {
        s.setState({ name: 'sasl', mechanism: cmd.mechanism, login: '' });
        return new SmtpReply(334, '', cmd.mechanism === 'PLAIN' ? '' : b64('Username:'));
      }
      const data = unbase64(initial);
      if (!data) return new SmtpReply(501, '5.5.2', 'Invalid base64 in AUTH response');
      if (cmd.mechanism === 'PLAIN') return plain(s, data);
      s.setState({ name: 'sasl', mechanism: 'LOGIN', login: data.toString('utf8') || '\0' });
      return new SmtpReply(334, '', b64('Password:'));
    },
  },
  MAIL: {
    states: ['ready'],
    async run(s, cmd) {
      if (s.opts.authRequired && !s.info.user) return REPLIES.authRequired();
      const p = cmd.params;
      // RFC 1869 4.4: parameters need EHLO.
      if (!s.info.esmtp && (p.size !== undefined || p.body || p.smtputf8 || p.ret || p.envid))
        return REPLIES.unknownParameter('parameters need EHLO');
      if (cmd.from?.utf8 && !p.smtputf8) return REPLIES.utf8Required(cmd.from.address);
      // RFC 1870 6.1: a declared size over the limit is refused at once.
      if (p.size !== undefined && p.size > s.opts.limits.maxMessageSize) return REPLIES.tooBig();
      const refused = await s.hooks.mailFrom(s.info, cmd.from, p);
      if (refused) return refused;
      s.setState({ name: 'mail', tx: s.newTransaction(cmd.from, p) });
      return new SmtpReply(250, '2.1.0', 'Ok');
    },
  },
  RCPT: {
    states: ['mail'],
    async run(s, cmd) {
      const tx = s.tx;
      if (!tx) return REPLIES.badSequence('need MAIL command');
      if (tx.via) return REPLIES.badSequence('RCPT after the body started');
      // RFC 5321 4.5.1: the bare "Postmaster" is the postmaster of this host.
      const to = cmd.to.domain
        ? cmd.to
        : { ...cmd.to, domain: s.opts.hostname, address: `postmaster@${s.opts.hostname}` };
      if (to.utf8 && !tx.params.smtputf8) return REPLIES.utf8Required(to.address);
      if (!s.info.esmtp && (cmd.params.notify || cmd.params.orcpt))
        return REPLIES.unknownParameter('parameters need EHLO');
      // RFC 5321 4.5.3.1.8: past the limit, 452 (the client sends the rest in another transaction).
      if (tx.rcpts.length >= s.opts.limits.maxRecipients) return REPLIES.tooManyRecipients();
      const refused = await s.hooks.rcptTo(s.info, tx, to);
      if (refused) return refused;
      tx.rcpts.push({ mailbox: to, params: cmd.params });
      return new SmtpReply(250, '2.1.5', 'Ok');
    },
  },
  DATA: {
    states: ['mail'],
    async run(s) {
      const tx = s.tx;
      if (!tx) return REPLIES.badSequence('need MAIL command');
      if (tx.via === 'bdat') return REPLIES.badSequence('DATA after BDAT'); // RFC 3030 2
      // RFC 2920 3.1: all RCPTs failed → 554 to DATA.
      if (tx.rcpts.length === 0) return new SmtpReply(554, '5.5.1', 'Error: no valid recipients');
      // RFC 3030 3: a BINARYMIME body can only come in BDAT chunks.
      if (tx.params.body === 'BINARYMIME') return REPLIES.badSequence('BINARYMIME needs BDAT');
      tx.via = 'data';
      s.setState({ name: 'data', tx });
      s.stream.expectData();
      // RFC 2034: 3xx replies carry no enhanced code.
      await s.write(new SmtpReply(354, '', 'End data with <CR><LF>.<CR><LF>'));
      return NO_REPLY;
    },
  },
  BDAT: {
    states: ['mail'],
    async run(s, cmd) {
      const tx = s.tx;
      let failure: SmtpReply | null = null;
      if (!tx) failure = REPLIES.badSequence('need MAIL command');
      else if (tx.via === 'data') failure = REPLIES.badSequence('BDAT after DATA');
      else if (tx.rcpts.length === 0) failure = new SmtpReply(554, '5.5.1', 'Error: no valid recipients');
      if (tx) tx.via = 'bdat';
      // RFC 3030 2: the chunk's octets follow whatever we answer; read them, then reply.
      s.setState({ name: 'bdat', tx: failure ? null : tx, last: cmd.last, failure });
      s.stream.expectChunk(cmd.size);
      return NO_REPLY;
    },
  },
  RSET: {
    states: ANY,
    async run(s) {
      if (s.state.name !== 'greeting') s.setState({ name: 'ready' });
      return REPLIES.ok();
    },
  },
  NOOP: { states: ANY, run: async () => REPLIES.ok() },
  QUIT: {
    states: ANY,
    run: async (s) => new SmtpReply(221, '2.0.0', `${s.opts.hostname} closing connection`, true),
  },
  HELP: {
    states: ANY,
    run: async () => new SmtpReply(214, '2.0.0', 'See https://www.rfc-editor.org/rfc/rfc5321'),
  },
  // RFC 5321 3.5.3: 252 when we will not say whether an address exists (no harvesting).
  VRFY: {
    states: ANY,
    run: async () => new SmtpReply(252, '2.5.2', 'Cannot VRFY user, but will accept message'),
  },
  EXPN: { states: ANY, run: async () => REPLIES.notImplemented('EXPN') },
} satisfies Table;
