/**
 * ENVELOPE, BODYSTRUCTURE and body sections against golden fixtures: RFC 9051 7.5.2 forms,
 * quoting and literal rules, groups, nested message/rfc822, defaults and malformed MIME.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  KEPT_FIELDS,
  MAX_HEADER_BYTES,
  StructureBuilder,
  decodeStructure,
  structureOf,
} from '../../services/core/mime-structure.ts';
import type { MimeLimits } from '../../services/imap/mime-tree.ts';
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
} from '../../services/imap/mime-tree.ts';
import type { ParsedMessage } from '../../services/imap/mime-tree.ts';
import {
  Joined,
  Literal,
  Raw,
  formatInternalDate,
  responseLine,
  serializeValue,
} from '../../services/imap/response.ts';

const LIMITS = { maxMimeDepth: 32, maxMimeParts: 1000 };

function crlf(text: string): Buffer {
  return Buffer.from(text.replace(/\r?\n/g, '\r\n'), 'utf8');
}

function parse(raw: Buffer | string): ParsedMessage {
  return parseMessage(typeof raw === 'string' ? crlf(raw) : raw, LIMITS);
}

function wire(msg: ParsedMessage, what: 'ENVELOPE' | 'BODYSTRUCTURE' | 'BODY'): string {
  const value =
    what === 'ENVELOPE' ? envelope(msg.root.headers) : bodyStructure(msg, what === 'BODYSTRUCTURE');
  return serializeValue(value).toString('utf8');
}

/** RFC 3501 6.4.5 example message. */
const SIMPLE = `From: Fred Foobar <foobar@Blurdybloop.example>
Subject: afternoon meeting
To: mooch@owatagu.siam.edu.example
Message-Id: <B27397-0100000@Blurdybloop.example>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Hello Joe, do you think we can meet at 3:30 tomorrow?
`;

const MIXED = `From: "Doe, John \\"JD\\"" <john@example.com>
To: undisclosed-recipients:;
Cc: Team: a@example.com, B <b@example.com>;, c@example.com (Charlie C)
Subject: Grüße
Date: Mon, 1 Jan 2024 00:00:00 +0000
Content-Type: multipart/mixed; boundary="outer"

preamble
--outer
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Hi=20there
--outer
Content-Type: application/pdf; name="a b.pdf"
Content-Disposition: attachment; filename*=utf-8''a%20b.pdf
Content-Transfer-Encoding: base64
Content-ID: <part2@x>
Content-Language: en, de

JVBERi0=
--outer
Content-Type: message/rfc822

From: inner@example.com
Subject: inner

inner body
--outer--
epilogue
`;

const NESTED = [
  'Content-Type: multipart/mixed; boundary=a',
  '',
  '--a',
  'Content-Type: multipart/alternative; boundary=b',
  '',
  '--b',
  'Content-Type: text/plain',
  '',
  'plain',
  '--b',
  'Content-Type: text/html',
  '',
  '<p>html</p>',
  '--b--',
  '--a',
  'Content-Type: message/rfc822',
  '',
  'Subject: inner',
  'Content-Type: multipart/mixed; boundary=c',
  '',
  '--c',
  '',
  'c1',
  '--c',
  '',
  'c2',
  '--c--',
  '--a--',
  '',
].join('\r\n');

describe('ENVELOPE', () => {
  it('follows RFC 3501 6.4.5 for a simple message', () => {
    assert.equal(
      wire(parse(SIMPLE), 'ENVELOPE'),
      '(NIL "afternoon meeting" (("Fred Foobar" NIL "foobar" "Blurdybloop.example")) ' +
        '(("Fred Foobar" NIL "foobar" "Blurdybloop.example")) (("Fred Foobar" NIL "foobar" "Blurdybloop.example")) ' +
        '((NIL NIL "mooch" "owatagu.siam.edu.example")) NIL NIL NIL "<B27397-0100000@Blurdybloop.example>")',
    );
  });

  it('quotes with escapes, sends 8-bit as a literal, and describes groups', () => {
    assert.equal(
      wire(parse(MIXED), 'ENVELOPE'),
      '("Mon, 1 Jan 2024 00:00:00 +0000" {7}\r\nGrüße ' +
        '(("Doe, John \\"JD\\"" NIL "john" "example.com")) (("Doe, John \\"JD\\"" NIL "john" "example.com")) ' +
        '(("Doe, John \\"JD\\"" NIL "john" "example.com")) ' +
        '((NIL NIL "undisclosed-recipients" NIL) (NIL NIL NIL NIL)) ' +
        '((NIL NIL "Team" NIL) (NIL NIL "a" "example.com") ("B" NIL "b" "example.com") (NIL NIL NIL NIL) ' +
        '("Charlie C" NIL "c" "example.com")) NIL NIL NIL)',
    );
  });

  it('keeps encoded words, drops routes, and defaults Sender and Reply-To to From', () => {
    const msg = parse(
      'From: <>\r\nTo: =?utf-8?q?J=C3=BCrgen?= <j@x.de>, bare, "q@x" <q@x>, <@route.x:r@y.z>\r\nReply-To:\r\nSender: s@x\r\n\r\n',
    );
    assert.equal(
      wire(msg, 'ENVELOPE'),
      '(NIL NIL NIL ((NIL NIL "s" "x")) NIL (("=?utf-8?q?J=C3=BCrgen?=" NIL "j" "x.de") ' +
        '(NIL NIL "bare" "MISSING_DOMAIN") ("q@x" NIL "q" "x") (NIL NIL "r" "y.z")) NIL NIL NIL NIL)',
    );
  });

  it('unfolds header values', () => {
    const msg = parse('Subject: a long\r\n\tsubject\r\nMessage-ID:\r\n <id@x>\r\n\r\n');
    assert.equal(wire(msg, 'ENVELOPE'), '(NIL "a long\tsubject" NIL NIL NIL NIL NIL NIL NIL "<id@x>")');
  });
});

describe('BODYSTRUCTURE and BODY', () => {
  it('describes a single text part', () => {
    const msg = parse(SIMPLE);
    assert.equal(
      wire(msg, 'BODYSTRUCTURE'),
      '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1 NIL NIL NIL NIL)',
    );
    assert.equal(wire(msg, 'BODY'), '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 55 1)');
  });

  it('describes multipart, attachments and message/rfc822', () => {
    const msg = parse(MIXED);
    assert.equal(
      wire(msg, 'BODYSTRUCTURE'),
      '(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 10 1 NIL NIL NIL NIL)' +
        '("APPLICATION" "PDF" ("NAME" "a b.pdf") "<part2@x>" NIL "BASE64" 8 NIL ' +
        '("ATTACHMENT" ("FILENAME*" "utf-8\'\'a%20b.pdf")) ("en" "de") NIL)' +
        '("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 53 (NIL "inner" ((NIL NIL "inner" "example.com")) ' +
        '((NIL NIL "inner" "example.com")) ((NIL NIL "inner" "example.com")) NIL NIL NIL NIL NIL) ' +
        '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL) ' +
        '"MIXED" ("BOUNDARY" "outer") NIL NIL NIL)',
    );
    assert.equal(
      wire(msg, 'BODY'),
      '(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 10 1)' +
        '("APPLICATION" "PDF" ("NAME" "a b.pdf") "<part2@x>" NIL "BASE64" 8)' +
        '("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 53 (NIL "inner" ((NIL NIL "inner" "example.com")) ' +
        '((NIL NIL "inner" "example.com")) ((NIL NIL "inner" "example.com")) NIL NIL NIL NIL NIL) ' +
        '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1) 4) "MIXED")',
    );
  });

  it('describes nested multiparts inside an encapsulated message', () => {
    assert.equal(
      wire(parse(NESTED), 'BODYSTRUCTURE'),
      '((("TEXT" "PLAIN" NIL NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)("TEXT" "HTML" NIL NIL NIL "7BIT" 11 1 NIL NIL NIL NIL) ' +
        '"ALTERNATIVE" ("BOUNDARY" "b") NIL NIL NIL)' +
        '("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 88 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) ' +
        '(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 2 1 NIL NIL NIL NIL)' +
        '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 2 1 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "c") NIL NIL NIL) ' +
        '10 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "a") NIL NIL NIL)',
    );
  });

  it('handles bare LF, unclosed multiparts, missing boundaries, digests and header-only messages', () => {
    const lf = parse(
      Buffer.from(
        'Subject: lf\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\n\nfirst\n--zz\nContent-Type: text/html\n\n<b>2</b>\n--zz--\n',
      ),
    );
    assert.equal(
      wire(lf, 'BODYSTRUCTURE'),
      '(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)' +
        '("TEXT" "HTML" NIL NIL NIL "7BIT" 8 1 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "zz") NIL NIL NIL)',
    );
    const unclosed = parse(
      'Content-Type: multipart/alternative; boundary="q"\n\n--q\nContent-Type: text/plain\n\na\n--q\nContent-Type: text/plain\n\nb',
    );
    assert.equal(
      wire(unclosed, 'BODY'),
      '(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1)("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1) "ALTERNATIVE")',
    );
    assert.equal(
      wire(parse('Content-Type: multipart/mixed\n\nhello\n'), 'BODY'),
      '("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 7)',
    );
    assert.equal(
      wire(
        parse('Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: d1\n\nbody1\n--d--\n'),
        'BODY',
      ),
      '(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 20 (NIL "d1" NIL NIL NIL NIL NIL NIL NIL NIL) ' +
        '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1) 3) "DIGEST")',
    );
    assert.equal(
      wire(parse(Buffer.from('Subject: x\r\nFrom: a@b')), 'BODY'),
      '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)',
    );
  });

  it('stays bounded on absurd nesting', () => {
    let text = 'plain\r\n';
    for (let i = 0; i < 200; i++) {
      text = `Content-Type: multipart/mixed; boundary=b${i}\r\n\r\n--b${i}\r\n${text}\r\n--b${i}--\r\n`;
    }
    const msg = parse(Buffer.from(text));
    const structure = wire(msg, 'BODY');
    assert.ok(structure.includes('"OCTET-STREAM"'));
    assert.ok(structure.length < 20_000);
  });
});

describe('body sections', () => {
  const msg = parse(NESTED);
  const part = (path: number[]): string | null => {
    const node = findPart(msg.root, path);
    return node ? bodyBytes(msg, node).toString() : null;
  };

  it('finds parts by path (RFC 9051 6.4.5)', () => {
    assert.equal(part([1, 1]), 'plain');
    assert.equal(part([1, 2]), '<p>html</p>');
    assert.match(part([2]) ?? '', /^Subject: inner\r\n/);
    assert.equal(part([2, 1]), 'c1');
    assert.equal(part([2, 2]), 'c2');
    assert.equal(part([3]), null);
    assert.equal(part([1, 3]), null);
    const single = parse(SIMPLE);
    const body = findPart(single.root, [1]);
    assert.ok(body);
    assert.equal(
      bodyBytes(single, body).toString(),
      'Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n',
    );
    assert.equal(findPart(single.root, [2]), null);
  });

  it('extracts header, MIME header and header fields', () => {
    const alt = findPart(msg.root, [1, 2]);
    assert.ok(alt);
    assert.equal(headerBytes(msg, alt).toString(), 'Content-Type: text/html\r\n\r\n');
    const inner = findPart(msg.root, [2]);
    assert.ok(inner?.message);
    assert.equal(
      headerBytes(msg, inner.message).toString(),
      'Subject: inner\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n',
    );
    const single = parse(SIMPLE);
    assert.equal(
      filterHeader(single.root.headers, ['subject', 'TO'], false).toString(),
      'Subject: afternoon meeting\r\nTo: mooch@owatagu.siam.edu.example\r\n\r\n',
    );
    assert.equal(
      filterHeader(
        parse('A: 1\r\nB: 2\r\n folded\r\nC: 3\r\n\r\nx').root.headers,
        ['a', 'c'],
        true,
      ).toString(),
      'B: 2\r\n folded\r\n\r\n',
    );
  });

  it('decodes transfer encodings and text for search', () => {
    assert.equal(decodeTransfer(Buffer.from('SGVs\r\nbG8='), 'base64')?.toString(), 'Hello');
    assert.equal(decodeTransfer(Buffer.from('a=3Db=\r\nc=C3=A9'), 'quoted-printable')?.toString(), 'a=bcé');
    assert.equal(decodeTransfer(Buffer.from('x'), 'x-uuencode'), null);
    const msg = parse(MIXED);
    assert.match(bodyText(msg), /Hi there/);
    assert.match(bodyText(msg), /inner body/);
    assert.doesNotMatch(bodyText(msg), /JVBERi0/);
  });
});

describe('response serialization', () => {
  it('quotes, escapes, uses literals and NIL', () => {
    assert.equal(
      serializeValue(['a"b\\c', null, 42, new Raw('\\Seen')]).toString(),
      '("a\\"b\\\\c" NIL 42 \\Seen)',
    );
    assert.equal(serializeValue('two\r\nlines').toString(), '{10}\r\ntwo\r\nlines');
    assert.equal(serializeValue(Buffer.from('é')).toString('latin1'), '{2}\r\n\xc3\xa9');
    assert.equal(serializeValue('x'.repeat(2000)).subarray(0, 7).toString(), '{2000}\r');
    assert.equal(serializeValue(new Literal(Buffer.from('a\0b'), true)).toString('latin1'), '~{3}\r\na\0b');
    assert.equal(serializeValue(new Joined([[1], [2]])).toString(), '(1)(2)');
    assert.equal(
      Buffer.concat(responseLine('* 1 FETCH', [[new Raw('UID'), 7]]) as Buffer[]).toString(),
      '* 1 FETCH (UID 7)\r\n',
    );
  });

  it('formats INTERNALDATE', () => {
    assert.equal(formatInternalDate(Date.UTC(1996, 6, 7, 2, 4, 25)), '07-Jul-1996 02:04:25 +0000');
  });
});

/**
 * The structure kept at append (services/core/mime-structure.ts) is built from the body as it
 * streams; IMAP answers from it instead of parsing the body, so it must say exactly what parsing
 * says: the same ENVELOPE, BODYSTRUCTURE and BODY octets, and the same header fields for SEARCH.
 */
describe('the MIME structure kept at append', () => {
  /** ENVELOPE, BODYSTRUCTURE, BODY and the kept root fields, from parsing the whole message. */
  function parsedWire(raw: Buffer, limits: MimeLimits): string {
    const msg = parseMessage(raw, limits);
    const fields = msg.root.headers.filter((h) => KEPT_FIELDS.has(h.name));
    return [
      serializeValue(envelope(msg.root.headers)),
      serializeValue(bodyStructure(msg, true)),
      serializeValue(bodyStructure(msg, false)),
      ...fields.map((h) => Buffer.concat([Buffer.from(`${h.name}: `), h.value])),
    ]
      .map((b) => b.toString('latin1'))
      .join('\n');
  }

  /** The same from the structure built while the message arrives in chunks of these sizes. */
  function storedWire(raw: Buffer, limits: MimeLimits, sizes: readonly number[]): string {
    const builder = new StructureBuilder(limits);
    for (let pos = 0, i = 0; pos < raw.length; i++) {
      const n = Math.max(1, sizes[i % sizes.length] ?? 1);
      builder.write(raw.subarray(pos, pos + n));
      pos += n;
    }
    const node = decodeStructure(builder.end() ?? undefined, limits);
    assert.ok(node, 'a structure is kept');
    return [
      serializeValue(envelope(node.headers)),
      serializeValue(bodyStructure(node, true)),
      serializeValue(bodyStructure(node, false)),
      ...node.headers.map((h) => Buffer.concat([Buffer.from(`${h.name}: `), h.value])),
    ]
      .map((b) => b.toString('latin1'))
      .join('\n');
  }

  let nested = 'plain\r\n';
  for (let i = 0; i < 200; i++)
    nested = `Content-Type: multipart/mixed; boundary=b${i}\r\n\r\n--b${i}\r\n${nested}\r\n--b${i}--\r\n`;
  const fixtures: Record<string, Buffer> = {
    simple: crlf(SIMPLE),
    mixed: crlf(MIXED),
    nested: Buffer.from(NESTED),
    'bare LF': Buffer.from(
      'Subject: lf\nContent-Type: multipart/mixed; boundary=zz\n\n--zz\n\nfirst\n--zz\nContent-Type: text/html\n\n<b>2</b>\n--zz--\n',
    ),
    unclosed: crlf(
      'Content-Type: multipart/alternative; boundary="q"\n\n--q\nContent-Type: text/plain\n\na\n--q\nContent-Type: text/plain\n\nb',
    ),
    'no boundary': crlf('Content-Type: multipart/mixed\n\nhello\n'),
    digest: crlf('Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: d1\n\nbody1\n--d--\n'),
    'header only': Buffer.from('Subject: x\r\nFrom: a@b'),
    empty: Buffer.alloc(0),
    'absurd nesting': Buffer.from(nested),
    'encoded rfc822': crlf(
      'Content-Type: multipart/mixed; boundary=e\n\n--e\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeA0KDQp5\n--e--\n',
    ),
  };

  it('says what parsing the whole body says, however the body is cut into chunks', () => {
    for (const [name, raw] of Object.entries(fixtures)) {
      const expected = parsedWire(raw, LIMITS);
      for (const sizes of [[1], [2, 3], [7], [64, 1], [raw.length + 1]])
        assert.equal(storedWire(raw, LIMITS, sizes), expected, `${name} in chunks of ${sizes.join(',')}`);
    }
  });

  it('property: equals parsing on generated MIME, malformed and over the nesting and part limits', () => {
    const piece = fc.constantFrom(
      'Content-Type: multipart/mixed; boundary=a\r\n',
      'Content-Type: multipart/digest; boundary="b"\r\n',
      'Content-Type: multipart/alternative; boundary=ab\r\n',
      'Content-Type: multipart/related\r\n',
      'Content-Type: message/rfc822\r\n',
      'Content-Type: message/global\r\n',
      'Content-Transfer-Encoding: base64\r\n',
      'Content-Type: text/html; charset=utf-8\r\n',
      'Content-Disposition: attachment; filename="f.txt"\r\n',
      'Content-ID: <id@x>\r\n',
      'Content-Language: en, fr\r\n',
      'From: A <a@b.c>\r\n',
      'To: x@y, g: z@w;\r\n',
      'Subject: =?UTF-8?Q?Caf=C3=A9?=\r\n',
      'Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n',
      ' folded\r\n',
      '\r\n',
      '\n',
      '\r',
      'text\r\n',
      'x',
      '-',
      '--a\r\n',
      '--a--\r\n',
      '--a',
      '--a x\r\n',
      '--a\xa0\r\n',
      '--b\r\n',
      '--b--\r\n',
      '--ab\r\n',
      '--ab \t\r\n',
      '--ab--',
    );
    const chunks = fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 4 });
    for (const limits of [LIMITS, { maxMimeDepth: 2, maxMimeParts: 5 }]) {
      fc.assert(
        fc.property(fc.array(piece, { maxLength: 80 }), chunks, (pieces, sizes) => {
          const raw = Buffer.from(pieces.join(''), 'latin1');
          assert.equal(storedWire(raw, limits, sizes), parsedWire(raw, limits));
        }),
        { numRuns: 1500 },
      );
    }
  });

  it('keeps memory bounded: an oversized header or structure is not kept (the body is parsed instead)', () => {
    const huge = Buffer.concat([
      Buffer.from('Subject: '),
      Buffer.alloc(MAX_HEADER_BYTES, 0x61),
      crlf('\n\nx\n'),
    ]);
    assert.equal(structureOf(huge), null);
    const many = ['Content-Type: multipart/mixed; boundary=m', ''];
    for (let i = 0; i < 900; i++)
      many.push('--m', `Content-Type: text/plain; name="${'n'.repeat(80)}${i}"`, '', 'x');
    many.push('--m--', '');
    assert.equal(structureOf(crlf(many.join('\n'))), null);
    // A message of a thousand small parts is kept (and answers as parsing does).
    const small = ['Content-Type: multipart/mixed; boundary=m', ''];
    for (let i = 0; i < 1000; i++) small.push('--m', '', String(i));
    small.push('--m--', '');
    const raw = crlf(small.join('\n'));
    assert.equal(storedWire(raw, LIMITS, [4096]), parsedWire(raw, LIMITS));
  });

  it('is used only under the parser limits it was built with', () => {
    const bytes = structureOf(crlf(NESTED), LIMITS) ?? undefined;
    assert.ok(decodeStructure(bytes, LIMITS));
    assert.equal(decodeStructure(bytes, { maxMimeDepth: 3, maxMimeParts: 1000 }), null);
    assert.equal(decodeStructure(Buffer.from('not a structure'), LIMITS), null);
  });
});
