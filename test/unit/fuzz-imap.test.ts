/**
 * Property-based fuzzing of the IMAP front end: the framer (imap-stream.ts), the command parser
 * (parser.ts), sequence sets, mailbox names (modified UTF-7, LIST wildcards) and the response
 * writer. Arbitrary bytes and grammar-aware mutations: literals `{n}`, `{n+}`, `~{n}` with wrong
 * sizes, unbalanced parentheses and quotes, NULs, bare CR/LF, 8-bit, huge numbers, deep nesting.
 * Every input ends in a command, a BAD (parse error or limit) or, for an oversized
 * non-synchronising literal only, a fatal BYE; nothing throws; output is bounded.
 */
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { ImapStream, type Frame, type Rejection } from '../../services/imap/imap-stream.ts';
import { parseCommand, type ParseResult } from '../../services/imap/parser.ts';
import {
  decodeMailboxName,
  encodeMailboxName,
  listMatcher,
  mailboxNameFromWire,
  normalizeInbox,
} from '../../services/imap/mailbox-name.ts';
import {
  formatSequenceSet,
  inSet,
  parseSequenceSet,
  resolveSequenceNumbers,
  resolveUids,
} from '../../services/imap/sequence-set.ts';
import { serializeValue, type ImapValue } from '../../services/imap/response.ts';
import { MAX_SEARCH_NESTING } from '../../services/imap/limits.ts';
import { LiteralPipe } from '../../services/imap/literal-pipe.ts';
import {
  FUZZ_RUNS,
  FUZZ_SEED,
  ValueReader,
  chunked,
  fuzz,
  iterationReport,
  iterations,
  protocolBytes,
  type ReadValue,
} from '../helpers/fuzz.ts';

const LIMITS = { maxLineBytes: 300, maxLiteralBytes: 120, maxLiterals: 4, maxCommandBytes: 600 };

type Event =
  | { kind: 'frame'; frame: Frame }
  | { kind: 'reject'; rejection: Rejection }
  | { kind: 'continue'; size: number }
  | { kind: 'fatal' };

function run(chunks: readonly Buffer[]): Event[] {
  const events: Event[] = [];
  const stream = new ImapStream(LIMITS, {
    frame: (frame) => events.push({ kind: 'frame', frame }),
    reject: (rejection) => events.push({ kind: 'reject', rejection }),
    continueLiteral: (size) => events.push({ kind: 'continue', size }),
    fatal: () => events.push({ kind: 'fatal' }),
  });
  for (const chunk of chunks) stream.push(chunk);
  return events;
}

function summary(events: readonly Event[]): string[] {
  return events.map((e) => {
    if (e.kind === 'frame') {
      const seg = e.frame.segments.map((s) => s.toString('latin1'));
      const lit = e.frame.literals.map((l) => l.toString('latin1'));
      return `frame ${JSON.stringify(seg)} ${JSON.stringify(lit)}`;
    }
    if (e.kind === 'reject') return `reject ${JSON.stringify(e.rejection)}`;
    if (e.kind === 'continue') return `continue ${e.size}`;
    return 'fatal';
  });
}

/** What the session would answer, checked for shape and size. */
function checkParse(frame: Frame): ParseResult {
  const result = parseCommand(frame);
  if (result.ok) {
    assert.match(result.command.tag, /^[\x21-\x7e]+$/);
    assert.ok(!/[(){%*"\\+]/.test(result.command.tag), `tag ${result.command.tag}`);
  } else {
    assert.ok(result.text.length <= 200, `error text of ${result.text.length} characters`);
    if (result.tag !== null) assert.match(result.tag, /^[\x21-\x7e]+$/);
  }
  return result;
}

// ---- grammar-aware generators ----------------------------------------------------------------

const COMMANDS = [
  'CAPABILITY',
  'NOOP',
  'LOGOUT',
  'LOGIN',
  'AUTHENTICATE',
  'ID',
  'ENABLE',
  'SELECT',
  'EXAMINE',
  'CREATE',
  'DELETE',
  'RENAME',
  'SUBSCRIBE',
  'LIST',
  'LSUB',
  'STATUS',
  'APPEND',
  'GETQUOTAROOT',
  'SETQUOTA',
  'EXPUNGE',
  'SEARCH',
  'SORT',
  'THREAD',
  'FETCH',
  'STORE',
  'COPY',
  'MOVE',
  'UID FETCH',
  'UID SEARCH',
  'UID EXPUNGE',
  'UID STORE',
  'UID BOGUS',
  'IDLE',
  'COMPRESS',
  'XYZZY',
];

const sequenceSetText = fc.oneof(
  fc.constantFrom(
    '1:*',
    '*',
    '1,2,3',
    '0',
    '4294967295',
    '4294967296',
    '1:*,0,4294967296',
    '$',
    ',',
    '1:',
    ':1',
    '1::2',
    '*:*',
  ),
  fc
    .array(
      fc.oneof(
        fc.nat({ max: 20 }).map(String),
        fc.constant('*'),
        fc.bigInt({ min: 0n, max: 10n ** 25n }).map(String),
      ),
      {
        minLength: 1,
        maxLength: 5,
      },
    )
    .chain((parts) =>
      fc
        .array(fc.constantFrom(',', ':'), { minLength: parts.length - 1, maxLength: parts.length - 1 })
        .map((seps) => parts.map((p, i) => p + (seps[i] ?? '')).join('')),
    ),
);

/** A literal announcement and its data, the size right or wrong. */
const literal = fc
  .tuple(
    fc.constantFrom('{', '~{'),
    fc.constantFrom('', '+'),
    fc.string({ maxLength: 30 }),
    fc.oneof(fc.constant(0), fc.integer({ min: -3, max: 3 }), fc.constantFrom(500, 10 ** 12, 10 ** 21)),
  )
  .map(([open, plus, data, skew]) => {
    const size = Math.max(0, Buffer.byteLength(data) + skew);
    return `${open}${size}${plus}}\r\n${data}`;
  });

const token: fc.Arbitrary<string> = fc.letrec<{ token: string; list: string }>((tie) => ({
  token: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constantFrom(
      'INBOX',
      'inbox',
      'NIL',
      'ALL',
      'FLAGS',
      'BODY[]',
      'BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>',
    ),
    fc.constantFrom(
      'BINARY[1]',
      'BINARY.SIZE[1]',
      'BODY[1.2.3.MIME]',
      'BODY[0]',
      'BODY[TEXT]<5.0>',
      'RFC822.SIZE',
      'ENVELOPE',
    ),
    fc.constantFrom(
      '\\Seen',
      '\\',
      '+FLAGS.SILENT',
      '-FLAGS',
      '(\\Deleted)',
      'CHARSET',
      'UTF-8',
      'RETURN',
      '(MIN MAX)',
    ),
    fc.constantFrom(
      'OR',
      'NOT',
      'UID',
      'LARGER',
      '99999999999999999999',
      'SINCE',
      '1-Feb-2024',
      '31-Feb-2024',
    ),
    fc.constantFrom(
      '(CHANGEDSINCE 5 VANISHED)',
      '(UNCHANGEDSINCE 18446744073709551616)',
      '(QRESYNC (1 2 1:5))',
      '(CONDSTORE)',
    ),
    fc.constantFrom(
      '"a b"',
      '"unterminated',
      '"esc\\"aped"',
      '"bad\\escape"',
      '""',
      '"\\',
      '&Jjo-',
      '&-',
      '&AGE',
      '../',
      '%',
      '*',
    ),
    fc.constantFrom(
      '"17-Jul-1996 02:44:25 -0700"',
      '"99-Foo-0000 99:99:99 +9999"',
      '(',
      ')',
      '()',
      '[',
      ']',
      '<',
      '>',
    ),
    fc.constantFrom('\0', '\r', '\n', '\t', '\xff', 'é', '\u{1F600}', 'x'.repeat(400)),
    sequenceSetText,
    literal,
    fc.stringMatching(/^[A-Za-z0-9.]{1,10}$/),
    tie('list'),
  ),
  list: fc.array(tie('token'), { maxLength: 4 }).map((items) => `(${items.join(' ')})`),
})).token;

const commandText = fc
  .tuple(
    fc.oneof(
      fc.constantFrom('a1', 'A.B', 'x', '*', '+', '', '(t', 'tag}', 't'.repeat(70)),
      fc.stringMatching(/^[a-z0-9]{1,6}$/),
    ),
    fc.constantFrom(...COMMANDS),
    fc.array(token, { maxLength: 6 }),
    fc.constantFrom('\r\n', '\n', '', '\r\n\r\n'),
  )
  .map(([tag, command, args, end]) => [tag, command, ...args].join(' ') + end);

// ---- properties ------------------------------------------------------------------------------

describe('fuzz: IMAP framer, parser, sequence sets, mailbox names, response writer', () => {
  after(() => console.log(`# IMAP fuzz iterations\n${iterationReport()}`));

  it('frames any bytes the same way in any chunking, every piece bounded, parse never throws', () => {
    const input = fc.tuple(
      fc.array(
        fc.oneof(
          protocolBytes(120),
          commandText.map((t) => Buffer.from(t, 'utf8')),
        ),
        { maxLength: 6 },
      ),
      fc.array(fc.nat(), { maxLength: 16 }),
    );
    fuzz('imap ImapStream + parseCommand (bytes)', input, ([parts, cuts]) => {
      const data = Buffer.concat(parts);
      const whole = run([data]);
      assert.deepEqual(summary(run(chunked(data, cuts))), summary(whole));
      const fatal = whole.findIndex((e) => e.kind === 'fatal');
      // Nothing is framed after the connection is declared lost.
      if (fatal >= 0) assert.equal(fatal, whole.length - 1);
      for (const e of whole) {
        if (e.kind === 'continue') assert.ok(e.size <= LIMITS.maxLiteralBytes);
        if (e.kind !== 'frame') continue;
        const { segments, literals } = e.frame;
        assert.equal(segments.length, literals.length + 1);
        assert.ok(literals.length <= LIMITS.maxLiterals);
        for (const s of segments) assert.ok(s.length <= LIMITS.maxLineBytes && !s.includes(0x0a));
        for (const l of literals) assert.ok(l.length <= LIMITS.maxLiteralBytes);
        const total = [...segments, ...literals].reduce((n, b) => n + b.length, 0);
        assert.ok(total <= LIMITS.maxCommandBytes + LIMITS.maxLineBytes);
        checkParse(e.frame);
      }
    });
  });

  it('answers grammar-aware commands with a command or a BAD, never an exception', () => {
    fuzz('imap parseCommand (grammar)', commandText, (text) => {
      for (const e of run([Buffer.from(text, 'utf8')])) if (e.kind === 'frame') checkParse(e.frame);
    });
  });

  it('parses well-formed FETCH, STORE, SEARCH and LIST commands', () => {
    const valid = fc.tuple(
      fc.array(
        fc.tuple(
          fc.integer({ min: 1, max: 2 ** 32 - 1 }),
          fc.option(fc.integer({ min: 1, max: 2 ** 32 - 1 })),
        ),
        {
          minLength: 1,
          maxLength: 4,
        },
      ),
      fc.subarray(
        [
          'FLAGS',
          'UID',
          'ENVELOPE',
          'BODYSTRUCTURE',
          'BODY.PEEK[1.2.HEADER.FIELDS (SUBJECT FROM)]<0.100>',
          'BINARY.PEEK[2]',
        ],
        {
          minLength: 1,
        },
      ),
      fc.string({ maxLength: 20, unit: 'binary' }),
    );
    fuzz('imap parseCommand (valid)', valid, ([ranges, items, name]) => {
      const set = ranges.map(([a, b]) => (b === null ? String(a) : `${a}:${b}`)).join(',');
      const fetch = parseCommand({
        segments: [Buffer.from(`t1 UID FETCH ${set} (${items.join(' ')})`)],
        literals: [],
      });
      assert.ok(fetch.ok && fetch.command.name === 'FETCH', JSON.stringify(fetch));
      assert.equal(fetch.command.args.items.length, items.length);
      const store = parseCommand({
        segments: [Buffer.from(`t2 STORE ${set} +FLAGS.SILENT (\\Seen $Junk)`)],
        literals: [],
      });
      assert.ok(store.ok && store.command.name === 'STORE');
      // Any name goes as a literal, exactly as the client sent it.
      const bytes = Buffer.from(name, 'utf8');
      const list = parseCommand({
        segments: [Buffer.from(`t3 LIST "" {${bytes.length}}`), Buffer.alloc(0)],
        literals: [bytes],
      });
      assert.ok(list.ok && list.command.name === 'LIST', JSON.stringify(list));
      assert.deepEqual(list.command.args.patterns, [mailboxNameFromWire(bytes)]);
      const search = parseCommand({
        segments: [Buffer.from(`t4 UID SEARCH OR UID ${set} NOT (SEEN LARGER 5) SUBJECT "x"`)],
        literals: [],
      });
      assert.ok(search.ok && search.command.name === 'SEARCH');
    });
  });

  it('refuses nesting past the limit with a BAD, however deep', () => {
    for (const depth of [1, MAX_SEARCH_NESTING - 1, MAX_SEARCH_NESTING + 5, 10_000, 30_000]) {
      const nested = `${'('.repeat(depth)}ALL${')'.repeat(depth)}`;
      const nots = `${'NOT '.repeat(depth)}ALL`;
      const ors = `${'OR ALL '.repeat(depth)}ALL`;
      for (const key of [nested, nots, ors]) {
        const result = parseCommand({ segments: [Buffer.from(`a SEARCH ${key}`)], literals: [] });
        assert.equal(result.ok, depth <= MAX_SEARCH_NESTING, `depth ${depth}: ${key.slice(0, 20)}`);
      }
      const unbalanced = parseCommand({
        segments: [Buffer.from(`a FETCH 1 ${'('.repeat(depth)}FLAGS`)],
        literals: [],
      });
      assert.equal(unbalanced.ok, false);
    }
  });

  it('sequence sets: any text parses or is refused; sets round-trip and resolve within bounds', () => {
    fuzz('imap parseSequenceSet (text)', fc.oneof(sequenceSetText, fc.string({ maxLength: 30 })), (text) => {
      const set = parseSequenceSet(text);
      if (set === null) return;
      for (const r of set) {
        for (const n of [r.start, r.end])
          assert.ok(n === '*' || (Number.isInteger(n) && n >= 1 && n <= 0xffffffff));
      }
      const seqs = resolveSequenceNumbers(set, 50);
      assert.ok(
        seqs.length <= 50 && seqs.every((n, i) => n >= 1 && n <= 50 && (i === 0 || n > (seqs[i - 1] ?? 0))),
      );
    });
    const numbers = fc.uniqueArray(
      fc.oneof(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 2 ** 32 - 1 })),
      {
        maxLength: 40,
      },
    );
    fuzz('imap formatSequenceSet (round trip)', numbers, (nums) => {
      if (nums.length === 0) return;
      const text = formatSequenceSet([...nums].sort((a, b) => a - b));
      const set = parseSequenceSet(text);
      assert.ok(set, `${text} did not parse`);
      const star = Math.max(...nums);
      for (const n of nums) assert.ok(inSet(set, n, star));
      const uids = [...new Set([...nums, ...nums.map((n) => n + 1)])].sort((a, b) => a - b);
      assert.deepEqual(
        resolveUids(set, uids),
        uids.filter((u) => nums.includes(u)),
      );
    });
  });

  it('mailbox names: modified UTF-7 round-trips any name, decoding never throws', () => {
    const name = fc.oneof(
      fc.string({ maxLength: 30, unit: 'binary' }),
      fc.string({ maxLength: 30 }),
      fc.constantFrom('&', '&-', 'INBOX', 'inbox/Sub', '../x', '~bob', '#shared/x'),
    );
    fuzz('imap mailbox name (round trip)', name, (text) => {
      const wire = encodeMailboxName(text);
      assert.match(wire, /^[\x20-\x7e]*$/, 'modified UTF-7 is printable ASCII');
      assert.equal(decodeMailboxName(wire), text);
      assert.equal(mailboxNameFromWire(Buffer.from(wire, 'latin1')), normalizeInbox(text));
    });
    fuzz('imap mailbox name (wire bytes)', protocolBytes(60), (bytes) => {
      const decoded = mailboxNameFromWire(bytes);
      assert.equal(typeof decoded, 'string');
    });
  });

  it('LIST patterns match as the RFC says, in linear time (no regular-expression backtracking)', () => {
    const alphabet = fc.constantFrom('a', 'b', '/', '*', '%', '.', '?', 'é');
    const pattern = fc.array(alphabet, { maxLength: 8 }).map((a) => a.join(''));
    const folder = fc
      .array(fc.constantFrom('a', 'b', '/', '.', 'é'), { maxLength: 8 })
      .map((a) => a.join(''));
    fuzz('imap listMatcher (reference)', fc.tuple(pattern, folder), ([p, f]) => {
      // The RFC 9051 6.3.9 meaning, by a regular expression (safe at these lengths).
      const source = [...normalizeInbox(p)]
        .map((ch) => (ch === '*' ? '.*' : ch === '%' ? '[^/]*' : ch.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')))
        .join('');
      assert.equal(listMatcher(p)(f), new RegExp(`^${source}$`, 'su').test(f), `${p} vs ${f}`);
    });
    // Patterns that make a backtracking matcher take exponential time finish here at once.
    const evil = listMatcher(`${'*a'.repeat(40)}*b`);
    for (let i = 0; i < 200; i++) assert.equal(evil('a'.repeat(500)), false);
    assert.equal(listMatcher(`${'%a'.repeat(40)}%`)('a'.repeat(40)), true);
  });

  it('a streamed literal reaches storage whole, in order, and tiny chunks pause the socket soon', async () => {
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 1, max: 3000 }), { maxLength: 2500 }), async (sizes) => {
        runs++;
        let resume: (() => void) | null = null;
        const pipe = new LiteralPipe(16 * 1024, () => {
          const r = resume;
          resume = null;
          r?.();
        });
        const expected = Buffer.concat(sizes.map((n, i) => Buffer.alloc(n, i % 251)));
        const reading = (async () => {
          const got: Buffer[] = [];
          for await (const c of pipe) got.push(Buffer.from(c));
          return Buffer.concat(got);
        })();
        let offset = 0;
        for (const n of sizes) {
          const more = pipe.write(expected.subarray(offset, offset + n));
          offset += n;
          // The socket is paused until the reader has caught up (a pause that never ends hangs).
          if (!more) await new Promise<void>((r) => (resume = r));
        }
        pipe.end();
        assert.deepEqual(await reading, expected);
      }),
      { numRuns: Math.max(10, Math.floor(FUZZ_RUNS / 20)), seed: FUZZ_SEED },
    );
    iterations.set('imap LiteralPipe', runs);
    // One-byte chunks with nobody reading: the writer is told to pause long before a megabyte.
    const pipe = new LiteralPipe(1024 * 1024, () => undefined);
    let writes = 1;
    while (pipe.write(Buffer.alloc(1))) writes++;
    assert.ok(writes <= 1024, `${writes} one-byte chunks queued before a pause`);
  });

  it('a literal sent one byte per TCP segment costs its size, not 200 times it', () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    let literal = -1;
    const stream = new ImapStream(
      { maxLineBytes: 64 * 1024, maxLiteralBytes: 2 ** 20, maxLiterals: 4, maxCommandBytes: 2 ** 21 },
      {
        frame: (f) => (literal = f.literals[0]?.length ?? -1),
        reject: () => assert.fail('rejected'),
        continueLiteral: () => undefined,
        fatal: () => assert.fail('fatal'),
      },
    );
    const size = 500_000;
    const before = (gc(), process.memoryUsage());
    stream.push(Buffer.from(`a APPEND INBOX {${size}+}\r\n`));
    // A socket gives each read its own ArrayBuffer: so does this.
    for (let i = 0; i < size - 1; i++) stream.push(Buffer.allocUnsafeSlow(1).fill(0x61));
    const after = (gc(), process.memoryUsage());
    const grown = after.heapUsed + after.arrayBuffers - before.heapUsed - before.arrayBuffers;
    assert.ok(grown < 8 * size, `${(grown / 2 ** 20).toFixed(1)} MiB held for a ${size}-octet literal`);
    stream.push(Buffer.from('a\r\n'));
    assert.equal(literal, size);
  });

  it('the response writer sends any string so that a client reads back the same bytes', () => {
    const value: fc.Arbitrary<ImapValue> = fc.letrec<{ value: ImapValue }>((tie) => ({
      value: fc.oneof(
        { depthSize: 'small' },
        fc.constant(null),
        fc.nat(),
        fc.string({ maxLength: 40, unit: 'binary' }),
        fc.uint8Array({ maxLength: 1100 }).map((b) => Buffer.from(b)),
        fc.array(tie('value'), { maxLength: 4 }),
      ),
    })).value;
    fuzz('imap response writer (round trip)', value, (v) => {
      const wire = serializeValue(v);
      const reader = new ValueReader(wire);
      assert.deepEqual(reader.value(), normal(v));
      reader.end();
    });
  });
});

/** What a client reads back: strings and buffers both as bytes. */
function normal(v: ImapValue): ReadValue {
  if (v === null || typeof v === 'number') return v;
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (Buffer.isBuffer(v)) return v;
  if (Array.isArray(v)) return v.map((item: ImapValue) => normal(item));
  throw new Error('not generated');
}
