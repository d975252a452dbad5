/**
 * Buffering's edges and error paths (security issue finding 4, review): `Expect: 100-continue`, keep-alive
 * after a buffered body, chunked extensions and trailers, and that no temp file descriptor, instance
 * ticket or admission slot outlives a request however it ends (client gone, app dead, spill failure,
 * gateway stop). Real Proxy, real node:http backends, raw sockets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { RoutingTable } from '../../src/proxy/router.ts';
import { appConfig, backend, berthConfig, bodyDigest, buffering, bufferingProxy, entry, gate, spillDir, spillFds, startProxy, TestGeneration, waitFor } from './fixtures.ts';

const MiB = 1024 * 1024;

/** A raw client connection that collects what it receives. */
function rawClient(port: number): { socket: Socket; text: () => string; closed: Promise<void>; waitText: (re: RegExp, what: string) => Promise<void> } {
  const socket = connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.on('close', () => r()));
  const text = () => Buffer.concat(chunks).toString('latin1');
  return { socket, text, closed, waitText: (re, what) => waitFor(() => re.test(text()), what, 10_000) };
}

function echoHash(req: IncomingMessage, res: ServerResponse): void {
  void bodyDigest(req).then(({ hash, length }) => res.end(`${length} ${req.headers['content-length']} ${req.headers['transfer-encoding'] ?? '-'} ${hash}`));
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- Expect: 100-continue ----------------------------------------------------------------------------

test('Expect: 100-continue over max_body: a 413 instead of 100 Continue, so the client never sends the body', async (t) => {
  const be = await backend(t, echoHash);
  const { port } = await bufferingProxy(t, be, { maxBodyBytes: 1000 });
  const c = rawClient(port);
  c.socket.write('POST /up HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n');
  await c.closed;
  assert.match(c.text(), /^HTTP\/1\.1 413 /, 'no 100 Continue before the refusal');
  assert.doesNotMatch(c.text(), /100 Continue/);
  assert.equal(be.requests.length, 0);
});

test('Expect: 100-continue within limits: the client that waits for 100 gets it, sends, and keeps its connection', async (t) => {
  const be = await backend(t, echoHash);
  const { port } = await bufferingProxy(t, be);
  const body = Buffer.alloc(300 * 1024, 3); // past buffering.memory: spilled
  const c = rawClient(port);
  c.socket.write(`POST /up HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`);
  await c.waitText(/^HTTP\/1\.1 100 Continue\r\n\r\n/, '100 Continue');
  assert.equal(be.requests.length, 0);
  c.socket.write(body);
  await c.waitText(/\r\n\r\n\d+ \d+ - [0-9a-f]{64}$/, 'the answer');
  assert.ok(c.text().endsWith(`${body.length} ${body.length} - ${sha(body)}`), c.text());
  assert.doesNotMatch(c.text(), /connection: close/i);
  // The same connection serves the next request.
  c.socket.write('GET /next HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n');
  await c.closed;
  assert.equal((c.text().match(/HTTP\/1\.1 200 /g) ?? []).length, 2, c.text());
});

test('Expect: 100-continue with buffering off: 100 Continue is sent once the app is reached, and the body streams', async (t) => {
  const be = await backend(t, echoHash);
  const { port } = await bufferingProxy(t, be, { buffering: buffering({ requests: false }) });
  const c = rawClient(port);
  c.socket.write('POST /up HTTP/1.1\r\nHost: shop.test\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: 5\r\n\r\n');
  await c.waitText(/^HTTP\/1\.1 100 Continue\r\n\r\n/, '100 Continue');
  c.socket.write('hello');
  await c.closed;
  assert.ok(c.text().endsWith(`5 5 - ${sha(Buffer.from('hello'))}`), c.text());
});

// ---- framing -------------------------------------------------------------------------------------------

test('a chunked body with extensions and trailers reaches the app whole, with a Content-Length and no trailers', async (t) => {
  const be = await backend(t, echoHash);
  const { port } = await bufferingProxy(t, be);
  const c = rawClient(port);
  c.socket.write(
    'POST /up HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n' +
      '5;name=value\r\nhello\r\n6;x="q"\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n',
  );
  await c.closed;
  assert.ok(c.text().endsWith(`11 11 - ${sha(Buffer.from('hello world'))}`), c.text());
});

test('after a buffered (spilled) body the connection is kept alive for the next request', async (t) => {
  const be = await backend(t, echoHash);
  const { port, dir } = await bufferingProxy(t, be);
  const body = Buffer.alloc(200 * 1024, 9);
  const c = rawClient(port);
  c.socket.write(`PUT /a HTTP/1.1\r\nHost: shop.test\r\nContent-Length: ${body.length}\r\n\r\n`);
  c.socket.write(body);
  c.socket.write('GET /b HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n');
  await c.closed;
  assert.equal((c.text().match(/HTTP\/1\.1 200 /g) ?? []).length, 2, c.text());
  assert.ok(c.text().includes(`${body.length} ${body.length} - ${sha(body)}`));
  await waitFor(() => spillFds(dir).length === 0, 'temp file closed');
});

test('a body of one-byte chunks costs its size in memory, not a Buffer per chunk', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const answer = gate();
  let received = '';
  const be = await backend(t, (req, res) => {
    void bodyDigest(req).then(({ hash, length }) => {
      received = `${length} ${hash}`;
      void answer.promise.then(() => res.end('stored'));
    });
  });
  // All of it stays in memory (1 MiB share), where the chunks would pile up.
  const { port } = await bufferingProxy(t, be, { buffering: buffering({ memoryBytes: MiB }) });
  const c = rawClient(port);
  c.socket.write('POST /up HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n');
  gc();
  const before = process.memoryUsage().heapUsed;
  const piece = Buffer.from('1\r\nx\r\n'.repeat(64 * 1024));
  const pieces = 5;
  for (let i = 0; i < pieces; i++) await new Promise<void>((r) => c.socket.write(piece, () => r()));
  c.socket.write('0\r\n\r\n');
  // The gateway has read the whole body and still holds it while the app works on the request.
  await waitFor(() => received !== '', 'the app to get the body', 30_000);
  gc();
  const grew = process.memoryUsage().heapUsed - before;
  const body = Buffer.alloc(pieces * 64 * 1024, 'x');
  assert.equal(received, `${body.length} ${sha(body)}`);
  // Held one Buffer per chunk, these 320 KiB took about 65 MB of heap.
  assert.ok(grew < 20e6, `heap grew ${(grew / 1e6).toFixed(1)} MB for ${pieces * 64} KiB of body`);
  answer.open();
  await c.closed;
  assert.ok(c.text().endsWith('stored'));
});

test('a response of one-byte chunks held for a client that does not read costs its size in memory', async (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const pieces = 5;
  const piece = Buffer.from('1\r\nx\r\n'.repeat(64 * 1024));
  const server = createNetServer((s) => {
    s.on('error', () => {});
    s.once('data', async () => {
      s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n');
      for (let i = 0; i < pieces; i++) await new Promise<void>((r) => s.write(piece, () => r()));
      s.write('0\r\n\r\n');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const address = { kind: 'tcp' as const, host: '127.0.0.1', port: (server.address() as AddressInfo).port };
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 1, [address]);
  const app = appConfig('shop', { buffering: buffering({ memoryBytes: MiB }) });
  const { port } = await startProxy(t, [entry(app, gen)], { config: berthConfig([app], { stateDir: await spillDir(t) }) });
  gc();
  const before = process.memoryUsage().heapUsed;
  const c = rawClient(port);
  c.socket.pause();
  c.socket.write('GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n');
  // The app is done: what the client has not taken is held by the gateway.
  await waitFor(() => inst.served === 1, 'the app to finish', 30_000);
  gc();
  const grew = process.memoryUsage().heapUsed - before;
  assert.ok(grew < 20e6, `heap grew ${(grew / 1e6).toFixed(1)} MB for ${pieces * 64} KiB of response`);
  c.socket.resume();
  await c.closed;
  const text = c.text();
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  // Relayed chunked: strip the framing the gateway wrote and compare the payload.
  let payload = '';
  for (let i = 0; i < body.length; ) {
    const eol = body.indexOf('\r\n', i);
    const size = parseInt(body.slice(i, eol), 16);
    payload += body.slice(eol + 2, eol + 2 + size);
    i = eol + 2 + size + 2;
    if (size === 0) break;
  }
  assert.equal(payload.length, pieces * 64 * 1024);
  assert.ok(/^x+$/.test(payload));
});

test('a body in many small segments with a Content-Length arrives intact, in memory and spilled', async (t) => {
  const be = await backend(t, echoHash);
  const { port, dir } = await bufferingProxy(t, be, { buffering: buffering({ memoryBytes: 100 * 1024 }) });
  for (const size of [50 * 1024 + 7, 300 * 1024 + 13]) {
    const body = Buffer.alloc(size);
    for (let i = 0; i < size; i++) body[i] = (i * 31) % 251;
    const c = rawClient(port);
    c.socket.setNoDelay(true);
    c.socket.write(`POST /up HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Length: ${size}\r\n\r\n`);
    // Odd-sized pieces, some below and some above the copy threshold.
    let off = 0;
    for (let i = 0; off < size; i++) {
      const n = Math.min(size - off, i % 3 === 0 ? 20_000 : 777);
      await new Promise<void>((r) => c.socket.write(body.subarray(off, off + n), () => r()));
      off += n;
    }
    await c.closed;
    assert.ok(c.text().endsWith(`${size} ${size} - ${sha(body)}`), c.text().slice(-200));
  }
  await waitFor(() => spillFds(dir).length === 0, 'temp files closed');
});

// ---- error paths: nothing leaks ------------------------------------------------------------------------

/** A backend that writes `bytes` with a length as fast as the proxy takes them, then runs `after`. */
function bigThen(bytes: number, after: (res: ServerResponse) => void, finish = true) {
  return (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    res.writeHead(200, { 'content-length': String(bytes) });
    const chunk = Buffer.alloc(64 * 1024, 5);
    let sent = 0;
    const pump = () => {
      while (sent < bytes - (finish ? 0 : 64 * 1024)) {
        sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      after(res);
    };
    pump();
  };
}

test('the app dies mid-response while the client is not reading: temp file, ticket and slot are all released', async (t) => {
  let cut = false;
  const be = await backend(t, bigThen(8 * MiB, (res) => {
    cut = true;
    res.socket?.destroy();
  }, false));
  const { port, dir, inst, proxy } = await bufferingProxy(t, be, {}, 1);
  const c = rawClient(port);
  c.socket.pause();
  c.socket.write('GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n');
  await waitFor(() => cut, 'the app to die mid-response', 10_000);
  await waitFor(() => inst.inFlight === 0, 'the ticket to be released');
  await waitFor(() => spillFds(dir).length === 0 && proxy.inFlight === 0, 'cleanup');
  // The client is cut off: a short response must not look complete.
  c.socket.resume();
  await c.closed;
  assert.ok(c.text().length < 8 * MiB, 'the response was cut');
  assert.deepEqual(inst.mistakes, []);
});

test('a client that leaves while its response is spooled on disk: the temp file is closed at once', async (t) => {
  const be = await backend(t, bigThen(8 * MiB, (res) => res.end()));
  const { port, dir, inst, proxy } = await bufferingProxy(t, be, {}, 1);
  const c = rawClient(port);
  c.socket.pause();
  c.socket.write('GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n');
  await waitFor(() => spillFds(dir).length === 1 && inst.inFlight === 0, 'the response to be spooled and the app done', 10_000);
  c.socket.destroy();
  await waitFor(() => spillFds(dir).length === 0 && proxy.inFlight === 0, 'cleanup');
  assert.deepEqual(inst.mistakes, []);
});

test('a spill that cannot be written: the body gets 500 and the connection closes; a spooled response is cut; nothing is held', async (t) => {
  const dir = await spillDir(t);
  // `<state_dir>/tmp` is a file: every temp file fails to open (as a full or read-only disk would).
  await writeFile(join(dir, 'tmp'), 'not a directory');
  const be = await backend(t, (req, res) => (req.method === 'GET' ? bigThen(8 * MiB, (r) => r.end())(req, res) : echoHash(req, res)));
  const { port, inst, proxy } = await bufferingProxy(t, be, {}, 1, dir);
  const body = Buffer.alloc(300 * 1024, 1);
  const c = rawClient(port);
  c.socket.write(`POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: ${body.length}\r\n\r\n`);
  c.socket.write(body);
  await c.closed;
  assert.match(c.text(), /^HTTP\/1\.1 500 /);
  assert.match(c.text(), /x-berth-reason: buffer-failed/i);
  assert.equal(be.requests.length, 0);

  const r = rawClient(port);
  r.socket.pause();
  r.socket.write('GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n');
  await waitFor(() => be.requests.length === 1 && inst.inFlight === 0 && proxy.inFlight === 0, 'release', 10_000);
  r.socket.resume();
  await r.closed;
  assert.match(r.text(), /^HTTP\/1\.1 200 /);
  assert.ok(r.text().length < 8 * MiB, 'the response was cut');
  assert.deepEqual(inst.mistakes, []);
});

test('a gateway stop with a body being read and a response spooled releases every temp file', async (t) => {
  const be = await backend(t, (req, res) => (req.method === 'GET' ? bigThen(8 * MiB, (r) => r.end())(req, res) : echoHash(req, res)));
  const { port, dir, inst, proxy } = await bufferingProxy(t, be, {}, 1);
  const up = rawClient(port);
  up.socket.write(`POST /up HTTP/1.1\r\nHost: shop.test\r\nContent-Length: ${10 * MiB}\r\n\r\n`);
  up.socket.write(Buffer.alloc(512 * 1024, 2));
  const down = rawClient(port);
  down.socket.pause();
  down.socket.write('GET /big HTTP/1.1\r\nHost: shop.test\r\n\r\n');
  await waitFor(() => spillFds(dir).length === 2 && inst.inFlight === 0, 'a spilled body and a spooled response', 10_000);
  await proxy.stop(200);
  await waitFor(() => spillFds(dir).length === 0, 'every temp file closed');
  assert.equal(proxy.inFlight, 0);
  assert.deepEqual(inst.mistakes, []);
  await sleep(10);
});

// ---- deploys ------------------------------------------------------------------------------------------

test('a body still arriving when a deploy switches the app goes to the new generation, since the old one drained without it', async (t) => {
  const dir = await spillDir(t);
  const oldBe = await backend(t, (req, res) => echoHash(req, res));
  const newBe = await backend(t, (req, res) => {
    req.resume();
    req.on('end', () => res.end('new'));
  });
  const app = appConfig('shop', { buffering: buffering(), queue: { max: 100, timeoutMs: 500 } });
  const gen1 = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [old] = gen1.addPool('web', 4, [oldBe.address]);
  const gen2 = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2' });
  gen2.addPool('web', 4, [newBe.address]);
  const { port, proxy } = await startProxy(t, [entry(app, gen1)], { config: berthConfig([app], { stateDir: dir }) });
  const c = rawClient(port);
  c.socket.write('POST /up HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Length: 10\r\n\r\n01234');
  await sleep(50);
  // The switch, then the drain: the request holds no ticket on the old generation, so it drains at once
  // and is stopped.
  proxy.setTable(new RoutingTable([entry(app, gen2)]));
  assert.equal(gen1.inFlight, 0);
  old.state = 'stopped';
  old.address = null;
  c.socket.write('56789');
  await c.closed;
  assert.match(c.text(), /^HTTP\/1\.1 200 /, c.text());
  assert.ok(c.text().endsWith('new'));
  assert.equal(oldBe.requests.length, 0);
});
