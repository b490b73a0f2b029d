/**
 * FETCH and UID FETCH (RFC 9051 6.4.5, 6.4.9; BINARY from RFC 3516).
 *
 * Message metadata comes from storage in batches. ENVELOPE, BODY and BODYSTRUCTURE come from the
 * MIME structure stored with the message at append, without loading the body; other items that
 * need the structure, and messages stored before it was kept, parse the body (cached by the
 * server); a lone BODY[] / RFC822 streams the body from the blob store. A non-PEEK body section
 * sets \Seen and reports the new FLAGS.
 */
import type { MessageMeta, Summaries } from '../../core/mailbox-api.ts';
import { decodeStructure } from '../../core/mime-structure.ts';
import { bodyStructure } from '../body-structure.ts';
import type { SessionContext } from '../context.ts';
import { envelope } from '../envelope.ts';
import {
  bodyBytes,
  decodeTransfer,
  filterHeader,
  findPart,
  headerBytes,
  transferEncoding,
} from '../mime-tree.ts';
import type { ParsedMessage } from '../mime-tree.ts';
import type { FetchItem, Section } from '../parser.ts';
import { Literal, StreamLiteral, atom, bad, formatInternalDate, ok, responseLine } from '../response.ts';
import type { ImapValue, OutputPart, Outcome } from '../response.ts';
import { loadSummaries } from '../summaries.ts';
import { SELECTED, isOutcome, resolveSet, selectedOf, userOf } from './common.ts';
import { formatSequenceSet, inSet } from '../sequence-set.ts';
import type { CommandFamily } from './common.ts';

/** Items that set \Seen when fetched (RFC 9051 6.4.5: BODY[...] without .PEEK, RFC822, RFC822.TEXT). */
function setsSeen(item: FetchItem): boolean {
  if (item.kind === 'section') return !item.peek;
  return item.kind === 'attribute' && (item.name === 'RFC822' || item.name === 'RFC822.TEXT');
}

/** The whole message, untouched: can be streamed without parsing. */
function isWholeMessage(item: FetchItem): boolean {
  if (item.kind === 'attribute') return item.name === 'RFC822';
  return (
    item.kind === 'section' && item.section.part.length === 0 && item.section.text === null && !item.partial
  );
}

/** BODY[]<start.length>: a range of the raw message, streamable without parsing. */
function isWholeRange(item: FetchItem): item is Extract<FetchItem, { kind: 'section' }> {
  return (
    item.kind === 'section' &&
    !item.binary &&
    item.section.part.length === 0 &&
    item.section.text === null &&
    item.partial !== null
  );
}

/** The octets [start, start + length) of a stream, without holding more than a chunk. */
async function* sliceStream(
  source: AsyncIterable<Uint8Array>,
  start: number,
  length: number,
): AsyncIterable<Uint8Array> {
  let offset = 0;
  const end = start + length;
  for await (const chunk of source) {
    const from = Math.max(start - offset, 0);
    const to = Math.min(end - offset, chunk.byteLength);
    offset += chunk.byteLength;
    if (to > from) yield chunk.subarray(from, to);
    if (offset >= end) return;
  }
}

/** A body read whole must have its stored size: a literal announces it (as #writeStream checks). */
function wholeBody(raw: Buffer, meta: MessageMeta): Buffer {
  if (raw.length !== meta.size) throw new Error(`Message body does not match its size (${meta.uid})`);
  return raw;
}

/** ENVELOPE, BODY and BODYSTRUCTURE: answered from the stored structure when there is one. */
function isStructural(item: FetchItem): boolean {
  return (
    item.kind === 'attribute' &&
    (item.name === 'ENVELOPE' || item.name === 'BODYSTRUCTURE' || item.name === 'BODY')
  );
}

function needsBody(item: FetchItem): boolean {
  if (item.kind === 'attribute') {
    return !['UID', 'FLAGS', 'INTERNALDATE', 'RFC822.SIZE', 'MODSEQ'].includes(item.name);
  }
  return true;
}

/** Header field names echo as the client sent them: atoms, or quoted when they must be. */
function fieldName(name: string): string {
  return /^[!#$&'+\-.0-9A-Z^_`a-z|~]+$/.test(name) ? name : JSON.stringify(name);
}

/** `BODY[1.HEADER.FIELDS (SUBJECT)]<0>` as the response names it (RFC 9051 7.5.2). */
function sectionLabel(item: Extract<FetchItem, { kind: 'section' }>): string {
  const { part, text, fields } = item.section;
  let spec = part.join('.');
  if (text) spec += (spec ? '.' : '') + text;
  if (fields.length > 0) spec += ` (${fields.map(fieldName).join(' ')})`;
  const origin = item.partial ? `<${item.partial.start}>` : '';
  return `${item.binary ? 'BINARY' : 'BODY'}[${spec}]${origin}`;
}

/** The octets a section names; empty when the part does not exist (RFC 9051 6.4.5). */
function sectionBytes(msg: ParsedMessage, section: Section, binary: boolean): Buffer {
  const node = findPart(msg.root, section.part);
  if (!node) return Buffer.alloc(0);
  if (section.text === null) {
    if (section.part.length === 0) return msg.raw;
    const body = bodyBytes(msg, node);
    // RFC 3516 4.1: BINARY returns the part decoded from its transfer encoding.
    return binary ? (decodeTransfer(body, transferEncoding(node)) ?? body) : body;
  }
  if (section.text === 'MIME') return headerBytes(msg, node);
  // HEADER and TEXT of a part apply to the message a message/rfc822 part encapsulates.
  const target = section.part.length === 0 ? msg.root : node.message;
  if (!target) return Buffer.alloc(0);
  switch (section.text) {
    case 'HEADER':
      return headerBytes(msg, target);
    case 'TEXT':
      return bodyBytes(msg, target);
    case 'HEADER.FIELDS':
      return filterHeader(target.headers, section.fields, false);
    case 'HEADER.FIELDS.NOT':
      return filterHeader(target.headers, section.fields, true);
  }
}

function slice(data: Buffer, partial: { start: number; length: number } | null): Buffer {
  if (!partial) return data;
  return data.subarray(
    Math.min(partial.start, data.length),
    Math.min(partial.start + partial.length, data.length),
  );
}

/** The whole body (BODY[], BODY.PEEK[], RFC822, or a range of it) is all that is asked for. */
function onlyWholeBody(items: readonly FetchItem[]): boolean {
  const bodyItems = items.filter(needsBody);
  const only = bodyItems.length === 1 ? (bodyItems[0] as FetchItem) : null;
  return only !== null && (isWholeMessage(only) || isWholeRange(only));
}

async function fetchValues(
  ctx: SessionContext,
  meta: MessageMeta,
  items: readonly FetchItem[],
  flagsChanged: boolean,
  body?: Promise<Buffer>,
): Promise<ImapValue[]> {
  const bodyItems = items.filter(needsBody);
  // Only UID, FLAGS, MODSEQ, INTERNALDATE, RFC822.SIZE: answered from the summary, no await.
  if (bodyItems.length === 0) return valuesOf(ctx, meta, items, flagsChanged, null, null, false);
  const only = bodyItems.length === 1 ? (bodyItems[0] as FetchItem) : null;
  const stream = only !== null && (isWholeMessage(only) || isWholeRange(only));
  // Only ENVELOPE/BODY/BODYSTRUCTURE asked for, and the structure stored at append: no body read
  // (a message the instance has parsed already is answered from its cache, cheaper than decoding).
  const stored =
    bodyItems.length > 0 && bodyItems.every(isStructural) && !ctx.cachedMessage(meta.blob)
      ? decodeStructure(meta.structure, ctx.limits)
      : null;
  // A cached message is served from memory even where it could be streamed.
  const parsed =
    bodyItems.length > 0 && !stored
      ? stream
        ? ctx.cachedMessage(meta.blob)
        : await ctx.parsedMessage(meta)
      : null;
  // A small body read whole (ahead, by the caller): sent with its response line in one write.
  if (stream && !parsed && body)
    return valuesOf(ctx, meta, items, flagsChanged, null, null, stream, await body);
  return valuesOf(ctx, meta, items, flagsChanged, stored, parsed, stream);
}

/** The values of one FETCH response, once the structure or the parsed body (if needed) is at hand. */
function valuesOf(
  ctx: SessionContext,
  meta: MessageMeta,
  items: readonly FetchItem[],
  flagsChanged: boolean,
  stored: ReturnType<typeof decodeStructure> | null,
  parsed: ParsedMessage | null,
  stream: boolean,
  raw: Buffer | null = null,
): ImapValue[] {
  const values: ImapValue[] = [];
  const whole = (): ImapValue =>
    parsed
      ? new Literal(parsed.raw)
      : raw
        ? new Literal(wholeBody(raw, meta))
        : new StreamLiteral(meta.size, ctx.storage.openBody(meta.blob));
  for (const item of items) {
    if (item.kind === 'section') {
      const label = atom(sectionLabel(item));
      if (isWholeMessage(item)) {
        values.push(label, whole());
      } else if (stream && !parsed && isWholeRange(item) && item.partial) {
        // RFC 9051 6.4.5: a range past the end is empty, one running over it is cut short.
        const { start, length } = item.partial;
        const size = Math.max(0, Math.min(length, meta.size - start));
        values.push(
          label,
          size === 0
            ? new Literal(Buffer.alloc(0))
            : raw
              ? new Literal(wholeBody(raw, meta).subarray(start, start + size))
              : new StreamLiteral(size, sliceStream(ctx.storage.openBody(meta.blob), start, size)),
        );
      } else {
        const data = slice(sectionBytes(parsed as ParsedMessage, item.section, item.binary), item.partial);
        values.push(label, new Literal(data, item.binary));
      }
      continue;
    }
    if (item.kind === 'binarySize') {
      const data = sectionBytes(parsed as ParsedMessage, { part: item.part, text: null, fields: [] }, true);
      values.push(atom(`BINARY.SIZE[${item.part.join('.')}]`), data.length);
      continue;
    }
    values.push(atom(item.name));
    switch (item.name) {
      case 'UID':
        values.push(meta.uid);
        break;
      case 'FLAGS':
        values.push(ctx.reportedFlags(meta.uid));
        break;
      case 'MODSEQ':
        values.push([meta.modseq]);
        break;
      case 'INTERNALDATE':
        values.push(formatInternalDate(meta.internalDate));
        break;
      case 'RFC822.SIZE':
        values.push(meta.size);
        break;
      case 'ENVELOPE':
        values.push(envelope(stored ? stored.headers : (parsed as ParsedMessage).root.headers));
        break;
      case 'BODYSTRUCTURE':
        values.push(bodyStructure(stored ?? (parsed as ParsedMessage), true));
        break;
      case 'BODY':
        values.push(bodyStructure(stored ?? (parsed as ParsedMessage), false));
        break;
      case 'RFC822':
        values.push(whole());
        break;
      case 'RFC822.HEADER':
        values.push(new Literal(headerBytes(parsed as ParsedMessage, (parsed as ParsedMessage).root)));
        break;
      case 'RFC822.TEXT':
        values.push(new Literal(bodyBytes(parsed as ParsedMessage, (parsed as ParsedMessage).root)));
        break;
    }
  }
  // RFC 9051 6.4.5: when fetching sets \Seen, the new flags are part of the response.
  const has = (name: string): boolean => items.some((i) => i.kind === 'attribute' && i.name === name);
  if (flagsChanged && !has('FLAGS')) values.push(atom('FLAGS'), ctx.reportedFlags(meta.uid));
  // RFC 7162 3.1.4: with CONDSTORE on, FLAGS in a FETCH response comes with MODSEQ.
  if (ctx.enabled.has('CONDSTORE') && (flagsChanged || has('FLAGS')) && !has('MODSEQ')) {
    values.push(atom('MODSEQ'), [meta.modseq]);
  }
  return values;
}

type SummaryItem = 'UID' | 'FLAGS' | 'MODSEQ' | 'INTERNALDATE' | 'RFC822.SIZE';

/**
 * FETCH of summary items only (UID, FLAGS, MODSEQ, INTERNALDATE, RFC822.SIZE): the store's
 * summaries in columns, a UID range per batch when the batch is a run of consecutive sequence
 * numbers (1:*), and the responses written as text into blocks of outputBatchBytes. Same
 * responses as valuesOf() gives.
 */
async function fetchSummaries(
  ctx: SessionContext,
  uids: readonly number[],
  items: readonly FetchItem[],
  changedSince: number | null,
): Promise<Outcome> {
  const mailbox = selectedOf(ctx);
  const user = userOf(ctx);
  const names = items.map((i) => (i.kind === 'attribute' ? i.name : '') as SummaryItem);
  const hasFlags = names.includes('FLAGS');
  const hasModseq = names.includes('MODSEQ');
  const condstore = ctx.enabled.has('CONDSTORE');
  // RFC 9051 removed \Recent: only IMAP4rev1 clients see it.
  const showRecent = !ctx.enabled.has('IMAP4rev2');
  // `(\Seen \Flagged)` once per distinct flags array (they are shared between rows).
  const listed = new Map<readonly string[], string>();
  const flagList = (flags: readonly string[], uid: number): string => {
    if (showRecent && mailbox.isRecent(uid)) {
      return `(${flags.length > 0 ? `${flags.join(' ')} ` : ''}\\Recent)`;
    }
    let text = listed.get(flags);
    if (text === undefined) {
      text = `(${flags.join(' ')})`;
      listed.set(flags, text);
    }
    return text;
  };
  let out = '';
  /** Adds one response to `out`; true once a block is ready to be written (see flush). */
  const emit = (
    seq: number,
    uid: number,
    flags: readonly string[],
    modseq: number,
    row: Summaries | null,
    j: number,
  ): boolean => {
    const changed = mailbox.setFlagsAt(seq, flags, modseq);
    let line = `* ${seq} FETCH (`;
    for (let k = 0; k < names.length; k++) {
      if (k > 0) line += ' ';
      switch (names[k]) {
        case 'UID':
          line += `UID ${uid}`;
          break;
        case 'FLAGS':
          line += `FLAGS ${flagList(flags, uid)}`;
          break;
        case 'MODSEQ':
          line += `MODSEQ (${modseq})`;
          break;
        case 'INTERNALDATE':
          line += `INTERNALDATE "${formatInternalDate(row?.internalDates[j] ?? 0)}"`;
          break;
        case 'RFC822.SIZE':
          line += `RFC822.SIZE ${row?.sizes[j] ?? 0}`;
          break;
      }
    }
    // As in valuesOf(): changed flags are reported, and with CONDSTORE, FLAGS brings MODSEQ.
    if (changed && !hasFlags) line += ` FLAGS ${flagList(flags, uid)}`;
    if (condstore && (changed || hasFlags) && !hasModseq) line += ` MODSEQ (${modseq})`;
    out += `${line})\r\n`;
    return out.length >= ctx.limits.outputBatchBytes;
  };
  const flush = async (): Promise<void> => {
    const block = Buffer.from(out, 'latin1');
    out = '';
    await ctx.write([block]);
  };
  // Flags and MODSEQs known whole at a HIGHESTMODSEQ that is still the folder's: nothing changed
  // since (every append, flag change and expunge raises it), so they answer without a store read.
  const fromMemory =
    names.every((n) => n === 'UID' || n === 'FLAGS' || n === 'MODSEQ') &&
    mailbox.syncedModseq > 0 &&
    mailbox.flagsPending.size === 0 &&
    mailbox.expungePending.size === 0 &&
    !mailbox.folderChanged;
  if (fromMemory) {
    const info = await ctx.storage.status(user, mailbox.name);
    if (info.highestModseq === mailbox.syncedModseq && info.uidValidity === mailbox.uidValidity) {
      let seq = 0;
      for (const uid of uids) {
        if (ctx.closed) return ok('FETCH aborted');
        // Ascending UIDs: mostly the next sequence number.
        seq = mailbox.uidAt(seq + 1) === uid ? seq + 1 : mailbox.seqOf(uid);
        if (seq === 0) continue;
        const modseq = mailbox.modseqAt(seq);
        if (changedSince !== null && modseq <= changedSince) continue;
        if (emit(seq, uid, mailbox.flagsAt(seq), modseq, null, 0)) await flush();
      }
      if (out.length > 0) await ctx.write([Buffer.from(out, 'latin1')]);
      return ok('FETCH completed');
    }
  }
  // Every message read again, and all still there: the session's view is whole at the lowest
  // HIGHESTMODSEQ the reads saw.
  const whole = changedSince === null && uids.length === mailbox.exists;
  let lowest = Infinity;
  let matched = 0;
  const step = ctx.limits.summaryBatch;
  for (let i = 0; i < uids.length; i += step) {
    if (ctx.closed) return ok('FETCH aborted');
    const batch = uids.slice(i, i + step);
    const first = batch[0] as number;
    const last = batch[batch.length - 1] as number;
    const seq0 = mailbox.seqOf(first);
    // A run of consecutive messages: ask for the UID range, not a list of UIDs.
    const run = seq0 > 0 && mailbox.seqOf(last) - seq0 + 1 === batch.length;
    const page = await loadSummaries(
      ctx.storage,
      user,
      mailbox.name,
      run ? { first, last } : { uids: batch },
    );
    const rows = page.summaries;
    lowest = Math.min(lowest, page.modseq);
    let j = 0;
    for (const uid of batch) {
      // Both ascending: rows the session does not know (appended, not yet reported) are skipped.
      while (j < rows.length && (rows.uids[j] as number) < uid) j++;
      // Expunged by another session and not yet reported: nothing to return (RFC 2180 4.1.2).
      if (j >= rows.length || rows.uids[j] !== uid) continue;
      const seq = mailbox.seqOf(uid);
      if (seq === 0) continue;
      matched++;
      const modseq = rows.modseqs[j] as number;
      if (changedSince !== null && modseq <= changedSince) continue;
      if (emit(seq, uid, rows.flags[j] as readonly string[], modseq, rows, j)) await flush();
    }
  }
  if (out.length > 0) await ctx.write([Buffer.from(out, 'latin1')]);
  if (whole && matched === mailbox.exists && lowest > 0 && lowest !== Infinity) mailbox.syncedModseq = lowest;
  return ok('FETCH completed');
}

export const FETCH_COMMANDS: CommandFamily<'FETCH'> = {
  FETCH: {
    states: SELECTED,
    async handle(ctx, command) {
      const mailbox = selectedOf(ctx);
      const user = userOf(ctx);
      const uids = resolveSet(mailbox, command.args.set, command.uid);
      if (isOutcome(uids)) return uids;
      const items = [...command.args.items];
      const { changedSince, vanished } = command.args;
      // RFC 7162 3.1: MODSEQ and CHANGEDSINCE are CONDSTORE-enabling.
      if (changedSince !== null || items.some((i) => i.kind === 'attribute' && i.name === 'MODSEQ')) {
        ctx.enabled.add('CONDSTORE');
      }
      if (vanished) {
        // RFC 7162 3.2.6: VANISHED only in UID FETCH, once QRESYNC is on.
        if (!command.uid) return bad('VANISHED needs UID FETCH');
        if (!ctx.enabled.has('QRESYNC')) return bad('QRESYNC is not enabled');
        const gone = await ctx.storage.expungedSince(user, mailbox.name, changedSince as number);
        const star = Math.max(mailbox.maxUid, 1);
        const reported = (gone ?? []).filter(
          (uid) => inSet(command.args.set, uid, star) && !mailbox.has(uid),
        );
        if (reported.length > 0) await ctx.untagged(`VANISHED (EARLIER) ${formatSequenceSet(reported)}`);
      }
      // RFC 7162 3.1.4.1: CHANGEDSINCE implies MODSEQ in the response.
      if (changedSince !== null && !items.some((i) => i.kind === 'attribute' && i.name === 'MODSEQ')) {
        items.push({ kind: 'attribute', name: 'MODSEQ' });
      }
      // RFC 9051 6.4.9: UID FETCH always returns the UID.
      if (command.uid && !items.some((i) => i.kind === 'attribute' && i.name === 'UID')) {
        items.unshift({ kind: 'attribute', name: 'UID' });
      }
      // Only UID, FLAGS, MODSEQ, INTERNALDATE, RFC822.SIZE: from summaries, written as text.
      if (items.every((i) => !needsBody(i))) return fetchSummaries(ctx, uids, items, changedSince);
      const markSeen = !mailbox.readOnly && items.some(setsSeen);
      // The stored structures travel only when they answer the items asked for; without body
      // items, summaries (no blob reference) answer, in bigger batches.
      const bodyItems = items.filter(needsBody);
      const structure = bodyItems.length > 0 && bodyItems.every(isStructural);
      const summary = bodyItems.length === 0;
      const step = summary ? ctx.limits.summaryBatch : ctx.limits.storageBatch;
      const inlineBodies = onlyWholeBody(items);
      // Responses are gathered and written in blocks of outputBatchBytes (one write each).
      let out: OutputPart[] = [];
      let pending = 0;
      const flush = async (): Promise<void> => {
        if (out.length === 0) return;
        const parts = out;
        out = [];
        pending = 0;
        await ctx.write(parts);
      };
      for (let i = 0; i < uids.length; i += step) {
        const batch = uids.slice(i, i + step);
        const { messages } = await ctx.storage.messages(user, mailbox.name, batch, { structure, summary });
        const metas = new Map(messages.map((m) => [m.uid, m]));
        const seenNow = new Set<number>();
        if (markSeen) {
          const unseen = messages.filter((m) => !m.flags.includes('\\Seen')).map((m) => m.uid);
          if (unseen.length > 0) {
            const updated = await ctx.storage.storeFlags(
              user,
              mailbox.name,
              unseen,
              'add',
              ['\\Seen'],
              ctx.id,
            );
            for (const meta of updated) {
              metas.set(meta.uid, meta);
              seenNow.add(meta.uid);
            }
          }
        }
        // Small whole bodies are read a few ahead of the one being written, in order.
        const reads = new Map<number, Promise<Buffer>>();
        const inline = inlineBodies
          ? batch.filter((u) => {
              const m = metas.get(u);
              return m !== undefined && m.size <= ctx.limits.inlineBodyBytes && !ctx.cachedMessage(m.blob);
            })
          : [];
        let ahead = 0;
        const readAhead = (): void => {
          while (ahead < inline.length && reads.size < ctx.limits.bodyPrefetch) {
            const m = metas.get(inline[ahead++] as number) as MessageMeta;
            const read = ctx.storage.readBody(m.blob);
            // Awaited in order below; a failure is seen there, not as an unhandled rejection.
            read.catch(() => undefined);
            reads.set(m.uid, read);
          }
        };
        for (const uid of batch) {
          if (ctx.closed) return ok('FETCH aborted');
          readAhead();
          const body = reads.get(uid);
          reads.delete(uid);
          const meta = metas.get(uid);
          const seq = mailbox.seqOf(uid);
          // Expunged by another session and not yet reported: nothing to return (RFC 2180 4.1.2).
          if (!meta || seq === 0) continue;
          if (changedSince !== null && meta.modseq <= changedSince) continue;
          const changed = mailbox.setFlags(uid, meta.flags) || seenNow.has(uid);
          const values = summary
            ? valuesOf(ctx, meta, items, changed, null, null, false)
            : await fetchValues(ctx, meta, items, changed, body);
          for (const part of responseLine(`* ${seq} FETCH`, [values])) {
            out.push(part);
            // A streamed body goes out at once: nothing is held behind it.
            pending += Buffer.isBuffer(part) ? part.length : ctx.limits.outputBatchBytes;
          }
          if (pending >= ctx.limits.outputBatchBytes) await flush();
        }
      }
      await flush();
      return ok('FETCH completed');
    },
  },
};
