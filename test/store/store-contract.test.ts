/** The Store contract: every backend in ./backends.ts (SQLite now, PostgreSQL later) runs these same tests. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../../src/lib/errors.ts';
import type { DeployEvent, DeployRecord, DeployState, ProcessRecord, ReleaseRecord, Store } from '../../src/store/store.ts';
import type { Mode } from '../../src/config/schema.ts';
import { forEachBackend, openFresh, type Backend } from './backends.ts';

function release(app: string, id: string, createdAt: string, over: Partial<ReleaseRecord> = {}): ReleaseRecord {
  return { app, id, createdAt, state: 'ready', source: `/src/${app}`, revision: `rev-${id}`, prunedAt: null, ...over };
}

function deploy(id: string, over: Partial<DeployRecord> = {}): DeployRecord {
  return {
    id,
    app: 'shop',
    kind: 'deploy',
    state: 'running',
    releaseId: null,
    previousRelease: null,
    source: null,
    user: null,
    failedStep: null,
    error: null,
    logTail: [],
    createdAt: '2024-01-01T00:00:00.000Z',
    finishedAt: null,
    ...over,
  };
}

function event(deployId: string, seq: number, over: Partial<DeployEvent> = {}): DeployEvent {
  return { deployId, seq, step: 'prepare', status: 'started', at: `2024-01-01T00:00:0${seq}.000Z`, durationMs: null, message: null, ...over };
}

function proc(pgid: number, over: Partial<ProcessRecord> = {}): ProcessRecord {
  return { pgid, app: 'shop', generation: 'g1', process: 'web', index: 0, gatewayPid: 4242, startedAt: '2024-01-01T00:00:00.000Z', ...over };
}

/** Lines that stress the JSON round trip: quotes, escapes, newlines, unicode, an empty line. */
const AWKWARD_LINES = ['npm ERR! code ELIFECYCLE', 'said "no" \\ then \\n', 'multi\nline\ttab', 'ünïcødé ✓ 🚢', ''];

/**
 * What a record reads back as when written without a node: the store names its own node, `local` when
 * opened without one (as here).
 */
function written<T extends object>(record: T): T & { node: string } {
  return { ...record, node: 'local' };
}

function isCode(code: string) {
  return (err: unknown) => err instanceof BerthError && err.code === code;
}

/** Registers node:test tests for every Store method against `backend`'s store. */
function storeContract(backend: Backend): void {
  const name = backend.name;
  const fresh = (t: TestContext) => openFresh(backend, t);

  test(`${name}: an empty store has a schema and no state`, async (t) => {
    const store = await fresh(t);
    assert.ok((await store.schemaVersion()) >= 1);
    assert.equal(store.node, 'local', 'a store opened without a node writes as `local`');
    assert.equal(await store.getAppState('shop'), null);
    assert.deepEqual(await store.listAppStates(), []);
    assert.equal(await store.getRelease('shop', '20240101000000-abcdef'), null);
    assert.deepEqual(await store.listReleases('shop'), []);
  });

  test(`${name}: setActiveRelease creates the app row with normal mode, then updates only the release`, async (t) => {
    const store = await fresh(t);
    const before = Date.now();
    await store.setActiveRelease('shop', 'r1');
    const s1 = await store.getAppState('shop');
    assert.ok(s1);
    assert.deepEqual({ ...s1, updatedAt: '' }, { app: 'shop', activeRelease: 'r1', mode: 'normal', modeMessage: null, modeRetryAfter: null, reloads: 0, updatedAt: '' });
    assert.ok(Date.parse(s1.updatedAt) >= before - 1000, `updatedAt ${s1.updatedAt} is a recent ISO time`);

    await store.setMode('shop', 'maintenance', 'back soon', 120);
    await store.setActiveRelease('shop', 'r2');
    const s2 = await store.getAppState('shop');
    assert.equal(s2?.activeRelease, 'r2');
    assert.equal(s2?.mode, 'maintenance', 'switching the release keeps the mode');
    assert.equal(s2?.modeMessage, 'back soon');
    assert.equal(s2?.modeRetryAfter, 120);
    assert.equal(s2?.reloads, 0, 'neither the release nor the mode counts as a reload');
  });

  test(`${name}: setMode stores message and retry-after, creates a missing app, and clears them again`, async (t) => {
    const store = await fresh(t);
    await store.setMode('blog', 'read-only', 'migrating the database', 30);
    assert.deepEqual(
      { ...(await store.getAppState('blog'))!, updatedAt: '' },
      { app: 'blog', activeRelease: null, mode: 'read-only', modeMessage: 'migrating the database', modeRetryAfter: 30, reloads: 0, updatedAt: '' },
    );
    await store.setActiveRelease('blog', 'r9');
    await store.setMode('blog', 'normal', null, null);
    const s = await store.getAppState('blog');
    assert.equal(s?.mode, 'normal');
    assert.equal(s?.modeMessage, null);
    assert.equal(s?.modeRetryAfter, null);
    assert.equal(s?.activeRelease, 'r9', 'switching the mode keeps the release');
    for (const mode of ['normal', 'maintenance', 'read-only'] as Mode[]) {
      await store.setMode('blog', mode, null, 0);
      assert.equal((await store.getAppState('blog'))?.mode, mode);
      assert.equal((await store.getAppState('blog'))?.modeRetryAfter, 0);
    }
  });

  test(`${name}: setMode rejects an unknown mode and a bad retry-after, and stores nothing`, async (t) => {
    const store = await fresh(t);
    await assert.rejects(store.setMode('shop', 'closed' as Mode, null, null), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.setMode('shop', 'maintenance', null, -1), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.setMode('shop', 'maintenance', null, 1.5), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.setMode('shop', 'maintenance', null, Number.NaN), isCode('BERTH_E_BAD_REQUEST'));
    assert.equal(await store.getAppState('shop'), null);
  });

  test(`${name}: listAppStates lists every app by name, each with its own state`, async (t) => {
    const store = await fresh(t);
    await store.setActiveRelease('web', 'w1');
    await store.setMode('api', 'maintenance', 'm', 5);
    await store.setActiveRelease('blog', 'b1');
    const all = await store.listAppStates();
    assert.deepEqual(all.map((s) => s.app), ['api', 'blog', 'web']);
    assert.equal(all[0].mode, 'maintenance');
    assert.equal(all[0].activeRelease, null);
    assert.equal(all[1].mode, 'normal');
    assert.equal(all[2].activeRelease, 'w1');
  });

  test(`${name}: names, ids and times sort byte by byte (upper case before lower, digits before letters), whatever the database's locale`, async (t) => {
    const store = await fresh(t);
    for (const app of ['beta', 'Zeta', 'alpha', '9lives']) await store.setActiveRelease(app, 'r1');
    assert.deepEqual((await store.listAppStates()).map((s) => s.app), ['9lives', 'Zeta', 'alpha', 'beta']);
    // One created_at for all: the id breaks the tie, newest (greatest) first.
    for (const id of ['b-1', 'B-2', 'a-3', 'A-4']) await store.putRelease(release('shop', id, '2024-01-01T00:00:00.000Z'));
    assert.deepEqual((await store.listReleases('shop')).map((r) => r.id), ['b-1', 'a-3', 'B-2', 'A-4']);
    for (const id of ['dx', 'dX', 'D1']) await store.createDeploy(deploy(id));
    assert.deepEqual((await store.listDeploys()).map((d) => d.id), ['dx', 'dX', 'D1']);
  });

  test(`${name}: putRelease and getRelease round-trip; a second put replaces the row`, async (t) => {
    const store = await fresh(t);
    const r = release('shop', '20240101000000-aaaaaa', '2024-01-01T00:00:00.000Z', { state: 'building', revision: null, source: '/srv/shop#main' });
    await store.putRelease(r);
    assert.deepEqual(await store.getRelease('shop', r.id), r);
    assert.equal(await store.getRelease('other', r.id), null, 'releases belong to their app');
    const updated = { ...r, state: 'ready' as const, revision: 'abc123' };
    await store.putRelease(updated);
    assert.deepEqual(await store.getRelease('shop', r.id), updated);
    assert.equal((await store.listReleases('shop')).length, 1);
  });

  test(`${name}: listReleases is newest first and per app`, async (t) => {
    const store = await fresh(t);
    // Inserted out of order on purpose.
    await store.putRelease(release('shop', '20240102000000-bbbbbb', '2024-01-02T00:00:00.000Z'));
    await store.putRelease(release('shop', '20240103000000-cccccc', '2024-01-03T00:00:00.000Z'));
    await store.putRelease(release('shop', '20240101000000-aaaaaa', '2024-01-01T00:00:00.000Z'));
    await store.putRelease(release('blog', '20240104000000-dddddd', '2024-01-04T00:00:00.000Z'));
    // Same second: the later created_at (milliseconds) is newer.
    await store.putRelease(release('shop', '20240103000000-000000', '2024-01-03T00:00:00.500Z'));
    assert.deepEqual((await store.listReleases('shop')).map((r) => r.id), [
      '20240103000000-000000',
      '20240103000000-cccccc',
      '20240102000000-bbbbbb',
      '20240101000000-aaaaaa',
    ]);
    assert.deepEqual((await store.listReleases('blog')).map((r) => r.id), ['20240104000000-dddddd']);
    assert.deepEqual(await store.listReleases('nope'), []);
  });

  test(`${name}: setReleaseState changes one release; unknown releases and states are rejected`, async (t) => {
    const store = await fresh(t);
    await store.putRelease(release('shop', 'r1', '2024-01-01T00:00:00.000Z'));
    await store.putRelease(release('shop', 'r2', '2024-01-02T00:00:00.000Z'));
    for (const state of ['building', 'ready', 'active', 'previous', 'failed', 'pruned'] as const) {
      await store.setReleaseState('shop', 'r1', state);
      assert.equal((await store.getRelease('shop', 'r1'))?.state, state);
    }
    assert.equal((await store.getRelease('shop', 'r2'))?.state, 'ready', 'other releases untouched');
    await assert.rejects(store.setReleaseState('shop', 'nope', 'failed'), isCode('BERTH_E_NOT_FOUND'));
    await assert.rejects(store.setReleaseState('blog', 'r1', 'failed'), isCode('BERTH_E_NOT_FOUND'));
    await assert.rejects(store.setReleaseState('shop', 'r1', 'gone' as 'failed'), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.putRelease(release('shop', 'r3', '2024-01-03T00:00:00.000Z', { state: 'gone' as 'failed' })), isCode('BERTH_E_BAD_REQUEST'));
    assert.equal(await store.getRelease('shop', 'r3'), null);
  });

  test(`${name}: setReleasePrunedAt records when a release was pruned and leaves its state alone`, async (t) => {
    const store = await fresh(t);
    await store.putRelease(release('shop', 'r1', '2024-01-01T00:00:00.000Z', { state: 'failed' }));
    await store.putRelease(release('shop', 'r2', '2024-01-02T00:00:00.000Z', { state: 'pruned' }));
    await store.putRelease(release('shop', 'r3', '2024-01-03T00:00:00.000Z'));
    assert.equal((await store.getRelease('shop', 'r1'))?.prunedAt, null, 'a release is not pruned until said so');

    // A failed release keeps saying it failed, and now also that its directory is gone (issue #11, defect 5).
    await store.setReleasePrunedAt('shop', 'r1', '2024-02-01T00:00:00.000Z');
    assert.deepEqual(await store.getRelease('shop', 'r1'), release('shop', 'r1', '2024-01-01T00:00:00.000Z', { state: 'failed', prunedAt: '2024-02-01T00:00:00.000Z' }));
    await store.setReleasePrunedAt('shop', 'r2', '2024-02-02T00:00:00.000Z');
    assert.deepEqual(await store.getRelease('shop', 'r2'), release('shop', 'r2', '2024-01-02T00:00:00.000Z', { state: 'pruned', prunedAt: '2024-02-02T00:00:00.000Z' }));
    assert.deepEqual(
      (await store.listReleases('shop')).map((r) => [r.id, r.state, r.prunedAt]),
      [['r3', 'ready', null], ['r2', 'pruned', '2024-02-02T00:00:00.000Z'], ['r1', 'failed', '2024-02-01T00:00:00.000Z']],
    );
    // A later state change keeps the time; it belongs to the directory, not the state.
    await store.setReleaseState('shop', 'r1', 'pruned');
    assert.equal((await store.getRelease('shop', 'r1'))?.prunedAt, '2024-02-01T00:00:00.000Z');

    await assert.rejects(store.setReleasePrunedAt('shop', 'nope', '2024-02-01T00:00:00.000Z'), isCode('BERTH_E_NOT_FOUND'));
    await assert.rejects(store.setReleasePrunedAt('blog', 'r3', '2024-02-01T00:00:00.000Z'), isCode('BERTH_E_NOT_FOUND'));
    assert.equal(await store.getRelease('blog', 'r3'), null);
  });

  test(`${name}: putRelease writes prunedAt when given, and null when left out`, async (t) => {
    const store = await fresh(t);
    const r = release('shop', 'r1', '2024-01-01T00:00:00.000Z', { state: 'failed', prunedAt: '2024-02-01T00:00:00.000Z' });
    await store.putRelease(r);
    assert.deepEqual(await store.getRelease('shop', 'r1'), r);
    // A caller that knows nothing of prunedAt (it is optional on write) replaces the row as a whole.
    const { prunedAt: _, ...bare } = release('shop', 'r1', '2024-01-01T00:00:00.000Z', { state: 'ready' });
    await store.putRelease(bare);
    assert.deepEqual(await store.getRelease('shop', 'r1'), release('shop', 'r1', '2024-01-01T00:00:00.000Z', { state: 'ready' }));
  });

  test(`${name}: state survives close and reopen, and reopening migrates nothing twice`, async (t) => {
    const store = await fresh(t);
    const version = await store.schemaVersion();
    await store.setActiveRelease('shop', 'r1');
    await store.setMode('shop', 'maintenance', 'upgrade in progress', 300);
    await store.putRelease(release('shop', 'r1', '2024-01-01T00:00:00.000Z', { state: 'active' }));
    const app = await store.getAppState('shop');
    await store.close();
    await store.open();
    assert.equal(await store.schemaVersion(), version);
    assert.deepEqual(await store.getAppState('shop'), app);
    assert.deepEqual(await store.listReleases('shop'), [release('shop', 'r1', '2024-01-01T00:00:00.000Z', { state: 'active' })]);
    await store.close();
    await store.open();
    assert.equal(await store.schemaVersion(), version, 'a third open is as idempotent as the second');
    assert.equal((await store.getAppState('shop'))?.modeRetryAfter, 300);
  });

  test(`${name}: a closed store rejects calls, close is idempotent, open twice is refused`, async (t) => {
    const store = await fresh(t);
    await assert.rejects(store.open(), isCode('BERTH_E_STORE'));
    await store.close();
    await store.close();
    await assert.rejects(store.getAppState('shop'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.listAppStates(), isCode('BERTH_E_STORE'));
    await assert.rejects(store.setActiveRelease('shop', 'r1'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.setMode('shop', 'normal', null, null), isCode('BERTH_E_STORE'));
    await assert.rejects(store.putRelease(release('shop', 'r1', '2024-01-01T00:00:00.000Z')), isCode('BERTH_E_STORE'));
    await assert.rejects(store.getRelease('shop', 'r1'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.listReleases('shop'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.setReleaseState('shop', 'r1', 'failed'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.setReleasePrunedAt('shop', 'r1', '2024-01-01T00:00:00.000Z'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.schemaVersion(), isCode('BERTH_E_STORE'));
    await assert.rejects(store.createDeploy(deploy('d1')), isCode('BERTH_E_STORE'));
    await assert.rejects(store.updateDeploy('d1', { state: 'failed' }), isCode('BERTH_E_STORE'));
    await assert.rejects(store.getDeploy('d1'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.listDeploys(), isCode('BERTH_E_STORE'));
    await assert.rejects(store.addDeployEvent(event('d1', 1)), isCode('BERTH_E_STORE'));
    await assert.rejects(store.listDeployEvents('d1'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.recordProcess(proc(1234)), isCode('BERTH_E_STORE'));
    await assert.rejects(store.removeProcess(1234), isCode('BERTH_E_STORE'));
    await assert.rejects(store.listProcesses(), isCode('BERTH_E_STORE'));
    await assert.rejects(store.requestReload('shop'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.listNodes(), isCode('BERTH_E_STORE'));
    await assert.rejects(store.acquireLock('deploy:shop', '2024-01-01T00:00:00.000Z'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.claimOnce('nightly'), isCode('BERTH_E_STORE'));
    await assert.rejects(store.getChallenge('token'), isCode('BERTH_E_STORE'));
    await store.open();
    assert.equal(await store.getAppState('shop'), null);
  });

  // ---- deploys ----------------------------------------------------------------------------------

  test(`${name}: an empty store has no deploys, events or process groups`, async (t) => {
    const store = await fresh(t);
    assert.equal(await store.getDeploy('d20240101000000-abcdef'), null);
    assert.deepEqual(await store.listDeploys(), []);
    assert.deepEqual(await store.listDeploys({ app: 'shop', state: 'running' }), []);
    assert.deepEqual(await store.listDeployEvents('d20240101000000-abcdef'), []);
    assert.deepEqual(await store.listProcesses(), []);
  });

  test(`${name}: createDeploy and getDeploy round-trip every field, log tail as a list`, async (t) => {
    const store = await fresh(t);
    const full = deploy('d20240101000000-aaaaaa', {
      app: 'blog',
      kind: 'rollback',
      state: 'failed',
      releaseId: '20240101000000-bbbbbb',
      previousRelease: '20231231000000-cccccc',
      source: 'https://git.example/blog.git#main',
      user: 'alice',
      failedStep: 'release',
      error: 'release command exited with code 1',
      logTail: AWKWARD_LINES,
      createdAt: '2024-01-01T00:00:00.123Z',
      finishedAt: '2024-01-01T00:00:05.456Z',
    });
    const bare = deploy('d20240101000001-dddddd', { kind: 'reload' });
    await store.createDeploy(full);
    await store.createDeploy(bare);
    assert.deepEqual(await store.getDeploy(full.id), written(full));
    assert.deepEqual(await store.getDeploy(bare.id), written(bare));
    assert.equal(await store.getDeploy('d20240101000002-eeeeee'), null);
  });

  test(`${name}: createDeploy refuses a duplicate id and keeps the first`, async (t) => {
    const store = await fresh(t);
    const first = deploy('d1', { user: 'alice' });
    await store.createDeploy(first);
    await assert.rejects(store.createDeploy(deploy('d1', { app: 'blog', user: 'bob' })), isCode('BERTH_E_CONFLICT'));
    assert.deepEqual(await store.getDeploy('d1'), written(first));
    assert.equal((await store.listDeploys()).length, 1);
  });

  test(`${name}: createDeploy rejects an unknown kind or state and a log tail that is not a list of strings`, async (t) => {
    const store = await fresh(t);
    await assert.rejects(store.createDeploy(deploy('d1', { kind: 'redeploy' as 'deploy' })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createDeploy(deploy('d2', { state: 'done' as 'running' })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createDeploy(deploy('d3', { logTail: 'oops' as unknown as string[] })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createDeploy(deploy('d4', { logTail: ['ok', 42] as unknown as string[] })), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.createDeploy(deploy('d5', { logTail: null as unknown as string[] })), isCode('BERTH_E_BAD_REQUEST'));
    assert.deepEqual(await store.listDeploys(), []);
  });

  test(`${name}: updateDeploy changes only the given fields of one deploy`, async (t) => {
    const store = await fresh(t);
    const d = deploy('d1', { source: '/srv/shop', user: 'alice', previousRelease: 'r0' });
    const other = deploy('d2', { source: '/srv/shop' });
    await store.createDeploy(d);
    await store.createDeploy(other);

    await store.updateDeploy('d1', { releaseId: 'r1' });
    assert.deepEqual(await store.getDeploy('d1'), written({ ...d, releaseId: 'r1' }));

    const failed = {
      state: 'failed' as const,
      finishedAt: '2024-01-01T00:01:00.000Z',
      failedStep: 'build',
      error: 'build exited with code 2',
      logTail: AWKWARD_LINES,
    };
    await store.updateDeploy('d1', failed);
    assert.deepEqual(await store.getDeploy('d1'), written({ ...d, releaseId: 'r1', ...failed }));

    // null clears a nullable field; undefined and an empty update leave everything alone.
    await store.updateDeploy('d1', { error: null, source: null, user: undefined, logTail: [] });
    await store.updateDeploy('d1', {});
    assert.deepEqual(await store.getDeploy('d1'), written({ ...d, releaseId: 'r1', ...failed, error: null, source: null, logTail: [] }));

    await store.updateDeploy('d1', { state: 'interrupted', previousRelease: null, user: 'bob', releaseId: null, failedStep: null, finishedAt: null });
    assert.deepEqual(await store.getDeploy('d1'), written({
      ...d,
      state: 'interrupted',
      previousRelease: null,
      user: 'bob',
      releaseId: null,
      failedStep: null,
      finishedAt: null,
      error: null,
      source: null,
      logTail: [],
    }));
    assert.deepEqual(await store.getDeploy('d2'), written(other), 'the other deploy is untouched');
  });

  test(`${name}: updateDeploy rejects an unknown deploy, an unknown state, a bad log tail and fixed fields`, async (t) => {
    const store = await fresh(t);
    const d = deploy('d1');
    await store.createDeploy(d);
    await assert.rejects(store.updateDeploy('nope', { state: 'failed' }), isCode('BERTH_E_NOT_FOUND'));
    await assert.rejects(store.updateDeploy('nope', {}), isCode('BERTH_E_NOT_FOUND'));
    assert.equal(await store.getDeploy('nope'), null, 'an update does not create');
    await assert.rejects(store.updateDeploy('d1', { state: 'done' as 'failed' }), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.updateDeploy('d1', { state: null as unknown as 'failed' }), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.updateDeploy('d1', { logTail: 'x' as unknown as string[] }), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.updateDeploy('d1', { logTail: [1] as unknown as string[] }), isCode('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.updateDeploy('d1', { logTail: null as unknown as string[] }), isCode('BERTH_E_BAD_REQUEST'));
    for (const fixed of [{ app: 'blog' }, { id: 'd9' }, { kind: 'reload' }, { createdAt: '2030-01-01T00:00:00.000Z' }, { bogus: 1 }]) {
      await assert.rejects(store.updateDeploy('d1', { state: 'failed', ...fixed } as never), isCode('BERTH_E_BAD_REQUEST'), JSON.stringify(fixed));
    }
    assert.deepEqual(await store.getDeploy('d1'), written(d), 'nothing was changed by a rejected update');
  });

  test(`${name}: listDeploys is newest first (created_at, then id) and filters by app and state`, async (t) => {
    const store = await fresh(t);
    // Inserted out of order on purpose; two share a created_at and are ordered by id.
    const rows = [
      deploy('d20240102000000-bbbbbb', { app: 'shop', state: 'succeeded', createdAt: '2024-01-02T00:00:00.000Z' }),
      deploy('d20240104000000-dddddd', { app: 'blog', state: 'running', createdAt: '2024-01-04T00:00:00.000Z' }),
      deploy('d20240101000000-aaaaaa', { app: 'shop', state: 'failed', createdAt: '2024-01-01T00:00:00.000Z' }),
      deploy('d20240103000000-000000', { app: 'shop', state: 'running', createdAt: '2024-01-03T00:00:00.000Z' }),
      deploy('d20240103000000-ffffff', { app: 'blog', state: 'failed', createdAt: '2024-01-03T00:00:00.000Z' }),
      deploy('d20240103000000-cccccc', { app: 'shop', state: 'succeeded', createdAt: '2024-01-03T00:00:00.500Z' }),
    ];
    for (const r of rows) await store.createDeploy(r);
    const ids = async (filter?: Parameters<Store['listDeploys']>[0]) => (await store.listDeploys(filter)).map((d) => d.id);

    assert.deepEqual(await ids(), [
      'd20240104000000-dddddd',
      'd20240103000000-cccccc',
      'd20240103000000-ffffff',
      'd20240103000000-000000',
      'd20240102000000-bbbbbb',
      'd20240101000000-aaaaaa',
    ]);
    assert.deepEqual(await ids({}), await ids());
    assert.deepEqual(await ids({ app: 'shop' }), ['d20240103000000-cccccc', 'd20240103000000-000000', 'd20240102000000-bbbbbb', 'd20240101000000-aaaaaa']);
    assert.deepEqual(await ids({ state: 'running' }), ['d20240104000000-dddddd', 'd20240103000000-000000']);
    assert.deepEqual(await ids({ state: 'failed' }), ['d20240103000000-ffffff', 'd20240101000000-aaaaaa']);
    assert.deepEqual(await ids({ app: 'shop', state: 'succeeded' }), ['d20240103000000-cccccc', 'd20240102000000-bbbbbb']);
    assert.deepEqual(await ids({ app: 'blog', state: 'succeeded' }), []);
    assert.deepEqual(await ids({ state: 'interrupted' }), []);
    assert.deepEqual(await ids({ app: 'nope' }), []);
    assert.deepEqual(await ids({ limit: 2 }), ['d20240104000000-dddddd', 'd20240103000000-cccccc']);
    assert.deepEqual(await ids({ app: 'shop', limit: 1 }), ['d20240103000000-cccccc']);
    assert.deepEqual(await ids({ state: 'failed', limit: 1 }), ['d20240103000000-ffffff']);
    assert.deepEqual(await ids({ app: 'shop', state: 'running', limit: 1 }), ['d20240103000000-000000']);
    // The list returns whole records, the same as getDeploy.
    assert.deepEqual(await store.listDeploys({ app: 'blog', state: 'running' }), [written(rows[1])]);
    // A state change moves a deploy between state filters.
    await store.updateDeploy('d20240103000000-000000', { state: 'interrupted' });
    assert.deepEqual(await ids({ state: 'running' }), ['d20240104000000-dddddd']);
    assert.deepEqual(await ids({ state: 'interrupted' }), ['d20240103000000-000000']);
  });

  test(`${name}: listDeploys returns at most 100 by default, the newest ones`, async (t) => {
    const store = await fresh(t);
    const created: string[] = [];
    for (let i = 0; i < 105; i++) {
      const id = `d20240101${String(i).padStart(6, '0')}-abcdef`;
      created.push(id);
      await store.createDeploy(deploy(id, { createdAt: new Date(Date.UTC(2024, 0, 1) + i * 1000).toISOString() }));
    }
    const listed = (await store.listDeploys()).map((d) => d.id);
    assert.equal(listed.length, 100);
    assert.deepEqual(listed, created.slice(5).reverse());
    assert.equal((await store.listDeploys({ app: 'shop' })).length, 100);
    assert.equal((await store.listDeploys({ limit: 500 })).length, 105);
  });

  test(`${name}: listDeploys rejects an unknown state and a limit that is not a whole number of at least 1`, async (t) => {
    const store = await fresh(t);
    await store.createDeploy(deploy('d1'));
    await assert.rejects(store.listDeploys({ state: 'done' as DeployState }), isCode('BERTH_E_BAD_REQUEST'));
    for (const limit of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      await assert.rejects(store.listDeploys({ limit }), isCode('BERTH_E_BAD_REQUEST'), `limit ${limit}`);
    }
  });

  // ---- deploy events ----------------------------------------------------------------------------

  test(`${name}: deploy events come back in seq order, per deploy, with their lines`, async (t) => {
    const store = await fresh(t);
    await store.createDeploy(deploy('d1'));
    await store.createDeploy(deploy('d2'));
    const e1 = event('d1', 1);
    const e2 = event('d1', 2, { status: 'succeeded', durationMs: 1234, message: 'release r1 from /srv/shop' });
    const e3 = event('d1', 3, { step: 'build', status: 'failed', durationMs: 0, message: 'build exited with code 1', lines: AWKWARD_LINES });
    const e4 = event('d1', 4, { step: 'start', status: 'skipped', durationMs: 0, message: 'nothing to start', lines: [] });
    const other = event('d2', 1, { step: 'switch' });
    // Written out of order: the list is ordered by seq, not by insertion.
    for (const e of [e3, e1, other, e4, e2]) await store.addDeployEvent(e);
    const listed = await store.listDeployEvents('d1');
    assert.deepEqual(listed, [e1, e2, e3, e4]);
    assert.ok(!('lines' in listed[0]), 'an event written without lines reads back without them');
    assert.deepEqual(await store.listDeployEvents('d2'), [other]);
    assert.deepEqual(await store.listDeployEvents('d3'), []);
  });

  test(`${name}: addDeployEvent refuses an unknown deploy and a duplicate seq`, async (t) => {
    const store = await fresh(t);
    await store.createDeploy(deploy('d1'));
    await assert.rejects(store.addDeployEvent(event('nope', 1)), isCode('BERTH_E_NOT_FOUND'));
    assert.deepEqual(await store.listDeployEvents('nope'), []);
    const first = event('d1', 1, { message: 'first' });
    await store.addDeployEvent(first);
    await assert.rejects(store.addDeployEvent(event('d1', 1, { message: 'second' })), isCode('BERTH_E_CONFLICT'));
    assert.deepEqual(await store.listDeployEvents('d1'), [first]);
  });

  test(`${name}: addDeployEvent rejects a bad status, seq, duration or lines`, async (t) => {
    const store = await fresh(t);
    await store.createDeploy(deploy('d1'));
    const bad: Partial<DeployEvent>[] = [
      { status: 'done' as 'started' },
      { seq: 0 },
      { seq: -1 },
      { seq: 1.5 },
      { durationMs: -1 },
      { durationMs: 1.5 },
      { durationMs: Number.NaN },
      { lines: 'x' as unknown as string[] },
      { lines: [null] as unknown as string[] },
    ];
    for (const over of bad) {
      await assert.rejects(store.addDeployEvent({ ...event('d1', 1), ...over }), isCode('BERTH_E_BAD_REQUEST'), JSON.stringify(over));
    }
    assert.deepEqual(await store.listDeployEvents('d1'), []);
  });

  // ---- process groups ---------------------------------------------------------------------------

  test(`${name}: recordProcess upserts by pgid; listProcesses is oldest first; removeProcess forgets one`, async (t) => {
    const store = await fresh(t);
    const a = proc(3001, { startedAt: '2024-01-01T00:00:02.000Z' });
    const b = proc(3002, { app: 'blog', generation: 'g7', process: 'worker', index: 3, startedAt: '2024-01-01T00:00:01.000Z' });
    const c = proc(2999, { startedAt: '2024-01-01T00:00:02.000Z', index: 1 });
    await store.recordProcess(a);
    await store.recordProcess(b);
    await store.recordProcess(c);
    assert.deepEqual(await store.listProcesses(), [b, c, a].map(written));

    // The kernel reuses pids: the same pgid recorded again replaces the row.
    const reused = proc(3001, { app: 'api', generation: 'g9', process: 'web', index: 2, gatewayPid: 5151, startedAt: '2024-01-02T00:00:00.000Z' });
    await store.recordProcess(reused);
    assert.deepEqual(await store.listProcesses(), [b, c, reused].map(written));

    await store.removeProcess(2999);
    assert.deepEqual(await store.listProcesses(), [b, reused].map(written));
    await store.removeProcess(2999);
    await store.removeProcess(424242);
    assert.deepEqual(await store.listProcesses(), [b, reused].map(written), 'removing an unknown pgid is a no-op');
  });

  test(`${name}: recordProcess rejects a pgid that would signal the wrong group and a bad pid or index`, async (t) => {
    const store = await fresh(t);
    const bad: Partial<ProcessRecord>[] = [
      { pgid: 0 },
      { pgid: 1 },
      { pgid: -3001 },
      { pgid: 3001.5 },
      { gatewayPid: 0 },
      { gatewayPid: 1.5 },
      { index: -1 },
      { index: 0.5 },
    ];
    for (const over of bad) {
      await assert.rejects(store.recordProcess(proc(3001, over)), isCode('BERTH_E_BAD_REQUEST'), JSON.stringify(over));
    }
    assert.deepEqual(await store.listProcesses(), []);
  });

  test(`${name}: deploys, events and process groups survive close and reopen`, async (t) => {
    const store = await fresh(t);
    const d = deploy('d1', { state: 'failed', logTail: AWKWARD_LINES, user: 'alice' });
    const e = event('d1', 1, { status: 'failed', lines: ['boom'] });
    const p = proc(3001);
    await store.createDeploy(d);
    await store.addDeployEvent(e);
    await store.recordProcess(p);
    await store.close();
    await store.open();
    assert.deepEqual(await store.getDeploy('d1'), written(d));
    assert.deepEqual(await store.listDeploys({ app: 'shop', state: 'failed' }), [written(d)]);
    assert.deepEqual(await store.listDeployEvents('d1'), [e]);
    assert.deepEqual(await store.listProcesses(), [written(p)]);
  });
}

forEachBackend(storeContract);
