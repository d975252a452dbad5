/**
 * Finding 5 of issue #10 (second half): berth.db was 0644, readable by any local user. The store and
 * its -wal and -shm files are 0600, also when an older berth made them 0644; the state dir is closed
 * (0700, or 0711 when berth is root and app users must pass through it to their own directories).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { silentLogger } from '../../src/lib/logger.ts';
import { openStore } from '../../src/store/open-store.ts';
import { secureStateDir } from '../../src/supervisor/state-access.ts';
import { berthConfig } from '../proxy/fixtures.ts';
import { tempDir } from '../helpers/gateway.ts';

const mode = async (p: string) => (await stat(p)).mode & 0o777;

test('berth.db and its -wal and -shm are 0600, and an older 0644 store is closed on open', async (t) => {
  const dir = await tempDir(t);
  const fresh = join(dir, 'fresh');
  const store = await openStore({ ...berthConfig([]), stateDir: fresh, database: null }, silentLogger());
  await store.setActiveRelease('shop', 'r1'); // a write, so the -wal and -shm files exist
  for (const name of ['berth.db', 'berth.db-wal', 'berth.db-shm']) assert.equal(await mode(join(fresh, name)), 0o600, name);
  await store.close();

  const old = join(dir, 'old');
  await mkdir(old);
  const first = await openStore({ ...berthConfig([]), stateDir: old, database: null }, silentLogger());
  await first.close();
  for (const name of ['berth.db', 'berth.db-wal']) await writeFile(join(old, name), '', { flag: 'a' }).then(() => chmod(join(old, name), 0o644));
  const again = await openStore({ ...berthConfig([]), stateDir: old, database: null }, silentLogger());
  t.after(() => again.close());
  assert.equal(await mode(join(old, 'berth.db')), 0o600);
  assert.equal(await mode(join(old, 'berth.db-wal')), 0o600);
});

test('the state dir is 0700, or 0711 for app users to pass (root, or a socket_group); tmp/ is 0700; a world-writable one is refused', async (t) => {
  const dir = await tempDir(t);
  await secureStateDir(join(dir, 'a'), { root: false, socketGroup: null });
  assert.equal(await mode(join(dir, 'a')), 0o700);
  assert.equal(await mode(join(dir, 'a', 'apps')), 0o700);
  assert.equal(await mode(join(dir, 'a', 'tmp')), 0o700);
  await mkdir(join(dir, 'b'), { mode: 0o755 });
  await chmod(join(dir, 'b'), 0o755);
  await secureStateDir(join(dir, 'b'), { root: true, socketGroup: null });
  assert.equal(await mode(join(dir, 'b')), 0o711, 'an older 0755 state dir is closed to listing');
  assert.equal(await mode(join(dir, 'b', 'apps')), 0o711);
  await mkdir(join(dir, 'c'));
  await chmod(join(dir, 'c'), 0o777);
  await assert.rejects(secureStateDir(join(dir, 'c'), { root: true, socketGroup: null }), /world-writable/);
});
