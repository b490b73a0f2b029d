/**
 * The operator end to end: @kubernetes/client-node talking HTTP to a small local server that speaks
 * the Kubernetes API's wire format (list, `?watch=true` JSON-lines streams with resourceVersions and
 * 410 Gone, PUT with optimistic concurrency, the status subresource, finalizers and deletion,
 * Secrets, coordination.k8s.io Leases), and reconciling into a real Postino admin API on a real
 * nats-server and redis-server. No real Kubernetes API server runs here; see README "Deploying".
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import { startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startServices, testConfig } from '../helpers/postino.ts';
import type { Running } from '../../services/core/runtime.ts';
import { AdminClient } from '../../services/operator/admin-client.ts';
import { Controller } from '../../services/operator/controller.ts';
import { KubeStore } from '../../services/operator/kube.ts';
import { LeaderElector } from '../../services/operator/leader.ts';
import { FINALIZER, getCondition, type Status } from '../../services/operator/crd.ts';

type Json = Record<string, unknown> & { metadata: Record<string, unknown> & { name: string } };

/**
 * The API server's behaviour the operator relies on, over HTTP: one store for every collection,
 * a global resourceVersion, an event history that watches resume from (and can be compacted).
 */
class FakeApiServer {
  #rv = 1;
  readonly objects = new Map<string, Map<string, Json>>();
  #history: { rv: number; collection: string; type: string; object: Json }[] = [];
  #compactedBelow = 0;
  readonly #watchers = new Set<{ collection: string; res: ServerResponse }>();
  readonly server: Server;
  port = 0;
  readonly requests: string[] = [];

  constructor() {
    this.server = createServer((req, res) => void this.#handle(req, res));
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    const a = this.server.address();
    this.port = typeof a === 'object' && a ? a.port : 0;
  }

  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: `http://127.0.0.1:${this.port}`, skipTLSVerify: true }],
      users: [{ name: 'operator', token: 'service-account-token' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'operator', namespace: 'mail' }],
      currentContext: 'fake',
    });
    return kc;
  }

  async close(): Promise<void> {
    this.closeWatches();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  /** Ends every open watch, as an API server does at its timeout or on restart. */
  closeWatches(): void {
    for (const w of this.#watchers) w.res.end();
    this.#watchers.clear();
  }

  /** Forgets the event history (etcd compaction): resuming watches get 410 Gone and must re-list. */
  compact(): void {
    this.#compactedBelow = this.#rv + 1;
    this.#history = [];
  }

  #coll(collection: string): Map<string, Json> {
    let m = this.objects.get(collection);
    if (!m) this.objects.set(collection, (m = new Map()));
    return m;
  }

  #emit(collection: string, type: string, object: Json): void {
    const rv = Number(object.metadata.resourceVersion);
    this.#history.push({ rv, collection, type, object: structuredClone(object) });
    for (const w of this.#watchers)
      if (w.collection === collection) w.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  get(collection: string, name: string): Json | undefined {
    return structuredClone(this.#coll(collection).get(name));
  }

  create(collection: string, obj: Json): Json {
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const stored: Json = {
      ...structuredClone(obj),
      metadata: {
        namespace: 'mail',
        ...obj.metadata,
        uid: randomUUID(),
        resourceVersion: String(++this.#rv),
        generation: 1,
        creationTimestamp: now,
      },
    };
    this.#coll(collection).set(obj.metadata.name, stored);
    this.#emit(collection, 'ADDED', stored);
    return stored;
  }

  /** A user's `kubectl apply` of a new spec (or data): generation moves when the spec changes. */
  update(collection: string, name: string, change: (o: Json) => void): Json {
    const cur = this.#coll(collection).get(name);
    assert.ok(cur, `${collection}/${name} exists`);
    const next = structuredClone(cur);
    change(next);
    return this.#store(collection, name, cur, next, false);
  }

  /** `kubectl delete`: with finalizers the object only gets a deletionTimestamp. */
  delete(collection: string, name: string): void {
    const cur = this.#coll(collection).get(name);
    assert.ok(cur);
    const finalizers = (cur.metadata.finalizers as string[] | undefined) ?? [];
    if (finalizers.length === 0) {
      this.#coll(collection).delete(name);
      this.#emit(collection, 'DELETED', {
        ...cur,
        metadata: { ...cur.metadata, resourceVersion: String(++this.#rv) },
      });
      return;
    }
    const next = structuredClone(cur);
    next.metadata.deletionTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    this.#store(collection, name, cur, next, false);
  }

  #store(collection: string, name: string, cur: Json, next: Json, statusOnly: boolean): Json {
    const spec = (o: Json) => JSON.stringify(o.spec ?? o.data ?? null);
    const stored: Json = statusOnly
      ? { ...cur, status: next.status }
      : { ...next, ...(cur.status !== undefined && 'spec' in cur ? { status: cur.status } : {}) };
    stored.metadata = {
      ...(statusOnly ? cur.metadata : next.metadata),
      uid: cur.metadata.uid,
      creationTimestamp: cur.metadata.creationTimestamp,
      deletionTimestamp:
        cur.metadata.deletionTimestamp ?? (statusOnly ? undefined : next.metadata.deletionTimestamp),
      generation: Number(cur.metadata.generation ?? 1) + (!statusOnly && spec(cur) !== spec(next) ? 1 : 0),
      resourceVersion: String(++this.#rv),
    };
    if (stored.metadata.deletionTimestamp === undefined) delete stored.metadata.deletionTimestamp;
    const finalizers = (stored.metadata.finalizers as string[] | undefined) ?? [];
    if (stored.metadata.deletionTimestamp && finalizers.length === 0) {
      this.#coll(collection).delete(name);
      this.#emit(collection, 'DELETED', stored);
      return stored;
    }
    this.#coll(collection).set(name, stored);
    this.#emit(collection, 'MODIFIED', stored);
    return stored;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    this.requests.push(`${req.method} ${url.pathname}${url.search}`);
    const m = /^(\/apis?\/.+?\/namespaces\/[^/]+\/[^/]+)(?:\/([^/]+))?(?:\/(status))?$/.exec(url.pathname);
    const send = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const failure = (code: number, reason: string, message: string) =>
      send(code, {
        kind: 'Status',
        apiVersion: 'v1',
        metadata: {},
        status: 'Failure',
        message,
        reason,
        code,
      });
    if (req.headers.authorization !== 'Bearer service-account-token')
      return failure(401, 'Unauthorized', 'no token');
    if (!m) return failure(404, 'NotFound', `no route ${url.pathname}`);
    const [, collection = '', name, sub] = m;
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = chunks.length > 0 ? (JSON.parse(Buffer.concat(chunks).toString()) as Json) : undefined;
    const items = this.#coll(collection);

    if (req.method === 'GET' && !name && url.searchParams.get('watch') === 'true') {
      // The watch protocol: a 200 response of newline-delimited {"type","object"} events after
      // the given resourceVersion; an expired resourceVersion gets an ERROR event with 410.
      const from = Number(url.searchParams.get('resourceVersion') ?? '0');
      res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
      res.flushHeaders();
      if (from < this.#compactedBelow) {
        const status = {
          kind: 'Status',
          apiVersion: 'v1',
          status: 'Failure',
          reason: 'Expired',
          code: 410,
          message: 'too old resource version',
        };
        res.end(`${JSON.stringify({ type: 'ERROR', object: status })}\n`);
        return;
      }
      for (const e of this.#history)
        if (e.collection === collection && e.rv > from)
          res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
      const w = { collection, res };
      this.#watchers.add(w);
      req.on('close', () => this.#watchers.delete(w));
      return;
    }
    if (req.method === 'GET' && !name) {
      return send(200, {
        apiVersion: 'v1',
        kind: 'List',
        metadata: { resourceVersion: String(this.#rv) },
        items: [...items.values()],
      });
    }
    if (req.method === 'GET' && name) {
      const o = items.get(name);
      return o ? send(200, o) : failure(404, 'NotFound', `${name} not found`);
    }
    if (req.method === 'POST' && !name && body) {
      if (items.has(body.metadata.name))
        return failure(409, 'AlreadyExists', `${body.metadata.name} already exists`);
      return send(201, this.create(collection, body));
    }
    if (req.method === 'PUT' && name && body) {
      const cur = items.get(name);
      if (!cur) return failure(404, 'NotFound', `${name} not found`);
      if (body.metadata.resourceVersion !== cur.metadata.resourceVersion)
        return failure(
          409,
          'Conflict',
          'the object has been modified; please apply your changes to the latest version and try again',
        );
      return send(200, this.#store(collection, name, cur, body, sub === 'status'));
    }
    return failure(405, 'MethodNotAllowed', `${req.method} ${url.pathname}`);
  }
}

const NS = '/namespaces/mail/';
const DOMAINS = `/apis/mail.postino.io/v1alpha1${NS}maildomains`;
const USERS = `/apis/mail.postino.io/v1alpha1${NS}mailusers`;
const SECRETS = `/api/v1${NS}secrets`;
const LEASES = `/apis/coordination.k8s.io/v1${NS}leases`;
const logger = pino({ level: 'silent' });

const b64 = (s: string) => Buffer.from(s).toString('base64');
const ready = (o: Json | undefined) => getCondition(o as unknown as { status?: Status }, 'Ready');

describe('operator against a Kubernetes API wire format and a running Postino', () => {
  let nats: Proc;
  let redis: Proc;
  let postino: Running;
  let api: FakeApiServer;
  let admin: AdminClient;
  let controller: Controller;

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const { config } = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      ADMIN_TOKEN: 'admin-secret',
    });
    postino = await startServices(config, ['admin']);
    admin = new AdminClient(`http://127.0.0.1:${postino.runtime.http.port}`, 'admin-secret');
    api = new FakeApiServer();
    await api.start();
    const kc = api.kubeConfig();
    const store = new KubeStore(kc);
    controller = new Controller({
      kc,
      store,
      deps: { admin, store },
      namespace: 'mail',
      resyncMs: 60_000,
      logger,
    });
    await controller.start();
  });

  after(async () => {
    await controller?.stop();
    await api?.close();
    await postino?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  test('MailDomain and MailUser become a hosted domain and a mailbox, with Ready status and finalizers', async () => {
    api.create(SECRETS, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'alice-pw' },
      data: { password: b64('first-pass') },
    });
    api.create(DOMAINS, {
      apiVersion: 'mail.postino.io/v1alpha1',
      kind: 'MailDomain',
      metadata: { name: 'example' },
      spec: {
        domain: 'example.test',
        catchAll: 'alice@example.test',
        quota: { defaultUserBytes: 1_000_000 },
        dkim: { selector: 'k1', privateKeySecretRef: { name: 'dkim-key' } },
      },
    });
    api.create(USERS, {
      apiVersion: 'mail.postino.io/v1alpha1',
      kind: 'MailUser',
      metadata: { name: 'alice' },
      spec: {
        address: 'alice@example.test',
        passwordSecretRef: { name: 'alice-pw' },
        aliases: ['info@example.test'],
      },
    });
    const user = await until('MailUser ready', async () => {
      const u = api.get(USERS, 'alice');
      return ready(u)?.status === 'True' ? u : null;
    });
    assert.deepEqual(user.metadata.finalizers, [FINALIZER]);
    assert.equal((user.status as Status).observedGeneration, 1);
    assert.deepEqual(await admin.listUsers('example.test'), ['alice@example.test']);
    assert.deepEqual(await admin.listAliases('example.test'), [
      { alias: 'info@example.test', targets: ['alice@example.test'] },
    ]);
    assert.equal(
      await postino.runtime.directory.authenticate('alice@example.test', 'first-pass'),
      'alice@example.test',
    );
    const domain = await until('domain ready', async () => {
      const d = api.get(DOMAINS, 'example');
      return ready(d)?.status === 'True' ? d : null;
    });
    assert.ok((await admin.listDomains()).includes('example.test'));
    assert.deepEqual(await postino.runtime.directory.quotaOf('alice@example.test'), {
      bytes: 1_000_000,
      messages: 0,
    });
    // The DKIM record to publish is in the status; the key itself stays in the directory.
    const dkim = (domain.status as Status).dkim;
    assert.equal(dkim?.recordName, 'k1._domainkey.example.test');
    assert.match(dkim?.recordValue ?? '', /^v=DKIM1; k=rsa; p=/);
    // Importing a key from a Secret is beyond the admin API: the status says so instead of pretending.
    const supported = getCondition(domain as unknown as { status?: Status }, 'Supported');
    assert.equal(supported?.status, 'False');
    assert.match(supported?.message ?? '', /privateKeySecretRef/);
  });

  test('updates: aliases move, a domain alias appears, the password follows its Secret', async () => {
    api.update(USERS, 'alice', (o) => {
      (o.spec as { aliases: string[] }).aliases = ['sales@example.test'];
    });
    api.update(DOMAINS, 'example', (o) => {
      (o.spec as { aliases: string[] }).aliases = ['example.org'];
    });
    await until('aliases updated', async () => {
      const a = await admin.listAliases('example.test');
      return a.length === 1 && a[0]?.alias === 'sales@example.test';
    });
    await until('domain alias', async () => (await admin.listDomains()).includes('example.org'));
    await until(
      'domain status',
      async () => (api.get(DOMAINS, 'example')?.status as Status | undefined)?.observedGeneration === 2,
    );
    // Secrets are not watched: the change lands at the next resync.
    api.update(SECRETS, 'alice-pw', (o) => {
      o.data = { password: b64('second-pass') };
    });
    controller.resyncAll();
    await until(
      'new password',
      async () =>
        (await postino.runtime.directory.authenticate('alice@example.test', 'second-pass')) !== null,
    );
    assert.equal(await postino.runtime.directory.authenticate('alice@example.test', 'first-pass'), null);
  });

  test('a missing Secret and a domain that is not hosted are reported, then fixed by themselves', async () => {
    api.create(USERS, {
      apiVersion: 'mail.postino.io/v1alpha1',
      kind: 'MailUser',
      metadata: { name: 'bob' },
      spec: { address: 'bob@other.test', passwordSecretRef: { name: 'bob-pw', key: 'pw' } },
    });
    await until('SecretNotFound', async () => ready(api.get(USERS, 'bob'))?.reason === 'SecretNotFound');
    api.create(SECRETS, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'bob-pw' },
      data: { pw: b64('bob-pass') },
    });
    controller.resyncAll();
    await until('DomainNotFound', async () => ready(api.get(USERS, 'bob'))?.reason === 'DomainNotFound');
    api.create(DOMAINS, {
      apiVersion: 'mail.postino.io/v1alpha1',
      kind: 'MailDomain',
      metadata: { name: 'other' },
      spec: { domain: 'other.test' },
    });
    await until('domain ready', async () => ready(api.get(DOMAINS, 'other'))?.status === 'True');
    controller.resyncAll();
    await until('bob ready', async () => ready(api.get(USERS, 'bob'))?.status === 'True');
    assert.deepEqual(await admin.listUsers('other.test'), ['bob@other.test']);
  });

  test('deletion: the entries go, then the finalizer; a domain waits for its users', async () => {
    api.delete(DOMAINS, 'other');
    await until('DomainNotEmpty', async () => ready(api.get(DOMAINS, 'other'))?.reason === 'DomainNotEmpty');
    assert.ok((await admin.listDomains()).includes('other.test'));
    api.delete(USERS, 'bob');
    await until('bob gone', async () => api.get(USERS, 'bob') === undefined);
    assert.deepEqual(await admin.listUsers('other.test'), []);
    controller.resyncAll();
    await until('domain gone', async () => api.get(DOMAINS, 'other') === undefined);
    assert.ok(!(await admin.listDomains()).includes('other.test'));
  });

  test('the watch survives the server closing it and compacting its history (410 Gone, re-list)', async () => {
    const lists = () => api.requests.filter((r) => r === `GET ${DOMAINS}`).length;
    const before = lists();
    api.compact();
    api.closeWatches();
    api.create(DOMAINS, {
      apiVersion: 'mail.postino.io/v1alpha1',
      kind: 'MailDomain',
      metadata: { name: 'late' },
      spec: { domain: 'late.test' },
    });
    await until('late domain hosted', async () => (await admin.listDomains()).includes('late.test'));
    assert.ok(api.requests.some((r) => r.startsWith(`GET ${DOMAINS}?watch=true`)));
    await until('the informer lists again after 410 Gone', async () => lists() > before);
  });

  test('an object the directory already has is adopted without error (a restart half way)', async () => {
    // As if a previous leader created the user and died before writing the status.
    await admin.addDomain('late.test');
    await admin.addUser('carol@late.test', 'stale-pass');
    api.create(SECRETS, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'carol-pw' },
      data: { password: b64('carol-pass') },
    });
    api.create(USERS, {
      apiVersion: 'mail.postino.io/v1alpha1',
      kind: 'MailUser',
      metadata: { name: 'carol', finalizers: [FINALIZER] },
      spec: { address: 'carol@late.test', passwordSecretRef: { name: 'carol-pw' } },
    });
    await until('carol ready', async () => ready(api.get(USERS, 'carol'))?.status === 'True');
    assert.equal(
      await postino.runtime.directory.authenticate('carol@late.test', 'carol-pass'),
      'carol@late.test',
    );
  });

  test('leader election: one of two replicas reconciles; the other takes over when it stops', async () => {
    await controller.stop();
    const kc = api.kubeConfig();
    const make = (identity: string) => {
      const store = new KubeStore(kc);
      const c = new Controller({
        kc,
        store,
        deps: { admin, store },
        namespace: 'mail',
        resyncMs: 60_000,
        logger,
      });
      const e = new LeaderElector(
        kc,
        {
          namespace: 'mail',
          name: 'postino-operator',
          identity,
          leaseMs: 3_000,
          renewMs: 200,
          onStarted: () => void c.start(),
          onStopped: () => void c.stop(),
        },
        logger,
      );
      return { c, e };
    };
    const one = make('replica-1');
    const two = make('replica-2');
    one.e.start();
    two.e.start();
    try {
      await until('a leader', async () => one.e.leading || two.e.leading);
      const [leader, standby] = one.e.leading ? [one, two] : [two, one];
      // Several renewals later, still exactly one leader.
      const lease = await until('renewals', async () => {
        const l = api.get(LEASES, 'postino-operator');
        const spec = l?.spec as { renewTime?: string; acquireTime?: string } | undefined;
        return spec?.renewTime && spec.renewTime !== spec.acquireTime ? l : null;
      });
      assert.ok(leader.e.leading && !standby.e.leading);
      assert.equal(
        (lease.spec as { holderIdentity: string }).holderIdentity,
        leader === one ? 'replica-1' : 'replica-2',
      );
      assert.ok(leader.c.active && !standby.c.active);
      await leader.e.stop();
      await until('standby leads', async () => standby.e.leading && standby.c.active);
      api.create(DOMAINS, {
        apiVersion: 'mail.postino.io/v1alpha1',
        kind: 'MailDomain',
        metadata: { name: 'after-failover' },
        spec: { domain: 'failover.test' },
      });
      await until('reconciled by the new leader', async () =>
        (await admin.listDomains()).includes('failover.test'),
      );
      assert.equal(
        (api.get(LEASES, 'postino-operator')?.spec as { leaseTransitions: number }).leaseTransitions,
        1,
      );
    } finally {
      await one.e.stop();
      await two.e.stop();
      await one.c.stop();
      await two.c.stop();
    }
  });
});
