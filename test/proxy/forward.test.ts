import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, createServer, request as httpRequest } from 'node:http';
import {
  appConfig,
  backend,
  berthConfig,
  captureLogger,
  entry,
  fetchRaw,
  okHandler,
  openRequest,
  refusedAddress,
  startProxy,
  TestGeneration,
  waitFor,
} from './fixtures.ts';

function generation(id = 'shop#1', releaseId = '20250101000000-aaaaaa', releaseDir?: string): TestGeneration {
  return new TestGeneration({ id, app: 'shop', releaseId, releaseDir });
}

test('the backend sees forwarding headers; hop-by-hop headers are stripped both ways', async (t) => {
  const be = await backend(t, (req, res) => {
    res.writeHead(200, {
      'content-type': 'application/json',
      connection: 'x-hop-out',
      'x-hop-out': 'secret',
      'keep-alive': 'timeout=77',
      'x-app': 'yes',
    });
    res.end(JSON.stringify(req.headers));
  });
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const shop = appConfig('shop');
  // X-Berth-Release on responses is off unless public_details is on.
  const { url, port } = await startProxy(t, [entry(shop, gen)], { config: berthConfig([shop], { publicDetails: true }) });
  const before = Date.now();
  const r = await fetchRaw(`${url}/path?q=1`, {
    headers: {
      host: 'shop.test:8080',
      'x-forwarded-for': '198.51.100.1',
      'x-forwarded-proto': 'https',
      connection: 'keep-alive, x-hop-in',
      'x-hop-in': 'drop me',
      'keep-alive': 'timeout=9',
      te: 'trailers',
      'proxy-connection': 'keep-alive',
      'x-request-start': 't=1',
      'x-berth-release': 'forged',
      'x-custom': 'kept',
    },
  });
  assert.equal(r.status, 200);
  const seen = JSON.parse(r.text) as Record<string, string>;
  assert.equal(seen.host, 'shop.test:8080', 'Host passes through unchanged');
  assert.equal(seen['x-forwarded-for'], '198.51.100.1, 127.0.0.1');
  assert.equal(seen['x-forwarded-proto'], 'http', 'untrusted incoming proto is replaced');
  assert.equal(seen['x-forwarded-host'], 'shop.test:8080');
  assert.equal(seen['x-berth-release'], '20250101000000-aaaaaa');
  assert.equal(seen['x-custom'], 'kept');
  const start = Number(/^t=(\d+)$/.exec(seen['x-request-start'])?.[1]);
  assert.ok(start >= before && start <= Date.now(), `x-request-start ${seen['x-request-start']}`);
  for (const h of ['x-hop-in', 'te', 'proxy-connection', 'keep-alive', 'upgrade', 'transfer-encoding']) {
    assert.equal(seen[h], undefined, `${h} must not reach the backend`);
  }
  assert.equal(be.requests[0].url, '/path?q=1');
  assert.equal(r.headers['x-app'], 'yes');
  assert.equal(r.headers['x-hop-out'], undefined, 'headers named by Connection are stripped from the response');
  assert.notEqual(r.headers['keep-alive'], 'timeout=77', 'the backend keep-alive header is not passed on');
  assert.equal(r.headers['x-request-id'], seen['x-request-id']);
  assert.equal(r.headers['x-berth-release'], '20250101000000-aaaaaa', 'the response names the release that answered');
  assert.ok(port > 0);
});

test('X-Forwarded-Proto is kept from a trusted proxy', async (t) => {
  const be = await backend(t, (req, res) => res.end(JSON.stringify(req.headers)));
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const app = appConfig('shop');
  const { url } = await startProxy(t, [entry(app, gen)], { config: berthConfig([app], { trustedProxyCount: 1 }) });
  const seen = JSON.parse((await fetchRaw(url, { headers: { 'x-forwarded-proto': 'https' } })).text);
  assert.equal(seen['x-forwarded-proto'], 'https');
  assert.equal(seen['x-forwarded-for'], '127.0.0.1');
});

test('X-Request-Id: a valid one is kept, an invalid or missing one is generated', async (t) => {
  const be = await backend(t, (req, res) => res.end(String(req.headers['x-request-id'])));
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);

  const kept = await fetchRaw(url, { headers: { 'x-request-id': 'trace-123/abc' } });
  assert.equal(kept.text, 'trace-123/abc');
  assert.equal(kept.headers['x-request-id'], 'trace-123/abc');

  const bad = await fetchRaw(url, { headers: { 'x-request-id': 'has spaces <x>' } });
  assert.notEqual(bad.text, 'has spaces <x>');
  assert.match(bad.text, /^[A-Za-z0-9._:\-/+=]{1,200}$/);
  assert.equal(bad.headers['x-request-id'], bad.text);

  const a = await fetchRaw(url);
  const b = await fetchRaw(url);
  assert.equal(a.headers['x-request-id'], a.text);
  assert.notEqual(a.text, b.text);
});

test('POST bodies stream through both ways, including a multi-MB body', async (t) => {
  const be = await backend(t, (req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    req.pipe(res);
  });
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);

  const small = await fetchRaw(url, { method: 'POST', body: 'hello', headers: { 'content-type': 'text/plain' } });
  assert.equal(small.text, 'hello');

  // 16 MiB sent chunked (no Content-Length), compared by hash.
  const chunk = Buffer.alloc(64 * 1024);
  const hash = createHash('sha256');
  async function* body(): AsyncIterable<Buffer> {
    for (let i = 0; i < 256; i++) {
      chunk.fill(i % 251);
      hash.update(chunk);
      yield Buffer.from(chunk);
    }
  }
  const big = await fetchRaw(url, { method: 'PUT', body: body() });
  assert.equal(big.status, 200);
  assert.equal(big.body.length, 16 * 1024 * 1024);
  assert.equal(createHash('sha256').update(big.body).digest('hex'), hash.digest('hex'));
  assert.equal(gen.instances()[0].inFlight, 0);
});

test('upstream connections are kept alive and reused', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  for (let i = 0; i < 20; i++) assert.equal((await fetchRaw(url)).text, 'ok');
  assert.equal(be.requests.length, 20);
  assert.equal(be.connections, 1, 'sequential requests share one backend connection');
  // Concurrent requests open at most as many connections as run at once.
  await Promise.all(Array.from({ length: 5 }, () => fetchRaw(url)));
  assert.ok(be.connections <= 5, `connections: ${be.connections}`);
});

test('a refused instance is retried once on another: no client errors', async (t) => {
  const good = await backend(t, okHandler('good'));
  const dead = await backend(t, okHandler('dead'));
  const gen = generation();
  const [deadInst, goodInst] = gen.addPool('web', 8, [dead.address, good.address]);
  // Closed after registration: the supervisor still shows it as ready.
  await dead.close();
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const replies = await Promise.all(
    Array.from({ length: 20 }, (_, i) => fetchRaw(url, { method: i % 2 ? 'GET' : 'HEAD' })),
  );
  for (const r of replies) assert.equal(r.status, 200);
  assert.ok(deadInst.served > 0, 'some requests went to the dead instance first');
  assert.equal(goodInst.served, 20);
  assert.equal(deadInst.inFlight, 0);
  assert.equal(goodInst.inFlight, 0);
  assert.deepEqual([...deadInst.mistakes, ...goodInst.mistakes], []);
});

test('an idempotent request whose connection breaks before any response byte is retried once', async (t) => {
  // The first instance dies with the request in hand, as under kill -9.
  const crashing = await backend(t, (req) => req.socket.destroy());
  const good = await backend(t, (req, res) => res.end(`good ${req.method}`));
  const gen = generation();
  const [crashInst, goodInst] = gen.addPool('web', 8, [crashing.address, good.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const r = await fetchRaw(url);
  assert.equal(r.status, 200);
  assert.equal(r.text, 'good GET');
  assert.equal(crashing.requests.length, 1, 'the first attempt reached the crashing instance');
  assert.equal(crashInst.served + goodInst.served, 2);
  // Not retried: a request with a body, and a second failure.
  const post = await fetchRaw(url, { method: 'POST', body: 'x' });
  assert.equal(post.status, 502);
  assert.equal(good.requests.length, 1);
  const both = generation('shop#2');
  both.addPool('web', 8, [crashing.address, crashing.address]);
  const { url: url2 } = await startProxy(t, [entry(appConfig('shop'), both)]);
  const before = crashing.requests.length;
  assert.equal((await fetchRaw(url2)).status, 502);
  assert.equal(crashing.requests.length - before, 2, 'one retry, not more');
});

test('a POST is not retried: 502', async (t) => {
  const good = await backend(t, okHandler('good'));
  const gen = generation();
  // Pool.pick takes the first of equally idle instances, so the refused one is tried first.
  const [deadInst, goodInst] = gen.addPool('web', 8, [await refusedAddress(), good.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const r = await fetchRaw(url, { method: 'POST', body: 'x' });
  assert.equal(r.status, 502);
  assert.equal(r.headers['x-berth-reason'], 'upstream-unreachable');
  assert.equal(deadInst.served, 1);
  assert.equal(goodInst.served, 0);
  assert.equal(good.requests.length, 0);
});

test('502 when every instance refuses; HTML or JSON by Accept; the app error page when set', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-proxy-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'error.html'), '<h1>shop is down</h1>');
  const gen = generation('shop#1', 'r1', dir);
  const insts = gen.addPool('web', 8, [await refusedAddress(), await refusedAddress()]);
  const plain = generation('plain#1', 'r2');
  plain.addPool('web', 8, [await refusedAddress()]);
  const { url } = await startProxy(t, [
    entry(appConfig('shop', { hosts: ['shop.test'], pages: { maintenance: null, readOnly: null, error: 'error.html' } }), gen),
    entry(appConfig('plain', { hosts: ['plain.test'] }), plain),
  ]);

  const html = await fetchRaw(url, { headers: { host: 'plain.test', accept: 'text/html' } });
  assert.equal(html.status, 502);
  assert.match(String(html.headers['content-type']), /text\/html/);
  assert.match(html.text, /502 Bad Gateway/);
  assert.ok(html.headers['x-request-id']);

  const json = await fetchRaw(url, { headers: { host: 'plain.test', accept: 'application/json' } });
  assert.equal(json.status, 502);
  assert.deepEqual(JSON.parse(json.text), { error: { status: 502, reason: 'upstream-unreachable' } });

  const page = await fetchRaw(url, { headers: { host: 'shop.test', accept: 'text/html,*/*' } });
  assert.equal(page.status, 502);
  assert.equal(page.text, '<h1>shop is down</h1>');
  // Cached per release: still served after the file is gone.
  await rm(join(dir, 'error.html'));
  assert.equal((await fetchRaw(url, { headers: { host: 'shop.test' } })).text, '<h1>shop is down</h1>');

  for (const i of insts) assert.equal(i.inFlight, 0);
});

test('a missing or escaping app error page falls back to the built-in one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-proxy-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const release = join(dir, 'release');
  await mkdir(release);
  await writeFile(join(dir, 'outside.html'), 'outside');
  const gen = generation('shop#1', 'r1', release);
  gen.addPool('web', 8, [await refusedAddress()]);
  const page = (error: string) => ({ maintenance: null, readOnly: null, error });
  const { url } = await startProxy(t, [
    entry(appConfig('escape', { hosts: ['escape.test'], pages: page('../outside.html') }), gen),
    entry(appConfig('missing', { hosts: ['missing.test'], pages: page('nope.html') }), gen),
  ]);
  for (const host of ['escape.test', 'missing.test']) {
    const r = await fetchRaw(url, { headers: { host } });
    assert.equal(r.status, 502, host);
    assert.match(r.text, /502 Bad Gateway/, host);
    assert.ok(!r.text.includes('outside'), 'a page outside the release is never read');
  }
});

test('504 when the backend sends no headers within timeouts.headers', async (t) => {
  const be = await backend(t, () => {
    /* never answers */
  });
  const gen = generation();
  const [inst] = gen.addPool('web', 8, [be.address]);
  const app = appConfig('shop', { timeouts: { headersMs: 200, drainMs: 1000, stopMs: 1000 } });
  const { url } = await startProxy(t, [entry(app, gen)]);
  const r = await fetchRaw(url, { headers: { accept: 'application/json' } });
  assert.equal(r.status, 504);
  assert.deepEqual(JSON.parse(r.text), { error: { status: 504, reason: 'upstream-timeout' } });
  assert.equal(r.headers['x-berth-reason'], 'upstream-timeout');
  assert.equal(inst.inFlight, 0);
  assert.equal(be.requests.length, 1, 'a timed-out request is not retried');
});

test('a client that goes away mid-response releases the instance', async (t) => {
  const be = await backend(t, (_req, res) => {
    res.writeHead(200);
    res.write('partial');
    // never ends
  });
  const gen = generation();
  const [inst] = gen.addPool('web', 8, [be.address]);
  const { url, proxy } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  await new Promise<void>((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', () => {});
    req.on('close', resolve);
    req.end();
    setTimeout(() => reject(new Error('no data')), 5000).unref();
  });
  await waitFor(() => inst.inFlight === 0 && proxy.inFlight === 0, 'the upstream request to be released');
  assert.equal(inst.served, 1);
  assert.deepEqual(inst.mistakes, []);
});

test('an instance that dies mid-response cuts the client connection', async (t) => {
  const be = await backend(t, (req, res) => {
    res.writeHead(200, { 'content-length': '100' });
    res.write('only some');
    setTimeout(() => req.socket.destroy(), 20);
  });
  const gen = generation();
  const [inst] = gen.addPool('web', 8, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  await assert.rejects(fetchRaw(url));
  await waitFor(() => inst.inFlight === 0, 'release');
});

test('one access log line per proxied request', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const { logger, lines } = captureLogger();
  const { url } = await startProxy(t, [entry(appConfig('shop', { hosts: ['shop.test'] }), gen)], { logger });
  await fetchRaw(`${url}/a?b=1`, { headers: { host: 'shop.test', 'x-request-id': 'rid-1' } });
  await fetchRaw(`${url}/nothing`, { headers: { host: 'other.test', 'x-request-id': 'rid-2' } });
  await fetchRaw(`${url}/_berth/health`);
  await waitFor(() => lines.filter((l) => l.msg === 'request').length >= 2, 'log lines');
  const reqLines = lines.filter((l) => l.msg === 'request');
  assert.equal(reqLines.length, 2, 'gateway endpoints are not logged');
  const [ok, missing] = reqLines;
  assert.equal(ok.app, 'shop');
  assert.equal(ok.method, 'GET');
  assert.equal(ok.path, '/a?b=1');
  assert.equal(ok.status, 200);
  assert.equal(ok.requestId, 'rid-1');
  assert.equal(ok.release, '20250101000000-aaaaaa');
  assert.equal(ok.instance, 'web.0');
  assert.equal(ok.clientIp, '127.0.0.1');
  assert.equal(typeof ok.durationMs, 'number');
  assert.equal(missing.status, 404);
  assert.equal(missing.app, null);
  assert.equal(missing.requestId, 'rid-2');
});

test('no access log line when info is disabled', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const { logger, lines } = captureLogger('warn');
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)], { logger });
  await fetchRaw(url);
  assert.equal(lines.filter((l) => l.msg === 'request').length, 0);
});

test('keep-alive between client and proxy works across requests', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const sockets = new Set<unknown>();
  for (let i = 0; i < 5; i++) {
    const r = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(url, { agent }, (res) => {
        sockets.add(res.socket);
        let s = '';
        res.on('data', (c) => (s += c));
        res.on('end', () => resolve(s));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(r, 'ok');
  }
  assert.equal(sockets.size, 1);
});

test('an aborted request while the backend is connecting does not leak', async (t) => {
  const gen = generation();
  const be = await backend(t, (_req, res) => setTimeout(() => res.end('late'), 100));
  const [inst] = gen.addPool('web', 8, [be.address]);
  const { url, proxy } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const pending = openRequest(url);
  pending.done.catch(() => {});
  await waitFor(() => be.requests.length === 1, 'backend to get the request');
  pending.abort();
  await waitFor(() => inst.inFlight === 0 && proxy.inFlight === 0, 'release');
  assert.deepEqual(inst.mistakes, []);
});

test('a unix socket upstream is reached through socketPath', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-proxy-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'web.sock');
  const server = createServer((req, res) => res.end(`unix ${req.url}`));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  await new Promise<void>((r) => server.listen(path, r));
  const gen = generation();
  const [inst] = gen.addPool('web', 8, [{ kind: 'unix', path }]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  assert.equal((await fetchRaw(`${url}/a`)).text, 'unix /a');
  assert.equal((await fetchRaw(`${url}/b`)).text, 'unix /b');
  assert.equal(inst.served, 2);
});

test('Expect: 100-continue is answered by the proxy and not passed on', async (t) => {
  const be = await backend(t, (req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => res.end(`${req.headers.expect ?? 'no expect'}: ${body}`));
  });
  const gen = generation();
  gen.addPool('web', 8, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const text = await new Promise<string>((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', agent: false, headers: { expect: '100-continue', 'content-length': '5' } }, (res) => {
      let s = '';
      res.on('data', (c) => (s += c));
      res.on('end', () => resolve(s));
    });
    req.on('continue', () => req.end('hello'));
    req.on('error', reject);
  });
  assert.equal(text, 'no expect: hello');
});
