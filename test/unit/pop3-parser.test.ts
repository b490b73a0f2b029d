/**
 * POP3 command parser (RFC 1939 sections 3-7, RFC 5034 section 4, RFC 4616 section 2), the
 * maildrop snapshot, the loopback rule and the limits module: pure code, no sockets.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { MessageMeta } from '../../services/core/mailbox-api.ts';
import { DEFAULT_LIMITS, resolveLimits } from '../../services/pop3/limits.ts';
import { Maildrop } from '../../services/pop3/maildrop.ts';
import {
  decodeBase64,
  decodeSaslPlain,
  parseCommand,
  parseSaslResponse,
  type ParseResult,
} from '../../services/pop3/parser.ts';
import { isLoopbackAddress } from '../../services/pop3/session.ts';

function parse(line: string | Buffer): ParseResult {
  return parseCommand(typeof line === 'string' ? Buffer.from(line, 'latin1') : line);
}

function command(line: string): unknown {
  const result = parse(line);
  assert.ok(result.ok, `${line}: ${result.ok ? '' : result.error}`);
  return result.command;
}

function failure(line: string | Buffer): { keyword: string | null; error: string } {
  const result = parse(line);
  assert.ok(!result.ok, `${String(line)} should not parse`);
  return { keyword: result.keyword, error: result.error };
}

describe('parseCommand', () => {
  it('parses commands without arguments, keywords case-insensitive (RFC 1939 section 3)', () => {
    for (const name of ['CAPA', 'STLS', 'QUIT', 'NOOP', 'STAT', 'RSET']) {
      assert.deepEqual(command(name), { name });
      assert.deepEqual(command(name.toLowerCase()), { name });
    }
    assert.deepEqual(command('QuIt'), { name: 'QUIT' });
  });

  it('refuses arguments to commands that take none', () => {
    assert.deepEqual(failure('STAT 1'), { keyword: 'STAT', error: 'STAT takes no arguments' });
    assert.equal(failure('QUIT now').keyword, 'QUIT');
  });

  it('LIST and UIDL take an optional message number', () => {
    assert.deepEqual(command('LIST'), { name: 'LIST', msg: null });
    assert.deepEqual(command('LIST 2'), { name: 'LIST', msg: 2 });
    assert.deepEqual(command('uidl 007'), { name: 'UIDL', msg: 7 });
    assert.deepEqual(command('LIST 0'), { name: 'LIST', msg: 0 });
    assert.equal(failure('LIST 1 2').keyword, 'LIST');
    assert.equal(failure('UIDL x').error, 'invalid message number');
    assert.equal(failure('LIST -1').error, 'invalid message number');
    assert.equal(failure('LIST +1').error, 'invalid message number');
    assert.equal(failure('LIST 1.0').error, 'invalid message number');
    assert.equal(failure('LIST 12345678901').error, 'invalid message number');
  });

  it('RETR and DELE take exactly one message number', () => {
    assert.deepEqual(command('RETR 1'), { name: 'RETR', msg: 1 });
    assert.deepEqual(command('dele 42'), { name: 'DELE', msg: 42 });
    assert.equal(failure('RETR').keyword, 'RETR');
    assert.equal(failure('RETR 1 2').keyword, 'RETR');
    assert.equal(failure('DELE one').error, 'invalid message number');
  });

  it('TOP takes a message number and a non-negative line count (RFC 1939 section 7)', () => {
    assert.deepEqual(command('TOP 1 0'), { name: 'TOP', msg: 1, lines: 0 });
    assert.deepEqual(command('TOP 3 10'), { name: 'TOP', msg: 3, lines: 10 });
    assert.deepEqual(command('TOP 1 99999999999999999999'), {
      name: 'TOP',
      msg: 1,
      lines: Number.MAX_SAFE_INTEGER,
    });
    assert.equal(failure('TOP 1').keyword, 'TOP');
    assert.equal(failure('TOP 1 -1').error, 'invalid line count');
    assert.equal(failure('TOP x 1').error, 'invalid message number');
    assert.equal(failure('TOP 1 2 3').keyword, 'TOP');
  });

  it('tolerates runs of spaces and trailing spaces between arguments', () => {
    assert.deepEqual(command('TOP  1   2 '), { name: 'TOP', msg: 1, lines: 2 });
    assert.deepEqual(command('STAT '), { name: 'STAT' });
  });

  it('USER takes one argument', () => {
    assert.deepEqual(command('USER alice@example.org'), { name: 'USER', user: 'alice@example.org' });
    assert.equal(failure('USER').keyword, 'USER');
    assert.equal(failure('USER a b').keyword, 'USER');
  });

  it('PASS takes the rest of the line, spaces included (RFC 1939 section 7)', () => {
    assert.deepEqual(command('PASS  two  spaces '), { name: 'PASS', password: ' two  spaces ' });
    assert.deepEqual(parse(Buffer.from('PASS pässwörd')), {
      ok: true,
      command: { name: 'PASS', password: 'pässwörd' },
    });
    assert.equal(failure('PASS').keyword, 'PASS');
    assert.equal(failure('PASS ').keyword, 'PASS');
    assert.equal(failure(Buffer.from('PASS a\x00b', 'latin1')).error, 'control character in password');
    assert.equal(
      failure(Buffer.from([0x50, 0x41, 0x53, 0x53, 0x20, 0xff])).error,
      'password is not valid UTF-8',
    );
  });

  it('AUTH takes a mechanism and an optional base64 initial response (RFC 5034 section 4)', () => {
    const initial = Buffer.from('\0alice\0secret').toString('base64');
    assert.deepEqual(command('AUTH plain'), { name: 'AUTH', mechanism: 'PLAIN', initialResponse: null });
    assert.deepEqual(command(`AUTH PLAIN ${initial}`), {
      name: 'AUTH',
      mechanism: 'PLAIN',
      initialResponse: Buffer.from('\0alice\0secret'),
    });
    assert.deepEqual(command('AUTH PLAIN ='), {
      name: 'AUTH',
      mechanism: 'PLAIN',
      initialResponse: Buffer.alloc(0),
    });
    assert.deepEqual(command('AUTH X-OTHER'), { name: 'AUTH', mechanism: 'X-OTHER', initialResponse: null });
    assert.equal(failure('AUTH').keyword, 'AUTH');
    assert.equal(failure('AUTH PLAIN abc').error, 'invalid base64 in initial response');
    assert.equal(failure('AUTH PLAIN a b').keyword, 'AUTH');
    assert.equal(failure('AUTH PL@IN').error, 'invalid mechanism name');
  });

  it('refuses unknown, empty and non-ASCII commands without a keyword', () => {
    assert.deepEqual(failure('APOP alice 0123'), { keyword: null, error: 'unknown command' });
    assert.deepEqual(failure('LAST'), { keyword: null, error: 'unknown command' });
    assert.deepEqual(failure('XYZZY'), { keyword: null, error: 'unknown command' });
    assert.deepEqual(failure(''), { keyword: null, error: 'empty command' });
    assert.deepEqual(failure(' STAT'), { keyword: null, error: 'empty command' });
    assert.deepEqual(failure('constructor'), { keyword: null, error: 'unknown command' });
    assert.deepEqual(failure('__proto__'), { keyword: null, error: 'unknown command' });
    assert.deepEqual(failure(Buffer.from('ST\x00T', 'latin1')), { keyword: null, error: 'unknown command' });
    assert.equal(failure(Buffer.from('USER \x01', 'latin1')).error, 'arguments must be printable ASCII');
    assert.equal(failure(Buffer.from('USER caf\xe9', 'latin1')).error, 'arguments must be printable ASCII');
  });
});

describe('SASL', () => {
  it('parses responses: "*" cancels, empty is empty, base64 is strict', () => {
    assert.deepEqual(parseSaslResponse(Buffer.from('*')), { kind: 'cancel' });
    assert.deepEqual(parseSaslResponse(Buffer.from('')), { kind: 'data', data: Buffer.alloc(0) });
    assert.deepEqual(parseSaslResponse(Buffer.from('AGEAYg==')), {
      kind: 'data',
      data: Buffer.from('\0a\0b'),
    });
    assert.equal(parseSaslResponse(Buffer.from('AGEAYg')).kind, 'invalid');
    assert.equal(parseSaslResponse(Buffer.from('AGE AYg==')).kind, 'invalid');
  });

  it('decodes base64 strictly', () => {
    assert.deepEqual(decodeBase64('='), Buffer.alloc(0));
    assert.deepEqual(decodeBase64('YQ=='), Buffer.from('a'));
    assert.equal(decodeBase64('YQ='), null);
    assert.equal(decodeBase64('Y==='), null);
    assert.equal(decodeBase64(''), null);
  });

  it('decodes PLAIN messages (RFC 4616 section 2)', () => {
    assert.deepEqual(decodeSaslPlain(Buffer.from('\0alice\0secret')), {
      authzid: '',
      authcid: 'alice',
      password: 'secret',
    });
    assert.deepEqual(decodeSaslPlain(Buffer.from('admin\0alice\0sé cret')), {
      authzid: 'admin',
      authcid: 'alice',
      password: 'sé cret',
    });
    assert.equal(decodeSaslPlain(Buffer.from('alice\0secret')), null);
    assert.equal(decodeSaslPlain(Buffer.from('\0alice\0secret\0')), null);
    assert.equal(decodeSaslPlain(Buffer.from('\0\0secret')), null);
    assert.equal(decodeSaslPlain(Buffer.from('\0alice\0')), null);
    assert.equal(decodeSaslPlain(Buffer.from([0, 0x61, 0, 0xff])), null);
  });
});

function meta(uid: number, size: number): MessageMeta {
  return { uid, size, flags: [], internalDate: 0, blob: `sha256:${uid}`, modseq: 1 };
}

describe('Maildrop', () => {
  it('numbers messages 1..n and counts what is not deleted (RFC 1939 section 5)', () => {
    const drop = new Maildrop(77, [meta(10, 100), meta(12, 200), meta(15, 300)]);
    assert.equal(drop.count, 3);
    assert.equal(drop.octets, 600);
    const second = drop.get(2);
    assert.ok(second.ok);
    assert.equal(second.entry.uid, 12);
    assert.equal(drop.uniqueId(second.entry), '77.12');
    drop.markDeleted(2);
    assert.equal(drop.count, 2);
    assert.equal(drop.octets, 400);
    assert.deepEqual(drop.get(2), { ok: false, error: 'message 2 already deleted' });
    assert.deepEqual(
      drop.live().map((e) => e.msg),
      [1, 3],
    );
    assert.deepEqual(drop.deletedUids(), [12]);
    drop.reset();
    assert.equal(drop.count, 3);
    assert.deepEqual(drop.deletedUids(), []);
  });

  it('refuses numbers out of range', () => {
    const drop = new Maildrop(1, [meta(1, 10)]);
    for (const msg of [0, 2, 1e10]) {
      assert.deepEqual(drop.get(msg), { ok: false, error: 'no such message, only 1 messages in maildrop' });
    }
  });
});

describe('isLoopbackAddress', () => {
  it('knows 127.0.0.0/8, ::1 and IPv4-mapped loopback', () => {
    for (const a of [
      '127.0.0.1',
      '127.255.0.9',
      '::1',
      '::ffff:127.0.0.1',
      '::FFFF:127.1.2.3',
      '0:0:0:0:0:0:0:1',
    ]) {
      assert.equal(isLoopbackAddress(a), true, a);
    }
    for (const a of [
      '10.0.0.1',
      '128.0.0.1',
      '::ffff:10.0.0.1',
      '::2',
      'fe80::1',
      '',
      undefined,
      'localhost',
    ]) {
      assert.equal(isLoopbackAddress(a), false, String(a));
    }
  });
});

describe('limits', () => {
  it('defaults follow the RFCs', () => {
    assert.equal(DEFAULT_LIMITS.maxCommandOctets, 255);
    assert.equal(DEFAULT_LIMITS.idleTimeoutMs, 600_000);
  });

  it('takes overrides and refuses nonsense', () => {
    assert.equal(resolveLimits({ idleTimeoutMs: 1000 }).idleTimeoutMs, 1000);
    assert.throws(() => resolveLimits({ maxCommandOctets: 0 }), RangeError);
    assert.throws(() => resolveLimits({ maxAuthFailures: 1.5 }), RangeError);
  });
});
