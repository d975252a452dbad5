/**
 * The upgrade-under-load bench in its short mode: a real gateway upgraded three times under load.
 * Zero failed requests and no app restart are the claim, so they are asserted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runBench } from '../helpers/bench.ts';

test('--short: three upgrades under load fail no request and restart no app instance', async () => {
  const res = await runBench('upgrade-under-load.ts', ['--short', '--json']);
  assert.equal(res.code, 0, `${res.stdout}\n${res.stderr}`);
  const out = JSON.parse(res.stdout);
  assert.equal(out.failed, 0, JSON.stringify(out.failures));
  assert.deepEqual(out.failedUpgrades, []);
  assert.equal(out.upgrades, 3);
  assert.equal(out.sameInstances, true);
  assert.ok(out.requests > 300, `only ${out.requests} requests`);
});

test('bad flags exit 2 with the usage line and start nothing', async () => {
  for (const args of [['--clients', 'many'], ['--upgrades', '0'], ['--bogus']]) {
    const res = await runBench('upgrade-under-load.ts', args);
    assert.equal(res.code, 2, args.join(' '));
    assert.match(res.stderr, /usage: npx node bench\/upgrade-under-load\.ts/);
    assert.equal(res.stdout, '');
  }
});
