/**
 * Dashboards and alert rules are checked against what the services really expose: a real
 * Prometheus (Debian's package) scrapes a running cluster while mail flows, and every query of
 * every dashboard panel and every alert rule is evaluated there. promtool checks the rules and
 * runs their unit tests.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import type { SMTPServer } from 'smtp-server';
import { parse } from 'yaml';
import { freePort, startDns, startNats, startRedis, until, type Proc } from '../helpers/servers.ts';
import { startSink } from '../helpers/sink.ts';
import {
  POSTINO,
  ROOT,
  spawnServices,
  testConfig,
  type Ports,
  type ServiceProcess,
} from '../helpers/postino.ts';

const run = promisify(execFile);
const FILES = join(ROOT, 'charts', 'postino', 'files');
const RULES = join(FILES, 'rules', 'postino-alerts.yaml');

interface Dashboard {
  title: string;
  panels: { title: string; targets: { expr: string }[] }[];
}

function dashboards(): Dashboard[] {
  const dir = join(FILES, 'dashboards');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as Dashboard);
}

function ruleExprs(): { alert: string; expr: string }[] {
  const doc = parse(readFileSync(RULES, 'utf8')) as {
    groups: { rules: { alert: string; expr: string }[] }[];
  };
  return doc.groups.flatMap((g) => g.rules.map((r) => ({ alert: r.alert, expr: r.expr })));
}

/** Sends lines on a fresh connection and waits for the server to close it (a QUIT or LOGOUT at the end). */
function talk(port: number, lines: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.end(lines.map((l) => `${l}\r\n`).join('')));
    let heard = '';
    socket.on('data', (c: Buffer) => (heard += c.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve(heard));
  });
}

/** The metric names an expression reads. */
function metricsOf(expr: string): string[] {
  return [...new Set(expr.match(/\bpostino_[a-z0-9_]+/g) ?? [])];
}

describe('dashboards and alert rules', () => {
  let nats: Proc;
  let redis: Proc;
  let dns: Proc;
  let sink: SMTPServer;
  let greylist: SMTPServer;
  let main: ServiceProcess;
  let router: ServiceProcess;
  let prometheus: ChildProcess;
  let promUrl: string;
  let ports: Ports;
  /** The queue id of the last message sent to each recipient. */
  const queueIds = new Map<string, string>();

  const query = async (
    q: string,
  ): Promise<{ status: string; error?: string; data?: { result: unknown[] } }> => {
    const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`);
    return (await res.json()) as { status: string; error?: string; data?: { result: unknown[] } };
  };

  before(async () => {
    [nats, redis] = await Promise.all([startNats(), startRedis()]);
    const sinkPort = await freePort('127.0.0.4');
    sink = await startSink({ host: '127.0.0.4', port: sinkPort });
    // down.test's MX answers 451 to every recipient: its mail is deferred (a failed attempt, a retry).
    greylist = await startSink({
      host: '127.0.0.5',
      port: sinkPort,
      rcpt: () => ({ code: 451, text: '4.7.1 Greylisted, try again later' }),
    });
    dns = await startDns([
      '--mx-host=down.test,mx.down.test,10',
      '--host-record=mx.down.test,127.0.0.5',
      '--mx-host=remote.test,mx.remote.test,10',
      '--host-record=mx.remote.test,127.0.0.4',
      '--mx-host=nullmx.test,.,0',
    ]);
    const cfg = await testConfig({
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      DNS_SERVERS: dns.url,
      DELIVERY_SMTP_PORT: String(sinkPort),
    });
    ports = cfg.ports;
    main = await spawnServices(cfg.env, [
      'mailbox-store',
      'delivery',
      'admin',
      'imap',
      'pop3',
      'smtp-ingress',
    ]);
    router = await spawnServices(cfg.env, ['router']);

    const promPort = await freePort();
    promUrl = `http://127.0.0.1:${promPort}`;
    const dir = mkdtempSync(join(tmpdir(), 'postino-prom-'));
    writeFileSync(
      join(dir, 'prometheus.yml'),
      [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        `rule_files: ["${RULES}"]`,
        'scrape_configs:',
        `  - job_name: postino-main`,
        `    static_configs: [{ targets: ["127.0.0.1:${main.httpPort}"] }]`,
        `  - job_name: postino-router`,
        `    static_configs: [{ targets: ["127.0.0.1:${router.httpPort}"] }]`,
      ].join('\n'),
    );
    prometheus = spawn(
      'prometheus',
      [
        `--config.file=${join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ],
      { stdio: 'ignore' },
    );
    await until(
      'prometheus to be ready',
      async () => (await fetch(`${promUrl}/-/ready`).catch(() => null))?.ok,
    );

    // Mail flows: local, remote, bounced, a refused recipient, a failed login, POP3 and IMAP
    // sessions, and a command no protocol knows.
    const api = (path: string, body: unknown) =>
      fetch(`http://127.0.0.1:${main.httpPort}${path}`, { method: 'POST', body: JSON.stringify(body) });
    await api('/api/domains', { name: 'example.test' });
    await api('/api/users', { address: 'alice@example.test', password: 'alice-password' });
    await api('/api/users', { address: 'bob@example.test', password: 'bob-password' });
    const submission = (pass: string) =>
      nodemailer.createTransport({
        host: '127.0.0.1',
        port: ports.submission,
        secure: false,
        ignoreTLS: true,
        auth: { user: 'alice@example.test', pass },
      });
    const traffic = async () => {
      const t = submission('alice-password');
      for (const to of ['bob@example.test', 'someone@remote.test', 'nobody@nullmx.test', 'later@down.test']) {
        const info = await t.sendMail({ from: 'alice@example.test', to, subject: 'watched', text: 'x' });
        queueIds.set(to, /queued as ([0-9A-Z]+)/.exec(info.response)?.[1] ?? '');
      }
      await assert.rejects(t.sendMail({ from: 'alice@example.test', to: 'ghost@example.test', text: 'x' }));
      await assert.rejects(
        submission('wrong').sendMail({ from: 'alice@example.test', to: 'bob@example.test', text: 'x' }),
      );
      await run('curl', ['-sS', '-u', 'bob@example.test:bob-password', `pop3://127.0.0.1:${ports.pop3}/`]);
      await run('curl', [
        '-sS',
        '-u',
        'bob@example.test:bob-password',
        `imap://127.0.0.1:${ports.imap}/INBOX;UID=1`,
      ]);
      await talk(ports.smtp, ['EHLO client.test', 'XYZZY', 'QUIT']);
      await talk(ports.imap, ['a1 XYZZY', 'a2 LOGOUT']);
    };
    const has = async (q: string) => ((await query(q)).data?.result.length ?? 0) > 0;
    // A counter's first sample already holds its first increments, so rate() only sees what comes
    // after a scrape: send the traffic once, let Prometheus see every series, then send it again.
    await traffic();
    await until('every series scraped', () =>
      has(
        'sum(postino_message_events_total{kind="bounced"}) and sum(postino_message_events_total{kind="delivered"}) and sum(postino_mailbox_rpc_seconds_count) and sum(postino_auth_failures_total) and sum(postino_message_events_total{kind="deferred"})',
      ),
    );
    await traffic();
    for (const q of [
      'sum(rate(postino_mailbox_rpc_seconds_count[5m])) > 0',
      'sum(rate(postino_auth_failures_total[5m])) > 0',
      'sum(rate(postino_message_events_total{kind="bounced"}[5m])) > 0',
      'sum(rate(postino_message_events_total{kind="delivered"}[5m])) > 0',
      'sum(rate(postino_message_events_total{kind="deferred"}[5m])) > 0',
      'sum(rate(postino_smtp_command_seconds_count[5m])) > 0',
      'sum(rate(postino_imap_command_seconds_count[5m])) > 0',
      'sum(rate(postino_pop3_command_seconds_count[5m])) > 0',
      'sum(rate(postino_delivery_attempts_total{domain="down.test"}[5m])) > 0',
    ]) {
      await until(`Prometheus to see ${q}`, () => has(q));
    }
  });

  after(async () => {
    prometheus?.kill('SIGKILL');
    await Promise.all([main?.stop(), router?.stop()]);
    sink?.close();
    greylist?.close();
    await Promise.all([nats?.cleanup(), redis?.cleanup(), dns?.cleanup()]);
  });

  test('promtool accepts the rules and their unit tests pass', async () => {
    const check = await run('promtool', ['check', 'rules', RULES]);
    assert.match(check.stdout, /SUCCESS: \d+ rules found/);
    const unit = await run('promtool', ['test', 'rules', 'postino-alerts.test.yaml'], {
      cwd: join(FILES, 'rules'),
    });
    assert.match(unit.stdout, /SUCCESS/);
  });

  test('every dashboard panel query returns data from the running services', async () => {
    const problems: string[] = [];
    for (const d of dashboards()) {
      for (const p of d.panels) {
        for (const t of p.targets) {
          const r = await query(t.expr);
          if (r.status !== 'success') problems.push(`${d.title} / ${p.title}: ${r.error}`);
          else if ((r.data?.result.length ?? 0) === 0)
            problems.push(`${d.title} / ${p.title}: no data for ${t.expr}`);
        }
      }
    }
    assert.deepEqual(problems, []);
  });

  test('command durations per protocol and command, with unknown commands counted as other', async () => {
    const commands = async (protocol: string) => {
      const r = await query(`count by (command) (postino_${protocol}_command_seconds_count)`);
      return (r.data?.result as { metric: { command: string } }[]).map((x) => x.metric.command).sort();
    };
    /** The command labels of a protocol, once the expected ones have been scraped. */
    const labelled = (protocol: string, expected: string[]) =>
      until(`${protocol} commands ${expected.join(', ')}`, async () => {
        const seen = await commands(protocol);
        return expected.every((c) => seen.includes(c)) ? seen : null;
      });
    const smtp = await labelled('smtp', ['EHLO', 'AUTH', 'MAIL', 'RCPT', 'DATA', 'QUIT', 'other']);
    assert.ok(!smtp.includes('XYZZY'), 'an unknown verb is no label of its own');
    const imap = await labelled('imap', ['SELECT', 'UID FETCH', 'LOGOUT', 'other']);
    assert.ok(!imap.includes('XYZZY'));
    const pop3 = await labelled('pop3', ['LIST', 'QUIT']);
    for (const name of [...smtp, ...imap, ...pop3]) assert.match(name, /^(?:[A-Z]+(?: [A-Z]+)?|other)$/);
    // The delivery dashboard splits attempts by destination domain.
    const domains = await query('sum by (domain) (postino_delivery_attempts_total)');
    const names = (domains.data?.result as { metric: { domain: string } }[]).map((x) => x.metric.domain);
    assert.ok(names.includes('remote.test') && names.includes('down.test'), names.join(', '));
  });

  test('every alert rule evaluates, and reads only metrics the services expose', async () => {
    const problems: string[] = [];
    for (const { alert, expr } of ruleExprs()) {
      const r = await query(expr);
      if (r.status !== 'success') problems.push(`${alert}: ${r.error}`);
      for (const m of metricsOf(expr)) {
        const s = await query(`count(${m})`);
        if ((s.data?.result.length ?? 0) === 0) problems.push(`${alert}: no series ${m}`);
      }
    }
    assert.deepEqual(problems, []);
    const rules = (await (await fetch(`${promUrl}/api/v1/rules`)).json()) as {
      data: { groups: { rules: { health: string; name: string; lastError?: string }[] }[] };
    };
    const unhealthy = rules.data.groups
      .flatMap((g) => g.rules)
      .filter((r) => r.health !== 'ok' && r.health !== 'unknown');
    assert.deepEqual(unhealthy, []);
  });

  test('a healthy cluster fires no alert', async () => {
    const alerts = (await (await fetch(`${promUrl}/api/v1/alerts`)).json()) as {
      data: { alerts: { labels: { alertname: string }; state: string }[] };
    };
    const firing = alerts.data.alerts.filter(
      (a) => a.state === 'firing' && a.labels.alertname !== 'PostinoCertificateExpiring',
    );
    assert.deepEqual(firing, []);
  });

  test('`postino trace` shows the hops of a delivered, a deferred and a bounced message', async () => {
    const trace = async (to: string) => {
      const { stdout } = await run(process.execPath, [POSTINO, 'trace', queueIds.get(to) ?? '?'], {
        env: { ...process.env, ADMIN_URL: `http://127.0.0.1:${main.httpPort}` },
      });
      return stdout
        .trim()
        .split('\n')
        .map((l) => ({ kind: l.split(/\s+/)[1], line: l }));
    };
    const kinds = async (to: string) => (await trace(to)).map((h) => h.kind);
    assert.deepEqual(await kinds('someone@remote.test'), ['received', 'routed', 'delivered']);
    const deferred = await trace('later@down.test');
    assert.deepEqual(deferred.map((h) => h.kind).slice(0, 3), ['received', 'routed', 'deferred']);
    assert.match(deferred[2]?.line ?? '', /451 4\.7\.1 Greylisted/);
    assert.match(deferred[2]?.line ?? '', /node=\S+ trace=[0-9a-f]{32}/);
    const bounced = await kinds('nobody@nullmx.test');
    // The router bounces at once (null MX); the bounce is followed too: routed back and filed for alice.
    assert.deepEqual(bounced, ['received', 'bounced', 'routed', 'stored']);
  });
});
