/**
 * Issue #11 defect 9: an app whose first deploy failed must not look like one that is starting. The
 * front door says `start-failed` (no internals), `berth status --check` exits 1 naming it, and
 * `berth check` warns beforehand about the missing `shared` entry that caused it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';

/** The status line and headers of the raw answer to a WebSocket upgrade. */
function upgradeHead(port: number, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(`GET /ws HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    });
    let buf = '';
    socket.on('data', (c: Buffer) => {
      buf += c.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        socket.destroy();
        resolve(buf.slice(0, end));
      }
    });
    socket.on('error', reject);
    socket.setTimeout(10_000, () => reject(new Error('no answer to the upgrade')));
  });
}

test('berth check warns, naming app and entry, about a shared entry missing from the state dir, and still exits 0', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    apps: {
      good: { source: src, hosts: ['good.test'], shared: ['.env'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
      broken: { source: src, hosts: ['broken.test'], shared: ['uploads/', '.env'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
    },
  });
  mkdirSync(join(dir, 'state/apps/good/shared'), { recursive: true });
  writeFileSync(join(dir, 'state/apps/good/shared/.env'), 'A=1\n');
  const checked = await runCli(['check', '--config', file]);
  assert.equal(checked.code, 0, checked.stderr);
  const warnings = checked.stderr.split('\n').filter((l) => l.includes('shared entry'));
  assert.equal(warnings.length, 2, checked.stderr);
  assert.match(checked.stderr, /warning: app broken: shared entry "uploads" is missing: create .*state\/apps\/broken\/shared\/uploads /);
  assert.match(checked.stderr, /warning: app broken: shared entry "\.env" is missing: create .*state\/apps\/broken\/shared\/\.env /);
  assert.doesNotMatch(checked.stderr, /app good:/);
  const json = await runCli(['check', '--config', file, '--json']);
  assert.equal(json.code, 0, json.stderr);
  assert.equal(JSON.parse(json.stdout).warnings.length, 2);

  // Once they exist, nothing is said.
  mkdirSync(join(dir, 'state/apps/broken/shared/uploads'), { recursive: true });
  writeFileSync(join(dir, 'state/apps/broken/shared/.env'), 'A=1\n');
  const fixed = await runCli(['check', '--config', file]);
  assert.equal(fixed.code, 0, fixed.stderr);
  assert.doesNotMatch(fixed.stderr, /shared entry/);
});

test('an app whose first deploy failed answers 503 start-failed, status --check exits 1, and a fixed deploy clears both', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    control: { socket: join(dir, 'berth.sock') },
    log_levels: { root: 'warn' },
    apps: {
      good: { source: src, hosts: ['good.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
      broken: { source: src, hosts: ['broken.test'], shared: ['uploads'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
    },
  });

  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await gw.api('/v1/apps/broken')).phase === 'failed', { timeoutMs: 30_000, message: 'broken failed to boot' });
  await waitFor(async () => (await http({ port: gw.port }, { host: 'good.test', path: '/' })).status === 200, { timeoutMs: 30_000, message: 'good serving' });

  const page = await http({ port: gw.port }, { host: 'broken.test', path: '/' });
  assert.equal(page.status, 503);
  assert.equal(page.headers['x-berth-reason'], 'start-failed');
  assert.equal(page.headers['retry-after'], undefined, 'waiting does not fix a failed start');
  assert.match(page.body.toString(), /The application failed to start\./);
  assert.doesNotMatch(page.body.toString(), /starting/);
  // Internals (the cause, paths, the deploy id) stay on the control API.
  assert.doesNotMatch(page.body.toString(), /uploads|shared|state\//);
  const json = await http({ port: gw.port }, { host: 'broken.test', path: '/', headers: { accept: 'application/json' } });
  assert.deepEqual(json.json(), { error: { status: 503, reason: 'start-failed' } });
  assert.match(await upgradeHead(gw.port, 'broken.test'), /^HTTP\/1\.1 503 [^]*x-berth-reason: start-failed/);

  const all = await runCli(['status', '--check', '--socket', gw.socket]);
  assert.equal(all.code, 1, all.stdout + all.stderr);
  assert.match(all.stderr, /broken is unhealthy: failed to boot: .*shared entry "uploads" is missing/);
  assert.doesNotMatch(all.stderr, /good is unhealthy/);
  assert.equal((await runCli(['status', 'broken', '--check', '--json', '--socket', gw.socket])).code, 1);
  const good = await runCli(['status', 'good', '--check', '--socket', gw.socket]);
  assert.equal(good.code, 0, good.stderr);
  // Without --check, status reports and exits 0 as before.
  assert.equal((await runCli(['status', '--socket', gw.socket])).code, 0);

  // The operator creates the entry and deploys: the app serves, and every check passes.
  mkdirSync(join(dir, 'state/apps/broken/shared/uploads'), { recursive: true });
  const deployed = await runCli(['deploy', 'broken', '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stdout + deployed.stderr);
  await waitFor(async () => (await http({ port: gw.port }, { host: 'broken.test', path: '/' })).status === 200, { timeoutMs: 30_000, message: 'broken serving' });
  await waitFor(async () => (await runCli(['status', '--check', '--socket', gw.socket])).code === 0, { timeoutMs: 30_000, message: 'status --check passes' });
});

test('an app still on its first boot answers 503 no-active-generation with Retry-After, saying it is starting', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  writeFileSync(join(src, 'slow-build.sh'), 'sleep 4\n');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { slow: { source: src, build: 'sh slow-build.sh', processes: { web: { command: FIXTURE_WEB_COMMAND } } } },
  });
  const { gateway, port } = await startGateway(t, file);
  // Stopped here, not only in t.after: the temp dir's cleanup must not race a build still running.
  try {
    const page = await http({ port }, { path: '/' });
    assert.equal(gateway.appStatus('slow')!.phase, 'booting');
    assert.equal(page.status, 503);
    assert.equal(page.headers['x-berth-reason'], 'no-active-generation');
    assert.equal(page.headers['retry-after'], '5');
    assert.match(page.body.toString(), /The application is starting/);
  } finally {
    await gateway.stop();
  }
});

test('a failed app that a config reload boots again says it is starting, not that it failed, until it serves', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  writeFileSync(join(src, 'slow-build.sh'), 'sleep 3\n');
  const config = (env: Record<string, string>) => ({
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, shared: ['uploads'], build: 'sh slow-build.sh', env, processes: { web: { command: FIXTURE_WEB_COMMAND } } } },
  });
  const file = await writeConfig(dir, config({}));
  const { gateway, port } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  assert.equal(gateway.appStatus('shop')!.phase, 'failed');
  assert.equal((await http({ port }, { path: '/' })).headers['x-berth-reason'], 'start-failed');

  mkdirSync(join(dir, 'state/apps/shop/shared/uploads'), { recursive: true });
  await writeConfig(dir, config({ FIXED: '1' }));
  // Stopped here, not only in t.after: the temp dir's cleanup must not race a build still running.
  try {
    await gateway.reloadConfig({ user: 'test', channel: 'internal' });
    assert.equal(gateway.appStatus('shop')!.phase, 'booting');
    const during = await http({ port }, { path: '/' });
    assert.equal(during.status, 503);
    assert.equal(during.headers['x-berth-reason'], 'no-active-generation');
    await waitFor(async () => (await http({ port }, { path: '/' })).status === 200, { timeoutMs: 30_000, message: 'shop serving' });
  } finally {
    await gateway.stop();
  }
});
