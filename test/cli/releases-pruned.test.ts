/**
 * Issue #11 defect 5, end to end: a failed release whose directory was pruned shows as `failed, pruned`
 * in `berth releases`, and the releases API answers when it was pruned (`prunedAt`) for every pruned
 * release. `berth start` as a child process, the CLI as another, real app processes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stateLabel } from '../../src/cli/releases.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';

test('berth releases shows a failed release whose directory was pruned as `failed, pruned`; the API gives prunedAt', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  const v3 = await fixtureApp(dir, 'v3');
  // A release whose web process exits before it listens: its deploy fails at wait_healthy.
  const bad = await fixtureApp(dir, 'bad');
  await writeFile(join(bad, 'server.mjs'), 'process.exit(3);\n');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: v1, keep_releases: 1, processes: { web: { command: FIXTURE_WEB_COMMAND } }, health: { path: '/up', interval: '250ms', startup_timeout: '10s' } } },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });

  const failed = await runCli(['deploy', 'shop', bad, '--socket', gw.socket]);
  assert.equal(failed.code, 1, failed.stderr);
  const badId: string = (await gw.api('/v1/apps/shop/deploys')).deploys[0].releaseId;
  // keep_releases 1: each good deploy prunes what is neither the newest, the active nor the previous one.
  const before = new Date().toISOString();
  for (const v of [v2, v3]) {
    const res = await runCli(['deploy', 'shop', v, '--socket', gw.socket]);
    assert.equal(res.code, 0, res.stderr);
  }
  const after = new Date().toISOString();
  assert.equal(existsSync(join(dir, 'state', 'apps', 'shop', 'releases', badId)), false, 'the failed release was pruned');

  const api = await gw.api('/v1/apps/shop/releases');
  const byState = (state: string) => api.releases.filter((r: any) => r.state === state);
  assert.equal(api.releases.length, 4);
  const badRow = api.releases.find((r: any) => r.id === badId);
  assert.equal(badRow.state, 'failed', 'the state still says it failed');
  assert.equal(byState('pruned').length, 1, 'v1 was pruned');
  for (const r of [badRow, ...byState('pruned')]) {
    assert.ok(typeof r.prunedAt === 'string' && r.prunedAt >= before && r.prunedAt <= after, `${r.id} prunedAt ${r.prunedAt}`);
  }
  for (const r of [...byState('active'), ...byState('previous')]) assert.equal(r.prunedAt, null, `${r.id} is on disk`);

  const listed = await runCli(['releases', 'shop', '--socket', gw.socket]);
  assert.equal(listed.code, 0, listed.stderr);
  const rows = listed.stdout.split('\n');
  assert.match(rows.find((r) => r.startsWith(badId)) ?? '', /\sfailed, pruned\s/, listed.stdout);
  const prunedId = byState('pruned')[0].id;
  const prunedRow = rows.find((r) => r.startsWith(prunedId)) ?? '';
  assert.match(prunedRow, /\spruned\s/, listed.stdout);
  assert.doesNotMatch(prunedRow, /,/, 'a pruned release says pruned once');

  const json = await runCli(['releases', 'shop', '--json', '--socket', gw.socket]);
  assert.equal(json.code, 0, json.stderr);
  assert.equal(JSON.parse(json.stdout).releases.find((r: any) => r.id === badId).prunedAt, badRow.prunedAt);
});

test('the state label: both facts for a pruned failed release; an older gateway without prunedAt shows the state', () => {
  assert.equal(stateLabel({ state: 'failed', prunedAt: '2026-01-01T00:00:00.000Z' }), 'failed, pruned');
  assert.equal(stateLabel({ state: 'pruned', prunedAt: '2026-01-01T00:00:00.000Z' }), 'pruned');
  assert.equal(stateLabel({ state: 'pruned', prunedAt: null }), 'pruned', 'pruned by a gateway older than prunedAt');
  assert.equal(stateLabel({ state: 'failed', prunedAt: null }), 'failed', 'failed, directory still there for inspection');
  assert.equal(stateLabel({ state: 'failed' }), 'failed', 'an older gateway leaves the field out');
  assert.equal(stateLabel({ state: 'active', prunedAt: null }), 'active');
});
