/**
 * A steady, bounded load of mail and the history of what clients were told, then an independent
 * check of that history against what the mailboxes (read over IMAP) and the remote sinks hold.
 *
 * Every message carries a unique `X-Load-Id`. An operation ends in one of three outcomes, as in a
 * Jepsen history: `ok` (the 250 after DATA: the cluster took responsibility), `fail` (a 4xx or 5xx:
 * the cluster refused it, so it must never arrive), or `info` (the connection broke after DATA was
 * sent and before a reply: the client cannot know, so the message may arrive once or not at all).
 * Whatever the outcome, no recipient may ever hold two copies.
 */
import { ImapFlow } from 'imapflow';
import { connect } from 'node:net';
import { Wire } from '../helpers/smtp-wire.ts';
import { PASSWORD, type Cluster } from './harness.ts';

export type Outcome = 'ok' | 'fail' | 'info';

export interface Op {
  id: string;
  /** Recipients the server accepted at RCPT (the 250 covers these). */
  recipients: string[];
  /** Recipients refused at RCPT. */
  refused: string[];
  outcome: Outcome;
  reply: string;
  at: number;
}

export interface LoadOptions {
  /** Messages started per second. */
  rate: number;
  /** Most transactions open at once (a bound on the load whatever the cluster's speed). */
  concurrency?: number;
  /** Prefix of the ids of this run. */
  prefix: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A reply slower than this counts as a broken session. */
const REPLY_TIMEOUT_MS = 30_000;

/** Sends mail through the ingress replicas in turn, as a load balancer would, and records every outcome. */
export class Load {
  readonly ops: Op[] = [];
  readonly #cluster: Cluster;
  readonly #opts: Required<LoadOptions>;
  #seq = 0;
  #stopped = false;
  #running: Promise<void> | null = null;

  constructor(cluster: Cluster, opts: LoadOptions) {
    this.#cluster = cluster;
    this.#opts = { concurrency: 20, ...opts };
  }

  start(): void {
    this.#running = this.#loop();
  }

  /** Stops starting new messages and waits for the open ones to finish. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#running;
  }

  async #loop(): Promise<void> {
    const open = new Set<Promise<void>>();
    const interval = 1000 / this.#opts.rate;
    let next = Date.now();
    while (!this.#stopped) {
      if (open.size < this.#opts.concurrency) {
        const p: Promise<void> = this.#one().finally(() => open.delete(p));
        open.add(p);
      }
      next += interval;
      await sleep(Math.max(0, next - Date.now()));
    }
    await Promise.all(open);
  }

  /** Recipients: a local user, a remote address, or both (a quarter, half, a quarter). */
  #recipients(n: number): string[] {
    const c = this.#cluster;
    const local = c.localUsers[n % c.localUsers.length] ?? '';
    const domain = c.remoteDomains[n % c.remoteDomains.length] ?? '';
    const remote = `rcpt${n % 7}@${domain}`;
    switch (n % 4) {
      case 0:
        return [local, remote];
      case 1:
      case 2:
        return [local];
      default:
        return [remote];
    }
  }

  async #one(): Promise<void> {
    const n = this.#seq++;
    const id = `${this.#opts.prefix}-${n}`;
    const to = this.#recipients(n);
    const ingress = this.#cluster.replicas('smtp-ingress');
    // A client whose session breaks before DATA tries the next replica (a load balancer's health
    // check does the same): nothing was accepted yet, so nothing can arrive.
    let last = 'no ingress replica answered';
    for (let attempt = 0; attempt < ingress.length * 3; attempt++) {
      const replica = ingress[(n + attempt) % ingress.length];
      if (!replica) break;
      const r = await this.#transaction(replica.host, id, to);
      if (r !== null) {
        this.ops.push({ ...r, id, at: Date.now() });
        return;
      }
      last = `no answer from ${replica.host}`;
      await sleep(100);
    }
    this.ops.push({ id, recipients: [], refused: to, outcome: 'fail', reply: last, at: Date.now() });
  }

  /** One SMTP transaction, spoken by hand so that the stage of a failure is known; null = retry elsewhere. */
  async #transaction(host: string, id: string, to: string[]): Promise<Omit<Op, 'id' | 'at'> | null> {
    const sender = this.#cluster.localUsers[0] ?? '';
    const sock = connect({ host, port: this.#cluster.ports.submission });
    const connected = await new Promise<boolean>((resolve) => {
      sock.once('connect', () => resolve(true));
      sock.once('error', () => resolve(false));
    });
    if (!connected) return null;
    const w = new Wire(sock);
    let inData = false;
    const ask = async (line?: string): Promise<string> => {
      let timer: NodeJS.Timeout | undefined;
      try {
        return await Promise.race([
          line === undefined ? w.reply() : w.cmd(line),
          new Promise<string>((_, reject) => {
            timer = setTimeout(() => reject(new Error('timeout')), REPLY_TIMEOUT_MS);
          }),
        ]);
      } finally {
        clearTimeout(timer);
      }
    };
    const refusedAll = (reply: string): Omit<Op, 'id' | 'at'> => ({
      recipients: [],
      refused: to,
      outcome: 'fail',
      reply,
    });
    try {
      const greeting = await ask();
      if (!greeting.startsWith('220')) return refusedAll(greeting);
      const ehlo = await ask('EHLO load.test');
      if (!ehlo.startsWith('250')) return refusedAll(ehlo);
      const auth = await ask(`AUTH PLAIN ${Buffer.from(`\0${sender}\0${PASSWORD}`).toString('base64')}`);
      if (!auth.startsWith('235')) return refusedAll(auth);
      const mail = await ask(`MAIL FROM:<${sender}>`);
      if (!mail.startsWith('250')) return refusedAll(mail);
      const accepted: string[] = [];
      const refused: string[] = [];
      for (const r of to) ((await ask(`RCPT TO:<${r}>`)).startsWith('25') ? accepted : refused).push(r);
      if (accepted.length === 0) return refusedAll('every recipient refused');
      const data = await ask('DATA');
      if (!data.startsWith('354')) return refusedAll(data);
      inData = true;
      const body = [
        `From: ${sender}`,
        `To: ${to.join(', ')}`,
        `Subject: load ${id}`,
        `Message-ID: <${id}@load.test>`,
        `X-Load-Id: ${id}`,
        '',
        `message ${id}`,
        '.',
        '',
      ].join('\r\n');
      const end = await ask(body.slice(0, -2));
      inData = false;
      w.send('QUIT\r\n');
      if (end.startsWith('250')) return { recipients: accepted, refused, outcome: 'ok', reply: end };
      return { recipients: [], refused: to, outcome: 'fail', reply: end };
    } catch (err) {
      // Broken after the message went out and before its reply: the client cannot know.
      if (inData) return { recipients: to, refused: [], outcome: 'info', reply: (err as Error).message };
      return null;
    } finally {
      setTimeout(() => w.end(), 100).unref();
    }
  }
}

/** How many copies of each message every recipient holds, read the way users read them. */
export async function observe(cluster: Cluster): Promise<Map<string, number>> {
  const copies = new Map<string, number>();
  const add = (id: string, rcpt: string) => {
    const k = `${id} ${rcpt.toLowerCase()}`;
    copies.set(k, (copies.get(k) ?? 0) + 1);
  };
  for (const sink of cluster.sinks) for (const r of sink.received) for (const to of r.to) add(r.id, to);
  const imap = cluster.replicas('imap').filter((r) => r.proc.running);
  for (const user of cluster.localUsers) {
    let done = false;
    for (const replica of imap) {
      const client = new ImapFlow({
        host: replica.host,
        port: cluster.ports.imap,
        secure: false,
        doSTARTTLS: false,
        auth: { user, pass: PASSWORD },
        logger: false,
      });
      client.on('error', () => undefined);
      try {
        await client.connect();
        const lock = await client.getMailboxLock('INBOX');
        try {
          for await (const m of client.fetch('1:*', { headers: ['x-load-id'] }, { uid: true })) {
            const id = /X-Load-Id: (\S+)/i.exec(m.headers?.toString('latin1') ?? '')?.[1];
            if (id) add(id, user);
          }
        } finally {
          lock.release();
        }
        await client.logout();
        done = true;
        break;
      } catch {
        client.close();
      }
    }
    if (!done) throw new Error(`no IMAP replica could read ${user}'s INBOX`);
  }
  return copies;
}

export interface Verdict {
  sent: number;
  accepted: number;
  refused: number;
  unknown: number;
  /** Recipients of accepted messages holding their copy. */
  delivered: number;
  lost: string[];
  duplicated: string[];
  /** Copies of refused messages that arrived anyway. */
  refusedDelivered: string[];
}

/** Compares the history with what recipients hold. */
export function check(ops: Op[], copies: Map<string, number>): Verdict {
  const v: Verdict = {
    sent: ops.length,
    accepted: 0,
    refused: 0,
    unknown: 0,
    delivered: 0,
    lost: [],
    duplicated: [],
    refusedDelivered: [],
  };
  const ids = new Set(ops.map((o) => o.id));
  for (const [k, n] of copies) if (n > 1 && ids.has(k.split(' ')[0] ?? '')) v.duplicated.push(`${k} x${n}`);
  for (const op of ops) {
    if (op.outcome === 'ok') v.accepted++;
    if (op.outcome === 'fail') v.refused++;
    if (op.outcome === 'info') v.unknown++;
    for (const r of op.recipients) {
      const n = copies.get(`${op.id} ${r.toLowerCase()}`) ?? 0;
      if (op.outcome === 'ok') {
        if (n === 0) v.lost.push(`${op.id} ${r}`);
        else v.delivered++;
      }
    }
    for (const r of op.refused) {
      if ((copies.get(`${op.id} ${r.toLowerCase()}`) ?? 0) > 0) v.refusedDelivered.push(`${op.id} ${r}`);
    }
  }
  return v;
}

/** Observes until nothing accepted is missing, or the deadline; returns the verdict and the wait. */
export async function settle(
  cluster: Cluster,
  ops: Op[],
  timeoutMs: number,
): Promise<{ verdict: Verdict; waitedMs: number }> {
  const t0 = Date.now();
  for (;;) {
    const verdict = check(ops, await observe(cluster).catch(() => new Map<string, number>()));
    if (verdict.lost.length === 0 || Date.now() - t0 > timeoutMs)
      return { verdict, waitedMs: Date.now() - t0 };
    await sleep(1000);
  }
}
