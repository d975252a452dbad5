/**
 * Issue #3 acceptance, end to end: `berth start` as a child process, the `berth` CLI as another, real
 * app processes and real sockets. Request pinning across a switch, a gateway killed mid-deploy, a CLI
 * that goes away, the reload trigger file, per-app reloads, and the Python example.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cp, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, FIXTURE_WEB_COMMAND, activePids, deployUntilWaitHealthy, fixtureApp, http, processGroupAlive, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig, MAIN } from '../helpers/gateway.ts';
import { LoadRunner } from '../deploy/load-runner.ts';
import { gatedBoot } from '../deploy/gated-boot.ts';
import { RELOAD_TRIGGER_TIMING } from '../../src/deploy/reload-trigger.ts';

const hasPython = spawnSync('python3', ['-c', 'import wsgiref']).status === 0;

test('a long request started before a deploy finishes on the old release; requests after it get the new one', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  await writeFile(join(v2, 'VERSION'), '2\n');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: v1, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 8 } }, health: { path: '/up', interval: '250ms' }, timeouts: { drain: '20s' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const old = (await http({ port: gw.port }, { path: '/' })).json().release;
  const load = LoadRunner.start({ port: gw.port });
  t.after(() => load.stop());
  const long = http({ port: gw.port }, { path: '/slow?ms=3000' });
  await waitFor(async () => (await gw.api('/v1/apps/shop')).db.inUse >= 1, { message: 'the long request in flight' });
  const deployed = await runCli(['deploy', 'shop', v2, '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  // The deploy returns once the old generation drained, which waited for the long request.
  const after = (await http({ port: gw.port }, { path: '/' })).json();
  assert.notEqual(after.release, old);
  assert.equal(await readFile(join(after.cwd, 'VERSION'), 'utf8'), '2\n');
  const res = await long;
  assert.equal(res.status, 200);
  assert.equal(res.json().release, old);
  assert.equal(res.json().slept, 3000);
  assert.match(deployed.stdout, /drain +ok +\d/);
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
  assert.deepEqual([...stats.releases.keys()].sort(), [old, after.release].sort());
});

test('kill -9 of the gateway during wait_healthy: the deploy and its audit row show interrupted, the old release serves, no orphan is left', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  // Never opened: the new release stays in wait_healthy until the gateway is killed.
  const slow = await fixtureApp(dir, 'slow');
  await gatedBoot(slow, join(dir, 'gate'));
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: v1, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2 } }, health: { path: '/up', interval: '250ms', startup_timeout: '30s' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const old = (await http({ port: gw.port }, { path: '/' })).json().release;
  const oldPids = await activePids(gw);
  const id = await deployUntilWaitHealthy(gw, slow);
  const before = (await gw.api('/v1/history?app=shop')).history.find((h: any) => h.action === 'deploy' && h.user !== 'berth-start');
  assert.equal(before.outcome, 'pending');
  // The aborted generation's processes are running (sleeping before they listen).
  const gens = (await gw.api('/v1/apps/shop')).generations;
  const aborted: number[] = gens.find((g: any) => !g.active).instances.map((i: any) => i.pid);
  assert.equal(aborted.length, 2);
  for (const pid of aborted) assert.equal(processGroupAlive(pid), true);
  gw.proc.kill('SIGKILL');
  assert.equal((await gw.exited).signal, 'SIGKILL');

  const again = await spawnGateway(t, file);
  await untilReady(again);
  const record = await again.api(`/v1/deploys/${id}`);
  assert.equal(record.state, 'interrupted');
  // Its audit row, left pending by the killed gateway, is finished as interrupted (API and CLI).
  const { history } = await again.api('/v1/history?app=shop');
  const row = history.find((h: any) => h.action === 'deploy' && h.at === before.at);
  assert.ok(row, JSON.stringify(history));
  assert.equal(row.outcome, 'interrupted');
  assert.match(row.detail, new RegExp(`^${id}: deploy interrupted at wait_healthy: the gateway stopped while this ran$`));
  assert.ok(row.finishedAt);
  assert.equal(history.filter((h: any) => h.outcome === 'pending').length, 0);
  const table = await runCli(['history', 'shop', '--socket', again.socket]);
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, new RegExp(`deploy .*interrupted .*${id}: deploy interrupted at wait_healthy`));
  const json = await runCli(['history', 'shop', '--json', '--socket', again.socket]);
  assert.equal(JSON.parse(json.stdout).history.find((h: any) => h.at === before.at).outcome, 'interrupted');
  assert.equal((await http({ port: again.port }, { path: '/' })).json().release, old);
  const releases = await again.api('/v1/apps/shop/releases');
  assert.equal(releases.active, old);
  assert.equal(releases.releases.find((r: any) => r.id === record.releaseId).state, 'failed');
  // Every process group the killed gateway started is gone: the aborted generation and the old one
  // (the new gateway started the old release afresh).
  for (const pgid of [...aborted, ...oldPids]) {
    await waitFor(() => !processGroupAlive(pgid), { timeoutMs: 5_000, message: `process group ${pgid} to be gone` });
  }
  // And the app deploys again.
  const redeploy = await runCli(['deploy', 'shop', v1, '--socket', again.socket]);
  assert.equal(redeploy.code, 0, redeploy.stderr);
  // Log lines are buffered; a clean stop writes them out.
  assert.equal((await runCli(['stop', '--socket', again.socket])).code, 0);
  assert.equal((await again.exited).code, 0);
  assert.ok(again.logs.some((l) => l.msg === 'deploy interrupted by a gateway stop' && l.deploy === id), 'the interrupted deploy is logged');
  assert.equal(again.logs.filter((l) => l.msg === 'killed orphan process group').length, aborted.length + oldPids.length);
});

test('the deploy belongs to the gateway: killing the berth deploy process does not stop it', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const gate = join(dir, 'gate');
  const slow = await fixtureApp(dir, 'slow');
  await gatedBoot(slow, gate);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: v1, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } }, health: { path: '/up', interval: '250ms' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const old = (await http({ port: gw.port }, { path: '/' })).json().release;
  const cli = spawn(process.execPath, [MAIN, 'deploy', 'shop', slow, '--socket', gw.socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => cli.kill('SIGKILL'));
  let out = '';
  cli.stdout.on('data', (c: Buffer) => (out += c));
  const cliExit = new Promise<NodeJS.Signals | null>((r) => cli.once('exit', (_code, signal) => r(signal)));
  await waitFor(() => /wait_healthy\s+\.\.\./.test(out), { message: 'the CLI to show wait_healthy' });
  const id = /\((d\d{14}-[0-9a-f]{6})\)/.exec(out)![1];
  cli.kill('SIGKILL');
  assert.equal(await cliExit, 'SIGKILL');
  assert.equal((await gw.api(`/v1/deploys/${id}`)).state, 'running');
  await writeFile(gate, '');
  const done = await waitFor(async () => {
    const d = await gw.api(`/v1/deploys/${id}`);
    return d.state === 'running' ? null : d;
  }, { timeoutMs: 30_000, message: 'the deploy to end' });
  assert.equal(done.state, 'succeeded', done.error);
  const now = (await http({ port: gw.port }, { path: '/' })).json().release;
  assert.equal(now, done.releaseId);
  assert.notEqual(now, old);
});

test('touching the reload trigger file reloads the app; five quick touches give one reload', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: v1, reload_trigger: 'restart.txt', processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2 } }, health: { path: '/up', interval: '250ms' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const trigger = join(dir, 'state/apps/shop/restart.txt');
  const reloads = async () => (await gw.api('/v1/apps/shop/deploys')).deploys.filter((d: any) => d.kind === 'reload');
  const touch = async () => {
    const now = new Date();
    await utimes(trigger, now, now).catch(() => writeFile(trigger, ''));
  };
  const load = LoadRunner.start({ port: gw.port });
  t.after(() => load.stop());

  for (const round of [1, 2]) {
    const before = await activePids(gw);
    // Round 1 creates the file; round 2 touches it five times in a row, over more than one stat poll
    // of the watcher (RELOAD_TRIGGER_TIMING.pollMs), so the burst is seen at two polls and must still give one reload.
    const touched = Date.now();
    for (let i = 0; i < (round === 1 ? 1 : 5); i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 60));
      await touch();
    }
    const reload = await waitFor(async () => (await reloads()).length === round && (await reloads())[0], { timeoutMs: 5_000, message: `reload ${round} to start` });
    t.diagnostic(`round ${round}: reload started ${Date.parse(reload.createdAt) - touched}ms after the first touch`);
    await waitFor(async () => (await gw.api(`/v1/deploys/${reload.id}`)).state === 'succeeded', { message: `reload ${round} to succeed` });
    const after = await activePids(gw);
    for (const pid of after) assert.ok(!before.includes(pid), `round ${round}: pid ${pid} is new`);
    assert.equal(reload.user, 'reload-trigger');
  }
  // No second reload follows the burst of touches. A stray one would already be debounced and, refused
  // while reload 2 ran, due within one retry: wait that out (the spawned gateway runs the default timings).
  const { pollMs, debounceMs, retryMs } = RELOAD_TRIGGER_TIMING;
  await new Promise((r) => setTimeout(r, pollMs + debounceMs + retryMs));
  assert.equal((await reloads()).length, 2);
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
});

test('reloading app A under load on A and B: B keeps its processes and neither fails a request', async (t) => {
  const dir = await tempDir(t);
  const a = await fixtureApp(dir, 'a');
  const b = await fixtureApp(dir, 'b');
  const web = { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 8 };
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      a: { source: a, hosts: ['a.test'], processes: { web }, health: { path: '/up', interval: '250ms' } },
      b: { source: b, hosts: ['b.test'], processes: { web }, health: { path: '/up', interval: '250ms' } },
    },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const aBefore = await activePids(gw, 'a');
  const bBefore = await activePids(gw, 'b');
  const loadA = LoadRunner.start({ port: gw.port, host: 'a.test' });
  const loadB = LoadRunner.start({ port: gw.port, host: 'b.test' });
  t.after(() => Promise.all([loadA.stop(), loadB.stop()]));
  await Promise.all([loadA.more(100), loadB.more(100)]);
  for (let i = 0; i < 2; i++) {
    const res = await runCli(['reload', 'a', '--socket', gw.socket]);
    assert.equal(res.code, 0, res.stderr);
    await Promise.all([loadA.more(50), loadB.more(50)]);
  }
  const [statsA, statsB] = await Promise.all([loadA.stop(), loadB.stop()]);
  assert.deepEqual(statsA.failures, []);
  assert.deepEqual(statsB.failures, []);
  const aAfter = await activePids(gw, 'a');
  for (const pid of aAfter) assert.ok(!aBefore.includes(pid), `a: pid ${pid} is new`);
  assert.deepEqual(await activePids(gw, 'b'), bBefore);
  assert.equal((await gw.api('/v1/apps/b')).generations.length, 1);
});

test('the Python example deploys and rolls back like the node one', { skip: hasPython ? false : 'python3 with wsgiref is not installed' }, async (t) => {
  const dir = await tempDir(t);
  const v1 = join(dir, 'py-v1');
  const v2 = join(dir, 'py-v2');
  await cp(join(ROOT, 'examples/py-app'), v1, { recursive: true });
  await cp(join(ROOT, 'examples/py-app'), v2, { recursive: true });
  await writeFile(join(v2, 'VERSION'), '2\n');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { py: { source: v1, processes: { web: { command: 'python3 app.py', instances: 2, concurrency: 4 } }, env: { PYTHONUNBUFFERED: '1' }, health: { path: '/up', interval: '250ms' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const first = (await http({ port: gw.port }, { path: '/' })).json();
  assert.equal(first.lang, 'python');
  const load = LoadRunner.start({ port: gw.port });
  t.after(() => load.stop());
  await load.more(50);
  const deployed = await runCli(['deploy', 'py', v2, '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  const second = (await http({ port: gw.port }, { path: '/' })).json();
  assert.notEqual(second.release, first.release);
  await load.more(50);
  const back = await runCli(['rollback', 'py', '--socket', gw.socket]);
  assert.equal(back.code, 0, back.stderr);
  assert.equal((await http({ port: gw.port }, { path: '/' })).json().release, first.release);
  await load.more(50);
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
  assert.deepEqual([...stats.releases.keys()].sort(), [first.release, second.release].sort());
});
