/**
 * The deploy-under-load bench in its short mode: a real gateway, real app processes and real load, with
 * deploys, reloads and a rollback in between. Zero failed requests is the claim, so it is asserted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { schedule } from '../../bench/deploy-under-load.ts';
import { runBench as runScript, type BenchRun } from '../helpers/bench.ts';


function runBench(args: string[]): Promise<BenchRun> {
  return runScript('deploy-under-load.ts', args);
}

test('--short: deploys, reloads and a rollback under load fail no request', async () => {
  const res = await runBench(['--short', '--json', '--no-anchor']);
  assert.equal(res.code, 0, `${res.stdout}\n${res.stderr}`);
  const out = JSON.parse(res.stdout);
  assert.equal(out.ok, true);
  assert.equal(out.failed, 0, JSON.stringify(out.failures));
  assert.ok(out.requests > 1000, `only ${out.requests} requests`);
  assert.deepEqual(out.operations, { deploys: 3, reloads: 2, rollbacks: 1, failed: [] });
  // Every switch was followed by a request served by the new generation.
  assert.equal(out.switchToFirstRequestMs.switches, 6);
  assert.equal(out.switchToFirstRequestMs.unseen, 0);
  assert.ok(out.switchToFirstRequestMs.min >= 0);
  assert.ok(out.latencyMs.max >= out.latencyMs.p50);
  assert.equal(out.leftoverGenerations, 0);
  assert.deepEqual(out.anchor, { skipped: 'turned off with --no-anchor' });
});

test('--short --https: the same operations under HTTPS load (TLS handshakes on every fresh connection) fail no request', async () => {
  const res = await runBench(['--short', '--https', '--json', '--no-anchor']);
  assert.equal(res.code, 0, `${res.stdout}\n${res.stderr}`);
  const out = JSON.parse(res.stdout);
  assert.equal(out.https, true);
  assert.equal(out.failed, 0, JSON.stringify(out.failures));
  assert.ok(out.requests > 1000, `only ${out.requests} requests`);
  assert.deepEqual(out.operations, { deploys: 3, reloads: 2, rollbacks: 1, failed: [] });
  assert.equal(out.switchToFirstRequestMs.switches, 6);
  assert.equal(out.switchToFirstRequestMs.unseen, 0);
  assert.equal(out.leftoverGenerations, 0);
});

test('bad flags exit 2 with the usage line and start nothing', async () => {
  for (const args of [['--clients', 'many'], ['--rollbacks', '5', '--deploys', '2'], ['--bogus']]) {
    const res = await runBench(args);
    assert.equal(res.code, 2, args.join(' '));
    assert.match(res.stderr, /usage: npx node bench\/deploy-under-load\.ts/);
    assert.equal(res.stdout, '');
  }
});

test('the schedule spreads reloads and rollbacks between the deploys', () => {
  assert.deepEqual(schedule(3, 2, 1), ['deploy', 'deploy', 'reload', 'deploy', 'reload', 'rollback']);
  const full = schedule(20, 10, 5);
  assert.equal(full.length, 35);
  assert.equal(full.filter((k) => k === 'reload').length, 10);
  assert.equal(full.filter((k) => k === 'rollback').length, 5);
  assert.equal(full[0], 'deploy', 'a rollback needs a deploy before it');
  assert.deepEqual(schedule(1, 3, 0), ['deploy', 'reload', 'reload', 'reload']);
});
