/**
 * `postino up`'s threads: the pipeline thread yields the CPU while it has a backlog (yieldWhenBusy)
 * and gets its priority back once it is gone. A real worker thread; its niceness read from /proc
 * as `ps` or `top` would show it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { planThreads } from '../../services/core/threads.ts';
import { until } from '../helpers/servers.ts';

/** Niceness of one thread of this process (the 19th field of /proc/self/task/<tid>/stat). */
function niceOf(tid: number): number {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
}

test('the services of postino up over one, two and three threads', () => {
  const all = ['mailbox-store', 'router', 'delivery', 'smtp-ingress', 'imap', 'pop3', 'admin'];
  assert.deepEqual(planThreads(all, 1).groups, [{ name: 'main', services: all }]);
  assert.deepEqual(planThreads(all, 3).groups, [
    { name: 'pipeline', services: ['mailbox-store', 'router', 'delivery'] },
    { name: 'main', services: ['imap', 'pop3', 'admin'] },
    { name: 'ingress', services: ['smtp-ingress'] },
  ]);
  assert.deepEqual(planThreads(all, 2).groups, [
    { name: 'pipeline', services: ['mailbox-store', 'router', 'delivery'] },
    { name: 'main', services: ['smtp-ingress', 'imap', 'pop3', 'admin'] },
  ]);
  // The SMTP door on two threads of its own, which share its ports; on two threads it stays one.
  assert.deepEqual(planThreads(all, 3, 2).groups, [
    { name: 'pipeline', services: ['mailbox-store', 'router', 'delivery'] },
    { name: 'main', services: ['imap', 'pop3', 'admin'] },
    { name: 'ingress', services: ['smtp-ingress'], shared: true },
    { name: 'ingress-2', services: ['smtp-ingress'], shared: true },
  ]);
  assert.deepEqual(planThreads(all, 2, 2).groups, planThreads(all, 2).groups);
  assert.deepEqual(
    planThreads(['imap', 'admin'], 3, 2).groups,
    [{ name: 'main', services: ['imap', 'admin'] }],
    'no SMTP door, no thread for it',
  );
});

test('a thread with a backlog runs nice +10 and gets its priority back once it is gone', async () => {
  // The worker's load is what the test says: a full window of messages in flight, or none.
  const source = `
      const { parentPort } = require('node:worker_threads');
      const { readlinkSync } = require('node:fs');
      let inFlight = 0;
      parentPort.once('message', async ({ url }) => {
        const { yieldWhenBusy } = await import(url);
        const y = yieldWhenBusy(10, () => inFlight, (reason) => parentPort.postMessage({ stuck: reason }));
        if ('failed' in y) return parentPort.postMessage({ failed: y.failed });
        parentPort.postMessage({ tid: Number(readlinkSync('/proc/thread-self').split('/').pop()) });
        parentPort.on('message', (m) => { inFlight = m === 'backlog' ? 32 : m === 'one' ? 1 : inFlight; });
        setInterval(() => {}, 1000);
      });`;
  const worker = new Worker(source, { eval: true });
  const messages: Record<string, unknown>[] = [];
  worker.on('message', (m: Record<string, unknown>) => messages.push(m));
  try {
    worker.postMessage({ url: new URL('../../services/core/threads.ts', import.meta.url).href });
    const tid = await until('the worker thread to start', async () => {
      const m = messages.find((x) => 'tid' in x || 'failed' in x);
      if (m && 'failed' in m) throw new Error(String(m.failed));
      return m ? Number(m.tid) : undefined;
    });
    const base = niceOf(tid);
    // One message at a time is no backlog: the thread keeps its priority.
    worker.postMessage('one');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(niceOf(tid), base);
    worker.postMessage('backlog');
    await until(
      'the thread with a backlog yields',
      async () => niceOf(tid) === Math.min(19, base + 10) || undefined,
    );
    worker.postMessage('one');
    await until('the thread gets its priority back', async () => {
      if (messages.some((m) => 'stuck' in m)) return true; // no privilege to raise it: stays low
      return niceOf(tid) === base || undefined;
    });
    if (process.getuid?.() === 0) {
      assert.equal(niceOf(tid), base, 'root may raise a thread back to its own priority');
    }
  } finally {
    await worker.terminate();
  }
});
