/**
 * What only the SQLite store can be asked: its file (WAL, 0600 is in store-file-modes.test.ts), its
 * catalogue (columns, keys, indexes, query plans), rows written behind its back, and SQLite's own error
 * text. What every backend must do is in the *-contract.test.ts suites, which run on each backend.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, mkdir, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { BerthError } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { SqliteStore, type SqliteStoreOptions } from '../../src/store/sqlite.ts';
import { MIGRATIONS_DIR, loadMigrations } from '../../src/store/migrations.ts';
import { SHIPPED_VERSIONS, migrationsDir } from './migration-files.ts';

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

/** Every table the shipped migrations create, by name. */
const SHIPPED_TABLES = [
  'acme_accounts', 'acme_certificates', 'acme_challenges', 'apps', 'audit', 'cache_flushes', 'deploy_events', 'deploys', 'fleet_claims', 'fleet_locks', 'node_process_groups', 'nodes',
  'process_groups', 'releases', 'scale_overrides', 'schema_migrations', 'task_runs',
];

/**
 * `<dir>/berth.db` as the previous build (001 only) left it, with an app and a release in it. Written
 * directly: this build's store prepares statements on tables that 001 lacks.
 */
async function v1Database(dir: string): Promise<void> {
  const [v1] = await loadMigrations(MIGRATIONS_DIR);
  const db = new DatabaseSync(join(dir, 'berth.db'));
  try {
    db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
    db.exec(v1.sql);
    db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(v1.version, v1.name, '2024-01-01T00:00:00.000Z');
    db.exec(`INSERT INTO apps (app, active_release, mode, mode_message, mode_retry_after, updated_at)
               VALUES ('shop', 'r1', 'maintenance', 'x', 1, '2024-01-01T00:00:00.000Z');
             INSERT INTO releases (app, id, created_at, state, source, revision)
               VALUES ('shop', 'r1', '2024-01-01T00:00:00.000Z', 'active', '/s', NULL);`);
  } finally {
    db.close();
  }
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
  assert.deepEqual(cols('apps').map((c) => c.name), ['app', 'active_release', 'mode', 'mode_message', 'mode_retry_after', 'updated_at', 'reloads']);
  const mode = cols('apps').find((c) => c.name === 'mode')!;
  assert.equal(mode.notnull, 1);
  assert.equal(mode.dflt_value, "'normal'");
  // Added by 007 with a default, so an older gateway's inserts (which leave it out) still work.
  const reloads = cols('apps').find((c) => c.name === 'reloads')!;
  assert.equal(reloads.notnull, 1);
  assert.equal(reloads.dflt_value, '0');
  assert.deepEqual(cols('releases').map((c) => c.name), ['app', 'id', 'created_at', 'state', 'source', 'revision', 'pruned_at']);
  // Added by 005: nullable with no default, so an older gateway's inserts (which leave it out) still work.
  const prunedAt = cols('releases').find((c) => c.name === 'pruned_at')!;
  assert.equal(prunedAt.notnull, 0);
  assert.equal(prunedAt.dflt_value, null);
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
    storeError(/no berth schema.*001-apps-and-releases, 002-deploys.*migrations: upgrade/)(err);
    assert.deepEqual((err as BerthError).details?.missing, SHIPPED_VERSIONS);
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

  const newer = await migrationsDir(dir, 'newer', { '900-future.sql': 'CREATE TABLE future_things (id TEXT PRIMARY KEY, app TEXT NOT NULL);' });
  const behind = makeStore(t, dir, { migrations: 'none', migrationsDir: newer });
  await assert.rejects(behind.open(), (err: unknown) => {
    storeError(/behind.*missing migrations 900-future/)(err);
    assert.deepEqual((err as BerthError).details?.missing, [900]);
    return true;
  });
  assert.ok(!tables(raw(t, dir)).includes('future_things'), '"none" applied nothing');

  // A database made by the previous build (001 only) is behind this one's 002.
  const old = await tempDir(t);
  await v1Database(old);
  await assert.rejects(makeStore(t, old, { migrations: 'none' }).open(), (err: unknown) => {
    storeError(/behind.*missing migrations 002-deploys, 003-audit/)(err);
    assert.deepEqual((err as BerthError).details?.missing, SHIPPED_VERSIONS.slice(1));
    return true;
  });
  assert.ok(!tables(raw(t, old)).includes('deploys'), '"none" applied nothing');
});

test('sqlite: upgrade applies only the missing migrations and keeps the data', async (t) => {
  const dir = await tempDir(t);
  await v1Database(dir);

  const newer = await migrationsDir(dir, 'newer', {
    '010-notes.sql': 'CREATE TABLE notes (id INTEGER PRIMARY KEY, action TEXT NOT NULL);\nALTER TABLE apps ADD COLUMN node TEXT;',
  });
  const second = makeStore(t, dir, { migrationsDir: newer });
  await second.open();
  assert.equal(await second.schemaVersion(), 10);
  assert.deepEqual(await second.getAppState('shop'), {
    app: 'shop', activeRelease: 'r1', mode: 'maintenance', modeMessage: 'x', modeRetryAfter: 1, reloads: 0, updatedAt: '2024-01-01T00:00:00.000Z',
  });
  assert.equal((await second.getRelease('shop', 'r1'))?.state, 'active');
  await second.createDeploy({
    id: 'd1', app: 'shop', kind: 'reload', state: 'running', releaseId: 'r1', previousRelease: 'r1', source: null, user: null,
    failedStep: null, error: null, logTail: [], createdAt: '2024-01-02T00:00:00.000Z', finishedAt: null,
  });
  assert.equal((await second.listDeploys({ app: 'shop' }))[0]?.id, 'd1', '002 was applied on top of the old data');
  await second.close();
  const db = raw(t, dir);
  assert.deepEqual(tables(db), [...SHIPPED_TABLES, 'notes'].sort());
  assert.deepEqual((db.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[]).map((r) => r.version), [...SHIPPED_VERSIONS, 10]);
  // What the previous build reads is untouched by 002: its queries still answer on the upgraded file.
  assert.deepEqual(db.prepare('SELECT app, active_release, mode FROM apps').all().map((r) => ({ ...r })), [{ app: 'shop', active_release: 'r1', mode: 'maintenance' }]);
});

test('sqlite: 005 adds releases.pruned_at additively: old rows read null, and the previous build\'s release statements still run', async (t) => {
  // A database as the previous build (001-004) left it, with a failed release it had pruned.
  const dir = await tempDir(t);
  const db = raw(t, dir);
  db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
  for (const m of (await loadMigrations(MIGRATIONS_DIR)).filter((m) => m.version <= 4)) {
    db.exec(m.sql);
    db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, '2024-01-01T00:00:00.000Z');
  }
  db.exec(`INSERT INTO releases (app, id, created_at, state, source, revision) VALUES ('shop', 'r1', '2024-01-01T00:00:00.000Z', 'failed', '/s', NULL)`);

  const store = makeStore(t, dir);
  await store.open();
  assert.equal(await store.schemaVersion(), SHIPPED_VERSIONS.at(-1));
  assert.deepEqual(await store.getRelease('shop', 'r1'), { app: 'shop', id: 'r1', createdAt: '2024-01-01T00:00:00.000Z', state: 'failed', source: '/s', revision: null, prunedAt: null });
  await store.setReleasePrunedAt('shop', 'r1', '2024-02-01T00:00:00.000Z');

  // The previous build's release statements (src/store/sqlite.ts before 005), run on the upgraded file by
  // a gateway sharing it: they neither fail nor disturb the new column.
  const oldCols = 'app, id, created_at, state, source, revision';
  db.prepare(
    `INSERT INTO releases (${oldCols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (app, id) DO UPDATE SET created_at = excluded.created_at, state = excluded.state,
       source = excluded.source, revision = excluded.revision`,
  ).run('shop', 'r2', '2024-01-02T00:00:00.000Z', 'ready', '/s', 'abc');
  db.prepare('UPDATE releases SET state = ? WHERE app = ? AND id = ?').run('previous', 'shop', 'r2');
  assert.deepEqual(
    db.prepare(`SELECT ${oldCols} FROM releases WHERE app = ? ORDER BY created_at DESC, id DESC`).all('shop').map((r) => ({ ...r })),
    [
      { app: 'shop', id: 'r2', created_at: '2024-01-02T00:00:00.000Z', state: 'previous', source: '/s', revision: 'abc' },
      { app: 'shop', id: 'r1', created_at: '2024-01-01T00:00:00.000Z', state: 'failed', source: '/s', revision: null },
    ],
  );
  assert.deepEqual((await store.listReleases('shop')).map((r) => [r.id, r.state, r.prunedAt]), [['r2', 'previous', null], ['r1', 'failed', '2024-02-01T00:00:00.000Z']]);
});

test('sqlite: 007 is additive: rows from before it name no node, and this node still lists, interrupts and reads them', async (t) => {
  // A database as the previous build (001-006) left it, with a process group and a task run still running.
  const dir = await tempDir(t);
  const db = raw(t, dir);
  db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
  for (const m of (await loadMigrations(MIGRATIONS_DIR)).filter((m) => m.version <= 6)) {
    db.exec(m.sql);
    db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, '2024-01-01T00:00:00.000Z');
  }
  db.exec(`INSERT INTO apps (app, active_release, mode, updated_at) VALUES ('shop', 'r1', 'normal', '2024-01-01T00:00:00.000Z');
           INSERT INTO deploys (id, app, kind, state, created_at) VALUES ('d-old', 'shop', 'deploy', 'succeeded', '2024-01-01T00:00:00.000Z');
           INSERT INTO audit (occurred_at, user_name, channel, action, app, outcome) VALUES ('2024-01-01T00:00:00.000Z', 'alice', 'tcp', 'deploy', 'shop', 'ok');
           INSERT INTO process_groups (pgid, app, generation, process, instance_index, gateway_pid, started_at) VALUES (3001, 'shop', 'g1', 'web', 0, 42, '2024-01-01T00:00:00.000Z');
           INSERT INTO task_runs (id, app, task, triggered_by, state, started_at) VALUES ('t-old', 'shop', 'nightly', 'schedule', 'running', '2024-01-01T00:00:00.000Z');`);

  const store = makeStore(t, dir, { node: 'n1' });
  await store.open();
  assert.equal(await store.schemaVersion(), SHIPPED_VERSIONS.at(-1));
  assert.equal((await store.getAppState('shop'))?.reloads, 0, 'an app from before 007 has had no reload asked for');
  assert.equal((await store.getDeploy('d-old'))?.node, null);
  assert.equal((await store.listAudit())[0]?.node, null);
  assert.equal((await store.getTaskRun('t-old'))?.node, null);
  assert.deepEqual((await store.listProcesses()).map((p) => [p.pgid, p.node]), [[3001, null]], 'a group that names no node may be this node\'s orphan');
  assert.deepEqual(await store.interruptTaskRuns('2024-01-02T00:00:00.000Z'), ['t-old'], 'a run that names no node is interrupted');

  // The previous build's inserts, run on the upgraded file by a gateway sharing it, still work.
  db.prepare(`INSERT INTO apps (app, active_release, mode, updated_at) VALUES (?, ?, 'normal', ?)`).run('blog', 'b1', '2024-01-02T00:00:00.000Z');
  db.prepare(`INSERT INTO process_groups (pgid, app, generation, process, instance_index, gateway_pid, started_at) VALUES (?, 'blog', 'g1', 'web', 0, 43, ?)`).run(3002, '2024-01-02T00:00:00.000Z');
  assert.equal((await store.getAppState('blog'))?.reloads, 0);
  assert.deepEqual((await store.listProcesses()).map((p) => [p.pgid, p.node]), [[3001, null], [3002, null]]);
  assert.equal(await store.requestReload('blog'), 1);
  assert.equal((db.prepare(`SELECT reloads FROM apps WHERE app = 'blog'`).get() as { reloads: number }).reloads, 1);
});

// That the rows are gone, through the store, is in migration-contract.test.ts; this checks the file itself.
test('sqlite: reset_state leaves exactly the shipped tables, dropping ones it does not know and their views', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  await store.setActiveRelease('shop', 'r1');
  await store.close();
  const db = raw(t, dir);
  db.exec(`CREATE TABLE leftovers (x TEXT); CREATE TABLE child (id INTEGER PRIMARY KEY, x TEXT REFERENCES leftovers(x)); CREATE VIEW v AS SELECT * FROM apps;`);
  db.close();

  const reset = makeStore(t, dir, { resetState: true });
  await reset.open();
  assert.deepEqual(await reset.listAppStates(), []);
  assert.deepEqual(tables(raw(t, dir)), SHIPPED_TABLES);
  assert.deepEqual(raw(t, dir).prepare(`SELECT name FROM sqlite_master WHERE type = 'view'`).all(), []);
  assert.equal(await reset.schemaVersion(), SHIPPED_VERSIONS.at(-1));
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
  assert.equal(await model.schemaVersion(), SHIPPED_VERSIONS.at(-1), 'only this build\'s migrations are recorded');
  await model.setActiveRelease('shop', 'r2');
  await model.close();
  // On an empty database it works the same.
  const other = await tempDir(t);
  const empty = makeStore(t, other, { migrations: 'model' });
  await empty.open();
  assert.deepEqual(tables(raw(t, other)), SHIPPED_TABLES);
});

test('sqlite: a failing migration rolls back entirely, names its file, and leaves the store closed', async (t) => {
  const dir = await tempDir(t);
  const broken = await migrationsDir(dir, 'broken', { '900-broken.sql': 'CREATE TABLE half (x TEXT);\nINSERT INTO nope VALUES (1);' });
  const store = makeStore(t, dir, { migrationsDir: broken });
  await assert.rejects(store.open(), storeError(/migration 900-broken\.sql failed: .*nope/));
  await assert.rejects(store.listAppStates(), storeError(/not open/));
  const db = raw(t, dir);
  assert.ok(!tables(db).includes('half'), 'the half-applied migration was rolled back');
  assert.deepEqual((db.prepare('SELECT version FROM schema_migrations').all() as { version: number }[]).map((r) => r.version), SHIPPED_VERSIONS, 'the shipped ones stay applied');
  // "model" is one transaction: nothing at all is left.
  const other = await tempDir(t);
  const model = makeStore(t, other, { migrations: 'model', migrationsDir: broken });
  await assert.rejects(model.open(), storeError(/from the model failed/));
  assert.deepEqual(tables(raw(t, other)), []);
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

test('sqlite: 002 creates deploys, deploy_events and process_groups with their keys and indexes', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  const db = raw(t, dir);
  const cols = (table: string) => db.prepare(`PRAGMA table_info(${table})`).all() as { name: string; notnull: number; dflt_value: string | null; pk: number }[];
  assert.deepEqual(cols('deploys').map((c) => c.name), [
    'id', 'app', 'kind', 'state', 'release_id', 'previous_release', 'source', 'user_name', 'failed_step', 'error', 'log_tail', 'created_at', 'finished_at', 'node',
  ]);
  assert.deepEqual(cols('deploys').filter((c) => c.pk > 0).map((c) => c.name), ['id']);
  assert.deepEqual(cols('deploys').filter((c) => c.notnull).map((c) => c.name), ['app', 'kind', 'state', 'log_tail', 'created_at']);
  assert.equal(cols('deploys').find((c) => c.name === 'log_tail')?.dflt_value, "'[]'");
  assert.deepEqual(cols('deploy_events').map((c) => c.name), ['deploy_id', 'seq', 'step', 'status', 'occurred_at', 'duration_ms', 'message', 'lines']);
  assert.deepEqual(cols('deploy_events').filter((c) => c.pk > 0).sort((a, b) => a.pk - b.pk).map((c) => c.name), ['deploy_id', 'seq']);
  const fks = db.prepare('PRAGMA foreign_key_list(deploy_events)').all() as { table: string; from: string; to: string; on_delete: string }[];
  assert.deepEqual(fks.map((f) => [f.table, f.from, f.to, f.on_delete]), [['deploys', 'deploy_id', 'id', 'CASCADE']]);
  assert.deepEqual(cols('process_groups').map((c) => c.name), ['pgid', 'app', 'generation', 'process', 'instance_index', 'gateway_pid', 'started_at']);
  assert.deepEqual(cols('process_groups').filter((c) => c.pk > 0).map((c) => c.name), ['pgid']);
  // 007: groups by node, since a pgid means something on one machine only.
  assert.deepEqual(cols('node_process_groups').map((c) => c.name), ['node', 'pgid', 'app', 'generation', 'process', 'instance_index', 'gateway_pid', 'started_at']);
  assert.deepEqual(cols('node_process_groups').filter((c) => c.pk > 0).sort((x, y) => x.pk - y.pk).map((c) => c.name), ['node', 'pgid']);

  const indexColumns = (index: string) => (db.prepare(`PRAGMA index_info(${index})`).all() as { name: string }[]).map((c) => c.name);
  assert.deepEqual(indexColumns('deploys_created'), ['created_at', 'id']);
  assert.deepEqual(indexColumns('deploys_app_created'), ['app', 'created_at', 'id']);
  assert.deepEqual(indexColumns('deploys_state_created'), ['state', 'created_at', 'id']);
});

test('sqlite: 008 creates cache_flushes with its key, defaults and indexes; the flush lists are served by them', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  const db = raw(t, dir);
  const cols = db.prepare('PRAGMA table_info(cache_flushes)').all() as { name: string; notnull: number; dflt_value: string | null; pk: number }[];
  assert.deepEqual(cols.map((c) => c.name), [
    'id', 'app', 'deploy_id', 'provider', 'urls', 'done', 'state', 'attempts', 'next_at', 'give_up_at', 'error', 'user_name', 'created_at', 'finished_at', 'node',
  ]);
  assert.deepEqual(cols.filter((c) => c.pk > 0).map((c) => c.name), ['id']);
  assert.deepEqual(cols.filter((c) => c.notnull).map((c) => c.name), ['app', 'provider', 'urls', 'done', 'state', 'attempts', 'next_at', 'give_up_at', 'created_at']);
  assert.deepEqual(cols.filter((c) => c.dflt_value !== null).map((c) => [c.name, c.dflt_value]), [['urls', "'[]'"], ['done', "'[]'"], ['attempts', '0']]);
  assert.deepEqual(db.prepare('PRAGMA foreign_key_list(cache_flushes)').all(), [], 'deploy_id is no foreign key: deploys are deleted on their own clock');
  const indexColumns = (index: string) => (db.prepare(`PRAGMA index_info(${index})`).all() as { name: string }[]).map((c) => c.name);
  assert.deepEqual(indexColumns('cache_flushes_state_created'), ['state', 'created_at', 'id']);
  assert.deepEqual(indexColumns('cache_flushes_app_created'), ['app', 'created_at', 'id']);
  assert.deepEqual(indexColumns('cache_flushes_created'), ['created_at', 'id']);

  const plan = (sql: string, ...args: string[]) => (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as { detail: string }[]).map((r) => r.detail).join('; ');
  // The shapes repositories/flushes.ts asks: the pending list, and listFlushes unfiltered and by app.
  const shapes: [string, string[], RegExp][] = [
    [`SELECT * FROM cache_flushes WHERE state = 'pending' AND (node = ? OR node IS NULL) ORDER BY created_at, id`, ['n1'], /USING INDEX cache_flushes_state_created/],
    ['SELECT * FROM cache_flushes ORDER BY created_at DESC, id DESC LIMIT 100', [], /USING INDEX cache_flushes_created/],
    ['SELECT * FROM cache_flushes WHERE app = ? ORDER BY created_at DESC, id DESC LIMIT 100', ['shop'], /USING INDEX cache_flushes_app_created/],
  ];
  for (const [sql, args, index] of shapes) {
    const p = plan(sql, ...args);
    assert.match(p, index, `${sql}: ${p}`);
    assert.doesNotMatch(p, /TEMP B-TREE/, `${sql} sorts in memory: ${p}`);
  }
});

test('sqlite: the deploy list filters are served by an index, newest first without a sort', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  const db = raw(t, dir);
  const cols = 'id, app, kind, state, release_id, previous_release, source, user_name, failed_step, error, log_tail, created_at, finished_at';
  const plan = (where: string, args: string[]) =>
    (db.prepare(`EXPLAIN QUERY PLAN SELECT ${cols} FROM deploys ${where} ORDER BY created_at DESC, id DESC LIMIT 100`).all(...args) as { detail: string }[])
      .map((r) => r.detail)
      .join('; ');
  // The four shapes sqlite.ts prepares for listDeploys.
  const shapes: [string, string[], RegExp][] = [
    ['', [], /USING INDEX deploys_created/],
    ['WHERE app = ?', ['shop'], /USING INDEX deploys_app_created/],
    ['WHERE state = ?', ['running'], /USING INDEX deploys_state_created/],
    ['WHERE app = ? AND state = ?', ['shop', 'running'], /USING INDEX deploys_(app|state)_created/],
  ];
  for (const [where, args, index] of shapes) {
    const p = plan(where, args);
    assert.match(p, index, `${where || 'no filter'}: ${p}`);
    if (args.length < 2) assert.doesNotMatch(p, /TEMP B-TREE/, `${where || 'no filter'} sorts in memory: ${p}`);
  }
  const events = (db.prepare('EXPLAIN QUERY PLAN SELECT * FROM deploy_events WHERE deploy_id = ? ORDER BY seq').all('x') as { detail: string }[]).map((r) => r.detail).join('; ');
  assert.match(events, /USING INDEX sqlite_autoindex_deploy_events_1/);
  assert.doesNotMatch(events, /TEMP B-TREE/);
});

test('sqlite: deleting a deploy (retention cleanup) deletes its events', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  const base = { app: 'shop', kind: 'deploy' as const, state: 'succeeded' as const, releaseId: null, previousRelease: null, source: null, user: null, failedStep: null, error: null, logTail: [], finishedAt: null };
  await store.createDeploy({ ...base, id: 'd1', createdAt: '2024-01-01T00:00:00.000Z' });
  await store.createDeploy({ ...base, id: 'd2', createdAt: '2024-01-02T00:00:00.000Z' });
  for (const deployId of ['d1', 'd2']) {
    for (const seq of [1, 2]) await store.addDeployEvent({ deployId, seq, step: 'prepare', status: 'started', at: '2024-01-01T00:00:00.000Z', durationMs: null, message: null });
  }
  const db = raw(t, dir);
  db.exec('PRAGMA foreign_keys = ON');
  db.prepare('DELETE FROM deploys WHERE created_at < ?').run('2024-01-02T00:00:00.000Z');
  assert.deepEqual(await store.listDeployEvents('d1'), []);
  assert.equal((await store.listDeployEvents('d2')).length, 2);
});

test('sqlite: a log tail or event lines that are not JSON fail the read with BERTH_E_STORE', async (t) => {
  const dir = await tempDir(t);
  const store = makeStore(t, dir);
  await store.open();
  await store.createDeploy({
    id: 'd1', app: 'shop', kind: 'deploy', state: 'failed', releaseId: null, previousRelease: null, source: null, user: null,
    failedStep: 'build', error: 'x', logTail: ['a'], createdAt: '2024-01-01T00:00:00.000Z', finishedAt: null,
  });
  await store.addDeployEvent({ deployId: 'd1', seq: 1, step: 'build', status: 'failed', at: '2024-01-01T00:00:00.000Z', durationMs: 1, message: 'x', lines: ['a'] });
  const db = raw(t, dir);
  db.exec(`UPDATE deploys SET log_tail = 'not json'; UPDATE deploy_events SET lines = '[unterminated'`);
  await assert.rejects(store.getDeploy('d1'), storeError(/cannot read deploy/));
  await assert.rejects(store.listDeploys(), storeError(/cannot list deploys/));
  await assert.rejects(store.listDeployEvents('d1'), storeError(/cannot list deploy events/));
});
