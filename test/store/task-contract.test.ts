/** Contract tests of task runs and the retention deletes, shared by every Store implementation. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../../src/lib/errors.ts';
import type { DeployRecord, TaskRunRecord } from '../../src/store/store.ts';
import { forEachBackend, openFresh, type Backend } from './backends.ts';

function run(id: string, over: Partial<TaskRunRecord> = {}): TaskRunRecord {
  return {
    id,
    app: 'shop',
    task: 'nightly',
    trigger: 'schedule',
    state: 'running',
    command: 'node nightly.js',
    releaseId: '20260101000000-abcdef',
    user: null,
    startedAt: '2026-01-01T00:00:00.000Z',
    finishedAt: null,
    exitCode: null,
    durationMs: null,
    output: '',
    error: null,
    ...over,
  };
}

function deploy(id: string, createdAt: string, over: Partial<DeployRecord> = {}): DeployRecord {
  return { id, app: 'shop', kind: 'deploy', state: 'succeeded', releaseId: null, previousRelease: null, source: null, user: null, failedStep: null, error: null, logTail: [], createdAt, finishedAt: createdAt, ...over };
}

/** A run as it reads back when written without a node: the store (opened without one) names `local`. */
function written(r: TaskRunRecord): TaskRunRecord {
  return { ...r, node: 'local' };
}

const isCode = (code: string) => (err: unknown) => err instanceof BerthError && err.code === code;

function taskContract(backend: Backend): void {
  const name = backend.name;
  test(`${name}: a task run is created running, finished with its outcome, and read back field for field`, async (t) => {
    const store = await openFresh(backend, t);
    await store.createTaskRun(run('t1'));
    assert.deepEqual(await store.getTaskRun('t1'), written(run('t1')));
    const output = 'line one\nligne deux é\n';
    await store.finishTaskRun('t1', { state: 'failed', finishedAt: '2026-01-01T00:00:03.000Z', exitCode: 7, durationMs: 3000, output, error: 'exited with 7' });
    assert.deepEqual(await store.getTaskRun('t1'), written(run('t1', { state: 'failed', finishedAt: '2026-01-01T00:00:03.000Z', exitCode: 7, durationMs: 3000, output, error: 'exited with 7' })));
    // A gateway-wide job has no app, no command and no release.
    const bare = run('t2', { app: null, task: 'cleanup', trigger: 'cleanup', command: null, releaseId: null, user: 'alice' });
    await store.createTaskRun(bare);
    assert.deepEqual(await store.getTaskRun('t2'), written(bare));
    assert.equal(await store.getTaskRun('nope'), null);
  });

  test(`${name}: task runs list newest first, filtered by app, task and states, within the limit`, async (t) => {
    const store = await openFresh(backend, t);
    await store.createTaskRun(run('a', { startedAt: '2026-01-01T00:00:01.000Z', state: 'succeeded' }));
    await store.createTaskRun(run('b', { startedAt: '2026-01-01T00:00:02.000Z', state: 'skipped' }));
    await store.createTaskRun(run('c', { startedAt: '2026-01-01T00:00:03.000Z', task: 'hourly', state: 'timeout' }));
    await store.createTaskRun(run('d', { startedAt: '2026-01-01T00:00:04.000Z', app: 'blog', trigger: 'manual', task: 'run' }));
    assert.deepEqual((await store.listTaskRuns()).map((r) => r.id), ['d', 'c', 'b', 'a']);
    assert.deepEqual((await store.listTaskRuns({ app: 'shop' })).map((r) => r.id), ['c', 'b', 'a']);
    assert.deepEqual((await store.listTaskRuns({ app: 'shop', task: 'nightly' })).map((r) => r.id), ['b', 'a']);
    assert.deepEqual((await store.listTaskRuns({ app: 'shop', task: 'nightly', states: ['succeeded', 'failed'] })).map((r) => r.id), ['a']);
    assert.deepEqual(await store.listTaskRuns({ states: [] }), []);
    assert.deepEqual((await store.listTaskRuns({ trigger: 'manual' })).map((r) => r.id), ['d']);
    assert.deepEqual((await store.listTaskRuns({ limit: 2 })).map((r) => r.id), ['d', 'c']);
  });

  test(`${name}: runs left running become interrupted; finished runs keep their state`, async (t) => {
    const store = await openFresh(backend, t);
    await store.createTaskRun(run('r1', { startedAt: '2026-01-01T00:00:01.000Z' }));
    await store.createTaskRun(run('r2', { startedAt: '2026-01-01T00:00:02.000Z', state: 'succeeded', finishedAt: '2026-01-01T00:00:02.500Z', exitCode: 0, durationMs: 500 }));
    await store.createTaskRun(run('r3', { startedAt: '2026-01-01T00:00:03.000Z' }));
    assert.deepEqual(await store.interruptTaskRuns('2026-01-02T00:00:00.000Z'), ['r1', 'r3']);
    const r1 = (await store.getTaskRun('r1'))!;
    assert.equal(r1.state, 'interrupted');
    assert.equal(r1.finishedAt, '2026-01-02T00:00:00.000Z');
    assert.match(r1.error ?? '', /gateway stopped/);
    assert.equal((await store.getTaskRun('r2'))!.state, 'succeeded');
    assert.deepEqual(await store.interruptTaskRuns('2026-01-02T00:00:00.000Z'), [], 'nothing left to interrupt');
  });

  test(`${name}: retention deletes finished task runs and deploys (with their events) older than the cut`, async (t) => {
    const store = await openFresh(backend, t);
    await store.createTaskRun(run('old', { startedAt: '2026-01-01T00:00:00.000Z', state: 'succeeded' }));
    await store.createTaskRun(run('old-running', { startedAt: '2026-01-01T00:00:00.000Z' }));
    await store.createTaskRun(run('new', { startedAt: '2026-01-03T00:00:00.000Z', state: 'succeeded' }));
    assert.equal(await store.deleteTaskRunsBefore('2026-01-02T00:00:00.000Z'), 1);
    assert.deepEqual((await store.listTaskRuns()).map((r) => r.id).sort(), ['new', 'old-running']);

    await store.createDeploy(deploy('d-old', '2026-01-01T00:00:00.000Z'));
    await store.addDeployEvent({ deployId: 'd-old', seq: 1, step: 'prepare', status: 'succeeded', at: '2026-01-01T00:00:00.000Z', durationMs: 1, message: null });
    await store.createDeploy(deploy('d-running', '2026-01-01T00:00:00.000Z', { state: 'running', finishedAt: null }));
    await store.createDeploy(deploy('d-new', '2026-01-03T00:00:00.000Z'));
    assert.equal(await store.deleteDeploysBefore('2026-01-02T00:00:00.000Z'), 1);
    assert.equal(await store.getDeploy('d-old'), null);
    assert.deepEqual(await store.listDeployEvents('d-old'), []);
    assert.ok(await store.getDeploy('d-running'), 'a running deploy is never deleted');
    assert.ok(await store.getDeploy('d-new'));
  });

  test(`${name}: bad task run input is refused clearly`, async (t) => {
    const store = await openFresh(backend, t);
    await assert.rejects(store.createTaskRun(run('x', { state: 'done' as never })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createTaskRun(run('x', { trigger: 'cron' as never })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createTaskRun(run('x', { task: '' })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createTaskRun(run('x', { startedAt: 'yesterday' })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createTaskRun(run('x', { exitCode: 1.5 })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createTaskRun(run('x', { durationMs: -1 })), isCode('BERTH_E_BAD_REQUEST'));
    await store.createTaskRun(run('x'));
    await assert.rejects(store.createTaskRun(run('x')), isCode('BERTH_E_CONFLICT'));
    await assert.rejects(store.finishTaskRun('missing', { state: 'succeeded', finishedAt: null, exitCode: 0, durationMs: 1, output: '', error: null }), isCode('BERTH_E_NOT_FOUND'));
    await assert.rejects(store.finishTaskRun('x', { state: 'later' as never, finishedAt: null, exitCode: 0, durationMs: 1, output: '', error: null }), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.listTaskRuns({ limit: 0 }), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.listTaskRuns({ states: ['odd' as never] }), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.listTaskRuns({ trigger: 'cron' as never }), isCode('BERTH_E_BAD_REQUEST'));
  });
}

forEachBackend(taskContract);
