/**
 * The reload trigger file on its own, with a real file in a temp dir and the real stat polling: a
 * creation or touch fires once, a burst of touches fires once, a refused trigger is retried, and a
 * stopped trigger fires no more. The triggers run on short injected timings (same shape as the defaults:
 * debounce longer than a poll) so the tests wait tenths of a second, not seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LoggerFactory } from '../../src/lib/logger.ts';
import { RELOAD_TRIGGER_TIMING, ReloadTrigger, type ReloadTriggerTiming } from '../../src/deploy/reload-trigger.ts';
import { LogSink, tempDir, waitFor } from '../helpers/gateway.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// The burst below touches every 40ms: well inside the 150ms window even on a loaded machine, and over
// several 30ms polls.
const TIMING: ReloadTriggerTiming = { pollMs: 30, debounceMs: 150, retryMs: 60 };
// Long enough for any stray change to be polled, debounced and retried: what a test waits to see nothing.
const SETTLE_MS = 2 * (TIMING.pollMs + TIMING.debounceMs + TIMING.retryMs);

function trigger(file: string, onTrigger: () => boolean): { trigger: ReloadTrigger; sink: LogSink } {
  const sink = new LogSink();
  const trigger = new ReloadTrigger({ file, logger: new LoggerFactory({ root: 'info' }, sink).get('deploy'), onTrigger, timing: TIMING });
  return { trigger, sink };
}

async function touch(file: string): Promise<void> {
  const now = new Date();
  await utimes(file, now, now).catch(() => writeFile(file, ''));
}

test('the default window outlasts a poll, as the burst rule needs', () => {
  assert.ok(RELOAD_TRIGGER_TIMING.debounceMs > RELOAD_TRIGGER_TIMING.pollMs);
  assert.ok(TIMING.debounceMs > TIMING.pollMs);
});

test('creating the file fires once; a burst of touches spanning several polls fires once more', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'restart.txt');
  let fired = 0;
  const { trigger: rt } = trigger(file, () => (fired++, true));
  rt.start();
  t.after(() => rt.stop());
  await sleep(3 * TIMING.pollMs);
  assert.equal(fired, 0, 'no file, no reload');
  await touch(file);
  await waitFor(() => fired === 1, { timeoutMs: 5_000, message: 'the creation to fire' });
  // Five touches 40ms apart: 160ms, more than one stat poll, so the watcher sees the burst several times.
  for (let i = 0; i < 5; i++) {
    if (i > 0) await sleep(40);
    await touch(file);
  }
  await waitFor(() => fired === 2, { timeoutMs: 5_000, message: 'the burst to fire' });
  await sleep(SETTLE_MS);
  assert.equal(fired, 2);
  // Removing the file is not a touch.
  await rm(file);
  await sleep(SETTLE_MS);
  assert.equal(fired, 2);
});

test('a trigger refused while a deploy runs is retried until it starts', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'restart.txt');
  await writeFile(file, '');
  let asked = 0;
  const { trigger: rt, sink } = trigger(file, () => ++asked >= 3);
  rt.start();
  t.after(() => rt.stop());
  await sleep(3 * TIMING.pollMs);
  await touch(file);
  await waitFor(() => asked === 3, { timeoutMs: 10_000, message: 'the third attempt' });
  await sleep(SETTLE_MS);
  assert.equal(asked, 3, 'no attempt after the one that started');
  assert.equal(sink.lines.filter((l) => l.msg === 'reload trigger waiting for the running deploy').length, 2);
});

test('a stopped trigger fires no more', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'restart.txt');
  let fired = 0;
  const { trigger: rt } = trigger(file, () => (fired++, true));
  rt.start();
  rt.stop();
  await touch(file);
  await sleep(SETTLE_MS);
  assert.equal(fired, 0);
});
