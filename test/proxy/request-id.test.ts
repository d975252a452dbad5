import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isValidRequestId, requestId } from '../../src/proxy/request-id.ts';

test('a valid incoming id is kept', () => {
  for (const id of ['abc', 'A-b_c.d:e/f+g=', 'x'.repeat(200), '550e8400-e29b-41d4-a716-446655440000']) {
    assert.equal(requestId(id), id);
  }
});

test('invalid incoming ids are replaced', () => {
  for (const bad of ['', 'x'.repeat(201), 'has space', 'semi;colon', '<script>', 'naïve', 'a,b']) {
    assert.equal(isValidRequestId(bad), false, bad);
    const id = requestId(bad);
    assert.notEqual(id, bad);
    assert.equal(isValidRequestId(id), true);
  }
});

test('generated ids are unique and valid', () => {
  const ids = new Set<string>();
  for (let i = 0; i < 10_000; i++) ids.add(requestId(undefined));
  assert.equal(ids.size, 10_000);
  for (const id of ids) assert.equal(isValidRequestId(id), true);
});
