/**
 * Message tracking on a real nats-server: the events a process records at about the same time go
 * to the EVENTS stream as one batch, `traceMessage` finds a message's events in batches and in
 * single events (as older releases wrote them), and a stage's event recorded twice (a redelivery)
 * is shown once.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startNats, type Proc } from '../helpers/servers.ts';
import { connectNats, provision, publish, STREAMS, SUBJECTS, type Nats } from '../../services/core/nats.ts';
import { recordEvent } from '../../services/core/events.ts';
import { encode, pb } from '../../services/core/codec.ts';
import { traceMessage } from '../../services/admin/trace.ts';

const logger = pino({ level: 'silent' });
let natsProc: Proc;
let nats: Nats;

before(async () => {
  natsProc = await startNats();
  nats = await connectNats(natsProc.url, 'test', logger);
  await provision(nats, 1);
});

after(async () => {
  await nats.nc.close();
  await natsProc.cleanup();
});

const event = (queueId: string, recipient: string) => ({
  queueId,
  messageId: `<${queueId}@example.test>`,
  recipient,
  service: 'router',
  detail: `local mailbox ${recipient}`,
  mailFrom: 'alice@example.test',
});

test('events recorded together are one message on the stream, and each is found by its queue id', async () => {
  const before = (await nats.jsm.streams.info(STREAMS.EVENTS)).state.messages;
  // 300 recipients of three messages routed at once: two batches (at most 256 events in one).
  await Promise.all(
    Array.from({ length: 300 }, (_, i) =>
      recordEvent(nats, logger, 'routed', event(`Q${i % 3}`, `u${i}@example.test`), `Q${i % 3}:u${i}`),
    ),
  );
  const after = (await nats.jsm.streams.info(STREAMS.EVENTS)).state.messages;
  assert.equal(after - before, 2, 'two stream messages for 300 events');
  const q1 = await traceMessage(nats, 'Q1');
  assert.equal(q1.length, 100);
  assert.ok(q1.every((e) => e.queueId === 'Q1' && e.kind === 'routed'));
  // Found by Message-ID as well.
  assert.equal((await traceMessage(nats, '<Q2@example.test>')).length, 100);
});

test('events recorded one per turn of the event loop under load still share batches', async () => {
  const before = (await nats.jsm.streams.info(STREAMS.EVENTS)).state.messages;
  // As a busy stage records them: one message's event per turn, none waiting for the others.
  const recorded: Promise<void>[] = [];
  for (let i = 0; i < 40; i++) {
    recorded.push(recordEvent(nats, logger, 'received', event(`B${i}`, 'bob@example.test'), `B${i}`));
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(recorded);
  const written = (await nats.jsm.streams.info(STREAMS.EVENTS)).state.messages - before;
  assert.ok(written < 20, `40 events in ${written} stream messages`);
  for (const i of [0, 17, 39]) assert.equal((await traceMessage(nats, `B${i}`)).length, 1);
});

test('a stage that records its event again (a redelivery) shows it once; older single events are read', async () => {
  await recordEvent(nats, logger, 'stored', event('Q7', 'bob@example.test'), 'Q7:bob@example.test');
  await recordEvent(nats, logger, 'stored', event('Q7', 'bob@example.test'), 'Q7:bob@example.test');
  // As a release before batches published it: one event on mail.events.<kind>.
  await publish(
    nats,
    SUBJECTS.event('received'),
    encode(pb.MessageEvent, { ...event('Q7', 'bob@example.test'), kind: 'received', at: Date.now() - 1000 }),
    { stream: STREAMS.EVENTS },
  );
  const events = await traceMessage(nats, 'Q7');
  assert.deepEqual(
    events.map((e) => e.kind),
    ['received', 'stored'],
  );
});
