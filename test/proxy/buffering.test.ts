/**
 * Request and response buffering (security issue finding 4), over a real Proxy and real node:http
 * backends: bodies are read whole before a slot is taken (413, 408, spill to disk), responses are held
 * for slow clients so the slot frees when the app is done (memory, then disk), streams are not held, and
 * a client that stops reading is closed after send_timeout.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { AppConfig } from '../../src/config/schema.ts';
import { appConfig, backend, berthConfig, bodyDigest, buffering, bufferingProxy, entry, fetchRaw, gate, route, spillFds, startProxy, TestGeneration, waitFor } from './fixtures.ts';

const MiB = 1024 * 1024;

/** Sends raw bytes and collects everything until the gateway closes the connection. */
function rawExchange(port: number, head: string, opts: { body?: Buffer; keepOpenMs?: number } = {}): { socket: Socket; done: Promise<string> } {
  const socket = connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  const done = new Promise<string>((resolve) => {
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => {});
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
  socket.write(head);
  if (opts.body) socket.write(opts.body);
  return { socket, done };
}

/** A GET whose response the client does not read until `read()` is called; resolves with its body hash. */
function stalledGet(url: string): { response: Promise<IncomingMessage>; read: () => Promise<{ hash: string; length: number }>; closed: Promise<void> } {
  let resolveClosed = () => {};
  const closed = new Promise<void>((r) => (resolveClosed = r));
  const response = new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      res.on('aborted', resolveClosed);
      res.on('error', () => resolveClosed());
      res.on('close', resolveClosed);
      resolve(res);
    });
    req.on('error', (err) => {
      resolveClosed();
      reject(err);
    });
    req.end();
  });
  const read = async () => {
    const res = await response;
    const hash = createHash('sha256');
    let length = 0;
    for await (const c of res) {
      hash.update(c as Buffer);
      length += (c as Buffer).length;
    }
    return { hash: hash.digest('hex'), length };
  };
  return { response, read, closed };
}

/** Deterministic bytes, and their hash, for big bodies. */
function pattern(bytes: number): { chunks: Buffer[]; hash: string } {
  const chunks: Buffer[] = [];
  const hash = createHash('sha256');
  for (let i = 0; i < bytes; i += 64 * 1024) {
    const c = Buffer.alloc(Math.min(64 * 1024, bytes - i), i % 251);
    chunks.push(c);
    hash.update(c);
  }
  return { chunks, hash: hash.digest('hex') };
}

/** A backend handler writing `bytes` with back-pressure; `finished` turns true when the app is done. */
function bigResponder(bytes: number, headers: Record<string, string>, withLength: boolean) {
  const state = { finished: false, written: 0 };
  const { chunks } = pattern(bytes);
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    res.writeHead(200, withLength ? { ...headers, 'content-length': String(bytes) } : headers);
    let i = 0;
    const pump = () => {
      while (i < chunks.length) {
        const c = chunks[i++];
        state.written += c.length;
        if (!res.write(c)) {
          res.once('drain', pump);
          return;
        }
      }
      res.end(() => (state.finished = true));
    };
    pump();
  };
  return { state, handler, hash: pattern(bytes).hash };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- request bodies --------------------------------------------------------------------------------

test('413 from Content-Length at once: the app never sees the request', async (t) => {
  const be = await backend(t, (req, res) => req.pipe(res));
  const { port, inst } = await bufferingProxy(t, be, { maxBodyBytes: 1000 });
  // Only the head is sent: the answer must not wait for the body.
  const { done } = rawExchange(port, 'POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5000\r\n\r\n');
  const text = await done;
  assert.match(text, /^HTTP\/1\.1 413 /);
  assert.match(text, /x-berth-reason: body-too-large/i);
  assert.match(text, /connection: close/i);
  assert.equal(be.requests.length, 0);
  assert.equal(inst.served, 0);
});

test('413 while reading a chunked body past max_body', async (t) => {
  const be = await backend(t, (req, res) => req.pipe(res));
  const { url, inst } = await bufferingProxy(t, be, { maxBodyBytes: 100 * 1024 });
  const status = await new Promise<number>((resolve, reject) => {
    const req = httpRequest(url, { method: 'POST', agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    const chunk = Buffer.alloc(16 * 1024, 1);
    let sent = 0;
    const write = () => {
      // Keeps sending (chunked: no Content-Length) until the answer comes.
      while (sent < 4 * MiB) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once('drain', write);
      }
      req.end();
    };
    write();
  });
  assert.equal(status, 413);
  assert.equal(be.requests.length, 0);
  assert.equal(inst.served, 0);
});

test('408 when a body sends nothing for buffering.body_timeout; no slot was taken meanwhile', async (t) => {
  const be = await backend(t, (req, res) => req.pipe(res));
  const { port, inst } = await bufferingProxy(t, be, { buffering: buffering({ bodyTimeoutMs: 300 }) });
  const started = Date.now();
  const { done } = rawExchange(port, 'POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 100\r\n\r\n', { body: Buffer.from('0123456789') });
  await sleep(100);
  assert.equal(inst.inFlight, 0, 'a body being read holds no instance ticket');
  const text = await done;
  assert.match(text, /^HTTP\/1\.1 408 /);
  assert.match(text, /x-berth-reason: body-timeout/i);
  const took = Date.now() - started;
  assert.ok(took >= 250 && took < 5_000, `408 after ${took}ms`);
  assert.equal(be.requests.length, 0);
});

test('a slow body takes no slot: other requests pass while it trickles, then it is forwarded whole', async (t) => {
  const be = await backend(t, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => res.end(`${req.method} ${req.headers['content-length']} ${Buffer.concat(chunks).toString()}`));
  });
  const { port, url, inst } = await bufferingProxy(t, be, {}, 1);
  const { socket, done } = rawExchange(port, 'POST / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Length: 6\r\n\r\n', { body: Buffer.from('ab') });
  await sleep(50);
  for (let i = 0; i < 3; i++) assert.equal((await fetchRaw(url)).text, 'GET undefined ', 'the only slot is free');
  assert.equal(be.requests.length, 3, 'the slow POST has not reached the app');
  socket.write('cd');
  await sleep(20);
  socket.write('ef');
  const text = await done;
  assert.match(text, /^HTTP\/1\.1 200 /);
  assert.ok(text.endsWith('POST 6 abcdef'), text);
  assert.equal(inst.inFlight, 0);
});

test('a body larger than buffering.memory spills to a 0600 temp file, arrives intact with a length, and the file is gone after', async (t) => {
  const release = gate();
  let got: { headers: IncomingMessage['headers']; hash: string; length: number } | null = null;
  const be = await backend(t, (req, res) => {
    void bodyDigest(req).then(({ hash, length }) => {
      got = { headers: req.headers, hash, length };
      void release.promise.then(() => res.end('stored'));
    });
  });
  const { url, dir } = await bufferingProxy(t, be);
  const { chunks, hash } = pattern(3 * MiB + 123);
  async function* body(): AsyncIterable<Buffer> {
    for (const c of chunks) yield c;
  }
  const reply = fetchRaw(`${url}/upload`, { method: 'PUT', body: body() });
  await waitFor(() => got !== null, 'the app to receive the body', 10_000);
  const seen = got!;
  assert.equal(seen.length, 3 * MiB + 123);
  assert.equal(seen.hash, hash);
  assert.equal(seen.headers['content-length'], String(3 * MiB + 123), 'a chunked body is forwarded with a Content-Length');
  assert.equal(seen.headers['transfer-encoding'], undefined);
  const fds = spillFds(dir);
  assert.equal(fds.length, 1, 'the body is held in one temp file while the request runs');
  assert.equal(statSync(`/proc/self/fd/${fds[0]}`).mode & 0o777, 0o600);
  assert.equal((await stat(join(dir, 'tmp'))).mode & 0o777, 0o700);
  assert.deepEqual(await readdir(join(dir, 'tmp')), [], 'the temp file has no name: it is unlinked at once');
  release.open();
  assert.equal((await reply).text, 'stored');
  await waitFor(() => spillFds(dir).length === 0, 'the temp file to be closed');
});

test('a client that leaves mid-body leaves no temp file and no slot', async (t) => {
  const be = await backend(t, (req, res) => req.pipe(res));
  const { port, dir, inst, proxy } = await bufferingProxy(t, be);
  const { socket } = rawExchange(port, 'POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 10000000\r\n\r\n', { body: Buffer.alloc(512 * 1024, 7) });
  await waitFor(() => spillFds(dir).length === 1, 'the body to spill');
  socket.destroy();
  await waitFor(() => spillFds(dir).length === 0 && proxy.inFlight === 0, 'cleanup');
  assert.equal(be.requests.length, 0);
  assert.equal(inst.served, 0);
});

// ---- responses ---------------------------------------------------------------------------------------

test('a client that does not read: the response spills, the slot frees when the app is done, and the bytes arrive intact later', async (t) => {
  const big = bigResponder(16 * MiB, { 'content-type': 'application/octet-stream' }, true);
  const be = await backend(t, big.handler);
  const { url, dir, inst } = await bufferingProxy(t, be, {}, 1);
  const stalled = stalledGet(`${url}/big`);
  await stalled.response;
  await waitFor(() => big.state.finished && inst.inFlight === 0, 'the app to finish and the slot to free', 10_000);
  assert.equal(spillFds(dir).length, 1, 'the part the client has not taken is on disk');
  const { hash, length } = await stalled.read();
  assert.equal(length, 16 * MiB);
  assert.equal(hash, big.hash);
  await waitFor(() => spillFds(dir).length === 0, 'the temp file to be closed');
});

test('while one client does not read, the only slot serves the next request', async (t) => {
  let n = 0;
  const big = bigResponder(16 * MiB, {}, true);
  const be = await backend(t, (req, res) => (n++ === 0 ? big.handler(req, res) : res.end('next')));
  const { url, inst } = await bufferingProxy(t, be, {}, 1);
  const stalled = stalledGet(`${url}/big`);
  await stalled.response;
  const next = await fetchRaw(url);
  assert.equal(next.text, 'next');
  assert.equal(inst.peak, 1);
  assert.equal((await stalled.read()).hash, big.hash);
});

test('a response without a length is held in memory only: past buffering.memory the app is paused', async (t) => {
  const big = bigResponder(16 * MiB, {}, false);
  const be = await backend(t, big.handler);
  const { url, dir, inst } = await bufferingProxy(t, be, {}, 1);
  const stalled = stalledGet(`${url}/big`);
  await stalled.response;
  await sleep(500);
  assert.equal(big.state.finished, false, 'the app is paused at the client pace');
  assert.equal(inst.inFlight, 1);
  assert.equal(spillFds(dir).length, 0, 'an unbounded response never goes to disk');
  const { hash, length } = await stalled.read();
  assert.equal(length, 16 * MiB);
  assert.equal(hash, big.hash);
});

const unbuffered: { name: string; headers: Record<string, string>; over: Partial<AppConfig> }[] = [
  { name: 'SSE (text/event-stream)', headers: { 'content-type': 'text/event-stream' }, over: {} },
  { name: 'X-Accel-Buffering: no', headers: { 'x-accel-buffering': 'no' }, over: {} },
  { name: 'a route with buffering: false', headers: {}, over: { routes: [{ ...route('/'), buffering: false }] } },
  { name: 'an app with buffering.responses: false', headers: {}, over: { buffering: buffering({ responses: false }) } },
];
for (const c of unbuffered) {
  test(`not buffered: ${c.name}; the app streams at the client pace`, async (t) => {
    const big = bigResponder(16 * MiB, c.headers, true);
    const be = await backend(t, big.handler);
    const { url, dir, inst } = await bufferingProxy(t, be, c.over, 1);
    const stalled = stalledGet(`${url}/stream`);
    const res = await stalled.response;
    assert.equal(res.headers['x-accel-buffering'], undefined, 'X-Accel-Buffering is for the gateway only');
    await sleep(500);
    assert.equal(big.state.finished, false);
    assert.equal(inst.inFlight, 1);
    assert.equal(spillFds(dir).length, 0);
    const { hash, length } = await stalled.read();
    assert.equal(length, 16 * MiB);
    assert.equal(hash, big.hash);
  });
}

test('X-Accel-Buffering: yes is stripped and the response is buffered', async (t) => {
  const big = bigResponder(16 * MiB, { 'x-accel-buffering': 'yes' }, true);
  const be = await backend(t, big.handler);
  const { url, inst } = await bufferingProxy(t, be, {}, 1);
  const stalled = stalledGet(`${url}/big`);
  const res = await stalled.response;
  assert.equal(res.headers['x-accel-buffering'], undefined);
  await waitFor(() => big.state.finished && inst.inFlight === 0, 'the app to finish', 10_000);
  assert.equal((await stalled.read()).hash, big.hash);
});

test('a request with a body on a route with buffering: false is streamed to the app', async (t) => {
  let bodySeenBeforeEnd = false;
  const be = await backend(t, (req, res) => {
    req.once('data', () => {
      bodySeenBeforeEnd = true;
      res.writeHead(200);
      res.write('got some');
    });
    req.on('end', () => res.end());
  });
  const { port } = await bufferingProxy(t, be, { routes: [{ ...route('/'), buffering: false }] });
  const { socket, done } = rawExchange(port, 'POST / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Length: 10\r\n\r\n', { body: Buffer.from('12345') });
  await waitFor(() => bodySeenBeforeEnd, 'the app to see part of the body');
  socket.write('67890');
  assert.match(await done, /got some/);
});

// ---- send timeout -----------------------------------------------------------------------------------

for (const streamed of [false, true]) {
  test(`a client that takes no bytes for buffering.send_timeout is closed (${streamed ? 'streamed' : 'buffered'} response)`, async (t) => {
    const big = bigResponder(16 * MiB, streamed ? { 'content-type': 'text/event-stream' } : {}, true);
    const be = await backend(t, big.handler);
    const { url, dir, inst, proxy } = await bufferingProxy(t, be, { buffering: buffering({ sendTimeoutMs: 300 }) }, 1);
    const started = Date.now();
    const stalled = stalledGet(`${url}/big`);
    await stalled.response;
    // The client reads nothing, so it cannot see the close itself: the gateway's side shows it.
    await waitFor(() => proxy.inFlight === 0, 'the gateway to close the client', 10_000);
    const took = Date.now() - started;
    assert.ok(took >= 250, `closed after ${took}ms`);
    await waitFor(() => inst.inFlight === 0 && spillFds(dir).length === 0, 'everything released');
    assert.deepEqual(inst.mistakes, []);
    // What the client reads afterwards is cut short.
    const got = await stalled.read().catch(() => null);
    assert.ok(got === null || got.length < 16 * MiB, 'the response was cut');
  });
}

// ---- protocol ---------------------------------------------------------------------------------------

/** A raw TCP backend that answers every request with `answer` and keeps the connection open. */
async function rawBackend(t: TestContext, answer: string): Promise<{ address: { kind: 'tcp'; host: string; port: number }; requests: () => number }> {
  let requests = 0;
  const sockets = new Set<Socket>();
  const server = createNetServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('data', (c: Buffer) => {
      if (c.includes('\r\n\r\n')) {
        requests++;
        s.write(answer);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { address: { kind: 'tcp', host: '127.0.0.1', port: (server.address() as AddressInfo).port }, requests: () => requests };
}

for (const c of [
  { name: 'with Upgrade and Connection headers', answer: 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes' },
  { name: 'bare', answer: 'HTTP/1.1 101 Switching Protocols\r\n\r\nraw bytes' },
]) {
  test(`a 101 (${c.name}) to a request that asked for no upgrade is a 502, not retried`, async (t) => {
    const bad = await rawBackend(t, c.answer);
    const good = await backend(t, (_req, res) => res.end('good'));
    const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
    const insts = gen.addPool('web', 4, [bad.address, good.address]);
    const app = appConfig('shop');
    const { url } = await startProxy(t, [entry(app, gen)]);
    const r = await fetchRaw(url, { headers: { accept: 'application/json' } });
    assert.equal(r.status, 502);
    assert.equal(r.headers['x-berth-reason'], 'bad-upstream-response');
    assert.ok(!r.text.includes('raw bytes'));
    assert.equal(bad.requests(), 1);
    assert.equal(good.requests.length, 0, 'an answer is not a connection failure: no retry');
    await waitFor(() => insts.every((i) => i.inFlight === 0), 'release');
    for (const i of insts) assert.deepEqual(i.mistakes, []);
  });
}

test('a 103 Early Hints before the answer is dropped; the final answer is relayed', async (t) => {
  const be = await rawBackend(t, 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal');
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  const r = await fetchRaw(url);
  assert.equal(r.status, 200);
  assert.equal(r.text, 'final');
});

test('X-Berth-Release is on responses only with public_details', async (t) => {
  const be = await backend(t, (_req, res) => res.end('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const app = appConfig('shop');
  const off = await startProxy(t, [entry(app, gen)]);
  assert.equal((await fetchRaw(off.url)).headers['x-berth-release'], undefined);
  const on = await startProxy(t, [entry(app, gen)], { config: berthConfig([app], { publicDetails: true }) });
  assert.equal((await fetchRaw(on.url)).headers['x-berth-release'], 'r1');
  // A reload switches it without a restart.
  on.proxy.setConfig(berthConfig([app], { publicDetails: false }));
  assert.equal((await fetchRaw(on.url)).headers['x-berth-release'], undefined);
});

test('buffering.memory: 0 still completes bodies and responses, spilled or streamed', async (t) => {
  const sized = bigResponder(16 * MiB, {}, true);
  const unsized = bigResponder(16 * MiB, {}, false);
  const be = await backend(t, (req, res) => {
    if (req.url === '/sized') return sized.handler(req, res);
    if (req.url === '/unsized') return unsized.handler(req, res);
    const hash = createHash('sha256');
    req.on('data', (c: Buffer) => hash.update(c));
    req.on('end', () => res.end(hash.digest('hex')));
  });
  const { url, dir } = await bufferingProxy(t, be, { buffering: buffering({ memoryBytes: 0 }) }, 1);
  const { chunks, hash } = pattern(300 * 1024);
  assert.equal((await fetchRaw(`${url}/upload`, { method: 'POST', body: Buffer.concat(chunks) })).text, hash);
  for (const [path, big] of [['/sized', sized], ['/unsized', unsized]] as const) {
    const stalled = stalledGet(`${url}${path}`);
    await stalled.response;
    await sleep(200);
    const got = await stalled.read();
    assert.equal(got.length, 16 * MiB, path);
    assert.equal(got.hash, big.hash, path);
  }
  await waitFor(() => spillFds(dir).length === 0, 'temp files closed');
});
