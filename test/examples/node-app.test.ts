import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import WebSocket from 'ws';
import { DemoApp, EXAMPLES, connectRefused, freePort, tempDir, waitFor } from './demo-app.ts';

const APP_DIR = join(EXAMPLES, 'node-app');
const SECRET = 'do-not-leak-4b1d';
const BERTH_ENV = { BERTH_APP: 'node-demo', BERTH_RELEASE: '20250101120000-abc123', BERTH_PROCESS: 'web', BERTH_INSTANCE: '1' };

async function startApp(t: TestContext, env: Record<string, string> = {}): Promise<DemoApp & { port: number }> {
  const port = await freePort();
  const app = await DemoApp.start(t, {
    command: process.execPath,
    args: ['server.mjs'],
    cwd: APP_DIR,
    env: { PATH: process.env.PATH ?? '', PORT: String(port), SECRET_TOKEN: SECRET, ...BERTH_ENV, ...env },
    port,
  });
  return app as DemoApp & { port: number };
}

function openWs(t: TestContext, port: number, path = '/ws'): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`);
  t.after(() => ws.terminate());
  return new Promise((resolveWs, reject) => {
    ws.once('open', () => resolveWs(ws));
    ws.once('error', reject);
  });
}

function nextMessage(ws: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return new Promise((resolveMessage, reject) => {
    ws.once('message', (data: Buffer, isBinary: boolean) => resolveMessage({ data, isBinary }));
    ws.once('close', (code) => reject(new Error(`closed with ${code} before a message`)));
  });
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolveClose) => ws.once('close', (code: number, reason: Buffer) => resolveClose({ code, reason: reason.toString() })));
}

/** Sends a raw upgrade request and resolves with the response head and the socket (for frame-level tests). */
function rawUpgrade(t: TestContext, port: number, path: string, headers: Record<string, string>): Promise<{ head: string; socket: Socket; rest: Buffer }> {
  return new Promise((resolveUpgrade, reject) => {
    const socket = connect(port, '127.0.0.1');
    t.after(() => socket.destroy());
    const lines = [`GET ${path} HTTP/1.1`, `host: 127.0.0.1:${port}`, 'connection: Upgrade', 'upgrade: websocket'];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    socket.write(lines.join('\r\n') + '\r\n\r\n');
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      resolveUpgrade({ head: buf.subarray(0, end).toString('latin1'), socket, rest: buf.subarray(end + 4) });
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

function readAll(socket: Socket, first: Buffer): Promise<Buffer> {
  return new Promise((resolveAll) => {
    const chunks = [first];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('close', () => resolveAll(Buffer.concat(chunks)));
  });
}

const RFC_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

test('GET / reports the BERTH_* environment and the pid', async (t) => {
  const app = await startApp(t);
  const res = await app.request({ path: '/' });
  assert.equal(res.status, 200);
  assert.match(String(res.headers['content-type']), /^application\/json/);
  assert.deepEqual(res.json(), { app: 'node-demo', release: BERTH_ENV.BERTH_RELEASE, process: 'web', instance: 1, pid: app.proc.pid, inFlight: 0 });
});

test('GET /up answers 200 ok; HEAD /up has no body', async (t) => {
  const app = await startApp(t);
  const up = await app.request({ path: '/up' });
  assert.equal(up.status, 200);
  assert.equal(up.text(), 'ok');
  const head = await app.request({ path: '/up', method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.body.length, 0);
});

test('GET /slow waits and answers with its pid; a bad ms is a 400', async (t) => {
  const app = await startApp(t);
  const res = await app.request({ path: '/slow?ms=30' });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), { slept: 30, pid: app.proc.pid });
  for (const ms of ['abc', '-5', '1.5', '']) {
    const bad = await app.request({ path: `/slow?ms=${ms}` });
    assert.equal(bad.status, 400, `ms=${ms}`);
    assert.match(bad.json().error, /non-negative integer/);
  }
});

test('POST /echo streams the body back with its content-type', async (t) => {
  const app = await startApp(t);
  const big = randomBytes(512 * 1024);
  const res = await app.request({ path: '/echo', method: 'POST', headers: { 'content-type': 'application/x-test' }, body: big });
  assert.equal(res.status, 200);
  assert.equal(res.headers['content-type'], 'application/x-test');
  assert.ok(res.body.equals(big));

  const untyped = await app.request({ path: '/echo', method: 'POST', body: 'x' });
  assert.equal(untyped.headers['content-type'], 'application/octet-stream');

  // Streaming, not buffering: the first chunk comes back before the request body has ended.
  const received = await new Promise<string>((resolveEcho, reject) => {
    const req = request({ host: '127.0.0.1', port: app.port, path: '/echo', method: 'POST', headers: { 'content-type': 'text/plain' }, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
        if (text === 'first;') req.end('second');
      });
      res.on('end', () => resolveEcho(text));
    });
    req.on('error', reject);
    req.write('first;');
  });
  assert.equal(received, 'first;second');
});

test('wrong methods get 405, unknown paths and /env get 404 without leaking the environment', async (t) => {
  const app = await startApp(t);
  const getEcho = await app.request({ path: '/echo' });
  assert.equal(getEcho.status, 405);
  assert.equal(getEcho.headers.allow, 'POST');
  const postUp = await app.request({ path: '/up', method: 'POST', body: '' });
  assert.equal(postUp.status, 405);
  for (const path of ['/env', '/nope', '/up/extra']) {
    const res = await app.request({ path });
    assert.equal(res.status, 404, path);
    assert.ok(!res.text().includes(SECRET), `${path} leaks the environment`);
    assert.ok(!res.text().includes(process.env.PATH ?? '\0'), `${path} leaks PATH`);
  }
});

test('listens on $BERTH_SOCKET when it is set', async (t) => {
  const dir = await tempDir(t);
  const socketPath = join(dir, 'web.sock');
  const app = await DemoApp.start(t, {
    command: process.execPath,
    args: ['server.mjs'],
    cwd: APP_DIR,
    env: { PATH: process.env.PATH ?? '', BERTH_SOCKET: socketPath, PORT: '1', ...BERTH_ENV },
    socketPath,
  });
  const res = await app.request({ path: '/' });
  assert.equal(res.status, 200);
  assert.equal(res.json().pid, app.proc.pid);
});

test('a bad $PORT exits with status 2', async (t) => {
  const app = new DemoApp(t, { command: process.execPath, args: ['server.mjs'], cwd: APP_DIR, env: { PORT: 'eighty' } });
  assert.deepEqual(await app.exited, { code: 2, signal: null });
  assert.match(app.stderr, /PORT must be a port number/);
});

test('WebSocket /ws echoes text, binary, large and fragmented messages, answers pings and echoes the close code', async (t) => {
  const app = await startApp(t);
  const ws = await openWs(t, app.port);

  ws.send('hello');
  const text = await nextMessage(ws);
  assert.equal(text.isBinary, false);
  assert.equal(text.data.toString(), 'hello');

  const bytes = randomBytes(300);
  ws.send(bytes);
  const binary = await nextMessage(ws);
  assert.equal(binary.isBinary, true);
  assert.ok(binary.data.equals(bytes));

  // Sizes that need the 16-bit and the 64-bit length encodings.
  for (const size of [126, 70_000]) {
    const payload = randomBytes(size);
    ws.send(payload);
    assert.ok((await nextMessage(ws)).data.equals(payload), `${size} bytes`);
  }

  ws.send('frag', { fin: false });
  ws.send('mented', { fin: true });
  assert.equal((await nextMessage(ws)).data.toString(), 'fragmented');

  const pong = new Promise<Buffer>((r) => ws.once('pong', r));
  ws.ping('are you there');
  assert.equal((await pong).toString(), 'are you there');

  const done = closed(ws);
  ws.close(4000, 'bye');
  assert.equal((await done).code, 4000);
});

test('WebSocket /ws closes with 1009 for a message over 1 MiB and 1007 for invalid UTF-8 text', async (t) => {
  const app = await startApp(t);
  const tooBig = await openWs(t, app.port);
  const bigClosed = closed(tooBig);
  tooBig.send(Buffer.alloc(1024 * 1024 + 1));
  assert.equal((await bigClosed).code, 1009);

  const badText = await openWs(t, app.port);
  const textClosed = closed(badText);
  badText.send(Buffer.from([0x68, 0xff, 0xfe]), { binary: false });
  assert.equal((await textClosed).code, 1007);

  // The app is still fine afterwards.
  const ok = await openWs(t, app.port);
  ok.send('still here');
  assert.equal((await nextMessage(ok)).data.toString(), 'still here');
});

test('WebSocket handshake: RFC 6455 accept value; unmasked frames close with 1002; bad requests are refused', async (t) => {
  const app = await startApp(t);
  const good = await rawUpgrade(t, app.port, '/ws', { 'sec-websocket-key': RFC_KEY, 'sec-websocket-version': '13' });
  assert.match(good.head, /^HTTP\/1\.1 101 /);
  // The worked example of RFC 6455 § 1.3.
  assert.match(good.head, /\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=(\r\n|$)/i);

  const all = readAll(good.socket, good.rest);
  good.socket.write(Buffer.from([0x81, 0x02, 0x68, 0x69])); // "hi", not masked
  const frames = await all;
  assert.equal(frames[0], 0x88, 'a close frame');
  assert.equal(frames.readUInt16BE(2), 1002);

  const wrongPath = await rawUpgrade(t, app.port, '/other', { 'sec-websocket-key': RFC_KEY, 'sec-websocket-version': '13' });
  assert.match(wrongPath.head, /^HTTP\/1\.1 404 /);
  const noKey = await rawUpgrade(t, app.port, '/ws', { 'sec-websocket-version': '13' });
  assert.match(noKey.head, /^HTTP\/1\.1 400 /);
  const oldVersion = await rawUpgrade(t, app.port, '/ws', { 'sec-websocket-key': RFC_KEY, 'sec-websocket-version': '8' });
  assert.match(oldVersion.head, /^HTTP\/1\.1 426 /);
  assert.match(oldVersion.head, /\r\nsec-websocket-version: 13/i);
});

test('SIGTERM: stops accepting, finishes the in-flight /slow request, exits 0', async (t) => {
  const app = await startApp(t);
  let settled = false;
  const slow = app.request({ path: '/slow?ms=3000' }).finally(() => (settled = true));
  await waitFor(async () => (await app.request({ path: '/' })).json().inFlight === 1, 'the slow request to be in flight');

  app.proc.kill('SIGTERM');
  await waitFor(() => connectRefused(app.port), 'the listener to close');
  assert.equal(settled, false, 'the listener closed while /slow was still running');

  const res = await slow;
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), { slept: 3000, pid: app.proc.pid });
  assert.deepEqual(await app.exited, { code: 0, signal: null });
});

test('SIGTERM: idle keep-alive connections do not hold the stop; open WebSockets get 1001', async (t) => {
  const app = await startApp(t);
  // A keep-alive connection left idle after its response.
  const keptAlive = await new Promise<Socket>((resolveSocket, reject) => {
    const socket = connect(app.port, '127.0.0.1', () => socket.write(`GET /up HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n`));
    t.after(() => socket.destroy());
    socket.once('data', () => resolveSocket(socket));
    socket.once('error', reject);
  });
  const ws = await openWs(t, app.port);
  const wsClosed = closed(ws);
  const idleClosed = new Promise<void>((r) => keptAlive.once('close', () => r()));

  app.proc.kill('SIGTERM');
  assert.equal((await wsClosed).code, 1001);
  await idleClosed;
  assert.deepEqual(await app.exited, { code: 0, signal: null });
});
