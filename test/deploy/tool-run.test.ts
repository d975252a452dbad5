/**
 * The tool runner that lists archives and git trees (tar -t, git ls-tree) hands out whole lines, even
 * when a pipe chunk ends inside a UTF-8 character of a file name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { run } from '../../src/deploy/tool-run.ts';

test('a UTF-8 character split across two output chunks arrives whole in its line', async () => {
  // The first byte of "é" (0xc3 0xa9) alone, then the rest 100 ms later: two separate pipe reads.
  const script = 'process.stdout.write(Buffer.from([0x61, 0xc3])); setTimeout(() => process.stdout.write(Buffer.from([0xa9, 0x0a, 0x62])), 100);';
  const lines: string[] = [];
  const out = await run('node', process.execPath, ['-e', script], process.env, (line) => lines.push(line));
  assert.deepEqual(lines, ['aé', 'b']);
  assert.equal(out.stdout, 'aé\nb');
});

test('a line handler that throws stops the tool and the call rejects with its error', async () => {
  const script = 'setInterval(() => process.stdout.write("line\\n"), 10);';
  const started = Date.now();
  await assert.rejects(
    run('node', process.execPath, ['-e', script], process.env, () => {
      throw new Error('over the limit');
    }),
    /over the limit/,
  );
  assert.ok(Date.now() - started < 30_000);
});

test('a tool that exits non-zero rejects naming its status and the tail of stderr', async () => {
  await assert.rejects(run('tool x', process.execPath, ['-e', 'console.error("bad thing"); process.exit(3)']), /tool x exited with 3: bad thing/);
});
