/**
 * SMTP replies with their enhanced status codes (RFC 3463), made as values in one place.
 * A reply error carries the basic code in `responseCode` and starts its text with the enhanced
 * code; smtp-server is told (see enhanced-codes.ts) not to add a second one.
 */
export class SmtpReply extends Error {
  readonly responseCode: number;
  constructor(code: number, enhanced: string, text: string) {
    super(`${enhanced} ${text}`);
    this.name = 'SmtpReply';
    this.responseCode = code;
  }
}

export const REPLIES = {
  /** RFC 5321 4.2.2 + RFC 3463: 550 5.1.1 unknown user of a hosted domain. */
  unknownUser: (addr: string) =>
    new SmtpReply(550, '5.1.1', `<${addr}>: Recipient address rejected: User unknown`),
  /** No open relay (ARCHITECTURE invariant 5): 554 5.7.1 as Postfix answers. */
  relayDenied: (addr: string) => new SmtpReply(554, '5.7.1', `<${addr}>: Relay access denied`),
  tooManyRecipients: () => new SmtpReply(452, '4.5.3', 'Too many recipients'),
  authRequired: () => new SmtpReply(530, '5.7.0', 'Authentication required'),
  encryptionRequired: () =>
    new SmtpReply(538, '5.7.11', 'Encryption required for requested authentication mechanism'),
  badCredentials: () => new SmtpReply(535, '5.7.8', 'Authentication credentials invalid'),
  tooBig: () => new SmtpReply(552, '5.3.4', 'Message size exceeds fixed maximum message size'),
  tempFailure: () => new SmtpReply(451, '4.3.0', 'Temporary failure, please try again later'),
  badAddress: (addr: string) => new SmtpReply(553, '5.1.3', `<${addr}>: Bad address syntax`),
  aliasLoop: (addr: string) =>
    new SmtpReply(550, '5.4.6', `<${addr}>: Recipient address rejected: alias loop`),
  loop: () => new SmtpReply(554, '5.4.6', 'Too many hops: mail forwarding loop detected'),
  nullSenderForbidden: () => new SmtpReply(553, '5.7.1', 'Null sender not allowed on submission'),
} as const;
