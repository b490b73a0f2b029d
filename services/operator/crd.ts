/**
 * The custom resources the operator reconciles (charts/postino/crds): MailDomain and MailUser in
 * the API group mail.postino.io, version v1alpha1, namespaced. Status follows the Kubernetes API
 * conventions: `conditions` keyed by type, each with reason, message and lastTransitionTime, and
 * the `observedGeneration` the status describes.
 */

export const GROUP = 'mail.postino.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
/** Held on every object whose directory entries exist, until they are removed. */
export const FINALIZER = 'mail.postino.io/directory';

export const KINDS = {
  MailDomain: { kind: 'MailDomain', plural: 'maildomains' },
  MailUser: { kind: 'MailUser', plural: 'mailusers' },
} as const;
export type Kind = keyof typeof KINDS;

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  finalizers?: string[];
  deletionTimestamp?: string | Date;
  creationTimestamp?: string | Date;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

export interface SecretKeyRef {
  name: string;
  key?: string;
}

export interface MailDomainSpec {
  domain: string;
  aliases?: string[];
  catchAll?: string;
  /** Default limits of the domain's users (RFC 9208); 0 or absent: none. */
  quota?: { defaultUserBytes?: number; defaultUserMessages?: number };
  /** DKIM signing: the admin API generates and keeps the key; importing one from a Secret is not supported yet. */
  dkim?: { selector: string; privateKeySecretRef?: SecretKeyRef };
}

export interface MailUserSpec {
  address: string;
  passwordSecretRef: SecretKeyRef;
  quotaBytes?: number;
  quotaMessages?: number;
  aliases?: string[];
}

export interface Status {
  observedGeneration?: number;
  conditions?: Condition[];
  /** Domain aliases (MailDomain) or address aliases (MailUser) this object put in the directory. */
  appliedAliases?: string[];
  /** Which version of the password Secret was last applied (its uid and resourceVersion). */
  passwordVersion?: string;
  /** The DKIM record to publish in DNS (MailDomain with spec.dkim). */
  dkim?: { selector: string; recordName: string; recordValue: string };
}

export interface Resource<S> {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec: S;
  status?: Status;
}

export type MailDomain = Resource<MailDomainSpec>;
export type MailUser = Resource<MailUserSpec>;

/**
 * Returns `conditions` with `next` set; lastTransitionTime moves only when the status changes
 * (API conventions: "the last time the condition transitioned from one status to another").
 */
export function setCondition(
  conditions: Condition[] | undefined,
  next: Omit<Condition, 'lastTransitionTime'>,
  now: Date = new Date(),
): Condition[] {
  const list = (conditions ?? []).filter((c) => c.type !== next.type);
  const prev = conditions?.find((c) => c.type === next.type);
  const lastTransitionTime =
    prev && prev.status === next.status ? prev.lastTransitionTime : now.toISOString().replace(/\.\d+Z$/, 'Z');
  return [...list, { ...next, lastTransitionTime }].sort((a, b) => a.type.localeCompare(b.type));
}

export function getCondition(obj: { status?: Status }, type: string): Condition | undefined {
  return obj.status?.conditions?.find((c) => c.type === type);
}

/** "namespace/name", the work-queue key of an object. */
export function keyOf(meta: ObjectMeta): string {
  return `${meta.namespace ?? ''}/${meta.name}`;
}
