import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, mkdir, writeFile, readdir, copyFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { BerthError } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { SqliteStore, MIGRATIONS_DIR, loadMigrations, type SqliteStoreOptions } from '../../src/store/sqlite.ts';
import { storeContract } from './store-contract.ts';

storeContract('sqlite', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-store-'));
  // A parent that does not exist yet: open() creates it.
  const store = new SqliteStore({ path: join(dir, 'state', 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  try {
    await store.open();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    store,
    async cleanup() {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-store-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A store on `<dir>/berth.db`, closed after the test. Not opened. */
function makeStore(t: TestContext, dir: string, over: Partial<SqliteStoreOptions> = {}): SqliteStore {
  const store = new SqliteStore({ path: join(dir, 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger(), ...over });
  t.after(() => store.close());
  return store;
}

/** A second, raw connection for looking behind the store's back. */
function raw(t: TestContext, dir: string): DatabaseSync {
  const db = new DatabaseSync(join(dir, 'berth.db'));
  t.after(() => db.isOpen && db.close());
  return db;
}

function tables(db: DatabaseSync): string[] {
  return (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`).all() as { name: string }[]).map((r) => r.name);
}

/** A migrations dir holding the shipped files plus `extra` (file name -> SQL). */
async function migrationsDir(dir: string, name: string, extra: Record<string, string> = {}): Promise<string> {
  const out = join(dir, name);
  await mkdir(out, { recursive: true });
  for (const f of await readdir(MIGRATIONS_DIR)) await copyFile(join(MIGRATIONS_DIR, f), join(out, f));
  for (const [f, sql] of Object.entries(extra)) await writeFile(join(out, f), sql);
  return out;
}

function storeError(pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected a BerthError, got ${String(err)}`);
    assert.equal(err.code, 'BERTH_E_STORE');
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

test('sqlite: migrations ship as NNN-name.sql, sorted, and 001 creates apps and releases', async (t) => {
  const migrations = await loadMigrations(MIGRATIONS_DIR);
  assert.ok(migrations.length >= 1);
  assert.equal(migrations[0].version, 1);
  assert.deepEqual(migrations.map((m) => m.version), [...migrations.map((m) => m.version)].sort((a, b) => a - b));

  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  assert.equal(await store.schemaVersion(), migrations.at(-1)!.version);
  const db = raw(t, dir);
  const cols = (table: string) => db.prepare(`PRAGMA table_info(${table})`).all() as { name: string; notnull: number; dflt_value: string | null; pk: number }[];
  assert.deepEqual(cols('apps').map((c) => c.name), ['app', 'active_release', 'mode', 'mode_message', 'mode_retry_after', 'updated_at']);
  const mode = cols('apps').find((c) => c.name === 'mode')!;
  assert.equal(mode.notnull, 1);
  assert.equal(mode.dflt_value, "'normal'");
  assert.deepEqual(cols('releases').map((c) => c.name), ['app', 'id', 'created_at', 'state', 'source', 'revision']);
  assert.deepEqual(cols('releases').filter((c) => c.pk > 0).map((c) => c.name), ['app', 'id']);
  const recorded = db.prepare('SELECT version, name, applied_at FROM schema_migrations ORDER BY version').all() as { version: number; name: string; applied_at: string }[];
  assert.deepEqual(recorded.map((r) => [r.version, r.name]), migrations.map((m) => [m.version, m.name]));
  assert.ok(recorded.every((r) => !Number.isNaN(Date.parse(r.applied_at))));
});

test('sqlite: open creates the parent directory and uses WAL; another connection sees the writes', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, join(dir, 'a', 'b'));
  await store.open();
  assert.ok((await stat(join(dir, 'a', 'b', 'berth.db'))).isFile());
  const db = new DatabaseSync(join(dir, 'a', 'b', 'berth.db'));
  t.after(() => db.close());
  assert.equal((db.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode, 'wal');
  // A second connection (another gateway, the CLI) sees the first one's writes.
  await store.setActiveRelease('shop', 'r1');
  assert.equal((db.prepare('SELECT active_release FROM apps').get() as { active_release: string }).active_release, 'r1');
});

test('sqlite: migrations "none" on an empty database fails naming the missing versions and creates nothing', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir, { migrations: 'none' });
  await assert.rejects(store.open(), (err: unknown) => {
    storeError(/no berth schema.*001-apps-and-releases.*migrations: upgrade/)(err);
    assert.deepEqual((err as BerthError).details?.missing, [1]);
    return true;
  });
  assert.deepEqual(tables(raw(t, dir)), []);
  await assert.rejects(store.getAppState('shop'), storeError(/not open/));
});

test('sqlite: migrations "none" opens an up-to-date database and fails on one that is behind', async (t) => {
  const dir = await tempDir(t);
  const upgraded = makeStore(t, dir);
  await upgraded.open();
  await upgraded.setActiveRelease('shop', 'r1');
  await upgraded.close();

  const none = makeStore(t, dir, { migrations: 'none' });
  await none.open();
  assert.equal((await none.getAppState('shop'))?.activeRelease, 'r1');
  await none.close();

  const newer = await migrationsDir(dir, 'newer', { '002-deploys.sql': 'CREATE TABLE deploys (id TEXT PRIMARY KEY, app TEXT NOT NULL);' });
  const behind = makeStore(t, dir, { migrations: 'none', migrationsDir: newer });
  await assert.rejects(behind.open(), (err: unknown) => {
    storeError(/behind.*missing migrations 002-deploys/)(err);
    assert.deepEqual((err as BerthError).details?.missing, [2]);
    return true;
  });
  assert.ok(!tables(raw(t, dir)).includes('deploys'), '"none" applied nothing');
});

test('sqlite: upgrade applies only the missing migrations and keeps the data', async (t) => {
  const dir = await tempDir(t);
  const first = makeStore(t, dir);
  await first.open();
  await first.setMode('shop', 'maintenance', 'x', 1);
  await first.close();

  const newer = await migrationsDir(dir, 'newer', {
    '002-deploys.sql': 'CREATE TABLE deploys (id TEXT PRIMARY KEY, app TEXT NOT NULL);',
    '010-audit.sql': 'CREATE TABLE audit (id INTEGER PRIMARY KEY, action TEXT NOT NULL);\nALTER TABLE apps ADD COLUMN node TEXT;',
  });
  const second = makeStore(t, dir, { migrationsDir: newer });
  await second.open();
  assert.equal(await second.schemaVersion(), 10);
  assert.equal((await second.getAppState('shop'))?.mode, 'maintenance');
  const db = raw(t, dir);
  assert.deepEqual(tables(db), ['apps', 'audit', 'deploys', 'releases', 'schema_migrations']);
  assert.deepEqual((db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[]).map((r) => r.version), [1, 2, 10]);
});

test('sqlite: an unknown newer migration (a newer gateway ran here) does not break an older one', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  await store.setActiveRelease('shop', 'r1');
  await store.close();
  // What a newer version would leave behind: its migration row, a new table, a new column.
  const db = raw(t, dir);
  db.exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', '2030-01-01T00:00:00.000Z');
           CREATE TABLE nodes (id TEXT PRIMARY KEY);
           ALTER TABLE apps ADD COLUMN desired_generation INTEGER NOT NULL DEFAULT 0;
           ALTER TABLE releases ADD COLUMN size_bytes INTEGER;`);
  db.close();

  for (const migrations of ['upgrade', 'none'] as const) {
    const older = makeStore(t, dir, { migrations });
    await older.open();
    assert.equal(await older.schemaVersion(), 99);
    assert.equal((await older.getAppState('shop'))?.activeRelease, 'r1');
    await older.setMode('shop', 'read-only', null, null);
    await older.putRelease({ app: 'shop', id: 'r2', createdAt: '2024-01-01T00:00:00.000Z', state: 'ready', source: '/s', revision: null });
    assert.equal((await older.listReleases('shop')).length, 1);
    await older.close();
  }
});

test('sqlite: reset_state drops every table, including ones it does not know, then migrates afresh', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  await store.setActiveRelease('shop', 'r1');
  await store.putRelease({ app: 'shop', id: 'r1', createdAt: '2024-01-01T00:00:00.000Z', state: 'active', source: '/s', revision: null });
  await store.close();
  const db = raw(t, dir);
  db.exec(`CREATE TABLE leftovers (x TEXT); CREATE TABLE child (id INTEGER PRIMARY KEY, x TEXT REFERENCES leftovers(x)); CREATE VIEW v AS SELECT * FROM apps;`);
  db.close();

  const reset = makeStore(t, dir, { resetState: true });
  await reset.open();
  assert.deepEqual(await reset.listAppStates(), []);
  assert.deepEqual(await reset.listReleases('shop'), []);
  assert.deepEqual(tables(raw(t, dir)), ['apps', 'releases', 'schema_migrations']);
  assert.equal(await reset.schemaVersion(), 1);
});

test('sqlite: migrations "model" builds the current schema from scratch', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  await store.setActiveRelease('shop', 'r1');
  await store.close();
  raw(t, dir).exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (50, 'stale', 'x')`);

  const model = makeStore(t, dir, { migrations: 'model' });
  await model.open();
  assert.equal(await model.getAppState('shop'), null, 'old state is gone');
  assert.equal(await model.schemaVersion(), 1, 'only this build\'s migrations are recorded');
  await model.setActiveRelease('shop', 'r2');
  await model.close();
  // On an empty database it works the same.
  const other = await tempDir(t);
  const empty = makeStore(t, other, { migrations: 'model' });
  await empty.open();
  assert.deepEqual(tables(raw(t, other)), ['apps', 'releases', 'schema_migrations']);
});

test('sqlite: a failing migration rolls back entirely, names its file, and leaves the store closed', async (t) => {
  const dir = await tempDir(t);
  const broken = await migrationsDir(dir, 'broken', { '002-broken.sql': 'CREATE TABLE half (x TEXT);\nINSERT INTO nope VALUES (1);' });
  const store = makeStore(t, dir, { migrationsDir: broken });
  await assert.rejects(store.open(), storeError(/migration 002-broken\.sql failed: .*nope/));
  await assert.rejects(store.listAppStates(), storeError(/not open/));
  const db = raw(t, dir);
  assert.ok(!tables(db).includes('half'), 'the half-applied migration was rolled back');
  assert.deepEqual((db.prepare('SELECT version FROM schema_migrations').all() as { version: number }[]).map((r) => r.version), [1], '001 stays applied');
  // "model" is one transaction: nothing at all is left.
  const other = await tempDir(t);
  const model = makeStore(t, other, { migrations: 'model', migrationsDir: broken });
  await assert.rejects(model.open(), storeError(/from the model failed/));
  assert.deepEqual(tables(raw(t, other)), []);
});

test('sqlite: bad migration files are refused by name', async (t) => {
  const dir = await tempDir(t);
  const badName = await migrationsDir(dir, 'bad-name', { 'add-stuff.sql': 'SELECT 1;' });
  await assert.rejects(makeStore(t, dir, { migrationsDir: badName }).open(), storeError(/add-stuff\.sql is not named NNN-name\.sql/));
  const dup = await migrationsDir(dir, 'dup', { '002-a.sql': 'SELECT 1;', '002-b.sql': 'SELECT 1;' });
  await assert.rejects(makeStore(t, dir, { migrationsDir: dup }).open(), storeError(/002-a\.sql and 002-b\.sql have the same version 2/));
  await assert.rejects(makeStore(t, dir, { migrationsDir: join(dir, 'missing') }).open(), storeError(/cannot read migrations/));
  // Non-SQL files (a README) are ignored.
  const readme = await migrationsDir(dir, 'readme', { 'README.md': '# notes' });
  await makeStore(t, join(dir, 'ok'), { migrationsDir: readme }).open();
});

test('sqlite: a database path that cannot be opened fails with BERTH_E_STORE', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'berth.db'));
  await assert.rejects(makeStore(t, dir).open(), storeError(/cannot open SQLite database/));
  await writeFile(join(dir, 'file'), 'x');
  await assert.rejects(makeStore(t, join(dir, 'file')).open(), storeError(/cannot open SQLite database/));
  await writeFile(join(dir, 'garbage.db'), 'this is not a database, but it is long enough to look like one '.repeat(20));
  const garbage = new SqliteStore({ path: join(dir, 'garbage.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  t.after(() => garbage.close());
  await assert.rejects(garbage.open(), storeError());
});

test('sqlite: two stores on one file (two gateways) both open; migrations are recorded once', async (t) => {
  const dir = await tempDir(t);
  const a = makeStore(t, dir);
  const b = makeStore(t, dir);
  await Promise.all([a.open(), b.open()]);
  await a.setMode('shop', 'maintenance', null, null);
  assert.equal((await b.getAppState('shop'))?.mode, 'maintenance');
  const rows = raw(t, dir).prepare('SELECT COUNT(*) AS n FROM schema_migrations').get() as { n: number };
  assert.equal(rows.n, (await loadMigrations(MIGRATIONS_DIR)).length);
});
