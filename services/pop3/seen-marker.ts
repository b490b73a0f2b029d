/**
 * \Seen after RETR, the flag POP3 shares with IMAP (RFC 3501 section 2.3.2), set in the background
 * so that the next command does not wait for the store: at most one flag update is in flight per
 * session, and the messages retrieved meanwhile go together in the next one.
 */
import type { Logger } from 'pino';
import type { MailboxClient } from '../core/mailbox-api.ts';

export class SeenMarker {
  readonly #mailbox: MailboxClient;
  readonly #user: string;
  readonly #logger: Logger;
  #pending: number[] = [];
  #flight: Promise<void> | null = null;

  constructor(mailbox: MailboxClient, user: string, logger: Logger) {
    this.#mailbox = mailbox;
    this.#user = user;
    this.#logger = logger;
  }

  /** Flags the message \Seen soon; never fails (the message reached the client either way). */
  mark(uid: number): void {
    this.#pending.push(uid);
    this.#flight ??= this.#run();
  }

  /** Settles once every mark made so far has reached the store (or failed and been logged). */
  drain(): Promise<void> {
    return this.#flight ?? Promise.resolve();
  }

  async #run(): Promise<void> {
    while (this.#pending.length > 0) {
      const uids = this.#pending.splice(0);
      try {
        await this.#mailbox.storeFlags(this.#user, 'INBOX', uids, 'add', ['\\Seen']);
      } catch (error) {
        this.#logger.warn({ err: error, uids }, 'could not set \\Seen after RETR');
      }
    }
    this.#flight = null;
  }
}
