/**
 * Issue #11 defects 4, 5 and 9, end to end: `berth start` as a child process, the CLI as another, real
 * app processes. A release that exits at once fails its deploy in seconds, not after startup_timeout;
 * a failed release stays `failed` after it is pruned; only one release is labelled `previous`; a failed
 * deploy prints at most 20 log lines, in time order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, tempDir, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';

/** A copy of the fixture app whose web process prints 15 lines and exits 3 before it listens. */
async function crashingApp(dir: string): Promise<string> {
  const app = await fixtureApp(dir, 'bad');
  await writeFile(join(app, 'server.mjs'), "for (let i = 0; i < 15; i++) console.log(`bad release line ${i} of ${process.env.BERTH_INSTANCE}`);\nprocess.exit(3);\n");
  return app;
}

async function ready(gw: ChildGateway): Promise<void> {
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
}

async function serving(gw: ChildGateway): Promise<string> {
  return (await http({ port: gw.port }, { path: '/' })).json().release;
}

test('a release that exits at once fails wait_healthy in seconds, naming exit code 3 and its output; the old release serves on', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const bad = await crashingApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: v1, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2 } }, health: { path: '/up', interval: '250ms', startup_timeout: '60s' } } },
  });
  const gw = await spawnGateway(t, file);
  await ready(gw);
  const old = await serving(gw);

  const started = Date.now();
  // Before the fix the deploy waited out the 60s startup_timeout: the CLI is killed at 30s (code null).
  const res = await runCli(['deploy', 'shop', bad, '--socket', gw.socket], { timeoutMs: 30_000 });
  const took = Date.now() - started;
  assert.equal(res.code, 1, `${res.stdout}\n${res.stderr}`);
  assert.ok(took < 15_000, `the deploy failed after ${took}ms`);
  assert.match(res.stderr, /failed at step wait_healthy: .*web\.\d exited with code 3/);
  assert.match(res.stderr, /bad release line 14 of \d/, 'the output of the release is shown');
  // At most 20 lines, one header naming how many, and in time order whichever instance wrote them.
  const header = /last (\d+) log lines:/.exec(res.stderr);
  assert.ok(header, res.stderr);
  const count = Number(header[1]);
  assert.ok(count > 0 && count <= 20, `${count} lines`);
  const lines = res.stderr.split('\n').filter((l) => l.startsWith('  | '));
  assert.equal(lines.length, count);
  const stamps = lines.map((l) => l.slice(4, 28));
  assert.deepEqual(stamps, stamps.slice().sort(), 'lines merged by time');
  assert.match(res.stderr, new RegExp(`shop still serves release ${old}`));

  assert.equal(await serving(gw), old);
  const status = await gw.api('/v1/apps/shop');
  assert.equal(status.generations.length, 1, 'the failed generation was stopped');
  assert.equal(status.generations[0].releaseId, old);
  const [latest] = (await gw.api('/v1/apps/shop/deploys')).deploys;
  assert.equal(latest.state, 'failed');
  assert.equal(latest.failedStep, 'wait_healthy');
  assert.ok(latest.logTail.length <= 20 && latest.logTail.some((l: string) => /bad release line/.test(l)), JSON.stringify(latest.logTail));
  const releases = await gw.api('/v1/apps/shop/releases');
  assert.equal(releases.releases.find((r: any) => r.id === latest.releaseId).state, 'failed');
});

test('only the release a rollback would pick is `previous`; a failed release stays failed once pruned', async (t) => {
  const dir = await tempDir(t);
  const versions: string[] = [];
  for (const v of ['v1', 'v2', 'v3', 'v4']) versions.push(await fixtureApp(dir, v));
  const bad = await crashingApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: versions[0], keep_releases: 3, processes: { web: { command: FIXTURE_WEB_COMMAND } }, health: { path: '/up', interval: '250ms', startup_timeout: '10s' } } },
  });
  const gw = await spawnGateway(t, file);
  await ready(gw);
  const ids = [await serving(gw)];
  const failed = await runCli(['deploy', 'shop', bad, '--socket', gw.socket]);
  assert.equal(failed.code, 1, failed.stderr);
  const badId: string = (await gw.api('/v1/apps/shop/deploys')).deploys[0].releaseId;
  for (const v of versions.slice(1)) {
    const res = await runCli(['deploy', 'shop', v, '--socket', gw.socket]);
    assert.equal(res.code, 0, res.stderr);
    ids.push(await serving(gw));
  }
  const [v1, v2, v3, v4] = ids;
  const stateOf = async (): Promise<Map<string, string>> => new Map((await gw.api('/v1/apps/shop/releases')).releases.map((r: any) => [r.id, r.state]));
  let states = await stateOf();
  assert.equal(states.get(v4), 'active');
  assert.equal(states.get(v3), 'previous');
  assert.equal(states.get(v2), 'ready', 'an earlier previous is no longer labelled so');
  assert.equal(states.get(v1), 'pruned');
  // keep_releases 3 pruned the failed release's directory; its row still says it failed.
  assert.equal(existsSync(join(dir, 'state', 'apps', 'shop', 'releases', badId)), false, 'the failed release was pruned');
  assert.equal(states.get(badId), 'failed');

  const listed = await runCli(['releases', 'shop', '--socket', gw.socket]);
  assert.equal(listed.code, 0, listed.stderr);
  const rows = listed.stdout.split('\n');
  assert.deepEqual(rows.filter((r) => /\bprevious\b/.test(r)).map((r) => r.split(/\s+/)[0]), [v3]);
  assert.match(rows.find((r) => r.startsWith(badId)) ?? '', /\bfailed\b/);

  // The release labelled previous is the one a rollback picks; then the label moves to the next one back.
  const back = await runCli(['rollback', 'shop', '--socket', gw.socket]);
  assert.equal(back.code, 0, back.stderr);
  assert.equal(await serving(gw), v3);
  states = await stateOf();
  assert.equal(states.get(v3), 'active');
  assert.equal(states.get(v2), 'previous');
  assert.equal(states.get(v4), 'ready');
  assert.equal([...states.values()].filter((s) => s === 'previous').length, 1);
  assert.equal([...states.values()].filter((s) => s === 'active').length, 1);
  assert.equal(states.get(badId), 'failed');
});
