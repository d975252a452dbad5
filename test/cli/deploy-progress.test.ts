import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, spawn } from 'node:child_process';
import { FIXTURE_WEB_COMMAND, MAIN, fixtureApp, http, spawnGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';

const hasScript = spawnSync('script', ['--version']).status === 0;

test('berth deploy on a terminal shows a spinner with the elapsed time of a running step', { skip: hasScript ? false : 'script(1) is not installed' }, async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, build: 'sleep 0.5', processes: { web: { command: FIXTURE_WEB_COMMAND } } } },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { message: 'ready' });
  // script(1) gives the CLI a pseudo-terminal, as a person's shell would.
  const command = `"${process.execPath}" "${MAIN}" deploy shop --socket "${gw.socket}"`;
  // The promise only collects; the asserts run after it settles, where a failure fails the test (an
  // assert thrown inside the 'exit' listener would be an uncaught exception that leaves the test hanging).
  const p = spawn('script', ['-qec', command, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (c: Buffer) => (out += c));
  const code = await new Promise<number | null>((resolve, reject) => {
    p.once('error', reject);
    p.once('close', (c) => resolve(c));
  });
  assert.equal(code, 0, out);
  assert.match(out, /\r\x1b\[2K {2}build {8}[|/\\-] \d+ms/, 'a spinner line for the running build');
  assert.match(out, / {2}build {8}ok +\d/, 'the finished build line');
  assert.match(out, /done: shop serves release \d{14}-[0-9a-f]{6}/);
});
