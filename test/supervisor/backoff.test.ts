import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, DEFAULT_RESTART_TIMING } from '../../src/supervisor/backoff.ts';
import {
  RESTART_BACKOFF_INITIAL_MS,
  RESTART_BACKOFF_MAX_MS,
  RESTART_BACKOFF_RESET_AFTER_MS,
  RESTART_FAILURE_LIMIT,
  RESTART_FAILURE_WINDOW_MS,
} from '../../src/config/schema.ts';

test('defaults are the RESTART_* constants', () => {
  assert.deepEqual(new Backoff().timing, {
    backoffInitialMs: RESTART_BACKOFF_INITIAL_MS,
    backoffMaxMs: RESTART_BACKOFF_MAX_MS,
    resetAfterMs: RESTART_BACKOFF_RESET_AFTER_MS,
    failureLimit: RESTART_FAILURE_LIMIT,
    failureWindowMs: RESTART_FAILURE_WINDOW_MS,
  });
  assert.deepEqual(new Backoff({ failureLimit: 3 }).timing, { ...DEFAULT_RESTART_TIMING, failureLimit: 3 });
});

test('the delay doubles from 1s and stops at 60s', () => {
  const b = new Backoff({ failureLimit: 100, failureWindowMs: 1 });
  const delays: (number | null)[] = [];
  // Far-apart failures: outside the window, so only the doubling is at work.
  for (let i = 0; i < 9; i++) delays.push(b.failure(i * 1_000, 10));
  assert.deepEqual(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
});

test('a process that stayed up resetAfterMs starts the doubling again', () => {
  const b = new Backoff({ failureLimit: 100 });
  assert.equal(b.failure(0, 0), 1_000);
  assert.equal(b.failure(1, 0), 2_000);
  assert.equal(b.failure(2, 0), 4_000);
  assert.equal(b.failure(3, RESTART_BACKOFF_RESET_AFTER_MS - 1), 8_000, 'just short of the reset');
  assert.equal(b.failure(4, RESTART_BACKOFF_RESET_AFTER_MS), 1_000, 'up long enough: back to the start');
  assert.equal(b.failure(5, 0), 2_000);
});

test('the 10th failure within 10 minutes gives up (null); older failures fall out of the window', () => {
  const b = new Backoff();
  const t0 = 1_000_000;
  for (let i = 0; i < 9; i++) assert.notEqual(b.failure(t0 + i * 1_000, 0), null, `failure ${i + 1}`);
  assert.equal(b.recentFailures, 9);
  assert.equal(b.failure(t0 + 9_000, 0), null, '10th failure: crashed');

  const c = new Backoff();
  for (let i = 0; i < 9; i++) c.failure(t0 + i * 1_000, 0);
  // The first failure is now more than 10 minutes old: only 9 remain in the window after this one.
  assert.notEqual(c.failure(t0 + RESTART_FAILURE_WINDOW_MS + 500, 0), null);
  assert.equal(c.recentFailures, 9);
});

test('a limit of 1 gives up at the first failure; reset() forgets everything', () => {
  const b = new Backoff({ failureLimit: 1 });
  assert.equal(b.failure(0, 0), null);
  const c = new Backoff({ failureLimit: 3, backoffInitialMs: 10 });
  c.failure(0, 0);
  c.failure(1, 0);
  c.reset();
  assert.equal(c.recentFailures, 0);
  assert.equal(c.failure(2, 0), 10);
});
