import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { openStore, SQLITE_FILE } from '../../src/store/open-store.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import type { BerthConfig } from '../../src/config/schema.ts';
import { berthConfig } from '../proxy/fixtures.ts';

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-open-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function config(stateDir: string, over: Partial<BerthConfig> = {}): BerthConfig {
  const base = berthConfig([]);
  return { ...base, file: join(stateDir, 'berth.yaml'), stateDir, listen: [], control: { ...base.control, socket: join(stateDir, 'control.sock') }, ...over };
}

test('openStore: database null opens SQLite at <stateDir>/berth.db, migrated and ready', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const store = await openStore(config(stateDir), silentLogger());
  t.after(() => store.close());
  assert.ok(store instanceof SqliteStore);
  assert.equal(SQLITE_FILE, 'berth.db');
  assert.ok((await stat(join(stateDir, 'berth.db'))).isFile());
  assert.ok((await store.schemaVersion()) >= 1);
  await store.setActiveRelease('shop', 'r1');
  assert.equal((await store.getAppState('shop'))?.activeRelease, 'r1');
});

test('openStore: passes migrations and reset_state through', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(openStore(config(dir, { migrations: 'none' }), silentLogger()), (err: unknown) => err instanceof BerthError && err.code === 'BERTH_E_STORE' && /no berth schema/.test(err.message));
  const first = await openStore(config(dir), silentLogger());
  await first.setActiveRelease('shop', 'r1');
  await first.close();
  const reset = await openStore(config(dir, { resetState: true }), silentLogger());
  t.after(() => reset.close());
  assert.equal(await reset.getAppState('shop'), null);
});

test('openStore: a postgres URL is refused clearly, without echoing the password', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(openStore(config(dir, { database: 'postgres://berth:s3cret@db.internal:5432/berth' }), silentLogger()), (err: unknown) => {
    assert.ok(err instanceof BerthError);
    assert.equal(err.code, 'BERTH_E_STORE');
    assert.match(err.message, /PostgreSQL store is not available in this build/);
    assert.match(err.message, /db\.internal/);
    assert.doesNotMatch(err.message, /s3cret/);
    return true;
  });
  await assert.rejects(stat(join(dir, 'berth.db')), /ENOENT/, 'no SQLite file was made instead');
});
