/**
 * The deploy step machine in a real gateway (in this process, so its log lines can be read), with real
 * app processes, real sockets and the real CLI: step order and progress, failures at every step leaving
 * the old release serving, sources, rollback, reload, one-at-a-time and the drain deadline.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { DEPLOY_STEPS } from '../../src/deploy/deployer.ts';
import type { Gateway } from '../../src/gateway.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, LogSink, runCli, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';
import { openStore } from '../../src/store/open-store.ts';
import { LoggerFactory } from '../../src/lib/logger.ts';
import { LoadRunner } from './load-runner.ts';
import { gatedBoot } from './gated-boot.ts';

/** Build fails when the source has FAIL_BUILD; release fails when it has FAIL_RELEASE, else logs its run. */
const BUILD = 'if [ -f FAIL_BUILD ]; then echo "compiling assets"; echo "error: cannot compile app.css" >&2; exit 1; fi; echo built';
const RELEASE = 'if [ -f FAIL_RELEASE ]; then echo "running migrations"; echo "migration 0042 failed: no such table" >&2; exit 3; fi; echo "$BERTH_RELEASE" >> "$RELEASE_LOG"';

/** A server.mjs that dies as it boots. */
const CRASH_AT_BOOT = `console.error('boom: DATABASE_URL is not set'); process.exit(1);\n`;
/** A server.mjs that listens but whose health path always answers 503. */
const NEVER_HEALTHY = `import { createServer } from 'node:http';
createServer((req, res) => { res.writeHead(req.url === '/up' ? 503 : 200); res.end('starting'); }).listen(Number(process.env.PORT), '127.0.0.1');
console.log('listening but not healthy');
process.on('SIGTERM', () => process.exit(0));
`;

interface Setup {
  dir: string;
  gateway: Gateway;
  port: number;
  sink: LogSink;
  socket: string;
  stateDir: string;
  releaseLog: string;
  /** A fresh copy of the fixture app with extra files written into it. */
  source(name: string, files?: Record<string, string>): Promise<string>;
}

async function setup(t: TestContext, app: Record<string, unknown> = {}, beforeStart?: (stateDir: string) => Promise<unknown>): Promise<Setup> {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const releaseLog = join(dir, 'release-runs.log');
  const source = async (name: string, files: Record<string, string> = {}) => {
    const src = await fixtureApp(dir, name);
    for (const [file, text] of Object.entries(files)) await writeFile(join(src, file), text);
    return src;
  };
  const v1 = await source('v1', { VERSION: '1\n' });
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'info' },
    apps: {
      shop: {
        source: v1,
        build: BUILD,
        release: RELEASE,
        env: { RELEASE_LOG: releaseLog },
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 16 } },
        health: { path: '/up', interval: '200ms', startup_timeout: '3s' },
        timeouts: { drain: '10s', stop: '2s' },
        ...app,
      },
    },
  });
  await beforeStart?.(stateDir);
  const { gateway, port, sink } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  // The first start is a deploy too and ran the release command once; the tests count runs after it.
  const first = gateway.appStatus('shop')!.activeRelease;
  assert.equal(await readFile(releaseLog, 'utf8'), `${first}\n`);
  await rm(releaseLog);
  return { dir, gateway, port, sink, socket: gateway.config.control.socket, stateDir, releaseLog, source };
}

/** Runs a deploy (or rollback/reload) to its end through the deployer itself. */
async function run(gateway: Gateway, app: string, req: Parameters<Gateway['deployer']['begin']>[1]) {
  const d = gateway.deployer.begin(app, req);
  await d.done;
  return d;
}

function pids(gateway: Gateway, app = 'shop'): number[] {
  const status = gateway.appStatus(app)!;
  const active = status.generations.find((g) => g.active)!;
  return active.instances.map((i) => i.pid!).sort();
}

test('a deploy runs every step in order with durations and serves the new release', async (t) => {
  const s = await setup(t);
  const before = s.gateway.appStatus('shop')!.activeRelease!;
  const oldPids = pids(s.gateway);
  const v2 = await s.source('v2', { VERSION: '2\n' });
  const d = await run(s.gateway, 'shop', { kind: 'deploy', source: v2 });
  assert.equal(d.state, 'succeeded', d.error ?? '');
  const finished = d.events.filter((e) => e.status !== 'started');
  assert.deepEqual(finished.map((e) => e.step), [...DEPLOY_STEPS]);
  for (const e of finished) assert.equal(typeof e.durationMs, 'number', `${e.step} has a duration`);
  assert.equal(finished.find((e) => e.step === 'flush')!.status, 'skipped');
  const release = d.releaseId!;
  assert.notEqual(release, before);
  assert.equal(d.previousRelease, before);
  const res = await http({ port: s.port }, { path: '/' });
  assert.equal(res.json().release, release);
  assert.equal(await readFile(join(res.json().cwd, 'VERSION'), 'utf8'), '2\n');
  assert.equal(await readlink(join(s.stateDir, 'apps/shop/current')), `releases/${release}`);
  // The old generation is gone, and the build and release commands ran in the new release.
  assert.equal(s.gateway.appStatus('shop')!.generations.length, 1);
  for (const pid of oldPids) assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
  assert.equal(await readFile(s.releaseLog, 'utf8'), `${release}\n`);
  const states = new Map((await s.gateway.releases('shop')).releases.map((r) => [r.id, r.state]));
  assert.equal(states.get(release), 'active');
  assert.equal(states.get(before), 'previous');
  // The record survives in the store with its events.
  const stored = await s.gateway.deployer.get(d.id);
  assert.equal(stored!.deploy.state, 'succeeded');
});

test('bad releases fail at their step with their log lines, leave the old release serving and fail no request', async (t) => {
  const s = await setup(t, { shared: ['uploads'] }, (stateDir) => mkdir(join(stateDir, 'apps/shop/shared/uploads'), { recursive: true }));
  const good = s.gateway.appStatus('shop')!.activeRelease!;
  const goodPids = pids(s.gateway);
  const load = LoadRunner.start({ port: s.port });
  t.after(() => load.stop());
  await load.more(50);
  const cases: { name: string; step: string; files?: Record<string, string>; before?: () => Promise<void>; after?: () => Promise<void>; lines: RegExp }[] = [
    { name: 'failing build', step: 'build', files: { FAIL_BUILD: '' }, lines: /^ +\| .*error: cannot compile app\.css$/m },
    { name: 'failing release command', step: 'release', files: { FAIL_RELEASE: '' }, lines: /^ +\| .*migration 0042 failed: no such table$/m },
    { name: 'process that exits at boot', step: 'wait_healthy', files: { 'server.mjs': CRASH_AT_BOOT }, lines: /^ +\| .*boom: DATABASE_URL is not set$/m },
    { name: 'never healthy', step: 'wait_healthy', files: { 'server.mjs': NEVER_HEALTHY }, lines: /^ +\| .*listening but not healthy$/m },
    {
      name: 'missing shared entry',
      step: 'link',
      before: () => rm(join(s.stateDir, 'apps/shop/shared/uploads'), { recursive: true }),
      after: () => mkdir(join(s.stateDir, 'apps/shop/shared/uploads')),
      lines: /shared entry "uploads" is missing/,
    },
  ];
  for (const c of cases) {
    const src = await s.source(`bad-${c.step}-${cases.indexOf(c)}`, c.files);
    await c.before?.();
    const okBefore = load.ok;
    const res = await runCli(['deploy', 'shop', src, '--socket', s.socket]);
    await c.after?.();
    assert.equal(res.code, 1, `${c.name}: ${res.stdout}\n${res.stderr}`);
    assert.match(res.stderr, new RegExp(`^failed at step ${c.step}: `, 'm'), `${c.name}: ${res.stderr}`);
    assert.match(res.stderr, c.lines, `${c.name}: ${res.stderr}`);
    assert.match(res.stderr, new RegExp(`shop still serves release ${good}`), c.name);
    assert.match(res.stdout, new RegExp(`${c.step}\\s+FAIL`), `${c.name}: ${res.stdout}`);
    // The old generation was never touched: same processes, still serving.
    assert.deepEqual(pids(s.gateway), goodPids, c.name);
    assert.equal(s.gateway.appStatus('shop')!.generations.length, 1, `${c.name}: the failed generation is stopped`);
    await load.more(20);
    assert.ok(load.ok > okBefore);
    assert.deepEqual(load.failures, [], c.name);
    const failed = s.sink.lines.find((l) => l.msg === 'deploy failed' && l.step === c.step);
    assert.ok(failed, `${c.name}: a 'deploy failed' log line names the step`);
  }
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
  assert.deepEqual([...stats.releases.keys()], [good]);
  // Every bad release that was made shows as failed; the good one is still active.
  const listed = await runCli(['releases', 'shop', '--socket', s.socket]);
  assert.equal(listed.code, 0, listed.stderr);
  const rows = listed.stdout.trim().split('\n').slice(1);
  assert.equal(rows.filter((r) => /\sfailed\s/.test(r)).length, cases.length);
  assert.match(rows.find((r) => r.startsWith(good))!, /\sactive\s/);
  // The app still deploys after all that.
  const v2 = await s.source('v2', { VERSION: '2\n' });
  const ok = await runCli(['deploy', 'shop', v2, '--socket', s.socket]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.notEqual((await http({ port: s.port }, { path: '/' })).json().release, good);
});

test('.tar.gz and git sources deploy; a tarball with ../ entries is rejected at prepare', async (t) => {
  const s = await setup(t);
  // A tarball of a source tree whose VERSION says where it came from.
  const tarSrc = await s.source('tar-src', { VERSION: 'tarball\n' });
  const tarball = join(s.dir, 'app.tar.gz');
  execFileSync('tar', ['-czf', tarball, '-C', tarSrc, '.']);
  const fromTar = await runCli(['deploy', 'shop', tarball, '--socket', s.socket]);
  assert.equal(fromTar.code, 0, fromTar.stderr);
  let res = (await http({ port: s.port }, { path: '/' })).json();
  assert.equal(await readFile(join(res.cwd, 'VERSION'), 'utf8'), 'tarball\n');

  // A git repository with two commits; the deploy names the first by its tag.
  const repo = await s.source('repo', { VERSION: 'git-v1\n' });
  const git = (...args: string[]) => execFileSync('git', ['-c', 'user.name=x', '-c', 'user.email=x@y', '-c', 'init.defaultBranch=main', ...args], { cwd: repo, encoding: 'utf8' }).trim();
  git('init', '-q');
  git('add', '-A');
  git('commit', '-q', '-m', 'one');
  git('tag', 'v1');
  const sha1 = git('rev-parse', 'HEAD');
  await writeFile(join(repo, 'VERSION'), 'git-v2\n');
  git('commit', '-q', '-am', 'two');
  const fromGit = await runCli(['deploy', 'shop', `${repo}#v1`, '--socket', s.socket]);
  assert.equal(fromGit.code, 0, fromGit.stderr);
  res = (await http({ port: s.port }, { path: '/' })).json();
  assert.equal(await readFile(join(res.cwd, 'VERSION'), 'utf8'), 'git-v1\n');
  assert.equal((await readFile(join(res.cwd, 'REVISION'), 'utf8')).trim(), sha1);
  const fromHead = await runCli(['deploy', 'shop', `${repo}#main`, '--socket', s.socket]);
  assert.equal(fromHead.code, 0, fromHead.stderr);
  res = (await http({ port: s.port }, { path: '/' })).json();
  assert.equal(await readFile(join(res.cwd, 'VERSION'), 'utf8'), 'git-v2\n');
  const serving = res.release;

  // `tar -P` keeps the "../" that plain tar would strip: this entry would land beside the release.
  const evilDir = join(s.dir, 'evil', 'app');
  await mkdir(evilDir, { recursive: true });
  await writeFile(join(evilDir, 'server.mjs'), 'ok\n');
  await writeFile(join(s.dir, 'evil', 'escaped'), 'gotcha\n');
  const evil = join(s.dir, 'evil.tar.gz');
  execFileSync('tar', ['-czPf', evil, 'server.mjs', '../escaped'], { cwd: evilDir, stdio: 'ignore' });
  assert.match(execFileSync('tar', ['-tzf', evil], { encoding: 'utf8' }), /^\.\.\/escaped$/m);
  const rejected = await runCli(['deploy', 'shop', evil, '--socket', s.socket]);
  assert.equal(rejected.code, 1);
  assert.match(rejected.stderr, /^failed at step prepare: .*entry "\.\.\/escaped" escapes the release dir/m);
  assert.equal((await http({ port: s.port }, { path: '/' })).json().release, serving);
  await assert.rejects(readFile(join(s.stateDir, 'apps/shop/escaped')), { code: 'ENOENT' });
  await assert.rejects(readFile(join(s.stateDir, 'apps/shop/releases/escaped')), { code: 'ENOENT' });
  const missing = await runCli(['deploy', 'shop', join(s.dir, 'nope.tar.gz'), '--socket', s.socket]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^failed at step prepare: /m);
});

test('rollback goes to the previous good release by default, or to the one named, and runs the release command again', async (t) => {
  const s = await setup(t);
  const v1 = s.gateway.appStatus('shop')!.activeRelease!;
  const bad = await run(s.gateway, 'shop', { kind: 'deploy', source: await s.source('bad', { FAIL_RELEASE: '' }) });
  assert.equal(bad.state, 'failed');
  // A failed release cannot be rolled back to (while its directory is still there to try).
  const toBad = await runCli(['rollback', 'shop', bad.releaseId!, '--socket', s.socket]);
  assert.equal(toBad.code, 1);
  assert.match(toBad.stderr, /^failed at step release: release \S+ of shop failed; it cannot be rolled back to/m);
  const v3 = await run(s.gateway, 'shop', { kind: 'deploy', source: await s.source('v3', { VERSION: '3\n' }) });
  assert.equal(v3.state, 'succeeded', v3.error ?? '');
  assert.equal(await readFile(s.releaseLog, 'utf8'), `${v3.releaseId}\n`);

  const load = LoadRunner.start({ port: s.port });
  t.after(() => load.stop());
  await load.more(20);
  // Default: the newest good release before the active one; the failed one in between is skipped.
  const back = await runCli(['rollback', 'shop', '--socket', s.socket]);
  assert.equal(back.code, 0, back.stderr);
  assert.match(back.stdout, new RegExp(`done: shop serves release ${v1}`));
  assert.equal((await http({ port: s.port }, { path: '/' })).json().release, v1);
  assert.equal(await readlink(join(s.stateDir, 'apps/shop/current')), `releases/${v1}`);
  assert.equal(await readFile(s.releaseLog, 'utf8'), `${v3.releaseId}\n${v1}\n`);
  // Nothing older than v1: a default rollback now fails clearly and changes nothing.
  const nothing = await runCli(['rollback', 'shop', '--socket', s.socket]);
  assert.equal(nothing.code, 1);
  assert.match(nothing.stderr, /no previous good release to roll back to/);
  // Named: forward again to v3, and the release command runs for it again.
  const named = await runCli(['rollback', 'shop', v3.releaseId!, '--socket', s.socket]);
  assert.equal(named.code, 0, named.stderr);
  assert.equal((await http({ port: s.port }, { path: '/' })).json().release, v3.releaseId);
  assert.equal(await readFile(s.releaseLog, 'utf8'), `${v3.releaseId}\n${v1}\n${v3.releaseId}\n`);
  await load.more(20);
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
  assert.deepEqual([...stats.releases.keys()].sort(), [v1, v3.releaseId!].sort());

  // An unknown id, a malformed one and a failed release are refused, and the active one goes on.
  for (const [id, why] of [
    ['20200101000000-abcdef', /release 20200101000000-abcdef of shop does not exist/],
    ['../../etc', /does not exist/],
    // Pruned by the deploys since (failed releases do not take a kept place), and still known as failed.
    [bad.releaseId!, /failed and was pruned; it cannot be rolled back to/],
  ] as const) {
    const res = await runCli(['rollback', 'shop', id, '--socket', s.socket]);
    assert.equal(res.code, 1, id);
    assert.match(res.stderr, /^failed at step release: /m, id);
    assert.match(res.stderr, why, id);
  }
  assert.equal((await http({ port: s.port }, { path: '/' })).json().release, v3.releaseId);
  const states = new Map((await s.gateway.releases('shop')).releases.map((r) => [r.id, r.state]));
  assert.equal(states.get(v3.releaseId!), 'active');
  assert.equal(states.get(v1), 'previous');
  assert.equal(states.get(bad.releaseId!), 'failed', 'pruned, and still known as failed');
});

test('reload starts a new generation of the same release: new pids, no failed request', async (t) => {
  const s = await setup(t);
  const release = s.gateway.appStatus('shop')!.activeRelease!;
  const before = pids(s.gateway);
  const load = LoadRunner.start({ port: s.port, clients: 8 });
  t.after(() => load.stop());
  await load.more(100);
  const res = await runCli(['reload', 'shop', '--socket', s.socket]);
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stdout, new RegExp(`done: shop serves release ${release}`));
  await load.more(100);
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
  assert.deepEqual([...stats.releases.keys()], [release]);
  const after = pids(s.gateway);
  assert.equal(after.length, 2);
  for (const pid of after) assert.ok(!before.includes(pid), `pid ${pid} is new`);
  for (const pid of before) assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
  assert.equal(s.gateway.appStatus('shop')!.activeRelease, release);
  // A reload runs the release command of the active release too.
  assert.equal(await readFile(s.releaseLog, 'utf8'), `${release}\n`);
});

test('a second deploy while one runs gets 409 with the running id, from the API and the CLI', async (t) => {
  // The new release listens only once the test opens its gate, which holds the first deploy in wait_healthy.
  const s = await setup(t, { health: { path: '/up', interval: '200ms', startup_timeout: '60s' } });
  const gate = join(s.dir, 'gate');
  const slow = await s.source('slow');
  await gatedBoot(slow, gate);
  const first = s.gateway.deployer.begin('shop', { kind: 'deploy', source: slow });
  await waitFor(() => first.events.some((e) => e.step === 'wait_healthy'), { message: 'first deploy in wait_healthy' });
  for (const [path, body] of [
    ['/v1/apps/shop/deploys', '{}'],
    ['/v1/apps/shop/rollback', '{}'],
    ['/v1/apps/shop/reload', ''],
  ]) {
    const res = await http({ socketPath: s.socket }, { path, method: 'POST', body, headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 409, `${path}: ${res.body}`);
    assert.equal(res.json().error.code, 'BERTH_E_CONFLICT');
    assert.match(res.json().error.message, new RegExp(first.id));
  }
  const cli = await runCli(['deploy', 'shop', '--socket', s.socket]);
  assert.notEqual(cli.code, 0);
  assert.match(cli.stderr, new RegExp(`already running: ${first.id}`));
  const reload = await runCli(['reload', 'shop', '--socket', s.socket]);
  assert.notEqual(reload.code, 0);
  assert.match(reload.stderr, /BERTH_E_CONFLICT/);
  assert.equal(first.state, 'running');
  await writeFile(gate, '');
  await first.done;
  assert.equal(first.state, 'succeeded', first.error ?? '');
  // Once it is over, the next one may start.
  const next = await run(s.gateway, 'shop', { kind: 'reload' });
  assert.equal(next.state, 'succeeded', next.error ?? '');
});

test('bad requests to the deploy endpoints are refused with a clear error', async (t) => {
  const s = await setup(t);
  const call = (path: string, body: string, method = 'POST') => http({ socketPath: s.socket }, { path, method, body, headers: { 'content-type': 'application/json' } });
  let res = await call('/v1/apps/nope/deploys', '{}');
  assert.equal(res.status, 404);
  assert.match(res.json().error.message, /no app named "nope"/);
  res = await call('/v1/apps/shop/deploys', '{"source": 42}');
  assert.equal(res.status, 400);
  assert.match(res.json().error.message, /"source" must be a non-empty string/);
  res = await call('/v1/apps/shop/rollback', '{"release": ""}');
  assert.equal(res.status, 400);
  res = await call('/v1/apps/shop/deploys', '[]');
  assert.equal(res.status, 400);
  res = await call('/v1/deploys/d20200101000000-000000', '', 'GET');
  assert.equal(res.status, 404);
  // A malformed escape in a path parameter is the caller's mistake, not an internal error.
  res = await call('/v1/apps/%E0%A4/deploys', '{}');
  assert.equal(res.status, 400, res.body);
  assert.equal(res.json().error.code, 'BERTH_E_BAD_REQUEST');
  res = await call('/v1/deploys/%ZZ', '', 'GET');
  assert.equal(res.status, 400, res.body);
  const usage = await runCli(['deploy', '--socket', s.socket]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /usage: berth deploy <app> \[source\]/);
  const unknown = await runCli(['deploy', 'nope', '--socket', s.socket]);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /no app named "nope"/);
});

test('a request still running at the drain deadline is cut and logged, and the old generation is stopped', async (t) => {
  const s = await setup(t, { timeouts: { drain: '1s', stop: '1s' } });
  const old = s.gateway.appStatus('shop')!;
  const oldPids = pids(s.gateway);
  const long = http({ port: s.port }, { path: '/slow?ms=20000' }).then(
    (r) => ({ status: r.status, error: null as string | null }),
    (err: Error) => ({ status: 0, error: err.message }),
  );
  await waitFor(() => s.gateway.appStatus('shop')!.db.inUse === 1, { message: 'the slow request in flight' });
  const d = await run(s.gateway, 'shop', { kind: 'deploy', source: await s.source('v2') });
  assert.equal(d.state, 'succeeded', d.error ?? '');
  const drain = d.events.find((e) => e.step === 'drain' && e.status !== 'started')!;
  assert.match(drain.message!, /drain timeout: 1 request\(s\) still in flight will be cut/);
  const cut = await long;
  assert.ok(cut.status === 502 || cut.error !== null, `the cut request got ${JSON.stringify(cut)}`);
  const logged = s.sink.lines.find((l) => l.msg === 'requests cut at drain deadline');
  assert.ok(logged, 'a log line says requests were cut');
  assert.equal(logged.inFlight, 1);
  assert.equal(logged.generation, old.generations[0].id);
  assert.equal(s.gateway.appStatus('shop')!.generations.length, 1);
  for (const pid of oldPids) assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
  assert.equal((await http({ port: s.port }, { path: '/' })).json().release, d.releaseId);
});

test('progress: plain step lines with durations when not a TTY, NDJSON with --json', async (t) => {
  const s = await setup(t);
  const plain = await runCli(['deploy', 'shop', await s.source('v2'), '--socket', s.socket]);
  assert.equal(plain.code, 0, plain.stderr);
  const lines = plain.stdout.trim().split('\n');
  assert.match(lines[0], /^deploying shop from .*v2 \(d\d{14}-[0-9a-f]{6}\)$/);
  for (const step of DEPLOY_STEPS) assert.match(plain.stdout, new RegExp(`^  ${step} +(ok|skip) +\\d+(ms|\\.\\d+s)`, 'm'), step);
  assert.match(lines.at(-1)!, /^done: shop serves release \d{14}-[0-9a-f]{6} \(/);
  assert.doesNotMatch(plain.stdout, /\x1b\[/, 'no terminal escapes when not a TTY');

  const json = await runCli(['reload', 'shop', '--json', '--socket', s.socket]);
  assert.equal(json.code, 0, json.stderr);
  const msgs = json.stdout.trim().split('\n').map((l) => JSON.parse(l));
  const events = msgs.filter((m) => m.type === 'event');
  assert.deepEqual(events.filter((e) => e.status !== 'started').map((e) => e.step), DEPLOY_STEPS.filter((st) => !['prepare', 'link', 'build'].includes(st)));
  for (const e of events) assert.equal(typeof e.seq, 'number');
  const end = msgs.at(-1);
  assert.equal(end.type, 'end');
  assert.equal(end.deploy.state, 'succeeded');
  assert.equal(end.deploy.kind, 'reload');
  // The same record is there afterwards, with its events.
  const after = (await http({ socketPath: s.socket }, { path: `/v1/deploys/${end.deploy.id}` })).json();
  assert.equal(after.state, 'succeeded');
  assert.equal(after.events.length, events.length);
  const replay = await http({ socketPath: s.socket }, { path: `/v1/deploys/${end.deploy.id}?follow=1` });
  assert.equal(replay.body.trim().split('\n').length, events.length + 1);
  const listed = (await http({ socketPath: s.socket }, { path: '/v1/apps/shop/deploys' })).json().deploys;
  // Newest first: the reload, the deploy, and the first start's deploy.
  assert.deepEqual(listed.map((d: any) => d.kind), ['reload', 'deploy', 'deploy']);
});

test('a gateway stop during a release command that ignores SIGTERM waits for it to be killed; the deploy and its audit row record the end', async (t) => {
  const s = await setup(t, { release: `if [ -f HANG_RELEASE ]; then trap '' TERM; echo $$ > release.pid; sleep 60; fi; ${RELEASE}` });
  const res = await http({ socketPath: s.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body: JSON.stringify({ source: await s.source('v2', { HANG_RELEASE: '' }) }), headers: { 'content-type': 'application/json' } });
  assert.equal(res.status, 202, res.body);
  const id: string = res.json().id;
  const d = s.gateway.deployer.running('shop')!;
  const pid = Number(await waitFor(async () => d.releaseId && (await readFile(join(s.stateDir, 'apps/shop/releases', d.releaseId, 'release.pid'), 'utf8').catch(() => '')).trim(), { message: 'the release command running' }));
  await s.gateway.stop();
  assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'the release command does not outlive the gateway');
  assert.equal(d.state, 'failed');
  assert.equal(d.failedStep, 'release');
  const store = await openStore(s.gateway.config, new LoggerFactory({}, new LogSink()).get('store'));
  try {
    assert.equal((await store.getDeploy(id))!.state, 'failed');
    const rows = (await store.listAudit({ app: 'shop' })).filter((r) => r.action === 'deploy' && r.channel === 'socket');
    assert.equal(rows.length, 1);
    assert.equal(rows[0].outcome, 'failed');
    assert.notEqual(rows[0].finishedAt, null);
  } finally {
    await store.close();
  }
});

test('a step that fails after the switch is recorded, the new release keeps serving, and the old generation is still stopped', async (t) => {
  const s = await setup(t);
  const oldPids = pids(s.gateway);
  // `current` replaced by a real directory with a file in it: the rename() of the current step fails.
  const current = join(s.stateDir, 'apps/shop/current');
  await rm(current);
  await mkdir(current);
  await writeFile(join(current, 'keep'), 'x');
  const v2 = await s.source('v2', { VERSION: '2\n' });
  const d = await run(s.gateway, 'shop', { kind: 'deploy', source: v2 });
  assert.equal(d.state, 'failed');
  assert.equal(d.failedStep, 'current');
  // Traffic already moved: the new release serves, and the old generation did not stay behind.
  const res = await http({ port: s.port }, { path: '/' });
  assert.equal(res.json().release, d.releaseId);
  assert.equal(s.gateway.appStatus('shop')!.generations.length, 1);
  for (const pid of oldPids) await waitFor(() => { try { process.kill(pid, 0); return false; } catch { return true; } }, { message: `old pid ${pid} gone` });
});
