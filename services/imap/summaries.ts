/**
 * Summaries (UID, FLAGS, MODSEQ, RFC822.SIZE, INTERNALDATE) of many messages in columns, from a
 * store that lists them so (MailboxClient.summaries) or, failing that, from its rows.
 */
import { summariesOf, type MailboxClient, type SummaryPage } from '../core/mailbox-api.ts';

export type SummaryRange = { uids: readonly number[] } | { first: number; last: number };

export async function loadSummaries(
  storage: MailboxClient,
  user: string,
  folder: string,
  range: SummaryRange,
): Promise<SummaryPage> {
  if (storage.summaries) return storage.summaries(user, folder, range);
  if ('uids' in range) {
    const r = await storage.messages(user, folder, [...range.uids], { summary: true });
    return { folder: r.folder, summaries: summariesOf(r.messages), modseq: 0 };
  }
  const r = await storage.messages(user, folder, [], { summary: true });
  const inRange = r.messages.filter((m) => m.uid >= range.first && m.uid <= range.last);
  // One read: the rows are as of the folder's HIGHESTMODSEQ read with them.
  return { folder: r.folder, summaries: summariesOf(inRange), modseq: r.folder.highestModseq };
}
