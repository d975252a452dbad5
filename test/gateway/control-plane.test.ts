/**
 * Issue #7 acceptance, end to end: the control API over TCP with tokens, call-context headers, roles and
 * per-app permissions; the audit log of every change, refused ones included; config reload (API, CLI,
 * SIGHUP) under load; the control socket's permissions; the dashboard's local proxy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { chmod, chown, lstat, mkdir, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { loadConfig } from '../../src/config/load.ts';
import { LoggerFactory } from '../../src/lib/logger.ts';
import { Gateway } from '../../src/gateway.ts';
import { hashToken } from '../../src/api/auth.ts';
import { FIXTURE_WEB_COMMAND, LogSink, MAIN, fixtureApp, http, http as plainHttp, runCli, spawnGateway, tempDir, waitFor, writeConfig, type ChildGateway, type HttpResult } from '../helpers/gateway.ts';
import { CONTEXT_HEADER, TOKENS, b64, controlTokens } from '../helpers/control-tokens.ts';
import { spawnDashboard } from '../helpers/dashboard.ts';

/** The two-app config of these tests; `over` replaces top-level keys, `apps` is merged per app. */
function twoApps(src: string, over: Record<string, unknown> = {}, apps: Record<string, Record<string, unknown>> = {}): Record<string, unknown> {
  const app = (host: string) => ({
    source: src,
    hosts: [host],
    processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1, concurrency: 16 } },
    health: { path: '/up', interval: '250ms' },
    timeouts: { drain: '5s', stop: '5s' },
  });
  return {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    control: {
      listen: '127.0.0.1:0',
      call_context_header: CONTEXT_HEADER,
      tokens: controlTokens(),
      permissions: { production: { alice: ['^shop$'] } },
    },
    environments: { production: {} },
    ...over,
    apps: { shop: { ...app('shop.test'), ...apps.shop }, blog: { ...app('blog.test'), ...apps.blog }, ...Object.fromEntries(Object.entries(apps).filter(([k]) => k !== 'shop' && k !== 'blog')) },
  };
}

/** The TCP control port a child gateway bound (control.listen is :0). */
async function controlPort(gw: ChildGateway): Promise<number> {
  const status = await gw.api('/v1/status');
  assert.match(status.controlListen, /^127\.0\.0\.1:\d+$/);
  return Number(status.controlListen.split(':')[1]);
}

/** A control API call over TCP with a token or headers. */
function tcp(port: number, method: string, path: string, opts: { token?: string; headers?: Record<string, string>; body?: unknown } = {}): Promise<HttpResult> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers['content-type'] = 'application/json';
  }
  return http({ port }, { method, path, headers, body });
}

async function appReady(gw: ChildGateway, app: string): Promise<any> {
  return waitFor(
    async () => {
      const a = await gw.api(`/v1/apps/${app}`);
      const active = a.generations.find((g: any) => g.active);
      return a.healthy && active && active.instances.every((i: any) => i.state === 'ready') ? a : null;
    },
    { timeoutMs: 30_000, message: `${app} ready` },
  );
}

async function deployDone(gw: ChildGateway, id: string): Promise<any> {
  return waitFor(
    async () => {
      const d = await gw.api(`/v1/deploys/${id}`);
      return d.state === 'running' ? null : d;
    },
    { timeoutMs: 60_000, message: `deploy ${id} to end` },
  );
}

/** Pids of an app's active generation, with its id. */
async function activePids(gw: ChildGateway, app: string): Promise<{ gen: string; pids: number[] }> {
  const a = await gw.api(`/v1/apps/${app}`);
  const active = a.generations.find((g: any) => g.active);
  return { gen: active.id, pids: active.instances.map((i: any) => i.pid).sort() };
}

/** A couple of clients in a loop against one app on the front door; every non-200 is a failure. */
class Load {
  ok = 0;
  failures: string[] = [];
  #running = true;
  #loops: Promise<void>[];

  constructor(port: number, host: string, clients = 2) {
    this.#loops = Array.from({ length: clients }, () => this.#loop(port, host));
  }

  async #loop(port: number, host: string): Promise<void> {
    while (this.#running) {
      try {
        const res = await http({ port }, { host, path: '/', timeoutMs: 20_000 });
        if (res.status === 200) this.ok++;
        else this.failures.push(`${host}: ${res.status} ${res.body.slice(0, 200)}`);
      } catch (err) {
        this.failures.push(`${host}: ${String(err)}`);
      }
      // A gentle load: the machine is shared, and a request a few ms apart is enough to see a drop.
      await new Promise((r) => setTimeout(r, 3));
    }
  }

  async stop(): Promise<{ ok: number; failures: string[] }> {
    this.#running = false;
    await Promise.all(this.#loops);
    return { ok: this.ok, failures: this.failures };
  }
}

test('TCP control API: tokens and call contexts authenticate, roles and per-app permissions authorise, and every change is audited', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, twoApps(src));
  const gw = await spawnGateway(t, file, { env: { BERTH_ENV: 'production' } });
  const port = await controlPort(gw);
  await appReady(gw, 'shop');
  await appReady(gw, 'blog');

  // A deployer limited to ^shop$ deploys shop...
  const ok = await tcp(port, 'POST', '/v1/apps/shop/deploys', { token: TOKENS.alice, body: {} });
  assert.equal(ok.status, 202, ok.body);
  const deployed = await deployDone(gw, ok.json().id);
  assert.equal(deployed.state, 'succeeded');
  assert.equal(deployed.user, 'alice');
  // ...and gets 403 on blog, naming the app and the rule; blog is untouched.
  const blogBefore = await activePids(gw, 'blog');
  const denied = await tcp(port, 'POST', '/v1/apps/blog/deploys', { token: TOKENS.alice, body: {} });
  assert.equal(denied.status, 403);
  assert.equal(denied.json().error.code, 'BERTH_E_FORBIDDEN');
  assert.match(denied.json().error.message, /app "blog"/);
  assert.match(denied.json().error.message, /control\.permissions\.production\.alice allows only \^shop\$/);
  assert.deepEqual(await activePids(gw, 'blog'), blogBefore);
  // Reads that name an app are held to the same rule, and lists show only the permitted apps.
  assert.equal((await tcp(port, 'GET', '/v1/apps/blog', { token: TOKENS.alice })).status, 403);
  assert.equal((await tcp(port, 'GET', '/v1/history?app=blog', { token: TOKENS.alice })).status, 403);
  assert.deepEqual((await tcp(port, 'GET', '/v1/status', { token: TOKENS.alice })).json().apps.map((a: any) => a.name), ['shop']);
  assert.deepEqual((await tcp(port, 'GET', '/v1/apps', { token: TOKENS.vic })).json().apps.map((a: any) => a.name), ['shop', 'blog']);
  // A deployer may not make admin changes.
  const aliceReload = await tcp(port, 'POST', '/v1/config/reload', { token: TOKENS.alice, body: {} });
  assert.equal(aliceReload.status, 403);
  assert.match(aliceReload.json().error.message, /needs the admin role/);

  // A viewer reads, and gets 403 on every change.
  assert.equal((await tcp(port, 'GET', '/v1/status', { token: TOKENS.vic })).status, 200);
  const changes: [string, string, unknown, string][] = [
    ['POST', '/v1/apps/shop/deploys', {}, 'deploy'],
    ['POST', '/v1/apps/shop/rollback', {}, 'rollback'],
    ['POST', '/v1/apps/blog/reload', {}, 'reload'],
    ['PUT', '/v1/apps/shop/mode', { mode: 'maintenance' }, 'mode'],
    ['POST', '/v1/apps/shop/run', { command: 'true' }, 'run'],
    ['POST', '/v1/config/reload', {}, 'config-reload'],
    ['POST', '/v1/stop', {}, 'stop'],
  ];
  for (const [method, path, body] of changes) {
    const res = await tcp(port, method, path, { token: TOKENS.vic, body });
    assert.equal(res.status, 403, `${method} ${path}: ${res.body}`);
    assert.match(res.json().error.message, /vic \(viewer\) may not/);
  }
  assert.equal((await gw.api('/v1/apps/shop')).mode, 'normal');

  // Missing and wrong credentials: 401 with a clear code, on reads and changes alike.
  for (const [method, path] of [['GET', '/v1/status'], ['POST', '/v1/apps/shop/reload']]) {
    for (const headers of [{} as Record<string, string>, { authorization: 'Bearer not-a-token' }, { authorization: `Basic ${b64('alice:alice-token-1')}` }, { authorization: `Bearer ${TOKENS.alice}x` }]) {
      const res = await tcp(port, method, path, { headers });
      assert.equal(res.status, 401, `${method} ${path} ${JSON.stringify(headers)}`);
      assert.equal(res.json().error.code, 'BERTH_E_UNAUTHORIZED');
      assert.equal(res.headers['www-authenticate'], 'Bearer realm="berth"');
    }
  }
  // 20 malformed call-context headers: every one 401, and none of them acts.
  const malformed = [
    'not base64!', '%%%%', b64('not json'), b64('[]'), b64('null'), b64('42'), b64('"alice"'),
    b64({ roles: ['admin'] }), b64({ user: 7, roles: ['admin'] }), b64({ user: '', roles: ['admin'] }),
    b64({ user: { name: 'alice' }, roles: ['admin'] }), b64({ user: 'alice' }), b64({ user: 'alice', roles: [] }),
    b64({ user: 'alice', roles: 'admin' }), b64({ user: 'alice', roles: ['root'] }), b64({ user: 'alice', roles: ['admin', null] }),
    b64({ user: 'al\u0000ice', roles: ['admin'] }), b64({ user: 'a'.repeat(200), roles: ['admin'] }),
    b64({ user: 'alice', roles: ['admin'], pad: 'x'.repeat(5000) }), Buffer.from([0xc3, 0x28, 0x7b]).toString('base64'),
  ];
  assert.equal(malformed.length, 20);
  for (const value of malformed) {
    const res = await tcp(port, 'POST', '/v1/apps/shop/reload', { headers: { [CONTEXT_HEADER]: value }, body: {} });
    assert.equal(res.status, 401, `${value.slice(0, 40)}: ${res.body}`);
    assert.equal(res.json().error.code, 'BERTH_E_UNAUTHORIZED');
    assert.match(res.json().error.message, /x-auth-context header/);
  }
  // A well-formed call context from the trusted proxy in front works, with its own identity.
  const who = await tcp(port, 'GET', '/v1/whoami', { headers: { [CONTEXT_HEADER]: b64({ user: 'carol@example.com', roles: ['deployer'] }) } });
  assert.equal(who.status, 200);
  assert.equal(who.json().user, 'carol@example.com');
  assert.deepEqual(who.json().changeable, ['shop', 'blog']);
  assert.deepEqual((await tcp(port, 'GET', '/v1/whoami', { token: TOKENS.alice })).json().changeable, ['shop']);
  const carol = await tcp(port, 'PUT', '/v1/apps/blog/mode', { headers: { [CONTEXT_HEADER]: b64({ user: 'carol@example.com', roles: ['deployer'] }) }, body: { mode: 'read-only' } });
  assert.equal(carol.status, 200, carol.body);
  assert.equal((await gw.api('/v1/apps/blog')).mode, 'read-only');

  // The CLI reaches the gateway over TCP with --url and BERTH_TOKEN; the token names the user.
  const url = `http://127.0.0.1:${port}`;
  const cliDeploy = await runCli(['deploy', 'shop', '--url', url], { env: { BERTH_TOKEN: TOKENS.alice, BERTH_USER: 'someone-else' } });
  assert.equal(cliDeploy.code, 0, cliDeploy.stderr);
  assert.match(cliDeploy.stdout, /done: shop serves release/);
  const cliDenied = await runCli(['reload', 'blog', '--url', url], { env: { BERTH_TOKEN: TOKENS.alice } });
  assert.equal(cliDenied.code, 1);
  assert.match(cliDenied.stderr, /may not reload app "blog".*BERTH_E_FORBIDDEN/);
  const noToken = await runCli(['status', '--url', url], { env: { BERTH_TOKEN: '' } });
  assert.equal(noToken.code, 1);
  assert.match(noToken.stderr, /BERTH_E_UNAUTHORIZED/);
  const badUrl = await runCli(['status', '--url', 'ftp://x']);
  assert.equal(badUrl.code, 2);

  // Every change above is in the history with its user, channel and outcome; 401s name no user.
  const hist = await runCli(['history', '--url', url, '--json', '-n', '200'], { env: { BERTH_TOKEN: TOKENS.root } });
  assert.equal(hist.code, 0, hist.stderr);
  const rows: any[] = JSON.parse(hist.stdout).history;
  const has = (user: string, action: string, app: string | null, outcome: string) => rows.filter((r) => r.user === user && r.action === action && r.app === app && r.outcome === outcome && r.channel === 'tcp').length;
  assert.equal(has('alice', 'deploy', 'shop', 'ok'), 2, JSON.stringify(rows, null, 1));
  assert.equal(has('alice', 'deploy', 'blog', 'refused'), 1);
  assert.equal(has('alice', 'reload', 'blog', 'refused'), 1);
  assert.equal(has('alice', 'config-reload', null, 'refused'), 1);
  for (const [, path, , action] of changes) {
    const app = /\/apps\/([^/]+)\//.exec(path)?.[1] ?? null;
    assert.equal(has('vic', action, app, 'refused'), 1, `vic ${action} refused`);
  }
  assert.equal(has('carol@example.com', 'mode', 'blog', 'ok'), 1);
  assert.ok(rows.every((r) => r.outcome !== 'pending'), 'every change finished');
  // Only authenticated callers are named: the 401s on changes are audited as `unauthenticated` (issue
  // #10), and the CLI's own X-Berth-User over TCP names nobody. `berth-start` is the gateway's own first
  // deploy of each app.
  assert.deepEqual([...new Set(rows.map((r) => r.user))].sort(), ['alice', 'berth-start', 'carol@example.com', 'unauthenticated', 'vic']);
  assert.ok(rows.filter((r) => r.user === 'unauthenticated').every((r) => r.outcome === 'refused' && r.action === 'reload'));
  // The history filters: by user, by app, by time.
  const byVic = (await tcp(port, 'GET', '/v1/history?user=vic', { token: TOKENS.root })).json().history;
  assert.equal(byVic.length, changes.length);
  const blogRows = (await tcp(port, 'GET', '/v1/history?app=blog', { token: TOKENS.root })).json().history;
  assert.ok(blogRows.length >= 3 && blogRows.every((r: any) => r.app === 'blog'));
  const future = (await tcp(port, 'GET', `/v1/history?since=${new Date(Date.now() + 60_000).toISOString()}`, { token: TOKENS.root })).json().history;
  assert.deepEqual(future, []);
  assert.equal((await tcp(port, 'GET', '/v1/history?since=yesterday', { token: TOKENS.root })).status, 400);
  // By action (cron and mode rows must not drown the deploys), through the API and the CLI flags.
  const deploys = (await tcp(port, 'GET', '/v1/history?action=deploy&limit=200', { token: TOKENS.root })).json().history;
  assert.ok(deploys.length >= 2 && deploys.every((r: any) => r.action === 'deploy'));
  const cli = async (...args: string[]) => {
    const res = await runCli(['history', '--url', url, '--json', '-n', '200', ...args], { env: { BERTH_TOKEN: TOKENS.root } });
    assert.equal(res.code, 0, res.stderr);
    return JSON.parse(res.stdout).history as any[];
  };
  assert.deepEqual(await cli('--action', 'deploy'), deploys);
  const vicDeploys = await cli('--user', 'vic', '--action', 'deploy');
  assert.ok(vicDeploys.every((r) => r.user === 'vic' && r.action === 'deploy'));
  assert.equal((await cli('--since', '1h')).length, rows.length, 'everything happened within the last hour');
  assert.deepEqual(await cli('--since', new Date(Date.now() + 60_000).toISOString()), []);
  const badSince = await runCli(['history', '--url', url, '--since', 'yesterday'], { env: { BERTH_TOKEN: TOKENS.root } });
  assert.equal(badSince.code, 2);
  assert.match(badSince.stderr, /--since expects an ISO 8601 time/);
  // A limited user's history holds its apps and gateway-wide rows only.
  const aliceRows = (await tcp(port, 'GET', '/v1/history?limit=200', { token: TOKENS.alice })).json().history;
  assert.ok(aliceRows.length > 0 && aliceRows.every((r: any) => r.app === null || r.app === 'shop'));
});

test('config reload: one app whose instances changed reloads under load while the other keeps its pids; invalid and restart-only configs change nothing; SIGHUP adds and removes apps', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, twoApps(src));
  const gw = await spawnGateway(t, file, { env: { BERTH_ENV: 'production' } });
  await appReady(gw, 'shop');
  await appReady(gw, 'blog');
  const shopBefore = await activePids(gw, 'shop');
  const blogBefore = await activePids(gw, 'blog');
  const env = { BERTH_CONTROL_SOCKET: gw.socket, BERTH_USER: 'ops' };

  const shopLoad = new Load(gw.port, 'shop.test');
  const blogLoad = new Load(gw.port, 'blog.test');
  await waitFor(() => shopLoad.ok > 20 && blogLoad.ok > 20, { message: 'load running' });
  await writeConfig(dir, twoApps(src, {}, { shop: { processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 16 } } } }));
  const res = await runCli(['reload-config'], { env });
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stdout, /reload\s+shop \(d\d{14}-[0-9a-f]{6}/);
  assert.doesNotMatch(res.stdout, /blog/);
  const shopAfter = await waitFor(
    async () => {
      const a = await gw.api('/v1/apps/shop');
      const active = a.generations.find((g: any) => g.active);
      return a.generations.length === 1 && active.id !== shopBefore.gen && active.instances.length === 2 && active.instances.every((i: any) => i.state === 'ready') ? active : null;
    },
    { timeoutMs: 30_000, message: 'shop reloaded with 2 instances and its old generation stopped' },
  );
  const okAtSwitch = shopLoad.ok;
  await waitFor(() => shopLoad.ok > okAtSwitch + 20, { message: 'load after the reload' });
  const shopStats = await shopLoad.stop();
  const blogStats = await blogLoad.stop();
  assert.deepEqual(shopStats.failures, []);
  assert.deepEqual(blogStats.failures, []);
  assert.equal(shopAfter.instances.length, 2);
  for (const pid of shopBefore.pids) assert.ok(!shopAfter.instances.some((i: any) => i.pid === pid), 'shop runs new processes');
  assert.deepEqual(await activePids(gw, 'blog'), blogBefore, 'blog kept its generation and pids');

  // An invalid config: every problem listed, exit 2, nothing changes.
  const goodShop = await activePids(gw, 'shop');
  await writeConfig(dir, twoApps(src, { colour: 'blue' }, { shop: { processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 'two' } } } }));
  const invalid = await runCli(['reload-config'], { env });
  assert.equal(invalid.code, 2);
  assert.match(invalid.stderr, /nothing changed/);
  assert.match(invalid.stderr, /apps\.shop\.processes\.web\.instances: .*"two"/);
  assert.match(invalid.stderr, /colour: unknown key/);
  // The API answers 422 listing the problems.
  const api422 = await http({ socketPath: gw.socket }, { method: 'POST', path: '/v1/config/reload', body: '{}' });
  assert.equal(api422.status, 422);
  assert.equal(api422.json().error.code, 'BERTH_E_CONFIG');
  assert.equal(api422.json().error.details.problems.length, 2);
  // What only a restart can change is refused the same way, naming each key.
  await writeConfig(dir, twoApps(src, { listen: ['127.0.0.1:1'], state_dir: 'elsewhere' }, { shop: { processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 16 } } } }));
  const restart = await runCli(['reload-config'], { env });
  assert.equal(restart.code, 2);
  assert.match(restart.stderr, /listen: changing it needs a restart/);
  assert.match(restart.stderr, /state_dir: changing it needs a restart/);
  assert.deepEqual(await activePids(gw, 'shop'), goodShop);
  assert.deepEqual(await activePids(gw, 'blog'), blogBefore);
  assert.equal((await http({ port: gw.port }, { host: 'shop.test', path: '/' })).status, 200);

  // SIGHUP: a new app boots, a routing-only change applies without a reload.
  await writeConfig(
    dir,
    twoApps(src, {}, {
      shop: { processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 16 } } },
      blog: { hosts: ['blog.test', 'news.test'] },
      wiki: { source: src, hosts: ['wiki.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } }, health: { path: '/up', interval: '250ms' } },
    }),
  );
  assert.equal((await http({ port: gw.port }, { host: 'news.test', path: '/' })).status, 404);
  gw.proc.kill('SIGHUP');
  await waitFor(async () => (await http({ port: gw.port }, { host: 'news.test', path: '/' })).status === 200, { message: 'blog answers on its new host' });
  const wiki = await waitFor(async () => {
    const r = await http({ port: gw.port }, { host: 'wiki.test', path: '/' });
    return r.status === 200 ? r.json() : null;
  }, { timeoutMs: 30_000, message: 'the new app serves' });
  assert.equal(wiki.app, 'wiki');
  assert.deepEqual(await activePids(gw, 'blog'), blogBefore, 'a host change does not reload');
  assert.deepEqual(await activePids(gw, 'shop'), goodShop);
  // And a reload that removes it: out of routing at once, its processes stopped.
  const wikiPids = (await activePids(gw, 'wiki')).pids;
  await writeConfig(dir, twoApps(src, {}, { shop: { processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 16 } } }, blog: { hosts: ['blog.test', 'news.test'] } }));
  const removed = await runCli(['reload-config', '--json'], { env });
  assert.equal(removed.code, 0, removed.stderr);
  assert.deepEqual(JSON.parse(removed.stdout).removed, ['wiki']);
  assert.equal((await http({ port: gw.port }, { host: 'wiki.test', path: '/' })).status, 404);
  await waitFor(() => wikiPids.every((pid) => {
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  }), { message: 'the removed app stopped' });
  assert.equal((await gw.api('/v1/status')).apps.length, 2);

  // The history tells it all, with who did what.
  const rows: any[] = (await gw.api('/v1/history?limit=100')).history;
  const count = (pred: (r: any) => boolean) => rows.filter(pred).length;
  assert.equal(count((r) => r.action === 'config-reload' && r.user === 'ops' && r.outcome === 'ok'), 2);
  // An invalid or restart-only config is a 422: a refused change (issue #10), not a failed one.
  assert.equal(count((r) => r.action === 'config-reload' && r.user === 'ops' && r.outcome === 'refused'), 2);
  assert.equal(count((r) => r.action === 'config-reload' && r.user === 'SIGHUP' && r.outcome === 'ok'), 1);
  assert.equal(count((r) => r.action === 'config-reload' && r.channel === 'socket' && r.user === 'ops'), 4);
  assert.equal(count((r) => r.action === 'reload' && r.app === 'shop' && r.user === 'ops' && r.outcome === 'ok' && r.detail.includes('release')), 1);
  assert.equal(count((r) => r.action === 'reload' && r.app === 'blog'), 0);
});

/** A gateway in this process with no apps: enough to bind the control socket. */
async function socketGateway(t: TestContext, dir: string, control: Record<string, unknown>): Promise<{ gateway: Gateway; socket: string; start: Promise<void> }> {
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], control, apps: {} });
  const config = await loadConfig({ configPath: file, environ: {} });
  const gateway = new Gateway({ config, loggers: new LoggerFactory({ root: 'silent' }, new LogSink()) });
  t.after(() => gateway.stop());
  return { gateway, socket: config.control.socket, start: gateway.start() };
}

function groupOf(gid: number): string | null {
  try {
    return execFileSync('getent', ['group', String(gid)], { encoding: 'utf8' }).split(':')[0] || null;
  } catch {
    return null;
  }
}

test('the control socket is 0600, or 0660 owned by control.socket_group; unsafe places and paths are refused', async (t) => {
  const dir = await tempDir(t);
  // Default: 0600, owned by this user.
  const plain = await socketGateway(t, join(dir, 'a'), {});
  await plain.start;
  const st = await stat(plain.socket);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.uid, process.getuid!());
  await plain.gateway.stop();

  // socket_group: 0660 and the group's gid (by name, as an operator writes it).
  const gid = process.getgid!();
  const name = groupOf(gid);
  const grouped = await socketGateway(t, join(dir, 'b'), { socket_group: name ?? String(gid) });
  await grouped.start;
  const gst = await stat(grouped.socket);
  assert.equal(gst.mode & 0o777, 0o660);
  assert.equal(gst.gid, gid);
  await grouped.gateway.stop();

  const refused = async (sub: string, control: Record<string, unknown>, re: RegExp, prepare?: (stateDir: string) => Promise<void>) => {
    const stateDir = join(dir, sub, 'state');
    await mkdir(stateDir, { recursive: true });
    await prepare?.(stateDir);
    const gw = await socketGateway(t, join(dir, sub), control);
    await assert.rejects(gw.start, (err: Error) => {
      assert.match(err.message, re);
      return true;
    });
    assert.equal(gw.gateway.state, 'stopped');
  };
  await refused('c', { socket_group: 'no-such-group-berth' }, /control\.socket_group "no-such-group-berth" is not a known group/);
  await refused('d', {}, /directory .*[/]d[/]state is world-writable/, (s) => chmod(s, 0o777));
  await refused('e', {}, /is a symlink/, (s) => symlink(join(s, 'elsewhere.sock'), join(s, 'control.sock')));
  await refused('f', {}, /exists and is not a socket/, (s) => writeFile(join(s, 'control.sock'), 'x'));
  // A live socket of another gateway is not taken over.
  await refused('g', {}, /another gateway is already running/, async (s) => {
    const srv = createServer().listen(join(s, 'control.sock'));
    t.after(() => new Promise<void>((r) => srv.close(() => r())));
    await new Promise((r) => srv.once('listening', r));
  });
  if (process.getuid!() === 0) {
    await refused('h', {}, /owned by another user \(uid 65534\)/, async (s) => {
      const srv = createServer().listen(join(s, 'control.sock'));
      t.after(() => new Promise<void>((r) => srv.close(() => r())));
      await new Promise((r) => srv.once('listening', r));
      await chown(join(s, 'control.sock'), 65534, 65534);
    });
  } else t.diagnostic('not root: the socket-owned-by-another-user case needs root to set up');
  // The socket a killed gateway left behind is dead: it is replaced.
  const stale = join(dir, 'i', 'state');
  await mkdir(stale, { recursive: true });
  const dead = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(join(stale, 'control.sock'))}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'ignore'] });
  await once(dead.stdout!, 'data');
  dead.kill('SIGKILL');
  await once(dead, 'exit');
  assert.ok((await lstat(join(stale, 'control.sock'))).isSocket());
  const revived = await socketGateway(t, join(dir, 'i'), {});
  await revived.start;
  assert.equal((await stat(revived.socket)).mode & 0o777, 0o600);
});

test('berth token hashes a token from stdin and makes new ones', async () => {
  const run = (args: string[], input: string) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const proc = spawn(process.execPath, [MAIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      proc.stdout.on('data', (c) => (stdout += c));
      proc.stderr.on('data', (c) => (stderr += c));
      proc.on('exit', (code) => resolve({ code, stdout, stderr }));
      proc.stdin.end(input);
    });
  const hashed = await run(['token', 'hash'], 'alice-token-1\n');
  assert.equal(hashed.code, 0, hashed.stderr);
  assert.equal(hashed.stdout.trim(), hashToken('alice-token-1'));
  const empty = await run(['token', 'hash'], '');
  assert.equal(empty.code, 2);
  assert.match(empty.stderr, /expected a token on stdin/);
  const spaced = await run(['token', 'hash'], 'two words');
  assert.equal(spaced.code, 2);
  const made = await run(['token', 'new', '--json'], '');
  assert.equal(made.code, 0, made.stderr);
  const { token, hash } = JSON.parse(made.stdout);
  assert.match(token, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(hash, hashToken(token));
  const unknown = await run(['token', 'burn'], '');
  assert.equal(unknown.code, 2);
});

test('berth dashboard proxies the socket on 127.0.0.1 for its own origin only', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'warn' }, apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND } } } } });
  const gw = await spawnGateway(t, file);
  const dash = spawnDashboard(t, gw.socket, ['--json']);
  const { url } = JSON.parse(await dash.firstLine());
  const port = Number(new URL(url).port);
  // The URL carries a one-time secret (issue #10): its first use sets the session cookie every later request needs.
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/\?token=[A-Za-z0-9_-]{43}$/);
  const login = await plainHttp({ port }, { path: new URL(url).pathname + new URL(url).search });
  assert.equal(login.status, 303);
  const cookie = String(login.headers['set-cookie']).split(';')[0];
  const http = (target: { port?: number }, opts: Parameters<typeof plainHttp>[1] = {}): Promise<HttpResult> => plainHttp(target, { ...opts, headers: { cookie, ...opts.headers } });
  const page = await http({ port }, { path: '/' });
  assert.equal(page.status, 200);
  assert.match(page.body, /<title>berth dashboard<\/title>/);
  assert.match(String(page.headers['content-security-policy']), /script-src 'self'/);
  assert.deepEqual((await http({ port }, { path: '/ui/session.json' })).json(), { login: 'none' });
  const who = await http({ port }, { path: '/v1/whoami', headers: { 'x-berth-user': 'mallory' } });
  assert.equal(who.status, 200);
  assert.equal(who.json().user, 'dash-user');
  assert.equal(who.json().role, 'admin');
  // Another name for this address (DNS rebinding) and another origin's changes are refused.
  assert.equal((await http({ port }, { path: '/v1/whoami', host: 'evil.example' })).status, 403);
  const csrf = await http({ port }, { method: 'PUT', path: '/v1/apps/shop/mode', headers: { origin: 'http://evil.example', 'content-type': 'text/plain' }, body: '{"mode":"maintenance"}' });
  assert.equal(csrf.status, 403);
  assert.equal((await gw.api('/v1/apps/shop')).mode, 'normal');
  const same = await http({ port }, { method: 'PUT', path: '/v1/apps/shop/mode', headers: { origin: `http://127.0.0.1:${port}`, 'content-type': 'application/json' }, body: '{"mode":"maintenance"}' });
  assert.equal(same.status, 200, same.body);
  const rows = (await gw.api('/v1/history?app=shop')).history;
  assert.equal(rows[0].action, 'mode');
  assert.equal(rows[0].user, 'dash-user');
  assert.equal(await dash.stop(), 0);
});
