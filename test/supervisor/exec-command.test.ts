import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { execCommand } from '../../src/supervisor/exec-command.ts';

test('a simple command gets exec before its command word, after any plain assignments', () => {
  assert.equal(execCommand('node server.js'), 'exec node server.js');
  assert.equal(execCommand('"/usr/bin/node" "a  b.mjs" --x=1'), 'exec "/usr/bin/node" "a  b.mjs" --x=1');
  assert.equal(execCommand('A=1 B=two node w.js'), 'A=1 B=two exec node w.js');
  assert.equal(execCommand('  gunicorn app:wsgi -b 127.0.0.1:$PORT > out.log'), '  exec gunicorn app:wsgi -b 127.0.0.1:$PORT > out.log');
});

test('anything that is not one simple command runs as written', () => {
  for (const cmd of [
    'echo boom >&2; exit 3',
    'a && b',
    'a | b',
    'a &',
    '(cd x && y)',
    '{ a; }',
    'echo `date`',
    'echo $(date)',
    'if true; then x; fi',
    'exec node server.js',
    'time node x',
    'A="x y" node w.js',
    "A='x' node w.js",
    'A=1',
    '   ',
    'node a\nnode b',
  ]) {
    assert.equal(execCommand(cmd), cmd, cmd);
  }
});

test('the rewritten command really replaces the shell and keeps its assignments', () => {
  const out = execFileSync('/bin/sh', ['-c', `echo $$; ${execCommand('GREETING=hi /bin/sh -c "echo \\$\\$ \\$GREETING"')}`], { encoding: 'utf8' });
  const [shell, app] = out.trim().split('\n');
  assert.equal(app, `${shell} hi`, 'same pid: the shell was replaced');
});
