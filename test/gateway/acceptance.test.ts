/**
 * Issue #2 acceptance, end to end: real gateway processes, real app processes, real sockets. The quick
 * start (examples/berth.yaml) is tested once, in test/examples/quick-start.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { chmod } from 'node:fs/promises';
import { MAIN, FIXTURE_WEB_COMMAND, fixtureApp, http, processGroupAlive, runCli, spawnGateway, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';

test('a bad config exits 2, lists every problem with its path, and starts nothing', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    apps: {
      shop: {
        source: src,
        processes: { web: { command: 'node server.js', instances: 'two' } },
        routes: [{ path: '/', to: 'web' }, { path: '/api', to: 'api' }],
        colour: 'blue',
      },
    },
  });
  for (const verb of ['check', 'start']) {
    const res = await runCli([verb, '--config', file]);
    assert.equal(res.code, 2, `${verb}: ${res.stderr}`);
    assert.match(res.stderr, /apps\.shop\.processes\.web\.instances: .*"two"/);
    assert.match(res.stderr, /apps\.shop\.routes\.1\.to: .*api/);
    assert.match(res.stderr, /apps\.shop\.colour: unknown key/);
    assert.equal(existsSync(join(dir, 'state')), false, `${verb} must not create the state dir`);
  }
});

test('berth check prints the routes and each app budget', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    listen: ['127.0.0.1:0'],
    apps: { shop: { source: src, hosts: ['shop.test'], db_connections: 20, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 8 } } } },
  });
  const res = await runCli(['check', '--config', file]);
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stdout, /shop\.test/);
  assert.match(res.stdout, /16/);
  assert.match(res.stdout, /20/);
});

test('kill -9 of one of two instances under GET load fails no request, and the instance comes back', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 16 } }, health: { path: '/up' } } },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { message: 'ready' });
  const before = (await gw.api('/v1/apps/shop')).generations[0].instances;
  assert.equal(before.length, 2);
  const victim = before[0];

  let stop = false;
  const failures: string[] = [];
  let ok = 0;
  const worker = async () => {
    while (!stop) {
      try {
        const res = await http({ port: gw.port }, { path: '/' });
        if (res.status === 200) ok++;
        else failures.push(`status ${res.status}: ${res.body}`);
      } catch (err) {
        failures.push(String(err));
      }
    }
  };
  const workers = Array.from({ length: 8 }, worker);
  await waitFor(() => ok > 200, { message: 'load running' });
  process.kill(victim.pid, 'SIGKILL');
  const okAtKill = ok;
  await waitFor(() => ok > okAtKill + 500, { message: 'load after kill' });
  const back = await waitFor(async () => {
    const inst = (await gw.api('/v1/apps/shop')).generations[0].instances.find((i: any) => i.index === victim.index);
    return inst.state === 'ready' && inst.pid !== victim.pid ? inst : null;
  }, { timeoutMs: 10_000, message: 'the killed instance to come back' });
  stop = true;
  await Promise.all(workers);
  assert.deepEqual(failures, []);
  assert.equal(back.restarts, 1);
});

test('an app whose command exits at once is crashed after its failure budget; other apps are unaffected', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const bad = await fixtureApp(dir, 'bad-src');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    // The front door names the failing app in /_berth/ready only when asked to.
    public_details: true,
    apps: {
      good: { source: src, hosts: ['good.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
      bad: { source: bad, hosts: ['bad.test'], processes: { web: { command: 'echo "boom: cannot start" >&2; exit 3' } } },
    },
  });
  const { gateway, port } = await startGateway(t, file, {
    supervisorTiming: { backoffInitialMs: 10, backoffMaxMs: 40, resetAfterMs: 60_000, failureLimit: 10, failureWindowMs: 600_000 },
  });
  const crashed = await waitFor(() => {
    const app = gateway.appStatus('bad')!;
    const inst = app.generations[0]?.instances[0];
    return inst?.state === 'crashed' ? app : null;
  }, { message: 'bad app crashed' });
  assert.equal(crashed.healthy, false);
  assert.ok(crashed.reasons.some((r) => /crashed/.test(r)), crashed.reasons.join('; '));
  assert.ok(crashed.generations[0].instances[0].restarts >= 9);
  const good = await http({ port }, { host: 'good.test', path: '/' });
  assert.equal(good.status, 200);
  assert.equal(good.json().app, 'good');
  const ready = await http({ port }, { path: '/_berth/ready' });
  assert.equal(ready.status, 503);
  assert.match(ready.body, /bad/);
  const appHealth = await http({ port }, { path: '/_berth/apps/good/health' });
  assert.equal(appHealth.status, 200);
});

test('berth stop during 50 in-flight slow requests completes them all, exits 0 and leaves no app process', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 25 } }, health: { path: '/up' } } },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { message: 'ready' });
  const pids: number[] = (await gw.api('/v1/apps/shop')).generations[0].instances.map((i: any) => i.pid);
  const requests = Array.from({ length: 50 }, () => http({ port: gw.port }, { path: '/slow?ms=2000' }));
  await waitFor(async () => (await gw.api('/v1/apps/shop')).db.inUse === 50, { message: '50 requests in flight' });
  const stopped = await runCli(['stop', '--socket', gw.socket]);
  assert.equal(stopped.code, 0, stopped.stderr);
  const results = await Promise.all(requests);
  assert.deepEqual(results.map((r) => r.status), Array(50).fill(200));
  const exit = await gw.exited;
  assert.equal(exit.code, 0, gw.stderr());
  for (const pid of pids) assert.equal(processGroupAlive(pid), false, `process group ${pid} is still alive`);
});

test('SIGTERM to berth start drains and exits 0 with no app process left', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } } } },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { message: 'ready' });
  const pids: number[] = (await gw.api('/v1/apps/shop')).generations[0].instances.map((i: any) => i.pid);
  const slow = http({ port: gw.port }, { path: '/slow?ms=800' });
  await waitFor(async () => (await gw.api('/v1/apps/shop')).db.inUse === 1, { message: 'request in flight' });
  gw.proc.kill('SIGTERM');
  assert.equal((await slow).status, 200);
  assert.equal((await gw.exited).code, 0);
  for (const pid of pids) assert.equal(processGroupAlive(pid), false);
});

test('berth stop refuses a bad --timeout with exit 2 before it asks anything', async (t) => {
  const dir = await tempDir(t);
  for (const timeout of ['abc', '0', '-5', '']) {
    const res = await runCli(['stop', `--timeout=${timeout}`, '--socket', join(dir, 'control.sock')]);
    assert.equal(res.code, 2, `--timeout ${JSON.stringify(timeout)}: ${res.stderr}`);
    assert.match(res.stderr, /--timeout expects a positive number of seconds/);
  }
});

/** Why the CLI cannot run as another user here (not root, or the checkout is private to root), or false. */
function otherUserSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root to run the CLI as another user';
  const probe = spawnSync(process.execPath, [MAIN, '--version'], { uid: 65534, gid: 65534 });
  return probe.status === 0 ? false : `uid 65534 cannot run the CLI from this checkout (${probe.error?.message ?? `exit ${probe.status}`})`;
}

test('berth stop run by another user than the gateway (a socket_group member) waits until the gateway is gone', { skip: otherUserSkip() }, async (t) => {
  const dir = await tempDir(t);
  await chmod(dir, 0o755);
  const socket = join(dir, 'control.sock');
  // Stands in for a gateway of this (root) process: it takes the stop, and goes away 1.5s later.
  let goneAt = 0;
  const server = createServer((_req, res) => {
    res.writeHead(202, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ stopping: true, pid: process.pid }));
    setTimeout(() => {
      goneAt = Date.now();
      server.close();
      server.closeAllConnections();
    }, 1500).unref();
  });
  await new Promise<void>((r) => server.listen(socket, () => r()));
  t.after(() => server.close());
  await chmod(socket, 0o666);
  const cli = spawn(process.execPath, [MAIN, 'stop', '--socket', socket], { uid: 65534, gid: 65534, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  cli.stdout.on('data', (c: Buffer) => (out += c));
  cli.stderr.on('data', (c: Buffer) => (out += c));
  const code = await new Promise<number | null>((r) => cli.once('exit', r));
  assert.equal(code, 0, out);
  assert.match(out, /gateway stopped/);
  assert.ok(goneAt > 0, `berth stop returned while the gateway still ran: ${out}`);
});

test('status and routes show apps and instances; client verbs fail clearly without a gateway', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, hosts: ['shop.test'], db_connections: 10, processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1, concurrency: 4 } } } },
  });
  const down = await runCli(['status', '--config', file]);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /cannot reach the gateway/);
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { message: 'ready' });
  const status = await runCli(['status', '--config', file]);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /shop/);
  assert.match(status.stdout, /web\.0/);
  assert.match(status.stdout, /ready/);
  const json = JSON.parse((await runCli(['status', '--json', '--config', file])).stdout);
  assert.equal(json.apps[0].name, 'shop');
  assert.equal(json.apps[0].db.budget, 10);
  assert.equal(json.apps[0].db.demand, 4);
  assert.equal(typeof json.apps[0].generations[0].instances[0].pid, 'number');
  const routes = await runCli(['routes', '--config', file]);
  assert.equal(routes.code, 0, routes.stderr);
  assert.match(routes.stdout, /shop\.test\s+\/\s+web\s+shop\s+normal/);
  const missing = await runCli(['status', 'nope', '--config', file]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no app named "nope"/);
  const badArgs = await runCli(['status', '--bogus', '--config', file]);
  assert.equal(badArgs.code, 2);
  assert.match(badArgs.stderr, /bogus/);
});

test('a second gateway on the same state dir refuses to start and names the socket', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND } } } },
  });
  await spawnGateway(t, file);
  const second = await runCli(['start', '--config', file]);
  assert.equal(second.code, 1);
  assert.match(second.stderr, /already running on control socket/);
});

test('the first start makes a release from the source and runs instances in its real path', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, env: { GREETING: 'hi' }, processes: { web: { command: FIXTURE_WEB_COMMAND, concurrency: 3 } } } },
  });
  const { gateway, port } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  const res = (await http({ port }, { path: '/env' })).json().env;
  const release = gateway.appStatus('shop')!.activeRelease!;
  assert.match(release, /^\d{14}-[0-9a-f]{6}$/);
  assert.equal(res.BERTH_APP, 'shop');
  assert.equal(res.BERTH_RELEASE, release);
  assert.equal(res.BERTH_PROCESS, 'web');
  assert.equal(res.BERTH_INSTANCE, '0');
  assert.equal(res.BERTH_DB_POOL_SIZE, '3');
  assert.equal(res.GREETING, 'hi');
  const cwd = (await http({ port }, { path: '/' })).json().cwd;
  assert.equal(cwd, join(realpathSync(dir), 'state/apps/shop/releases', release));
});

test('the first start is a full deploy: build and release commands run in the new release, and it is recorded', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      shop: {
        source: src,
        build: 'echo built > BUILT',
        release: 'echo "$BERTH_RELEASE" > RELEASED',
        processes: { web: { command: FIXTURE_WEB_COMMAND } },
      },
    },
  });
  const { gateway, port } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  const release = gateway.appStatus('shop')!.activeRelease!;
  const releaseDir = join(dir, 'state/apps/shop/releases', release);
  assert.equal(readFileSync(join(releaseDir, 'BUILT'), 'utf8'), 'built\n');
  assert.equal(readFileSync(join(releaseDir, 'RELEASED'), 'utf8'), `${release}\n`);
  assert.equal((await http({ port }, { path: '/' })).json().release, release);
  const [deploy] = await gateway.deploys('shop');
  assert.equal(deploy.state, 'succeeded');
  assert.equal(deploy.user, 'berth-start');
  const history = await gateway.history({ app: 'shop' });
  assert.ok(history.some((h) => h.action === 'deploy' && h.user === 'berth-start' && h.outcome === 'ok'), JSON.stringify(history));
});

test('a first start whose build fails leaves that app failed with the reason, and the others serving', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      good: { source: src, hosts: ['good.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } },
      broken: { source: src, hosts: ['broken.test'], build: 'echo "cannot compile" >&2; exit 1', processes: { web: { command: FIXTURE_WEB_COMMAND } } },
    },
  });
  const { gateway, port } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  const broken = gateway.appStatus('broken')!;
  assert.equal(broken.phase, 'failed');
  assert.match(broken.error!, /failed at step build/);
  assert.match(broken.error!, /cannot compile/);
  assert.equal((await http({ port }, { host: 'good.test', path: '/' })).status, 200);
  assert.equal((await http({ port }, { host: 'broken.test', path: '/' })).status, 503);
});
