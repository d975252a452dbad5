/**
 * Issue #11, defect 1, end to end with `berth start` as child processes and real apps: a second start
 * on a live gateway's state dir is refused before it touches anything. (Defect 2, the audit row of a
 * deploy interrupted by kill -9, is checked in deploy.test.ts's kill -9 test.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, activePids, fixtureApp, http, processGroupAlive, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig } from '../helpers/gateway.ts';
import { LoadRunner } from '../deploy/load-runner.ts';

test('a second berth start on a live gateway state dir is refused before it touches anything; after kill -9 a start succeeds', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'info' },
    apps: { shop: { source: v1, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2 } }, health: { path: '/up', interval: '250ms' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const pids = await activePids(gw);
  assert.equal(pids.length, 2);
  const load = LoadRunner.start({ port: gw.port, timeoutMs: 10_000 });
  t.after(() => load.stop());
  await load.more(20);

  const second = await runCli(['start', '--config', file], { timeoutMs: 30_000 });
  assert.equal(second.code, 1, `${second.stdout}\n${second.stderr}`);
  assert.match(second.stderr, new RegExp(`^berth: another gateway \\(pid ${gw.proc.pid}, started [^)]+\\) is already running on control socket ${gw.socket} with state dir ${join(dir, 'state')}; stop it first`, 'm'));
  // Nothing of the live gateway was touched: its instances and its control socket are the same.
  await load.more(50);
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
  assert.deepEqual(await activePids(gw), pids);
  for (const pid of pids) assert.equal(processGroupAlive(pid), true);
  const status = await gw.api('/v1/status');
  assert.equal(status.pid, gw.proc.pid);
  assert.equal(status.state, 'running');
  assert.equal(gw.logs.filter((l) => l.msg === 'killed orphan process group').length, 0);
  assert.equal(gw.proc.exitCode, null);

  // A gateway killed with SIGKILL leaves no lock behind: the next start takes over and reaps its apps.
  gw.proc.kill('SIGKILL');
  assert.equal((await gw.exited).signal, 'SIGKILL');
  const again = await spawnGateway(t, file);
  await untilReady(again);
  assert.equal((await again.api('/v1/status')).pid, again.proc.pid);
  for (const pid of pids) await waitFor(() => !processGroupAlive(pid), { timeoutMs: 5_000, message: `process group ${pid} to be gone` });
  assert.equal((await http({ port: again.port }, { path: '/' })).status, 200);
  // A clean stop lets the next start in too.
  assert.equal((await runCli(['stop', '--socket', again.socket])).code, 0);
  assert.equal((await again.exited).code, 0);
  assert.equal(again.logs.filter((l) => l.msg === 'killed orphan process group').length, pids.length);
  const third = await spawnGateway(t, file);
  await untilReady(third);
});
