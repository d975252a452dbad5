import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import type { TaskRunRecord } from '../../src/store/store.ts';
import { RELEASE_ID, alive, fixture, waitFor } from './helpers.ts';

const isCode = (code: string) => (err: unknown) => err instanceof BerthError && err.code === code;

/** Runs of shop's `task`, oldest first. */
async function runsOf(store: { listTaskRuns(f: object): Promise<TaskRunRecord[]> }, task: string): Promise<TaskRunRecord[]> {
  return (await store.listTaskRuns({ app: 'shop', task, limit: 1000 })).reverse();
}

test('every second with a 3s job: overlapping runs are recorded as skipped, and runs never overlap', async (t) => {
  const f = await fixture(t, {
    schedule: { slow: { cron: '* * * * * *', command: 'echo "start $$" >> "$MARKS"; sleep 3; echo "end $$" >> "$MARKS"' } },
    env: { MARKS: '' },
  });
  f.config.apps.shop.env.MARKS = join(f.dir, 'marks');
  f.scheduler.start();
  const done = await waitFor(async () => {
    const runs = await runsOf(f.store, 'slow');
    const ok = runs.filter((r) => r.state === 'succeeded');
    return ok.length >= 1 && runs.filter((r) => r.state === 'skipped' && r.startedAt > ok[0].startedAt).length >= 2 ? runs : null;
  }, 'a succeeded run and two skipped ones after it', 15_000);
  await f.scheduler.stop(2_000);
  const ok = done.find((r) => r.state === 'succeeded')!;
  assert.equal(ok.exitCode, 0);
  assert.ok(ok.durationMs! >= 2_900, `the job took its 3s (${ok.durationMs}ms)`);
  for (const s of done.filter((r) => r.state === 'skipped')) {
    assert.match(s.error ?? '', /previous run t\S+ is still running/);
    assert.equal(s.durationMs, 0);
  }
  // Skips fall inside a run; a new run starts only after the previous one ended.
  const runs = (await runsOf(f.store, 'slow')).filter((r) => r.state !== 'skipped');
  for (let i = 1; i < runs.length; i++) assert.ok(runs[i].startedAt >= runs[i - 1].finishedAt!, `run ${runs[i].id} started after ${runs[i - 1].id} ended`);
  const marks = (await readFile(join(f.dir, 'marks'), 'utf8')).trim().split('\n');
  for (let i = 0; i < marks.length; i++) assert.match(marks[i], i % 2 === 0 ? /^start / : /^end /, `marks alternate: ${marks.join(' | ')}`);
  // Every run is in the audit log too: the skipped ones refused, the run ok.
  const audit = await f.audit.list({ app: 'shop' });
  assert.ok(audit.some((a) => a.user === 'scheduler' && a.action === 'task' && a.outcome === 'ok' && a.target === `slow ${ok.id}`));
  assert.ok(audit.some((a) => a.action === 'task' && a.outcome === 'refused' && /skipped/.test(a.detail ?? '')));
});

test('overlap: allow runs a new run while the previous one still runs', async (t) => {
  const f = await fixture(t, { schedule: { slow: { cron: '* * * * * *', command: 'sleep 3', overlap: 'allow' } } });
  f.scheduler.start();
  await waitFor(() => f.scheduler.running().length >= 2, 'two runs at once', 10_000);
  assert.equal((await runsOf(f.store, 'slow')).filter((r) => r.state === 'skipped').length, 0);
});

test('a run over its timeout is killed with its children and recorded as timeout', async (t) => {
  const f = await fixture(t, {
    schedule: { stuck: { cron: '* * * * * *', command: 'sleep 60 & echo "$! $$" > "$PIDS"; echo working; wait', timeout: '500ms' } },
    env: { PIDS: '' },
  });
  f.config.apps.shop.env.PIDS = join(f.dir, 'pids');
  f.scheduler.start();
  const run = await waitFor(async () => (await runsOf(f.store, 'stuck')).find((r) => r.state === 'timeout'), 'a timed out run');
  const [child, shell] = (await readFile(join(f.dir, 'pids'), 'utf8')).trim().split(' ').map(Number);
  await waitFor(async () => !(await alive(child)) && !(await alive(shell)), 'the run and its child to be gone', 5_000);
  assert.match(run.error ?? '', /timed out after 0\.5s/);
  assert.equal(run.output, 'working\n');
  assert.ok(run.finishedAt);
});

test('the first run waits scheduler_delay after start; each run gets the app env, BERTH_TASK and the release dir', async (t) => {
  const f = await fixture(t, {
    top: { scheduler_delay: '1500ms' },
    schedule: { hello: { cron: '* * * * * *', command: 'echo "$BERTH_APP $BERTH_RELEASE $BERTH_TASK $GREETING $(pwd)"; echo oops >&2' } },
    env: { GREETING: 'hi' },
  });
  const started = Date.now();
  f.scheduler.start();
  assert.ok(Date.parse(f.scheduler.firstRunAt!) >= started + 1_500);
  const run = await waitFor(async () => (await runsOf(f.store, 'hello')).find((r) => r.state === 'succeeded'), 'a run', 10_000);
  assert.ok(Date.parse(run.startedAt) >= started + 1_500, `first run at ${run.startedAt}, start + delay ${new Date(started + 1_500).toISOString()}`);
  assert.equal(run.output, `shop ${RELEASE_ID} hello hi ${f.releaseDir}\noops\n`);
  assert.equal(run.releaseId, RELEASE_ID);
  assert.equal(run.trigger, 'schedule');
  assert.equal(run.command, 'echo "$BERTH_APP $BERTH_RELEASE $BERTH_TASK $GREETING $(pwd)"; echo oops >&2');
});

test('a failing run is recorded with its exit code; an app with no active release records a failed run', async (t) => {
  const f = await fixture(t, { schedule: { bad: { cron: '* * * * * *', command: 'echo nope; exit 3' } } });
  f.scheduler.start();
  const failed = await waitFor(async () => (await runsOf(f.store, 'bad')).find((r) => r.state === 'failed'), 'a failed run');
  assert.equal(failed.exitCode, 3);
  assert.equal(failed.error, 'exited with code 3');
  assert.equal(failed.output, 'nope\n');
  f.host.active = null;
  const orphan = await waitFor(async () => (await runsOf(f.store, 'bad')).find((r) => r.state === 'failed' && r.releaseId === null), 'a run with no release');
  assert.match(orphan.error ?? '', /no active release/);
});

test('stop() kills the runs going on and records them interrupted; a new start marks leftovers interrupted', async (t) => {
  const f = await fixture(t, { schedule: { long: { cron: '* * * * * *', command: 'echo $$ > "$PIDS"; exec sleep 60' } }, env: { PIDS: '' } });
  f.config.apps.shop.env.PIDS = join(f.dir, 'pid');
  f.scheduler.start();
  const run = await waitFor(() => f.scheduler.running()[0], 'a run');
  const pid = await waitFor(async () => Number(await readFile(join(f.dir, 'pid'), 'utf8').catch(() => '')), 'its pid');
  await f.scheduler.stop(5_000);
  assert.equal(f.scheduler.state, 'stopped');
  assert.equal(await alive(pid), false);
  const record = (await f.store.getTaskRun(run.id))!;
  assert.equal(record.state, 'interrupted');
  assert.match(record.error ?? '', /gateway stopped/);
  assert.throws(() => f.scheduler.runOnce({ app: 'shop', command: ['true'], user: 'alice' }), isCode('BERTH_E_UNAVAILABLE'));

  // What a killed gateway leaves: a row still `running`.
  await f.store.createTaskRun({ ...record, id: 't20260101000000-000000', state: 'running', finishedAt: null });
  assert.deepEqual(await f.scheduler.recoverInterrupted(), ['t20260101000000-000000']);
  assert.equal((await f.store.getTaskRun('t20260101000000-000000'))!.state, 'interrupted');
});

test('one-off runs: argv without a shell, a process type\'s command, streamed lines, exit code; bad requests refused', async (t) => {
  const f = await fixture(t, { processes: { hello: { command: 'echo "hello from $BERTH_TASK"', instances: 0 } } });
  const lines: string[] = [];
  const run = f.scheduler.runOnce({ app: 'shop', command: ['sh', '-c', 'echo "$1"; echo err >&2; exit 7', 'x', 'a $b `c`'], user: 'alice', onLine: (s, l) => lines.push(`${s}:${l}`) });
  const done = await run.done;
  assert.equal(done.state, 'failed');
  assert.equal(done.exitCode, 7);
  assert.equal(done.trigger, 'manual');
  assert.equal(done.user, 'alice');
  assert.equal(done.task, 'run');
  assert.equal(done.command, `sh -c 'echo "$1"; echo err >&2; exit 7' x 'a $b \`c\`'`);
  assert.deepEqual(lines.sort(), ['err:err', 'out:a $b `c`']);
  assert.deepEqual(await f.store.getTaskRun(run.id), done);

  const proc = await f.scheduler.runOnce({ app: 'shop', process: 'hello', user: 'bob' }).done;
  assert.equal(proc.state, 'succeeded');
  assert.equal(proc.task, 'hello');
  assert.equal(proc.output, 'hello from hello\n');

  const missing = await f.scheduler.runOnce({ app: 'shop', command: ['no-such-program-berth'], user: 'bob' }).done;
  assert.equal(missing.exitCode, 127);

  assert.throws(() => f.scheduler.runOnce({ app: 'nope', command: ['true'], user: 'a' }), isCode('BERTH_E_NOT_FOUND'));
  assert.throws(() => f.scheduler.runOnce({ app: 'shop', process: 'worker', user: 'a' }), (err: unknown) => isCode('BERTH_E_NOT_FOUND')(err) && /it has: web, hello/.test((err as Error).message));
  assert.throws(() => f.scheduler.runOnce({ app: 'shop', user: 'a' }), isCode('BERTH_E_BAD_REQUEST'));
  assert.throws(() => f.scheduler.runOnce({ app: 'shop', command: 'true', process: 'web', user: 'a' }), isCode('BERTH_E_BAD_REQUEST'));
  // A release directory that is gone: the run fails to start, and says why.
  f.host.active = { ...f.host.active!, dir: join(f.dir, 'gone') };
  const gone = await f.scheduler.runOnce({ app: 'shop', command: 'true', user: 'a' }).done;
  assert.equal(gone.state, 'failed');
  assert.match(gone.error ?? '', /^cannot start: .*ENOENT.*\(cwd .*gone\)$/);
  f.host.active = null;
  assert.throws(() => f.scheduler.runOnce({ app: 'shop', command: 'true', user: 'a' }), isCode('BERTH_E_CONFLICT'));
});

test('a cancelled one-off run is killed with its process group and recorded failed', async (t) => {
  const f = await fixture(t);
  const run = f.scheduler.runOnce({ app: 'shop', command: 'sleep 60 & echo $!; wait', user: 'alice' });
  await waitFor(() => run.pid !== null, 'the spawn');
  const child = Number(await waitFor(() => run.record().output.trim(), 'the child pid'));
  run.cancel('failed', 'cancelled: the client went away');
  const done = await run.done;
  assert.equal(done.state, 'failed');
  assert.equal(done.error, 'cancelled: the client went away');
  await waitFor(async () => !(await alive(child)), 'the child to be gone', 5_000);
});

test('output keeps the last 64 KiB', async (t) => {
  const f = await fixture(t);
  const done = await f.scheduler.runOnce({ app: 'shop', command: ['node', '-e', 'for (let i = 0; i < 20000; i++) console.log("line " + i)'], user: 'a' }).done;
  assert.equal(done.state, 'succeeded');
  assert.ok(Buffer.byteLength(done.output) <= 64 * 1024);
  assert.ok(Buffer.byteLength(done.output) > 60 * 1024);
  assert.ok(done.output.endsWith('line 19999\n'));
  assert.match(done.output, /^line \d+\n/);
});

test('tasks(): next run in the entry\'s time zone, last run and skips; setConfig re-plans entries', async (t) => {
  const f = await fixture(t, {
    schedule: {
      nightly: { cron: '0 3 * * *', command: 'true', timezone: 'Asia/Tokyo' },
      quick: { cron: '* * * * * *', command: 'true' },
    },
  });
  f.scheduler.start();
  await waitFor(async () => (await f.scheduler.tasks('shop')).find((e) => e.name === 'quick')?.lastRun?.state === 'succeeded', 'quick to run');
  const [nightly, quick] = await f.scheduler.tasks('shop');
  assert.equal(nightly.name, 'nightly');
  assert.match(nightly.nextRun ?? '', /T18:00:00\.000Z$/, '03:00 in Tokyo is 18:00 UTC');
  assert.equal(nightly.timezone, 'Asia/Tokyo');
  assert.equal(nightly.lastRun, null);
  assert.equal(quick.lastRun?.exitCode, 0);
  assert.ok(Date.parse(quick.nextRun!) > Date.now() - 1_000);
  await assert.rejects(f.scheduler.tasks('nope'), isCode('BERTH_E_NOT_FOUND'));

  // A config reload drops `quick` and adds `fresh`.
  const next = structuredClone(f.config);
  delete next.apps.shop.schedule.quick;
  next.apps.shop.schedule.fresh = { name: 'fresh', cron: '* * * * * *', command: 'echo fresh', timeoutMs: 60_000, timezone: null, overlap: 'skip' };
  f.scheduler.setConfig(next);
  assert.deepEqual((await f.scheduler.tasks('shop')).map((e) => e.name), ['nightly', 'fresh']);
  await waitFor(async () => (await runsOf(f.store, 'fresh')).some((r) => r.state === 'succeeded'), 'fresh to run');
  const quickRuns = (await runsOf(f.store, 'quick')).length;
  await waitFor(async () => (await runsOf(f.store, 'fresh')).filter((r) => r.state === 'succeeded').length >= 2, 'fresh to run again');
  assert.equal((await runsOf(f.store, 'quick')).length, quickRuns, 'quick runs no more');
});
