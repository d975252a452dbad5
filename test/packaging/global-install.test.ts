/**
 * A global `npm install` of the packed tarball (issue 16), as the README's "Install" says: `npm pack`
 * builds dist/ (prepack), `npm install -g` puts `berth` on PATH, and the installed command checks a
 * config and runs a gateway that serves an app. The build and install happen in a copy of the checkout,
 * so the checkout itself never gets a dist/. Slow (tsc, then npm): one build, one install.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { VERSION } from '../../src/lib/version.ts';
import { FIXTURE_WEB_COMMAND, ROOT, fixtureApp, http, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';

/** The Node 24 the project runs on (the `node` devDependency); first on PATH for npm and the installed bin. */
const NODE24 = existsSync(join(ROOT, 'node_modules/.bin/node')) ? join(ROOT, 'node_modules/.bin/node') : process.execPath;
const NPM = spawnSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).stdout.trim();

/** What never goes into the copy the package is built from. */
const LEFT_OUT = new Set(['node_modules', '.git', 'dist', '.berth', 'tmp']);

/** This environment, without the npm_* variables an enclosing `npm test` sets, and with Node 24 first. */
function cleanEnv(extraPath: string[] = []): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !/^npm_/i.test(k)) env[k] = v;
  env.PATH = [...extraPath, dirname(NODE24), process.env.PATH ?? ''].join(':');
  env.npm_config_update_notifier = 'false';
  return env;
}

function ok(res: SpawnSyncReturns<string>, what: string): string {
  assert.equal(res.error, undefined, `${what}: ${res.error}`);
  assert.equal(res.status, 0, `${what} exited ${res.status}:\n${res.stdout}\n${res.stderr}`);
  return res.stdout;
}

test('npm pack, then npm install -g of the tarball: the installed berth checks a config and serves an app', { skip: NPM === '' ? 'npm is not on PATH' : false }, async (t) => {
  const dir = await tempDir(t, 'berth-pkg-');

  // A copy of the checkout (uncommitted work included) with the installed node_modules linked in.
  const repo = join(dir, 'repo');
  mkdirSync(repo);
  for (const name of readdirSync(ROOT)) {
    if (LEFT_OUT.has(name) || name.endsWith('.tgz')) continue;
    cpSync(join(ROOT, name), join(repo, name), { recursive: true, filter: (src) => !src.split('/').includes('.berth') });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(repo, 'node_modules'));

  // npm pack runs prepack (the build) and writes the tarball elsewhere.
  const out = join(dir, 'out');
  mkdirSync(out);
  ok(spawnSync(NPM, ['pack', '--pack-destination', out], { cwd: repo, encoding: 'utf8', env: cleanEnv(), timeout: 150_000 }), 'npm pack');
  const tarballs = readdirSync(out).filter((f) => f.endsWith('.tgz'));
  assert.deepEqual(tarballs, [`berth-${VERSION}.tgz`]);
  const tarball = join(out, tarballs[0]);

  // What it holds: the build with every file berth reads by path, and no sources.
  const listed = new Set(ok(spawnSync('tar', ['-tzf', tarball], { encoding: 'utf8' }), 'tar -t').split('\n').filter(Boolean).map((p) => p.replace(/^package\//, '')));
  for (const f of ['bin/berth.js', 'package.json', 'README.md', 'dist/main.js', 'dist/start.js', 'dist/proxy/worker-thread.js', 'dist/api/ui/index.html', 'dist/api/ui/app.js', 'dist/api/ui/style.css']) {
    assert.ok(listed.has(f), `the tarball has ${f}`);
  }
  for (const sub of ['store/migrations', 'store/migrations-postgres']) {
    const sql = readdirSync(join(ROOT, 'src', sub)).filter((f) => f.endsWith('.sql'));
    assert.ok(sql.length > 0);
    for (const f of sql) assert.ok(listed.has(`dist/${sub}/${f}`), `the tarball has dist/${sub}/${f}`);
  }
  assert.deepEqual([...listed].filter((f) => /^(src|test|bench|examples|scripts|node_modules)\//.test(f) || (f.startsWith('dist/') && f.endsWith('.ts'))), []);
  assert.ok(existsSync(join(repo, 'dist/main.js')), 'the build went to the copy');

  // The global install, as the README says; Node 24 is first on PATH, so no engine is out of range.
  const prefix = join(dir, 'prefix');
  const install = spawnSync(NPM, ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], { cwd: dir, encoding: 'utf8', env: cleanEnv(), timeout: 150_000 });
  ok(install, 'npm install -g');
  assert.doesNotMatch(install.stdout + install.stderr, /EBADENGINE/);
  const bin = join(prefix, 'bin/berth');
  const pkgDir = join(prefix, 'lib/node_modules/berth');
  assert.equal(realpathSync(bin), realpathSync(join(pkgDir, 'bin/berth.js')));
  assert.ok(existsSync(join(pkgDir, 'dist/main.js')) && !existsSync(join(pkgDir, 'src')), 'the installed package is the build');

  const env = cleanEnv([join(prefix, 'bin')]);
  assert.equal(ok(spawnSync('berth', ['--version'], { encoding: 'utf8', env }), 'berth --version'), `berth ${VERSION}\n`);

  // A project outside the clone: one app, a static route, two proxy threads (the worker's entry is dist's).
  const site = join(dir, 'site');
  const source = await fixtureApp(site);
  mkdirSync(join(source, 'public'));
  writeFileSync(join(source, 'public/hello.txt'), 'hello from a static route\n');
  const config = await writeConfig(site, {
    state_dir: './state',
    listen: ['127.0.0.1:0'],
    proxy: { workers: 2 },
    apps: {
      shop: {
        hosts: ['127.0.0.1', 'localhost'],
        source,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1, concurrency: 4 } },
        routes: [
          { path: '/static', static: 'public' },
          { path: '/', to: 'web' },
        ],
        health: { path: '/up' },
        db_connections: 4,
      },
    },
  });
  const checked = ok(spawnSync('berth', ['check', '--config', config], { cwd: site, encoding: 'utf8', env }), 'berth check');
  assert.match(checked, /shop: web 1x4 = 4 connections/);

  const gateway = spawn('berth', ['start', '--config', config], { cwd: site, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  gateway.stdout.on('data', (c: Buffer) => (output += c));
  gateway.stderr.on('data', (c: Buffer) => (output += c));
  const exited = new Promise<number | null>((resolve) => gateway.once('exit', (code) => resolve(code)));
  t.after(async () => {
    if (gateway.exitCode === null && gateway.signalCode === null) {
      gateway.kill('SIGTERM');
      await exited;
    }
  });

  const socketPath = join(site, 'state/control.sock');
  const status = await Promise.race([
    waitFor(async () => {
      const body = (await http({ socketPath }, { path: '/v1/status', timeoutMs: 2_000 })).json();
      return body.state === 'running' ? body : null;
    }, { timeoutMs: 60_000, message: 'the installed gateway running' }),
    exited.then((code) => {
      throw new Error(`berth start exited ${code}:\n${output}`);
    }),
  ]);
  assert.equal(status.version, VERSION);
  const address: string = status.listen[0];
  const port = Number(address.slice(address.lastIndexOf(':') + 1));

  const health = await http({ port }, { path: '/_berth/health' });
  assert.equal(health.status, 200, health.body);
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'shop ready' });
  // Several requests: with two threads, both serve some (each thread runs dist/proxy/worker-thread.js or the main one).
  for (let i = 0; i < 6; i++) {
    const res = await http({ port }, { path: `/hello/${i}` });
    assert.equal(res.status, 200, res.body);
    assert.equal(res.json().app, 'shop');
    assert.equal(res.json().path, `/hello/${i}`);
  }
  const file = await http({ port }, { path: '/static/hello.txt' });
  assert.equal(file.status, 200);
  assert.equal(file.body, 'hello from a static route\n');
  assert.deepEqual((await http({ socketPath }, { path: '/v1/status' })).json().proxyThreads, { configured: 2, running: 2 });
  // The dashboard's files, read from dist/api/ui/.
  const page = await http({ socketPath }, { path: '/' });
  assert.equal(page.status, 200);
  assert.match(page.body, /<html/i);

  const stopped = spawnSync('berth', ['stop', '--config', config], { cwd: site, encoding: 'utf8', env, timeout: 60_000 });
  ok(stopped, 'berth stop');
  assert.equal(await exited, 0, output);
  assert.match(readFileSync(join(site, 'state/logs/berth.log'), 'utf8'), /"msg":"gateway stopped"/);
});
