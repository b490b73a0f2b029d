/**
 * Property-based fuzzing of the POP3 front end: the line framer (pop3-stream.ts), the command and
 * SASL parsers (parser.ts) and the dot-stuffing of multi-line responses (dot-stuffing.ts), which
 * must round-trip through an independent unstuffer (smtp-ingress's DATA reader) in any chunking.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { LineFramer, type Frame } from '../../services/pop3/pop3-stream.ts';
import { decodeSaslPlain, parseCommand, parseSaslResponse } from '../../services/pop3/parser.ts';
import { DotStuffer } from '../../services/pop3/dot-stuffing.ts';
import { SmtpStream } from '../../services/smtp-ingress/smtp-stream.ts';
import { chunked, fuzz, iterationReport, protocolBytes } from '../helpers/fuzz.ts';

const MAX = 64;

function frame(chunks: readonly Buffer[]): { frames: Frame[]; maxBuffered: number } {
  const framer = new LineFramer();
  const frames: Frame[] = [];
  let maxBuffered = 0;
  for (const chunk of chunks) {
    framer.push(chunk);
    maxBuffered = Math.max(maxBuffered, framer.buffered);
    for (let f = framer.next(MAX); f; f = framer.next(MAX)) frames.push(f);
    maxBuffered = Math.max(maxBuffered, framer.buffered);
  }
  return { frames, maxBuffered };
}

const show = (frames: readonly Frame[]): string[] =>
  frames.map((f) => (f.kind === 'line' ? `line:${f.line.toString('latin1')}` : `overlong:${f.octets}`));

const keyword = fc.constantFrom(
  'USER',
  'PASS',
  'AUTH',
  'CAPA',
  'STLS',
  'QUIT',
  'NOOP',
  'STAT',
  'RSET',
  'LIST',
  'UIDL',
  'RETR',
  'DELE',
  'TOP',
  'APOP',
  'retr',
  'Top',
  '',
);
const argument = fc.oneof(
  fc.constantFrom(
    '1',
    '0',
    '-1',
    '4294967296',
    '99999999999',
    '1e3',
    '0x10',
    '=',
    '*',
    'AGJvYgBzZWNyZXQ=',
    'PLAIN',
    'X'.repeat(300),
  ),
  fc.constantFrom('\0', '\r', '\t', '\xff', 'é', '  ', 'a b'),
  fc.stringMatching(/^[0-9]{1,25}$/),
  fc.string({ maxLength: 12 }),
);
const commandLine = fc
  .tuple(keyword, fc.array(argument, { maxLength: 4 }), fc.constantFrom(' ', '  ', '\t'))
  .map(([k, args, sep]) => [k, ...args].join(sep));

describe('fuzz: POP3 framer, parser and dot-stuffing', () => {
  after(() => console.log(`# POP3 fuzz iterations\n${iterationReport()}`));

  it('frames any bytes the same way in any chunking, never holding more than a line', () => {
    const input = fc.tuple(
      fc.array(
        fc.oneof(
          protocolBytes(100),
          commandLine.map((l) => Buffer.from(`${l}\r\n`, 'utf8')),
        ),
        { maxLength: 8 },
      ),
      fc.array(fc.nat(), { maxLength: 16 }),
    );
    fuzz('pop3 LineFramer', input, ([parts, cuts]) => {
      const data = Buffer.concat(parts);
      const whole = frame([data]);
      const pieces = frame(chunked(data, cuts));
      const bytes = frame([...data].map((b) => Buffer.from([b])));
      assert.deepEqual(show(pieces.frames), show(whole.frames));
      assert.deepEqual(show(bytes.frames), show(whole.frames));
      // Fed a byte at a time, nothing beyond the line limit is ever held.
      assert.ok(bytes.maxBuffered <= MAX, `held ${bytes.maxBuffered}`);
      for (const f of whole.frames) {
        if (f.kind === 'line') assert.ok(f.line.length < MAX && !f.line.includes(0x0a));
        else assert.ok(f.octets > MAX);
      }
    });
  });

  it('answers any line with a command or an error text, never an exception', () => {
    const line = fc.oneof(
      protocolBytes(300),
      commandLine.map((l) => Buffer.from(l, 'utf8')),
    );
    fuzz('pop3 parseCommand', line, (bytes) => {
      const result = parseCommand(bytes);
      if (result.ok) {
        const c = result.command;
        if ('msg' in c && c.msg !== null) assert.ok(Number.isSafeInteger(c.msg) && c.msg >= 0);
        if (c.name === 'TOP') assert.ok(Number.isSafeInteger(c.lines) && c.lines >= 0);
        if (c.name === 'USER') assert.match(c.user, /^[\x21-\x7e]+$/);
        if (c.name === 'PASS') assert.ok(!/[\0-\x1f\x7f]/.test(c.password));
      } else {
        // The error goes into "-ERR text": one short line.
        assert.ok(result.error.length <= 100 && !/[\r\n]/.test(result.error), result.error);
      }
    });
  });

  it('parses any SASL response or PLAIN message without throwing', () => {
    const sasl = fc.oneof(
      protocolBytes(200),
      fc.uint8Array({ maxLength: 120 }).map((b) => Buffer.from(Buffer.from(b).toString('base64'))),
      fc.constantFrom('*', '', '=', 'AA==', 'A', '====').map((s) => Buffer.from(s)),
    );
    fuzz('pop3 SASL (response + PLAIN)', sasl, (line) => {
      const r = parseSaslResponse(line);
      if (r.kind !== 'data') return;
      const plain = decodeSaslPlain(r.data);
      if (plain) assert.ok(plain.authcid.length > 0 && plain.password.length > 0);
    });
  });

  it('dot-stuffs any body so that an unstuffer gets it back, CRLF-normalised, in any chunking', () => {
    const body = fc.oneof(
      protocolBytes(300),
      fc
        .array(fc.constantFrom('.', '..', '.\r\n', '\r\n.\r\n', 'text', '\r', '\n', '\r\n', ' .', '.x'), {
          maxLength: 40,
        })
        .map((p) => Buffer.from(p.join(''))),
    );
    fuzz(
      'pop3 DotStuffer (round trip)',
      fc.tuple(body, fc.array(fc.nat(), { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 8 })),
      ([raw, inCuts, outCuts]) => {
        const stuffer = new DotStuffer();
        const wire = Buffer.concat([...chunked(raw, inCuts).map((c) => stuffer.push(c)), stuffer.end()]);
        // Every line of the response ends in CRLF; only the last one is a lone ".".
        const text = wire.toString('latin1');
        assert.ok(text.endsWith('.\r\n'));
        assert.ok(!/\r(?!\n)|(?<!\r)\n/.test(text), 'bare CR or LF on the wire');
        const lines = text.slice(0, -2).split('\r\n');
        assert.equal(lines.indexOf('.'), lines.length - 1, 'a "." line before the end');
        // The reader of RFC 5321 4.5.2 / RFC 1939 3 (smtp-ingress's DATA mode) undoes it exactly.
        const reader = new SmtpStream(1000, 1 << 20);
        reader.expectData();
        const data: Buffer[] = [];
        let ended = false;
        for (const c of chunked(wire, outCuts)) {
          reader.push(c);
          for (let f = reader.next(); f; f = reader.next()) {
            if (f.kind === 'data') data.push(f.data);
            else if (f.kind === 'dataEnd') ended = true;
          }
        }
        assert.ok(ended, 'the response never ended');
        let expected = raw.toString('latin1').replace(/\r\n|\r|\n/g, '\r\n');
        if (expected !== '' && !expected.endsWith('\r\n')) expected += '\r\n';
        assert.equal(Buffer.concat(data).toString('latin1'), expected);
      },
    );
  });

  it('TOP sends the header, the blank line and at most n body lines', () => {
    const message = fc.tuple(
      fc.array(fc.stringMatching(/^[A-Za-z-]{1,8}: [ -~]{0,10}$/), { maxLength: 5 }),
      fc.array(fc.stringMatching(/^[ -~]{0,10}$/), { maxLength: 10 }),
      fc.nat({ max: 12 }),
      fc.array(fc.nat(), { maxLength: 6 }),
    );
    fuzz('pop3 DotStuffer (TOP)', message, ([header, body, n, cuts]) => {
      const raw = Buffer.from(`${[...header, '', ...body].join('\r\n')}\r\n`);
      const stuffer = new DotStuffer(n);
      const out: Buffer[] = [];
      for (const c of chunked(raw, cuts)) {
        if (stuffer.done) break;
        out.push(stuffer.push(c));
      }
      out.push(stuffer.end());
      const lines = Buffer.concat(out).toString('latin1').slice(0, -2).split('\r\n').slice(0, -1);
      assert.equal(lines.length, header.length + 1 + Math.min(n, body.length));
    });
  });
});
