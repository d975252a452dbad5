/**
 * What only the PostgreSQL store has to show, beyond the contract suites it shares with SQLite: its
 * migration files keep step with SQLite's, nodes starting together migrate once (the advisory lock), the
 * password stays out of logs and errors, a dropped connection or a server outage is a store error that
 * passes by itself, and text with a NUL (which PostgreSQL refuses) is still written.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import pino from 'pino';
import { BerthError, ErrorCodes } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { loadMigrations, MIGRATIONS_DIR, POSTGRES_MIGRATIONS_DIR } from '../../src/store/migrations.ts';
import { PostgresStore, type PostgresStoreOptions } from '../../src/store/postgres.ts';
import { openStore } from '../../src/store/open-store.ts';
import { normaliseConfig } from '../../src/config/validate.ts';
import type { DeployRecord, FlushRecord } from '../../src/store/store.ts';
import { LogSink } from '../helpers/gateway.ts';
import { freshDatabase, PASSWORD_ROLE, PASSWORD_ROLE_PASSWORD, POSTGRES_SKIP, postgresServer } from '../helpers/postgres.ts';
import { SHIPPED_VERSIONS } from './migration-files.ts';

const skip = POSTGRES_SKIP;

/** A fresh database for the test: its superuser URL, and stores on it (closed before it is dropped). */
async function database(t: TestContext) {
  const stores: PostgresStore[] = [];
  const url = await freshDatabase(t, async () => {
    for (const s of stores) await s.close();
  });
  return {
    url,
    store(over: Partial<PostgresStoreOptions> = {}): PostgresStore {
      const store = new PostgresStore({ url, migrations: 'upgrade', resetState: false, logger: silentLogger(), ...over });
      stores.push(store);
      return store;
    },
  };
}

/** Runs one query on its own connection, as the superuser of `url`. */
async function query(url: string, sql: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

function deploy(id: string): DeployRecord {
  return {
    id, app: 'shop', kind: 'deploy', state: 'running', releaseId: null, previousRelease: null, source: null, user: null,
    failedStep: null, error: null, logTail: [], createdAt: '2024-01-01T00:00:00.000Z', finishedAt: null,
  };
}

test('the PostgreSQL migrations are the same versions, names and order as SQLite\'s', async () => {
  const names = async (dir: string) => (await loadMigrations(dir)).map((m) => `${m.version}-${m.name}`);
  assert.deepEqual(await names(POSTGRES_MIGRATIONS_DIR), await names(MIGRATIONS_DIR));
  assert.deepEqual((await loadMigrations(POSTGRES_MIGRATIONS_DIR)).map((m) => m.version), SHIPPED_VERSIONS);
});

test('five nodes starting at once on an empty database apply each migration exactly once', { skip }, async (t) => {
  const db = await database(t);
  const sinks = Array.from({ length: 5 }, () => new LogSink());
  const stores = sinks.map((sink) => db.store({ logger: pino({ level: 'debug' }, sink) }));
  await Promise.all(stores.map((s) => s.open()));

  const applied = sinks.flatMap((s) => s.lines.filter((l) => l.msg === 'migration applied').map((l) => l.version as number));
  assert.deepEqual(applied.sort((a, b) => a - b), SHIPPED_VERSIONS, 'each version logged as applied by one node only');
  for (const s of stores) assert.equal(await s.schemaVersion(), SHIPPED_VERSIONS.at(-1));
  const rows = (await query(db.url, 'SELECT version FROM schema_migrations ORDER BY version')).rows.map((r) => r.version);
  assert.deepEqual(rows, SHIPPED_VERSIONS);

  // Every node writes and sees the others' writes.
  await stores[0].setMode('shop', 'maintenance', null, null);
  assert.equal((await stores[4].getAppState('shop'))?.mode, 'maintenance');
});

test('the password of the database URL reaches no log line and no error', { skip }, async (t) => {
  const sink = new LogSink();
  const logger = pino({ level: 'trace' }, sink);
  const db = await database(t);
  const url = new URL(db.url);
  url.username = PASSWORD_ROLE;
  url.password = PASSWORD_ROLE_PASSWORD;

  const store = db.store({ url: url.href, logger });
  assert.doesNotMatch(store.name, /pw-right/);
  await store.open();
  await store.setActiveRelease('shop', 'r1');
  await store.createDeploy(deploy('d1'));
  await assert.rejects(store.createDeploy(deploy('d1')), (err: unknown) => err instanceof BerthError && err.code === ErrorCodes.conflict);
  await store.close();

  // A wrong password: a clear error that names the host, with neither password in it.
  const wrong = new URL(url.href);
  wrong.password = 'pw-wrong-c41e';
  await assert.rejects(db.store({ url: wrong.href, logger }).open(), (err: unknown) => {
    assert.ok(err instanceof BerthError);
    assert.equal(err.code, ErrorCodes.store);
    assert.match(err.message, /^cannot connect to PostgreSQL database postgres:\/\/\*\*\*@127\.0\.0\.1:\d+\/berth_test_\w+: password authentication failed/);
    assert.doesNotMatch(err.message + String(err.stack), /pw-wrong|pw-right/);
    return true;
  });

  assert.ok(sink.lines.some((l) => l.msg === 'store opened'));
  assert.doesNotMatch(JSON.stringify(sink.lines), /pw-right|pw-wrong/);
});

test('connections the server drops fail calls with BERTH_E_STORE, never end the process, and the store recovers by itself', { skip }, async (t) => {
  const db = await database(t);
  const store = db.store();
  await store.open();
  await Promise.all([store.setMode('shop', 'maintenance', null, null), store.listAppStates(), store.listDeploys()]);

  const killed = await query(db.url, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'berth' AND datname = current_database()`);
  assert.ok(killed.rows.length >= 1, 'the store held connections, marked application_name berth');

  // The pool replaces the dropped connections; a call that met one on its way out is a plain store error.
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      assert.equal((await store.getAppState('shop'))?.mode, 'maintenance');
      break;
    } catch (err) {
      assert.ok(err instanceof BerthError && err.code === ErrorCodes.store, String(err));
      assert.ok(Date.now() < deadline, 'recovered within 10 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await store.setMode('shop', 'normal', null, null);
  assert.equal((await store.getAppState('shop'))?.mode, 'normal');
});

test('while the server is down every call is a clear BERTH_E_STORE naming the action, and the store carries on when it is back', { skip }, async (t) => {
  const store = (await database(t)).store();
  await store.open();
  await store.setActiveRelease('shop', 'r1');

  const server = await postgresServer();
  let down = true;
  await server.stop();
  // The database is dropped after this test: the server must be up by then, whatever failed.
  t.after(async () => {
    if (down) await server.start();
  });
  const node = { node: 'n1', hostname: 'h1', pid: 42, version: '1.0.0', state: 'running' as const, startedAt: '2024-01-01T00:00:00.000Z', heartbeatAt: '2024-01-01T00:00:00.000Z', serving: [] };
  const flush: FlushRecord = {
    id: 'f1', app: 'shop', deployId: null, provider: 'http', urls: ['https://cdn.test/a'], done: [], state: 'pending', attempts: 0,
    nextAt: '2024-01-01T00:00:00.000Z', giveUpAt: '2024-01-01T01:00:00.000Z', error: null, user: 'alice', createdAt: '2024-01-01T00:00:00.000Z', finishedAt: null,
  };
  const calls: [action: string, call: () => Promise<unknown>][] = [
    ['set mode', () => store.setMode('shop', 'maintenance', null, null)],
    ['read app state', () => store.getAppState('shop')],
    ['count a reload', () => store.requestReload('shop')],
    ['save node', () => store.saveNode(node)],
    ['list nodes', () => store.listNodes()],
    ['delete nodes', () => store.deleteNodesBefore('2024-01-01T00:00:00.000Z')],
    ['take a fleet lock', () => store.acquireLock('deploy:shop', '2024-01-01T00:00:00.000Z')],
    ['release a fleet lock', () => store.releaseLock('deploy:shop')],
    ['release fleet locks', () => store.releaseAllLocks()],
    ['claim', () => store.claimOnce('schedule:shop:nightly:2024-01-01T00:00')],
    ['delete claims', () => store.deleteClaimsBefore('2024-01-01T00:00:00.000Z')],
    ['save an ACME answer', () => store.putChallenge('tok', 'tok.thumb')],
    ['read an ACME answer', () => store.getChallenge('tok')],
    ['list ACME answers', () => store.listChallenges()],
    ['delete an ACME answer', () => store.deleteChallenge('tok')],
    ['create flush', () => store.createFlush(flush)],
    ['update flush', () => store.updateFlush(flush.id, { attempts: 1 })],
    ['read flush', () => store.getFlush(flush.id)],
    ['list pending flushes', () => store.listPendingFlushes()],
    ['list flushes', () => store.listFlushes()],
    ['delete flushes', () => store.deleteFlushesBefore('2024-01-01T00:00:00.000Z')],
  ];
  for (const [action, call] of calls) {
    await assert.rejects(call(), (err: unknown) => {
      assert.ok(err instanceof BerthError, `${action}: ${String(err)}`);
      assert.equal(err.code, ErrorCodes.store, action);
      assert.ok(err.message.startsWith(`store: cannot ${action}: `), `${action}: ${err.message}`);
      return true;
    });
  }
  await server.start();
  down = false;

  await store.setMode('shop', 'maintenance', null, null);
  assert.deepEqual(
    { ...(await store.getAppState('shop')), updatedAt: '' },
    { app: 'shop', activeRelease: 'r1', mode: 'maintenance', modeMessage: null, modeRetryAfter: null, reloads: 0, updatedAt: '' },
  );
  assert.equal(await store.requestReload('shop'), 1, 'no reload was counted while the server was down');
  assert.equal(await store.acquireLock('deploy:shop', '2024-01-01T00:00:00.000Z'), null);
  assert.equal(await store.getFlush(flush.id), null, 'no flush was written while the server was down');
  await store.createFlush(flush);
  assert.deepEqual(await store.listPendingFlushes(), [{ ...flush, node: 'local' }]);
});

test('a NUL character, which PostgreSQL text cannot hold, is stored as U+FFFD instead of failing the write', { skip }, async (t) => {
  const store = (await database(t)).store();
  await store.open();
  await store.createTaskRun({
    id: 't1', app: 'shop', task: 'dump', trigger: 'manual', state: 'running', command: 'cat /dev/zero', releaseId: null, user: null,
    startedAt: '2024-01-01T00:00:00.000Z', finishedAt: null, exitCode: null, durationMs: null, output: '', error: null,
  });
  await store.finishTaskRun('t1', { state: 'failed', finishedAt: '2024-01-01T00:00:01.000Z', exitCode: 1, durationMs: 1000, output: 'a\0b', error: 'bad\0byte' });
  const run = await store.getTaskRun('t1');
  assert.equal(run?.output, 'a\uFFFDb');
  assert.equal(run?.error, 'bad\uFFFDbyte');
  await store.setMode('shop', 'maintenance', 'back\0soon', null);
  assert.equal((await store.getAppState('shop'))?.modeMessage, 'back\uFFFDsoon');
});

test('database_pool bounds the connections the gateway itself opens, under concurrent calls', { skip }, async (t) => {
  const db = await database(t);
  const config = normaliseConfig({ database: db.url, database_pool: 2 }, { file: '/srv/berth.yaml', environment: null });
  const store = await openStore(config, silentLogger());
  t.after(() => store.close());
  await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? store.listDeploys() : store.listAppStates())));
  const held = await query(db.url, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'berth' AND datname = current_database()`);
  assert.ok(held.rows[0].n >= 1 && held.rows[0].n <= 2, `${held.rows[0].n} connections for database_pool 2`);
});

test('watch hears the app, certificate and ACME answer changes another node makes (migration 007\'s triggers), and nothing once stopped', { skip }, async (t) => {
  const db = await database(t);
  const a = db.store({ node: 'a' });
  const b = db.store({ node: 'b' });
  await a.open();
  await b.open();
  const heard: string[] = [];
  const connections: boolean[] = [];
  let listening!: () => void;
  const up = new Promise<void>((resolve) => (listening = resolve));
  const stop = b.watch((topic) => heard.push(topic), (connected) => {
    connections.push(connected);
    if (connected) listening();
  });
  try {
    await up;
    await a.requestReload('shop');
    await a.setMode('blog', 'maintenance', null, null);
    await a.setActiveRelease('api', 'r1');
    const keyPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    await a.saveCertificate({
      host: 'shop.test', directory: 'https://acme.example.test/dir', certificatePem: '-----BEGIN CERTIFICATE-----\nMIIBleaf\n-----END CERTIFICATE-----\n', keyPem,
      notBefore: '2026-01-01T00:00:00.000Z', notAfter: '2026-04-01T00:00:00.000Z', onDemand: false, issuedAt: '2026-01-01T00:00:00.000Z',
    });
    assert.equal(await a.deleteCertificate('shop.test'), true);
    await a.putChallenge('tok', 'tok.ka');
    // Rows no other node acts on are not announced.
    await a.claimOnce('k');
    await a.createDeploy(deploy('d1'));
    await a.saveNode({ node: 'a', hostname: 'h', pid: 42, version: '1.0.0', state: 'running', startedAt: '2024-01-01T00:00:00.000Z', heartbeatAt: '2024-01-01T00:00:00.000Z', serving: [] });
    const expected = ['app:shop', 'app:blog', 'app:api', 'certificate:shop.test', 'certificate:shop.test', 'challenge:tok'];
    const deadline = Date.now() + 10_000;
    while (heard.length < expected.length && Date.now() < deadline) await sleep(20);
    await sleep(200);
    assert.deepEqual(heard, expected);
  } finally {
    stop();
  }
  await a.requestReload('shop');
  await sleep(300);
  assert.equal(heard.length, 6, 'nothing is heard once the watch is stopped');
  assert.deepEqual(connections, [true], 'connected once, never lost');
});

test('watch hears every change of a scale override as scale:<app> (migration 009\'s trigger)', { skip }, async (t) => {
  const db = await database(t);
  const a = db.store({ node: 'a' });
  const b = db.store({ node: 'b' });
  await a.open();
  await b.open();
  const heard: string[] = [];
  let listening!: () => void;
  const up = new Promise<void>((resolve) => (listening = resolve));
  const stop = b.watch((topic) => heard.push(topic), (connected) => connected && listening());
  try {
    await up;
    await a.setScale({ app: 'shop', process: 'web', instances: 4, user: 'alice', setAt: '2026-01-01T00:00:00.000Z' });
    await a.setScale({ app: 'shop', process: 'web', instances: 2, user: 'alice', setAt: '2026-01-01T00:00:01.000Z' });
    await a.deleteScale('shop', 'web');
    await a.deleteScale('blog', 'web'); // nothing deleted: nothing announced
    const expected = ['scale:shop', 'scale:shop', 'scale:shop'];
    const deadline = Date.now() + 10_000;
    while (heard.length < expected.length && Date.now() < deadline) await sleep(20);
    await sleep(200);
    assert.deepEqual(heard, expected);
  } finally {
    stop();
  }
});
