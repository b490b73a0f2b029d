// npm run bench [area...] [-- --reference [compare options]]: runs each benchmark under bench/ (or
// the named ones) one after another, each as its own process so one cannot skew another's memory
// figures, and prints their tables. Options starting with `--` go to bench/compare.ts (the loads
// beside Postfix + Dovecot with --reference; see README "Benchmarks"); the other benches take none.
// The open-files limit is raised to the hard limit first: the memory load holds thousands of
// IMAP connections.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const dir = join(root, 'bench');
const args = process.argv.slice(2);
/** compare.ts options: flags, and the value after each flag that takes one. */
const options: string[] = [];
const wanted: string[] = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i] ?? '';
  if (a.startsWith('--')) {
    options.push(a);
    const v = args[i + 1];
    if (a !== '--reference' && v !== undefined && !v.startsWith('--')) options.push(args[++i] ?? '');
  } else wanted.push(a);
}
const all = existsSync(dir)
  ? readdirSync(dir)
      .filter((f) => f.endsWith('.ts') && !f.startsWith('_'))
      .map((f) => f.replace(/\.ts$/, ''))
      .sort()
  : [];
const chosen = wanted.length > 0 ? wanted : all;
let failed = 0;
for (const name of chosen) {
  if (!all.includes(name)) {
    console.error(`no benchmark bench/${name}.ts (have: ${all.join(', ')})`);
    failed++;
    continue;
  }
  console.log(
    `\n=== bench/${name}.ts${name === 'compare' && options.length ? ` ${options.join(' ')}` : ''} ===`,
  );
  const argv = [join(dir, `${name}.ts`), ...(name === 'compare' ? options : [])];
  const r = spawnSync(
    '/bin/sh',
    ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', process.execPath, ...argv],
    { stdio: 'inherit', cwd: root },
  );
  if (r.status !== 0) failed++;
}
process.exit(failed > 0 ? 1 : 0);
