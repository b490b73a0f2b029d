/**
 * A whole Postino cluster on one machine, for fault tests: three nats-servers in a JetStream
 * cluster (streams with three replicas), a Redis primary with a replica, both with AOF fsynced on
 * every write, dnsmasq answering the MX of the remote domains, SMTP sinks standing for the remote
 * servers, and two or more replicas of every service as separate `postino run` processes on
 * distinct loopback addresses (127.0.1.<n>, as pods have distinct addresses).
 *
 * Every process can be killed (SIGKILL), stopped (SIGSTOP), continued and restarted on the same
 * ports and data, so a test can inject the faults a real cluster meets.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { freePort, startDns, until, waitForPort, type Proc } from '../helpers/servers.ts';
import { POSTINO } from '../helpers/postino.ts';

export const SERVICE_NAMES = [
  'smtp-ingress',
  'router',
  'delivery',
  'mailbox-store',
  'imap',
  'pop3',
  'admin',
] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

/** A process the harness can fault and bring back on the same ports and data. */
export class Managed {
  readonly name: string;
  readonly #start: () => ChildProcess;
  readonly #ready: () => Promise<void>;
  #child: ChildProcess | null = null;
  #exited: Promise<void> = Promise.resolve();
  #stderr = '';

  constructor(name: string, start: () => ChildProcess, ready: () => Promise<void>) {
    this.name = name;
    this.#start = start;
    this.#ready = ready;
  }

  get running(): boolean {
    const c = this.#child;
    return c !== null && c.exitCode === null && c.signalCode === null;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** The tail of what the process wrote to stderr (for failure messages). */
  get stderr(): string {
    return this.#stderr.slice(-4000);
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.#stderr = '';
    const child = this.#start();
    child.stderr?.on('data', (c: Buffer) => {
      this.#stderr = (this.#stderr + c.toString()).slice(-16_000);
    });
    this.#child = child;
    this.#exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await this.#ready();
    } catch (err) {
      throw new Error(`${this.name} did not start: ${(err as Error).message}\n${this.stderr}`, {
        cause: err,
      });
    }
  }

  /** Sends the signal and waits for the exit (SIGSTOP and SIGCONT return at once). */
  async signal(sig: NodeJS.Signals): Promise<void> {
    const c = this.#child;
    if (!c || !this.running) return;
    c.kill(sig);
    if (sig === 'SIGSTOP' || sig === 'SIGCONT') return;
    await this.#exited;
  }

  async kill(): Promise<void> {
    // A stopped process does not act on SIGTERM, but SIGKILL always ends it.
    await this.signal('SIGKILL');
  }

  async restart(): Promise<void> {
    await this.kill();
    await this.start();
  }
}

export interface SinkRecord {
  id: string;
  to: string[];
  /** The sending replica's address and port, and when the sink answered 250. */
  from: string;
  at: number;
  session: string;
  /** When the sending side closed this session (a SIGKILLed sender closes before reading the 250). */
  closedAt?: number;
}

/** A remote MX: an SMTP server on its own loopback address that records what it accepted. */
export class Sink {
  readonly host: string;
  readonly port: number;
  readonly received: SinkRecord[] = [];
  readonly #server: SMTPServer;

  private constructor(host: string, port: number, server: SMTPServer) {
    this.host = host;
    this.port = port;
    this.#server = server;
  }

  static async start(host: string, port: number): Promise<Sink> {
    let sink: Sink | null = null;
    const server = new SMTPServer({
      authOptional: true,
      maxAllowedUnauthenticatedCommands: Infinity,
      disabledCommands: ['STARTTLS'],
      logger: false,
      onClose(session) {
        for (const r of sink?.received ?? []) if (r.session === session.id) r.closedAt ??= Date.now();
      },
      onData(stream, session, cb) {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          const text = Buffer.concat(chunks).toString('latin1');
          const id = /^X-Load-Id: (\S+)/im.exec(text)?.[1] ?? '?';
          sink?.received.push({
            id,
            to: session.envelope.rcptTo.map((r) => r.address),
            from: `${session.remoteAddress}:${session.remotePort}`,
            at: Date.now(),
            session: session.id,
          });
          cb();
        });
      },
    });
    // A killed sender resets its connections: not the sink's failure.
    server.on('error', () => undefined);
    await new Promise<void>((resolve) => server.listen(port, host, () => resolve()));
    sink = new Sink(host, port, server);
    return sink;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

export interface ClusterOptions {
  /** Replicas of each service (default 2). */
  replicas?: number;
  /** Remote domains, each with its own sink (default 2). */
  remoteDomains?: number;
  /** The hosted domain. */
  localDomain?: string;
  /** Local users, user0..user<n-1>@localDomain (default 4). */
  localUsers?: number;
  /** Extra environment for every service. */
  env?: Record<string, string>;
}

export interface ServiceReplica {
  service: ServiceName;
  index: number;
  host: string;
  httpPort: number;
  proc: Managed;
}

export const PASSWORD = 'cluster-secret-1';

export class Cluster {
  readonly dir = mkdtempSync(join(tmpdir(), 'postino-cluster-'));
  readonly nats: Managed[] = [];
  readonly natsPorts: number[] = [];
  redis!: Managed;
  redisReplica!: Managed;
  redisPort = 0;
  dns!: Proc;
  readonly sinks: Sink[] = [];
  readonly services: ServiceReplica[] = [];
  readonly localDomain: string;
  readonly localUsers: string[];
  readonly remoteDomains: string[];
  /** Ports shared by every replica (each replica binds its own loopback address). */
  readonly ports = { smtp: 0, submission: 0, imap: 0, pop3: 0, smtps: 0, imaps: 0, pop3s: 0 };
  env: Record<string, string> = {};
  readonly #opts: Required<Omit<ClusterOptions, 'env'>> & { env: Record<string, string> };

  constructor(opts: ClusterOptions = {}) {
    this.#opts = {
      replicas: opts.replicas ?? 2,
      remoteDomains: opts.remoteDomains ?? 2,
      localDomain: opts.localDomain ?? 'local.test',
      localUsers: opts.localUsers ?? 4,
      env: opts.env ?? {},
    };
    this.localDomain = this.#opts.localDomain;
    this.localUsers = Array.from({ length: this.#opts.localUsers }, (_, i) => `user${i}@${this.localDomain}`);
    this.remoteDomains = Array.from({ length: this.#opts.remoteDomains }, (_, i) => `remote${i}.test`);
  }

  /** Replicas of one service. */
  replicas(service: ServiceName): ServiceReplica[] {
    return this.services.filter((s) => s.service === service);
  }

  replica(service: ServiceName, index = 0): ServiceReplica {
    const r = this.replicas(service)[index];
    if (!r) throw new Error(`no replica ${index} of ${service}`);
    return r;
  }

  /** Every process the harness runs, for a full restart. */
  get all(): Managed[] {
    return [...this.nats, this.redis, this.redisReplica, ...this.services.map((s) => s.proc)];
  }

  async start(): Promise<void> {
    await this.#startNats();
    await this.#startRedis();
    await this.#startSinksAndDns();
    for (const k of Object.keys(this.ports) as (keyof typeof this.ports)[]) this.ports[k] = await freePort();
    this.env = {
      POSTINO_HOSTNAME: 'mx.local.test',
      NATS_URL: this.natsPorts.map((p) => `nats://127.0.0.1:${p}`).join(','),
      NATS_STREAM_REPLICAS: '3',
      REDIS_URL: `redis://127.0.0.1:${this.redisPort}`,
      DNS_SERVERS: this.dns.url,
      DELIVERY_SMTP_PORT: String(this.sinks[0]?.port ?? 25),
      DELIVERY_RETRY_SCHEDULE: '1s,2s',
      DELIVERY_LEASE: '3s',
      PARTITIONS: '8',
      SMTP_PORT: String(this.ports.smtp),
      SUBMISSION_PORT: String(this.ports.submission),
      SMTPS_PORT: String(this.ports.smtps),
      IMAP_PORT: String(this.ports.imap),
      IMAPS_PORT: String(this.ports.imaps),
      POP3_PORT: String(this.ports.pop3),
      POP3S_PORT: String(this.ports.pop3s),
      // The load comes from one loopback address: per-client limits would throttle the test itself.
      SMTP_MAX_CONNECTIONS_PER_IP: '1000',
      SMTP_CONNECTION_RATE: '1000000',
      SMTP_MESSAGE_RATE: '1000000',
      SMTP_RECIPIENT_RATE: '1000000',
      MAIL_AUTH_CHECKS: 'false',
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      SHUTDOWN_GRACE: '5s',
      ...this.#opts.env,
    };
    let n = 0;
    for (const service of SERVICE_NAMES) {
      for (let i = 0; i < this.#opts.replicas; i++) {
        n++;
        const host = `127.0.1.${n}`;
        const httpPort = await freePort(host);
        const dataDir = join(this.dir, `${service}-${i}`);
        const env = {
          ...process.env,
          ...this.env,
          POSTINO_NODE: `${service}-${i}`,
          BIND_HOST: host,
          HTTP_HOST: host,
          HTTP_PORT: String(httpPort),
          POSTINO_DATA_DIR: dataDir,
        };
        const proc = new Managed(
          `${service}-${i}`,
          () =>
            spawn(process.execPath, [POSTINO, 'run', service], {
              env,
              // Each replica's JSON log, kept with the cluster's folder when CLUSTER_KEEP is set.
              stdio: ['ignore', openSync(join(this.dir, `${service}-${i}.log`), 'a'), 'pipe'],
            }),
          () => this.#readyz(host, httpPort, `${service}-${i}`),
        );
        this.services.push({ service, index: i, host, httpPort, proc });
      }
    }
    // The first replica of each service creates streams and consumers; the rest start together.
    await Promise.all(SERVICE_NAMES.map((s) => this.replica(s, 0).proc.start()));
    await Promise.all(this.services.filter((s) => s.index > 0).map((s) => s.proc.start()));
    await this.#provision();
  }

  async #readyz(host: string, port: number, name: string): Promise<void> {
    await until(
      `${name} to be ready`,
      async () => {
        const res = await fetch(`http://${host}:${port}/readyz`).catch(() => null);
        return res?.status === 200;
      },
      90_000,
    );
  }

  /** Waits until every running service answers /readyz; returns how long that took. */
  async ready(timeoutMs = 90_000): Promise<number> {
    const t0 = Date.now();
    await until(
      'every service to be ready',
      async () => {
        const states = await Promise.all(
          this.services.map(async (s) => {
            const res = await fetch(`http://${s.host}:${s.httpPort}/readyz`).catch(() => null);
            return res?.status === 200;
          }),
        );
        return states.every(Boolean);
      },
      timeoutMs,
    );
    return Date.now() - t0;
  }

  async #startNats(): Promise<void> {
    const clientPorts = [await freePort(), await freePort(), await freePort()];
    const routePorts = [await freePort(), await freePort(), await freePort()];
    const monitorPorts = [await freePort(), await freePort(), await freePort()];
    this.natsPorts.push(...clientPorts);
    const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`).join(',');
    for (let i = 0; i < 3; i++) {
      const dir = join(this.dir, `nats-${i}`);
      const port = clientPorts[i] ?? 0;
      this.nats.push(
        new Managed(
          `nats-${i}`,
          () =>
            spawn(
              '/usr/sbin/nats-server',
              [
                '-a',
                '127.0.0.1',
                '-p',
                String(port),
                '-m',
                String(monitorPorts[i]),
                '-js',
                '-sd',
                dir,
                '--server_name',
                `n${i}`,
                '--cluster_name',
                'postino',
                '--cluster',
                `nats://127.0.0.1:${routePorts[i]}`,
                '--routes',
                routes,
              ],
              { stdio: ['ignore', 'ignore', 'pipe'] },
            ),
          () => waitForPort('127.0.0.1', port),
        ),
      );
    }
    await Promise.all(this.nats.map((n) => n.start()));
    // JetStream is usable once the meta group has a leader.
    await until(
      'the JetStream cluster to elect a meta leader',
      async () => {
        const res = await fetch(`http://127.0.0.1:${monitorPorts[0]}/jsz`).catch(() => null);
        if (!res) return false;
        const body = (await res.json()) as { meta_cluster?: { leader?: string } };
        return Boolean(body.meta_cluster?.leader);
      },
      60_000,
    );
  }

  async #startRedis(): Promise<void> {
    this.redisPort = await freePort();
    const replicaPort = await freePort();
    const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always'];
    const primaryDir = join(this.dir, 'redis-0');
    const replicaDir = join(this.dir, 'redis-1');
    for (const d of [primaryDir, replicaDir]) mkdirSync(d, { recursive: true });
    this.redis = new Managed(
      'redis-0',
      () =>
        spawn('/usr/bin/redis-server', [...common, '--port', String(this.redisPort), '--dir', primaryDir], {
          stdio: ['ignore', 'ignore', 'pipe'],
        }),
      () => waitForPort('127.0.0.1', this.redisPort),
    );
    this.redisReplica = new Managed(
      'redis-1',
      () =>
        spawn(
          '/usr/bin/redis-server',
          [
            ...common,
            '--port',
            String(replicaPort),
            '--dir',
            replicaDir,
            '--replicaof',
            '127.0.0.1',
            String(this.redisPort),
          ],
          { stdio: ['ignore', 'ignore', 'pipe'] },
        ),
      () => waitForPort('127.0.0.1', replicaPort),
    );
    await this.redis.start();
    await this.redisReplica.start();
  }

  async #startSinksAndDns(): Promise<void> {
    const port = await freePort('127.0.0.2');
    const records: string[] = [];
    for (let i = 0; i < this.remoteDomains.length; i++) {
      const host = `127.0.0.${2 + i}`;
      const sink = await Sink.start(host, port);
      this.sinks.push(sink);
      const domain = this.remoteDomains[i] ?? '';
      records.push(`--mx-host=${domain},mx.${domain},10`, `--host-record=mx.${domain},${host}`);
    }
    this.dns = await startDns(records);
  }

  /** The admin API of the first running admin replica. */
  adminUrl(): string {
    const a = this.replicas('admin').find((r) => r.proc.running) ?? this.replica('admin');
    return `http://${a.host}:${a.httpPort}`;
  }

  async #provision(): Promise<void> {
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${this.adminUrl()}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (res.status >= 300 && res.status !== 409)
        throw new Error(`${path}: ${res.status} ${await res.text()}`);
    };
    await post('/api/domains', { name: this.localDomain });
    for (const u of this.localUsers) await post('/api/users', { address: u, password: PASSWORD });
  }

  /** The certificate the services generated (every replica has its own; the client does not verify). */
  certificate(service: ServiceName, index = 0): Buffer {
    return readFileSync(join(this.dir, `${service}-${index}`, 'tls', 'cert.pem'));
  }

  async stop(): Promise<void> {
    await Promise.all(this.services.map((s) => s.proc.kill()));
    await Promise.all([...this.nats, this.redis, this.redisReplica].filter(Boolean).map((p) => p.kill()));
    await Promise.all(this.sinks.map((s) => s.close()));
    await this.dns?.cleanup();
    if (process.env.CLUSTER_KEEP) console.log(`cluster folder kept: ${this.dir}`);
    else rmSync(this.dir, { recursive: true, force: true });
  }
}
