/**
 * Cache flush end to end: `berth start` (a child process) deploys a release that changes 3 of 50 static
 * files, and a fake CDN (a real HTTP server) records the purges; Fast Purge goes to a fake Akamai that
 * checks every EdgeGrid signature itself. A flush never holds up or fails its deploy, is retried, and
 * survives a gateway killed with it pending.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';
import { startFakeAkamai } from '../helpers/fake-akamai.ts';

/** A CDN that records each purge (method and path) and answers what `status()` says. */
async function fakeCdn(t: TestContext, status: () => number = () => 200): Promise<{ base: string; purges: string[] }> {
  const purges: string[] = [];
  const server = createServer((req, res) => {
    const code = status();
    if (code === 200) purges.push(`${req.method} ${req.url}`);
    res.writeHead(code, code === 503 ? { 'retry-after': '1' } : {}).end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise((r) => {
    server.close(r);
    server.closeAllConnections();
  }));
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, purges };
}

/** An app source with 50 static files under public/ (10 of them under public/files/). */
async function staticSource(dir: string, name: string): Promise<string> {
  const src = await fixtureApp(dir, name);
  await mkdir(join(src, 'public', 'files'), { recursive: true });
  for (let i = 0; i < 40; i++) await writeFile(join(src, 'public', `asset-${i}.js`), `console.log(${i});\n`);
  for (let i = 0; i < 10; i++) await writeFile(join(src, 'public', 'files', `doc-${i}.txt`), `doc ${i}\n`);
  return src;
}

function appConfig(source: string, cacheFlush: Record<string, unknown>): Record<string, unknown> {
  return {
    shop: {
      source,
      processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } },
      health: { path: '/up', interval: '250ms' },
      routes: [{ path: '/static', static: 'public', cache: 'immutable' }, { path: '/', to: 'web' }],
      cache_flush: cacheFlush,
    },
  };
}

async function startWith(t: TestContext, dir: string, apps: Record<string, unknown>, env: Record<string, string> = {}, extra: Record<string, unknown> = {}): Promise<ChildGateway> {
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'info' }, apps, ...extra });
  const gw = await spawnGateway(t, file, { env });
  await untilReady(gw);
  return gw;
}

/** Changes 3 of the 50 files: one edited, one added, one removed (under files/). */
async function changeThree(v2: string): Promise<void> {
  await writeFile(join(v2, 'public', 'asset-7.js'), 'console.log("seven, edited");\n');
  await writeFile(join(v2, 'public', 'added.css'), 'body{}\n');
  await rm(join(v2, 'public', 'files', 'doc-3.txt'));
}

async function lastDeploy(gw: ChildGateway): Promise<any> {
  const [d] = (await gw.api('/v1/apps/shop/deploys')).deploys;
  return gw.api(`/v1/deploys/${d.id}`);
}

test('http: exactly the 3 changed paths are purged, times the templates of the rules that take them, and nothing else', async (t) => {
  const dir = await tempDir(t);
  const cdn = await fakeCdn(t);
  const v1 = await staticSource(dir, 'v1');
  const v2 = await staticSource(dir, 'v2');
  await changeThree(v2);
  const rules = {
    cdn1: { templates: [`${cdn.base}/a/{path}`, `${cdn.base}/b/{ttl}/{path}`], excludes: ['^/static/files/'] },
    cdn2: { templates: [`${cdn.base}/c`], includes: ['^/static/files/'] },
    off: { templates: [`${cdn.base}/never/{path}`] },
  };
  const gw = await startWith(t, dir, appConfig(v1, { provider: 'http', rules, enable: ['cdn1', 'cdn2'] }));
  const deployed = await runCli(['deploy', 'shop', v2, '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  const expected = [
    'PURGE /a/static/added.css',
    'PURGE /a/static/asset-7.js',
    'PURGE /b/365d/static/added.css',
    'PURGE /b/365d/static/asset-7.js',
    'PURGE /c/static/files/doc-3.txt',
  ];
  await waitFor(() => cdn.purges.length >= expected.length, { timeoutMs: 15_000, message: 'purges' });
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual([...cdn.purges].sort(), expected);
  const deploy = await waitFor(async () => {
    const d = await lastDeploy(gw);
    return d.events.some((e: any) => e.step === 'flush' && e.status === 'succeeded') ? d : null;
  }, { message: 'the flush recorded as done' });
  assert.equal(deploy.state, 'succeeded');
  const queued = deploy.events.find((e: any) => e.step === 'flush' && e.status === 'succeeded' && /queued/.test(e.message));
  assert.match(queued.message, /^3 changed path\(s\) -> 5 URL\(s\): flush f\d{14}-[0-9a-f]{6} queued$/);
  const history = (await gw.api('/v1/history?app=shop&action=flush')).history;
  assert.equal(history[0]?.outcome, 'ok', JSON.stringify(history));
  const metrics = (await http({ socketPath: gw.socket }, { path: '/metrics' })).body;
  assert.match(metrics, /berth_cache_flush_urls_total\{app="shop",outcome="purged"\} 5\b/);

  // By hand: the paths named, through the same rules.
  const manual = await runCli(['flush', 'shop', '/static/asset-1.js', '--socket', gw.socket]);
  assert.equal(manual.code, 0, manual.stderr);
  assert.match(manual.stdout, /flush f\d{14}-[0-9a-f]{6} queued: 2 URL\(s\)/);
  await waitFor(() => cdn.purges.includes('PURGE /a/static/asset-1.js') && cdn.purges.includes('PURGE /b/365d/static/asset-1.js'), { message: 'manual purge' });
  const refused = await runCli(['flush', 'shop', 'no-slash', '--socket', gw.socket]);
  assert.equal(refused.code, 2);
});

test('a flush that keeps failing never holds up or fails its deploy; it is retried, then given up, and history shows it', async (t) => {
  const dir = await tempDir(t);
  const cdn = await fakeCdn(t, () => 503);
  const v1 = await staticSource(dir, 'v1');
  const v2 = await staticSource(dir, 'v2');
  await changeThree(v2);
  const gw = await startWith(t, dir, appConfig(v1, { provider: 'http', rules: { cdn: { templates: [`${cdn.base}/{path}`] } }, retry_for: '3s' }));
  const started = Date.now();
  const deployed = await runCli(['deploy', 'shop', v2, '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  assert.ok(Date.now() - started < 10_000, 'the deploy did not wait for the flush');
  const failed = await waitFor(async () => (await gw.api('/v1/history?app=shop&action=flush')).history.find((h: any) => h.outcome === 'failed'), { timeoutMs: 20_000, message: 'the flush given up' });
  assert.match(failed.detail, /gave up: retry_for has passed/);
  const deploy = await lastDeploy(gw);
  assert.equal(deploy.state, 'succeeded');
  const attempts = deploy.events.filter((e: any) => e.step === 'flush' && e.status === 'failed');
  assert.ok(attempts.length >= 2, `each attempt is an event (${attempts.length})`);
  assert.match(attempts[0].message, /HTTP 503/);
});

test('a gateway killed with a flush pending finishes it after it starts again', async (t) => {
  const dir = await tempDir(t);
  let failing = true;
  const cdn = await fakeCdn(t, () => (failing ? 503 : 200));
  const v1 = await staticSource(dir, 'v1');
  const v2 = await staticSource(dir, 'v2');
  await changeThree(v2);
  const apps = appConfig(v1, { provider: 'http', rules: { cdn: { templates: [`${cdn.base}/{path}`] } } });
  const gw = await startWith(t, dir, apps);
  assert.equal((await runCli(['deploy', 'shop', v2, '--socket', gw.socket])).code, 0);
  await waitFor(async () => (await lastDeploy(gw)).events.some((e: any) => e.step === 'flush' && e.status === 'failed'), { message: 'a failed attempt' });
  gw.proc.kill('SIGKILL');
  await gw.exited;
  failing = false;
  const again = await startWith(t, dir, apps);
  await waitFor(() => cdn.purges.length === 3, { timeoutMs: 20_000, message: 'the resumed flush' });
  assert.deepEqual([...cdn.purges].sort(), ['PURGE /static/added.css', 'PURGE /static/asset-7.js', 'PURGE /static/files/doc-3.txt']);
  const history = await waitFor(async () => (await again.api('/v1/history?app=shop&action=flush')).history.find((h: any) => h.outcome === 'ok'), { message: 'recorded' });
  assert.match(history.detail, /succeeded/);
});

test('akamai: Fast Purge requests carry a valid EdgeGrid signature, 429 and 5xx are retried, ARLs and URLs go to their endpoints, and missing credentials skip', async (t) => {
  const dir = await tempDir(t);
  const secrets = { clientToken: 'akab-client-token-berth-000000000000', clientSecret: 'YmVydGgtdGVzdC1zZWNyZXQtZm9yLWZhc3QtcHVyZ2U=', accessToken: 'akab-access-token-berth-000000000000' };
  const akamai = await startFakeAkamai(t, secrets, { throttleFirst: 1, failFirst: 1, retryAfterSeconds: 1 });
  const v1 = await staticSource(dir, 'v1');
  const v2 = await staticSource(dir, 'v2');
  await changeThree(v2);
  const rules = {
    url: { templates: ['https://www.example.com/{path}'] },
    arl: { templates: ['S/=/123/4567/{ttl}/cdn.example.com/{path}'], ttl: '1h', includes: ['\\.js$'] },
  };
  const env = {
    BERTH_ENV: 'prod',
    BERTH_FASTPURGE_HOST_PROD: akamai.baseUrl,
    BERTH_FASTPURGE_CLIENT_TOKEN_PROD: secrets.clientToken,
    BERTH_FASTPURGE_CLIENT_SECRET_PROD: secrets.clientSecret,
    BERTH_FASTPURGE_ACCESS_TOKEN_PROD: secrets.accessToken,
  };
  // 2,000 pages flushed on every deploy: more than one Fast Purge body (50,000 bytes) can hold.
  const pages = Array.from({ length: 2000 }, (_, i) => `/pages/${String(i).padStart(4, '0')}`);
  const gw = await startWith(t, dir, appConfig(v1, { provider: 'akamai', rules, paths: pages }), env, { environments: { prod: {} } });
  assert.equal((await runCli(['deploy', 'shop', v2, '--socket', gw.socket])).code, 0);
  // Two flushes: the first start's (cache_flush.paths alone) and the deploy's.
  await waitFor(async () => (await gw.api('/v1/history?app=shop&action=flush')).history.filter((h: any) => h.outcome === 'ok').length >= 2, { timeoutMs: 20_000, message: 'both flushes done' });
  assert.ok(akamai.requests.every((r) => r.authorized), 'every request carried a valid signature');
  assert.deepEqual(akamai.requests.map((r) => r.status).slice(0, 2).sort(), [429, 503]);
  assert.deepEqual([...new Set(akamai.purged())].sort(), [
    'S/=/123/4567/1h/cdn.example.com/static/asset-7.js',
    ...pages.map((p) => `https://www.example.com${p}`),
    'https://www.example.com/static/added.css',
    'https://www.example.com/static/asset-7.js',
    'https://www.example.com/static/files/doc-3.txt',
  ].sort());
  const urlBatches = akamai.requests.filter((r) => r.path === '/ccu/v3/invalidate/url/production' && r.status === 201);
  assert.ok(urlBatches.length >= 2, `URLs went in batches (${urlBatches.length})`);
  assert.ok(akamai.requests.every((r) => r.status !== 413), 'no batch was over the body limit');
  assert.ok(akamai.requests.some((r) => r.path === '/ccu/v3/invalidate/arl/production' && r.status === 201));
  assert.ok(akamai.requests.some((r) => r.path === '/ccu/v3/invalidate/url/production' && r.status === 201));
  const logs = JSON.stringify(gw.logs) + gw.stderr();
  assert.ok(!logs.includes(secrets.clientSecret) && !logs.includes(secrets.accessToken), 'no credential in a log line');
  // Gateway secrets never reach the app.
  const appEnv = (await http({ port: gw.port }, { path: '/env' })).json().env;
  assert.deepEqual(Object.keys(appEnv).filter((k) => k.startsWith('BERTH_FASTPURGE')), []);
  const apiText = JSON.stringify(await gw.api('/v1/status')) + JSON.stringify(await gw.api('/v1/history?limit=100'));
  assert.ok(!apiText.includes(secrets.clientSecret) && !apiText.includes(secrets.accessToken), 'no credential in an API answer');

  // Without credentials: skipped with one log line, not an error.
  const dir2 = await tempDir(t);
  const w1 = await staticSource(dir2, 'v1');
  const w2 = await staticSource(dir2, 'v2');
  await changeThree(w2);
  const bare = await startWith(t, dir2, appConfig(w1, { provider: 'akamai', rules }));
  assert.equal((await runCli(['deploy', 'shop', w2, '--socket', bare.socket])).code, 0);
  const skipped = await waitFor(async () => (await bare.api('/v1/history?app=shop&action=flush')).history[0], { message: 'skipped' });
  assert.equal(skipped.outcome, 'refused');
  assert.match(skipped.detail, /skipped: no Fast Purge credentials: set BERTH_FASTPURGE_HOST, /);
  assert.equal(bare.logs.filter((l) => l.msg === 'cache flush skipped').length, 1);
  // The flush's events come after the deploy's own: every step is there, in order, numbered without a gap.
  const d = await lastDeploy(bare);
  assert.deepEqual(d.events.map((e: any) => e.seq), d.events.map((_: unknown, i: number) => i + 1));
  const steps = d.events.filter((e: any) => e.status !== 'started').map((e: any) => e.step);
  assert.deepEqual(steps.slice(-4), ['flush', 'prune', 'record', 'flush'], JSON.stringify(d.events.map((e: any) => [e.seq, e.step, e.status])));
});
