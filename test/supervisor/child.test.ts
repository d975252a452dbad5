/**
 * The one child-process primitive (src/supervisor/child.ts) with real processes: lines, exit, spawn
 * failure, and stop(): SIGTERM, SIGKILL after the grace, resolved only once the whole group is gone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Child, type OutputStream } from '../../src/supervisor/child.ts';
import { ProcessGroup } from '../../src/supervisor/process-group.ts';
import { pidExists, tempDir, waitFor, waitGroupGone } from './helpers.ts';

function lines(): { seen: [OutputStream, string][]; onLine: (s: OutputStream, l: string) => void } {
  const seen: [OutputStream, string][] = [];
  return { seen, onLine: (s, l) => seen.push([s, l]) };
}

/** No process of the group runs any more; zombies may wait a moment for PID 1 to reap them. */
async function assertGone(child: Child, member: number): Promise<void> {
  assert.equal(new ProcessGroup(child.pid!).running(), false, 'no member of the group runs');
  await waitGroupGone(child.pid!);
  assert.equal(pidExists(member), false);
}

test('a child reads stdout and stderr as whole lines and tells its exit and its process group', async (t) => {
  const dir = await tempDir(t);
  const { seen, onLine } = lines();
  const events: string[] = [];
  const child = new Child({
    command: "echo one; printf 'caf\\303'; sleep 0.1; printf '\\251\\n' >&1; echo two >&2; exit 3",
    cwd: dir,
    env: { PATH: process.env.PATH },
    onLine,
    onProcess: (event, info) => events.push(`${event} ${info.pgid} ${info.app}`),
    owner: { app: 'shop', process: 'web', index: 0, releaseId: 'r1' },
  });
  assert.ok(child.pid !== null && child.group?.pgid === child.pid);
  assert.deepEqual(events, [`spawn ${child.pid} shop`]);
  assert.deepEqual(await child.exited, { code: 3, signal: null, error: null });
  await child.closed;
  assert.deepEqual(events, [`spawn ${child.pid} shop`, `exit ${child.pid} shop`]);
  assert.deepEqual(seen.filter(([s]) => s === 'out').map(([, l]) => l), ['one', 'café']);
  assert.deepEqual(seen.filter(([s]) => s === 'err').map(([, l]) => l), ['two']);
});

test('an argv runs as given, with no shell parsing of its words', async (t) => {
  const dir = await tempDir(t);
  const { seen, onLine } = lines();
  const child = new Child({ command: ['printf', '%s\\n', 'a b', '$HOME'], cwd: dir, env: { PATH: process.env.PATH }, onLine });
  assert.equal((await child.exited).code, 0);
  await child.closed;
  assert.deepEqual(seen.map(([, l]) => l), ['a b', '$HOME']);
});

test('a child that cannot start says why in `exited`, and its output is closed', async (t) => {
  const dir = await tempDir(t);
  const child = new Child({ command: 'true', cwd: join(dir, 'gone'), env: {}, onLine: () => {} });
  assert.equal(child.pid, null);
  const exit = await child.exited;
  assert.equal(exit.code, null);
  assert.match(exit.error?.message ?? '', /ENOENT/);
  await child.closed;
  assert.equal(await child.stop(1_000), 'exited');
});

test('stop(): a group that goes on SIGTERM is gone when stop resolves, without waiting out the grace', async (t) => {
  const dir = await tempDir(t);
  const child = new Child({ command: 'sleep 30 & echo $! > child.pid; sleep 30 & wait', cwd: dir, env: { PATH: process.env.PATH }, onLine: () => {} });
  const member = Number(await waitFor(() => readFile(join(dir, 'child.pid'), 'utf8').then((s) => s.trim()), 'the member pid'));
  const started = Date.now();
  assert.equal(await child.stop(20_000), 'exited');
  assert.ok(Date.now() - started < 10_000, 'events, not the grace, end the stop');
  await assertGone(child, member);
  assert.equal((await child.exited).signal, 'SIGTERM');
});

test('stop(): a member that ignores SIGTERM is SIGKILLed after the grace, with its group', async (t) => {
  const dir = await tempDir(t);
  const child = new Child({ command: "trap '' TERM; sleep 30 & echo $! > child.pid; wait; wait", cwd: dir, env: { PATH: process.env.PATH }, onLine: () => {} });
  const member = Number(await waitFor(() => readFile(join(dir, 'child.pid'), 'utf8').then((s) => s.trim()), 'the member pid'));
  const started = Date.now();
  assert.equal(await child.stop(300), 'killed');
  assert.ok(Date.now() - started >= 250, 'the grace was given');
  await assertGone(child, member);
});

test('stop(): a member that closed its pipes and outlives the leader is found at the deadline and killed', async (t) => {
  const dir = await tempDir(t);
  // The leader exits at once; the member holds no pipe, so no event says it is still there.
  const child = new Child({ command: "trap '' TERM; sleep 30 >/dev/null 2>&1 & echo $! > child.pid", cwd: dir, env: { PATH: process.env.PATH }, onLine: () => {} });
  await child.exited;
  await child.closed;
  const member = Number((await readFile(join(dir, 'child.pid'), 'utf8')).trim());
  assert.ok(pidExists(member));
  assert.equal(await child.stop(300), 'killed');
  await assertGone(child, member);
});

test('stop(): a process that left the group but holds its pipes does not hold the stop until the deadline', { skip: !existsSync('/usr/bin/setsid') && !existsSync('/bin/setsid') }, async (t) => {
  const dir = await tempDir(t);
  // setsid: a session and group of its own, so no signal to the group reaches it; it keeps stdout.
  const child = new Child({ command: 'setsid sleep 15 & echo $! > escaped.pid; sleep 30 & echo $! > child.pid; wait', cwd: dir, env: { PATH: process.env.PATH }, onLine: () => {} });
  const member = Number(await waitFor(() => readFile(join(dir, 'child.pid'), 'utf8').then((s) => s.trim()), 'the member pid'));
  const escaped = Number((await readFile(join(dir, 'escaped.pid'), 'utf8')).trim());
  t.after(() => {
    // setsid may have forked and exited already: the escaped pid can be gone by now.
    try {
      process.kill(escaped, 'SIGKILL');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  });
  const started = Date.now();
  assert.equal(await child.stop(20_000), 'exited');
  assert.ok(Date.now() - started < 10_000, `the empty group is seen, not only the pipes (${Date.now() - started}ms)`);
  await assertGone(child, member);
});
