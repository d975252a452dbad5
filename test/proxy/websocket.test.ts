import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type IncomingHttpHeaders } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo, Socket } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import type { AppConfig, RouteConfig } from '../../src/config/schema.ts';
import type { UpstreamAddress } from '../../src/supervisor/types.ts';
import { RoutingTable, type ModeState } from '../../src/proxy/router.ts';
import { FrameBoundary } from '../../src/proxy/frame-boundary.ts';
import { appConfig, berthConfig, captureLogger, entry, fetchRaw, processConfig, refusedAddress, route, startProxy, TestGeneration, waitFor } from './fixtures.ts';

interface WsBackend {
  address: UpstreamAddress;
  /** Upgrade requests received, in order. */
  upgrades: IncomingMessage[];
  /** Server-side sockets, in order of connection. */
  clients: WebSocket[];
}

/** A real http server with a `ws` echo at any path; `/refuse` answers the upgrade with 403. */
async function wsBackend(t: TestContext, label = 'echo'): Promise<WsBackend> {
  const server = createServer((_req, res) => res.end('plain'));
  const wss = new WebSocketServer({ noServer: true });
  const b: WsBackend = { address: { kind: 'tcp', host: '127.0.0.1', port: 0 }, upgrades: [], clients: [] };
  const sockets = new Set<Socket>();
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    b.upgrades.push(req);
    sockets.add(socket);
    if (req.url === '/refuse') {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\nconnection: close\r\n\r\nnot ok');
      return;
    }
    if (req.url === '/silent') return;
    wss.handleUpgrade(req, socket, head, (ws) => {
      b.clients.push(ws);
      ws.on('message', (data, binary) => ws.send(binary ? data : `${label}:${data}`, { binary }));
    });
  });
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    // Upgraded sockets have left the HTTP server, but server.close() still waits for them.
    for (const s of sockets) s.destroy();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  b.address = { kind: 'tcp', host: '127.0.0.1', port: (server.address() as AddressInfo).port };
  return b;
}

interface Opened {
  ws: WebSocket;
  headers: IncomingHttpHeaders;
}

/** Opens a WebSocket; resolves once open, rejects with the HTTP status when the upgrade is refused. */
function open(t: TestContext, url: string, headers: Record<string, string> = {}): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    t.after(() => ws.terminate());
    let upgradeHeaders: IncomingHttpHeaders = {};
    ws.once('upgrade', (res) => (upgradeHeaders = res.headers));
    ws.once('open', () => resolve({ ws, headers: upgradeHeaders }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c));
      res.on('end', () => reject(Object.assign(new Error(`status ${res.statusCode}`), { status: res.statusCode, headers: res.headers, body })));
    });
    ws.once('error', reject);
  });
}

function refused(t: TestContext, url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return open(t, url, headers).then(
    () => assert.fail('the upgrade was accepted'),
    (err) => {
      if (typeof err.status !== 'number') throw err;
      return err;
    },
  );
}

function nextMessage(ws: WebSocket): Promise<string> {
  return new Promise((resolve) => ws.once('message', (d) => resolve(String(d))));
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) })));
}

async function setup(t: TestContext, opts: { over?: Partial<AppConfig>; mode?: Partial<ModeState>; concurrency?: number; addresses?: UpstreamAddress[] } = {}) {
  const be = await wsBackend(t);
  const gen = new TestGeneration({ id: 'chat#1', app: 'chat', releaseId: 'r1' });
  gen.addPool('web', opts.concurrency ?? 8, opts.addresses ?? [be.address]);
  const config = appConfig('chat', opts.over);
  const log = captureLogger();
  const running = await startProxy(t, [entry(config, gen, opts.mode)], { logger: log.logger });
  return { ...running, be, gen, config, lines: log.lines, ws: `ws://127.0.0.1:${running.port}` };
}

test('messages flow both ways with forwarding headers; the socket counts as a tunnel (not a request slot) until it closes', async (t) => {
  const { ws: base, be, gen, proxy, lines } = await setup(t);
  const { ws } = await open(t, `${base}/chat?room=1`, { 'x-forwarded-for': '9.9.9.9', 'x-berth-mode': 'read-only', 'x-request-id': 'ws-req-1' });
  ws.send('hi');
  assert.equal(await nextMessage(ws), 'echo:hi');
  const big = Buffer.alloc(300_000, 7);
  const echoed = new Promise<Buffer>((r) => ws.once('message', (d) => r(d as Buffer)));
  ws.send(big);
  assert.deepEqual(await echoed, big);
  const up = be.upgrades[0];
  assert.equal(up.url, '/chat?room=1');
  assert.equal(up.headers.upgrade, 'websocket');
  assert.match(String(up.headers.connection), /upgrade/i);
  assert.ok(up.headers['sec-websocket-key']);
  assert.equal(up.headers['x-forwarded-for'], '9.9.9.9, 127.0.0.1');
  assert.equal(up.headers['x-forwarded-proto'], 'http');
  assert.equal(up.headers['x-request-id'], 'ws-req-1');
  assert.equal(up.headers['x-berth-release'], 'r1');
  assert.equal(up.headers['x-berth-mode'], undefined, 'a client cannot claim a mode');
  assert.match(String(up.headers['x-request-start']), /^t=\d+$/);
  assert.equal(up.headers['x-real-ip'], '127.0.0.1');
  const inst = gen.instances()[0];
  assert.equal(inst.inFlight, 0, 'no request ticket');
  assert.equal(inst.tunnels, 1);
  assert.equal(gen.inFlight, 1, 'a drain still sees it');
  assert.equal(proxy.inFlight, 1);
  assert.equal(proxy.upgrades, 1);
  ws.close(1000, 'bye');
  assert.equal((await closed(ws)).code, 1000);
  await waitFor(() => inst.tunnels === 0 && proxy.inFlight === 0 && proxy.upgrades === 0, 'the tunnel to end');
  assert.deepEqual(inst.mistakes, []);
  await waitFor(() => lines.some((l) => l.msg === 'request' && l.status === 101), 'the access log line');
  const line = lines.find((l) => l.msg === 'request' && l.status === 101)!;
  assert.equal(line.path, '/chat?room=1');
  assert.equal(line.instance, 'web.0');
  assert.equal(line.requestId, 'ws-req-1');
});

test('the instance closing its side ends the tunnel, with its close code', async (t) => {
  const { ws: base, be, gen, proxy } = await setup(t);
  const { ws } = await open(t, `${base}/chat`);
  const done = closed(ws);
  be.clients[0].close(4000, 'server says bye');
  assert.deepEqual(await done, { code: 4000, reason: 'server says bye' });
  await waitFor(() => gen.inFlight === 0 && proxy.upgrades === 0, 'the tunnel to end');
});

test('WebSockets take no request slots: with concurrency 1, open WebSockets leave room for requests; websockets.max bounds them with 503', async (t) => {
  const over = { processes: { web: processConfig('web', 1, 1) }, queue: { max: 1, timeoutMs: 10_000 }, websockets: { max: 2, idleTimeoutMs: null } };
  const { ws: base, proxy, gen, port } = await setup(t, { over, concurrency: 1 });
  const first = await open(t, `${base}/a`);
  const second = await open(t, `${base}/b`);
  // Before: the first WebSocket held the only slot, the second queued and a plain request got 503.
  const plain = await fetchRaw(`http://127.0.0.1:${port}/plain`);
  assert.equal(plain.status, 200);
  assert.equal(plain.text, 'plain');
  const third = await refused(t, `${base}/c`);
  assert.equal(third.status, 503);
  assert.equal(third.headers['x-berth-reason'], 'websocket-limit');
  assert.equal(third.headers['retry-after'], '1');
  assert.equal(gen.inFlight, 2);
  assert.equal(gen.instances()[0].tunnels, 2);
  assert.equal(gen.instances()[0].peak, 1, 'requests alone count against the concurrency');
  first.ws.close();
  await waitFor(() => gen.instances()[0].tunnels === 1 && proxy.upgrades === 1, 'a slot freed');
  const { ws } = await open(t, `${base}/d`);
  ws.send('x');
  assert.equal(await nextMessage(ws), 'echo:x');
  second.ws.send('y');
  assert.equal(await nextMessage(second.ws), 'echo:y');
  assert.deepEqual(gen.instances()[0].mistakes, []);
});

test('with no ready instance an upgrade waits up to queue.timeout, then gets 503; a client that leaves while waiting is forgotten', async (t) => {
  const over = { queue: { max: 5, timeoutMs: 300 } };
  const { ws: base, proxy, gen } = await setup(t, { over });
  const inst = gen.instances()[0];
  inst.state = 'starting';
  const leaving = new WebSocket(`${base}/b`);
  leaving.on('error', () => {});
  await waitFor(() => proxy.upgrades === 1, 'waiting');
  leaving.terminate();
  await waitFor(() => proxy.upgrades === 0, 'the waiting one gone');
  const r = await refused(t, `${base}/a`);
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-reason'], 'queue-timeout');
  // An instance that becomes ready in time takes the waiting upgrade.
  const pending = open(t, `${base}/c`);
  await waitFor(() => proxy.upgrades === 1, 'waiting again');
  inst.state = 'ready';
  const { ws } = await pending;
  ws.send('late');
  assert.equal(await nextMessage(ws), 'echo:late');
  assert.deepEqual(inst.mistakes, []);
});

test('closeUpgrades(gen) sends 1001 to that generation only, after the frame under way', async (t) => {
  const { ws: base, be, gen, proxy, config } = await setup(t);
  const be2 = await wsBackend(t, 'new');
  const gen2 = new TestGeneration({ id: 'chat#2', app: 'chat', releaseId: 'r2' });
  gen2.addPool('web', 8, [be2.address]);
  const a = await open(t, `${base}/a`);
  proxy.setTable(new RoutingTable([entry(config, gen2)]));
  const b = await open(t, `${base}/b`);
  // The old instance has sent half of a 10-byte text frame when the drain deadline passes.
  const raw = (be.clients[0] as unknown as { _socket: Socket })._socket;
  raw.write(Buffer.from([0x81, 10, ...Buffer.from('hell')]));
  const messages: string[] = [];
  a.ws.on('message', (d) => messages.push(String(d)));
  const aClosed = closed(a.ws);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(proxy.closeUpgrades(gen), 1);
  await new Promise((r) => setTimeout(r, 30));
  raw.write(Buffer.from('o worl'));
  const c = await aClosed;
  assert.equal(c.code, 1001);
  assert.equal(c.reason, 'release replaced');
  assert.deepEqual(messages, ['hello worl'], 'the frame under way arrived whole, then the close frame');
  await waitFor(() => gen.inFlight === 0, 'the old generation drained');
  b.ws.send('still here');
  assert.equal(await nextMessage(b.ws), 'new:still here');
  assert.equal(proxy.closeUpgrades(gen), 0);
});

test('read-only lets upgrades through with X-Berth-Mode both ways; maintenance refuses them with 503', async (t) => {
  const { ws: base, be, proxy, config, gen } = await setup(t, { mode: { mode: 'read-only' } });
  const { ws, headers } = await open(t, `${base}/a`);
  assert.equal(headers['x-berth-mode'], 'read-only');
  assert.equal(be.upgrades[0].headers['x-berth-mode'], 'read-only');
  ws.send('ok');
  assert.equal(await nextMessage(ws), 'echo:ok');
  proxy.setTable(new RoutingTable([entry(config, gen, { mode: 'maintenance', message: 'later', retryAfter: 30 })]));
  const r = await refused(t, `${base}/b`);
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-mode'], 'maintenance');
  assert.equal(r.headers['retry-after'], '30');
  assert.match(r.body, /later/);
  assert.equal(be.upgrades.length, 1);
  // The socket opened before the switch is untouched.
  ws.send('still');
  assert.equal(await nextMessage(ws), 'echo:still');
});

test('refusals: no route 404, a static route 400, the health lane 400, rate limit 429, no generation 503', async (t) => {
  const routes: RouteConfig[] = [route('/ws'), { path: '/static', to: null, static: 'public', cache: null, cors: null, buffering: true, affinity: null }];
  const over = { hosts: ['chat.test'], routes, rateLimit: { count: 1, perMs: 60_000, burst: 1, paths: ['/ws/limited'] } };
  const { ws: base, proxy, config } = await setup(t, { over });
  assert.equal((await refused(t, `${base}/ws`, { host: 'other.test' })).status, 404);
  assert.equal((await refused(t, `${base}/static/x`, { host: 'chat.test' })).status, 400);
  assert.equal((await refused(t, `${base}/_berth/health`, { host: 'chat.test' })).status, 400);
  await open(t, `${base}/ws/limited`, { host: 'chat.test' });
  const limited = await refused(t, `${base}/ws/limited`, { host: 'chat.test', accept: 'application/json' });
  assert.equal(limited.status, 429);
  assert.ok(Number(limited.headers['retry-after']) >= 55 && Number(limited.headers['retry-after']) <= 60);
  assert.deepEqual(JSON.parse(limited.body), { error: { status: 429, reason: 'rate-limited' } });
  proxy.setTable(new RoutingTable([entry(config, null)]));
  assert.equal((await refused(t, `${base}/ws`, { host: 'chat.test' })).status, 503);
});

test('upstream problems: a refused instance is retried on another; all refused is 502; a refusal by the app passes through', async (t) => {
  const dead = await refusedAddress();
  const live = await wsBackend(t);
  const { ws: base, gen, lines } = await setup(t, { addresses: [dead, live.address] });
  // Pool.pick rotates: open several so the dead instance is tried first at least once.
  for (let i = 0; i < 3; i++) {
    const { ws } = await open(t, `${base}/x${i}`);
    ws.send('a');
    assert.equal(await nextMessage(ws), 'echo:a');
    ws.close();
  }
  await waitFor(() => gen.inFlight === 0, 'all closed');
  assert.ok(lines.some((l) => l.msg === 'websocket upstream retry'), 'the dead instance was tried and the socket retried');
  assert.deepEqual(gen.instances()[0].mistakes, []);
  assert.equal(live.upgrades.length, 3);
  const only = await setup(t, { addresses: [dead] });
  const r = await refused(t, `${only.ws}/x`);
  assert.equal(r.status, 502);
  assert.equal(r.headers['x-berth-reason'], 'upstream-unreachable');
  await waitFor(() => only.gen.inFlight === 0 && only.proxy.inFlight === 0, 'nothing left in flight');
  const app = await setup(t);
  const forbidden = await refused(t, `${app.ws}/refuse`);
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.body, 'not ok');
  await waitFor(() => app.gen.inFlight === 0 && app.proxy.upgrades === 0, 'the refused tunnel ended');
  assert.equal(app.be.upgrades.length, 1);
});

test('an instance that does not answer the upgrade within timeouts.headers gives 504', async (t) => {
  const over = { timeouts: { headersMs: 150, drainMs: 30_000, stopMs: 10_000 } };
  const { ws: base, gen, proxy } = await setup(t, { over });
  const r = await refused(t, `${base}/silent`);
  assert.equal(r.status, 504);
  assert.equal(r.headers['x-berth-reason'], 'upstream-timeout');
  await waitFor(() => gen.inFlight === 0 && proxy.upgrades === 0, 'nothing left');
});

test('a proxy stop closes every WebSocket with 1001 and then finishes', async (t) => {
  const be = await wsBackend(t);
  const gen = new TestGeneration({ id: 'chat#1', app: 'chat', releaseId: 'r1' });
  gen.addPool('web', 8, [be.address]);
  const config = appConfig('chat');
  const { proxy, port } = await startProxy(t, [entry(config, gen)], { config: berthConfig([config]) });
  const a = await open(t, `ws://127.0.0.1:${port}/a`);
  const b = await open(t, `ws://127.0.0.1:${port}/b`);
  const closes = Promise.all([closed(a.ws), closed(b.ws)]);
  await proxy.stop(5_000);
  const [ca, cb] = await closes;
  assert.equal(ca.code, 1001);
  assert.equal(cb.code, 1001);
  assert.equal(ca.reason, 'gateway stopping');
  assert.equal(gen.inFlight, 0);
  assert.equal(proxy.state, 'stopped');
});

test('an instance listening on a unix socket gets its WebSockets too', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-ws-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'app.sock');
  const server = createServer();
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.on('message', (d) => ws.send(`unix:${d}`)));
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    await new Promise<void>((r) => server.close(() => r()));
  });
  await new Promise<void>((r) => server.listen(path, r));
  const gen = new TestGeneration({ id: 'chat#1', app: 'chat', releaseId: 'r1' });
  gen.addPool('web', 4, [{ kind: 'unix', path }]);
  const { port } = await startProxy(t, [entry(appConfig('chat', { listen: 'socket' }), gen)]);
  const { ws } = await open(t, `ws://127.0.0.1:${port}/x`);
  ws.send('hi');
  assert.equal(await nextMessage(ws), 'unix:hi');
  ws.close();
  await waitFor(() => gen.inFlight === 0, 'closed');
});

test('FrameBoundary follows frames of every length form, split anywhere', () => {
  const frame = (len: number, masked: boolean): Buffer => {
    const ext = len < 126 ? Buffer.from([masked ? 0x80 | len : len]) : len < 65_536 ? Buffer.from([masked ? 0xfe : 126, len >> 8, len & 255]) : Buffer.concat([Buffer.from([masked ? 0xff : 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(len)); return b; })()]);
    return Buffer.concat([Buffer.from([0x82]), ext, masked ? Buffer.alloc(4, 9) : Buffer.alloc(0), Buffer.alloc(len, 1)]);
  };
  const stream = Buffer.concat([frame(0, false), frame(5, true), frame(300, false), frame(70_000, false), frame(125, true)]);
  const ends = new Set<number>();
  let at = 0;
  for (const f of [frame(0, false), frame(5, true), frame(300, false), frame(70_000, false), frame(125, true)]) ends.add((at += f.length));
  // Fed one byte at a time, it is at a boundary exactly after each frame.
  const fb = new FrameBoundary();
  assert.equal(fb.atBoundary, true);
  for (let i = 0; i < stream.length; i++) {
    fb.consume(stream.subarray(i, i + 1), false);
    assert.equal(fb.atBoundary, ends.has(i + 1), `after byte ${i + 1}`);
  }
  // With stop, it halts at the next boundary inside a chunk.
  const fb2 = new FrameBoundary();
  fb2.consume(stream.subarray(0, 4), false); // the empty frame, and half of the second one's header
  assert.equal(fb2.atBoundary, false);
  const n = fb2.consume(stream.subarray(4, 500), true);
  assert.equal(4 + n, [...ends][1]);
  assert.equal(fb2.atBoundary, true);
  assert.equal(fb2.consume(stream.subarray(4 + n), true), 0, 'already at a boundary: nothing consumed');
});
