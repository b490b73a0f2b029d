/**
 * The chart's `helm test` Pod (templates/tests/test-banners.yaml): its script, taken from the
 * rendered manifest, run against a running Postino's SMTP, submission, SMTPS, IMAP, IMAPS, POP3 and
 * POP3S listeners (the Service names pointed at 127.0.0.1, the Service ports at the test's ports).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { startNats, startRedis, type Proc } from '../helpers/servers.ts';
import { startServices, testConfig, type Ports } from '../helpers/postino.ts';
import type { Running } from '../../services/core/runtime.ts';
import { helmTemplate } from '../../deploy/render-manifests.ts';

const run = promisify(execFile);

/** The test Pod's script, rendered for these ports, with the Services resolved to loopback. */
function bannerScript(ports: Ports): string {
  const set = (k: string, v: number) => ['--set', `mailService.ports.${k}=${v}`];
  const text = helmTemplate([
    ...set('smtp', ports.smtp),
    ...set('submission', ports.submission),
    ...set('smtps', ports.smtps),
    ...set('imap', ports.imap),
    ...set('imaps', ports.imaps),
    ...set('pop3', ports.pop3),
    ...set('pop3s', ports.pop3s),
  ]);
  const pod = parseAllDocuments(text)
    .map((d) => d.toJS() as { kind?: string; metadata?: { annotations?: Record<string, string> } } | null)
    .find((o) => o?.kind === 'Pod' && o.metadata?.annotations?.['helm.sh/hook'] === 'test') as
    { spec: { containers: { command: string[]; args: string[] }[] } } | undefined;
  assert.ok(pod, 'a helm test Pod');
  const c = pod.spec.containers[0];
  assert.deepEqual(c?.command, ['node', '-e']);
  return (c?.args[0] ?? '').replace(/'postino-(smtp-ingress|imap|pop3)'/g, "'127.0.0.1'");
}

describe('helm test: protocol banners', () => {
  let nats: Proc;
  let redis: Proc;
  let postino: Running;
  let ports: Ports;

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const t = await testConfig({ NATS_URL: nats.url, REDIS_URL: redis.url });
    ports = t.ports;
    postino = await startServices(t.config, ['smtp-ingress', 'imap', 'pop3']);
  });

  after(async () => {
    await postino?.stop();
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  test('every mail port greets with its protocol, in clear and over TLS', async () => {
    const { stdout } = await run(process.execPath, ['-e', bannerScript(ports)], { timeout: 30_000 });
    const lines = stdout.trim().split('\n');
    assert.equal(lines.length, 7);
    assert.equal(lines.filter((l) => / 220 /.test(l)).length, 3);
    assert.equal(lines.filter((l) => / \* OK/.test(l)).length, 2);
    assert.equal(lines.filter((l) => / \+OK/.test(l)).length, 2);
  });

  test('a port that answers with another protocol fails the test', async () => {
    const wrong = { ...ports, imap: ports.pop3 };
    await assert.rejects(
      run(process.execPath, ['-e', bannerScript(wrong)], { timeout: 30_000 }),
      (err: Error & { code?: number; stderr?: string }) => {
        assert.equal(err.code, 1);
        assert.match(err.stderr ?? '', /answered "\+OK/);
        return true;
      },
    );
  });
});
