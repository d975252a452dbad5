/**
 * Issue #11 defects 4 and 9 at the supervisor: a generation started with `failOnExit` fails at the first
 * exit (event-driven, with the exit code and the output); without it an exit restarts with backoff; a
 * startup failure carries at most 20 lines merged by time; status RSS counts the whole process group.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import { mergeTails } from '../../src/supervisor/generation.ts';
import { appConfig, proc, supervisor, tempDir, waitFor } from './helpers.ts';

const node = `"${process.execPath}"`;

test('failOnExit: an instance that exits before it is ready fails waitReady at once, naming the exit code, with its output', async (t) => {
  const dir = await tempDir(t);
  // Long backoff and a long startup_timeout: only the exit itself can end the wait quickly.
  const sup = supervisor(t, join(dir, 'state'), { timing: { backoffInitialMs: 30_000 } });
  const command = `${node} -e "console.log('booting'); console.error('no DATABASE_URL'); process.exit(3)"`;
  const gen = sup.startGeneration(appConfig('shop', { health: { path: '/up', startupTimeoutMs: 60_000 } }), { id: 'r1', dir }, { web: proc('web', command) }, { failOnExit: true });
  const started = Date.now();
  const err = await gen.waitReady().then(
    () => assert.fail('must not be ready'),
    (e: unknown) => e as BerthError,
  );
  assert.ok(Date.now() - started < 10_000, `failed after ${Date.now() - started}ms`);
  assert.ok(err instanceof BerthError);
  assert.equal(err.code, 'BERTH_E_SPAWN');
  assert.match(err.message, /shop#1 failed to start: web\.0 exited with code 3 before it was ready/);
  const tail = err.details!.logTail as string[];
  assert.ok(tail.some((l) => / web\.0 r1 out booting$/.test(l)), JSON.stringify(tail));
  assert.ok(tail.some((l) => / web\.0 r1 err no DATABASE_URL$/.test(l)), JSON.stringify(tail));
  assert.equal(gen.state, 'failed');
  assert.equal(gen.instances[0].restarts, 0, 'it failed at the first exit');
  await sup.stopGeneration(gen);
});

test('without failOnExit (an app\'s first boot) an instance that exits restarts with backoff', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'), { timing: { backoffInitialMs: 20, backoffMaxMs: 40 } });
  const gen = sup.startGeneration(appConfig('shop', { health: { startupTimeoutMs: 60_000 } }), { id: 'r1', dir }, { web: proc('web', 'exit 3') });
  let settled = false;
  void gen.waitReady().then(
    () => (settled = true),
    () => (settled = true),
  );
  const inst = gen.instances[0];
  await waitFor(() => inst.restarts >= 2, 'restarts');
  assert.equal(settled, false, 'waitReady still waits');
  assert.equal(gen.state, 'starting');
  await sup.stopGeneration(gen);
});

test('a startup failure carries at most 20 log lines, merged by time across instances', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  // Each of 2 instances prints 15 lines, a few ms apart, and never listens.
  const command = `${node} -e "let i = 0; const t = setInterval(() => { console.log('line ' + ++i); if (i === 15) clearInterval(t) }, 5); setInterval(() => {}, 1000)"`;
  const gen = sup.startGeneration(appConfig('shop', { health: { startupTimeoutMs: 2_000 } }), { id: 'r1', dir }, { web: proc('web', command, { instances: 2 }) });
  await waitFor(() => gen.instances.every((i) => i.logTail().some((l) => l.endsWith(' line 15'))), 'output');
  const err = await gen.waitReady().then(
    () => assert.fail('must not be ready'),
    (e: unknown) => e as BerthError,
  );
  assert.equal(err.code, 'BERTH_E_STARTUP_TIMEOUT');
  const tail = err.details!.logTail as string[];
  assert.equal(tail.length, 20);
  const stamps = tail.map((l) => l.slice(0, 24));
  assert.deepEqual(stamps, stamps.slice().sort(), 'in time order');
  assert.ok(tail.some((l) => l.includes(' web.0 ')) && tail.some((l) => l.includes(' web.1 ')), 'both instances');
  // The newest lines are kept: both instances' last line is there.
  assert.ok(tail.some((l) => / web\.0 r1 out line 15$/.test(l)) && tail.some((l) => / web\.1 r1 out line 15$/.test(l)));
  await sup.stopGeneration(gen);
});

test('mergeTails interleaves by timestamp, keeps the newest, and keeps the order of equal stamps', () => {
  const a = ['2026-01-01T00:00:00.001Z a 1', '2026-01-01T00:00:00.003Z a 2', '2026-01-01T00:00:00.003Z a 3'];
  const b = ['2026-01-01T00:00:00.002Z b 1', '2026-01-01T00:00:00.004Z b 2'];
  assert.deepEqual(mergeTails([a, b], 4), ['2026-01-01T00:00:00.002Z b 1', '2026-01-01T00:00:00.003Z a 2', '2026-01-01T00:00:00.003Z a 3', '2026-01-01T00:00:00.004Z b 2']);
});

test('status RSS counts every process of the instance\'s group, not only its main process', { skip: process.platform !== 'linux' }, async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const MB = 1024 * 1024;
  // The main process is a small idle Node; a child in the same group holds 200 MB it has touched.
  const child = `${node} -e "globalThis.b = Buffer.alloc(200 * 1048576, 1); setInterval(() => {}, 1000)"`;
  const main = `${node} -e "setInterval(() => {}, 1000)"`;
  const gen = sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, { worker: proc('worker', `${child} & ${main}`, { http: false }) });
  await gen.waitReady();
  const inst = gen.instances[0];
  const rss = await waitFor(() => {
    const bytes = inst.snapshot().rssBytes;
    return bytes !== null && bytes > 200 * MB ? bytes : null;
  }, 'the group RSS to include the child');
  assert.ok(rss < 2_000 * MB, `${rss} bytes`);
  await sup.stopGeneration(gen);
  assert.equal(inst.snapshot().rssBytes, null, 'no process, no RSS');
});
