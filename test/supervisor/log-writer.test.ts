import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { LogWriter } from '../../src/supervisor/log-writer.ts';
import { DEFAULT_LOG_KEEP_FILES, DEFAULT_LOG_MAX_BYTES } from '../../src/config/schema.ts';
import { tempDir } from './helpers.ts';

test('lines are appended in order, creating the directory; defaults rotate at the schema constants', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'apps', 'shop', 'logs', 'web.log');
  const w = new LogWriter({ file });
  assert.equal(w.maxBytes, DEFAULT_LOG_MAX_BYTES);
  assert.equal(w.keepFiles, DEFAULT_LOG_KEEP_FILES);
  for (let i = 0; i < 100; i++) w.write(`line ${i}\n`);
  await w.flush();
  const text = await readFile(file, 'utf8');
  assert.deepEqual(text.trimEnd().split('\n'), Array.from({ length: 100 }, (_, i) => `line ${i}`));
  // A new writer on the same file appends rather than truncating.
  await w.close();
  const w2 = new LogWriter({ file });
  w2.write('more\n');
  await w2.close();
  assert.ok((await readFile(file, 'utf8')).endsWith('line 99\nmore\n'));
});

test('rotation keeps keepFiles files, each under maxBytes, newest lines in the live file', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'web.log');
  const w = new LogWriter({ file, maxBytes: 200, keepFiles: 2 });
  const line = (i: number) => `${String(i).padStart(4, '0')} ${'x'.repeat(40)}\n`; // 46 bytes
  for (let i = 0; i < 40; i++) {
    w.write(line(i));
    await w.flush();
  }
  await w.close();
  const names = (await readdir(dir)).sort();
  assert.deepEqual(names, ['web.log', 'web.log.1', 'web.log.2']);
  for (const name of names) assert.ok((await stat(join(dir, name))).size <= 200, `${name} is over maxBytes`);
  const live = await readFile(file, 'utf8');
  assert.ok(live.endsWith(line(39)), 'the newest line is in the live file');
  const older = await readFile(`${file}.1`, 'utf8');
  const oldest = await readFile(`${file}.2`, 'utf8');
  // Four 46-byte lines fit in 200 bytes: each file holds 4 consecutive lines, .1 just before the live one.
  assert.equal(older, [32, 33, 34, 35].map(line).join(''));
  assert.equal(oldest, [28, 29, 30, 31].map(line).join(''));
});

test('keepFiles 0 truncates instead of keeping old files; maxBytes 0 never rotates', async (t) => {
  const dir = await tempDir(t);
  const a = new LogWriter({ file: join(dir, 'a.log'), maxBytes: 50, keepFiles: 0 });
  const b = new LogWriter({ file: join(dir, 'b.log'), maxBytes: 0 });
  for (let i = 0; i < 10; i++) {
    a.write(`${'a'.repeat(29)}\n`);
    b.write(`${'b'.repeat(29)}\n`);
    await Promise.all([a.flush(), b.flush()]);
  }
  await Promise.all([a.close(), b.close()]);
  assert.deepEqual((await readdir(dir)).sort(), ['a.log', 'b.log']);
  assert.equal((await stat(join(dir, 'a.log'))).size, 30);
  assert.equal((await stat(join(dir, 'b.log'))).size, 300);
});

test('a log file that cannot be written loses lines but never throws, and says so once', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'web.log');
  await mkdir(file); // a directory where the file should be
  const records: any[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) records.push(JSON.parse(l));
      cb();
    },
  });
  const w = new LogWriter({ file, logger: pino({ level: 'info' }, sink) });
  w.write('one\n');
  await w.flush();
  w.write('two\n');
  await w.flush();
  await w.close();
  const errors = records.filter((r) => r.msg === 'cannot write log file');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].file, file);
});
