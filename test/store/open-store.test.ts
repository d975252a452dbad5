import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { openStore, SQLITE_FILE } from '../../src/store/open-store.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { PostgresStore } from '../../src/store/postgres.ts';
import type { Store } from '../../src/store/store.ts';
import type { BerthConfig } from '../../src/config/schema.ts';
import { berthConfig } from '../proxy/fixtures.ts';
import { freshDatabase, PASSWORD_ROLE, PASSWORD_ROLE_PASSWORD, POSTGRES_SKIP } from '../helpers/postgres.ts';
import { SHIPPED_VERSIONS } from './migration-files.ts';

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

test('openStore: a postgres:// URL opens the PostgreSQL store, migrated and ready, and makes no SQLite file', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  let store: Store | null = null;
  const url = new URL(await freshDatabase(t, async () => {
    await store?.close();
  }));
  url.username = PASSWORD_ROLE;
  url.password = PASSWORD_ROLE_PASSWORD;
  store = await openStore(config(dir, { database: url.href }), silentLogger());
  assert.ok(store instanceof PostgresStore);
  assert.doesNotMatch(store.name, /pw-right/);
  assert.equal(await store.schemaVersion(), SHIPPED_VERSIONS.at(-1));
  await store.setActiveRelease('shop', 'r1');
  assert.equal((await store.getAppState('shop'))?.activeRelease, 'r1');
  await assert.rejects(stat(join(dir, 'berth.db')), /ENOENT/, 'no SQLite file was made');
});

test('openStore: an unreachable PostgreSQL server is a clear BERTH_E_STORE naming the host and the cause, without the password', async (t) => {
  const dir = await tempDir(t);
  const port = await closedPort();
  await assert.rejects(openStore(config(dir, { database: `postgres://berth:s3cret@127.0.0.1:${port}/berth` }), silentLogger()), (err: unknown) => {
    assert.ok(err instanceof BerthError);
    assert.equal(err.code, 'BERTH_E_STORE');
    assert.equal(err.message, `cannot connect to PostgreSQL database postgres://***@127.0.0.1:${port}/berth: connect ECONNREFUSED 127.0.0.1:${port}`);
    assert.doesNotMatch(err.message + String(err.stack), /s3cret/);
    return true;
  });
  await assert.rejects(stat(join(dir, 'berth.db')), /ENOENT/, 'no SQLite file was made instead');
});

/** A loopback port nothing listens on (it was free a moment ago). */
function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}
