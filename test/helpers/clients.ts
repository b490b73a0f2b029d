/**
 * Real clients as a user runs them against the plain loopback ports of a test instance: nodemailer
 * submitting with AUTH, imapflow logged in (STARTTLS with the instance's self-signed certificate).
 */
import nodemailer from 'nodemailer';
import { ImapFlow } from 'imapflow';

/** The user most tests create: alice@example.test. */
export const ALICE = { user: 'alice@example.test', pass: 'alice-password' };

type Mail = Parameters<ReturnType<typeof nodemailer.createTransport>['sendMail']>[0];

/**
 * Submits `mail` on the submission `port` (no STARTTLS) with AUTH as `auth`, alice by default;
 * MAIL FROM and From are the user unless `mail` says otherwise.
 */
export function submit(port: number, mail: Mail, auth = ALICE) {
  return nodemailer
    .createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, auth })
    .sendMail({ from: auth.user, ...mail });
}

/** Runs `fn` with an imapflow client logged in on the IMAP `port` as `auth`, and logs out after. */
/** An imapflow client for a test instance, not yet connected. */
export function imapClient(port: number, auth: { user: string; pass: string }): ImapFlow {
  return new ImapFlow({
    host: '127.0.0.1',
    port,
    secure: false,
    // The test instance's certificate is self-signed.
    tls: { rejectUnauthorized: false },
    auth,
    logger: false,
  });
}

export async function withImap<T>(
  port: number,
  auth: { user: string; pass: string },
  fn: (client: ImapFlow) => Promise<T>,
): Promise<T> {
  const client = imapClient(port, auth);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.logout();
  }
}
