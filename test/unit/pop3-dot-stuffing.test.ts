/**
 * The POP3 body encoder (services/pop3/dot-stuffing.ts) against an independent one, on bodies mixing
 * lines already in wire form (sent as they are) with the cases that need work: a "." at a line
 * start, bare CR and bare LF, a CRLF split across chunks, and no final line end. RFC 1939 section 3.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { DotStuffer } from '../../services/pop3/dot-stuffing.ts';

/** CRLF line ends, "." doubled at a line start, a last line closed, then "." CRLF. */
function reference(body: Buffer): string {
  const lines = body.toString('latin1').split(/\r\n|\r|\n/);
  if (lines.at(-1) === '') lines.pop();
  return lines.map((l) => `${l.startsWith('.') ? '.' : ''}${l}\r\n`).join('') + '.\r\n';
}

function encode(body: Buffer, cuts: number[]): string {
  const stuffer = new DotStuffer();
  const out: Buffer[] = [];
  let at = 0;
  for (const cut of [...cuts.filter((c) => c > 0 && c < body.length)].sort((a, b) => a - b)) {
    out.push(stuffer.push(body.subarray(at, cut)));
    at = cut;
  }
  out.push(stuffer.push(body.subarray(at)), stuffer.end());
  return Buffer.concat(out).toString('latin1');
}

const piece = fc.constantFrom('text', '.', '..', 'a.b', '\r\n', '\r', '\n', '\r\n.', ' ', '');

test('the encoder matches the reference in every chunking, wire-form chunks included', () => {
  fc.assert(
    fc.property(
      fc.array(piece, { maxLength: 40 }),
      fc.array(fc.nat({ max: 200 }), { maxLength: 8 }),
      (pieces, cuts) => {
        const body = Buffer.from(pieces.join(''), 'latin1');
        assert.equal(encode(body, cuts), reference(body));
      },
    ),
    { numRuns: 3000 },
  );
});

test('a body already in wire form goes out unchanged, then "." CRLF', () => {
  const body = Buffer.from('Subject: x\r\n\r\nline one\r\nline. two\r\n \r\n');
  for (let size = 1; size <= body.length; size++) {
    const cuts = Array.from({ length: Math.ceil(body.length / size) }, (_, i) => i * size);
    assert.equal(encode(body, cuts), `${body.toString('latin1')}.\r\n`, `chunks of ${size}`);
  }
});

test('a "." after a chunk that ended a line, and a CRLF split across chunks', () => {
  const s = new DotStuffer();
  const out = [
    s.push(Buffer.from('a\r\n')),
    s.push(Buffer.from('.b\r')),
    s.push(Buffer.from('\n.c\r\n')),
    s.push(Buffer.from('d')),
    s.end(),
  ];
  assert.equal(Buffer.concat(out).toString(), 'a\r\n..b\r\n..c\r\nd\r\n.\r\n');
});
