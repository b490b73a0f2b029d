/** smtp-ingress framing and parser, on their own: bytes in odd chunkings, lines to typed commands. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SmtpStream, type Frame } from '../../services/smtp-ingress/smtp-stream.ts';
import { decodeLine, parseCommand, parseMailbox } from '../../services/smtp-ingress/parser.ts';
import { relaxedBody, relaxedHeader } from '../../services/smtp-ingress/dkim-sign.ts';
import { SmtpReply } from '../../services/smtp-ingress/replies.ts';

/** Feeds `input` in pieces of `size` bytes, switching to data mode after a DATA line. */
function frames(input: string, size: number, maxLine = 100): Frame[] {
  const s = new SmtpStream(maxLine, 32);
  const out: Frame[] = [];
  const bytes = Buffer.from(input, 'latin1');
  for (let i = 0; i < bytes.length; i += size) {
    s.push(bytes.subarray(i, i + size));
    for (let f = s.next(); f; f = s.next()) {
      out.push(f);
      if (f.kind === 'line' && f.line.toString() === 'DATA') s.expectData();
      const bdat = f.kind === 'line' ? /^BDAT (\d+)/.exec(f.line.toString()) : null;
      if (bdat) s.expectChunk(Number(bdat[1]));
    }
  }
  return out;
}

/** Joins consecutive data/chunk frames so that results compare across chunkings. */
function summary(fs: Frame[]): string[] {
  const out: string[] = [];
  for (const f of fs) {
    const last = out.length - 1;
    if (f.kind === 'line') out.push(`line:${f.line.toString('latin1')}`);
    else if (f.kind === 'data' || f.kind === 'chunk') {
      if (out[last]?.startsWith(`${f.kind}:`)) out[last] += f.data.toString('latin1');
      else out.push(`${f.kind}:${f.data.toString('latin1')}`);
    } else out.push(f.kind);
  }
  return out;
}

const SIZES = [1, 2, 3, 5, 7, 64, 10_000];

test('RFC 5321 4.1.1.4 + 4.5.2: DATA ends at CRLF.CRLF and is dot-unstuffed, in any chunking', () => {
  const input = 'MAIL FROM:<a@b.test>\r\nDATA\r\nSubject: x\r\n\r\n..starts with a dot\r\n.\r\nQUIT\r\n';
  for (const size of SIZES) {
    assert.deepEqual(summary(frames(input, size)), [
      'line:MAIL FROM:<a@b.test>',
      'line:DATA',
      'data:Subject: x\r\n\r\n.starts with a dot\r\n',
      'dataEnd',
      'line:QUIT',
    ]);
  }
});

test('a bare LF ends a command line but never the body; body line ends become CRLF', () => {
  const input = 'DATA\nline one\n.\nstill body\r\n.\r\nNOOP\n';
  for (const size of SIZES) {
    assert.deepEqual(summary(frames(input, size)), [
      'line:DATA',
      'data:line one\r\n\r\nstill body\r\n',
      'dataEnd',
      'line:NOOP',
    ]);
  }
});

test('RFC 3030 2: BDAT takes exactly its octets, CRLF.CRLF included, then commands again', () => {
  const chunk = 'a\r\n.\r\nb';
  const input = `BDAT ${chunk.length} LAST\r\n${chunk}RSET\r\n`;
  for (const size of SIZES) {
    assert.deepEqual(summary(frames(input, size)), [
      `line:BDAT ${chunk.length} LAST`,
      `chunk:${chunk}`,
      'chunkEnd',
      'line:RSET',
    ]);
  }
});

test('an over-long command line is reported once and skipped; the next line is read', () => {
  const input = `${'A'.repeat(350)}\r\nNOOP\r\n`;
  for (const size of SIZES) {
    assert.deepEqual(summary(frames(input, size)), ['lineTooLong', 'line:NOOP']);
  }
});

test('a long body line passes through in pieces without losing a byte', () => {
  const long = `.${'x'.repeat(100)}`;
  const input = `DATA\r\n${long}\r\n.\r\n`;
  for (const size of SIZES) {
    assert.deepEqual(summary(frames(input, size)), ['line:DATA', `data:${long.slice(1)}\r\n`, 'dataEnd']);
  }
});

test('RFC 5321 4.1.2: mailboxes, and relay tricks refused', () => {
  const ok = (raw: string) => {
    const r = parseMailbox(raw);
    assert.ok(r.ok, raw);
    return r.mailbox;
  };
  assert.equal(ok('Bob@Example.TEST').address, 'Bob@example.test');
  assert.equal(ok('"john doe"@example.test').address, '"john doe"@example.test');
  assert.equal(ok('user@[192.0.2.1]').domain, '[192.0.2.1]');
  const idn = ok('δοκιμή@bücher.test');
  assert.equal(idn.domain, 'xn--bcher-kva.test');
  assert.equal(idn.utf8, true);
  const code = (raw: string) => {
    const r = parseMailbox(raw);
    assert.ok(!r.ok, raw);
    return `${r.reply.code} ${r.reply.enhanced}`;
  };
  assert.equal(code('@relay.test:bob@remote.test'), '553 5.7.1'); // source route
  assert.equal(code('bob%remote.test@example.test'), '553 5.7.1'); // percent hack
  assert.equal(code('remote.test!bob@example.test'), '553 5.7.1'); // bang path
  assert.equal(code('"bob@remote.test"@example.test'), '553 5.7.1'); // quoted trick
  assert.equal(code('bob@remote.test@example.test'), '553 5.1.3');
  assert.equal(code('bob@'), '553 5.1.3');
  assert.equal(code('bob@exa_mple.test'), '553 5.1.3');
  assert.equal(code(`${'a'.repeat(65)}@example.test`), '553 5.1.3');
});

test('RFC 1870, 6152, 6531, 3461: MAIL and RCPT parameters', () => {
  const mail = parseCommand('MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1');
  assert.ok(mail.ok && mail.command.verb === 'MAIL');
  assert.deepEqual(mail.command.params, {
    size: 1000,
    body: '8BITMIME',
    smtputf8: true,
    ret: 'HDRS',
    envid: 'QQ+2B1',
  });
  const nul = parseCommand('mail from:<>');
  assert.ok(nul.ok && nul.command.verb === 'MAIL' && nul.command.from === null);
  const rcpt = parseCommand('RCPT TO:<c@d.test> NOTIFY=success,FAILURE ORCPT=rfc822;c@d.test');
  assert.ok(rcpt.ok && rcpt.command.verb === 'RCPT');
  assert.deepEqual(rcpt.command.params, { notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;c@d.test' });
  const codeOf = (line: string) => {
    const r = parseCommand(line);
    assert.ok(!r.ok, line);
    return `${r.reply.code} ${r.reply.enhanced}`;
  };
  assert.equal(codeOf('MAIL FROM:<a@b.test> FOO=1'), '555 5.5.4');
  assert.equal(codeOf('MAIL FROM:<a@b.test> SIZE=x'), '501 5.5.4');
  assert.equal(codeOf('MAIL FROM:<a@b.test> SIZE=1 SIZE=2'), '501 5.5.4');
  assert.equal(codeOf('RCPT TO:<c@d.test> NOTIFY=NEVER,SUCCESS'), '501 5.5.4');
  assert.equal(codeOf('RCPT TO:<>'), '553 5.1.3');
  assert.equal(codeOf('MAIL FROM:a@b.test'), '501 5.5.4');
  assert.equal(codeOf('BDAT x'), '501 5.5.4');
  assert.equal(codeOf('FROB'), '502 5.5.2');
  const bdat = parseCommand('BDAT 0 LAST');
  assert.ok(bdat.ok && bdat.command.verb === 'BDAT' && bdat.command.last && bdat.command.size === 0);
  const auth = parseCommand('AUTH plain AGFsaWNlAHB3');
  assert.ok(auth.ok && auth.command.verb === 'AUTH' && auth.command.mechanism === 'PLAIN');
});

test('binary garbage and invalid UTF-8 are not commands', () => {
  assert.equal(decodeLine(Buffer.from([0x4d, 0x41, 0x00, 0x49, 0x4c])), null);
  assert.equal(decodeLine(Buffer.from([0xff, 0xfe, 0x41])), null);
  assert.equal(decodeLine(Buffer.from('RCPT TO:<δ@x.test>')), 'RCPT TO:<δ@x.test>');
});

test('RFC 5321 4.2.1: multi-line replies; RFC 2034: enhanced code on every line', () => {
  assert.equal(
    new SmtpReply(250, '', ['h Hello', 'SIZE 10', 'DSN']).format(),
    '250-h Hello\r\n250-SIZE 10\r\n250 DSN\r\n',
  );
  assert.equal(new SmtpReply(550, '5.1.1', ['a', 'b']).format(), '550-5.1.1 a\r\n550 5.1.1 b\r\n');
});

test('RFC 6376 3.4.2 and 3.4.4: relaxed canonicalization (the RFC 6376 3.4.5 example)', () => {
  assert.equal(relaxedHeader('A: X'), 'a:X');
  assert.equal(relaxedHeader('B : Y\t\r\n\tZ  '), 'b:Y Z');
  assert.equal(relaxedBody(Buffer.from(' C \r\nD \t E\r\n\r\n\r\n')).toString(), ' C\r\nD E\r\n');
  assert.equal(relaxedBody(Buffer.from('')).toString(), '');
});
