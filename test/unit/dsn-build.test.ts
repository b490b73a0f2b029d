/** DSNs (RFC 3464) as built for failures, delay warnings and success reports, and NOTIFY (RFC 3461). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildDsn, wantsNotice, type BounceSource } from '../../services/core/bounce.ts';

const source: BounceSource = {
  queueId: 'Q1',
  mailFrom: 'alice@example.test',
  messageId: '<m1@example.test>',
  receivedAt: Date.UTC(2026, 0, 2, 3, 4, 5),
  dsnRet: '',
  dsnEnvid: 'ENV-7',
  body: { id: '', size: 0 },
  isBounce: false,
};
const original = Buffer.from('Subject: hello\r\nFrom: alice@example.test\r\n\r\nsecret body\r\n');

function statusPart(text: string): string[] {
  const m = /Content-Type: message\/delivery-status\r\n\r\n([\s\S]*?)\r\n--/.exec(text);
  return (m?.[1] ?? '').split(/\r\n\r\n/);
}

test('a failure DSN has one per-recipient block per failed recipient and returns the message', () => {
  const { text } = buildDsn(
    'mx.example.test',
    source,
    [
      {
        recipient: { address: 'bad@remote.test' },
        status: '5.1.1',
        diagnostic: '550 5.1.1 no such user',
        remoteMta: 'mx.remote.test',
      },
      {
        recipient: { address: 'old@remote.test', dsn: { notify: [], orcpt: 'rfc822;old@remote.test' } },
        status: '4.4.7',
        diagnostic: 'expired',
      },
    ],
    original,
  );
  const s = text.toString('utf8');
  assert.match(s, /^Content-Type: multipart\/report; report-type=delivery-status;/m);
  const [perMessage, first, second] = statusPart(s);
  assert.match(perMessage ?? '', /^Reporting-MTA: dns; mx\.example\.test$/m);
  assert.match(perMessage ?? '', /^Original-Envelope-Id: ENV-7$/m);
  assert.match(
    first ?? '',
    /^Final-Recipient: rfc822; bad@remote\.test\r\nAction: failed\r\nStatus: 5\.1\.1\r\nRemote-MTA: dns; mx\.remote\.test/m,
  );
  assert.match(second ?? '', /^Original-Recipient: rfc822;old@remote\.test$/m);
  assert.match(s, /Content-Type: message\/rfc822/);
  assert.match(s, /secret body/);
});

test('RET=HDRS returns only the headers', () => {
  const { text } = buildDsn(
    'h',
    { ...source, dsnRet: 'HDRS' },
    [{ recipient: { address: 'x@y.test' }, status: '5.0.0', diagnostic: 'no' }],
    original,
  );
  const s = text.toString('utf8');
  assert.match(s, /Content-Type: text\/rfc822-headers/);
  assert.doesNotMatch(s, /secret body/);
});

test('a delay warning says Action: delayed, until when it is retried, and carries headers only', () => {
  const until = Date.UTC(2026, 0, 7);
  const { text } = buildDsn(
    'h',
    source,
    [{ recipient: { address: 'x@y.test' }, status: '4.4.1', diagnostic: 'no answer' }],
    original,
    new Date(),
    'delayed',
    until,
  );
  const s = text.toString('utf8');
  assert.match(s, /^Subject: Delayed Mail/m);
  assert.match(s, /^Action: delayed$/m);
  assert.match(s, /^Will-Retry-Until: Wed, 07 Jan 2026 00:00:00 \+0000$/m);
  assert.doesNotMatch(s, /secret body/);
});

test('NOTIFY is honoured (RFC 3461 4.1)', () => {
  const r = (notify: string[]) => ({ address: 'a@b.test', dsn: { notify, orcpt: '' } });
  assert.equal(wantsNotice(r([]), 'failed'), true);
  assert.equal(wantsNotice(r([]), 'delayed'), true);
  assert.equal(wantsNotice(r([]), 'relayed'), false);
  assert.equal(wantsNotice(r(['NEVER']), 'failed'), false);
  assert.equal(wantsNotice(r(['NEVER']), 'delayed'), false);
  assert.equal(wantsNotice(r(['SUCCESS']), 'relayed'), true);
  assert.equal(wantsNotice(r(['SUCCESS']), 'failed'), false);
  assert.equal(wantsNotice(r(['FAILURE', 'DELAY']), 'delayed'), true);
  assert.equal(wantsNotice(r(['failure']), 'failed'), true);
});
