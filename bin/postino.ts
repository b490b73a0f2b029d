#!/usr/bin/env node
/**
 * The postino command.
 *   postino up                       every service in one process (the embedded default)
 *   postino run <service>...         the named services (smtp-ingress, router, delivery,
 *                                    mailbox-store, imap, pop3, admin)
 *   postino admin domain add|remove|list [<domain>]
 *   postino admin user add <address> [--password <p>]   (else the password is read from stdin)
 *   postino admin user remove|passwd <address> | list [<domain>]
 *   postino admin import <file|->   NDJSON of domains, users and aliases (services/admin/import.ts)
 *   postino trace <queue-id|message-id>
 *   postino queue list [<domain>] | retry|hold|release|delete <queue-id[:domain]> | --domain <domain>
 *   postino config                   the environment variables and their defaults
 */
import { ConfigError, configTable, loadConfig, redactUrl } from '../services/core/config.ts';

/** Service names, in start order (services/services.ts holds their start functions, loaded only to serve). */
const SERVICE_NAMES = ['mailbox-store', 'router', 'delivery', 'admin', 'imap', 'pop3', 'smtp-ingress'];
/** Started only by `postino run` (services/services.ts OPTIONAL_SERVICES), never by `postino up`. */
const OPTIONAL_SERVICE_NAMES = ['operator'];

const USAGE = `usage:
  postino up
  postino run <service>...        services: ${SERVICE_NAMES.join(', ')}, ${OPTIONAL_SERVICE_NAMES.join(', ')}
  postino admin domain add|remove <domain> | list
  postino admin domain catch-all <domain> <address|->
  postino admin domain alias <alias-domain> <domain>
  postino admin alias add <address> <target>... | remove <address> | list [<domain>]
  postino admin user add <address> [--password <password>] | remove <address> | passwd <address> | list [<domain>]
  postino admin dkim generate <domain> [--selector <selector>] | show <domain>
  postino admin import <file.ndjson | ->
  postino trace <queue-id|message-id>
  postino queue list [<domain>]
  postino queue retry|hold|release|delete <queue-id>[:<domain>] | --domain <domain>
  postino config`;

function fail(message: string, code = 1): never {
  process.stderr.write(`postino: ${message}\n`);
  process.exit(code);
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write('password: ');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

async function api(method: string, path: string, body?: unknown): Promise<unknown> {
  const config = loadConfig();
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (config.adminToken) headers.authorization = `Bearer ${config.adminToken}`;
  let res: Response;
  try {
    res = await fetch(new URL(path, config.adminUrl), {
      method,
      headers,
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (err) {
    fail(
      `cannot reach the admin API at ${config.adminUrl} (${(err as Error).cause ?? (err as Error).message}); is Postino running? set ADMIN_URL`,
    );
  }
  const data = (await res.json().catch(() => ({}))) as { error?: string };
  if (!res.ok) fail(data.error ?? `HTTP ${res.status}`);
  return data;
}

/** `postino admin import <file|->`: streams the NDJSON to POST /api/import and prints the summary. */
async function importFile(path: string | undefined): Promise<void> {
  if (!path) fail(USAGE, 2);
  const { createReadStream } = await import('node:fs');
  const { Readable } = await import('node:stream');
  const config = loadConfig();
  const headers: Record<string, string> = { 'content-type': 'application/x-ndjson' };
  if (config.adminToken) headers.authorization = `Bearer ${config.adminToken}`;
  const source = path === '-' ? process.stdin : createReadStream(path);
  const opened = new Promise<void>((resolve, reject) => {
    if (path === '-') return resolve();
    source.once('open', () => resolve());
    source.once('error', reject);
  });
  await opened.catch((err: unknown) => fail(`cannot read ${path}: ${(err as Error).message}`));
  let res: Response;
  try {
    res = await fetch(new URL('/api/import', config.adminUrl), {
      method: 'POST',
      headers,
      body: Readable.toWeb(source) as ReadableStream<Uint8Array>,
      duplex: 'half',
    } as RequestInit);
  } catch (err) {
    fail(
      `cannot reach the admin API at ${config.adminUrl} (${(err as Error).cause ?? (err as Error).message}); is Postino running? set ADMIN_URL`,
    );
  }
  const data = (await res.json().catch(() => ({}))) as {
    error?: string;
    lines?: number;
    domains?: { added: number; existing: number };
    users?: { added: number; existing: number };
    aliases?: { added: number };
    errorCount?: number;
    errors?: { line: number; error: string }[];
  };
  if (!res.ok) fail(data.error ?? `HTTP ${res.status}`);
  console.log(
    `imported ${data.lines ?? 0} lines: domains ${data.domains?.added ?? 0} added (${data.domains?.existing ?? 0} existed), ` +
      `users ${data.users?.added ?? 0} added (${data.users?.existing ?? 0} existed), aliases ${data.aliases?.added ?? 0} added, ` +
      `${data.errorCount ?? 0} errors`,
  );
  for (const e of data.errors ?? []) console.log(`  line ${e.line}: ${e.error}`);
  if ((data.errorCount ?? 0) > 0) process.exitCode = 1;
}

async function admin(args: string[]): Promise<void> {
  const [what, verb, name, ...rest] = args;
  const enc = encodeURIComponent;
  if (what === 'import') return importFile(verb);
  if (what === 'domain') {
    if (verb === 'list') {
      const r = (await api('GET', '/api/domains')) as { domains: string[] };
      for (const d of r.domains) console.log(d);
      return;
    }
    if (!name) fail(USAGE, 2);
    if (verb === 'add')
      return void console.log(
        `added domain ${((await api('POST', '/api/domains', { name })) as { name: string }).name}`,
      );
    if (verb === 'remove')
      return void (await api('DELETE', `/api/domains/${enc(name)}`), console.log(`removed domain ${name}`));
  }
  if (what === 'alias') {
    if (verb === 'list') {
      const r = (await api('GET', `/api/aliases${name ? `?domain=${enc(name)}` : ''}`)) as {
        aliases: { alias: string; targets: string[] }[];
      };
      for (const a of r.aliases) console.log(`${a.alias} -> ${a.targets.join(', ')}`);
      return;
    }
    if (!name) fail(USAGE, 2);
    if (verb === 'add' && rest.length > 0) {
      await api('POST', '/api/aliases', { alias: name, targets: rest });
      return void console.log(`added alias ${name} -> ${rest.join(', ')}`);
    }
    if (verb === 'remove')
      return void (await api('DELETE', `/api/aliases/${enc(name)}`), console.log(`removed alias ${name}`));
  }
  if (what === 'dkim' && name && (verb === 'generate' || verb === 'show')) {
    // DKIM key of a hosted domain: prints the DNS TXT record to publish (services/admin/dkim.ts).
    const i = rest.indexOf('--selector');
    const r = (
      verb === 'generate'
        ? await api('POST', `/api/domains/${enc(name)}/dkim`, i >= 0 ? { selector: rest[i + 1] } : {})
        : await api('GET', `/api/domains/${enc(name)}/dkim`)
    ) as { name: string; strings: string[] };
    return void console.log(`${r.name}. IN TXT ${r.strings.map((x) => `"${x}"`).join(' ')}`);
  }
  if (what === 'user') {
    if (verb === 'list') {
      const r = (await api('GET', `/api/users${name ? `?domain=${enc(name)}` : ''}`)) as {
        users: { address: string }[];
      };
      for (const u of r.users) console.log(u.address);
      return;
    }
    if (!name) fail(USAGE, 2);
    if (verb === 'add' || verb === 'passwd') {
      const i = rest.indexOf('--password');
      const password = i >= 0 ? rest[i + 1] : await readStdin();
      if (!password) fail('a password is needed: --password <password> or on standard input');
      if (verb === 'add') {
        const r = (await api('POST', '/api/users', { address: name, password })) as { address: string };
        return void console.log(`added user ${r.address}`);
      }
      await api('PUT', `/api/users/${enc(name)}/password`, { password });
      return void console.log(`changed the password of ${name}`);
    }
    if (verb === 'remove')
      return void (await api('DELETE', `/api/users/${enc(name)}`), console.log(`removed user ${name}`));
  }
  fail(USAGE, 2);
}

async function trace(id: string | undefined): Promise<void> {
  if (!id) fail(USAGE, 2);
  const r = (await api('GET', `/api/trace/${encodeURIComponent(id)}`)) as {
    events: {
      at: string;
      kind: string;
      queueId: string;
      recipient: string;
      service: string;
      node: string;
      detail: string;
      traceId: string;
    }[];
  };
  if (r.events.length === 0) fail(`no events for ${id}`);
  for (const e of r.events) {
    console.log(
      `${e.at}  ${e.kind.padEnd(9)} ${e.queueId.padEnd(18)} ${e.service.padEnd(13)} ${e.recipient}  ${e.detail}  node=${e.node} trace=${e.traceId}`,
    );
  }
}

/** Queue control: deferred and held messages, per message or per destination domain. */
async function queue(args: string[]): Promise<void> {
  const [verb, target, value] = args;
  if (verb === 'list') {
    const r = (await api('GET', `/api/queue${target ? `?domain=${encodeURIComponent(target)}` : ''}`)) as {
      entries: {
        id: string;
        state: string;
        attempts: number;
        nextAttempt: string | null;
        mailFrom: string;
        recipients: string[];
        lastError: string;
      }[];
    };
    for (const e of r.entries) {
      console.log(
        `${e.id.padEnd(32)} ${e.state.padEnd(8)} attempts=${e.attempts} next=${e.nextAttempt ?? '-'} from=<${e.mailFrom}> to=${e.recipients.join(',')}\n    ${e.lastError}`,
      );
    }
    return;
  }
  if (!verb || !['retry', 'hold', 'release', 'delete'].includes(verb) || !target) fail(USAGE, 2);
  const body =
    target === '--domain'
      ? { domain: value ?? fail(USAGE, 2) }
      : target.includes(':')
        ? { id: target }
        : { queueId: target };
  const r = (await api('POST', `/api/queue/${verb}`, body)) as { changed: number };
  console.log(`${verb}: ${r.changed} queue ${r.changed === 1 ? 'entry' : 'entries'}`);
}

async function serve(names: string[], embedded: boolean): Promise<void> {
  // One process runs the mailbox-store too: the front ends run its scripts themselves unless told
  // otherwise (services/mailbox-store/access.ts). Set before the worker threads copy the environment.
  if (embedded) process.env.MAILBOX_ACCESS ??= 'direct';
  const config = loadConfig();
  const [
    { runServices, stopOnSignals },
    { ensureBackends },
    { createLogger },
    { SERVICES, OPTIONAL_SERVICES },
    { planThreads, runThreaded },
    { availableParallelism },
  ] = await Promise.all([
    import('../services/core/runtime.ts'),
    import('../services/core/embedded.ts'),
    import('../services/core/log.ts'),
    import('../services/services.ts'),
    import('../services/core/threads.ts'),
    import('node:os'),
  ]);
  const logger = createLogger(config.logLevel, { services: 'postino' });
  const backends = embedded
    ? await ensureBackends(config.natsUrl, config.redisUrl, config.dataDir, logger)
    : undefined;
  const table = { ...SERVICES, ...OPTIONAL_SERVICES };
  // `postino up` spreads its services over threads (services/core/threads.ts); `postino run` keeps
  // the named services on one thread, as a replica in a cluster does.
  const multicore = availableParallelism() >= 2;
  const threads = embedded ? config.upThreads || (multicore ? 3 : 1) : 1;
  // Threads share the SMTP ports they are given; an ephemeral port (0) would be one of its own each.
  const fixedPorts = config.smtpPort > 0 && config.submissionPort > 0;
  const smtpThreads = fixedPorts ? config.upSmtpThreads || (multicore ? 2 : 1) : 1;
  const plan = planThreads(names, threads, smtpThreads);
  const onThreadFailure = (err: Error) => {
    logger.fatal({ err }, 'a service thread failed; stopping');
    void backends?.stop().finally(() => process.exit(1));
  };
  const startup = (
    plan.groups.length > 1
      ? runThreaded(config, plan, table, onThreadFailure)
      : runServices(config, names, table)
  ).catch(async (err: unknown) => {
    await backends?.stop();
    throw err;
  });
  stopOnSignals(startup, config.shutdownGrace, async () => backends?.stop());
  const running = await startup;
  if (embedded) {
    const c = config;
    process.stderr.write(
      `\nPostino is up (${names.length} services in one process, on ${plan.groups.length} thread${plan.groups.length === 1 ? '' : 's'}):\n` +
        `  SMTP        ${c.bindHost}:${c.smtpPort}  (incoming mail)\n` +
        `  Submission  ${c.bindHost}:${c.submissionPort}  (AUTH PLAIN/LOGIN)\n` +
        `  IMAP        ${c.bindHost}:${c.imapPort}\n` +
        `  POP3        ${c.bindHost}:${c.pop3Port}\n` +
        `  HTTP        http://${c.httpHost}:${running.runtime.http.port}  (/api, /metrics, /healthz, /readyz)\n` +
        `  NATS ${redactUrl(c.natsUrl)}   Redis ${redactUrl(c.redisUrl)}\n\n`,
    );
  }
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case 'up':
      return serve(SERVICE_NAMES, true);
    case 'run': {
      if (args.length === 0) fail(USAGE, 2);
      for (const n of args)
        if (!SERVICE_NAMES.includes(n) && !OPTIONAL_SERVICE_NAMES.includes(n))
          fail(
            `unknown service ${n}; services: ${[...SERVICE_NAMES, ...OPTIONAL_SERVICE_NAMES].join(', ')}`,
            2,
          );
      return serve(args, false);
    }
    case 'admin':
      return admin(args);
    case 'trace':
      return trace(args[0]);
    case 'queue':
      return queue(args);
    case 'config':
      return void console.log(configTable());
    default:
      fail(USAGE, 2);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError) fail(err.message, 78);
  fail((err as Error).stack ?? String(err));
});
