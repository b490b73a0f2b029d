/**
 * IMAP command parser (services/imap/parser.ts) and its pure helpers: sequence sets and
 * mailbox names. Grammar from RFC 9051 section 9.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Frame } from '../../services/imap/imap-stream.ts';
import {
  decodeMailboxName,
  encodeMailboxName,
  listMatcher,
  mailboxNameFromWire,
} from '../../services/imap/mailbox-name.ts';
import { parseCommand } from '../../services/imap/parser.ts';
import type { Command, CommandName, CommandOf } from '../../services/imap/parser.ts';
import {
  formatSequenceSet,
  parseSequenceSet,
  resolveSequenceNumbers,
  resolveUids,
} from '../../services/imap/sequence-set.ts';

/** A frame from one line; `{n}` markers take the literals in order. */
function frame(line: string, literals: string[] = []): Frame {
  const segments: Buffer[] = [];
  let rest = line;
  for (let i = 0; i < literals.length; i++) {
    const m = /\{\d+\+?\}/.exec(rest);
    assert.ok(m, 'literal marker');
    segments.push(Buffer.from(rest.slice(0, m.index + m[0].length), 'latin1'));
    rest = rest.slice(m.index + m[0].length);
  }
  segments.push(Buffer.from(rest, 'latin1'));
  return { segments, literals: literals.map((l) => Buffer.from(l, 'latin1')) };
}

function parse(line: string, literals: string[] = []): Command {
  const result = parseCommand(frame(line, literals));
  if (!result.ok) assert.fail(`${line}: ${result.text}`);
  return result.command;
}

function parseAs<K extends CommandName>(name: K, line: string, literals: string[] = []): CommandOf<K> {
  const command = parse(line, literals);
  assert.equal(command.name, name);
  return command as CommandOf<K>;
}

function fails(line: string, literals: string[] = []): { tag: string | null; text: string } {
  const result = parseCommand(frame(line, literals));
  if (result.ok) assert.fail(`${line}: parsed as ${result.command.name}`);
  return result;
}

describe('parser: tags, names and strings', () => {
  it('reads tag and name case-insensitively', () => {
    const command = parse('A001 capability');
    assert.equal(command.tag, 'A001');
    assert.equal(command.name, 'CAPABILITY');
    assert.equal(command.uid, false);
  });

  it('reads atoms, quoted strings with escapes and literals', () => {
    assert.deepEqual(parseAs('LOGIN', 'a LOGIN bob pass').args, { username: 'bob', password: 'pass' });
    assert.deepEqual(parseAs('LOGIN', 'a LOGIN "b o\\"b" "p\\\\w"').args, {
      username: 'b o"b',
      password: 'p\\w',
    });
    assert.deepEqual(parseAs('LOGIN', 'a LOGIN {3} {4+}', ['bob', 'p w"']).args, {
      username: 'bob',
      password: 'p w"',
    });
    assert.deepEqual(parseAs('LOGIN', 'a LOGIN "" {6}', ['päss']).args, {
      username: '',
      password: Buffer.from('päss', 'latin1').toString('utf8'),
    });
  });

  it('answers BAD (with the tag when there is one) to malformed commands', () => {
    assert.deepEqual(fails(''), { ok: false, tag: null, text: 'Expected a tag' });
    assert.equal(fails('+tag NOOP').tag, null);
    assert.equal(fails('a1').tag, 'a1');
    assert.match(fails('a1 FROB').text, /Unknown command FROB/);
    assert.match(fails('a1 NOOP extra').text, /end of command/);
    assert.match(fails('a1 LOGIN "unterminated').text, /Unterminated/);
    assert.match(fails('a1 LOGIN "bad\\escape" x').text, /escape/);
    assert.match(fails('a1 LOGIN bob').text, /space/);
    assert.match(fails('a1 UID NOOP').text, /not a command/);
    assert.match(fails('a1 EXPUNGE 1:2').text, /no arguments/);
    assert.match(fails('a1 LOGIN {3} x').text, /literal/i);
  });

  it('never throws, whatever the bytes', () => {
    const alphabet = [
      'a',
      ' ',
      '(',
      ')',
      '[',
      ']',
      '<',
      '>',
      '"',
      '\\',
      '{',
      '}',
      '1',
      '*',
      ':',
      ',',
      '.',
      'BODY',
      'UID',
      'FETCH',
      'SEARCH',
      'NOT',
      'OR',
      '\x00',
      '\xff',
    ];
    for (let i = 0; i < 3000; i++) {
      let line = 't ';
      const length = Math.floor(Math.random() * 30);
      for (let j = 0; j < length; j++) line += alphabet[Math.floor(Math.random() * alphabet.length)];
      const result = parseCommand({ segments: [Buffer.from(line, 'latin1')], literals: [] });
      assert.equal(typeof result.ok, 'boolean');
    }
  });
});

describe('parser: FETCH', () => {
  it('expands the macros', () => {
    const names = (line: string): string[] =>
      parseAs('FETCH', line).args.items.map((i) => (i.kind === 'attribute' ? i.name : i.kind));
    assert.deepEqual(names('a FETCH 1 ALL'), ['FLAGS', 'INTERNALDATE', 'RFC822.SIZE', 'ENVELOPE']);
    assert.deepEqual(names('a FETCH 1 fast'), ['FLAGS', 'INTERNALDATE', 'RFC822.SIZE']);
    assert.deepEqual(names('a FETCH 1 FULL'), ['FLAGS', 'INTERNALDATE', 'RFC822.SIZE', 'ENVELOPE', 'BODY']);
    assert.deepEqual(names('a FETCH 1 uid'), ['UID']);
  });

  it('reads sections, parts and partials', () => {
    const command = parseAs(
      'FETCH',
      'a UID FETCH 1:*,5 (UID BODY[HEADER.FIELDS (From "X-Odd Name")]<0.100> BODY.PEEK[1.2.MIME] body[] BINARY.PEEK[2]<5.10> BINARY.SIZE[1] BODY.PEEK[3.TEXT] BODY[HEADER.FIELDS.NOT (SUBJECT)] RFC822.HEADER BODYSTRUCTURE)',
    );
    assert.equal(command.uid, true);
    assert.deepEqual(command.args.set, [
      { start: 1, end: '*' },
      { start: 5, end: 5 },
    ]);
    assert.deepEqual(command.args.items, [
      { kind: 'attribute', name: 'UID' },
      {
        kind: 'section',
        peek: false,
        binary: false,
        section: { part: [], text: 'HEADER.FIELDS', fields: ['From', 'X-Odd Name'] },
        partial: { start: 0, length: 100 },
      },
      {
        kind: 'section',
        peek: true,
        binary: false,
        section: { part: [1, 2], text: 'MIME', fields: [] },
        partial: null,
      },
      {
        kind: 'section',
        peek: false,
        binary: false,
        section: { part: [], text: null, fields: [] },
        partial: null,
      },
      {
        kind: 'section',
        peek: true,
        binary: true,
        section: { part: [2], text: null, fields: [] },
        partial: { start: 5, length: 10 },
      },
      { kind: 'binarySize', part: [1] },
      {
        kind: 'section',
        peek: true,
        binary: false,
        section: { part: [3], text: 'TEXT', fields: [] },
        partial: null,
      },
      {
        kind: 'section',
        peek: false,
        binary: false,
        section: { part: [], text: 'HEADER.FIELDS.NOT', fields: ['SUBJECT'] },
        partial: null,
      },
      { kind: 'attribute', name: 'RFC822.HEADER' },
      { kind: 'attribute', name: 'BODYSTRUCTURE' },
    ]);
  });

  it('rejects bad fetch items', () => {
    assert.match(fails('a FETCH 1 (FLAGS').text, /space/);
    assert.match(fails('a FETCH 1 BODY[FOO]').text, /Invalid section/);
    assert.match(fails('a FETCH 1 BODY[MIME]').text, /Invalid section/);
    assert.match(fails('a FETCH 1 BODY[0]').text, /Invalid section part/);
    assert.match(fails('a FETCH 1 BODY[]<0.0>').text, /partial length/);
    assert.match(fails('a FETCH 1 BINARY[HEADER]').text, /BINARY/);
    assert.match(fails('a FETCH 1 BODY[HEADER.FIELDS ()]').text, /Empty list/);
    assert.match(fails('a FETCH 1 FROB').text, /Unknown fetch attribute/);
    assert.match(fails('a FETCH 0 FLAGS').text, /sequence set/);
    assert.match(fails('a FETCH 1: FLAGS').text, /sequence set/);
    assert.match(fails('a FETCH () FLAGS').text, /sequence set/);
    assert.match(fails('a FETCH 1 ()').text, /Empty list/);
  });
});

describe('parser: SEARCH', () => {
  it('reads keys, OR, NOT and groups', () => {
    const command = parseAs(
      'SEARCH',
      'a UID SEARCH CHARSET utf-8 1:3,7 UID 10:* OR SEEN NOT (FLAGGED KEYWORD $Work) FROM "Al" SINCE 1-Feb-2024 SENTBEFORE "15-Mar-2024" LARGER 100 HEADER X-Spam yes TEXT {5}',
      ['café'],
    );
    assert.equal(command.uid, true);
    assert.equal(command.args.charset, 'UTF-8');
    assert.deepEqual(command.args.key, {
      op: 'and',
      keys: [
        {
          op: 'seq',
          set: [
            { start: 1, end: 3 },
            { start: 7, end: 7 },
          ],
        },
        { op: 'uid', set: [{ start: 10, end: '*' }] },
        {
          op: 'or',
          left: { op: 'flag', flag: '\\Seen', set: true },
          right: {
            op: 'not',
            key: {
              op: 'and',
              keys: [
                { op: 'flag', flag: '\\Flagged', set: true },
                { op: 'flag', flag: '$Work', set: true },
              ],
            },
          },
        },
        { op: 'header', name: 'FROM', value: 'Al' },
        { op: 'date', field: 'internal', compare: 'since', day: Date.UTC(2024, 1, 1) / 86_400_000 },
        { op: 'date', field: 'sent', compare: 'before', day: Date.UTC(2024, 2, 15) / 86_400_000 },
        { op: 'larger', size: 100 },
        { op: 'header', name: 'X-SPAM', value: 'yes' },
        { op: 'text', value: Buffer.from('café', 'latin1').toString('utf8') },
      ],
    });
  });

  it('reads the flag keys and a lone key', () => {
    assert.deepEqual(parseAs('SEARCH', 'a SEARCH unseen').args, {
      charset: null,
      returns: null,
      key: { op: 'flag', flag: '\\Seen', set: false },
    });
    assert.deepEqual(parseAs('SEARCH', 'a SEARCH (DELETED)').args.key, {
      op: 'flag',
      flag: '\\Deleted',
      set: true,
    });
    assert.deepEqual(parseAs('SEARCH', 'a SEARCH NEW').args.key, { op: 'new' });
  });

  it('rejects bad keys', () => {
    assert.match(fails('a SEARCH').text, /space/);
    assert.match(fails('a SEARCH FROB').text, /Unknown search key/);
    assert.match(fails('a SEARCH SINCE 31-Feb-2024').text, /Invalid date/);
    assert.match(fails('a SEARCH SINCE yesterday').text, /Invalid date/);
    assert.match(fails('a SEARCH OR SEEN').text, /space/);
    assert.match(fails('a SEARCH LARGER x').text, /size/);
    assert.match(fails(`a SEARCH ${'NOT '.repeat(100)}SEEN`).text, /nested too deeply/);
    assert.match(fails(`a SEARCH ${'('.repeat(100)}SEEN${')'.repeat(100)}`).text, /nested too deeply/);
  });
});

describe('parser: other commands', () => {
  it('reads STORE', () => {
    assert.deepEqual(parseAs('STORE', 'a STORE 1:2 +FLAGS.SILENT (\\seen $Junk)').args, {
      set: [{ start: 1, end: 2 }],
      operation: 'add',
      silent: true,
      flags: ['\\Seen', '$Junk'],
      unchangedSince: null,
    });
    assert.deepEqual(parseAs('STORE', 'a UID STORE 5 -flags \\Deleted \\Flagged').args, {
      set: [{ start: 5, end: 5 }],
      operation: 'remove',
      silent: false,
      flags: ['\\Deleted', '\\Flagged'],
      unchangedSince: null,
    });
    assert.deepEqual(parseAs('STORE', 'a STORE * FLAGS ()').args.flags, []);
    assert.match(fails('a STORE 1 FLAGZ (\\Seen)').text, /FLAGS/);
  });

  it('reads APPEND with flags, date and literal', () => {
    const command = parseAs('APPEND', 'a APPEND "Sent Items" (\\Seen) " 7-Feb-1994 21:52:25 -0800" {5}', [
      'hello',
    ]);
    assert.deepEqual(command.args, {
      mailbox: 'Sent Items',
      messages: [{ flags: ['\\Seen'], date: Date.UTC(1994, 1, 8, 5, 52, 25), message: Buffer.from('hello') }],
    });
    assert.deepEqual(parseAs('APPEND', 'a APPEND inbox {2+}', ['hi']).args.mailbox, 'INBOX');
    assert.match(fails('a APPEND INBOX hello').text, /literal/);
    assert.match(fails('a APPEND INBOX "hello"').text, /date-time/);
    assert.match(fails('a APPEND INBOX "7-Feb-1994" {1}', ['x']).text, /date-time/);
  });

  it('reads LIST patterns and mailbox names', () => {
    const basic = { selection: [], returnOptions: [], statusItems: null, extended: false };
    assert.deepEqual(parseAs('LIST', 'a LIST "" *').args, { ...basic, reference: '', patterns: ['*'] });
    assert.deepEqual(parseAs('LIST', 'a LIST Work/ %/2024]').args, {
      ...basic,
      reference: 'Work/',
      patterns: ['%/2024]'],
    });
    assert.deepEqual(parseAs('LIST', 'a LIST "" "*" RETURN (SPECIAL-USE)').args, {
      ...basic,
      reference: '',
      patterns: ['*'],
      returnOptions: ['SPECIAL-USE'],
      extended: true,
    });
    assert.deepEqual(parseAs('SELECT', 'a SELECT &AMk-t&AOk-').args, {
      mailbox: 'Été',
      condstore: false,
      qresync: null,
    });
    assert.deepEqual(parseAs('RENAME', 'a RENAME a b').args, { mailbox: 'a', target: 'b' });
    assert.deepEqual(parseAs('STATUS', 'a STATUS INBOX (MESSAGES uidnext)').args, {
      mailbox: 'INBOX',
      items: ['MESSAGES', 'UIDNEXT'],
    });
    assert.match(fails('a SELECT INBOX (FROB)').text, /Unknown select parameter/);
  });

  it('reads AUTHENTICATE, ID, ENABLE, COPY, MOVE, UID EXPUNGE', () => {
    assert.deepEqual(parseAs('AUTHENTICATE', 'a AUTHENTICATE plain AGJvYgBwdw==').args, {
      mechanism: 'PLAIN',
      initialResponse: 'AGJvYgBwdw==',
    });
    assert.deepEqual(parseAs('AUTHENTICATE', 'a AUTHENTICATE LOGIN').args.initialResponse, null);
    assert.deepEqual(parseAs('ID', 'a ID ("name" "x" "version" NIL)').args.params, [
      ['name', 'x'],
      ['version', null],
    ]);
    assert.deepEqual(parseAs('ID', 'a ID NIL').args.params, null);
    assert.match(fails('a ID ("name")').text, /pairs/);
    assert.deepEqual(parseAs('ENABLE', 'a ENABLE CONDSTORE utf8=accept').args.capabilities, [
      'CONDSTORE',
      'UTF8=ACCEPT',
    ]);
    assert.deepEqual(parseAs('COPY', 'a UID COPY 1:3 Trash').args, {
      set: [{ start: 1, end: 3 }],
      mailbox: 'Trash',
    });
    assert.equal(parseAs('MOVE', 'a MOVE 2 Archive').uid, false);
    assert.deepEqual(parseAs('EXPUNGE', 'a UID EXPUNGE 4:5').args.set, [{ start: 4, end: 5 }]);
    assert.deepEqual(parseAs('EXPUNGE', 'a EXPUNGE').args.set, null);
    assert.match(fails('a UID EXPUNGE').text, /sequence set/);
  });
});

describe('sequence sets', () => {
  it('parses and resolves', () => {
    assert.equal(parseSequenceSet('0'), null);
    assert.equal(parseSequenceSet('1,,2'), null);
    assert.equal(parseSequenceSet('99999999999'), null);
    const set = parseSequenceSet('2,4:7,*:9');
    assert.ok(set);
    assert.deepEqual(resolveSequenceNumbers(set, 10), [2, 4, 5, 6, 7, 9, 10]);
    assert.deepEqual(resolveSequenceNumbers(set, 0), []);
    assert.deepEqual(resolveSequenceNumbers(parseSequenceSet('1:4294967295') ?? [], 3), [1, 2, 3]);
  });

  it('resolves UID sets, `*` being the largest UID even below the range', () => {
    assert.deepEqual(resolveUids(parseSequenceSet('100:*') ?? [], [3, 8, 50]), [50]);
    assert.deepEqual(resolveUids(parseSequenceSet('4:9') ?? [], [3, 8, 50]), [8]);
    assert.deepEqual(resolveUids(parseSequenceSet('1:*') ?? [], []), []);
  });

  it('formats compactly', () => {
    assert.equal(formatSequenceSet([1, 2, 3, 7, 9, 10]), '1:3,7,9:10');
    assert.equal(formatSequenceSet([]), '');
  });
});

describe('mailbox names', () => {
  it('encodes and decodes modified UTF-7 (RFC 3501 5.1.3)', () => {
    const cases: Array<[string, string]> = [
      ['INBOX', 'INBOX'],
      ['Entwürfe', 'Entw&APw-rfe'],
      ['~peter/mail/台北/日本語', '~peter/mail/&U,BTFw-/&ZeVnLIqe-'],
      ['A&B', 'A&-B'],
      ['😀', '&2D3eAA-'],
    ];
    for (const [name, wire] of cases) {
      assert.equal(encodeMailboxName(name), wire);
      assert.equal(decodeMailboxName(wire), name);
    }
    assert.equal(decodeMailboxName('bad&***-'), 'bad&***-');
  });

  it('takes raw UTF-8 and INBOX in any case', () => {
    assert.equal(mailboxNameFromWire(Buffer.from('Entwürfe')), 'Entwürfe');
    assert.equal(mailboxNameFromWire(Buffer.from('inbox')), 'INBOX');
    assert.equal(mailboxNameFromWire(Buffer.from('Inbox/Sub')), 'INBOX/Sub');
  });

  it('matches LIST wildcards', () => {
    const names = ['INBOX', 'INBOX/a', 'Work', 'Work/2024', 'Work/2024/Q1', 'Workshop'];
    assert.deepEqual(names.filter(listMatcher('*')), names);
    assert.deepEqual(names.filter(listMatcher('%')), ['INBOX', 'Work', 'Workshop']);
    assert.deepEqual(names.filter(listMatcher('Work/%')), ['Work/2024']);
    assert.deepEqual(names.filter(listMatcher('Work*')), ['Work', 'Work/2024', 'Work/2024/Q1', 'Workshop']);
    assert.deepEqual(names.filter(listMatcher('inbox')), ['INBOX']);
    assert.deepEqual(names.filter(listMatcher('W.rk')), []);
  });
});

describe('parser: extension syntax', () => {
  it('reads SELECT parameters (RFC 7162 CONDSTORE, QRESYNC)', () => {
    assert.deepEqual(parseAs('SELECT', 'a SELECT INBOX (CONDSTORE)').args, {
      mailbox: 'INBOX',
      condstore: true,
      qresync: null,
    });
    assert.deepEqual(
      parseAs('EXAMINE', 'a EXAMINE INBOX (QRESYNC (67890007 20050715194045000 41,43:211))').args,
      {
        mailbox: 'INBOX',
        condstore: false,
        qresync: {
          uidValidity: 67890007,
          modseq: 20050715194045000,
          knownUids: [
            { start: 41, end: 41 },
            { start: 43, end: 211 },
          ],
          seqMatch: null,
        },
      },
    );
    const withMatch = parseAs('SELECT', 'a SELECT INBOX (QRESYNC (1 2 1:9 (1,5 3,9)))').args.qresync;
    assert.deepEqual(withMatch?.seqMatch, {
      seqs: [
        { start: 1, end: 1 },
        { start: 5, end: 5 },
      ],
      uids: [
        { start: 3, end: 3 },
        { start: 9, end: 9 },
      ],
    });
    assert.match(fails('a SELECT INBOX (QRESYNC (0 1))').text, /UIDVALIDITY/);
    assert.match(fails('a SELECT INBOX (QRESYNC 1)').text, /\(/);
  });

  it('reads FETCH and STORE modifiers, SEARCH RETURN, MODSEQ and $', () => {
    const fetch = parseAs('FETCH', 'a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)').args;
    assert.equal(fetch.changedSince, 12345);
    assert.equal(fetch.vanished, true);
    assert.match(fails('a UID FETCH 1 FLAGS (VANISHED)').text, /CHANGEDSINCE/);
    assert.match(fails('a FETCH 1 FLAGS (FROB 1)').text, /Unknown fetch modifier/);
    assert.equal(parseAs('STORE', 'a STORE 1 (UNCHANGEDSINCE 5) +FLAGS (\\Seen)').args.unchangedSince, 5);
    const search = parseAs(
      'SEARCH',
      'a SEARCH RETURN (MIN COUNT) CHARSET UTF-8 MODSEQ "/flags/\\\\draft" all 620162338',
    ).args;
    assert.deepEqual(search.returns, ['MIN', 'COUNT']);
    assert.equal(search.charset, 'UTF-8');
    assert.deepEqual(search.key, { op: 'modseq', modseq: 620162338 });
    assert.deepEqual(parseAs('SEARCH', 'a SEARCH RETURN () $').args.returns, []);
    assert.equal(parseAs('FETCH', 'a FETCH $ FLAGS').args.set.length, 0);
  });

  it('reads LIST-EXTENDED, MULTIAPPEND with literal8 and UTF8, and QUOTA commands', () => {
    const list = parseAs(
      'LIST',
      'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" %) RETURN (CHILDREN STATUS (MESSAGES))',
    ).args;
    assert.deepEqual(list.selection, ['SUBSCRIBED', 'RECURSIVEMATCH']);
    assert.deepEqual(list.patterns, ['INBOX', '%']);
    assert.deepEqual(list.returnOptions, ['CHILDREN', 'STATUS']);
    assert.deepEqual(list.statusItems, ['MESSAGES']);
    const multi = parseCommand({
      segments: [Buffer.from('a APPEND INBOX ~{2}'), Buffer.from(' UTF8 (~{2+}'), Buffer.from(')')],
      literals: [Buffer.from('hi'), Buffer.from('yo')],
    });
    assert.ok(multi.ok && multi.command.name === 'APPEND');
    assert.deepEqual(
      multi.command.args.messages.map((m) => m.message.toString()),
      ['hi', 'yo'],
    );
    assert.deepEqual(parseAs('GETQUOTAROOT', 'a GETQUOTAROOT inbox').args, { mailbox: 'INBOX' });
    assert.deepEqual(parseAs('SETQUOTA', 'a SETQUOTA "" (STORAGE 512 MESSAGE 10)').args, {
      root: '',
      resources: [
        ['STORAGE', 512],
        ['MESSAGE', 10],
      ],
    });
    assert.match(fails('a SETQUOTA "" (STORAGE)').text, /quota resource/);
  });
});
