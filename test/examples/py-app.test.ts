import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { DemoApp, EXAMPLES, connectRefused, freePort, waitFor } from './demo-app.ts';

const APP_DIR = join(EXAMPLES, 'py-app');
const SECRET = 'do-not-leak-7c2e';

/** Why the python tests cannot run here, or null when they can. */
function whyNoPython(): string | null {
  const probe = spawnSync('python3', ['-c', 'import sys, wsgiref.simple_server; sys.exit(0 if sys.version_info >= (3, 7) else 1)'], { encoding: 'utf8' });
  if (probe.error) return `python3 is not available (${(probe.error as NodeJS.ErrnoException).code})`;
  if (probe.status !== 0) return `python3 >= 3.7 with wsgiref is required (${probe.stderr.trim() || `exit ${probe.status}`})`;
  return null;
}
const skip = whyNoPython() ?? false;

async function startApp(t: TestContext): Promise<DemoApp & { port: number }> {
  const port = await freePort();
  const app = await DemoApp.start(t, {
    command: 'python3',
    args: ['app.py'],
    cwd: APP_DIR,
    // Unbuffered so log lines arrive as they happen; HOME and PYENV_* keep version managers' shims working.
    env: { ...pick(process.env, ['PATH', 'HOME', 'PYENV_ROOT', 'PYENV_VERSION']), PYTHONUNBUFFERED: '1', PORT: String(port), SECRET_TOKEN: SECRET, BERTH_APP: 'py-demo', BERTH_RELEASE: '20250101120000-def456', BERTH_PROCESS: 'web', BERTH_INSTANCE: '0' },
    port,
  });
  return app as DemoApp & { port: number };
}

function pick(env: NodeJS.ProcessEnv, keys: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of keys) if (env[k] !== undefined) out[k] = env[k];
  return out;
}

test('python: GET / reports app, release, pid and lang', { skip }, async (t) => {
  const app = await startApp(t);
  const res = await app.request({ path: '/' });
  assert.equal(res.status, 200);
  assert.match(String(res.headers['content-type']), /^application\/json/);
  const body = res.json();
  assert.equal(body.app, 'py-demo');
  assert.equal(body.release, '20250101120000-def456');
  assert.equal(body.lang, 'python');
  assert.equal(body.instance, 0);
  assert.equal(typeof body.pid, 'number');
});

test('python: /up answers 200 ok while a /slow request is running', { skip }, async (t) => {
  const app = await startApp(t);
  let settled = false;
  const slow = app.request({ path: '/slow?ms=3000' }).finally(() => (settled = true));
  await waitFor(async () => (await app.request({ path: '/' })).json().inFlight === 1, 'the slow request to be in flight');
  const up = await app.request({ path: '/up' });
  assert.equal(up.status, 200);
  assert.equal(up.text(), 'ok');
  assert.equal(settled, false, '/up answered only after /slow finished');
  const res = await slow;
  assert.equal(res.status, 200);
  assert.equal(res.json().slept, 3000);
});

test('python: /slow rejects a bad ms with 400', { skip }, async (t) => {
  const app = await startApp(t);
  for (const ms of ['abc', '-5', '1.5', '']) {
    const bad = await app.request({ path: `/slow?ms=${ms}` });
    assert.equal(bad.status, 400, `ms=${ms}`);
  }
  const ok = await app.request({ path: '/slow?ms=10' });
  assert.equal(ok.status, 200);
  assert.equal(ok.json().slept, 10);
});

test('python: POST /echo returns the body with its content-type; a chunked body gets 411', { skip }, async (t) => {
  const app = await startApp(t);
  const body = randomBytes(200 * 1024);
  const res = await app.request({ path: '/echo', method: 'POST', headers: { 'content-type': 'application/x-test', 'content-length': String(body.length) }, body });
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-type'], 'application/x-test');
  assert.ok(res.body.equals(body));

  const status = await new Promise<number>((resolveStatus, reject) => {
    const req = request({ host: '127.0.0.1', port: app.port, path: '/echo', method: 'POST', agent: false }, (r) => {
      r.resume();
      resolveStatus(r.statusCode ?? 0);
    });
    req.on('error', reject);
    req.write('no length');
    req.end();
  });
  assert.equal(status, 411);
});

test('python: wrong methods get 405, unknown paths and /env get 404 without leaking the environment', { skip }, async (t) => {
  const app = await startApp(t);
  assert.equal((await app.request({ path: '/echo' })).status, 405);
  for (const path of ['/env', '/nope']) {
    const res = await app.request({ path });
    assert.equal(res.status, 404, path);
    assert.ok(!res.text().includes(SECRET), `${path} leaks the environment`);
  }
});

test('python: SIGTERM stops accepting, finishes the in-flight /slow request, exits 0', { skip }, async (t) => {
  const app = await startApp(t);
  let settled = false;
  const slow = app.request({ path: '/slow?ms=3000' }).finally(() => (settled = true));
  await waitFor(async () => (await app.request({ path: '/' })).json().inFlight === 1, 'the slow request to be in flight');

  app.proc.kill('SIGTERM');
  await waitFor(() => connectRefused(app.port), 'the listener to close');
  assert.equal(settled, false, 'the listener closed while /slow was still running');

  const res = await slow;
  assert.equal(res.status, 200);
  assert.equal(res.json().slept, 3000);
  assert.deepEqual(await app.exited, { code: 0, signal: null });
  assert.match(app.stdout, /"msg": "stopped"/);
});
