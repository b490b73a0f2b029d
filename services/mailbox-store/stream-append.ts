/**
 * The first half of a streamed APPEND (a large IMAP literal), shared by the store and its RPC
 * client: fail early, before storing anything, when the folder is missing or the user is at the
 * limit; then store the body, building its MIME structure from the chunks on their way to the
 * blob store (no second read), so FETCH ENVELOPE/BODYSTRUCTURE never load the body.
 */
import type { BlobInfo, BlobStore } from '../core/blobs.ts';
import { MailboxError, quotaReached, type MailboxClient } from '../core/mailbox-api.ts';
import { withStructure } from '../core/mime-structure.ts';

export async function storeStreamedBody(
  mailbox: Pick<MailboxClient, 'quota' | 'status'>,
  blobs: Pick<BlobStore, 'putStream'>,
  user: string,
  folder: string,
  body: AsyncIterable<Uint8Array>,
): Promise<{ blob: BlobInfo; structure: Buffer | null }> {
  const [q] = await Promise.all([mailbox.quota(user), mailbox.status(user, folder)]);
  if (quotaReached(q)) throw new MailboxError('OVERQUOTA', 'mailbox is full');
  const tee = withStructure(body);
  const blob = await blobs.putStream(tee.body);
  return { blob, structure: tee.result() };
}
