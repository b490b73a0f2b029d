/**
 * The operator's reconcile logic against a running Postino admin API (real nats-server and
 * redis-server), with the Kubernetes side kept in memory: create, update, delete, and a crash at
 * each step of the way followed by a fresh reconcile, as after an operator restart.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startNats, startRedis, type Proc } from '../helpers/servers.ts';
import { startServices, testConfig } from '../helpers/postino.ts';
import type { Running } from '../../services/core/runtime.ts';
import { AdminClient, AdminError } from '../../services/operator/admin-client.ts';
import {
  FINALIZER,
  getCondition,
  setCondition,
  type Kind,
  type MailDomain,
  type MailUser,
  type Resource,
  type SecretKeyRef,
  type Status,
} from '../../services/operator/crd.ts';
import { reconcileDomain, reconcileUser, type ObjectStore } from '../../services/operator/reconcile.ts';

class Crash extends Error {}

/** Objects and Secrets as the API server holds them; `crashOn` makes one write fail once. */
class MemoryStore implements ObjectStore {
  readonly objects = new Map<string, Resource<unknown>>();
  readonly secrets = new Map<string, Record<string, string>>();
  crashOn: 'setFinalizers' | 'setStatus' | null = null;
  #rv = 0;

  put<S>(obj: Resource<S>): Resource<S> {
    const stored = structuredClone({
      ...obj,
      metadata: { ...obj.metadata, resourceVersion: String(++this.#rv) },
    });
    if (stored.metadata.deletionTimestamp && (stored.metadata.finalizers ?? []).length === 0) {
      this.objects.delete(stored.metadata.name);
    } else this.objects.set(stored.metadata.name, stored);
    return structuredClone(stored);
  }

  get<S>(name: string): Resource<S> | undefined {
    return structuredClone(this.objects.get(name)) as Resource<S> | undefined;
  }

  #maybeCrash(op: 'setFinalizers' | 'setStatus') {
    if (this.crashOn === op) {
      this.crashOn = null;
      throw new Crash(`crashed at ${op}`);
    }
  }

  async setFinalizers<S>(_kind: Kind, obj: Resource<S>, finalizers: string[]): Promise<Resource<S>> {
    this.#maybeCrash('setFinalizers');
    const cur = this.objects.get(obj.metadata.name);
    assert.equal(cur?.metadata.resourceVersion, obj.metadata.resourceVersion, 'optimistic concurrency');
    return this.put({ ...obj, metadata: { ...obj.metadata, finalizers } });
  }

  async setStatus<S>(_kind: Kind, obj: Resource<S>, status: Status): Promise<void> {
    this.#maybeCrash('setStatus');
    const cur = this.objects.get(obj.metadata.name);
    assert.ok(cur);
    this.put({ ...cur, status });
  }

  async readSecret(_ns: string, ref: SecretKeyRef, defaultKey: string) {
    const s = this.secrets.get(ref.name);
    const v = s?.[ref.key ?? defaultKey];
    return v === undefined ? null : { value: v, version: `${ref.name}/${JSON.stringify(s)}` };
  }
}

/** The real admin client, failing once at a chosen call (the process dies between two requests). */
class CrashingAdmin extends AdminClient {
  failAt: string | null = null;
  override async addAlias(alias: string, targets: string[]): Promise<void> {
    if (this.failAt === 'addAlias') {
      this.failAt = null;
      throw new Crash('crashed before addAlias');
    }
    return super.addAlias(alias, targets);
  }
  override async removeUser(address: string): Promise<boolean> {
    const r = await super.removeUser(address);
    if (this.failAt === 'afterRemoveUser') {
      this.failAt = null;
      throw new Crash('crashed after removeUser');
    }
    return r;
  }
}

const domainObj = (name: string, domain: string, extra: Partial<MailDomain['spec']> = {}): MailDomain => ({
  apiVersion: 'mail.postino.io/v1alpha1',
  kind: 'MailDomain',
  metadata: { name, namespace: 'mail', generation: 1 },
  spec: { domain, ...extra },
});
const userObj = (name: string, address: string, aliases: string[] = []): MailUser => ({
  apiVersion: 'mail.postino.io/v1alpha1',
  kind: 'MailUser',
  metadata: { name, namespace: 'mail', generation: 1 },
  spec: { address, passwordSecretRef: { name: `${name}-pw` }, aliases },
});

describe('operator reconcile against the admin API', () => {
  let nats: Proc;
  let redis: Proc;
  let postino: Running;
  let admin: CrashingAdmin;
  let store: MemoryStore;

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const { config } = await testConfig({ NATS_URL: nats.url, REDIS_URL: redis.url, ADMIN_TOKEN: 't0ken' });
    postino = await startServices(config, ['admin']);
    admin = new CrashingAdmin(`http://127.0.0.1:${postino.runtime.http.port}`, 't0ken');
    store = new MemoryStore();
  });

  after(async () => {
    await postino?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  const deps = () => ({ admin, store });

  test('the finalizer is stored before anything is created', async () => {
    store.put(domainObj('d1', 'one.test'));
    store.crashOn = 'setFinalizers';
    await assert.rejects(reconcileDomain(store.get<MailDomain['spec']>('d1') as MailDomain, deps()), Crash);
    assert.ok(!(await admin.listDomains()).includes('one.test'), 'nothing created without a finalizer');
    await reconcileDomain(store.get('d1') as MailDomain, deps());
    const d = store.get<MailDomain['spec']>('d1');
    assert.deepEqual(d?.metadata.finalizers, [FINALIZER]);
    assert.equal(getCondition(d ?? {}, 'Ready')?.status, 'True');
    assert.ok((await admin.listDomains()).includes('one.test'));
  });

  test('a crash after the directory writes and before the status: the next run converges, once', async () => {
    store.secrets.set('u1-pw', { password: 'password-1' });
    store.put(userObj('u1', 'ann@one.test', ['a1@one.test', 'a2@one.test']));
    store.crashOn = 'setStatus';
    await assert.rejects(reconcileUser(store.get('u1') as MailUser, deps()), Crash);
    assert.deepEqual(await admin.listUsers('one.test'), ['ann@one.test']);
    await reconcileUser(store.get('u1') as MailUser, deps());
    const u = store.get<MailUser['spec']>('u1');
    assert.equal(getCondition(u ?? {}, 'Ready')?.status, 'True');
    assert.deepEqual(u?.status?.appliedAliases, ['a1@one.test', 'a2@one.test']);
    assert.deepEqual(await admin.listAliases('one.test'), [
      { alias: 'a1@one.test', targets: ['ann@one.test'] },
      { alias: 'a2@one.test', targets: ['ann@one.test'] },
    ]);
    // Reconciling a settled object changes nothing, not even the status.
    const rv = store.get('u1')?.metadata.resourceVersion;
    await reconcileUser(store.get('u1') as MailUser, deps());
    assert.equal(store.get('u1')?.metadata.resourceVersion, rv);
  });

  test('a crash between two admin calls: the next run finishes the job', async () => {
    store.secrets.set('u2-pw', { password: 'password-2' });
    store.put(userObj('u2', 'ben@one.test', ['b1@one.test']));
    admin.failAt = 'addAlias';
    await assert.rejects(reconcileUser(store.get('u2') as MailUser, deps()), Crash);
    assert.ok((await admin.listUsers('one.test')).includes('ben@one.test'));
    assert.ok(!(await admin.listAliases('one.test')).some((a) => a.alias === 'b1@one.test'));
    await reconcileUser(store.get('u2') as MailUser, deps());
    assert.ok((await admin.listAliases('one.test')).some((a) => a.alias === 'b1@one.test'));
    assert.equal(await postino.runtime.directory.authenticate('ben@one.test', 'password-2'), 'ben@one.test');
  });

  test('an alias that leads elsewhere is not taken over', async () => {
    await admin.addAlias('shared@one.test', ['ann@one.test']);
    const u2 = store.get<MailUser['spec']>('u2') as MailUser;
    store.put({
      ...u2,
      metadata: { ...u2.metadata, generation: 2 },
      spec: { ...u2.spec, aliases: ['b1@one.test', 'shared@one.test'] },
    });
    await reconcileUser(store.get('u2') as MailUser, deps());
    const r = getCondition(store.get('u2') ?? {}, 'Ready');
    assert.equal(r?.reason, 'AliasConflict');
    assert.deepEqual(
      (await admin.listAliases('one.test')).find((a) => a.alias === 'shared@one.test')?.targets,
      ['ann@one.test'],
    );
  });

  test('bad input from the spec is a status, not a crash loop', async () => {
    store.secrets.set('u3-pw', { password: 'password-3' });
    store.put(userObj('u3', 'not an address@one.test'));
    const res = await reconcileUser(store.get('u3') as MailUser, deps());
    assert.equal(getCondition(store.get('u3') ?? {}, 'Ready')?.reason, 'Invalid');
    assert.equal(res.requeueAfterMs, undefined);
  });

  test('deletion with a crash after the user is removed: the next run drops the finalizer', async () => {
    const u1 = store.get<MailUser['spec']>('u1') as MailUser;
    store.put({ ...u1, metadata: { ...u1.metadata, deletionTimestamp: new Date().toISOString() } });
    admin.failAt = 'afterRemoveUser';
    await assert.rejects(reconcileUser(store.get('u1') as MailUser, deps()), Crash);
    assert.ok(!(await admin.listUsers('one.test')).includes('ann@one.test'));
    assert.ok(store.get('u1'), 'still there: the finalizer holds it');
    await reconcileUser(store.get('u1') as MailUser, deps());
    assert.equal(store.get('u1'), undefined);
    const aliases = (await admin.listAliases('one.test')).map((a) => a.alias);
    assert.ok(!aliases.includes('a1@one.test') && !aliases.includes('a2@one.test'));
    // shared@ led to ann alone and was not u1's: the directory refuses nothing, but it is left alone.
    assert.ok(aliases.includes('shared@one.test'));
  });

  test('an unreachable admin API is an error to retry, and says so in the status', async () => {
    const down = new AdminClient('http://127.0.0.1:1', 'x', 2_000);
    store.put(domainObj('d2', 'two.test'));
    await assert.rejects(reconcileDomain(store.get('d2') as MailDomain, { admin: down, store }), AdminError);
    assert.equal(getCondition(store.get('d2') ?? {}, 'Ready')?.reason, 'AdminAPIUnavailable');
  });

  test('conditions keep their transition time while their status holds', () => {
    const t0 = new Date('2026-01-01T00:00:00Z');
    const a = setCondition(undefined, { type: 'Ready', status: 'False', reason: 'X', message: '' }, t0);
    const b = setCondition(a, { type: 'Ready', status: 'False', reason: 'Y', message: '' }, new Date());
    assert.equal(b[0]?.lastTransitionTime, '2026-01-01T00:00:00Z');
    const c = setCondition(
      b,
      { type: 'Ready', status: 'True', reason: 'Z', message: '' },
      new Date('2026-01-02T00:00:00Z'),
    );
    assert.equal(c[0]?.lastTransitionTime, '2026-01-02T00:00:00Z');
  });
});
