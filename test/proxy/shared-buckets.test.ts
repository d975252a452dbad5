/**
 * The shared rate-limit table (proxy workers): two views of one buffer, as two threads have, count a
 * client against one bucket; a table full of other clients still lets a new one in.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BUCKETS, SharedBuckets, newBucketTable } from '../../src/proxy/shared-buckets.ts';
import { RateLimit } from '../../src/proxy/rate-limit.ts';

const INTERVAL = 1_000;
const TOLERANCE = 5 * INTERVAL; // burst 5, as rate-limit.ts sets it: burst x interval

test('two views of one table (two threads) count a client once', () => {
  const buffer = newBucketTable();
  const a = new SharedBuckets(buffer);
  const b = new SharedBuckets(buffer);
  const now = 1_000_000;
  const admitted = [a, b, a, b, a, b, a, b].map((view) => view.take('10.0.0.1', now, INTERVAL, TOLERANCE, 1e-6)).filter((wait) => wait === 0).length;
  assert.equal(admitted, 5);
  assert.ok(b.take('10.0.0.1', now, INTERVAL, TOLERANCE, 1e-6) > 0);
  // Another client has its own bucket; and one interval later the first gets one more.
  assert.equal(a.take('10.0.0.2', now, INTERVAL, TOLERANCE, 1e-6), 0);
  assert.equal(b.take('10.0.0.1', now + INTERVAL, INTERVAL, TOLERANCE, 1e-6), 0);
  assert.ok(a.take('10.0.0.1', now + INTERVAL, INTERVAL, TOLERANCE, 1e-6) > 0);
});

test('more clients than entries: a new client still gets its burst (an old bucket makes room)', () => {
  const table = new SharedBuckets(newBucketTable());
  const now = 5_000_000;
  for (let i = 0; i < BUCKETS * 2; i++) table.take(`c${i}`, now, INTERVAL, TOLERANCE, 1e-6);
  let admitted = 0;
  for (let i = 0; i < 5; i++) if (table.take('newcomer', now, INTERVAL, TOLERANCE, 1e-6) === 0) admitted++;
  assert.equal(admitted, 5);
  assert.ok(table.take('newcomer', now, INTERVAL, TOLERANCE, 1e-6) > 0);
});

test('RateLimit over a shared table: one burst across two limiters (two threads), on the epoch clock', () => {
  const shared = newBucketTable();
  const config = { count: 1, perMs: 60_000, burst: 3, paths: [] };
  const one = new RateLimit('shop', config, { shared });
  const two = new RateLimit('shop', config, { shared });
  const now = performance.now();
  const results = [one, two, one, two].map((l) => l.take('192.0.2.7', now));
  assert.deepEqual(results.map((w) => w === 0), [true, true, true, false]);
  assert.ok(results[3] > 50_000 && results[3] <= 60_000, `retry after ${results[3]}ms`);
});
