/**
 * Bulk import of the directory (POST /api/import, `postino admin import <file>`): NDJSON, one entry
 * per line, in any mix, a domain before (or in the same batch as) its users and aliases:
 *   {"domain": "example.org"}
 *   {"user": "ann@example.org", "passwordHash": "$scrypt$ln=15,r=8,p=1$<salt>$<key>"}
 *   {"user": "bob@example.org", "password": "clear text", "quota": 1073741824}
 *   {"alias": "info@example.org", "targets": ["ann@example.org"]}
 * Lines are read as they arrive and written in batches through Directory.importBatch (pipelined
 * Redis writes, the directory's write order), so a million users import in minutes with bounded
 * memory. A clear password is hashed here (scrypt, about 50 ms each): migrations should bring the
 * hashes. Existing entries are left alone and counted; a bad line is reported with its number and
 * the import goes on. Blank lines and lines starting with `#` are skipped.
 */
import { DirectoryError, type Directory } from '../core/directory.ts';
import { hashPassword } from '../core/passwords.ts';

/** Entries written per batch: big enough to amortise round trips, small enough to bound memory. */
export const IMPORT_BATCH = 1000;
/** One NDJSON line at most (a user with a long alias list fits many times over). */
export const IMPORT_MAX_LINE = 64 * 1024;
/** Errors listed in the summary (all are counted). */
const MAX_ERRORS_LISTED = 100;
/** Clear passwords hashed at the same time (scrypt uses 32 MiB each). */
const HASH_CONCURRENCY = 4;

export interface ImportSummary {
  lines: number;
  domains: { added: number; existing: number };
  users: { added: number; existing: number };
  aliases: { added: number };
  errorCount: number;
  errors: { line: number; error: string }[];
}

export class ImportLineTooLong extends Error {
  readonly line: number;
  constructor(line: number) {
    super(`line ${line} is longer than ${IMPORT_MAX_LINE} octets`);
    this.line = line;
  }
}

/** Splits a byte stream into lines (LF or CRLF), each at most IMPORT_MAX_LINE octets. */
export async function* ndjsonLines(source: AsyncIterable<Uint8Array | string>): AsyncGenerator<string> {
  let pending: Buffer[] = [];
  let pendingSize = 0;
  let n = 0;
  for await (const chunk of source) {
    let buf = typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk);
    for (;;) {
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        pending.push(buf);
        pendingSize += buf.length;
        if (pendingSize > IMPORT_MAX_LINE) throw new ImportLineTooLong(n + 1);
        break;
      }
      const line = Buffer.concat([...pending, buf.subarray(0, nl)]);
      pending = [];
      pendingSize = 0;
      buf = buf.subarray(nl + 1);
      n++;
      if (line.length > IMPORT_MAX_LINE + 1) throw new ImportLineTooLong(n);
      yield line.toString('utf8').replace(/\r$/, '');
    }
  }
  if (pendingSize > 0) yield Buffer.concat(pending).toString('utf8').replace(/\r$/, '');
}

type Entry =
  | { kind: 'domain'; line: number; name: string }
  | { kind: 'user'; line: number; address: string; passwordHash?: string; password?: string; quota?: number }
  | { kind: 'alias'; line: number; alias: string; targets: string[] };

/** One NDJSON line as an entry, or an error message. */
export function parseEntry(text: string, line: number): Entry | string {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return 'not a JSON object';
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not a JSON object';
  const o = v as Record<string, unknown>;
  const isStr = (x: unknown): x is string => typeof x === 'string' && x !== '';
  if (isStr(o.domain)) return { kind: 'domain', line, name: o.domain };
  if (isStr(o.user)) {
    const quota = o.quota === undefined ? undefined : Number(o.quota);
    if (quota !== undefined && !(Number.isSafeInteger(quota) && quota >= 0))
      return '"quota" must be a number of octets';
    if (isStr(o.passwordHash))
      return { kind: 'user', line, address: o.user, passwordHash: o.passwordHash, quota };
    if (isStr(o.password)) {
      if (o.password.length < 8) return 'password must have at least 8 characters';
      return { kind: 'user', line, address: o.user, password: o.password, quota };
    }
    return 'a user needs "passwordHash" or "password"';
  }
  if (isStr(o.alias)) {
    const targets = Array.isArray(o.targets) ? o.targets.filter(isStr) : [];
    if (targets.length === 0) return 'an alias needs "targets": one or more addresses';
    return { kind: 'alias', line, alias: o.alias, targets };
  }
  return 'each line needs "domain", "user" or "alias"';
}

async function mapLimit<T, R>(items: T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i] as T);
      }
    }),
  );
  return out;
}

/** Imports NDJSON lines into the directory; returns what was added, what existed and what failed. */
export async function importDirectory(
  directory: Directory,
  lines: AsyncIterable<string>,
): Promise<ImportSummary> {
  const summary: ImportSummary = {
    lines: 0,
    domains: { added: 0, existing: 0 },
    users: { added: 0, existing: 0 },
    aliases: { added: 0 },
    errorCount: 0,
    errors: [],
  };
  const error = (line: number, message: string): void => {
    summary.errorCount++;
    if (summary.errors.length < MAX_ERRORS_LISTED) summary.errors.push({ line, error: message });
  };
  let batch: Entry[] = [];

  const flush = async (): Promise<void> => {
    const entries = batch;
    batch = [];
    const domains = entries.filter((e) => e.kind === 'domain');
    const users = entries.filter((e) => e.kind === 'user');
    const hashes = await mapLimit(users, HASH_CONCURRENCY, (u) =>
      u.passwordHash ? Promise.resolve(u.passwordHash) : hashPassword(u.password ?? ''),
    );
    const r = await directory.importBatch({
      domains: domains.map((d) => d.name),
      users: users.map((u, i) => ({ address: u.address, passwordHash: hashes[i] ?? '', quota: u.quota })),
    });
    for (const e of r.errors) error((e.kind === 'domain' ? domains : users)[e.index]?.line ?? 0, e.error);
    const domainErrors = r.errors.filter((e) => e.kind === 'domain').length;
    const userErrors = r.errors.length - domainErrors;
    summary.domains.added += r.domainsAdded;
    summary.domains.existing += domains.length - domainErrors - r.domainsAdded;
    summary.users.added += r.usersAdded;
    summary.users.existing += users.length - userErrors - r.usersAdded;
    for (const a of entries) {
      if (a.kind !== 'alias') continue;
      try {
        await directory.addAlias(a.alias, a.targets);
        summary.aliases.added++;
      } catch (err) {
        if (!(err instanceof DirectoryError)) throw err;
        error(a.line, err.message);
      }
    }
  };

  for await (const text of lines) {
    const line = ++summary.lines;
    if (text.trim() === '' || text.startsWith('#')) continue;
    const entry = parseEntry(text, line);
    if (typeof entry === 'string') error(line, entry);
    else batch.push(entry);
    if (batch.length >= IMPORT_BATCH) await flush();
  }
  if (batch.length > 0) await flush();
  return summary;
}
