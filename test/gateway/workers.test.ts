/**
 * Issue #6 acceptance for background workers and Procfile apps, end to end: `berth start` as a child
 * process, the CLI as another, the demo worker (examples/node-app/worker.mjs) as real processes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, http, runCli, spawnGateway, tempDir, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';

const NODE = `"${process.execPath}"`;

/** The demo Node app (web server and worker) copied to `<dir>/<name>`. */
async function demoApp(dir: string, name = 'demo-src'): Promise<string> {
  const dest = join(dir, name);
  await cp(join(ROOT, 'examples/node-app'), dest, { recursive: true });
  return dest;
}

async function ready(gw: ChildGateway): Promise<void> {
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
}

/** Instances of the app's active generation, by `<process>.<index>`. */
async function instances(gw: ChildGateway, app: string): Promise<Map<string, any>> {
  const status = await gw.api(`/v1/apps/${app}`);
  const gen = status.generations.find((g: any) => g.active);
  return new Map((gen?.instances ?? []).map((i: any) => [`${i.process}.${i.index}`, { ...i, releaseId: gen.releaseId }]));
}

/** Whether a process runs; a zombie has exited and does not count. */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat[stat.lastIndexOf(')') + 2];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

test('a worker that stops touching its heartbeat file is restarted within heartbeat_timeout + 5s, with the reason in status and history', async (t) => {
  const dir = await tempDir(t);
  const src = await demoApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      demo: {
        source: src,
        processes: {
          web: { command: `${NODE} server.mjs` },
          worker: { command: `${NODE} worker.mjs`, heartbeat_timeout: '2s' },
          // No heartbeat_timeout: a silent worker is left alone, only an exit restarts it.
          calm: { command: `${NODE} worker.mjs` },
        },
        health: { path: '/up' },
      },
    },
  });
  const gw = await spawnGateway(t, file);
  await ready(gw);
  const before = await instances(gw, 'demo');
  const worker = before.get('worker.0');
  const calm = before.get('calm.0');
  assert.equal(worker.http, false);
  assert.equal(worker.address, null, 'a worker gets no port');
  assert.equal(worker.lastRestartReason, null);
  // Both workers must be running their code (their SIGUSR2 handler installed) before the signal: sent
  // to a node process still starting, SIGUSR2 would kill it, and that is an exit, not silence.
  await waitFor(
    async () => {
      const logs = await Promise.all(['worker', 'calm'].map((p) => readFile(join(dir, `state/apps/demo/logs/${p}.log`), 'utf8').catch(() => '')));
      return logs[0].includes('worker worker.0 processed') && logs[1].includes('worker calm.0 processed');
    },
    { message: 'both workers working' },
  );
  // The hang switch: both stop working and stop touching their heartbeat files.
  process.kill(worker.pid, 'SIGUSR2');
  process.kill(calm.pid, 'SIGUSR2');
  const restarted = await waitFor(
    async () => {
      const w = (await instances(gw, 'demo')).get('worker.0');
      return w.pid !== null && w.pid !== worker.pid && w.state === 'ready' ? w : null;
    },
    { timeoutMs: 2_000 + 5_000, message: 'the silent worker restarted within heartbeat_timeout + 5s' },
  );
  assert.equal(restarted.lastRestartReason, 'heartbeat');
  assert.equal(restarted.restarts, 1);
  assert.equal(await alive(worker.pid), false);
  const calmNow = (await instances(gw, 'demo')).get('calm.0');
  assert.equal(calmNow.pid, calm.pid, 'a worker without heartbeat_timeout is not restarted for being silent');
  assert.equal(calmNow.lastRestartReason, null);

  const status = await runCli(['status', 'demo', '--json', '--socket', gw.socket]);
  assert.equal(status.code, 0, status.stderr);
  assert.equal(JSON.parse(status.stdout).generations[0].instances.find((i: any) => i.process === 'worker').lastRestartReason, 'heartbeat');
  const history = await runCli(['history', 'demo', '--socket', gw.socket, '--json']);
  assert.equal(history.code, 0, history.stderr);
  const row = JSON.parse(history.stdout).history.find((h: any) => h.action === 'restart');
  assert.ok(row, history.stdout);
  assert.equal(row.user, 'supervisor');
  assert.equal(row.target, 'worker.0');
  assert.equal(row.outcome, 'ok');
  assert.match(row.detail, /^heartbeat: silent for \d+s$/);
  const log = await readFile(join(dir, 'state/apps/demo/logs/worker.log'), 'utf8');
  assert.match(log, / worker\.0 \S+ berth heartbeat missed: silent for \d+s, restarting/);
});

test('a deploy replaces the workers: the new worker reports the new release and no old worker outlives stop_old', async (t) => {
  const dir = await tempDir(t);
  const src = await demoApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      demo: {
        source: src,
        processes: { web: { command: `${NODE} server.mjs` }, worker: { command: `${NODE} worker.mjs`, instances: 2, heartbeat_timeout: '5s' } },
        health: { path: '/up' },
        timeouts: { drain: '2s' },
      },
    },
  });
  const gw = await spawnGateway(t, file);
  await ready(gw);
  const old = await instances(gw, 'demo');
  const oldRelease = old.get('worker.0').releaseId;
  const oldPids = [old.get('worker.0').pid, old.get('worker.1').pid];
  const deployed = await runCli(['deploy', 'demo', '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  assert.match(deployed.stdout, /stop_old +ok/);
  // The deploy is over only once stop_old is: by then the old workers are gone.
  for (const pid of oldPids) assert.equal(await alive(pid), false, `old worker ${pid} is gone when the deploy returns`);
  const status = await gw.api('/v1/apps/demo');
  assert.equal(status.generations.length, 1, 'only the new generation is left');
  const now = await instances(gw, 'demo');
  const newRelease = now.get('worker.0').releaseId;
  assert.notEqual(newRelease, oldRelease);
  for (const key of ['worker.0', 'worker.1']) {
    assert.equal(now.get(key).releaseId, newRelease);
    assert.equal(now.get(key).state, 'ready');
  }
  const log = await waitFor(
    async () => {
      const text = await readFile(join(dir, 'state/apps/demo/logs/worker.log'), 'utf8');
      return text.includes(`started: release ${newRelease}`) ? text : null;
    },
    { message: 'the new worker to say which release it runs' },
  );
  assert.match(log, new RegExp(` worker\\.0 ${oldRelease} out worker worker\\.0 started: release ${oldRelease}`));
  assert.match(log, new RegExp(` worker\\.0 ${newRelease} out worker worker\\.0 started: release ${newRelease}`));
  // The old workers stopped after the new ones started: the order a queue can tolerate.
  const newStart = log.indexOf(`started: release ${newRelease}`);
  const oldStop = log.lastIndexOf(`${oldRelease} out worker worker.0 stopping`);
  assert.ok(oldStop > newStart, 'old worker.0 stopped after the new one started');
});

test('a Procfile app (web, worker, release) deploys with no processes in config; a malformed Procfile fails the deploy naming the line', async (t) => {
  const dir = await tempDir(t);
  const src = await demoApp(dir, 'v1');
  await writeFile(
    join(src, 'Procfile'),
    ['# the process types of this app', `web: ${NODE} server.mjs`, '', `worker: ${NODE} worker.mjs`, 'release: echo "release $BERTH_RELEASE" >> "$MARKS"', ''].join('\n'),
  );
  const marks = join(dir, 'marks');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { proc: { source: src, env: { MARKS: marks }, scale: { worker: 2 }, routes: [{ path: '/', to: 'web' }], health: { path: '/up' } } },
  });
  const gw = await spawnGateway(t, file);
  await ready(gw);
  // The first start is a deploy too: the Procfile's release command ran once, in the first release.
  const first = (await instances(gw, 'proc')).get('web.0').releaseId;
  assert.equal(await readFile(marks, 'utf8'), `release ${first}\n`);
  await writeFile(marks, '');
  const deployed = await runCli(['deploy', 'proc', '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  const now = await instances(gw, 'proc');
  const release = now.get('web.0').releaseId;
  assert.deepEqual([...now.keys()].sort(), ['web.0', 'worker.0', 'worker.1'], 'web once, worker scaled to 2');
  assert.equal(now.get('web.0').http, true);
  assert.equal(now.get('worker.0').http, false);
  assert.equal(await readFile(marks, 'utf8'), `release ${release}\n`, 'the Procfile release command ran once, in the new release');
  const res = await http({ port: gw.port }, { path: '/' });
  assert.equal(res.status, 200);
  assert.equal(res.json().release, release);

  const bad = await demoApp(dir, 'v2');
  await writeFile(join(bad, 'Procfile'), [`web: ${NODE} server.mjs`, '', 'this line is not a process', `worker: ${NODE} worker.mjs`].join('\n'));
  const failed = await runCli(['deploy', 'proc', bad, '--socket', gw.socket]);
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /failed at step release: Procfile:3: expected "<type>: <command>", got "this line is not a process"/);
  assert.equal((await http({ port: gw.port }, { path: '/' })).json().release, release, 'the old release still serves');
});
