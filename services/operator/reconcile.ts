/**
 * Reconciliation: make the directory (through the admin API) match one MailDomain or MailUser, and
 * report it in the object's status. Level-based and idempotent: it reads what exists and does only
 * what is missing, so running it again — after a crash half way, a lost leader, a resync — converges
 * to the same state.
 *
 * The finalizer is written before anything is created in the directory, so an object deleted at
 * any moment still has its entries removed; it is dropped only after they are.
 */
import { AdminError, type AdminClient } from './admin-client.ts';
import {
  FINALIZER,
  setCondition,
  type Kind,
  type MailDomain,
  type MailUser,
  type Resource,
  type SecretKeyRef,
  type Status,
} from './crd.ts';

/** The Kubernetes side, as the reconciler needs it (services/operator/kube.ts implements it). */
export interface ObjectStore {
  /** Writes metadata.finalizers (optimistic concurrency on resourceVersion); returns the stored object. */
  setFinalizers<S>(kind: Kind, obj: Resource<S>, finalizers: string[]): Promise<Resource<S>>;
  /** Writes the status subresource. */
  setStatus<S>(kind: Kind, obj: Resource<S>, status: Status): Promise<void>;
  /** A key of a Secret in the namespace, with a version that changes when the Secret does; null if absent. */
  readSecret(
    namespace: string,
    ref: SecretKeyRef,
    defaultKey: string,
  ): Promise<{ value: string; version: string } | null>;
}

export interface Deps {
  admin: AdminClient;
  store: ObjectStore;
  now?: () => Date;
}

/** What the controller does next with the object. */
export interface Result {
  /** Reconcile again after this long (a dependency is missing; nothing will announce it). */
  requeueAfterMs?: number;
}

/** Requeue delay when waiting for something outside the object (a Secret, a domain, users to go). */
export const WAIT_MS = 15_000;

const deleting = (obj: Resource<unknown>) => Boolean(obj.metadata.deletionTimestamp);
const hasFinalizer = (obj: Resource<unknown>) => (obj.metadata.finalizers ?? []).includes(FINALIZER);
const domainOf = (address: string) => address.slice(address.lastIndexOf('@') + 1);

async function ensureFinalizer<S>(kind: Kind, obj: Resource<S>, store: ObjectStore): Promise<Resource<S>> {
  if (hasFinalizer(obj)) return obj;
  return store.setFinalizers(kind, obj, [...(obj.metadata.finalizers ?? []), FINALIZER]);
}

async function dropFinalizer<S>(kind: Kind, obj: Resource<S>, store: ObjectStore): Promise<void> {
  await store.setFinalizers(
    kind,
    obj,
    (obj.metadata.finalizers ?? []).filter((f) => f !== FINALIZER),
  );
}

/** Builds the next status; writes it only when it differs from the stored one. */
async function report<S>(
  kind: Kind,
  obj: Resource<S>,
  deps: Deps,
  ready: { ok: boolean; reason: string; message: string },
  extra: Partial<Status> = {},
  unsupported: string[] = [],
): Promise<void> {
  const now = deps.now?.() ?? new Date();
  const generation = obj.metadata.generation;
  let conditions = setCondition(
    obj.status?.conditions,
    {
      type: 'Ready',
      status: ready.ok ? 'True' : 'False',
      reason: ready.reason,
      message: ready.message,
      observedGeneration: generation,
    },
    now,
  );
  conditions = setCondition(
    conditions,
    unsupported.length > 0
      ? {
          type: 'Supported',
          status: 'False',
          reason: 'NotSupportedByAdminAPI',
          message: `not applied: ${unsupported.join(', ')}`,
          observedGeneration: generation,
        }
      : {
          type: 'Supported',
          status: 'True',
          reason: 'AllFieldsApplied',
          message: 'every field of the spec is applied',
          observedGeneration: generation,
        },
    now,
  );
  const next: Status = { ...obj.status, ...extra, observedGeneration: generation, conditions };
  if (JSON.stringify(next) !== JSON.stringify(obj.status ?? {})) await deps.store.setStatus(kind, obj, next);
}

/** Maps an admin API failure to a Ready=False reason; unreachable or 5xx is rethrown (retried with backoff). */
function reasonOf(err: unknown): { reason: string; message: string; retryable: boolean } {
  if (!(err instanceof AdminError)) throw err;
  if (err.status === 0 || err.status >= 500 || err.status === 401)
    return {
      reason: err.status === 401 ? 'AdminAPIUnauthorized' : 'AdminAPIUnavailable',
      message: err.message,
      retryable: true,
    };
  if (err.status === 404) return { reason: 'DomainNotFound', message: err.message, retryable: true };
  if (err.status === 409) return { reason: 'Conflict', message: err.message, retryable: true };
  return { reason: 'Invalid', message: err.message, retryable: false };
}

export async function reconcileDomain(input: MailDomain, deps: Deps): Promise<Result> {
  const { admin, store } = deps;
  const domain = input.spec.domain.trim().toLowerCase();
  const wanted = [...new Set((input.spec.aliases ?? []).map((a) => a.trim().toLowerCase()))].sort();
  const applied = input.status?.appliedAliases ?? [];

  if (deleting(input)) {
    if (!hasFinalizer(input)) return {};
    for (const alias of new Set([...applied, ...wanted])) await admin.removeDomain(alias);
    try {
      await admin.removeDomain(domain);
    } catch (err) {
      if (err instanceof AdminError && err.status === 409) {
        // The directory refuses to drop a domain with users: wait for their MailUsers (or an admin) to go.
        await report(
          'MailDomain',
          input,
          deps,
          { ok: false, reason: 'DomainNotEmpty', message: err.message },
          { appliedAliases: [] },
        );
        return { requeueAfterMs: WAIT_MS };
      }
      throw err;
    }
    await dropFinalizer('MailDomain', input, store);
    return {};
  }

  const obj = await ensureFinalizer('MailDomain', input, store);
  const unsupported = obj.spec.dkim?.privateKeySecretRef
    ? ['dkim.privateKeySecretRef (the admin API generates DKIM keys and cannot import one)']
    : [];
  let dkim: Status['dkim'];
  try {
    await admin.addDomain(domain);
    for (const alias of wanted) await admin.addDomainAlias(alias, domain);
    for (const alias of applied) if (!wanted.includes(alias)) await admin.removeDomain(alias);
    await admin.setCatchAll(domain, obj.spec.catchAll ?? '');
    // The spec is the source of truth: no quota in it means no default limit.
    await admin.setDomainQuota(domain, {
      bytes: obj.spec.quota?.defaultUserBytes ?? 0,
      messages: obj.spec.quota?.defaultUserMessages ?? 0,
    });
    if (obj.spec.dkim) {
      // RFC 6376 3.1: a new selector means a new key; the same selector keeps the current one.
      let rec = await admin.getDkim(domain);
      if (!rec || rec.selector !== obj.spec.dkim.selector)
        rec = await admin.generateDkim(domain, obj.spec.dkim.selector);
      dkim = { selector: rec.selector, recordName: rec.name, recordValue: rec.txt };
    }
  } catch (err) {
    const r = reasonOf(err);
    await report('MailDomain', obj, deps, { ok: false, ...r }, {}, unsupported);
    if (r.reason.startsWith('AdminAPI')) throw err;
    return r.retryable ? { requeueAfterMs: WAIT_MS } : {};
  }
  await report(
    'MailDomain',
    obj,
    deps,
    { ok: true, reason: 'Reconciled', message: `domain ${domain} is hosted` },
    { appliedAliases: wanted, dkim },
    unsupported,
  );
  return {};
}

export async function reconcileUser(input: MailUser, deps: Deps): Promise<Result> {
  const { admin, store } = deps;
  const address = input.spec.address.trim().toLowerCase();
  const wanted = [...new Set((input.spec.aliases ?? []).map((a) => a.trim().toLowerCase()))].sort();
  const applied = input.status?.appliedAliases ?? [];

  /** Removes an alias only if it is ours (it leads to this user alone). */
  const removeOwnAlias = async (alias: string) => {
    const entry = (await admin.listAliases(domainOf(alias)).catch(() => [])).find((a) => a.alias === alias);
    if (entry && entry.targets.length === 1 && entry.targets[0] === address) await admin.removeAlias(alias);
  };

  if (deleting(input)) {
    if (!hasFinalizer(input)) return {};
    for (const alias of new Set([...applied, ...wanted])) await removeOwnAlias(alias);
    await admin.removeUser(address);
    await dropFinalizer('MailUser', input, store);
    return {};
  }

  const obj = await ensureFinalizer('MailUser', input, store);
  const unsupported: string[] = [];
  const secret = await store.readSecret(obj.metadata.namespace ?? '', obj.spec.passwordSecretRef, 'password');
  if (!secret || secret.value === '') {
    const ref = obj.spec.passwordSecretRef;
    await report(
      'MailUser',
      obj,
      deps,
      {
        ok: false,
        reason: 'SecretNotFound',
        message: `Secret ${ref.name} has no key ${ref.key ?? 'password'}`,
      },
      {},
      unsupported,
    );
    return { requeueAfterMs: WAIT_MS };
  }
  try {
    const passwordApplied = obj.status?.passwordVersion === secret.version;
    if (!(passwordApplied && (await admin.userExists(address)))) {
      const created = await admin.addUser(address, secret.value);
      // An existing user (made before a crash, or by hand) gets the Secret's password once per Secret version.
      if (!created && !passwordApplied) await admin.setPassword(address, secret.value);
    }
    await admin.setUserQuota(address, {
      bytes: obj.spec.quotaBytes ?? 0,
      messages: obj.spec.quotaMessages ?? 0,
    });
    const conflicts: string[] = [];
    for (const alias of wanted) {
      const entry = (await admin.listAliases(domainOf(alias))).find((a) => a.alias === alias);
      if (entry && !(entry.targets.length === 1 && entry.targets[0] === address)) conflicts.push(alias);
      else if (!entry) await admin.addAlias(alias, [address]);
    }
    for (const alias of applied) if (!wanted.includes(alias)) await removeOwnAlias(alias);
    const mine = wanted.filter((a) => !conflicts.includes(a));
    if (conflicts.length > 0) {
      await report(
        'MailUser',
        obj,
        deps,
        {
          ok: false,
          reason: 'AliasConflict',
          message: `aliases already lead elsewhere: ${conflicts.join(', ')}`,
        },
        { appliedAliases: mine, passwordVersion: secret.version },
        unsupported,
      );
      return { requeueAfterMs: WAIT_MS };
    }
    await report(
      'MailUser',
      obj,
      deps,
      { ok: true, reason: 'Reconciled', message: `mailbox ${address} exists` },
      { appliedAliases: mine, passwordVersion: secret.version },
      unsupported,
    );
    return {};
  } catch (err) {
    const r = reasonOf(err);
    await report('MailUser', obj, deps, { ok: false, ...r }, {}, unsupported);
    if (r.reason.startsWith('AdminAPI')) throw err;
    return r.retryable ? { requeueAfterMs: WAIT_MS } : {};
  }
}
