/**
 * The front door's HTTP protocol handling (security issue #10, findings 1, 3, 4 (WebSockets), 11, 12,
 * and issue #11 item 6), over real sockets: a raw client, a real Proxy, and raw recording upstreams
 * (raw-upstream.ts) that see exactly the bytes berth sends.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';
import { createServer, type IncomingMessage } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import type { AppConfig } from '../../src/config/schema.ts';
import type { ModeState } from '../../src/proxy/router.ts';
import { appConfig, backend, berthConfig, entry, startProxy, TestGeneration, waitFor } from './fixtures.ts';
import { exchange, header, headerAll, RawUpstream, responseHeader, seenResponder, WS_HEAD, type Responder } from './raw-upstream.ts';

async function setup(t: TestContext, respond: Responder, opts: { over?: Partial<AppConfig>; mode?: Partial<ModeState>; underscores?: boolean; trusted?: number } = {}) {
  const up = await RawUpstream.start(t, respond);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [up.address]);
  const config = appConfig('shop', { hosts: ['shop.test'], ...opts.over });
  const running = await startProxy(t, [entry(config, gen, opts.mode)], {
    config: berthConfig([config], { trustedProxyCount: opts.trusted ?? 0, underscoresInHeaders: opts.underscores ?? false }),
  });
  return { ...running, up, gen };
}

// ---- finding 1: a refused upgrade never becomes a tunnel -------------------------------------------

/** An app that refuses every upgrade with 404 and keeps the connection open, and answers anything else. */
const refusingApp: Responder = (req, conn) => {
  if (header(req, 'upgrade') !== undefined) return { data: 'HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\nconnection: keep-alive\r\n\r\nnot found' };
  return seenResponder(req, conn);
};

test('a refused upgrade is relayed as a plain response, then the connection closes: pipelined requests never reach the app', async (t) => {
  const { port, up, gen } = await setup(t, refusingApp, { mode: { mode: 'read-only' } });
  const smuggled = 'POST /admin/delete HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 6.6.6.6\r\nContent-Length: 0\r\n\r\n';
  const ex = await exchange(port, `GET /ws HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\n${smuggled}`, {
    // And more once the refusal is in, as the attack did.
    after: (s) => s.write(smuggled),
    timeoutMs: 3_000,
  });
  assert.equal(ex.closed, true, 'berth closes the client connection after the relayed refusal');
  assert.equal(ex.responses.length, 1);
  const r = ex.responses[0];
  assert.equal(r.status, 404);
  assert.equal(r.body.toString(), 'not found');
  assert.equal(responseHeader(r, 'connection'), 'close');
  assert.equal(responseHeader(r, 'content-length'), '9');
  assert.equal(responseHeader(r, 'x-berth-mode'), 'read-only');
  assert.equal(ex.rest.length, 0, 'nothing after the response');
  assert.deepEqual(up.requests.map((q) => `${q.method} ${q.target}`), ['GET /ws'], 'the app saw the upgrade request only');
  assert.ok(!up.allBytes().includes('/admin'), 'no byte of the pipelined request reached the app');
  await waitFor(() => up.conns.every((c) => c.closed), 'the app connection destroyed, never reused');
  await waitFor(() => gen.inFlight === 0, 'the tunnel count released');
  assert.deepEqual(gen.instances()[0].mistakes, []);
});

test('refusals of every shape are re-framed; only a 101 with Upgrade starts a tunnel', async (t) => {
  const answers: Record<string, string> = {
    '/chunked': 'HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\nx-app: yes\r\nconnection: keep-alive, x-app\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
    // A 200 that ignores the upgrade but names it: not a switch.
    '/ignored': 'HTTP/1.1 200 OK\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 2\r\n\r\nhi',
    '/no-upgrade-101': 'HTTP/1.1 101 Switching Protocols\r\n\r\n',
    '/no-connection-101': 'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n',
    '/early-hints': 'HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\n\r\nnope',
  };
  const { port, up, gen } = await setup(t, (req) => ({ data: answers[req.target] }));
  // expect: 2 waits for the close (only one response ever comes).
  const chunked = await exchange(port, `GET /chunked HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\nGET /next HTTP/1.1\r\nHost: shop.test\r\n\r\n`, { expect: 2 });
  assert.equal(chunked.responses.length, 1);
  assert.equal(chunked.responses[0].status, 403);
  assert.equal(chunked.responses[0].body.toString(), 'hello world');
  assert.equal(responseHeader(chunked.responses[0], 'transfer-encoding'), 'chunked');
  assert.equal(responseHeader(chunked.responses[0], 'x-app'), undefined, 'a header the app named in Connection is hop-by-hop');
  assert.equal(chunked.closed, true);
  const ignored = await exchange(port, `GET /ignored HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\n`);
  assert.equal(ignored.responses[0].status, 200);
  assert.equal(ignored.responses[0].body.toString(), 'hi');
  assert.equal(responseHeader(ignored.responses[0], 'upgrade'), undefined);
  assert.equal(responseHeader(ignored.responses[0], 'connection'), 'close');
  for (const path of ['/no-upgrade-101', '/no-connection-101']) {
    const bad = await exchange(port, `GET ${path} HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\nGET /next HTTP/1.1\r\n\r\n`, { expect: 2 });
    assert.equal(bad.responses.length, 1, path);
    assert.equal(bad.responses[0].status, 502, `${path}: not a valid switch`);
    assert.equal(responseHeader(bad.responses[0], 'x-berth-reason'), 'bad-upstream-response');
    assert.equal(bad.closed, true);
  }
  const hints = await exchange(port, `GET /early-hints HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\n`);
  assert.equal(hints.responses.length, 1, 'the interim response is not relayed');
  assert.equal(hints.responses[0].status, 401);
  assert.equal(hints.responses[0].body.toString(), 'nope');
  assert.deepEqual(up.requests.map((q) => q.target), ['/chunked', '/ignored', '/no-upgrade-101', '/no-connection-101', '/early-hints']);
  assert.ok(up.conns.every((c) => c.requests.length === 1), 'one request per app connection');
  await waitFor(() => gen.inFlight === 0, 'every tunnel count released');
  assert.deepEqual(gen.instances()[0].mistakes, []);
});

test('a client that stops reading a relayed refusal is dropped after buffering.send_timeout, releasing its WebSocket count', async (t) => {
  // A page far larger than socket buffers, to an upgrade the app ignores: the relay must not hold the
  // pool's WebSocket count (and an app connection) for as long as the client chooses not to read.
  const body = Buffer.alloc(24 * 1024 * 1024, 0x61);
  const buffering = { requests: true, responses: true, memoryBytes: 1024 * 1024, bodyTimeoutMs: 60_000, sendTimeoutMs: 300 };
  const { port, up, gen, proxy } = await setup(t, (req) => (req.target === '/big' ? { data: Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n`), body]) } : seenResponder(req, null!)), {
    over: { buffering, websockets: { max: 1, idleTimeoutMs: null } },
  });
  const client = connect(port, '127.0.0.1');
  t.after(() => client.destroy());
  client.pause();
  let closed = false;
  client.on('close', () => (closed = true));
  client.on('error', () => {});
  client.write(`GET /big HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\n`);
  await waitFor(() => up.requests.length === 1, 'the app got the upgrade request');
  await waitFor(() => proxy.upgrades === 0 && gen.inFlight === 0, 'the stalled relay is dropped and its counts released', 10_000);
  // What was in flight reaches a client that reads again, then the end of the connection.
  client.resume();
  await waitFor(() => closed, 'the client connection is closed');
  await waitFor(() => up.conns.every((c) => c.closed), 'the app connection is closed');
  // The pool's one WebSocket place is free again.
  const next = await exchange(port, `GET /small HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\n`);
  assert.equal(next.responses[0]?.status, 200);
});

test('client bytes wait for the 101: the app sees the upgrade request alone, then the frames', async (t) => {
  const { port, up } = await setup(t, (req, conn) => {
    // Answers only after a pause: bytes the client sent early must not have arrived before this.
    setTimeout(() => {
      assert.equal(conn.received.toString('latin1').indexOf('EARLY'), -1, 'no client byte before the 101');
      conn.socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nSERVER');
      conn.tunnel = true;
    }, 100);
    void req;
    return null;
  });
  const ex = await exchange(port, `GET /ws HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}\r\nEARLY`, { after: (s) => s.write('LATER'), timeoutMs: 600 });
  assert.equal(ex.responses[0].status, 101);
  assert.equal(ex.rest.toString(), 'SERVER');
  const seen = up.conns[0].received.toString('latin1');
  assert.ok(seen.endsWith('\r\n\r\nEARLYLATER'), 'after the 101, the held bytes then the later ones');
  assert.equal(up.requests.length, 1);
});

test('an upgrade with a body gets 400 and never reaches the app', async (t) => {
  const { port, up } = await setup(t, seenResponder);
  for (const framing of ['Content-Length: 5\r\n\r\nhello', 'Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n']) {
    const ex = await exchange(port, `GET /ws HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}${framing}GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n\r\n`, { expect: 2 });
    assert.equal(ex.responses[0].status, 400, framing);
    assert.equal(ex.responses.length, 1);
    assert.equal(ex.closed, true);
  }
  assert.equal(up.conns.length, 0, 'the app was never contacted');
  // Content-Length: 0 is no body: that upgrade goes ahead (and is refused by this app, plainly).
  const zero = await exchange(port, `GET /ws HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}Content-Length: 0\r\n\r\n`);
  assert.equal(zero.responses[0].status, 200);
  assert.equal(up.requests.length, 1);
});

// ---- item 7: a 101 to a request that asked for no upgrade --------------------------------------------

test('a 101 answering a plain request is a 502, and the app connection is not reused', async (t) => {
  const { port, up } = await setup(t, (req, conn) => {
    if (req.target === '/switch') return { data: 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\nRAW', tunnel: true };
    if (req.target === '/bare101') return { data: 'HTTP/1.1 101 Switching Protocols\r\n\r\nRAW', tunnel: true };
    return seenResponder(req, conn);
  });
  for (const path of ['/switch', '/bare101']) {
    const ex = await exchange(port, `GET ${path} HTTP/1.1\r\nHost: shop.test\r\n\r\n`, { timeoutMs: 5_000 });
    assert.equal(ex.responses[0]?.status, 502, `${path}: ${ex.raw.toString('latin1')}`);
    assert.equal(responseHeader(ex.responses[0], 'x-berth-reason'), 'bad-upstream-response');
    assert.ok(!ex.raw.includes('RAW'), 'no byte of the "tunnel" reaches the client');
  }
  const after = await exchange(port, 'GET /after HTTP/1.1\r\nHost: shop.test\r\n\r\n');
  assert.equal(after.responses[0].status, 200);
  const last = up.requests.at(-1)!;
  assert.equal(last.target, '/after');
  assert.equal(up.conns.find((c) => c.id === last.conn)!.requests.length, 1, 'a fresh app connection');
});

// ---- findings 3, 11, 12 and #11 item 6: the headers the app gets -------------------------------------

test('absolute-form targets: the authority replaces Host for requests and upgrades', async (t) => {
  const { port, up } = await setup(t, refusingApp);
  const plain = await exchange(port, 'GET http://shop.test/x?y=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n');
  assert.equal(plain.responses[0].status, 200);
  const upgrade = await exchange(port, `GET http://shop.test/ws HTTP/1.1\r\nHost: evil.example\r\n${WS_HEAD}\r\n`);
  assert.equal(upgrade.responses[0].status, 404);
  assert.deepEqual(up.requests.map((q) => q.target), ['/x?y=1', '/ws']);
  for (const q of up.requests) {
    assert.deepEqual(headerAll(q, 'host'), ['shop.test'], `${q.target}: Host is the target's authority`);
    assert.equal(header(q, 'x-forwarded-host'), 'shop.test');
  }
  // Userinfo in the authority is refused rather than passed on as a Host.
  const userinfo = await exchange(port, 'GET http://shop.test@evil.example/ HTTP/1.1\r\nHost: shop.test\r\n\r\n');
  assert.equal(userinfo.responses[0].status, 400);
  assert.equal(up.requests.length, 2);
});

test('two Host headers, in any case, get 400 for requests and upgrades', async (t) => {
  const { port, up } = await setup(t, seenResponder);
  for (const second of ['Host: evil.example', 'host: shop.test', 'HOST: evil.example', 'hOsT: x']) {
    const plain = await exchange(port, `GET / HTTP/1.1\r\nHost: shop.test\r\n${second}\r\n\r\n`);
    assert.equal(plain.responses[0].status, 400, second);
    const upgrade = await exchange(port, `GET /ws HTTP/1.1\r\nHost: shop.test\r\n${second}\r\n${WS_HEAD}\r\n`);
    assert.equal(upgrade.responses[0].status, 400, `upgrade, ${second}`);
  }
  assert.equal(up.conns.length, 0);
});

test('a Host that is no authority gets 400 for requests and upgrades, even when a wildcard rule would match it', async (t) => {
  const { port, up } = await setup(t, refusingApp, { over: { hosts: ['*.shop.test'] } });
  // Each ends in ".shop.test"; a browser or URL parser reads most as evil.example.
  for (const host of ['evil.example/.shop.test', 'evil.example\\.shop.test', 'evil.example#.shop.test', 'evil.example?.shop.test', 'evil example.shop.test', 'u@evil.example.shop.test', 'caf\u00e9.shop.test']) {
    const plain = await exchange(port, Buffer.from(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 'latin1'));
    assert.equal(plain.responses[0]?.status, 400, host);
    const upgrade = await exchange(port, Buffer.from(`GET /ws HTTP/1.1\r\nHost: ${host}\r\n${WS_HEAD}\r\n`, 'latin1'));
    assert.equal(upgrade.responses[0]?.status, 400, `upgrade, ${host}`);
  }
  assert.equal(up.conns.length, 0, 'the app was never contacted');
  // Authorities of every valid shape still route.
  for (const host of ['a.shop.test', 'A-b_c.Shop.Test.', 'x.shop.test:8080', 'x%2Dy.shop.test']) {
    const ok = await exchange(port, `GET /ok HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
    assert.equal(ok.responses[0]?.status, 200, host);
  }
});

test('Connection cannot strip Host, Content-Length or the forwarding headers', async (t) => {
  const { port, up } = await setup(t, seenResponder);
  const ex = await exchange(
    port,
    'POST /form HTTP/1.1\r\nHost: shop.test\r\nConnection: host, content-length, transfer-encoding, x-forwarded-for, x-real-ip, x-request-id, x-hop\r\nX-Hop: gone\r\nContent-Length: 5\r\n\r\nhello',
  );
  assert.equal(ex.responses[0].status, 200);
  const q = up.requests[0];
  assert.equal(header(q, 'host'), 'shop.test');
  assert.equal(header(q, 'content-length'), '5');
  assert.equal(q.body.toString(), 'hello');
  assert.equal(header(q, 'x-forwarded-for'), '127.0.0.1');
  assert.equal(header(q, 'x-real-ip'), '127.0.0.1');
  assert.ok(header(q, 'x-request-id'));
  assert.equal(header(q, 'x-hop'), undefined, 'other names still go');
});

test('underscored header names are dropped unless underscores_in_headers; Forwarded and X-Real-IP are never taken from an untrusted client', async (t) => {
  const spoof = 'X_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nmy_header: a\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n';
  const plain = await setup(t, refusingApp);
  await exchange(plain.port, `GET /a HTTP/1.1\r\nHost: shop.test\r\n${spoof}\r\n`);
  await exchange(plain.port, `GET /ws HTTP/1.1\r\nHost: shop.test\r\n${spoof}${WS_HEAD}\r\n`);
  assert.equal(plain.up.requests.length, 2);
  for (const q of plain.up.requests) {
    assert.deepEqual(q.headers.filter(([n]) => n.includes('_')), [], `${q.target}: no underscored name`);
    assert.deepEqual(headerAll(q, 'x-real-ip'), ['127.0.0.1'], `${q.target}: X-Real-IP is the client IP berth saw`);
    assert.equal(header(q, 'forwarded'), undefined);
    assert.equal(header(q, 'x-forwarded-for'), '6.6.6.6, 127.0.0.1', 'X-Forwarded-For appends, as before');
  }
  // The switch keeps underscores; one trusted proxy makes its X-Forwarded-For entry the client, and its
  // Forwarded header passes.
  const trusted = await setup(t, seenResponder, { underscores: true, trusted: 1 });
  await exchange(trusted.port, `GET /b HTTP/1.1\r\nHost: shop.test\r\n${spoof}\r\n`);
  const q = trusted.up.requests[0];
  assert.equal(header(q, 'my_header'), 'a');
  assert.equal(header(q, 'X_Forwarded_For'), '6.6.6.6');
  assert.deepEqual(headerAll(q, 'x-real-ip'), ['6.6.6.6']);
  assert.equal(header(q, 'forwarded'), 'for=6.6.6.6');
});

test('underscores_in_headers is applied by setConfig', async (t) => {
  const { port, up, proxy } = await setup(t, seenResponder);
  await exchange(port, 'GET /a HTTP/1.1\r\nHost: shop.test\r\nmy_header: a\r\n\r\n');
  const config = appConfig('shop', { hosts: ['shop.test'] });
  proxy.setConfig(berthConfig([config], { underscoresInHeaders: true }));
  await exchange(port, 'GET /b HTTP/1.1\r\nHost: shop.test\r\nmy_header: a\r\n\r\n');
  assert.equal(header(up.requests[0], 'my_header'), undefined);
  assert.equal(header(up.requests[1], 'my_header'), 'a');
});

// ---- finding 4 (WebSockets): the idle timeout --------------------------------------------------------

test('websockets.idle_timeout closes a silent WebSocket with 1001 and leaves a busy one open', async (t) => {
  const server = createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (d) => ws.send(String(d))));
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => sockets.add(s));
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const gen = new TestGeneration({ id: 'chat#1', app: 'chat', releaseId: 'r1' });
  gen.addPool('web', 4, [{ kind: 'tcp', host: '127.0.0.1', port: (server.address() as AddressInfo).port }]);
  const config = appConfig('chat', { websockets: { max: 10, idleTimeoutMs: 300 } });
  const { port } = await startProxy(t, [entry(config, gen)]);
  const connectWs = () =>
    new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
      t.after(() => ws.terminate());
      ws.once('open', () => resolve(ws));
      ws.once('error', reject);
    });
  const silent = await connectWs();
  const busy = await connectWs();
  const opened = Date.now();
  const silentClosed = new Promise<{ code: number; reason: string; at: number }>((r) => silent.once('close', (code, reason) => r({ code, reason: String(reason), at: Date.now() })));
  let busyClosed = false;
  busy.once('close', () => (busyClosed = true));
  const ticker = setInterval(() => busy.send('tick'), 60);
  t.after(() => clearInterval(ticker));
  const c = await silentClosed;
  assert.equal(c.code, 1001);
  assert.equal(c.reason, 'idle timeout');
  assert.ok(c.at - opened >= 250, `closed after ${c.at - opened} ms`);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(busyClosed, false, 'traffic keeps a WebSocket open');
  clearInterval(ticker);
  await waitFor(() => busyClosed, 'the busy one closes once silent too', 3_000);
  await waitFor(() => gen.inFlight === 0, 'both tunnels released');
});

// ---- a plain backend double-check: node:http sees one Host ------------------------------------------

test('node:http apps see the routed Host once', async (t) => {
  const seen: IncomingMessage[] = [];
  const be = await backend(t, (req, res) => {
    seen.push(req);
    res.end('ok');
  });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const { port } = await startProxy(t, [entry(appConfig('shop', { hosts: ['shop.test'] }), gen)]);
  const ex = await exchange(port, 'GET http://shop.test:8080/p HTTP/1.1\r\nHost: evil.example\r\n\r\n');
  assert.equal(ex.responses[0].status, 200);
  assert.deepEqual(seen[0].rawHeaders.filter((_, i, a) => i % 2 === 0 && a[i].toLowerCase() === 'host').length, 1);
  assert.equal(seen[0].headers.host, 'shop.test:8080');
});

// ---- framing the parser refuses only after the request event ------------------------------------------

test('with buffering off, a request whose Transfer-Encoding does not end in chunked (or comes with a length) never reaches the app', async (t) => {
  const buffering = { requests: false, responses: false, memoryBytes: 1024 * 1024, bodyTimeoutMs: 60_000, sendTimeoutMs: 60_000 };
  const { port, up } = await setup(t, seenResponder, { over: { buffering } });
  for (const framing of ['Transfer-Encoding: xchunked', 'Transfer-Encoding: chunked, identity', 'Transfer-Encoding: chunked\r\nContent-Length: 5', 'Transfer-Encoding: identity']) {
    const ex = await exchange(port, `GET /delete-everything HTTP/1.1\r\nHost: shop.test\r\n${framing}\r\n\r\n0\r\n\r\n`, { expect: 2 });
    assert.equal(ex.responses[0]?.status, 400, framing);
    assert.equal(ex.closed, true);
  }
  // Node's parser alone would emit the request first and refuse it after: the app would get its head.
  assert.equal(up.conns.length, 0, 'not a byte reached the app');
  for (const te of ['gzip, chunked', 'gzip,\tchunked', 'gzip ,\t chunked']) {
    const ok = await exchange(port, `POST /ok HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: ${te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n`);
    assert.equal(ok.responses[0].status, 200, `a coding list ending in chunked is fine: ${JSON.stringify(te)}`);
  }
});

test('a request that asked for an upgrade it does not get is answered, then its connection closes', async (t) => {
  const { port, up } = await setup(t, seenResponder);
  // POST is never upgraded (RFC 6455: GET only); node's parser drops what follows such a request in
  // the same packet, so the connection must not wait for a second answer that never comes.
  const ex = await exchange(port, `POST /form HTTP/1.1\r\nHost: shop.test\r\n${WS_HEAD}Content-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: shop.test\r\n\r\n`, { expect: 2, timeoutMs: 3_000 });
  assert.equal(ex.responses.length, 1);
  assert.equal(ex.responses[0].status, 200);
  assert.equal(responseHeader(ex.responses[0], 'connection'), 'close');
  assert.equal(ex.closed, true);
  assert.equal(up.requests.length, 1);
  assert.equal(up.requests[0].method, 'POST');
  assert.equal(up.requests[0].body.toString(), 'hello');
  assert.equal(header(up.requests[0], 'upgrade'), undefined);
});

test('Pool.pickTunnel: the ready instance with the fewest tunnels, whether or not its request slots are full', () => {
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const addr = { kind: 'tcp' as const, host: '127.0.0.1', port: 1 };
  const [a, b, c] = gen.addPool('web', 1, [addr, addr, addr]);
  const pool = gen.pools.get('web')!;
  a.inFlight = 1;
  b.inFlight = 1;
  c.state = 'starting';
  assert.equal(pool.pick(), null, 'no request slot free');
  b.tunnels = 2;
  a.tunnels = 1;
  for (let i = 0; i < 4; i++) assert.equal(pool.pickTunnel(), a);
  assert.equal(pool.pickTunnel(a), b);
  a.state = 'unhealthy';
  b.state = 'unhealthy';
  assert.equal(pool.pickTunnel(), null);
});
