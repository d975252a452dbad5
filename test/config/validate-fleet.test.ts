/** The fleet keys of the config (`node_id`, `node_timeout`), checked as validate.test.ts checks the others. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normaliseConfig } from '../../src/config/validate.ts';
import { CTX, problems } from './config-problems.ts';


test('node_id: null (derived at start) by default; a name is kept as written; anything else is refused naming node_id', () => {
  assert.equal(normaliseConfig({}, CTX).nodeId, null);
  assert.equal(normaliseConfig({ node_id: null }, CTX).nodeId, null);
  for (const id of ['web-1', 'eu-west.gw2', 'gw@host:1/a_b', 'N', 'a'.repeat(128)]) {
    assert.equal(normaliseConfig({ node_id: id }, CTX).nodeId, id, id);
  }
  const expected = 'expected 1-128 letters, digits and . _ : / @ - (starting with a letter or digit)';
  assert.deepEqual(problems({ node_id: 'has space' }), [`node_id: ${expected}, got "has space"`]);
  for (const bad of ['-leading-dash', '.hidden', 'semi;colon', 'tab\there', 'é-accent', 'a'.repeat(129), 'b'.repeat(200)]) {
    const found = problems({ node_id: bad });
    assert.equal(found.length, 1, `${JSON.stringify(bad)}: ${found.join('; ')}`);
    assert.ok(found[0].startsWith(`node_id: ${expected}`), `${JSON.stringify(bad)}: ${found[0]}`);
  }
  // Not text at all, or empty: the string check refuses it first.
  for (const bad of ['', 42, true, ['web-1'], { name: 'web-1' }]) {
    const found = problems({ node_id: bad });
    assert.equal(found.length, 1, `${JSON.stringify(bad)}: ${found.join('; ')}`);
    assert.match(found[0], /^node_id: /);
  }
});

test('node_timeout: 10s by default, a duration of at least 5s; shorter is refused naming node_timeout', () => {
  assert.equal(normaliseConfig({}, CTX).nodeTimeoutMs, 10_000);
  assert.equal(normaliseConfig({ node_timeout: null }, CTX).nodeTimeoutMs, 10_000);
  assert.equal(normaliseConfig({ node_timeout: '30s' }, CTX).nodeTimeoutMs, 30_000);
  assert.equal(normaliseConfig({ node_timeout: '5s' }, CTX).nodeTimeoutMs, 5_000, 'the least it may be');
  assert.equal(normaliseConfig({ node_timeout: '2m' }, CTX).nodeTimeoutMs, 120_000);
  assert.deepEqual(problems({ node_timeout: '3s' }), ['node_timeout: expected at least 5s (nodes write a heartbeat every 2s), got 3000ms']);
  assert.deepEqual(problems({ node_timeout: '4999ms' }), ['node_timeout: expected at least 5s (nodes write a heartbeat every 2s), got 4999ms']);
  for (const bad of ['soon', 0, -5, '10 parsecs']) {
    const found = problems({ node_timeout: bad });
    assert.equal(found.length, 1, `${JSON.stringify(bad)}: ${found.join('; ')}`);
    assert.match(found[0], /^node_timeout: /);
  }
  // Both keys together, with their problems reported side by side.
  assert.deepEqual(problems({ node_id: 'has space', node_timeout: '1s' }).map((p) => p.split(':')[0]), ['node_id', 'node_timeout']);
});
