// Generates the protobufjs static module and its typings from proto/ into gen/proto (gitignored).
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const protoDir = join(root, 'proto');
const outDir = join(root, 'gen', 'proto');
const files = readdirSync(join(protoDir, 'postino', 'v1'))
  .filter((f) => f.endsWith('.proto'))
  .sort()
  .map((f) => join(protoDir, 'postino', 'v1', f));
mkdirSync(outDir, { recursive: true });
const bin = join(root, 'node_modules', '.bin');
const js = join(outDir, 'postino.js');
execFileSync(
  join(bin, 'pbjs'),
  [
    '-t',
    'static-module',
    '-w',
    'es6',
    '--force-number',
    '--no-verify',
    '--no-delimited',
    '--no-beautify',
    '-p',
    protoDir,
    '-o',
    js,
    ...files,
  ],
  { cwd: protoDir, stdio: 'inherit' },
);
execFileSync(join(bin, 'pbts'), ['--no-comments', '-o', join(outDir, 'postino.d.ts'), js], {
  stdio: 'inherit',
});
console.log(`generated ${files.length} proto files into gen/proto`);
