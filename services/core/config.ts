/**
 * One typed configuration schema, read once from the environment at start.
 *
 * Every setting has a variable name, a parser and a default; a bad value fails at start with the
 * variable's name and what was expected (ConfigError). Services receive the parsed object; nothing
 * else reads process.env.
 */
import { PROXY_LISTENERS } from './net.ts';
import { TrustedSources } from './proxy-protocol.ts';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Parser<T> = (raw: string, name: string) => T;

interface Setting<T> {
  env: string;
  parse: Parser<T>;
  /** Default when the variable is unset; `undefined` makes the variable required. */
  default: T | undefined;
  doc: string;
}

function setting<T>(env: string, parse: Parser<T>, def: T | undefined, doc: string): Setting<T> {
  return { env, parse, default: def, doc };
}

const str: Parser<string> = (raw) => raw;

const int =
  (min: number, max: number): Parser<number> =>
  (raw, name) => {
    if (!/^-?\d+$/.test(raw.trim()))
      throw new ConfigError(`${name}: expected an integer, got ${JSON.stringify(raw)}`);
    const n = Number(raw);
    if (n < min || n > max)
      throw new ConfigError(`${name}: expected an integer from ${min} to ${max}, got ${n}`);
    return n;
  };

const port: Parser<number> = int(0, 65535);

const bool: Parser<boolean> = (raw, name) => {
  const v = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  throw new ConfigError(`${name}: expected true or false, got ${JSON.stringify(raw)}`);
};

/** Sizes such as 25MiB, 512k, 1048576. */
const size: Parser<number> = (raw, name) => {
  const m = /^(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?$/i.exec(raw.trim());
  if (!m)
    throw new ConfigError(`${name}: expected a size such as 25MiB or 1048576, got ${JSON.stringify(raw)}`);
  const unit = (m[2] ?? '').toLowerCase()[0];
  const mult = unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1;
  return Number(m[1]) * mult;
};

/** Durations such as 30s, 5m, 250ms, 2h, or plain milliseconds. */
const duration: Parser<number> = (raw, name) => {
  const m = /^(\d+)\s*(ms|s|m|h|d)?$/.exec(raw.trim());
  if (!m)
    throw new ConfigError(
      `${name}: expected a duration such as 30s, 5m or 250ms, got ${JSON.stringify(raw)}`,
    );
  const unit = m[2] ?? 'ms';
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[unit] ?? 1;
  return Number(m[1]) * mult;
};

const url =
  (...protocols: string[]): Parser<string> =>
  (raw, name) => {
    for (const part of raw.split(',')) {
      let u: URL;
      try {
        u = new URL(part.trim());
      } catch {
        throw new ConfigError(
          `${name}: expected a URL (${protocols.join(', ')}), got ${JSON.stringify(raw)}`,
        );
      }
      if (!protocols.includes(u.protocol.replace(/:$/, ''))) {
        throw new ConfigError(
          `${name}: expected a ${protocols.join(' or ')} URL, got ${JSON.stringify(raw)}`,
        );
      }
    }
    return raw;
  };

const list: Parser<string[]> = (raw) =>
  raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

const hostPortList: Parser<string[]> = (raw, name) => {
  const items = list(raw, name);
  for (const item of items) {
    if (!/^(\[[0-9a-f:.]+\]|[0-9a-z.:-]+)(:\d+)?$/i.test(item)) {
      throw new ConfigError(
        `${name}: expected host[:port] entries separated by commas, got ${JSON.stringify(item)}`,
      );
    }
  }
  return items;
};

/** Addresses or CIDRs (PROXY_PROTOCOL_TRUSTED). */
const cidrList: Parser<string[]> = (raw, name) => {
  const items = list(raw, name);
  try {
    new TrustedSources(items);
  } catch (err) {
    throw new ConfigError(`${name}: ${(err as Error).message}`);
  }
  return items;
};

const proxyListenerList: Parser<string[]> = (raw, name) => {
  const items = list(raw, name);
  for (const item of items) {
    if (!(PROXY_LISTENERS as readonly string[]).includes(item))
      throw new ConfigError(
        `${name}: expected listener names among ${PROXY_LISTENERS.join(', ')}, got ${JSON.stringify(item)}`,
      );
  }
  return items;
};

const logLevel: Parser<string> = (raw, name) => {
  const levels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
  if (!levels.includes(raw))
    throw new ConfigError(`${name}: expected one of ${levels.join(', ')}, got ${JSON.stringify(raw)}`);
  return raw;
};

const mailboxAccess: Parser<'rpc' | 'direct'> = (raw, name) => {
  if (raw !== 'rpc' && raw !== 'direct')
    throw new ConfigError(`${name}: expected rpc or direct, got ${JSON.stringify(raw)}`);
  return raw;
};

/** The schema: every variable Postino reads. The README's configuration table is generated from `doc`. */
export const schema = {
  nodeName: setting(
    'POSTINO_NODE',
    str,
    '',
    'Name of this instance in logs and lease owners (default: host name and pid)',
  ),
  hostname: setting(
    'POSTINO_HOSTNAME',
    str,
    'localhost',
    'Host name in SMTP banners, Received headers and bounces',
  ),
  dataDir: setting(
    'POSTINO_DATA_DIR',
    str,
    './data',
    'Where the embedded nats-server and redis-server keep their data',
  ),
  natsUrl: setting(
    'NATS_URL',
    url('nats', 'tls'),
    'nats://127.0.0.1:4222',
    'NATS server URL(s), comma-separated; may carry `user:password@` or `token@`; `tls://` requires TLS',
  ),
  natsUser: setting(
    'NATS_USER',
    str,
    '',
    'NATS user (with NATS_PASSWORD), instead of credentials in NATS_URL',
  ),
  natsPassword: setting('NATS_PASSWORD', str, '', 'Password of NATS_USER'),
  natsCredsFile: setting(
    'NATS_CREDS_FILE',
    str,
    '',
    'NATS credentials file (JWT and nkey seed) for decentralized auth; takes precedence over users and tokens',
  ),
  natsNkeySeedFile: setting(
    'NATS_NKEY_SEED_FILE',
    str,
    '',
    'File holding the nkey seed (SU...) the client signs the server nonce with',
  ),
  natsTlsCaFile: setting(
    'NATS_TLS_CA_FILE',
    str,
    '',
    'PEM CA certificates the NATS server certificate must chain to (setting it requires TLS)',
  ),
  natsTlsCertFile: setting(
    'NATS_TLS_CERT_FILE',
    str,
    '',
    'PEM client certificate for NATS servers that verify clients',
  ),
  natsTlsKeyFile: setting('NATS_TLS_KEY_FILE', str, '', 'PEM private key of NATS_TLS_CERT_FILE'),
  natsReplicas: setting(
    'NATS_STREAM_REPLICAS',
    int(1, 5),
    1,
    'Replicas of each JetStream stream (3 in a cluster)',
  ),
  redisUrl: setting(
    'REDIS_URL',
    url('redis', 'rediss'),
    'redis://127.0.0.1:6379',
    'Redis URL; `redis://user:password@host` for an ACL user, `rediss://` for TLS',
  ),
  redisTlsCaFile: setting(
    'REDIS_TLS_CA_FILE',
    str,
    '',
    'PEM CA certificates the Redis server certificate must chain to (rediss:// URLs)',
  ),
  redisTlsCertFile: setting(
    'REDIS_TLS_CERT_FILE',
    str,
    '',
    'PEM client certificate for Redis servers with tls-auth-clients (rediss:// URLs)',
  ),
  redisTlsKeyFile: setting('REDIS_TLS_KEY_FILE', str, '', 'PEM private key of REDIS_TLS_CERT_FILE'),
  redisPrefix: setting('REDIS_PREFIX', str, 'postino:', 'Prefix of every Redis key (inside hash tags)'),
  mailboxJournalMax: setting(
    'MAILBOX_JOURNAL_MAX',
    int(100, 10_000_000),
    10_000,
    'Expunged UIDs kept per folder for QRESYNC (RFC 7162 3.2.5); a client further behind resyncs in full',
  ),
  blobGcGrace: setting(
    'BLOB_GC_GRACE',
    duration,
    86_400_000,
    'How long a body stays in the blob store after its last holder (mailbox or queue entry) and its last put',
  ),
  mailboxOverQuotaRetry: setting(
    'MAILBOX_OVERQUOTA_RETRY',
    duration,
    15 * 60_000,
    'Delay before a LOCAL delivery to a full mailbox is tried again (452 4.2.2)',
  ),
  httpPort: setting('HTTP_PORT', port, 8080, 'HTTP port of /healthz, /readyz, /metrics and the admin API'),
  httpHost: setting('HTTP_HOST', str, '0.0.0.0', 'Address the HTTP port binds to'),
  bindHost: setting('BIND_HOST', str, '0.0.0.0', 'Address the SMTP, IMAP and POP3 ports bind to'),
  smtpPort: setting('SMTP_PORT', port, 2525, 'SMTP port for incoming mail (25 in production)'),
  submissionPort: setting(
    'SUBMISSION_PORT',
    port,
    2587,
    'SMTP submission port with AUTH (587 in production)',
  ),
  smtpsPort: setting(
    'SMTPS_PORT',
    port,
    2465,
    'SMTP submission port with implicit TLS (465 in production; 0: off)',
  ),
  smtpIdleTimeout: setting(
    'SMTP_IDLE_TIMEOUT',
    duration,
    5 * 60_000,
    'SMTP inactivity timeout (RFC 5321 4.5.3.2.7: at least 5m)',
  ),
  smtpSessionTimeout: setting(
    'SMTP_SESSION_TIMEOUT',
    duration,
    30 * 60_000,
    'Longest SMTP session, whatever it does',
  ),
  smtpAcceptTimeout: setting(
    'SMTP_ACCEPT_TIMEOUT',
    duration,
    30_000,
    'Longest wait for the blob store and JetStream before answering 451 4.3.0',
  ),
  smtpMaxConnections: setting(
    'SMTP_MAX_CONNECTIONS',
    int(1, 1_000_000),
    2000,
    'Open SMTP sessions per ingress replica (421 past it)',
  ),
  smtpMaxConnectionsPerIp: setting(
    'SMTP_MAX_CONNECTIONS_PER_IP',
    int(1, 1_000_000),
    50,
    'Open SMTP sessions per client IP per replica (421 past it)',
  ),
  smtpReusePort: setting(
    'SMTP_REUSE_PORT',
    bool,
    false,
    'Listen on the SMTP ports with SO_REUSEPORT, so that several ingress replicas on one host share them and the kernel spreads connections over them (`postino up` sets it for its SMTP threads)',
  ),
  smtpConnectionRate: setting(
    'SMTP_CONNECTION_RATE',
    int(1, 1_000_000),
    600,
    'SMTP connections per client IP per minute, across replicas (421 past it)',
  ),
  smtpMessageRate: setting(
    'SMTP_MESSAGE_RATE',
    int(1, 1_000_000),
    600,
    'Messages per client IP and per user per minute, across replicas (451 past it)',
  ),
  smtpRecipientRate: setting(
    'SMTP_RECIPIENT_RATE',
    int(1, 1_000_000),
    6000,
    'Recipients per client IP and per user per minute, across replicas (451 past it)',
  ),
  smtpAuthFailures: setting(
    'SMTP_AUTH_FAILURES',
    int(1, 1_000_000),
    10,
    'AUTH failures per client IP and per account in 15 minutes before SMTP, IMAP and POP3 refuse AUTH',
  ),
  submissionSenderCheck: setting(
    'SUBMISSION_SENDER_CHECK',
    bool,
    true,
    'On submission, MAIL FROM must be the user or one of their aliases',
  ),
  mailAuthChecks: setting(
    'MAIL_AUTH_CHECKS',
    bool,
    true,
    'Check SPF, DKIM and DMARC of mail on the SMTP port (Authentication-Results)',
  ),
  dmarcReject: setting(
    'DMARC_REJECT',
    bool,
    true,
    'Reject (550 5.7.1) mail failing DMARC when the policy is p=reject',
  ),
  smtpTrustedNetworks: setting(
    'SMTP_TRUSTED_NETWORKS',
    list,
    ['127.0.0.0/8', '::1/128'],
    'Client networks whose mail skips SPF/DKIM/DMARC checks (none: no network)',
  ),
  imapPort: setting('IMAP_PORT', port, 1143, 'IMAP port (143 in production)'),
  imapsPort: setting('IMAPS_PORT', port, 1993, 'IMAP port with implicit TLS (993 in production; 0: off)'),
  pop3Port: setting('POP3_PORT', port, 1110, 'POP3 port (110 in production)'),
  pop3sPort: setting('POP3S_PORT', port, 1995, 'POP3 port with implicit TLS (995 in production; 0: off)'),
  tlsCertFile: setting(
    'TLS_CERT_FILE',
    str,
    '',
    'PEM certificate chain for every TLS port (reloaded on change)',
  ),
  tlsKeyFile: setting(
    'TLS_KEY_FILE',
    str,
    '',
    'PEM private key of TLS_CERT_FILE (default: a generated self-signed pair)',
  ),
  allowPlaintextAuth: setting(
    'ALLOW_PLAINTEXT_AUTH',
    bool,
    false,
    'Accept passwords without TLS from non-loopback clients (loopback is always accepted)',
  ),
  maxMessageSize: setting(
    'MAX_MESSAGE_SIZE',
    size,
    25 * 1024 * 1024,
    'Largest message accepted (SIZE), in octets',
  ),
  maxRecipients: setting('MAX_RECIPIENTS', int(1, 100_000), 100, 'Most recipients per message (452 past it)'),
  dnsServers: setting(
    'DNS_SERVERS',
    hostPortList,
    [],
    'DNS servers for MX lookups (default: the system resolver)',
  ),
  deliveryPort: setting(
    'DELIVERY_SMTP_PORT',
    port,
    25,
    'TCP port of remote MX hosts (25; other values for tests)',
  ),
  deliveryHelo: setting(
    'DELIVERY_HELO',
    str,
    '',
    'Name sent in EHLO to remote servers (default: POSTINO_HOSTNAME)',
  ),
  deliveryTimeout: setting(
    'DELIVERY_TIMEOUT',
    duration,
    5 * 60_000,
    'Timeout of each SMTP step to a remote server',
  ),
  deliveryRetries: setting(
    'DELIVERY_RETRY_SCHEDULE',
    (raw, name) => list(raw, name).map((d) => duration(d, name)),
    [60_000, 5 * 60_000, 15 * 60_000, 30 * 60_000, 60 * 60_000, 2 * 3_600_000, 4 * 3_600_000],
    'Delays between delivery attempts; the last one repeats until the message expires',
  ),
  deliveryExpiry: setting(
    'DELIVERY_EXPIRY',
    duration,
    5 * 86_400_000,
    'How long to retry before bouncing (5 days)',
  ),
  deliveryDelayWarning: setting(
    'DELIVERY_DELAY_WARNING',
    duration,
    4 * 3_600_000,
    'Send a delay warning (DSN, Action: delayed) once a message has waited this long (0: never)',
  ),
  deliveryLease: setting(
    'DELIVERY_LEASE',
    duration,
    10_000,
    "Lease time of a delivery partition: a dead replica's partitions move after at most this",
  ),
  deliveryDomainConcurrency: setting(
    'DELIVERY_DOMAIN_CONCURRENCY',
    int(1, 1000),
    10,
    'SMTP sessions open at once to one destination domain',
  ),
  deliveryDomainRate: setting(
    'DELIVERY_DOMAIN_RATE',
    int(0, 100_000),
    0,
    'Most SMTP transactions per second to one destination domain (0: no limit)',
  ),
  deliverySmarthost: setting(
    'DELIVERY_SMARTHOST',
    str,
    '',
    'Relay host for outbound mail: smtp://[user:pass@]host[:port] (STARTTLS required) or smtps:// (implicit TLS)',
  ),
  deliveryPolicy: setting(
    'DELIVERY_POLICY',
    list,
    [],
    'Per-domain delivery policy, e.g. bank.test:require-tls,corp.test:smarthost,*:smarthost',
  ),
  deliveryMtaSts: setting(
    'DELIVERY_MTA_STS',
    bool,
    true,
    'Fetch, cache and apply the MTA-STS policies of destination domains (RFC 8461)',
  ),
  deliveryTlsCaFile: setting(
    'DELIVERY_TLS_CA_FILE',
    str,
    '',
    'PEM CA certificates trusted for outbound TLS (verify-tls, MTA-STS, smarthost) besides the system roots',
  ),
  retrSetsSeen: setting('POP3_RETR_SETS_SEEN', bool, true, 'POP3 RETR marks the message \\Seen for IMAP'),
  pop3IdleTimeout: setting(
    'POP3_IDLE_TIMEOUT',
    duration,
    10 * 60_000,
    'POP3 inactivity timeout (RFC 1939: at least 10m)',
  ),
  pop3MaxConnectionsPerIp: setting(
    'POP3_MAX_CONNECTIONS_PER_IP',
    int(1, 1_000_000),
    50,
    'Open POP3 sessions per client IP per replica (-ERR [SYS/TEMP] past it)',
  ),
  pop3LockLease: setting(
    'POP3_LOCK_LEASE',
    duration,
    30_000,
    'Lease of a POP3 maildrop lock: the lock of a crashed replica frees after it',
  ),
  imapIdleTimeout: setting(
    'IMAP_IDLE_TIMEOUT',
    duration,
    30 * 60_000,
    'IMAP inactivity timeout (RFC 3501: at least 30m)',
  ),
  imapMaxConnections: setting(
    'IMAP_MAX_CONNECTIONS',
    int(1, 10_000_000),
    20_000,
    'Open IMAP sessions per replica, all clients together (* BYE [UNAVAILABLE] past it)',
  ),
  imapMaxConnectionsPerIp: setting(
    'IMAP_MAX_CONNECTIONS_PER_IP',
    int(1, 1_000_000),
    50,
    'Open IMAP sessions per client IP per replica (* BYE [UNAVAILABLE] past it)',
  ),
  authCacheTtl: setting(
    'AUTH_CACHE_TTL',
    duration,
    300_000,
    'How long a verified login (user, password, stored hash) skips scrypt on the same replica; 0: off',
  ),
  adminToken: setting(
    'ADMIN_TOKEN',
    str,
    '',
    'Bearer token the admin API requires (empty: only loopback clients)',
  ),
  adminUrl: setting(
    'ADMIN_URL',
    url('http', 'https'),
    'http://127.0.0.1:8080',
    'Where the postino CLI finds the admin API',
  ),
  logLevel: setting(
    'LOG_LEVEL',
    logLevel,
    'info',
    'Log level: fatal, error, warn, info, debug, trace, silent',
  ),
  shutdownGrace: setting('SHUTDOWN_GRACE', duration, 25_000, 'Time given to in-flight work on SIGTERM'),
  mailboxAccess: setting(
    'MAILBOX_ACCESS',
    mailboxAccess,
    'rpc',
    'How imap, pop3 and admin reach mailboxes: rpc (mbox.rpc.* to the mailbox-store replicas) or direct (the same scripts run in this process, a replica of its own); `postino up` defaults to direct',
  ),
  upThreads: setting(
    'UP_THREADS',
    int(0, 3),
    0,
    '`postino up`: threads the services run on (1: one; 2: mail pipeline apart; 3: SMTP ingress apart too; 0: 3 when the machine has 2+ cores)',
  ),
  upSmtpThreads: setting(
    'UP_SMTP_THREADS',
    int(0, 16),
    0,
    '`postino up` with the SMTP door on threads of its own (UP_THREADS 3): how many threads share its ports (SO_REUSEPORT), each an ingress replica with its own limits; 0: 2 when the machine has 2+ cores',
  ),
  upPipelineNice: setting(
    'UP_PIPELINE_NICE',
    int(0, 19),
    19,
    '`postino up` on Linux: how much lower the mail pipeline thread runs than the doors (nice) while it has a backlog, so that a burst is accepted first and filed right after; 0 for equal shares',
  ),
  partitions: setting(
    'PARTITIONS',
    int(1, 4096),
    64,
    'Partitions of LOCAL and OUTBOUND subjects (fixed for a cluster)',
  ),
  proxyTrusted: setting(
    'PROXY_PROTOCOL_TRUSTED',
    cidrList,
    [],
    'Load balancer CIDRs whose connections must start with a PROXY protocol v1/v2 header (empty: off)',
  ),
  proxyListeners: setting(
    'PROXY_PROTOCOL_LISTENERS',
    proxyListenerList,
    [...PROXY_LISTENERS],
    'Listeners that take the PROXY header from PROXY_PROTOCOL_TRUSTED',
  ),
  proxyTimeout: setting(
    'PROXY_PROTOCOL_TIMEOUT',
    (raw, name) => {
      const ms = duration(raw, name);
      if (ms < 1000) throw new ConfigError(`${name}: expected at least 1s, got ${JSON.stringify(raw)}`);
      return ms;
    },
    10_000,
    'Time a trusted balancer gets to send its PROXY header before the connection is closed',
  ),
  operatorNamespace: setting(
    'OPERATOR_NAMESPACE',
    str,
    '',
    'Namespace the operator watches (default: its own, from the service account)',
  ),
  operatorResync: setting(
    'OPERATOR_RESYNC',
    duration,
    300_000,
    'Operator: full re-list and reconcile of every MailDomain and MailUser, on top of the watch',
  ),
  operatorLease: setting(
    'OPERATOR_LEASE_DURATION',
    duration,
    15_000,
    'Operator: leader Lease duration; a standby takes over after at most this',
  ),
  operatorLeaseName: setting(
    'OPERATOR_LEASE_NAME',
    str,
    'postino-operator',
    'Operator: name of the coordination.k8s.io Lease its replicas elect a leader with',
  ),
};

type Schema = typeof schema;
export type Config = { [K in keyof Schema]: Schema[K] extends Setting<infer T> ? T : never };

/** Parses the environment; throws ConfigError naming every bad or missing variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const out: Record<string, unknown> = {};
  const errors: string[] = [];
  for (const [key, s] of Object.entries(schema) as [string, Setting<unknown>][]) {
    const raw = env[s.env];
    if (raw === undefined || raw === '') {
      if (s.default === undefined) errors.push(`${s.env}: required (${s.doc})`);
      else out[key] = s.default;
      continue;
    }
    try {
      out[key] = s.parse(raw, s.env);
    } catch (err) {
      errors.push(err instanceof Error ? err.message : String(err));
    }
  }
  if (errors.length > 0) throw new ConfigError(`invalid configuration:\n  ${errors.join('\n  ')}`);
  return out as Config;
}

/** URL(s) as they may be shown: the password (or token) of each replaced by `***`. */
export function redactUrl(urls: string): string {
  return urls
    .split(',')
    .map((raw) => {
      try {
        const u = new URL(raw.trim());
        if (u.password) u.password = '***';
        else if (u.username) u.username = '***';
        return u.href.replace(/\/$/, '');
      } catch {
        return '***';
      }
    })
    .join(',');
}

/** Markdown table of every variable, for the README. */
export function configTable(): string {
  const rows = Object.values(schema).map((s: Setting<unknown>) => {
    const def =
      s.default === undefined
        ? '(required)'
        : Array.isArray(s.default)
          ? s.default.join(',')
          : String(s.default);
    return `| \`${s.env}\` | \`${def}\` | ${s.doc} |`;
  });
  return ['| variable | default | meaning |', '| --- | --- | --- |', ...rows].join('\n');
}
