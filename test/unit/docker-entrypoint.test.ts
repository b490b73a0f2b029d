/**
 * The image's contract without a Docker engine: every service started as a plain process with
 * deploy/Dockerfile's ENTRYPOINT and CMD form, its ENV and its USER, on a read-only root filesystem
 * (a private mount namespace, `mount -o remount,bind,ro /`) where only the data folder is writable,
 * against a real nats-server and redis-server; ready on /readyz, drained by SIGTERM with exit 0.
 * WORKDIR /app is this checkout and /data a fresh folder (the paths differ, the rules do not).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { ROOT } from '../helpers/postino.ts';
import { SERVICES, OPTIONAL_SERVICES } from '../../services/services.ts';

interface Stage {
  from: string;
  env: Record<string, string>;
  workdir: string;
  user: string;
  entrypoint: string[];
  cmd: string[];
  copies: string[];
  stopSignal: string;
}

/** The final stage of a Dockerfile: the instructions that shape the running container. */
function finalStage(text: string): Stage {
  const lines = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  let stage: Stage | undefined;
  for (const line of lines) {
    const [op = '', ...rest] = line.split(/\s+/);
    const arg = line.slice(op.length).trim();
    switch (op.toUpperCase()) {
      case 'FROM':
        stage = {
          from: rest[0] ?? '',
          env: {},
          workdir: '/',
          user: 'root',
          entrypoint: [],
          cmd: [],
          copies: [],
          stopSignal: '',
        };
        break;
      case 'ENV':
        for (const m of arg.matchAll(/([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)/g))
          stage!.env[m[1]!] = m[2]!.replace(/^"|"$/g, '');
        break;
      case 'WORKDIR':
        stage!.workdir = arg;
        break;
      case 'USER':
        stage!.user = arg;
        break;
      case 'ENTRYPOINT':
        stage!.entrypoint = JSON.parse(arg) as string[];
        break;
      case 'CMD':
        stage!.cmd = JSON.parse(arg) as string[];
        break;
      case 'COPY':
        stage!.copies.push(
          rest
            .filter((r) => !r.startsWith('--'))
            .slice(0, -1)
            .join(' '),
        );
        break;
      case 'STOPSIGNAL':
        stage!.stopSignal = arg;
        break;
    }
  }
  assert.ok(stage, 'a FROM line');
  return stage;
}

const dockerfile = readFileSync(join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
const image = finalStage(dockerfile);
const [uid, gid] = image.user.split(':').map(Number) as [number, number];
const isRoot = process.getuid?.() === 0;

test('the Dockerfile: two stages on node:24-bookworm-slim, numeric non-root user, exec-form entrypoint', () => {
  const froms = [...dockerfile.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
  assert.deepEqual(froms, ['node:24-bookworm-slim', 'node:24-bookworm-slim']);
  assert.ok(
    Number.isInteger(uid) && uid > 0 && Number.isInteger(gid),
    `USER ${image.user} is numeric and not root`,
  );
  assert.deepEqual(image.entrypoint, ['node', 'bin/postino.ts']);
  assert.deepEqual(image.cmd, ['up']);
  assert.equal(image.stopSignal, 'SIGTERM');
  assert.equal(image.workdir, '/app');
  assert.equal(image.env.POSTINO_DATA_DIR, '/data');
  // The runtime stage carries no sources of tests, charts or dev tools.
  for (const c of image.copies) assert.doesNotMatch(c, /test|charts|deploy/);
  // .dockerignore lets through exactly what the stages copy.
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
  for (const p of ['package.json', 'package-lock.json', 'scripts/', 'proto/', 'bin/', 'services/'])
    assert.ok(ignore.includes(`!${p}`), p);
});

describe('each service started as the container would start it', () => {
  let nats: Proc;
  let redis: Proc;
  const children: ChildProcess[] = [];

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
  });

  after(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await Promise.all([nats?.cleanup(), redis?.cleanup()]);
  });

  /** Starts `<ENTRYPOINT> run <service>` as USER on a read-only root with only `data` writable. */
  function startAsImage(
    service: string,
    data: string,
    env: Record<string, string>,
  ): { child: ChildProcess; stderr: () => string; stdout: () => string } {
    const [, ...entryArgs] = image.entrypoint; // "node" is this Node 24
    const command = [process.execPath, ...entryArgs, 'run', service];
    const fullEnv = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: data,
      ...image.env,
      POSTINO_DATA_DIR: data,
      ...env,
    };
    const child = isRoot
      ? spawn(
          'unshare',
          [
            '--mount',
            '--propagation',
            'private',
            'sh',
            '-c',
            // Only the data folder stays writable; then drop to the image's user and exec (same pid).
            'd="$0"; u="$1"; g="$2"; shift 2; mount --bind "$d" "$d" && mount -o remount,bind,ro / && exec setpriv --reuid "$u" --regid "$g" --clear-groups -- "$@"',
            data,
            String(uid),
            String(gid),
            ...command,
          ],
          { cwd: ROOT, env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] },
        )
      : spawn(command[0]!, command.slice(1), { cwd: ROOT, env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    let out = '';
    child.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
    children.push(child);
    return { child, stderr: () => err, stdout: () => out };
  }

  test('every service is ready as uid 1000 with a read-only root, and exits 0 on SIGTERM', async () => {
    const names = [...Object.keys(SERVICES), ...Object.keys(OPTIONAL_SERVICES)];
    await Promise.all(
      names.map(async (name) => {
        const data = mkdtempSync(join(tmpdir(), `postino-image-${name}-`));
        chownSync(data, uid, gid);
        // The operator finds no Kubernetes API here; it must still run, stand by and drain.
        const kubeconfig = join(data, 'kubeconfig');
        writeFileSync(
          kubeconfig,
          `apiVersion: v1\nkind: Config\nclusters: [{name: none, cluster: {server: "http://127.0.0.1:9"}}]\nusers: [{name: none, user: {token: x}}]\ncontexts: [{name: none, context: {cluster: none, user: none, namespace: mail}}]\ncurrent-context: none\n`,
        );
        chownSync(kubeconfig, uid, gid);
        const http = await freePort();
        const { child, stderr, stdout } = startAsImage(name, data, {
          NATS_URL: nats.url,
          REDIS_URL: redis.url,
          HTTP_PORT: String(http),
          HTTP_HOST: '127.0.0.1',
          BIND_HOST: '127.0.0.1',
          SMTP_PORT: String(await freePort()),
          SUBMISSION_PORT: String(await freePort()),
          SMTPS_PORT: String(await freePort()),
          IMAP_PORT: String(await freePort()),
          IMAPS_PORT: String(await freePort()),
          POP3_PORT: String(await freePort()),
          POP3S_PORT: String(await freePort()),
          LOG_LEVEL: 'info',
          SHUTDOWN_GRACE: '10s',
          KUBECONFIG: kubeconfig,
          OPERATOR_NAMESPACE: 'mail',
        });
        const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
        await until(
          `${name} ready`,
          async () => {
            if (child.exitCode !== null) throw new Error(`${name} exited ${child.exitCode}: ${stderr()}`);
            // Ready, and past start-up: the SIGTERM handler is installed once every service has started.
            if (!stdout().includes('"msg":"service started"')) return false;
            return (await fetch(`http://127.0.0.1:${http}/readyz`).catch(() => null))?.status === 200;
          },
          60_000,
        );
        if (isRoot) {
          const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
          assert.match(status, new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s`, 'm'), `${name} runs as ${uid}`);
        }
        // The one thing every service writes: the self-signed TLS pair, in the data folder.
        const cert = join(data, 'tls', 'cert.pem');
        assert.ok(existsSync(cert), `${name}: ${cert}`);
        assert.equal(statSync(cert).uid, uid);
        child.kill('SIGTERM');
        assert.equal(await exited, 0, `${name} drained and exited 0: ${stderr()}`);
      }),
    );
  });
});
