/**
 * `npm run build` (and `prepack`, so `npm pack` always ships a fresh build): src/ compiled to JavaScript
 * in dist/. An installed package lives under node_modules/, where Node strips no TypeScript types, so it
 * runs dist/main.js (bin/berth.js chooses); a checkout runs src/ directly and needs no build.
 *
 * tsc (tsconfig.build.json) emits the modules with their `./x.ts` imports rewritten to `./x.js`. Every
 * other file under src/ is one berth reads by its path at run time (the SQL migrations beside
 * store/migrations.ts, the dashboard's files beside api/ui/ui-assets.ts), so each is copied to the same
 * place under dist/.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const SRC = join(ROOT, 'src');
const DIST = join(ROOT, 'dist');

// A fresh tree: nothing a removed source once compiled to stays behind.
rmSync(DIST, { recursive: true, force: true });

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const compiled = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' });
if (compiled.status !== 0) {
  process.stderr.write(`build: tsc failed (exit ${compiled.status ?? compiled.signal})\n`);
  process.exit(1);
}

let assets = 0;
for (const entry of readdirSync(SRC, { recursive: true, withFileTypes: true })) {
  if (!entry.isFile() || entry.name.endsWith('.ts')) continue;
  const from = join(entry.parentPath, entry.name);
  const to = join(DIST, relative(SRC, from));
  mkdirSync(dirname(to), { recursive: true });
  copyFileSync(from, to);
  assets++;
}

if (!existsSync(join(DIST, 'main.js'))) {
  process.stderr.write('build: tsc wrote no dist/main.js\n');
  process.exit(1);
}
process.stdout.write(`build: dist/ holds src/ compiled, and ${assets} other files copied\n`);
