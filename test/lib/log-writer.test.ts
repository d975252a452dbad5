import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { DEFAULT_LOG_KEEP_FILES, DEFAULT_LOG_MAX_BYTES, LogWriter } from '../../src/lib/log-writer.ts';
import { tempDir } from '../helpers/gateway.ts';

/** A pino logger whose records land in `records`. */
function recordingLogger(records: any[]) {
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) records.push(JSON.parse(l));
      cb();
    },
  });
  return pino({ level: 'info' }, sink);
}

test('lines are appended in order, creating the directory; defaults rotate at the named constants', async (t) => {
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
  const w = new LogWriter({ file, logger: recordingLogger(records) });
  w.write('one\n');
  await w.flush();
  w.write('two\n');
  await w.flush();
  await w.close();
  const errors = records.filter((r) => r.msg === 'cannot write log file');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].file, file);
});

test('a new file is 0600 in a directory made 0700; a symlink planted for the file is never followed', async (t) => {
  const dir = await tempDir(t);
  const logs = join(dir, 'state', 'logs');
  const w = new LogWriter({ file: join(logs, 'berth.log') });
  w.write('one\n');
  await w.close();
  assert.equal((await stat(logs)).mode & 0o777, 0o700);
  assert.equal((await stat(join(logs, 'berth.log'))).mode & 0o777, 0o600);

  const target = join(dir, 'elsewhere.txt');
  await writeFile(target, 'untouched\n');
  await symlink(target, join(logs, 'other.log'));
  const records: any[] = [];
  const planted = new LogWriter({ file: join(logs, 'other.log'), logger: recordingLogger(records) });
  planted.write('two\n');
  await planted.close();
  assert.equal(await readFile(target, 'utf8'), 'untouched\n');
  assert.equal(records.filter((r) => r.msg === 'cannot write log file').length, 1);
});

test('a directory that is a symlink, or writable by others, is refused by name and written nothing', async (t) => {
  const dir = await tempDir(t);
  const real = join(dir, 'real');
  await mkdir(real, { mode: 0o700 });
  await symlink(real, join(dir, 'linked'));
  const open = join(dir, 'open');
  await mkdir(open);
  await chmod(open, 0o777);
  for (const [logs, why] of [[join(dir, 'linked'), /is not a directory/], [open, /writable by others \(mode 777\).*chmod go-w/]] as const) {
    const records: any[] = [];
    const w = new LogWriter({ file: join(logs, 'berth.log'), logger: recordingLogger(records) });
    w.write('line\n');
    await w.close();
    const errors = records.filter((r) => r.msg === 'cannot write log file');
    assert.equal(errors.length, 1, logs);
    assert.match(errors[0].err, why);
    assert.ok(errors[0].err.includes(logs), errors[0].err);
    // flushSync (a process on its way out) refuses the same directories.
    w.write('last\n');
    w.flushSync();
  }
  assert.deepEqual(await readdir(real), []);
  assert.deepEqual(await readdir(open), []);
});

test('flushSync writes what is queued before an exit, creating the file if need be', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'logs', 'berth.log');
  const w = new LogWriter({ file });
  w.write('first\n');
  await w.flush();
  w.write('second\n');
  w.write('third\n');
  w.flushSync();
  assert.equal(await readFile(file, 'utf8'), 'first\nsecond\nthird\n');
  await w.close();
  assert.equal(await readFile(file, 'utf8'), 'first\nsecond\nthird\n', 'nothing is written twice');
  const fresh = new LogWriter({ file: join(dir, 'new', 'x.log') });
  fresh.write('only\n');
  fresh.flushSync();
  assert.equal(await readFile(join(dir, 'new', 'x.log'), 'utf8'), 'only\n');
  assert.equal((await lstat(join(dir, 'new', 'x.log'))).mode & 0o777, 0o600);
  await fresh.close();
});
