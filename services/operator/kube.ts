/**
 * The Kubernetes side of the operator, on @kubernetes/client-node: the object store the reconciler
 * writes through (finalizers with PUT on the object, status with PUT on the status subresource,
 * both carrying resourceVersion so that a stale write fails with 409 Conflict instead of undoing
 * someone else's), Secrets, and list+watch informers of the custom resources.
 */
import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  makeInformer,
  type Informer,
  type KubernetesListObject,
  type KubernetesObject,
  type ObjectCache,
} from '@kubernetes/client-node';
import { readFileSync } from 'node:fs';
import { GROUP, KINDS, VERSION, type Kind, type Resource, type SecretKeyRef, type Status } from './crd.ts';
import type { ObjectStore } from './reconcile.ts';

const SA_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

/** In a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config (KubeConfig.loadFromDefault). */
export function loadKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromDefault();
  return kc;
}

/** The namespace to watch: the configured one, else the pod's own, else the kubeconfig context's. */
export function watchNamespace(configured: string, kc: KubeConfig): string {
  if (configured) return configured;
  try {
    return readFileSync(SA_NAMESPACE, 'utf8').trim();
  } catch {
    return kc.getContextObject(kc.getCurrentContext())?.namespace ?? 'default';
  }
}

/** HTTP status of a failed Kubernetes call (0 when there was no answer). */
export function statusOf(err: unknown): number {
  return err instanceof ApiException ? err.code : 0;
}

export class KubeStore implements ObjectStore {
  readonly #custom: CustomObjectsApi;
  readonly #core: CoreV1Api;

  constructor(kc: KubeConfig) {
    this.#custom = kc.makeApiClient(CustomObjectsApi);
    this.#core = kc.makeApiClient(CoreV1Api);
  }

  async setFinalizers<S>(kind: Kind, obj: Resource<S>, finalizers: string[]): Promise<Resource<S>> {
    const body = { ...obj, metadata: { ...obj.metadata, finalizers } };
    return (await this.#custom.replaceNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: obj.metadata.namespace ?? '',
      plural: KINDS[kind].plural,
      name: obj.metadata.name,
      body,
    })) as Resource<S>;
  }

  async setStatus<S>(kind: Kind, obj: Resource<S>, status: Status): Promise<void> {
    await this.#custom.replaceNamespacedCustomObjectStatus({
      group: GROUP,
      version: VERSION,
      namespace: obj.metadata.namespace ?? '',
      plural: KINDS[kind].plural,
      name: obj.metadata.name,
      body: { ...obj, status },
    });
  }

  async readSecret(
    namespace: string,
    ref: SecretKeyRef,
    defaultKey: string,
  ): Promise<{ value: string; version: string } | null> {
    let secret;
    try {
      secret = await this.#core.readNamespacedSecret({ name: ref.name, namespace });
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw err;
    }
    const b64 = secret.data?.[ref.key ?? defaultKey];
    if (b64 === undefined) return null;
    return {
      value: Buffer.from(b64, 'base64').toString('utf8'),
      version: `${secret.metadata?.uid ?? ''}/${secret.metadata?.resourceVersion ?? ''}`,
    };
  }

  /** A list+watch informer of one kind in one namespace (client-node re-lists on 410 Gone). */
  informer(
    kc: KubeConfig,
    kind: Kind,
    namespace: string,
  ): Informer<KubernetesObject> & ObjectCache<KubernetesObject> {
    const plural = KINDS[kind].plural;
    const path = `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/${plural}`;
    const list = async () =>
      (await this.#custom.listNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace,
        plural,
      })) as KubernetesListObject<KubernetesObject>;
    return makeInformer(kc, path, list);
  }
}
