/**
 * Property-based fuzzing of the SMTP front end: the stream framer (smtp-stream.ts) and the command
 * parser (parser.ts), with arbitrary bytes and with grammar-aware mutations of real commands.
 * Every input ends in a typed command or a protocol reply; nothing throws; output is bounded.
 * FUZZ_RUNS and FUZZ_SEED are read by test/helpers/fuzz.ts.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { SmtpStream, type Frame } from '../../services/smtp-ingress/smtp-stream.ts';
import { decodeLine, parseCommand, parseMailbox } from '../../services/smtp-ingress/parser.ts';
import { scanHeaders } from '../../services/smtp-ingress/message.ts';
import { SmtpReply } from '../../services/smtp-ingress/replies.ts';
import { chunked, fuzz, iterationReport, protocolBytes } from '../helpers/fuzz.ts';

const MAX_LINE = 200;
const MAX_DATA_LINE = 64;

/**
 * Drives a stream like the session does: DATA switches to data mode, BDAT n to chunk mode.
 * Returns the frames with consecutive data/chunk frames joined, so chunkings compare equal.
 */
function frames(chunks: readonly Buffer[]): { summary: string[]; maxBuffered: number; raw: Frame[] } {
  const s = new SmtpStream(MAX_LINE, MAX_DATA_LINE);
  const raw: Frame[] = [];
  let maxBuffered = 0;
  // Whatever mode the input leaves the stream in, end it the same way: a body is ended, a chunk
  // filled, so that body octets still gathered for a frame come out.
  const finish = (): Buffer | null =>
    s.mode === 'data' ? Buffer.from('\r\n.\r\n') : s.mode === 'chunk' ? Buffer.alloc(1000, 0x7a) : null;
  const input = [...chunks];
  for (let i = 0; i < input.length || (i < input.length + 3 && finish()); i++) {
    const chunk = input[i] ?? finish();
    if (!chunk) break;
    s.push(chunk);
    for (let f = s.next(); f; f = s.next()) {
      raw.push(f);
      if (f.kind === 'line') {
        const text = f.line.toString('latin1');
        if (/^DATA$/i.test(text)) s.expectData();
        const bdat = /^BDAT (\d{1,3})/i.exec(text);
        if (bdat) s.expectChunk(Number(bdat[1]));
      }
    }
    maxBuffered = Math.max(maxBuffered, s.buffered);
  }
  const summary: string[] = [];
  for (const f of raw) {
    const last = summary.length - 1;
    if (f.kind === 'line') summary.push(`line:${f.line.toString('latin1')}`);
    else if (f.kind === 'data' || f.kind === 'chunk') {
      if (summary[last]?.startsWith(`${f.kind}:`)) summary[last] += f.data.toString('latin1');
      else summary.push(`${f.kind}:${f.data.toString('latin1')}`);
    } else summary.push(f.kind);
  }
  return { summary, maxBuffered, raw };
}

/** Checks a reply is one a client can read: 3 digits, CRLF only between lines, bounded. */
function assertWellFormedReply(reply: SmtpReply, inputLength: number): void {
  assert.ok(reply.code >= 200 && reply.code <= 599, `reply code ${reply.code}`);
  const text = reply.format();
  assert.ok(text.endsWith('\r\n'));
  for (const line of text.slice(0, -2).split('\r\n')) {
    assert.match(line, /^\d{3}[ -]/);
    assert.ok(!/[\r\n\0]/.test(line), `control character in reply ${JSON.stringify(line)}`);
  }
  // A reply may quote the client's address back, never more than the line that carried it.
  assert.ok(Buffer.byteLength(text) <= inputLength + 200, `reply of ${text.length} octets`);
}

/** Parses one line the way the session does; returns the outcome for more checks. */
function parseLine(line: Buffer): ReturnType<typeof parseCommand> | null {
  const text = decodeLine(line);
  if (text === null) return null;
  const parsed = parseCommand(text);
  if (parsed.ok) assert.ok(parsed.command.verb.length > 0);
  else {
    assertWellFormedReply(parsed.reply, line.length);
    assert.ok(parsed.reply.code >= 500, `a parse error is a 5xx, got ${parsed.reply.code}`);
  }
  return parsed;
}

// ---- grammar-aware generators ----------------------------------------------------------------

const verb = fc.constantFrom(
  'EHLO',
  'HELO',
  'MAIL',
  'RCPT',
  'DATA',
  'BDAT',
  'AUTH',
  'VRFY',
  'EXPN',
  'HELP',
  'RSET',
  'NOOP',
  'QUIT',
  'STARTTLS',
  'mail',
  'Rcpt',
  'XCLIENT',
  '',
);

const hostile = fc.constantFrom(
  '\0',
  '\r',
  '\n',
  '\t',
  ' ',
  '  ',
  '"',
  '\\',
  '<',
  '>',
  '@',
  '%',
  '!',
  ':',
  '=',
  '+',
  '[',
  ']',
  '.',
  '..',
  'é',
  '\u{1F600}',
  '\ud800',
  '\xff',
  '4294967296',
  '99999999999999999999',
  '-1',
  'A'.repeat(300),
  'x'.repeat(5000),
);

/** RFC 5322 atext, without `%` and `!` (relay tricks, refused on purpose). */
const atom = fc.stringMatching(/^[A-Za-z0-9#$&'*+/=?^_`{|}~-]{1,12}$/);
const label = fc.stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?$/);
const domain = fc.oneof(
  fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join('.')),
  fc.constantFrom('[192.0.2.1]', '[IPv6:2001:db8::1]', '[300.1.1.1]', '[IPv6:zz]', 'bücher.example', 'xn--'),
);
const localPart = fc.oneof(
  fc.array(atom, { minLength: 1, maxLength: 3 }).map((a) => a.join('.')),
  fc.string({ maxLength: 20 }).map((s) => `"${s.replace(/["\\]/g, '\\$&')}"`),
  fc.constantFrom('"unterminated', '"a\\', 'a..b', '.a', 'a.', '@route', 'a%b', 'host!user', 'ä'),
);
const path = fc.oneof(
  fc.tuple(localPart, domain).map(([l, d]) => `<${l}@${d}>`),
  fc.constantFrom('<>', '<', '>', '<@a,@b:u@c.test>', '<postmaster>', '<<a@b.test>>', 'a@b.test'),
);
const param = fc.oneof(
  fc.constantFrom(
    'SIZE=1000',
    'SIZE=999999999999999',
    'SIZE=1e9',
    'SIZE',
    'BODY=8BITMIME',
    'BODY=BINARYMIME',
    'BODY=9BIT',
    'SMTPUTF8',
    'SMTPUTF8=yes',
    'RET=HDRS',
    'RET=',
    'ENVID=abc+2B',
    'ENVID=+zz',
    'NOTIFY=NEVER,SUCCESS',
    'NOTIFY=SUCCESS,FAILURE,DELAY',
    'ORCPT=rfc822;a@b.test',
    'ORCPT=;',
    'AUTH=<>',
    'X-UNKNOWN=1',
    '=',
  ),
  fc.tuple(fc.stringMatching(/^[A-Z]{1,8}$/), fc.string({ maxLength: 10 })).map(([k, v]) => `${k}=${v}`),
);

/** A command line built from the grammar, then mutated. */
const commandLine = fc
  .tuple(
    verb,
    fc.oneof(
      fc.constant(''),
      fc.tuple(fc.constantFrom('FROM:', 'TO:', 'from: ', 'TO:  ', ''), path).map(([a, b]) => a + b),
      domain,
      fc.stringMatching(/^\d{1,20}( LAST)?$/),
      fc.constantFrom('PLAIN', 'LOGIN AGF1AHNlY3JldA==', 'PLAIN =', 'CRAM-MD5', 'PLAIN ***'),
    ),
    fc.array(param, { maxLength: 4 }),
    fc.array(fc.tuple(fc.nat(), hostile), { maxLength: 3 }),
  )
  .map(([v, arg, params, mutations]) => {
    let line = [v, arg, ...params].filter((p) => p !== '').join(' ');
    for (const [at, text] of mutations) {
      const i = line.length === 0 ? 0 : at % (line.length + 1);
      line = line.slice(0, i) + text + line.slice(i);
    }
    return line;
  });

// ---- properties ------------------------------------------------------------------------------

describe('fuzz: SMTP stream framer and command parser', () => {
  after(() => console.log(`# SMTP fuzz iterations\n${iterationReport()}`));

  it('frames any bytes in any chunking the same way, with bounded lines and buffers', () => {
    const input = fc.tuple(
      fc.array(
        fc.oneof(
          protocolBytes(80),
          commandLine.map((l) => Buffer.from(`${l}\r\n`, 'utf8')),
          fc
            .constantFrom(
              'DATA\r\n',
              '.\r\n',
              '\r\n.\r\n',
              '..\r\n',
              '.\n',
              'BDAT 5 LAST\r\n',
              'BDAT 0\r\n',
              '\r',
              '\n',
            )
            .map((s) => Buffer.from(s)),
          fc.integer({ min: 1, max: 700 }).map((n) => Buffer.alloc(n, 0x41)),
        ),
        { maxLength: 12 },
      ),
      fc.array(fc.nat(), { maxLength: 20 }),
    );
    fuzz('smtp SmtpStream', input, ([parts, cuts]) => {
      // Ends with a line end, so that no chunking leaves a different unfinished line behind.
      const data = Buffer.concat([...parts, Buffer.from('\r\n')]);
      const whole = frames([data]);
      const pieces = frames(chunked(data, cuts));
      const bytes = frames([...data].map((b) => Buffer.from([b])));
      assert.deepEqual(pieces.summary, whole.summary);
      assert.deepEqual(bytes.summary, whole.summary);
      // Body octets fed a byte at a time still come out in few frames (each frame is a buffer the
      // session keeps until the end of the message): no more than whole, plus long-line pieces.
      const bodyFrames = (r: typeof whole): number =>
        r.raw.filter((f) => f.kind === 'data' || f.kind === 'chunk').length;
      const bodyBytes = whole.raw.reduce(
        (n, f) => n + (f.kind === 'data' || f.kind === 'chunk' ? f.data.length : 0),
        0,
      );
      assert.ok(
        bodyFrames(bytes) <= bodyFrames(whole) + Math.ceil(bodyBytes / MAX_DATA_LINE),
        `${bodyFrames(bytes)} frames for ${bodyBytes} body octets`,
      );
      // One byte at a time, nothing is held beyond the longest line the stream may keep.
      assert.ok(bytes.maxBuffered <= Math.max(MAX_LINE, MAX_DATA_LINE) + 2, `held ${bytes.maxBuffered}`);
      for (const f of whole.raw) {
        if (f.kind === 'line') {
          assert.ok(f.line.length <= MAX_LINE);
          assert.ok(!f.line.includes(0x0a));
        }
      }
      // Dot-unstuffing and CRLF normalisation never create data: output at most input + CRs added.
      const out = whole.raw.reduce(
        (n, f) => n + (f.kind === 'data' || f.kind === 'chunk' ? f.data.length : 0),
        0,
      );
      const lfs = data.reduce((n, b) => n + (b === 0x0a ? 1 : 0), 0);
      assert.ok(out <= data.length + lfs + 1005); // + what frames() adds to finish a body
    });
  });

  it('answers any line with a command or a 5xx reply, never an exception', () => {
    fuzz('smtp parseCommand (bytes)', protocolBytes(600), (line) => {
      parseLine(line);
    });
  });

  it('answers grammar-aware mutations of real commands with a command or a 5xx reply', () => {
    fuzz('smtp parseCommand (grammar)', commandLine, (line) => {
      const parsed = parseLine(Buffer.from(line, 'utf8'));
      if (parsed?.ok) {
        const cmd = parsed.command;
        if (cmd.verb === 'MAIL' && cmd.from) assert.ok(Buffer.byteLength(cmd.from.address) <= 254);
        if (cmd.verb === 'RCPT') assert.ok(Buffer.byteLength(cmd.to.address) <= 254);
        if (cmd.verb === 'EHLO' || cmd.verb === 'HELO') assert.ok(cmd.domain.length <= 255);
        if (cmd.verb === 'BDAT') assert.ok(Number.isSafeInteger(cmd.size) && cmd.size >= 0);
        if (cmd.verb === 'MAIL' && cmd.params.size !== undefined)
          assert.ok(Number.isSafeInteger(cmd.params.size));
      }
    });
  });

  it('accepts every well-formed MAIL and RCPT, and an accepted address parses back to itself', () => {
    const valid = fc.tuple(
      fc.array(atom, { minLength: 1, maxLength: 3 }).map((a) => a.join('.')),
      fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join('.')),
      fc.constantFrom('', ' SIZE=1024', ' BODY=8BITMIME', ' SMTPUTF8', ' RET=FULL ENVID=q1'),
    );
    fuzz('smtp parseMailbox (round trip)', valid, ([local, dom, params]) => {
      const address = `${local}@${dom}`;
      const mail = parseCommand(`MAIL FROM:<${address}>${params}`);
      const rcpt = parseCommand(`RCPT TO:<${address}>`);
      if (Buffer.byteLength(address) > 254 || Buffer.byteLength(local) > 64 || dom.length > 255) {
        assert.equal(mail.ok, false);
        return;
      }
      assert.ok(mail.ok && mail.command.verb === 'MAIL', JSON.stringify(mail));
      assert.ok(rcpt.ok && rcpt.command.verb === 'RCPT', JSON.stringify(rcpt));
      assert.equal(mail.command.from?.address, `${local}@${dom.toLowerCase()}`);
      const again = parseMailbox(mail.command.from?.address ?? '');
      assert.ok(again.ok);
      assert.deepEqual(again.mailbox, mail.command.from);
    });
    fuzz('smtp parseMailbox (round trip)', fc.tuple(fc.string({ maxLength: 30 }), domain), ([local, dom]) => {
      // Any quoted local part: accepted or refused, and what is accepted is stable.
      const first = parseMailbox(`"${local.replace(/["\\]/g, '\\$&')}"@${dom}`);
      if (!first.ok) return;
      const again = parseMailbox(first.mailbox.address);
      assert.ok(again.ok, `${first.mailbox.address} did not parse again`);
      assert.equal(again.mailbox.address, first.mailbox.address);
    });
  });

  it('reads the header facts of any message body without throwing', () => {
    const body = fc.oneof(
      protocolBytes(400),
      fc
        .array(
          fc.constantFrom(
            'Received: from x\r\n',
            'received:\r\n',
            ' folded\r\n',
            'Message-ID: <a@b>\r\n',
            'Date: now\r\n',
            '\r\n',
            '\n',
            ':\r\n',
            'no colon\r\n',
          ),
          { maxLength: 80 },
        )
        .map((lines) => Buffer.from(lines.join(''))),
    );
    fuzz('smtp scanHeaders', body, (raw) => {
      const facts = scanHeaders(raw);
      assert.ok(facts.hops >= 0 && facts.hops <= raw.length);
      assert.ok(facts.messageId.length <= raw.length);
    });
  });
});
