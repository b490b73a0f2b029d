/**
 * IMAP framing (services/imap/imap-stream.ts): lines, literals and limits, fed in every chunking.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ImapStream } from '../../services/imap/imap-stream.ts';
import type { Frame, Rejection } from '../../services/imap/imap-stream.ts';

interface Events {
  frames: Array<{ segments: string[]; literals: string[] }>;
  rejects: Rejection[];
  continues: number[];
  fatal: string[];
}

const LIMITS = { maxLineBytes: 100, maxLiteralBytes: 1000, maxLiterals: 3, maxCommandBytes: 2000 };

function framer(limits = LIMITS): { stream: ImapStream; events: Events } {
  const events: Events = { frames: [], rejects: [], continues: [], fatal: [] };
  const stream = new ImapStream(limits, {
    frame: (frame: Frame) =>
      events.frames.push({
        segments: frame.segments.map((s) => s.toString('latin1')),
        literals: frame.literals.map((l) => l.toString('latin1')),
      }),
    reject: (rejection) => events.rejects.push(rejection),
    continueLiteral: (size) => events.continues.push(size),
    fatal: (reason) => events.fatal.push(reason),
  });
  return { stream, events };
}

/** Feeds `input` split at the given chunk size. */
function feed(stream: ImapStream, input: string | Buffer, chunk: number): void {
  const bytes = typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
  for (let i = 0; i < bytes.length; i += chunk) stream.push(bytes.subarray(i, i + chunk));
}

const SESSION =
  'a1 LOGIN {3}\r\nbob {6+}\r\nsecret\r\n' +
  'a2 SELECT INBOX\r\n' +
  'a3 APPEND INBOX (\\Seen) {12}\r\nHello\r\nWorld\r\n' +
  'a4 NOOP\n' +
  'a5 LOGIN "x" {0}\r\n\r\n';

const EXPECTED = [
  { segments: ['a1 LOGIN {3}', ' {6+}', ''], literals: ['bob', 'secret'] },
  { segments: ['a2 SELECT INBOX'], literals: [] },
  { segments: ['a3 APPEND INBOX (\\Seen) {12}', ''], literals: ['Hello\r\nWorld'] },
  { segments: ['a4 NOOP'], literals: [] },
  { segments: ['a5 LOGIN "x" {0}', ''], literals: [''] },
];

describe('ImapStream framing', () => {
  for (const chunk of [1, 2, 3, 5, 7, 13, 64, 4096]) {
    it(`frames commands fed in chunks of ${chunk} bytes`, () => {
      const { stream, events } = framer();
      feed(stream, SESSION, chunk);
      assert.deepEqual(events.frames, EXPECTED);
      // Only the synchronising literals ask for a continuation, LITERAL+ ones do not.
      assert.deepEqual(events.continues, [3, 12, 0]);
      assert.deepEqual(events.rejects, []);
      assert.equal(stream.idle, true);
    });
  }

  it('frames the same commands under random chunkings', () => {
    for (let round = 0; round < 200; round++) {
      const { stream, events } = framer();
      const bytes = Buffer.from(SESSION, 'latin1');
      let pos = 0;
      while (pos < bytes.length) {
        const size = 1 + Math.floor(Math.random() * 9);
        stream.push(bytes.subarray(pos, pos + size));
        pos += size;
      }
      assert.deepEqual(events.frames, EXPECTED);
    }
  });

  it('keeps literal bytes as they are, CR, LF and 8-bit included', () => {
    const { stream, events } = framer();
    const data = Buffer.from([0x0d, 0x0a, 0xff, 0x00, 0x7b, 0x31, 0x7d, 0x0a]);
    feed(stream, Buffer.concat([Buffer.from('t APPEND A {8+}\r\n'), data, Buffer.from(' x\r\n')]), 1);
    assert.equal(events.frames.length, 1);
    assert.deepEqual(events.frames[0]?.literals, [data.toString('latin1')]);
    assert.deepEqual(events.frames[0]?.segments, ['t APPEND A {8+}', ' x']);
  });

  it('rejects an over-long line, skips it and goes on', () => {
    const { stream, events } = framer();
    feed(stream, `tag1 LOGIN ${'x'.repeat(300)}\r\ntag2 NOOP\r\n`, 7);
    assert.deepEqual(events.rejects, [{ reason: 'lineTooLong', tag: 'tag1', command: 'LOGIN' }]);
    assert.deepEqual(events.frames, [{ segments: ['tag2 NOOP'], literals: [] }]);
  });

  it('skips the literals of a rejected line too', () => {
    const { stream, events } = framer();
    feed(stream, `t1 X ${'y'.repeat(200)} {5+}\r\nab\r\nc more\r\nt2 NOOP\r\n`, 3);
    assert.deepEqual(
      events.rejects.map((r) => r.reason),
      ['lineTooLong'],
    );
    assert.deepEqual(events.frames, [{ segments: ['t2 NOOP'], literals: [] }]);
  });

  it('refuses a synchronising literal over the limit without asking for it', () => {
    const { stream, events } = framer();
    feed(stream, 'a APPEND INBOX {5000}\r\nb NOOP\r\n', 4);
    assert.deepEqual(events.continues, []);
    assert.deepEqual(events.rejects, [{ reason: 'literalTooBig', tag: 'a', command: 'APPEND' }]);
    assert.deepEqual(events.frames, [{ segments: ['b NOOP'], literals: [] }]);
  });

  it('gives up on a non-synchronising literal too large to skip', () => {
    const { stream, events } = framer();
    feed(stream, 'a APPEND INBOX {5000+}\r\nxxxx', 4);
    assert.equal(events.fatal.length, 1);
    assert.deepEqual(events.frames, []);
  });

  it('counts literals per command', () => {
    const { stream, events } = framer();
    feed(stream, 'a X {1+}\r\n1 {1+}\r\n2 {1+}\r\n3 {1+}\r\n4\r\nb NOOP\r\n', 2);
    assert.deepEqual(
      events.rejects.map((r) => r.reason),
      ['tooManyLiterals'],
    );
    assert.deepEqual(events.frames, [{ segments: ['b NOOP'], literals: [] }]);
  });

  it('bounds the whole command', () => {
    const { stream, events } = framer({ ...LIMITS, maxCommandBytes: 1500 });
    feed(stream, `a X {900+}\r\n${'z'.repeat(900)} {900}\r\n`, 50);
    assert.deepEqual(
      events.rejects.map((r) => r.reason),
      ['commandTooBig'],
    );
    assert.deepEqual(events.continues, []);
  });

  it('reports no tag when the line has none', () => {
    const { stream, events } = framer();
    feed(stream, `${'('.repeat(150)}\r\n`, 10);
    assert.deepEqual(events.rejects, [{ reason: 'lineTooLong', tag: null, command: null }]);
  });

  it('forgets buffered input on reset (STARTTLS)', () => {
    const { stream, events } = framer();
    stream.push(Buffer.from('a1 NOOP\r\na2 LOG'));
    stream.reset();
    stream.push(Buffer.from('a3 NOOP\r\n'));
    assert.deepEqual(
      events.frames.map((f) => f.segments[0]),
      ['a1 NOOP', 'a3 NOOP'],
    );
  });
});
