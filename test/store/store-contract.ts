/**
 * The Store contract: every implementation (SQLite now, PostgreSQL later) runs these same tests.
 * `makeStore` returns an OPEN store on an empty database, and a cleanup that closes and removes it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../../src/lib/errors.ts';
import type { ReleaseRecord, Store } from '../../src/store/store.ts';
import type { Mode } from '../../src/config/schema.ts';

export type MakeStore = () => Promise<{ store: Store; cleanup(): Promise<void> }>;

function release(app: string, id: string, createdAt: string, over: Partial<ReleaseRecord> = {}): ReleaseRecord {
  return { app, id, createdAt, state: 'ready', source: `/src/${app}`, revision: `rev-${id}`, ...over };
}

function isCode(code: string) {
  return (err: unknown) => err instanceof BerthError && err.code === code;
}

/** Registers node:test tests for every Store method against the store `makeStore` builds. */
export function storeContract(name: string, makeStore: MakeStore): void {
  async function fresh(t: TestContext): Promise<Store> {
    const { store, cleanup } = await makeStore();
    t.after(cleanup);
    return store;
  }

  test(`${name}: an empty store has a schema and no state`, async (t) => {
    const store = await fresh(t);
    assert.ok((await store.schemaVersion()) >= 1);
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
    assert.deepEqual({ ...s1, updatedAt: '' }, { app: 'shop', activeRelease: 'r1', mode: 'normal', modeMessage: null, modeRetryAfter: null, updatedAt: '' });
    assert.ok(Date.parse(s1.updatedAt) >= before - 1000, `updatedAt ${s1.updatedAt} is a recent ISO time`);

    await store.setMode('shop', 'maintenance', 'back soon', 120);
    await store.setActiveRelease('shop', 'r2');
    const s2 = await store.getAppState('shop');
    assert.equal(s2?.activeRelease, 'r2');
    assert.equal(s2?.mode, 'maintenance', 'switching the release keeps the mode');
    assert.equal(s2?.modeMessage, 'back soon');
    assert.equal(s2?.modeRetryAfter, 120);
  });

  test(`${name}: setMode stores message and retry-after, creates a missing app, and clears them again`, async (t) => {
    const store = await fresh(t);
    await store.setMode('blog', 'read-only', 'migrating the database', 30);
    assert.deepEqual(
      { ...(await store.getAppState('blog'))!, updatedAt: '' },
      { app: 'blog', activeRelease: null, mode: 'read-only', modeMessage: 'migrating the database', modeRetryAfter: 30, updatedAt: '' },
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
    await assert.rejects(store.schemaVersion(), isCode('BERTH_E_STORE'));
    await store.open();
    assert.equal(await store.getAppState('shop'), null);
  });
}
