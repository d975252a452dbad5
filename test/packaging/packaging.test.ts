/**
 * Packaging (issue 16): the systemd unit (packaging/berth.service), the Dockerfile, the `berth` bin
 * (bin/berth.js) and what `npm pack` ships. Tools this machine may lack (systemd-analyze, hadolint, a
 * Node older than 24) skip their test with the reason; the static checks always run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { VERSION } from '../../src/lib/version.ts';
import { STATUS_USAGE } from '../../src/cli/status.ts';
import { STOP_USAGE } from '../../src/cli/stop.ts';
import { RELOAD_CONFIG_USAGE } from '../../src/cli/reload-config.ts';
import { START_USAGE } from '../../src/start.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const UNIT = join(ROOT, 'packaging/berth.service');
const DOCKERFILE = join(ROOT, 'Dockerfile');
const BIN = join(ROOT, 'bin/berth.js');
/** The Node 24 the project runs on (the `node` devDependency). */
const NODE24 = existsSync(join(ROOT, 'node_modules/.bin/node')) ? join(ROOT, 'node_modules/.bin/node') : process.execPath;
const SYSTEM_NODE = '/usr/bin/node';

/** The absolute path of a command on PATH, or null. */
function which(cmd: string): string | null {
  const res = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return res.status === 0 && res.stdout.trim() !== '' ? res.stdout.trim() : null;
}

function nodeMajor(node: string): number | null {
  if (!existsSync(node)) return null;
  const res = spawnSync(node, ['-p', 'process.versions.node'], { encoding: 'utf8' });
  return res.status === 0 ? Number(res.stdout.trim().split('.')[0]) : null;
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'berth-packaging-'));
}

/** The unit's directives: `Key` -> every value it is given, in order, over all sections. */
function directives(text: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (!m) continue;
    map.set(m[1], [...(map.get(m[1]) ?? []), m[2]]);
  }
  return map;
}

// ---- systemd unit ----

const SYSTEMD_ANALYZE = which('systemd-analyze');

test('the unit file has the directives a zero-downtime, sandboxed service needs', () => {
  const text = readFileSync(UNIT, 'utf8');
  const d = directives(text);
  const one = (key: string): string => {
    const values = d.get(key);
    assert.ok(values, `${key}= is missing`);
    assert.equal(values.length, 1, `${key}= is given ${values.length} times`);
    return values[0];
  };
  // berth sends no sd_notify, so not Type=notify: exec, with readiness awaited by ExecStartPost=.
  assert.equal(one('Type'), 'exec');
  assert.match(one('ExecStart'), /^\/usr\/bin\/env berth start --config \/etc\/berth\/berth\.yaml --pid-file \/run\/berth\/berth\.pid$/);
  // An upgrade's new gateway rewrites the pid file before the old one exits: systemd follows it there.
  assert.equal(one('PIDFile'), '/run/berth/berth.pid');
  assert.equal(one('RuntimeDirectory'), 'berth');
  assert.match(one('ExecStartPost'), /berth status --check --config \/etc\/berth\/berth\.yaml/);
  assert.match(one('ExecReload'), /^\/usr\/bin\/env berth reload-config --config \/etc\/berth\/berth\.yaml$/);
  assert.match(one('ExecStop'), /^-?\/usr\/bin\/env berth stop\b.*--config \/etc\/berth\/berth\.yaml$/);
  assert.equal(one('KillMode'), 'mixed');
  assert.ok(Number(one('TimeoutStopSec')) >= 60, 'TimeoutStopSec= is generous');
  // ExecStop= waits for `berth stop --timeout`; systemd must not cut it short.
  const stopTimeout = Number(/--timeout (\d+)/.exec(one('ExecStop'))?.[1] ?? 120);
  assert.ok(Number(one('TimeoutStopSec')) > stopTimeout, `TimeoutStopSec= ${one('TimeoutStopSec')} exceeds berth stop --timeout ${stopTimeout}`);
  assert.equal(one('User'), 'berth');
  assert.equal(one('Group'), 'berth');
  assert.equal(one('AmbientCapabilities'), 'CAP_NET_BIND_SERVICE');
  assert.equal(one('CapabilityBoundingSet'), 'CAP_NET_BIND_SERVICE');
  assert.equal(one('NoNewPrivileges'), 'yes');
  assert.equal(one('ProtectSystem'), 'strict');
  assert.equal(one('PrivateTmp'), 'yes');
  assert.equal(one('ProtectHome'), 'read-only');
  assert.ok(d.get('ReadWritePaths')?.includes('/var/lib/berth') || d.get('StateDirectory')?.includes('berth'), 'the state directory is writable');
  assert.equal(one('StateDirectory'), 'berth');
  assert.equal(one('WorkingDirectory'), '/var/lib/berth');
  assert.equal(one('Environment'), 'NODE_ENV=production');
  // With a dedicated user berth cannot switch users: the unit says so.
  assert.match(text, /apps run as berth's own user/);

  // Every directive has a comment right above it (a comment or another directive's comment block).
  const lines = text.split('\n');
  const bare = lines.flatMap((line, i) => (/^[A-Za-z]+=/.test(line) && !lines[i - 1]?.startsWith('#') ? [line] : []));
  assert.deepEqual(bare, [], 'directives without a comment');
});

test('the unit file only uses flags the berth CLI has', () => {
  const text = readFileSync(UNIT, 'utf8');
  const usages: Record<string, string> = { start: START_USAGE, status: STATUS_USAGE, stop: STOP_USAGE, 'reload-config': RELOAD_CONFIG_USAGE };
  const calls = [...text.matchAll(/^Exec[A-Za-z]*=.*?\bberth ([a-z-]+)((?: --?[a-z-]+(?: [^-\s"'>|][^\s"'>|]*)?)*)/gm)];
  assert.ok(calls.length >= 4, `found ${calls.length} berth commands`);
  for (const [, verb, args] of calls) {
    assert.ok(usages[verb], `berth ${verb} is not a verb the unit should use`);
    for (const [flag] of args.matchAll(/--?[a-z-]+/g)) assert.ok(usages[verb].includes(`${flag} `) || usages[verb].includes(`${flag}]`), `berth ${verb} has no ${flag}: ${usages[verb]}`);
  }
});

test('systemd-analyze verify accepts the unit file', { skip: SYSTEMD_ANALYZE ? false : 'systemd-analyze is not installed' }, () => {
  const dir = tempDir();
  try {
    // Commands this machine lacks become /bin/true, so verify judges the unit, not the machine.
    const text = readFileSync(UNIT, 'utf8').replace(/^(Exec[A-Za-z]+=[-@:+!]*)(\/\S+)/gm, (all, prefix: string, path: string) => (existsSync(path) ? all : `${prefix}/bin/true`));
    const copy = join(dir, 'berth.service');
    writeFileSync(copy, text);
    const res = spawnSync(SYSTEMD_ANALYZE!, ['verify', copy], { encoding: 'utf8' });
    // verify exits 0 even for unknown keys and unparsable values ("..., ignoring"): those count too.
    const about = (res.stdout + res.stderr).split('\n').filter((l) => l.includes('berth.service'));
    assert.equal(res.status, 0, res.stdout + res.stderr);
    assert.deepEqual(about, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---- Dockerfile ----

const HADOLINT = which('hadolint');

test('the Dockerfile: node:24, a non-root user, a health check, the state volume', () => {
  const text = readFileSync(DOCKERFILE, 'utf8');
  const instructions = text.replace(/\\\n/g, ' ').split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
  const of = (name: string) => instructions.filter((l) => l.toUpperCase().startsWith(`${name} `));
  assert.deepEqual(of('FROM').map((l) => l.split(/\s+/)[1]), ['node:24-slim']);
  const users = of('USER').map((l) => l.split(/\s+/)[1]);
  assert.ok(users.length > 0, 'a USER instruction');
  assert.ok(!['root', '0'].includes(users.at(-1)!.split(':')[0]), `runs as ${users.at(-1)}`);
  const health = of('HEALTHCHECK');
  assert.equal(health.length, 1);
  assert.match(health[0], /CMD .*\/_berth\/health/);
  assert.match(health[0], /"node", "-e"/);
  assert.ok(of('VOLUME').some((l) => /\/var\/lib\/berth\b/.test(l)), 'VOLUME /var/lib/berth');
  assert.ok(of('EXPOSE').some((l) => /\b8080\b/.test(l)), 'EXPOSE 8080');
  assert.ok(of('RUN').some((l) => /npm ci --omit=dev/.test(l)), 'npm ci --omit=dev');
  assert.deepEqual(of('CMD').map((l) => JSON.parse(l.slice(4))), [['berth', 'start', '--config', '/etc/berth/berth.yaml']]);
  // Node refuses to strip types under node_modules/: berth must be installed elsewhere.
  for (const w of of('WORKDIR')) assert.doesNotMatch(w, /node_modules/);

  // What COPY takes exists and is not left out of the build context by .dockerignore.
  const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim().replace(/\/$/, '')).filter((l) => l !== '' && !l.startsWith('#'));
  for (const copy of of('COPY')) {
    const sources = copy.split(/\s+/).slice(1, -1).filter((s) => !s.startsWith('--'));
    for (const s of sources) {
      assert.ok(existsSync(join(ROOT, s)), `COPY ${s}: no such file`);
      assert.ok(!ignored.includes(s.replace(/\/$/, '')), `COPY ${s}, which .dockerignore excludes`);
    }
  }
});

test('hadolint accepts the Dockerfile', { skip: HADOLINT ? false : 'hadolint is not installed' }, () => {
  const res = spawnSync(HADOLINT!, [DOCKERFILE], { encoding: 'utf8' });
  assert.equal(res.status, 0, res.stdout + res.stderr);
});

// ---- the bin ----

const SYSTEM_MAJOR = nodeMajor(SYSTEM_NODE);

test('the bin refuses a Node older than 24 in one line, with exit status 1', { skip: SYSTEM_MAJOR === null ? `${SYSTEM_NODE} is not installed` : SYSTEM_MAJOR >= 24 ? `${SYSTEM_NODE} is Node ${SYSTEM_MAJOR}, not older than 24` : false }, () => {
  const res = spawnSync(SYSTEM_NODE, [BIN, '--version'], { encoding: 'utf8' });
  assert.equal(res.status, 1, res.stderr);
  assert.equal(res.stdout, '');
  assert.match(res.stderr, /^berth: Node\.js 24 or later is required; .* is v\d+\.\d+\.\d+\n$/);
  // Through its shebang, as the installed command runs, with that Node first on PATH.
  const direct = spawnSync(BIN, ['status'], { encoding: 'utf8', env: { ...process.env, PATH: `/usr/bin:/bin` } });
  assert.equal(direct.status, 1, direct.stderr);
  assert.match(direct.stderr, /Node\.js 24 or later is required/);
});

test('the bin on Node 24: berth --version prints src/lib/version.ts', () => {
  const res = spawnSync(NODE24, [BIN, '--version'], { encoding: 'utf8' });
  assert.equal(res.status, 0, res.stderr);
  assert.equal(res.stdout, `berth ${VERSION}\n`);
});

test('the bin runs through a symlink on PATH, as the Dockerfile installs it', () => {
  const dir = tempDir();
  try {
    const app = join(dir, 'opt/berth');
    mkdirSync(app, { recursive: true });
    for (const part of ['bin', 'src', 'package.json']) cpSync(join(ROOT, part), join(app, part), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'));
    mkdirSync(join(dir, 'bin'));
    symlinkSync(join(app, 'bin/berth.js'), join(dir, 'bin/berth'));
    const res = spawnSync(join(dir, 'bin/berth'), ['--version'], { encoding: 'utf8', env: { ...process.env, PATH: `${join(ROOT, 'node_modules/.bin')}:${process.env.PATH}` } });
    assert.equal(res.status, 0, res.stderr);
    assert.equal(res.stdout, `berth ${VERSION}\n`);

    // A dist/ left in a checkout by `npm pack` is not what a checkout runs: its sources are.
    mkdirSync(join(app, 'dist'));
    writeFileSync(join(app, 'dist/main.js'), "process.stdout.write('the build\\n');\n");
    const checkout = spawnSync(NODE24, [join(app, 'bin/berth.js'), '--version'], { encoding: 'utf8' });
    assert.equal(checkout.stdout, `berth ${VERSION}\n`, checkout.stderr);

    // Installed under node_modules (npm install -g of the tarball), the build runs.
    const nested = join(dir, 'lib/node_modules/berth');
    mkdirSync(join(dir, 'lib/node_modules'), { recursive: true });
    cpSync(app, nested, { recursive: true, verbatimSymlinks: true });
    const installed = spawnSync(NODE24, [join(nested, 'bin/berth.js'), '--version'], { encoding: 'utf8' });
    assert.equal(installed.status, 0, installed.stderr);
    assert.equal(installed.stdout, 'the build\n');

    // Packed without its build (npm pack --ignore-scripts), Node refuses the .ts sources there: one
    // clear line, not a stack trace.
    rmSync(join(nested, 'dist'), { recursive: true });
    const refused = spawnSync(NODE24, [join(nested, 'bin/berth.js'), '--version'], { encoding: 'utf8' });
    assert.equal(refused.status, 1, refused.stderr);
    assert.match(refused.stderr, /^berth: cannot run the TypeScript sources from inside node_modules .* has no dist\/; install a tarball made by npm pack, which builds it\n$/);

    // Neither: said as plainly.
    rmSync(join(nested, 'src'), { recursive: true });
    const empty = spawnSync(NODE24, [join(nested, 'bin/berth.js'), '--version'], { encoding: 'utf8' });
    assert.equal(empty.status, 1, empty.stderr);
    assert.match(empty.stderr, /^berth: .* has neither dist\/main\.js nor src\/main\.ts; /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---- npm pack ----

test('npm pack ships the bin, the build (dist/, made by prepack) and no sources, tests or benchmarks', () => {
  // --ignore-scripts: no build here (test/packaging/global-install.test.ts packs and installs for real).
  const res = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts', '--offline'], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, npm_config_loglevel: 'error' } });
  assert.equal(res.status, 0, res.stderr);
  const [pack] = JSON.parse(res.stdout) as { files: { path: string; mode: number }[] }[];
  const files = new Map(pack.files.map((f) => [f.path, f.mode]));
  assert.ok(files.has('package.json'));
  assert.ok(files.has('README.md'));
  assert.ok(files.has('bin/berth.js'), 'the bin');
  assert.ok(files.has('packaging/berth.service'), 'the systemd unit');
  assert.ok((files.get('bin/berth.js')! & 0o111) !== 0, 'the bin is executable');

  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  assert.ok(pkg.files.includes('dist/'), 'dist/ is shipped');
  assert.equal(pkg.scripts.prepack, 'npm run build', 'npm pack builds first');
  assert.match(pkg.scripts.build, /scripts\/build\.ts/);
  assert.equal(pkg.engines.node, '>=24');

  const unwanted = [...files.keys()].filter((f) => /^(src|test|bench|examples|scripts|node_modules|\.ci)\//.test(f) || f.endsWith('.log') || f.endsWith('.tgz'));
  assert.deepEqual(unwanted, []);
  assert.ok(statSync(BIN).mode & 0o111, 'bin/berth.js is executable in the checkout');
});
