import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand } from '../../src/deploy/command-runner.ts';

test('runCommand keeps the exit code, every line (even one without a newline) and writes the log', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-cmd-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const log = join(dir, 'logs', 'deploy.log');
  const r = await runCommand({ command: 'echo one; echo two >&2; printf three; exit 4', cwd: dir, env: process.env, timeoutMs: 10_000, logFile: log });
  assert.equal(r.code, 4);
  assert.equal(r.timedOut, false);
  assert.deepEqual([...r.tail].sort(), ['one', 'three', 'two']);
  const text = await readFile(log, 'utf8');
  assert.match(text, / out one\n/);
  assert.match(text, / err two\n/);
  assert.match(text, / out three\n/);
});

test('runCommand kills the whole process group at the timeout', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-cmd-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const r = await runCommand({ command: 'sleep 30 & echo $! > child.pid; wait', cwd: dir, env: process.env, timeoutMs: 300 });
  assert.equal(r.timedOut, true);
  const child = Number(await readFile(join(dir, 'child.pid'), 'utf8'));
  const deadline = Date.now() + 5_000;
  let alive = true;
  while (alive && Date.now() < deadline) {
    try {
      process.kill(child, 0);
      await new Promise((res) => setTimeout(res, 50));
    } catch {
      alive = false;
    }
  }
  assert.equal(alive, false, 'the background child of the command was killed with its group');
});

test('runCommand keeps only the last lines as the tail', async () => {
  const r = await runCommand({ command: 'for i in $(seq 1 50); do echo line$i; done', cwd: tmpdir(), env: process.env, timeoutMs: 10_000, tailLines: 20 });
  assert.equal(r.tail.length, 20);
  assert.equal(r.tail[19], 'line50');
  assert.equal(r.tail[0], 'line31');
});

test('runCommand never splits a UTF-8 character that arrives in two chunks', async () => {
  // Each printf is its own write: "é" and "€" are each cut between two reads of the pipe.
  const command = "printf 'caf\\303'; sleep 0.2; printf '\\251 \\342\\202'; sleep 0.2; printf '\\254\\n'";
  const r = await runCommand({ command, cwd: tmpdir(), env: process.env, timeoutMs: 10_000 });
  assert.deepEqual(r.tail, ['café €']);
});
