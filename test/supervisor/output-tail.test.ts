import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OutputTail } from '../../src/supervisor/output-tail.ts';
import { OUTPUT_TAIL_BYTES } from '../../src/scheduler/task-run.ts';

test('the tail keeps the last whole lines that fit', () => {
  const tail = new OutputTail({ bytes: 20 });
  assert.equal(tail.text(), '');
  for (const l of ['one', 'two', 'three', 'four', 'five']) tail.push(l);
  // "three\nfour\nfive\n" is 16 bytes; adding "two\n" would make 20... and "one\n" 24.
  assert.equal(tail.text(), 'two\nthree\nfour\nfive\n');
  assert.ok(Buffer.byteLength(tail.text()) <= 20);
});

test('a line longer than the tail keeps its end; multi-byte characters are never cut in half', () => {
  const tail = new OutputTail({ bytes: 10 });
  tail.push('éééééééééé'); // 20 bytes
  const text = tail.text();
  assert.ok(Buffer.byteLength(text) <= 10);
  assert.match(text, /^é+\n$/);
  tail.push('x');
  assert.equal(tail.text().endsWith('x\n'), true);
});

test('a long run of lines stays within the limit and ends with the last line', () => {
  const tail = new OutputTail({ bytes: OUTPUT_TAIL_BYTES });
  for (let i = 0; i < 50_000; i++) tail.push(`line ${i}`);
  const text = tail.text();
  assert.ok(Buffer.byteLength(text) <= OUTPUT_TAIL_BYTES);
  assert.ok(Buffer.byteLength(text) > OUTPUT_TAIL_BYTES - 20);
  assert.ok(text.endsWith('line 49999\n'));
  assert.match(text, /^line \d+\n/);
});

test('a tail bounded by lines keeps the last lines, and both bounds hold at once', () => {
  const tail = new OutputTail({ lines: 3 });
  for (let i = 1; i <= 5_000; i++) tail.push(`line${i}`);
  assert.deepEqual(tail.lines(), ['line4998', 'line4999', 'line5000']);
  const both = new OutputTail({ lines: 3, bytes: 12 });
  for (const l of ['aaa', 'bbb', 'ccc', 'ddddddd']) both.push(l);
  assert.deepEqual(both.lines(), ['ccc', 'ddddddd']);
});
