import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { DeployRecord, ReleaseState, TaskRunRecord } from '../../src/store/store.ts';
import { CleanupJob } from '../../src/scheduler/cleanup-job.ts';
import { fixture, waitFor, type Fixture } from './helpers.ts';

const HOUR = 3_600_000;

function ago(ms: number): string {
  return new Date(Date.now() - ms).toISOString();
}

function deploy(id: string, createdAt: string): DeployRecord {
  return { id, app: 'shop', kind: 'deploy', state: 'succeeded', releaseId: null, previousRelease: null, source: null, user: null, failedStep: null, error: null, logTail: [], createdAt, finishedAt: createdAt };
}

function run(id: string, startedAt: string): TaskRunRecord {
  return { id, app: 'shop', task: 'nightly', trigger: 'schedule', state: 'succeeded', command: 'true', releaseId: null, user: null, startedAt, finishedAt: startedAt, exitCode: 0, durationMs: 1, output: '', error: null };
}

/** Old and new rows of every kind the cleanup deletes. */
async function seedHistory(f: Fixture): Promise<void> {
  await f.store.createDeploy(deploy('d-old', ago(2 * HOUR)));
  await f.store.addDeployEvent({ deployId: 'd-old', seq: 1, step: 'prepare', status: 'succeeded', at: ago(2 * HOUR), durationMs: 1, message: null });
  await f.store.createDeploy(deploy('d-new', ago(0)));
  await f.store.createTaskRun(run('t-old', ago(2 * HOUR)));
  await f.store.createTaskRun(run('t-new', ago(0)));
  await f.store.addAudit({ at: ago(2 * HOUR), user: 'alice', channel: 'socket', action: 'mode', app: 'shop', target: 'old', outcome: 'ok', detail: null, finishedAt: null });
  await f.store.addAudit({ at: ago(0), user: 'alice', channel: 'socket', action: 'mode', app: 'shop', target: 'new', outcome: 'ok', detail: null, finishedAt: null });
}

/** Release directories and rows: ids sort by time, r1 oldest. */
async function seedReleases(f: Fixture, states: Record<string, ReleaseState>): Promise<string[]> {
  const ids: string[] = [];
  let n = 0;
  for (const [name, state] of Object.entries(states)) {
    const id = `2025010100000${++n}-00000${n}`;
    ids.push(id);
    await mkdir(join(f.config.stateDir, 'apps', 'shop', 'releases', id), { recursive: true });
    await f.store.putRelease({ app: 'shop', id, createdAt: ago(HOUR - n), state, source: name, revision: null });
  }
  return ids;
}

test('cleanup deletes deploys (with events), task runs and audit rows older than the retention, and prunes releases', async (t) => {
  const f = await fixture(t);
  await seedHistory(f);
  f.config.apps.shop.keepReleases = 2;
  const [r1, r2, r3, r4, r5, r6] = await seedReleases(f, { r1: 'previous', r2: 'previous', r3: 'active', r4: 'failed', r5: 'ready', r6: 'ready' });
  f.host.active = { id: r3, dir: join(f.config.stateDir, 'apps', 'shop', 'releases', r3), processes: {} };
  const lines: string[] = [];
  await new CleanupJob({ store: f.store, host: f.host, retentionMs: HOUR, apps: ['shop'] }).run((l) => lines.push(l), new AbortController().signal);

  assert.equal(await f.store.getDeploy('d-old'), null);
  assert.deepEqual(await f.store.listDeployEvents('d-old'), []);
  assert.ok(await f.store.getDeploy('d-new'));
  assert.deepEqual((await f.store.listTaskRuns()).map((r) => r.id), ['t-new']);
  assert.deepEqual((await f.store.listAudit()).map((a) => a.target), ['new']);
  assert.match(lines[0], /^deleted 1 deploy\(s\), 1 task run\(s\) and 1 audit row\(s\) from before /);

  // keep 2: the fixture's own release and r6 (the newest that count), plus the active r3 and the
  // previous r2 (the newest good one before it); r5 is beyond the window, r4 failed, r1 is old.
  const left = (await readdir(join(f.config.stateDir, 'apps', 'shop', 'releases'))).sort();
  assert.deepEqual(left, [f.releaseDir.split('/').pop(), r2, r3, r6].sort());
  for (const id of [r1, r5]) assert.equal((await f.store.getRelease('shop', id))!.state, 'pruned');
  assert.equal((await f.store.getRelease('shop', r4))!.state, 'failed', 'a failed release stays failed once pruned');
  assert.equal(lines[1], `shop: pruned ${r5}, ${r4}, ${r1}`);
});

test('cleanup leaves an app without an active release alone', async (t) => {
  const f = await fixture(t);
  f.config.apps.shop.keepReleases = 1;
  const ids = await seedReleases(f, { a: 'ready', b: 'ready', c: 'ready' });
  f.host.active = null;
  const lines: string[] = [];
  await new CleanupJob({ store: f.store, host: f.host, retentionMs: HOUR, apps: ['shop'] }).run((l) => lines.push(l), new AbortController().signal);
  const left = await readdir(join(f.config.stateDir, 'apps', 'shop', 'releases'));
  for (const id of ids) assert.ok(left.includes(id));
  assert.equal(lines[1], 'shop: no active release, nothing pruned');
});

test('the cleanup job runs on cleanup_cron with a short retention and is recorded like any task', async (t) => {
  const f = await fixture(t, { top: { cleanup_cron: '* * * * * *', history_retention: '30m' } });
  await seedHistory(f);
  f.scheduler.start();
  const done = await waitFor(async () => (await f.store.listTaskRuns({ trigger: 'cleanup' })).find((r) => r.state === 'succeeded'), 'a cleanup run');
  assert.equal(done.task, 'cleanup');
  assert.equal(done.app, null);
  assert.equal(done.command, null);
  assert.match(done.output, /deleted 1 deploy\(s\), 1 task run\(s\) and 1 audit row\(s\)/);
  assert.equal(await f.store.getDeploy('d-old'), null);
  assert.ok(await f.store.getTaskRun('t-new'));
  assert.equal(await f.store.getTaskRun('t-old'), null);
  const audit = await f.audit.list();
  assert.ok(audit.some((a) => a.target === 'new'));
  assert.ok(!audit.some((a) => a.target === 'old'));
  assert.ok(audit.some((a) => a.user === 'scheduler' && a.action === 'task' && a.target === `cleanup ${done.id}`));
});
