/**
 * A Postfix instance for the comparative benchmark, configured into a temporary folder: its own
 * config_directory, queue_directory and data_directory, no chroot, an SMTP listener on a free
 * loopback port, the bench domain delivered over LMTP to Dovecot (bench/reference/dovecot.ts).
 * Started with `postfix -c <dir> start` (as root: the master drops to the `postfix` user) and
 * stopped with `postfix -c <dir> stop`. Needs the packages from bench/reference/setup.sh.
 *
 * Durability (Postfix defaults, unchanged): cleanup(8) fsyncs the queue file before smtpd answers
 * 250 to the end of DATA; the queue file is removed after Dovecot's LMTP 250.
 */
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { waitForPort } from '../../test/helpers/servers.ts';

const run = promisify(execFile);

export interface PostfixOptions {
  /** Folder for config, queue and data (made if missing; must be traversable by `postfix`). */
  dir: string;
  smtpPort: number;
  /** The domain delivered to Dovecot, and its users (RCPT is checked against them, as Postino does). */
  domain: string;
  users: string[];
  /** Dovecot's LMTP listener. */
  lmtpHost: string;
  lmtpPort: number;
}

export interface PostfixInstance {
  smtpPort: number;
  configDir: string;
  /** The master process (smtpd, cleanup, qmgr, lmtp descend from it); 0 when not running. */
  masterPid(): number;
  /** How many messages are in the queue (incoming, active, deferred, hold, maildrop). */
  queued(): Promise<number>;
  stop(): Promise<void>;
}

/** master.cf: the standard services, none chrooted, smtpd on loopback only. */
function masterCf(port: number): string {
  const rows = [
    [`127.0.0.1:${port}`, 'inet', 'n', '-', 'n', '-', '-', 'smtpd'],
    ['pickup', 'unix', 'n', '-', 'n', '60', '1', 'pickup'],
    ['cleanup', 'unix', 'n', '-', 'n', '-', '0', 'cleanup'],
    ['qmgr', 'unix', 'n', '-', 'n', '300', '1', 'qmgr'],
    ['tlsmgr', 'unix', '-', '-', 'n', '1000?', '1', 'tlsmgr'],
    ['rewrite', 'unix', '-', '-', 'n', '-', '-', 'trivial-rewrite'],
    ['bounce', 'unix', '-', '-', 'n', '-', '0', 'bounce'],
    ['defer', 'unix', '-', '-', 'n', '-', '0', 'bounce'],
    ['trace', 'unix', '-', '-', 'n', '-', '0', 'bounce'],
    ['verify', 'unix', '-', '-', 'n', '-', '1', 'verify'],
    ['flush', 'unix', 'n', '-', 'n', '1000?', '0', 'flush'],
    ['proxymap', 'unix', '-', '-', 'n', '-', '-', 'proxymap'],
    ['proxywrite', 'unix', '-', '-', 'n', '-', '1', 'proxymap'],
    ['smtp', 'unix', '-', '-', 'n', '-', '-', 'smtp'],
    ['relay', 'unix', '-', '-', 'n', '-', '-', 'smtp'],
    ['showq', 'unix', 'n', '-', 'n', '-', '-', 'showq'],
    ['error', 'unix', '-', '-', 'n', '-', '-', 'error'],
    ['retry', 'unix', '-', '-', 'n', '-', '-', 'error'],
    ['discard', 'unix', '-', '-', 'n', '-', '-', 'discard'],
    ['local', 'unix', '-', 'n', 'n', '-', '-', 'local'],
    ['virtual', 'unix', '-', 'n', 'n', '-', '-', 'virtual'],
    ['lmtp', 'unix', '-', '-', 'n', '-', '-', 'lmtp'],
    ['anvil', 'unix', '-', '-', 'n', '-', '1', 'anvil'],
    ['scache', 'unix', '-', '-', 'n', '-', '1', 'scache'],
    ['postlog', 'unix-dgram', 'n', '-', 'n', '-', '1', 'postlogd'],
  ];
  return `${rows.map((r) => r.join('\t')).join('\n')}\n`;
}

export async function startPostfix(o: PostfixOptions): Promise<PostfixInstance> {
  const conf = join(o.dir, 'conf');
  const queue = join(o.dir, 'queue');
  const data = join(o.dir, 'data');
  for (const d of [conf, queue, data]) mkdirSync(d, { recursive: true });
  chmodSync(o.dir, 0o755);
  const { stdout: uidLine } = await run('id', ['-u', 'postfix']);
  const { stdout: gidLine } = await run('id', ['-g', 'postfix']);
  await run('chown', [`${uidLine.trim()}:${gidLine.trim()}`, data]);
  writeFileSync(join(conf, 'vmailbox'), o.users.map((u) => `${u} ok`).join('\n') + '\n');
  const main: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: queue,
    data_directory: data,
    command_directory: '/usr/sbin',
    daemon_directory: '/usr/lib/postfix/sbin',
    meta_directory: '/etc/postfix',
    shlib_directory: '/usr/lib/postfix',
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    myhostname: `mx.${o.domain}`,
    mydomain: o.domain,
    myorigin: o.domain,
    mydestination: '',
    local_recipient_maps: '',
    virtual_mailbox_domains: o.domain,
    virtual_mailbox_maps: `texthash:${join(conf, 'vmailbox')}`,
    virtual_transport: `lmtp:inet:${o.lmtpHost}:${o.lmtpPort}`,
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject_unauth_destination',
    // No DNS on loopback: the bench measures mail handling, not the resolver.
    smtpd_peername_lookup: 'no',
    smtp_dns_support_level: 'disabled',
    biff: 'no',
    append_dot_mydomain: 'no',
    smtpd_client_connection_count_limit: '0',
    smtpd_client_connection_rate_limit: '0',
    maillog_file: join(o.dir, 'maillog'),
    maillog_file_prefixes: o.dir,
  };
  writeFileSync(
    join(conf, 'main.cf'),
    Object.entries(main)
      .map(([k, v]) => `${k} = ${v}`)
      .join('\n') + '\n',
  );
  writeFileSync(join(conf, 'master.cf'), masterCf(o.smtpPort));
  await run('/usr/sbin/postfix', ['-c', conf, 'set-permissions'], { env: { ...process.env } }).catch(
    () => undefined,
  );
  await run('/usr/sbin/postfix', ['-c', conf, 'start']);
  await waitForPort('127.0.0.1', o.smtpPort, 20_000);
  return {
    smtpPort: o.smtpPort,
    configDir: conf,
    masterPid: () => {
      try {
        return Number(readFileSync(join(queue, 'pid', 'master.pid'), 'utf8').trim());
      } catch {
        return 0;
      }
    },
    async queued() {
      const { stdout } = await run('/usr/sbin/postqueue', ['-c', conf, '-j']).catch(() => ({ stdout: '' }));
      return stdout.split('\n').filter((l) => l.trim()).length;
    },
    async stop() {
      await run('/usr/sbin/postfix', ['-c', conf, 'stop']).catch(() => undefined);
    },
  };
}
