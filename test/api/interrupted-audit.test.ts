/**
 * Audit rows a killed gateway left pending are finished as `interrupted` at the next start, naming the
 * deploy or task run they were about (issue #11, defect 2), on a real SQLite store. The end-to-end case
 * (kill -9 during wait_healthy) is in test/gateway/restart-safety.test.ts.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { BerthError } from '../../src/lib/errors.ts';
import { finishInterruptedAudit } from '../../src/api/interrupted-audit.ts';
import type { AuditRecord, DeployRecord, TaskRunRecord } from '../../src/store/store.ts';

async function openStore(t: TestContext): Promise<SqliteStore> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-audit-'));
  const store = new SqliteStore({ path: join(dir, 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  await store.open();
  t.after(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return store;
}

function row(over: Partial<Omit<AuditRecord, 'id'>>): Omit<AuditRecord, 'id'> {
  return { at: '2026-11-22T10:00:00.000Z', user: 'alice', channel: 'socket', action: 'deploy', app: 'shop', target: null, outcome: 'pending', detail: null, finishedAt: null, ...over };
}

function deploy(id: string, over: Partial<DeployRecord>): DeployRecord {
  return { id, app: 'shop', kind: 'deploy', state: 'running', releaseId: null, previousRelease: null, source: null, user: null, failedStep: null, error: null, logTail: [], createdAt: '2026-11-22T10:00:00.000Z', finishedAt: null, ...over };
}

function run(id: string, over: Partial<TaskRunRecord>): TaskRunRecord {
  return { id, app: 'shop', task: 'nightly', trigger: 'schedule', state: 'running', command: 'node nightly.js', releaseId: null, user: null, startedAt: '2026-11-22T10:00:00.000Z', finishedAt: null, exitCode: null, durationMs: null, output: '', error: null, ...over };
}

test('every pending row becomes interrupted, naming its deploy (by id or by app, kind and time) or its task run', async (t) => {
  const store = await openStore(t);
  // What a killed gateway leaves: deploys and runs still running, their audit rows pending.
  const apiDeploy = 'd20261122100001-aaaaaa';
  const bootDeploy = 'd20261122100002-bbbbbb';
  await store.createDeploy(deploy(apiDeploy, { createdAt: '2026-11-22T10:00:01.050Z' }));
  await store.addDeployEvent({ deployId: apiDeploy, seq: 1, step: 'prepare', status: 'started', at: '2026-11-22T10:00:01.060Z', durationMs: null, message: null });
  await store.addDeployEvent({ deployId: apiDeploy, seq: 2, step: 'prepare', status: 'succeeded', at: '2026-11-22T10:00:01.070Z', durationMs: 10, message: null });
  await store.addDeployEvent({ deployId: apiDeploy, seq: 3, step: 'wait_healthy', status: 'started', at: '2026-11-22T10:00:01.080Z', durationMs: null, message: null });
  await store.createDeploy(deploy(bootDeploy, { app: 'blog', createdAt: '2026-11-22T10:00:02.000Z' }));
  await store.createTaskRun(run('t20261122100003-cccccc', { startedAt: '2026-11-22T10:00:03.000Z' }));
  await store.createTaskRun(run('t20261122100004-dddddd', { task: 'run', trigger: 'manual', user: 'alice', startedAt: '2026-11-22T10:00:04.010Z' }));
  const ids = {
    // The control API keeps the request body as the target; the deploy id is only known at the end.
    api: await store.addAudit(row({ at: '2026-11-22T10:00:01.000Z', target: '{"source":"/src/v2"}' })),
    boot: await store.addAudit(row({ at: '2026-11-22T10:00:02.000Z', user: 'berth-start', channel: 'internal', app: 'blog', target: bootDeploy })),
    task: await store.addAudit(row({ at: '2026-11-22T10:00:03.000Z', user: 'scheduler', channel: 'internal', action: 'task', target: 'nightly t20261122100003-cccccc', detail: 'node nightly.js' })),
    oneOff: await store.addAudit(row({ at: '2026-11-22T10:00:04.000Z', action: 'run', target: '{"command":"ls"}' })),
    mode: await store.addAudit(row({ at: '2026-11-22T10:00:05.000Z', action: 'mode', target: '{"mode":"maintenance"}' })),
    done: await store.addAudit(row({ at: '2026-11-22T10:00:06.000Z', action: 'mode', outcome: 'ok', detail: 'kept', finishedAt: '2026-11-22T10:00:06.000Z' })),
  };
  // The next start: the deployer and the scheduler mark their records first (as Gateway.start does).
  for (const id of [apiDeploy, bootDeploy]) await store.updateDeploy(id, { state: 'interrupted', finishedAt: '2026-11-22T11:00:00.000Z', error: 'the gateway stopped while this ran' });
  await store.interruptTaskRuns('2026-11-22T11:00:00.000Z');

  assert.equal(await finishInterruptedAudit(store, silentLogger()), 5);
  const byId = new Map((await store.listAudit()).map((r) => [r.id, r]));
  assert.deepEqual(
    [ids.api, ids.boot, ids.task, ids.oneOff, ids.mode].map((id) => [byId.get(id)!.outcome, byId.get(id)!.detail]),
    [
      ['interrupted', `${apiDeploy}: deploy interrupted at wait_healthy: the gateway stopped while this ran`],
      ['interrupted', `${bootDeploy}: deploy interrupted: the gateway stopped while this ran`],
      ['interrupted', 't20261122100003-cccccc: task nightly interrupted: the gateway stopped while this ran'],
      ['interrupted', 't20261122100004-dddddd: task run interrupted: the gateway stopped while this ran'],
      ['interrupted', 'mode interrupted: the gateway stopped before it finished'],
    ],
  );
  for (const id of [ids.api, ids.boot, ids.task, ids.oneOff, ids.mode]) assert.ok(byId.get(id)!.finishedAt);
  assert.equal(byId.get(ids.done)!.outcome, 'ok');
  assert.equal(byId.get(ids.done)!.detail, 'kept');
  assert.deepEqual(await store.listAudit({ outcome: 'pending' }), []);
  // A second start has nothing left to do.
  assert.equal(await finishInterruptedAudit(store, silentLogger()), 0);
});

test('the store accepts interrupted as an outcome and filters by outcome', async (t) => {
  const store = await openStore(t);
  const a = await store.addAudit(row({ outcome: 'interrupted', finishedAt: '2026-11-22T10:00:00.000Z' }));
  const b = await store.addAudit(row({ at: '2026-11-22T10:00:01.000Z' }));
  await store.addAudit(row({ at: '2026-11-22T10:00:02.000Z', outcome: 'ok' }));
  assert.deepEqual((await store.listAudit({ outcome: 'interrupted' })).map((r) => r.id), [a]);
  assert.deepEqual((await store.listAudit({ outcome: 'pending' })).map((r) => r.id), [b]);
  await store.finishAudit(b, 'interrupted', 'd1: gone', '2026-11-22T10:00:03.000Z');
  assert.deepEqual((await store.listAudit({ outcome: 'interrupted' })).map((r) => r.id), [b, a]);
  await assert.rejects(store.listAudit({ outcome: 'lost' as never }), (err: unknown) => err instanceof BerthError && err.code === 'BERTH_E_BAD_REQUEST');
});
