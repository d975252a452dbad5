/**
 * The migration rules every backend keeps (`migrations: upgrade | none | model`, `reset_state`, numbered
 * additive files, an older gateway on a newer schema), seen through the Store interface alone: the
 * catalogue and the file behind it are in sqlite-only.test.ts. The SQL in the extra files here is
 * plain enough for SQLite and PostgreSQL alike.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BerthError, ErrorCodes } from '../../src/lib/errors.ts';
import type { DeployRecord } from '../../src/store/store.ts';
import { tempDir } from '../helpers/gateway.ts';
import { forEachBackend, type Backend } from './backends.ts';
import { SHIPPED_VERSIONS, migrationsDir } from './migration-files.ts';

const LATEST = SHIPPED_VERSIONS.at(-1)!;

function storeError(pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected a BerthError, got ${String(err)}`);
    assert.equal(err.code, ErrorCodes.store);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

function deploy(id: string): DeployRecord {
  return {
    id, app: 'shop', kind: 'deploy', state: 'running', releaseId: null, previousRelease: null, source: '/s', user: null,
    failedStep: null, error: null, logTail: [], createdAt: '2024-01-01T00:00:00.000Z', finishedAt: null,
  };
}

/** A migrations dir of the backend's shipped files (up to `upTo`) and `extra`, in a temp dir of the test. */
async function files(t: TestContext, backend: Backend, extra: Record<string, string> = {}, upTo?: number): Promise<string> {
  return migrationsDir(await tempDir(t, 'berth-migrations-'), 'migrations', extra, upTo, backend.shippedMigrations);
}

function migrationContract(backend: Backend): void {
  const name = backend.name;

  test(`${name}: migrations "none" on an empty database fails naming every missing version, and the store stays closed`, async (t) => {
    const db = await backend.database(t);
    const none = db.store({ migrations: 'none' });
    await assert.rejects(none.open(), (err: unknown) => {
      storeError(/no berth schema.*001-apps-and-releases, 002-deploys.*migrations: upgrade/)(err);
      assert.deepEqual((err as BerthError).details?.missing, SHIPPED_VERSIONS);
      return true;
    });
    await assert.rejects(none.getAppState('shop'), storeError());
    const upgrade = db.store();
    await upgrade.open();
    assert.equal(await upgrade.schemaVersion(), LATEST);
  });

  test(`${name}: migrations "none" opens an up-to-date database and refuses one that is behind, applying nothing`, async (t) => {
    const db = await backend.database(t);
    const upgraded = db.store();
    await upgraded.open();
    await upgraded.setActiveRelease('shop', 'r1');
    await upgraded.close();

    const none = db.store({ migrations: 'none' });
    await none.open();
    assert.equal((await none.getAppState('shop'))?.activeRelease, 'r1');
    await none.close();

    const newer = await files(t, backend, { '900-future.sql': 'CREATE TABLE future_things (id TEXT PRIMARY KEY, app TEXT NOT NULL);' });
    await assert.rejects(db.store({ migrations: 'none', migrationsDir: newer }).open(), (err: unknown) => {
      storeError(/behind.*missing migrations 900-future/)(err);
      assert.deepEqual((err as BerthError).details?.missing, [900]);
      return true;
    });
    const after = db.store({ migrations: 'none' });
    await after.open();
    assert.equal(await after.schemaVersion(), LATEST, '"none" recorded nothing');

    // A database the previous build (001 only) left is behind this one.
    const old = await backend.database(t);
    const v1 = old.store({ migrationsDir: await files(t, backend, {}, 1) });
    await v1.open();
    await v1.close();
    await assert.rejects(old.store({ migrations: 'none' }).open(), (err: unknown) => {
      storeError(/behind.*missing migrations 002-deploys, 003-audit/)(err);
      assert.deepEqual((err as BerthError).details?.missing, SHIPPED_VERSIONS.slice(1));
      return true;
    });
  });

  test(`${name}: upgrade applies only the missing migrations, in order, and keeps the data`, async (t) => {
    const db = await backend.database(t);
    const v1 = db.store({ migrationsDir: await files(t, backend, {}, 1) });
    await v1.open();
    assert.equal(await v1.schemaVersion(), 1);
    await v1.setActiveRelease('shop', 'r1');
    await v1.setMode('shop', 'maintenance', 'x', 1);
    await v1.close();

    const newer = await files(t, backend, {
      '010-notes.sql': 'CREATE TABLE notes (id INTEGER PRIMARY KEY, action TEXT NOT NULL);\nALTER TABLE apps ADD COLUMN node TEXT;',
    });
    const second = db.store({ migrationsDir: newer });
    await second.open();
    assert.equal(await second.schemaVersion(), 10);
    assert.deepEqual({ ...(await second.getAppState('shop'))!, updatedAt: '' }, {
      app: 'shop', activeRelease: 'r1', mode: 'maintenance', modeMessage: 'x', modeRetryAfter: 1, reloads: 0, updatedAt: '',
    });
    assert.equal(await second.requestReload('shop'), 1, '007 was applied: the old app row counts reloads from 0');
    await second.createDeploy(deploy('d1'));
    assert.equal((await second.listDeploys({ app: 'shop' }))[0]?.id, 'd1', '002 was applied on top of the old data');
    await second.putRelease({ app: 'shop', id: 'r1', createdAt: '2024-01-01T00:00:00.000Z', state: 'failed', source: '/s', revision: null, prunedAt: '2024-02-01T00:00:00.000Z' });
    assert.equal((await second.getRelease('shop', 'r1'))?.prunedAt, '2024-02-01T00:00:00.000Z', '005 was applied');
    await second.close();

    // Opening again applies nothing twice.
    const third = db.store({ migrationsDir: newer });
    await third.open();
    assert.equal(await third.schemaVersion(), 10);
  });

  test(`${name}: a schema a newer gateway migrated (unknown versions, tables and columns) still serves an older one`, async (t) => {
    const db = await backend.database(t);
    const future = await files(t, backend, {
      '099-future.sql': `CREATE TABLE regions (id TEXT PRIMARY KEY);
        ALTER TABLE apps ADD COLUMN desired_generation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE releases ADD COLUMN size_bytes INTEGER;
        ALTER TABLE nodes ADD COLUMN region TEXT;`,
    });
    const newer = db.store({ migrationsDir: future });
    await newer.open();
    await newer.setActiveRelease('shop', 'r1');
    await newer.close();

    for (const migrations of ['upgrade', 'none'] as const) {
      const older = db.store({ migrations });
      await older.open();
      assert.equal(await older.schemaVersion(), 99, migrations);
      assert.equal((await older.getAppState('shop'))?.activeRelease, 'r1');
      await older.setMode('shop', 'read-only', null, null);
      await older.putRelease({ app: 'shop', id: 'r2', createdAt: '2024-01-01T00:00:00.000Z', state: 'ready', source: '/s', revision: null });
      assert.equal((await older.listReleases('shop')).length, 1);
      await older.saveNode({ node: 'n1', hostname: 'h1', pid: 42, version: '1.0.0', state: 'running', startedAt: '2024-01-01T00:00:00.000Z', heartbeatAt: '2024-01-01T00:00:00.000Z', serving: [] });
      assert.deepEqual((await older.listNodes()).map((n) => n.node), ['n1'], 'a nodes table with a column it does not know');
      await older.close();
    }
  });

  test(`${name}: reset_state drops every table, including ones this build does not know, then migrates afresh`, async (t) => {
    const db = await backend.database(t);
    const leftovers = await files(t, backend, {
      '900-leftovers.sql': `CREATE TABLE leftovers (x TEXT PRIMARY KEY);
        CREATE TABLE child (id INTEGER PRIMARY KEY, x TEXT REFERENCES leftovers (x));
        CREATE VIEW v AS SELECT app FROM apps;`,
    });
    const store = db.store({ migrationsDir: leftovers });
    await store.open();
    await store.setActiveRelease('shop', 'r1');
    await store.putRelease({ app: 'shop', id: 'r1', createdAt: '2024-01-01T00:00:00.000Z', state: 'active', source: '/s', revision: null });
    await store.createDeploy(deploy('d1'));
    await store.addDeployEvent({ deployId: 'd1', seq: 1, step: 'prepare', status: 'started', at: '2024-01-01T00:00:00.000Z', durationMs: null, message: null });
    await store.recordProcess({ pgid: 3001, app: 'shop', generation: 'g1', process: 'web', index: 0, gatewayPid: 42, startedAt: '2024-01-01T00:00:00.000Z' });
    await store.addAudit({ at: '2024-01-01T00:00:00.000Z', user: 'alice', channel: 'tcp', action: 'deploy', app: 'shop', target: null, outcome: 'pending', detail: null, finishedAt: null });
    await store.close();

    const reset = db.store({ resetState: true });
    await reset.open();
    assert.deepEqual(await reset.listAppStates(), []);
    assert.deepEqual(await reset.listReleases('shop'), []);
    assert.deepEqual(await reset.listDeploys(), []);
    assert.deepEqual(await reset.listDeployEvents('d1'), []);
    assert.deepEqual(await reset.listProcesses(), []);
    assert.deepEqual(await reset.listAudit(), []);
    assert.equal(await reset.schemaVersion(), LATEST, 'only this build\'s migrations are recorded');
    await reset.close();
    // The unknown tables and the view are gone too: the file that creates them applies again cleanly.
    const again = db.store({ migrationsDir: leftovers });
    await again.open();
    assert.equal(await again.schemaVersion(), 900);
  });

  test(`${name}: migrations "model" builds the current schema from scratch, on old state or none`, async (t) => {
    const db = await backend.database(t);
    const stale = db.store({ migrationsDir: await files(t, backend, { '050-stale.sql': 'CREATE TABLE stale (x TEXT);' }) });
    await stale.open();
    await stale.setActiveRelease('shop', 'r1');
    await stale.close();

    const model = db.store({ migrations: 'model' });
    await model.open();
    assert.equal(await model.getAppState('shop'), null, 'old state is gone');
    assert.equal(await model.schemaVersion(), LATEST, 'only this build\'s migrations are recorded');
    await model.setActiveRelease('shop', 'r2');

    const empty = (await backend.database(t)).store({ migrations: 'model' });
    await empty.open();
    assert.equal(await empty.schemaVersion(), LATEST);
  });

  test(`${name}: a failing migration rolls back entirely, names its file, and leaves the store closed`, async (t) => {
    const db = await backend.database(t);
    const broken = await files(t, backend, { '900-broken.sql': 'CREATE TABLE half (x TEXT);\nINSERT INTO nope VALUES (1);' });
    const store = db.store({ migrationsDir: broken });
    await assert.rejects(store.open(), storeError(/migration 900-broken\.sql failed: .*nope/));
    await assert.rejects(store.listAppStates(), storeError());
    // The shipped ones stay applied, and `half` went with the failed file: creating it again works.
    const shipped = db.store({ migrations: 'none' });
    await shipped.open();
    assert.equal(await shipped.schemaVersion(), LATEST);
    await shipped.close();
    const half = db.store({ migrationsDir: await files(t, backend, { '900-half.sql': 'CREATE TABLE half (x TEXT);' }) });
    await half.open();
    assert.equal(await half.schemaVersion(), 900);

    // "model" is one transaction: nothing at all is left.
    const other = await backend.database(t);
    await assert.rejects(other.store({ migrations: 'model', migrationsDir: broken }).open(), storeError(/from the model failed/));
    await assert.rejects(other.store({ migrations: 'none' }).open(), storeError(/no berth schema/));
  });

  test(`${name}: bad migration files are refused by name`, async (t) => {
    const db = await backend.database(t);
    const dir = await tempDir(t, 'berth-migrations-');
    const badName = await migrationsDir(dir, 'bad-name', { 'add-stuff.sql': 'SELECT 1;' }, Infinity, backend.shippedMigrations);
    await assert.rejects(db.store({ migrationsDir: badName }).open(), storeError(/add-stuff\.sql is not named NNN-name\.sql/));
    const dup = await migrationsDir(dir, 'dup', { '900-a.sql': 'SELECT 1;', '900-b.sql': 'SELECT 1;' }, Infinity, backend.shippedMigrations);
    await assert.rejects(db.store({ migrationsDir: dup }).open(), storeError(/900-[ab]\.sql and 900-[ab]\.sql have the same version 900/));
    await assert.rejects(db.store({ migrationsDir: join(dir, 'missing') }).open(), storeError(/cannot read migrations/));
    // Non-SQL files (a README) are ignored.
    const readme = await migrationsDir(dir, 'readme', { 'README.md': '# notes' }, Infinity, backend.shippedMigrations);
    await db.store({ migrationsDir: readme }).open();
  });

  test(`${name}: two stores on one database (two gateways) open together and see each other's writes`, async (t) => {
    const db = await backend.database(t);
    const a = db.store();
    const b = db.store();
    await Promise.all([a.open(), b.open()]);
    assert.equal(await a.schemaVersion(), LATEST);
    assert.equal(await b.schemaVersion(), LATEST);
    await a.setMode('shop', 'maintenance', null, null);
    assert.equal((await b.getAppState('shop'))?.mode, 'maintenance');
    await b.createDeploy(deploy('d1'));
    assert.equal((await a.getDeploy('d1'))?.source, '/s');
  });
}

forEachBackend(migrationContract);
