import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { lstat, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Ports, MAX_SOCKET_PATH_BYTES } from '../../src/supervisor/ports.ts';
import { tempDir } from './helpers.ts';

function listen(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => s.close(() => resolve()));
  });
}

test('port() hands out free loopback ports, never the same one twice in a row', async (t) => {
  const ports = new Ports(await tempDir(t));
  const seen = new Set<number>();
  for (let i = 0; i < 20; i++) {
    const port = await ports.port();
    assert.ok(port > 0 && port < 65536);
    assert.ok(!seen.has(port), `port ${port} handed out twice`);
    seen.add(port);
    await listen(port); // it is really free
  }
});

test('socket() gives a fresh path under <stateDir>/sockets, with the dir made and a stale file removed', async (t) => {
  const stateDir = await tempDir(t);
  const ports = new Ports(stateDir);
  const a = await ports.socket('shop', 'web', 0);
  const b = await ports.socket('shop', 'web', 0);
  assert.notEqual(a, b);
  assert.ok(a.startsWith(join(stateDir, 'sockets') + '/'), a);
  assert.match(a, /shop\.web\.0\.\d+\.sock$/);
  assert.ok((await lstat(join(stateDir, 'sockets'))).isDirectory());
  // A stale file at the next path (e.g. left by a killed gateway) is removed.
  const next = join(stateDir, 'sockets', 'shop.web.1.3.sock');
  await writeFile(next, 'stale');
  assert.equal(await ports.socket('shop', 'web', 1), next);
  await assert.rejects(lstat(next), { code: 'ENOENT' });
  await ports.release(next); // releasing a missing file is fine
});

test('a state dir too long for a socket path falls back to a private dir under the temp dir', async (t) => {
  const base = await tempDir(t);
  const stateDir = join(base, 'x'.repeat(90));
  const ports = new Ports(stateDir);
  const path = await ports.socket('shop', 'web', 0);
  assert.ok(Buffer.byteLength(path) <= MAX_SOCKET_PATH_BYTES, path);
  assert.ok(path.startsWith(ports.fallbackDir + '/'), path);
  assert.ok(ports.fallbackDir.startsWith(tmpdir()));
  t.after(() => rm(ports.fallbackDir, { recursive: true, force: true }));
  const st = await lstat(ports.fallbackDir);
  assert.ok(st.isDirectory());
  assert.equal(st.mode & 0o777, 0o700);
  // Names too long even there are hashed, still unique.
  const longName = 'a'.repeat(120);
  const h1 = ports.socketPath(longName, 'web', 0);
  const h2 = ports.socketPath(longName, 'web', 0);
  assert.ok(Buffer.byteLength(h1) <= MAX_SOCKET_PATH_BYTES, h1);
  assert.notEqual(h1, h2);
});

test('a fallback dir that is a symlink (someone else\'s) is refused', async (t) => {
  const base = await tempDir(t);
  const ports = new Ports(join(base, 'y'.repeat(90)));
  const target = join(base, 'elsewhere');
  await mkdir(target);
  await rm(ports.fallbackDir, { recursive: true, force: true });
  await symlink(target, ports.fallbackDir);
  t.after(() => rm(ports.fallbackDir, { force: true }));
  await assert.rejects(ports.socket('shop', 'web', 0), { code: 'BERTH_E_SPAWN' });
});
