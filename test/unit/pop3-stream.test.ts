/**
 * POP3 framing, both directions: input bytes → lines (RFC 1939 section 3, RFC 2449 section 4
 * line limit) and message bodies → dot-stuffed multi-line responses, in every chunking.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DotStuffer, stuffLine } from '../../services/pop3/dot-stuffing.ts';
import { LineFramer, Pop3Stream, type Frame } from '../../services/pop3/pop3-stream.ts';

/** Feeds `input` cut into `size`-byte chunks and collects every frame. */
function frames(input: Buffer, size: number, max = 255): Frame[] {
  const framer = new LineFramer();
  const out: Frame[] = [];
  for (let i = 0; i < input.length; i += size) {
    framer.push(input.subarray(i, i + size));
    for (let f = framer.next(max); f; f = framer.next(max)) out.push(f);
  }
  return out;
}

function show(list: Frame[]): string[] {
  return list.map((f) => (f.kind === 'line' ? `line:${f.line.toString('latin1')}` : `overlong:${f.octets}`));
}

/** Every way of cutting an input: each chunk size from 1 to the whole input. */
function chunkSizes(input: Buffer): number[] {
  return Array.from({ length: input.length }, (_, i) => i + 1);
}

describe('LineFramer', () => {
  it('splits CRLF lines in any chunking', () => {
    const input = Buffer.from('USER alice\r\nPASS a b c\r\n\r\nQUIT\r\n');
    for (const size of chunkSizes(input)) {
      assert.deepEqual(show(frames(input, size)), [
        'line:USER alice',
        'line:PASS a b c',
        'line:',
        'line:QUIT',
      ]);
    }
  });

  it('tolerates a bare LF and keeps a lone CR inside a line', () => {
    const input = Buffer.from('STAT\nLIST 1\r\nNO\rOP\r\n');
    for (const size of chunkSizes(input)) {
      assert.deepEqual(show(frames(input, size)), ['line:STAT', 'line:LIST 1', 'line:NO\rOP']);
    }
  });

  it('holds a partial line until its end arrives', () => {
    const framer = new LineFramer();
    framer.push(Buffer.from('NO'));
    assert.equal(framer.next(255), null);
    framer.push(Buffer.from('OP\r'));
    assert.equal(framer.next(255), null);
    framer.push(Buffer.from('\n'));
    assert.deepEqual(show([framer.next(255) as Frame]), ['line:NOOP']);
  });

  it('accepts exactly 255 octets with CRLF and reports 256 as overlong (RFC 2449 section 4)', () => {
    const fits = Buffer.from(`${'x'.repeat(253)}\r\n`);
    const over = Buffer.from(`${'y'.repeat(254)}\r\n`);
    for (const size of [1, 7, 64, 1000]) {
      const got = frames(Buffer.concat([fits, over, Buffer.from('NOOP\r\n')]), size);
      assert.deepEqual(show(got), [`line:${'x'.repeat(253)}`, 'overlong:256', 'line:NOOP']);
    }
  });

  it('discards a huge line without keeping it, then goes on', () => {
    const huge = Buffer.concat([Buffer.alloc(100_000, 0x41), Buffer.from('\r\nSTAT\r\n')]);
    for (const size of [1, 333, 4096, huge.length]) {
      const framer = new LineFramer();
      const out: Frame[] = [];
      let peak = 0;
      for (let i = 0; i < huge.length; i += size) {
        framer.push(huge.subarray(i, i + size));
        for (let f = framer.next(255); f; f = framer.next(255)) out.push(f);
        peak = Math.max(peak, framer.buffered);
      }
      assert.deepEqual(show(out), ['overlong:100002', 'line:STAT']);
      assert.ok(peak <= Math.max(size, 255), `buffered ${peak} octets with chunks of ${size}`);
    }
  });

  it('applies the limit given when the line is read (SASL responses may be longer)', () => {
    const framer = new LineFramer();
    framer.push(Buffer.from(`AUTH PLAIN\r\n${'Q'.repeat(1000)}\r\n`));
    assert.deepEqual(show([framer.next(255) as Frame]), ['line:AUTH PLAIN']);
    const next = framer.next(2048);
    assert.equal(next?.kind, 'line');
  });

  it('reset() drops what is buffered (STLS)', () => {
    const framer = new LineFramer();
    framer.push(Buffer.from('STLS\r\nCAPA\r\nUSER x'));
    assert.deepEqual(show([framer.next(255) as Frame]), ['line:STLS']);
    framer.reset();
    assert.equal(framer.next(255), null);
    assert.equal(framer.buffered, 0);
  });
});

describe('Pop3Stream', () => {
  it('hands out one frame at a time, in order, and waits for each handler', async () => {
    const seen: string[] = [];
    let running = 0;
    const stream = new Pop3Stream(
      async (frame) => {
        running++;
        assert.equal(running, 1, 'handlers never overlap');
        await new Promise((resolve) => setImmediate(resolve));
        seen.push(frame.kind === 'line' ? frame.line.toString() : 'overlong');
        running--;
      },
      () => 255,
    );
    const input = Buffer.from('CAPA\r\nUSER a\r\nPASS b\r\nSTAT\r\n');
    for (let i = 0; i < input.length; i += 3) stream.write(input.subarray(i, i + 3));
    await new Promise<void>((resolve) => stream.end(resolve));
    assert.deepEqual(seen, ['CAPA', 'USER a', 'PASS b', 'STAT']);
  });

  it('stop() ends frame delivery and drops pipelined input', async () => {
    const seen: string[] = [];
    const stream = new Pop3Stream(
      async (frame) => {
        const line = frame.kind === 'line' ? frame.line.toString() : '';
        seen.push(line);
        if (line === 'STLS') stream.stop();
      },
      () => 255,
    );
    stream.write('NOOP\r\nSTLS\r\nUSER evil\r\n');
    stream.write('PASS evil\r\n');
    await new Promise<void>((resolve) => stream.end(resolve));
    assert.deepEqual(seen, ['NOOP', 'STLS']);
  });
});

/** Encodes `body` cut into `size`-byte chunks. */
function stuff(body: Buffer, size: number, maxBodyLines: number | null = null): string {
  const stuffer = new DotStuffer(maxBodyLines);
  const out: Buffer[] = [];
  for (let i = 0; i < body.length && !stuffer.done; i += size)
    out.push(stuffer.push(body.subarray(i, i + size)));
  out.push(stuffer.end());
  return Buffer.concat(out).toString('latin1');
}

describe('DotStuffer', () => {
  const body = Buffer.from('Subject: dots\r\n\r\n.hidden\r\n..two\r\n.\r\nmid.dle\r\n. \r\nend\r\n');
  const expected = 'Subject: dots\r\n\r\n..hidden\r\n...two\r\n..\r\nmid.dle\r\n.. \r\nend\r\n.\r\n';

  it('stuffs every line that starts with "." (RFC 1939 section 3), in every chunking', () => {
    for (const size of chunkSizes(body)) assert.equal(stuff(body, size), expected, `chunks of ${size}`);
  });

  it('stuffs a "." at the start of the body and at the start of a chunk', () => {
    assert.equal(stuff(Buffer.from('.a\r\n'), 1), '..a\r\n.\r\n');
    const stuffer = new DotStuffer();
    const out = [stuffer.push(Buffer.from('x\r\n')), stuffer.push(Buffer.from('.y\r\n')), stuffer.end()];
    assert.equal(Buffer.concat(out).toString(), 'x\r\n..y\r\n.\r\n');
  });

  it('sends CRLF for bare LF and bare CR, also across chunks', () => {
    const raw = Buffer.from('a\nb\rc\r\n.d\n.e\r.f');
    for (const size of chunkSizes(raw)) {
      assert.equal(stuff(raw, size), 'a\r\nb\r\nc\r\n..d\r\n..e\r\n..f\r\n.\r\n', `chunks of ${size}`);
    }
  });

  it('ends an unterminated last line before the "." line', () => {
    assert.equal(stuff(Buffer.from('no newline'), 4), 'no newline\r\n.\r\n');
    assert.equal(stuff(Buffer.alloc(0), 1), '.\r\n');
    assert.equal(stuff(Buffer.from('trailing CR\r'), 3), 'trailing CR\r\n.\r\n');
  });

  it('keeps 8-bit bytes as they are', () => {
    const raw = Buffer.from([0xc3, 0xa9, 0x0d, 0x0a, 0x2e, 0xff, 0x0d, 0x0a]);
    for (const size of chunkSizes(raw)) {
      assert.deepEqual(
        Buffer.from(stuff(raw, size), 'latin1'),
        Buffer.from([0xc3, 0xa9, 0x0d, 0x0a, 0x2e, 0x2e, 0xff, 0x0d, 0x0a, 0x2e, 0x0d, 0x0a]),
      );
    }
  });

  it('TOP n: header, blank line, n body lines (RFC 1939 section 7)', () => {
    const msg = Buffer.from('A: 1\r\nB: 2\r\n\r\nline1\r\n.line2\r\nline3\r\n');
    for (const size of chunkSizes(msg)) {
      assert.equal(stuff(msg, size, 0), 'A: 1\r\nB: 2\r\n\r\n.\r\n');
      assert.equal(stuff(msg, size, 2), 'A: 1\r\nB: 2\r\n\r\nline1\r\n..line2\r\n.\r\n');
      assert.equal(stuff(msg, size, 99), 'A: 1\r\nB: 2\r\n\r\nline1\r\n..line2\r\nline3\r\n.\r\n');
    }
  });

  it('TOP on a message without a body sends the whole header', () => {
    assert.equal(stuff(Buffer.from('A: 1\r\nB: 2\r\n'), 5, 0), 'A: 1\r\nB: 2\r\n.\r\n');
  });

  it('reports done so the reader stops fetching the body', () => {
    const stuffer = new DotStuffer(1);
    stuffer.push(Buffer.from('H: v\r\n\r\nfirst\r\nsecond'));
    assert.equal(stuffer.done, true);
    assert.equal(stuffer.push(Buffer.from('more\r\n')).length, 0);
  });

  it('stuffLine for in-memory listings', () => {
    assert.equal(stuffLine('1 120'), '1 120\r\n');
    assert.equal(stuffLine('.x'), '..x\r\n');
  });
});
