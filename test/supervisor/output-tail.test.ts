import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OutputTail, OUTPUT_TAIL_BYTES } from '../../src/scheduler/output-tail.ts';

test('the tail keeps the last whole lines that fit', () => {
  const tail = new OutputTail(20);
  assert.equal(tail.text(), '');
  for (const l of ['one', 'two', 'three', 'four', 'five']) tail.push(l);
  // "three\nfour\nfive\n" is 16 bytes; adding "two\n" would make 20... and "one\n" 24.
  assert.equal(tail.text(), 'two\nthree\nfour\nfive\n');
  assert.ok(Buffer.byteLength(tail.text()) <= 20);
});

test('a line longer than the tail keeps its end; multi-byte characters are never cut in half', () => {
  const tail = new OutputTail(10);
  tail.push('éééééééééé'); // 20 bytes
  const text = tail.text();
  assert.ok(Buffer.byteLength(text) <= 10);
  assert.match(text, /^é+\n$/);
  tail.push('x');
  assert.equal(tail.text().endsWith('x\n'), true);
});

test('a long run of lines stays within the limit and ends with the last line', () => {
  const tail = new OutputTail();
  for (let i = 0; i < 50_000; i++) tail.push(`line ${i}`);
  const text = tail.text();
  assert.ok(Buffer.byteLength(text) <= OUTPUT_TAIL_BYTES);
  assert.ok(Buffer.byteLength(text) > OUTPUT_TAIL_BYTES - 20);
  assert.ok(text.endsWith('line 49999\n'));
  assert.match(text, /^line \d+\n/);
});
