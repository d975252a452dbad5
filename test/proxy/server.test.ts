import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile, stat } from 'node:fs/promises';
import { Agent, createServer, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { BerthError } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { Proxy } from '../../src/proxy/server.ts';
import { RoutingTable } from '../../src/proxy/router.ts';
import type { ListenAddress } from '../../src/config/schema.ts';
import {
  appConfig,
  backend,
  berthConfig,
  entry,
  fetchRaw,
  gate,
  okHandler,
  processConfig,
  refusedAddress,
  route,
  startProxy,
  TestGeneration,
  waitFor,
} from './fixtures.ts';

function tcp(port: number): ListenAddress {
  return { kind: 'tcp', host: '127.0.0.1', port, text: `127.0.0.1:${port}`, tls: false };
}

test('404 when no app matches, HTML or JSON', async (t) => {
  const { url } = await startProxy(t, [entry(appConfig('shop', { hosts: ['shop.test'] }), null)]);
  const html = await fetchRaw(url, { headers: { host: 'other.test' } });
  assert.equal(html.status, 404);
  assert.equal(html.headers['x-berth-reason'], 'no-route');
  assert.match(html.text, /404 Not Found/);
  assert.ok(!html.text.includes('other.test'), 'the page does not echo request data');
  const json = await fetchRaw(url, { headers: { host: 'other.test', accept: 'application/json' } });
  assert.deepEqual(JSON.parse(json.text), { error: { status: 404, reason: 'no-route' } });
});

test('503 with Retry-After while the app has no active generation', async (t) => {
  const { url } = await startProxy(t, [entry(appConfig('shop'), null)]);
  const r = await fetchRaw(url);
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-reason'], 'no-active-generation');
  assert.ok(Number(r.headers['retry-after']) >= 1);
});

test('503 when the generation lacks the routed pool or it has no instances', async (t) => {
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [await refusedAddress()]);
  const { url } = await startProxy(t, [entry(appConfig('shop', { routes: [route('/', 'api')] }), gen)]);
  const r = await fetchRaw(url);
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-reason'], 'no-pool');
  // A pool with no instances answers at once rather than after the queue timeout.
  gen.addPool('api', 4, []);
  const empty = await fetchRaw(url);
  assert.equal(empty.status, 503);
  assert.equal(empty.headers['x-berth-reason'], 'no-pool');
});

test('static routes never reach the app; upgrades other than WebSocket are served as plain requests', async (t) => {
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const be = await backend(t, okHandler('ok'));
  gen.addPool('web', 1, [be.address]);
  const { url, port } = await startProxy(t, [entry(appConfig('shop', { routes: [route('/'), route('/assets', null, 'public')] }), gen)]);
  // The release dir does not exist: static.test.ts covers serving; here only that the app is not asked.
  assert.equal((await fetchRaw(`${url}/assets/app.css`)).status, 404);
  assert.equal(be.requests.length, 0);
  // Any other upgrade is served as a plain request (WebSockets: websocket.test.ts).
  const h2c = connect(port, '127.0.0.1');
  t.after(() => h2c.destroy());
  h2c.write('GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n');
  let text = '';
  for await (const chunk of h2c) text += chunk;
  assert.match(text, /^HTTP\/1\.1 200/);
  assert.equal(be.requests.length, 1);
  assert.equal(be.requests[0].headers.upgrade, undefined);
  assert.equal(be.requests[0].headers['http2-settings'], undefined);
});

test('pinning: a request finishes on the generation it arrived on', async (t) => {
  const slow = gate();
  const oldBe = await backend(t, (req, res) => {
    if (req.url === '/slow') void slow.promise.then(() => res.end('old slow'));
    else res.end('old');
  });
  const newBe = await backend(t, (req, res) => res.end(`new ${req.headers['x-berth-release']}`));
  const config = appConfig('shop');
  const old = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  old.addPool('web', 4, [oldBe.address]);
  const next = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2' });
  next.addPool('web', 4, [newBe.address]);
  const { url, proxy } = await startProxy(t, [entry(config, old)]);
  const pending = fetchRaw(`${url}/slow`);
  await waitFor(() => oldBe.requests.length === 1, 'slow request at the old generation');
  proxy.setTable(new RoutingTable([entry(config, next)]));
  assert.equal((await fetchRaw(url)).text, 'new r2');
  assert.equal(old.inFlight, 1);
  slow.open();
  assert.equal((await pending).text, 'old slow');
  assert.equal(old.inFlight, 0);
  assert.equal(oldBe.requests.length, 1);
});

test('setTable never touches sockets: a keep-alive connection survives table swaps', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const config = appConfig('shop');
  const { url, proxy } = await startProxy(t, [entry(config, gen)]);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const sockets = new Set<unknown>();
  const get = () =>
    new Promise<number>((resolve, reject) => {
      const req = httpRequest(url, { agent }, (res) => {
        sockets.add(res.socket);
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end();
    });
  assert.equal(await get(), 200);
  proxy.setTable(new RoutingTable([entry(config, null)]));
  assert.equal(await get(), 503);
  proxy.setTable(new RoutingTable([entry(config, gen)]));
  assert.equal(await get(), 200);
  assert.equal(sockets.size, 1);
});

test('setConfig applies internal_prefix and trusted_proxy_count', async (t) => {
  const be = await backend(t, (req, res) => res.end(String(req.headers['x-forwarded-proto'])));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const app = appConfig('shop');
  const { url, proxy } = await startProxy(t, [entry(app, gen)]);
  assert.equal((await fetchRaw(`${url}/_berth/health`)).text, '{"status":"ok"}');
  assert.equal((await fetchRaw(url, { headers: { 'x-forwarded-proto': 'https' } })).text, 'http');
  proxy.setConfig(berthConfig([app], { internalPrefix: '/_gw', trustedProxyCount: 1 }));
  assert.equal((await fetchRaw(`${url}/_gw/health`)).text, '{"status":"ok"}');
  assert.equal((await fetchRaw(`${url}/_berth/health`)).text, 'http', 'the old prefix now reaches the app');
  assert.equal((await fetchRaw(url, { headers: { 'x-forwarded-proto': 'https' } })).text, 'https');
});

test('the admission limit is the running pool\'s size: a config reload that says otherwise does not change it', async (t) => {
  const held: (() => void)[] = [];
  const be = await backend(t, (_req, res) => held.push(() => res.end('ok')));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [be.address]);
  const one = appConfig('shop', { processes: { web: processConfig('web', 1, 1) } });
  const { url, proxy } = await startProxy(t, [entry(one, gen)]);
  const replies = [fetchRaw(url), fetchRaw(url), fetchRaw(url)];
  await waitFor(() => held.length === 1 && proxy.queueDepth('shop') === 2, 'limit 1');
  // A config reload that says 4 does not make the running pool (1 x 1) take more: its deploy would.
  const four = appConfig('shop', { processes: { web: processConfig('web', 1, 4) } });
  proxy.setConfig(berthConfig([four]));
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(held.length, 1, 'the running pool keeps its limit');
  assert.equal(proxy.queueDepth('shop'), 2);
  // Each answer frees the one slot the pool has: the queue goes through it one by one.
  for (let answered = 1; answered <= 3; answered++) {
    await waitFor(() => held.length === answered, `request ${answered} admitted`);
    held[answered - 1]();
  }
  for (const r of await Promise.all(replies)) assert.equal(r.status, 200);
});

test('an absolute-form request target is routed by its authority', async (t) => {
  const be = await backend(t, (req, res) => res.end(`${req.url} ${req.headers['x-forwarded-host']}`));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const { port } = await startProxy(t, [entry(appConfig('shop', { hosts: ['shop.test'] }), gen)]);
  const sock = connect(port, '127.0.0.1');
  t.after(() => sock.destroy());
  sock.write('GET http://shop.test/abs?x=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n');
  let text = '';
  for await (const chunk of sock) text += chunk;
  assert.match(text, /^HTTP\/1\.1 200/);
  assert.match(text, /\/abs\?x=1 shop\.test/);
});

test('graceful stop: refuses new connections, finishes in-flight and queued requests, then resolves', async (t) => {
  const release = gate();
  const be = await backend(t, (req, res) => void release.promise.then(() => res.end(`done ${req.url}`)));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [be.address]);
  const { url, proxy, port } = await startProxy(t, [entry(appConfig('shop', { processes: { web: processConfig('web', 1, 1) } }), gen)]);
  const running = fetchRaw(`${url}/a`);
  const queued = fetchRaw(`${url}/b`);
  await waitFor(() => be.requests.length === 1 && proxy.queueDepth('shop') === 1, 'one running, one queued');
  let stopped = false;
  const stopping = proxy.stop(10_000).then(() => (stopped = true));
  await waitFor(() => proxy.state === 'stopping', 'stopping');
  await assert.rejects(fetchRaw(`http://127.0.0.1:${port}/c`), /ECONNREFUSED/);
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(stopped, false, 'stop waits for in-flight requests');
  release.open();
  const [a, b] = await Promise.all([running, queued]);
  assert.equal(a.text, 'done /a');
  assert.equal(a.headers.connection, 'close');
  assert.equal(b.text, 'done /b');
  await stopping;
  assert.equal(proxy.state, 'stopped');
  assert.equal(proxy.inFlight, 0);
});

test('stop gives up at the deadline and closes what is left', async (t) => {
  const be = await backend(t, () => {
    /* never answers */
  });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 4, [be.address]);
  const { url, proxy } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const hung = fetchRaw(url);
  hung.catch(() => {});
  await waitFor(() => be.requests.length === 1, 'request at the backend');
  const began = Date.now();
  await proxy.stop(200);
  assert.ok(Date.now() - began >= 150, 'waited for the deadline');
  await assert.rejects(hung);
  await waitFor(() => inst.inFlight === 0, 'upstream released');
  assert.deepEqual(inst.mistakes, []);
});

test('stop and destroy before start, and stop twice, are harmless', async () => {
  const p = new Proxy({ config: berthConfig([]), logger: silentLogger() });
  await p.stop(100);
  assert.equal(p.state, 'stopped');
  await assert.rejects(p.start(), BerthError);
  const q = new Proxy({ config: berthConfig([]), logger: silentLogger() });
  q.destroy();
  await q.start().catch(() => {});
  const r = new Proxy({ config: berthConfig([]), logger: silentLogger() });
  await r.start();
  await Promise.all([r.stop(100), r.stop(100)]);
  assert.equal(r.state, 'stopped');
});

test('a listener that cannot bind fails start with the address, and closes the others', async (t) => {
  const busy = createServer();
  t.after(() => busy.close());
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const busyPort = (busy.address() as AddressInfo).port;
  const free = await refusedAddress();
  const freePort = free.kind === 'tcp' ? free.port : 0;
  const p = new Proxy({ config: berthConfig([], { listen: [tcp(freePort), tcp(busyPort)] }), logger: silentLogger() });
  t.after(() => p.destroy());
  await assert.rejects(p.start(), (err: unknown) => {
    assert.ok(err instanceof BerthError);
    assert.equal(err.code, 'BERTH_E_LISTEN');
    assert.equal(err.message, `cannot listen on 127.0.0.1:${busyPort}: address in use`);
    return true;
  });
  assert.equal(p.state, 'stopped');
  await assert.rejects(fetchRaw(`http://127.0.0.1:${freePort}/`), /ECONNREFUSED/, 'the first listener was closed');
});

test('listens on several addresses, port 0 resolved', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const app = appConfig('shop');
  const p = new Proxy({ config: berthConfig([app], { listen: [tcp(0), tcp(0)] }), logger: silentLogger() });
  t.after(() => p.destroy());
  p.setTable(new RoutingTable([entry(app, gen)]));
  await p.start();
  const addrs = p.addresses();
  assert.equal(addrs.length, 2);
  for (const a of addrs) {
    assert.equal(a.kind, 'tcp');
    if (a.kind !== 'tcp') continue;
    assert.ok(a.port > 0);
    assert.equal(a.text, `127.0.0.1:${a.port}`);
    assert.equal((await fetchRaw(`http://127.0.0.1:${a.port}/`)).text, 'ok');
  }
});

test('unix socket listener, replacing a stale socket file but not a live one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-proxy-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'front.sock');
  // A process that died holding the socket leaves its file behind.
  const child = spawn(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => console.log('up'))", path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => child.kill('SIGKILL'));
  await once(child.stdout!, 'data');
  child.kill('SIGKILL');
  await once(child, 'exit');
  assert.ok((await stat(path)).isSocket(), 'stale socket file is there');

  const be = await backend(t, (req, res) => res.end(String(req.headers['x-forwarded-for'])));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const app = appConfig('shop');
  const listen: ListenAddress[] = [{ kind: 'unix', path, text: `unix:${path}`, tls: false }];
  const p = new Proxy({ config: berthConfig([app], { listen }), logger: silentLogger() });
  t.after(() => p.destroy());
  p.setTable(new RoutingTable([entry(app, gen)]));
  await p.start();
  assert.deepEqual(p.addresses(), listen);
  const r = await fetchRaw('http://localhost/', { socketPath: path });
  assert.equal(r.status, 200);
  assert.equal(r.text, 'unix:');

  // A live socket is not stolen.
  const other = new Proxy({ config: berthConfig([app], { listen }), logger: silentLogger() });
  t.after(() => other.destroy());
  await assert.rejects(other.start(), { code: 'BERTH_E_LISTEN', message: `cannot listen on unix:${path}: address in use` });
  // Nor is a regular file.
  const file = join(dir, 'file.sock');
  await writeFile(file, 'keep me');
  const third = new Proxy({ config: berthConfig([app], { listen: [{ kind: 'unix', path: file, text: `unix:${file}`, tls: false }] }), logger: silentLogger() });
  await assert.rejects(third.start(), { code: 'BERTH_E_LISTEN' });
  assert.ok((await stat(file)).isFile());
  await p.stop(1000);
});
