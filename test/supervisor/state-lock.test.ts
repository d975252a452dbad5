/**
 * The state lock (issue #11, defect 1): one gateway per state dir, a lock that a dead process never
 * leaves behind, a refusal that names the live holder and never a reused pid, and the control socket
 * checked for a gateway that holds no lock. End to end with real gateways: test/gateway/restart-safety.test.ts.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import { LOCK_FILE, PID_FILE, StateLock, processStartTime } from '../../src/supervisor/state-lock.ts';
import { removeAfter } from '../helpers/cleanup.ts';

async function stateDir(t: TestContext): Promise<{ dir: string; socket: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-lock-'));
  removeAfter(t, dir);
  return { dir: join(dir, 'state'), socket: join(dir, 'state', 'control.sock') };
}

/** Tries the lock from another process: its refusal message, or 'taken'. */
function acquireElsewhere(dir: string, socket: string): Promise<string> {
  const code = `import { StateLock } from ${JSON.stringify(new URL('../../src/supervisor/state-lock.ts', import.meta.url).pathname)};
try { await (await StateLock.acquire(${JSON.stringify(dir)}, ${JSON.stringify(socket)})).release(); console.log('taken'); } catch (err) { console.log(err.message); }`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c));
    child.once('error', reject);
    child.once('exit', () => resolve(out.trim()));
  });
}

const conflict = (match: RegExp) => (err: unknown) => err instanceof BerthError && err.code === 'BERTH_E_CONFLICT' && match.test(err.message);

test('one holder at a time; the refusal names it; a release lets the next one in', async (t) => {
  const { dir, socket } = await stateDir(t);
  const lock = await StateLock.acquire(dir, socket);
  const holder = JSON.parse(await readFile(join(dir, PID_FILE), 'utf8'));
  assert.equal(holder.pid, process.pid);
  assert.equal(holder.startTime, processStartTime(process.pid));
  await assert.rejects(StateLock.acquire(dir, socket), conflict(new RegExp(`^another gateway \\(pid ${process.pid}, started .+\\) is already running on control socket ${socket} with state dir ${dir}; `)));
  await lock.release();
  await lock.release();
  await assert.rejects(readFile(join(dir, PID_FILE)), { code: 'ENOENT' });
  const next = await StateLock.acquire(dir, socket);
  await next.release();
});

test('a refused attempt in the same process does not free the lock for other processes', async (t) => {
  const { dir, socket } = await stateDir(t);
  const lock = await StateLock.acquire(dir, socket);
  await assert.rejects(StateLock.acquire(dir, socket), conflict(/already running/));
  await assert.rejects(StateLock.acquire(dir, socket), conflict(/already running/));
  assert.match(await acquireElsewhere(dir, socket), new RegExp(`^another gateway \\(pid ${process.pid}, `));
  await lock.release();
  assert.equal(await acquireElsewhere(dir, socket), 'taken');
});

test('a pid file left behind is no lock, and a pid that now names another process is never named', async (t) => {
  const { dir, socket } = await stateDir(t);
  // A gateway killed with SIGKILL leaves its pid file; the kernel dropped its lock.
  const first = await StateLock.acquire(dir, socket);
  await first.release();
  await writeFile(join(dir, PID_FILE), JSON.stringify({ pid: process.ppid, startTime: '1', at: '2026-01-01T00:00:00.000Z' }));
  const lock = await StateLock.acquire(dir, socket);
  assert.equal(JSON.parse(await readFile(join(dir, PID_FILE), 'utf8')).pid, process.pid);
  // Held, but the pid file names a live process started at another time (a reused pid): not named.
  await writeFile(join(dir, PID_FILE), JSON.stringify({ pid: process.ppid, startTime: '1', at: '2026-01-01T00:00:00.000Z' }));
  await assert.rejects(StateLock.acquire(dir, socket), conflict(new RegExp(`^another gateway is already running on control socket ${socket} with state dir ${dir}; `)));
  await lock.release();
});

test('a gateway that answers on the control socket without the lock (an older berth) is refused too', async (t) => {
  const { dir, socket } = await stateDir(t);
  await (await StateLock.acquire(dir, socket)).release();
  const server = createServer((c) => c.end());
  await new Promise<void>((r) => server.listen(socket, r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  await assert.rejects(StateLock.acquire(dir, socket), conflict(/another gateway is already running on control socket /));
  // The refused start did not take the lock for good.
  await new Promise<void>((r) => server.close(() => r()));
  await (await StateLock.acquire(dir, socket)).release();
});

test('a lock path that is not a regular file is refused', async (t) => {
  const { dir, socket } = await stateDir(t);
  await (await StateLock.acquire(dir, socket)).release();
  await rm(join(dir, LOCK_FILE));
  await symlink('/etc/passwd', join(dir, LOCK_FILE));
  await assert.rejects(StateLock.acquire(dir, socket), (err: unknown) => err instanceof BerthError && /is not a regular file/.test(err.message));
});
