/**
 * SMTP replies as values (RFC 5321 4.2), with enhanced status codes (RFC 3463, RFC 2034), made in
 * one place. A command handler returns one; the session writes it.
 */
export class SmtpReply {
  readonly code: number;
  /** Enhanced status code, '' for the greeting and the HELO/EHLO replies (RFC 2034 3). */
  readonly enhanced: string;
  readonly lines: readonly string[];
  /** Close the connection after writing this reply (421, QUIT). */
  readonly close: boolean;

  constructor(code: number, enhanced: string, text: string | readonly string[], close = false) {
    this.code = code;
    this.enhanced = enhanced;
    this.lines = typeof text === 'string' ? [text] : text;
    this.close = close;
  }

  get positive(): boolean {
    return this.code < 400;
  }

  /** RFC 5321 4.2.1: every line but the last has a '-' after the code. */
  format(): string {
    const prefix = this.enhanced ? `${this.enhanced} ` : '';
    const lines = this.lines.length > 0 ? this.lines : [''];
    return lines
      .map((l, i) => `${this.code}${i === lines.length - 1 ? ' ' : '-'}${prefix}${l}`.trimEnd())
      .join('\r\n')
      .concat('\r\n');
  }

  toString(): string {
    return this.format().trimEnd();
  }
}

const r = (code: number, enhanced: string, text: string, close = false) =>
  new SmtpReply(code, enhanced, text, close);

export const REPLIES = {
  ok: (text = 'Ok') => r(250, '2.0.0', text),
  /** RFC 5321 4.2.2 + RFC 3463: 550 5.1.1 unknown user of a hosted domain. */
  unknownUser: (addr: string) => r(550, '5.1.1', `<${addr}>: Recipient address rejected: User unknown`),
  /** No open relay (ARCHITECTURE invariant 5): 554 5.7.1 as Postfix answers. */
  relayDenied: (addr: string) => r(554, '5.7.1', `<${addr}>: Relay access denied`),
  /** RFC 5321 4.5.3.1.8: 452 for too many recipients, so the client sends the rest later. */
  tooManyRecipients: () => r(452, '4.5.3', 'Too many recipients'),
  authRequired: () => r(530, '5.7.0', 'Authentication required'),
  /** RFC 3207 4: 530 5.7.0 until STARTTLS when the policy needs TLS. */
  tlsRequired: () => r(530, '5.7.0', 'Must issue a STARTTLS command first'),
  encryptionRequired: () => r(538, '5.7.11', 'Encryption required for requested authentication mechanism'),
  badCredentials: () => r(535, '5.7.8', 'Authentication credentials invalid'),
  authThrottled: () => r(454, '4.7.0', 'Too many authentication failures, try again later'),
  authTempFailure: () => r(454, '4.7.0', 'Temporary authentication failure'),
  /** RFC 1870 6.1 + RFC 3463: 552 5.3.4 when the message exceeds the fixed maximum size. */
  tooBig: () => r(552, '5.3.4', 'Message size exceeds fixed maximum message size'),
  tempFailure: () => r(451, '4.3.0', 'Temporary failure, please try again later'),
  badAddress: (addr: string) => r(553, '5.1.3', `<${addr}>: Bad address syntax`),
  /** Source routes, percent hack, bang paths: relay tricks Postfix also refuses for hosted domains. */
  relayTrick: (addr: string) => r(553, '5.7.1', `<${addr}>: Relay tricks are not accepted`),
  aliasLoop: (addr: string) => r(550, '5.4.6', `<${addr}>: Recipient address rejected: alias loop`),
  loop: () => r(554, '5.4.6', 'Too many hops: mail forwarding loop detected'),
  nullSenderForbidden: () => r(553, '5.7.1', 'Null sender not allowed on submission'),
  /** RFC 6409 6.1: the submission server may refuse a sender the user does not own. */
  senderNotOwned: (addr: string) =>
    r(553, '5.7.1', `<${addr}>: Sender address rejected: not owned by the authenticated user`),
  /** RFC 6531 3.5: a non-ASCII address without SMTPUTF8. */
  utf8Required: (addr: string) => r(553, '5.6.7', `<${addr}>: Non-ASCII address needs SMTPUTF8`),
  badSequence: (what: string) => r(503, '5.5.1', `Error: ${what}`),
  syntax: (what = 'command not recognized') => r(500, '5.5.2', `Error: ${what}`),
  unknownCommand: () => r(502, '5.5.2', 'Error: command not recognized'),
  notImplemented: (what: string) => r(502, '5.5.1', `Error: ${what} not implemented`),
  badParameter: (what: string) => r(501, '5.5.4', `Error: ${what}`),
  unknownParameter: (what: string) => r(555, '5.5.4', `Unsupported option: ${what}`),
  lineTooLong: () => r(500, '5.5.2', 'Error: line too long'),
  rateExceeded: (what: string) => r(451, '4.7.1', `Rate limit exceeded (${what}), try again later`),
  tooManyConnections: () => r(421, '4.7.0', 'Too many connections, try again later', true),
  connectionRate: () => r(421, '4.7.0', 'Connection rate limit exceeded, try again later', true),
  timeout: () => r(421, '4.4.2', 'Error: timeout exceeded', true),
  budgetExceeded: () => r(421, '4.7.0', 'Error: too many commands or errors in this session', true),
  shuttingDown: () => r(421, '4.3.2', 'Service shutting down, closing transmission channel', true),
  bye: () => r(221, '2.0.0', 'Bye', true),
  dmarcReject: (domain: string) =>
    r(550, '5.7.1', `Message rejected by the DMARC policy of ${domain} (p=reject)`),
} as const;

/** A non-reply: the handler has written what it needed (354, a TLS handshake) and the session goes on. */
export const NO_REPLY = new SmtpReply(0, '', '');
