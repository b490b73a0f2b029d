/**
 * Property-based fuzzing of the MIME parser behind FETCH (services/imap/mime-tree.ts) and of
 * what is built from it (BODYSTRUCTURE, ENVELOPE, body sections, SEARCH text): arbitrary bytes
 * and structured messages with malformed boundaries, missing or broken headers, invalid transfer
 * encodings, message/rfc822 inside multiparts. Every message parses within the depth and part
 * limits, every structure stays inside the message's bytes, and BODYSTRUCTURE and ENVELOPE are
 * values a client can read. Plus the inputs that once took quadratic time or memory.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { bodyStructure } from '../../services/imap/body-structure.ts';
import { envelope } from '../../services/imap/envelope.ts';
import {
  bodyBytes,
  bodyText,
  decodeTransfer,
  filterHeader,
  findPart,
  headerBytes,
  parseMessage,
  parsedWeight,
  transferEncoding,
  type MimeNode,
  type ParsedMessage,
} from '../../services/imap/mime-tree.ts';
import { MessageCache } from '../../services/imap/message-cache.ts';
import { serializeValue } from '../../services/imap/response.ts';
import { ValueReader, fuzz, iterationReport, protocolBytes } from '../helpers/fuzz.ts';

const LIMITS = { maxMimeDepth: 6, maxMimeParts: 40 };

/** Checks the tree's invariants; returns the number of nodes and the deepest level. */
function walk(
  msg: ParsedMessage,
  node: MimeNode,
  depth: number,
  lo: number,
  hi: number,
): { nodes: number; depth: number } {
  assert.ok(
    lo <= node.start && node.start <= node.bodyStart && node.bodyStart <= node.end && node.end <= hi,
    'offsets out of the parent',
  );
  assert.ok(!(node.children.length > 0 && node.message), 'both parts and an encapsulated message');
  let nodes = 1;
  let deepest = depth;
  let previous = node.bodyStart;
  for (const child of node.children) {
    assert.ok(child.start >= previous, 'parts overlap or go backwards');
    previous = child.end;
    const r = walk(msg, child, depth + 1, node.bodyStart, node.end);
    nodes += r.nodes;
    deepest = Math.max(deepest, r.depth);
  }
  if (node.message) {
    const r = walk(msg, node.message, depth + 1, node.bodyStart, node.end);
    nodes += r.nodes;
    deepest = Math.max(deepest, r.depth);
  }
  return { nodes, depth: deepest };
}

/** Everything FETCH and SEARCH do with a parsed message. */
function exercise(raw: Buffer, paths: readonly number[][]): void {
  const msg = parseMessage(raw, LIMITS);
  const { nodes, depth } = walk(msg, msg.root, 0, 0, raw.length);
  assert.ok(nodes <= LIMITS.maxMimeParts + LIMITS.maxMimeDepth + 1, `${nodes} nodes`);
  assert.ok(depth <= LIMITS.maxMimeDepth, `depth ${depth}`);
  for (const extensible of [true, false]) {
    const wire = serializeValue(bodyStructure(msg, extensible));
    const reader = new ValueReader(wire, true);
    assert.ok(Array.isArray(reader.value()), 'BODYSTRUCTURE is a list');
    reader.end();
    // Each node writes its own header values at most a few times (ENVELOPE repeats From).
    assert.ok(wire.length <= 4 * raw.length + 600 * nodes, `BODYSTRUCTURE of ${wire.length} octets`);
  }
  const env = serializeValue(envelope(msg.root.headers));
  const reader = new ValueReader(env);
  const fields = reader.value();
  reader.end();
  assert.ok(Array.isArray(fields) && fields.length === 10, 'ENVELOPE has ten fields');
  assert.equal(typeof bodyText(msg), 'string');
  for (const path of paths) {
    const part = findPart(msg.root, path);
    if (!part) continue;
    assert.ok(headerBytes(msg, part).length + bodyBytes(msg, part).length <= raw.length);
    filterHeader(part.headers, ['subject', 'content-type'], false);
    filterHeader(part.headers, ['subject'], true);
    const decoded = decodeTransfer(bodyBytes(msg, part), transferEncoding(part));
    if (decoded) assert.ok(decoded.length <= bodyBytes(msg, part).length);
  }
}

// ---- structured messages ---------------------------------------------------------------------

const contentType = fc.oneof(
  fc.constantFrom(
    'text/plain',
    'text/plain; charset=utf-8',
    'text/plain; charset="unterminated',
    'text/html; charset=x-unknown-charset',
    'application/octet-stream; name=a.bin',
    'image/png; (comment (nested)) name="a\\"b.png"',
    'message/rfc822',
    'message/global',
    'multipart/',
    '/plain',
    'text/plain;;;; =; a=; =b',
    'multipart/mixed',
    'multipart/mixed; boundary=',
    'multipart/mixed; boundary=""',
    "TEXT/PLAIN; CHARSET=US-ASCII; filename*=utf-8''%E2%82%AC",
    '(((((((',
    'a/b; c="))))"',
  ),
);
const extraHeader = fc.constantFrom(
  'Subject: hello',
  'Subject: =?UTF-8?B?w6k=?= =?bogus?Q?x?=',
  'From: "A, B" <a@b.test>, c@d.test (C), Group: e@f.test, <g@h>;',
  'From: <<<<',
  'From: a@b@c@d',
  'To: undisclosed-recipients:;',
  'Cc: ((((',
  'Date: not a date',
  'Content-Transfer-Encoding: base64',
  'Content-Transfer-Encoding: quoted-printable',
  'Content-Transfer-Encoding: x-uuencode',
  'Content-Transfer-Encoding: 8bit',
  'Content-Disposition: attachment; filename="a.pdf"',
  'Content-Disposition: ;;',
  'Content-Language: en, , fr',
  'Content-ID: <id@x>',
  'Content-Location: http://x/',
  'X-Folded: a\r\n b\r\n\tc',
  'X-8bit: \xe9\xff\x00',
  'no colon here',
  ': empty name',
  ` X-Starts-With-Space: x`,
);
const bodyLine = fc.oneof(
  fc.constantFrom(
    'plain text',
    '',
    '=41=42=4',
    '=\r',
    'aGVsbG8=',
    '!!!not base64!!!',
    '.',
    '--',
    '--x',
    '--b1',
    '--b1--',
    '--b1 trailing',
    ' --b1',
  ),
  fc.string({ maxLength: 20, unit: 'binary-ascii' }),
);

const entity: fc.Arbitrary<string> = fc.letrec<{ entity: string; body: string }>((tie) => ({
  entity: fc
    .tuple(
      fc.option(contentType, { nil: null }),
      fc.array(extraHeader, { maxLength: 4 }),
      fc.constantFrom('\r\n', '\n'),
      tie('body'),
    )
    .map(([ct, headers, eol, body]) => {
      const lines = [...(ct === null ? [] : [`Content-Type: ${ct}`]), ...headers];
      return `${lines.join(eol)}${eol}${eol}${body}`;
    }),
  body: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.array(bodyLine, { maxLength: 6 }).map((l) => l.join('\r\n')),
    // A multipart, its boundary written right or wrong.
    fc
      .tuple(
        fc.constantFrom('b1', 'b2', 'b1x', 'b', 'x y', '"q"', '=_?'),
        fc.array(tie('entity'), { maxLength: 4 }),
        fc.constantFrom('ok', 'noclose', 'wrongclose', 'nopreamble', 'midline', 'lf'),
        fc.constantFrom('mixed', 'alternative', 'digest', 'related'),
      )
      .map(([boundary, parts, style, subtype]) => {
        const eol = style === 'lf' ? '\n' : '\r\n';
        const delim = style === 'midline' ? `x--${boundary}` : `--${boundary}`;
        const close = style === 'noclose' ? '' : style === 'wrongclose' ? `--${boundary}x--` : `${delim}--`;
        const preamble = style === 'nopreamble' ? '' : `preamble${eol}`;
        const inner = parts.map((p) => `${delim}${eol}${p}${eol}`).join('');
        return `Content-Type: multipart/${subtype}; boundary="${boundary}"${eol}${eol}${preamble}${inner}${close}${eol}`;
      }),
    // An encapsulated message.
    tie('entity').map((inner) => `Content-Type: message/rfc822\r\n\r\n${inner}`),
  ),
})).entity;

// ---- properties ------------------------------------------------------------------------------

const paths = fc.array(fc.array(fc.integer({ min: 1, max: 5 }), { maxLength: 5 }), { maxLength: 4 });

describe('fuzz: MIME parser, BODYSTRUCTURE, ENVELOPE and sections', () => {
  after(() => console.log(`# MIME fuzz iterations\n${iterationReport()}`));

  it('parses any bytes into a bounded structure that FETCH can describe', () => {
    fuzz('mime parseMessage (bytes)', fc.tuple(protocolBytes(800), paths), ([raw, p]) => exercise(raw, p));
  });

  it('parses structured messages with malformed boundaries, headers and encodings', () => {
    fuzz('mime parseMessage (structured)', fc.tuple(entity, paths), ([text, p]) =>
      exercise(Buffer.from(text, 'latin1'), p),
    );
  });

  it('handles the inputs that once took quadratic time or memory', async () => {
    // A long line full of boundary-like text: each occurrence once scanned the rest of the line.
    const line = `Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nx${'--b'.repeat(1_000_000)}\r\n--b--\r\n`;
    const big = parseMessage(Buffer.from(line), { maxMimeDepth: 32, maxMimeParts: 1000 });
    assert.equal(big.root.children.length, 1);
    // A thousand parts, each a multipart whose boundary never comes, before a large last part:
    // each search for a boundary stops at its part's end instead of scanning to the message's.
    const siblings = Array.from(
      { length: 999 },
      (_, i) => `Content-Type: multipart/mixed; boundary=z${i}\r\n\r\nx`,
    );
    const many = `Content-Type: multipart/mixed; boundary=o\r\n\r\n${siblings.map((p) => `--o\r\n${p}\r\n`).join('')}--o\r\n\r\n${'y'.repeat(8 * 1024 * 1024)}\r\n--o--\r\n`;
    const wide = parseMessage(Buffer.from(many), { maxMimeDepth: 32, maxMimeParts: 1000 });
    assert.equal(wide.root.children.length, 999);
    // 100 000 short header lines: 2.6 MiB of octets, ~30 MiB parsed. The parsed-message cache
    // weighs the parsed tree, so such a message cannot fill memory 64 MiB of octets at a time.
    const lines = Buffer.from(
      `${Array.from({ length: 100_000 }, (_, i) => `X-Line-${i}: value ${i}`).join('\r\n')}\r\n\r\nbody\r\n`,
    );
    const weighty = parseMessage(lines, { maxMimeDepth: 32, maxMimeParts: 1000 });
    assert.ok(parsedWeight(weighty) > 10 * lines.length);
    const cache = new MessageCache({ parsedMessageCache: 8192, parsedMessageCacheBytes: 64 * 1024 * 1024 });
    await cache.get('sha256:lines', async () => weighty);
    assert.equal(cache.size, 0, 'a message heavier parsed than a quarter of the cache is not kept');
    // A 16 MiB header field is unfolded once, as bytes.
    const header = Buffer.from(`Subject: ${'s'.repeat(16 * 1024 * 1024)}\r\n\r\nbody\r\n`);
    const parsed = parseMessage(header, { maxMimeDepth: 32, maxMimeParts: 1000 });
    assert.equal(parsed.root.headers[0]?.value.length, 16 * 1024 * 1024);
  });
});
