import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorPages } from '../../src/proxy/error-pages.ts';
import { DEFAULT_MAINTENANCE_RETRY_AFTER_S, isSafeMethod, Modes } from '../../src/proxy/modes.ts';
import { RoutingTable, type ModeState } from '../../src/proxy/router.ts';
import type { AppConfig } from '../../src/config/schema.ts';
import { appConfig, backend, entry, fetchRaw, gate, route, startProxy, TestGeneration, waitFor, type Backend } from './fixtures.ts';

/** A backend that answers with the X-Berth-Mode header it received (or "none"). */
async function modeEcho(t: TestContext): Promise<Backend> {
  return backend(t, (req, res) => {
    req.resume();
    req.on('end', () => res.end(`app saw ${req.headers['x-berth-mode'] ?? 'none'}`));
  });
}

async function releaseDir(t: TestContext, files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-modes-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return dir;
}

async function setup(t: TestContext, mode: Partial<ModeState>, over: Partial<AppConfig> = {}, dir = '/nonexistent') {
  const be = await modeEcho(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: dir });
  gen.addPool('web', 8, [be.address]);
  const config = appConfig('shop', over);
  const running = await startProxy(t, [entry(config, gen, mode)]);
  return { ...running, be, gen, config };
}

test('refuses: maintenance all but static routes; read-only every unsafe method; normal nothing', () => {
  const modes = new Modes(new ErrorPages());
  const m = (mode: ModeState['mode']): ModeState => ({ mode, message: null, retryAfter: null });
  for (const method of ['GET', 'POST', 'DELETE']) {
    assert.equal(modes.refuses(m('normal'), method, false), false);
    assert.equal(modes.refuses(m('maintenance'), method, false), true);
  }
  assert.equal(modes.refuses(m('maintenance'), 'GET', true), false);
  for (const method of ['GET', 'HEAD', 'OPTIONS', 'TRACE']) assert.equal(modes.refuses(m('read-only'), method, false), false, method);
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'PROPFIND', 'MKCOL', undefined]) assert.equal(modes.refuses(m('read-only'), method, false), true, String(method));
  assert.equal(modes.refuses(m('read-only'), 'POST', true), true);
  assert.equal(isSafeMethod('get'), false, 'methods are case-sensitive');
});

test('maintenance: 503 with Retry-After and the built-in page showing the message, escaped; JSON on request', async (t) => {
  const { url, be } = await setup(t, { mode: 'maintenance', message: 'Upgrading <db> & more' });
  for (const method of ['GET', 'POST', 'DELETE']) {
    const r = await fetchRaw(`${url}/x`, { method, body: method === 'GET' ? null : 'data' });
    assert.equal(r.status, 503, method);
    assert.equal(r.headers['retry-after'], String(DEFAULT_MAINTENANCE_RETRY_AFTER_S));
    assert.equal(r.headers['x-berth-mode'], 'maintenance');
    assert.equal(r.headers['x-berth-reason'], 'maintenance');
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.match(r.text, /Down for maintenance/);
    assert.match(r.text, /Upgrading &lt;db&gt; &amp; more/);
  }
  const json = await fetchRaw(`${url}/api`, { headers: { accept: 'application/json' } });
  assert.equal(json.headers['content-type'], 'application/json');
  assert.deepEqual(JSON.parse(json.text), { error: { status: 503, reason: 'maintenance', message: 'Upgrading <db> & more' } });
  const head = await fetchRaw(`${url}/`, { method: 'HEAD' });
  assert.equal(head.status, 503);
  assert.equal(head.body.length, 0);
  assert.equal(be.requests.length, 0, 'the app sees nothing');
});

test('maintenance: the operator retry-after; no message shows the default text', async (t) => {
  const { url } = await setup(t, { mode: 'maintenance', retryAfter: 900 });
  const r = await fetchRaw(url);
  assert.equal(r.headers['retry-after'], '900');
  assert.match(r.text, /down for maintenance\. Please check back soon/);
  assert.deepEqual(JSON.parse((await fetchRaw(url, { headers: { accept: 'application/json' } })).text), { error: { status: 503, reason: 'maintenance' } });
});

test('maintenance: the app page from the pinned release, as a template, read once per release', async (t) => {
  const dir1 = await releaseDir(t, { 'maintenance.html': '<p>r1: {{message}} ({{ retry_after }}s) {{status}} {{nope}}</p>' });
  const dir2 = await releaseDir(t, { 'maintenance.html': '<p>r2 static page</p>' });
  const over = { pages: { maintenance: 'maintenance.html', readOnly: null, error: null } };
  const { url, proxy, config, gen } = await setup(t, { mode: 'maintenance', message: 'a <b>', retryAfter: 30 }, over, dir1);
  const r = await fetchRaw(url);
  assert.equal(r.status, 503);
  assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
  assert.equal(r.text, '<p>r1: a &lt;b&gt; (30s) 503 {{nope}}</p>');
  // Read once: a change on disk is not seen (releases are immutable).
  await writeFile(join(dir1, 'maintenance.html'), 'changed');
  assert.match((await fetchRaw(url)).text, /^<p>r1:/);
  // JSON clients still get JSON.
  assert.equal(JSON.parse((await fetchRaw(url, { headers: { accept: 'application/json' } })).text).error.reason, 'maintenance');
  // Another release, another page; bytes without placeholders are sent as they are.
  const gen2 = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2', releaseDir: dir2 });
  gen2.addPool('web', 8, gen.instances().map((i) => i.address));
  proxy.setTable(new RoutingTable([entry(config, gen2, { mode: 'maintenance', message: null, retryAfter: null })]));
  assert.equal((await fetchRaw(url)).text, '<p>r2 static page</p>');
  // No such file in the release: the built-in page.
  const gen3 = new TestGeneration({ id: 'shop#3', app: 'shop', releaseId: 'r3', releaseDir: dir2 });
  proxy.setTable(new RoutingTable([entry({ ...config, pages: { maintenance: 'missing.html', readOnly: null, error: null } }, gen3, { mode: 'maintenance' })]));
  assert.match((await fetchRaw(url)).text, /Down for maintenance/);
});

test('read-only: writes get 503 with X-Berth-Mode and the read-only page; safe methods pass with the header both ways', async (t) => {
  const dir = await releaseDir(t, { 'ro.html': '<p>read only: {{message}}</p>' });
  const over = { pages: { maintenance: null, readOnly: 'ro.html', error: null } };
  const { url, be } = await setup(t, { mode: 'read-only', message: 'migrating' }, over, dir);
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'PROPFIND']) {
    const r = await fetchRaw(`${url}/items/1`, { method, body: 'x' });
    assert.equal(r.status, 503, method);
    assert.equal(r.headers['x-berth-mode'], 'read-only');
    assert.equal(r.headers['x-berth-reason'], 'read-only');
    assert.equal(r.headers['retry-after'], undefined, 'no Retry-After unless the operator set one');
    assert.equal(r.text, '<p>read only: migrating</p>');
  }
  assert.equal(be.requests.length, 0);
  const json = await fetchRaw(`${url}/items/1`, { method: 'POST', headers: { accept: 'application/json' } });
  assert.deepEqual(JSON.parse(json.text), { error: { status: 503, reason: 'read-only', message: 'migrating' } });
  for (const method of ['GET', 'HEAD', 'OPTIONS']) {
    const r = await fetchRaw(`${url}/items/1`, { method });
    assert.equal(r.status, 200, method);
    assert.equal(r.headers['x-berth-mode'], 'read-only', method);
    if (method === 'GET') assert.equal(r.text, 'app saw read-only');
  }
  assert.equal(be.requests.length, 3);
});

test('read-only with a retry-after sends it; the built-in read-only page', async (t) => {
  const { url } = await setup(t, { mode: 'read-only', retryAfter: 120 });
  const r = await fetchRaw(url, { method: 'POST' });
  assert.equal(r.status, 503);
  assert.equal(r.headers['retry-after'], '120');
  assert.match(r.text, /Read-only for now/);
});

test('normal: a client cannot claim X-Berth-Mode, and responses carry none', async (t) => {
  const { url } = await setup(t, { mode: 'normal' });
  const r = await fetchRaw(url, { headers: { 'x-berth-mode': 'read-only' } });
  assert.equal(r.text, 'app saw none');
  assert.equal(r.headers['x-berth-mode'], undefined);
});

test('a switch applies from the next request and never changes one in flight', async (t) => {
  const slow = gate();
  const be = await backend(t, (req, res) => {
    req.resume();
    const answer = () => res.end(`${req.method} saw ${req.headers['x-berth-mode'] ?? 'none'}`);
    if (req.url === '/slow') void slow.promise.then(answer);
    else answer();
  });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 8, [be.address]);
  const config = appConfig('shop', { routes: [route('/')] });
  const { url, proxy } = await startProxy(t, [entry(config, gen, { mode: 'read-only' })]);
  const inFlightGet = fetchRaw(`${url}/slow`);
  await waitFor(() => be.requests.length === 1, 'the GET at the app');
  proxy.setTable(new RoutingTable([entry(config, gen, { mode: 'maintenance' })]));
  assert.equal((await fetchRaw(`${url}/now`)).status, 503);
  proxy.setTable(new RoutingTable([entry(config, gen, { mode: 'normal' })]));
  const post = fetchRaw(`${url}/slow`, { method: 'POST', body: 'x' });
  await waitFor(() => be.requests.length === 2, 'the POST at the app');
  proxy.setTable(new RoutingTable([entry(config, gen, { mode: 'read-only' })]));
  slow.open();
  const g = await inFlightGet;
  assert.equal(g.status, 200);
  assert.equal(g.text, 'GET saw read-only');
  assert.equal(g.headers['x-berth-mode'], 'read-only', 'the response keeps the mode of its arrival');
  const p = await post;
  assert.equal(p.status, 200);
  assert.equal(p.text, 'POST saw none');
  assert.equal(p.headers['x-berth-mode'], undefined);
  assert.equal((await fetchRaw(`${url}/slow`, { method: 'POST' })).status, 503);
});
