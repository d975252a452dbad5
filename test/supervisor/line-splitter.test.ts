import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineSplitter } from '../../src/supervisor/line-splitter.ts';

function collect(maxChars?: number): { lines: string[]; s: LineSplitter } {
  const lines: string[] = [];
  return { lines, s: new LineSplitter((l) => lines.push(l), maxChars) };
}

test('lines split across chunks are joined; a partial line waits for its newline', () => {
  const { lines, s } = collect();
  s.push(Buffer.from('hel'));
  assert.deepEqual(lines, []);
  s.push(Buffer.from('lo\nwor'));
  assert.deepEqual(lines, ['hello']);
  s.push(Buffer.from('ld\n\nlast'));
  assert.deepEqual(lines, ['hello', 'world', '']);
  s.end();
  assert.deepEqual(lines, ['hello', 'world', '', 'last']);
  s.end();
  assert.equal(lines.length, 4, 'nothing left after end');
});

test('CRLF reads like LF', () => {
  const { lines, s } = collect();
  s.push(Buffer.from('a\r\nb\r'));
  s.push(Buffer.from('\n'));
  assert.deepEqual(lines, ['a', 'b']);
});

test('a UTF-8 character cut between chunks is decoded whole', () => {
  const { lines, s } = collect();
  const bytes = Buffer.from('é€\n');
  s.push(bytes.subarray(0, 1));
  s.push(bytes.subarray(1, 3));
  s.push(bytes.subarray(3));
  assert.deepEqual(lines, ['é€']);
});

test('output without newlines is cut at maxChars instead of growing', () => {
  const { lines, s } = collect(4);
  s.push(Buffer.from('abcdefghij'));
  assert.deepEqual(lines, ['abcd', 'efgh']);
  s.end();
  assert.deepEqual(lines, ['abcd', 'efgh', 'ij']);
});

test('a piece cut at maxChars never splits a character, even one of two UTF-16 units', () => {
  const { lines, s } = collect(4);
  const bytes = Buffer.from('abc😀def😀\n');
  // Byte by byte: every UTF-8 character arrives split across chunks.
  for (let i = 0; i < bytes.length; i++) s.push(bytes.subarray(i, i + 1));
  assert.deepEqual(lines, ['abc', '😀de', 'f😀']);
  for (const l of lines) assert.equal(Buffer.from(l).toString('utf8'), l, 'valid UTF-8');
  assert.equal(lines.join(''), 'abc😀def😀');
});
