/**
 * Issue #10, findings 9, 13 and 17 over real sockets against a real gateway: an unauthenticated TCP
 * control connection is closed after its 401; request bodies have a size limit (413), a time limit
 * (408) and a nesting limit (400, not 500); every refused change is audited, on every mutating route;
 * permission regexes match whole app names; call-context user names are plain and not berth's own; the
 * call-context header counts only from `control.call_context_from`; the health details moved from the
 * front door to the control API.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { createServer, request } from 'node:http';
import { ApiRoutes } from '../../src/api/routes.ts';
import { BODY_TIMEOUT_MS, HEADERS_TIMEOUT_MS, MAX_BODY_BYTES, readJsonBody } from '../../src/api/server.ts';
import type { Gateway } from '../../src/gateway.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, startGateway, tempDir, waitFor, writeConfig, type HttpResult } from '../helpers/gateway.ts';
import { CONTEXT_HEADER, TOKENS, b64, controlTokens } from '../helpers/control-tokens.ts';

interface Running {
  gateway: Gateway;
  /** The front door. */
  port: number;
  /** The TCP control API. */
  control: number;
}

/** A gateway in this process with two apps, `shop` and `shop-admin`, and the TCP control API. */
async function start(t: TestContext, control: Record<string, unknown> = {}, top: Record<string, unknown> = {}): Promise<Running> {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const app = (host: string) => ({
    source: src,
    hosts: [host],
    processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1, concurrency: 4 } },
    health: { path: '/up', interval: '250ms' },
    timeouts: { drain: '2s', stop: '2s' },
  });
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'silent' },
    control: {
      listen: '127.0.0.1:0',
      call_context_header: CONTEXT_HEADER,
      tokens: controlTokens(),
      permissions: { default: { alice: ['shop'] } },
      ...control,
    },
    ...top,
    apps: { shop: app('shop.test'), 'shop-admin': app('admin.test') },
  });
  const { gateway, port } = await startGateway(t, file);
  // The boot deploys finish first: a gateway stopped in the middle of one leaves a release half copied.
  await waitFor(() => ['shop', 'shop-admin'].every((a) => gateway.appStatus(a)?.healthy), { timeoutMs: 30_000, message: 'both apps ready' });
  const listen = gateway.status().controlListen;
  assert.ok(listen, 'control.listen is bound');
  return { gateway, port, control: Number(listen.split(':').pop()) };
}

/** A control API call over TCP. */
function tcp(port: number, method: string, path: string, opts: { token?: string; headers?: Record<string, string>; body?: string } = {}): Promise<HttpResult> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  return http({ port }, { method, path, headers, body: opts.body });
}

/** Opens a raw connection, writes `data`, and collects everything until the server ends it (or `waitMs`). */
async function raw(port: number, data: string | Buffer, waitMs: number, localAddress?: string): Promise<{ text: string; ended: boolean; sock: Socket }> {
  const sock = connect({ port, host: '127.0.0.1', localAddress });
  sock.on('error', () => {});
  let text = '';
  sock.on('data', (c: Buffer) => (text += c.toString('latin1')));
  const ended = new Promise<boolean>((resolve) => {
    sock.once('end', () => resolve(true));
    sock.once('close', () => resolve(true));
    setTimeout(() => resolve(false), waitMs).unref();
  });
  await new Promise<void>((r) => sock.once('connect', r));
  sock.write(data);
  const done = await ended;
  if (!done) sock.destroy();
  return { text, ended: done, sock };
}

function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
}

/** The audit rows of the last moment, newest first. */
async function rows(gw: Gateway, filter: { app?: string; user?: string } = {}) {
  return gw.history({ ...filter, limit: 1000 });
}

test('finding 9: a TCP connection refused with 401 is closed after the answer; an authenticated one is kept alive', async (t) => {
  const { control } = await start(t);
  // Two pipelined requests: the first is refused, and the second is never read.
  const pipelined = 'POST /v1/apps/shop/reload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}' + 'GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n';
  const r = await raw(control, pipelined, 4_000);
  assert.deepEqual(statuses(r.text), [401], r.text);
  assert.match(r.text, /\r\nconnection: close\r\n/i);
  assert.ok(r.ended, 'the server ended the connection (well before its 5s keep-alive timeout)');

  // With a token the same connection carries both requests.
  const auth = `Authorization: Bearer ${TOKENS.vic}\r\n`;
  const ok = await raw(control, `GET /v1/whoami HTTP/1.1\r\nHost: x\r\n${auth}\r\nGET /v1/status HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, 1_500);
  assert.deepEqual(statuses(ok.text), [200, 200]);
  assert.equal(ok.ended, false, 'an authenticated connection stays open');
});

test('finding 9: bodies over the limit get 413 and slow bodies 408, each closing the connection and audited as refused', async (t) => {
  const { gateway, control } = await start(t);
  const auth = `Authorization: Bearer ${TOKENS.root}\r\n`;
  // Told by Content-Length: answered at once, without reading the body.
  const declared = await raw(control, `POST /v1/apps/shop/deploys HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/json\r\nContent-Length: ${2 * MAX_BODY_BYTES}\r\n\r\n`, 5_000);
  assert.deepEqual(statuses(declared.text), [413], declared.text);
  assert.match(declared.text, /"code":"BERTH_E_TOO_LARGE"/);
  assert.match(declared.text, /\r\nconnection: close\r\n/i);
  assert.ok(declared.ended);
  // Chunked, so only counting finds it: a little over the limit, and no last chunk.
  const size = MAX_BODY_BYTES + 1;
  const chunked = Buffer.concat([
    Buffer.from(`PUT /v1/apps/shop/mode HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${size.toString(16)}\r\n`),
    Buffer.alloc(size, 0x20),
    Buffer.from('\r\n'),
  ]);
  const streamed = await raw(control, chunked, 5_000);
  assert.deepEqual(statuses(streamed.text), [413], streamed.text.slice(0, 300));
  assert.ok(streamed.ended);

  // A body that stops arriving: 408 after BODY_TIMEOUT_MS.
  const began = Date.now();
  const slow = await raw(control, `POST /v1/apps/shop/reload HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":`, BODY_TIMEOUT_MS + 10_000);
  const took = Date.now() - began;
  assert.deepEqual(statuses(slow.text), [408], slow.text);
  assert.match(slow.text, /"code":"BERTH_E_TIMEOUT"/);
  assert.ok(slow.ended);
  assert.ok(took >= BODY_TIMEOUT_MS - 100, `answered after ${took}ms`);
  t.diagnostic(`408 after ${took}ms (limit ${BODY_TIMEOUT_MS}ms)`);

  const refused = (await rows(gateway, { user: 'root' })).filter((r) => r.outcome === 'refused');
  const has = (action: string, re: RegExp) => refused.some((r) => r.action === action && r.app === 'shop' && r.channel === 'tcp' && re.test(r.detail ?? ''));
  assert.ok(has('deploy', /larger than/), JSON.stringify(refused));
  assert.ok(has('mode', /larger than/), JSON.stringify(refused));
  assert.ok(has('reload', /did not arrive within/), JSON.stringify(refused));
  assert.equal((await tcp(control, 'GET', '/v1/apps/shop', { token: TOKENS.root })).json().mode, 'normal');
});

test('finding 9: a deeply nested JSON body is a 400, not a 500, and is audited as refused', async (t) => {
  const { gateway, control } = await start(t);
  const depth = 100_000;
  const deep = `{"mode":${'['.repeat(depth)}${']'.repeat(depth)}}`;
  const res = await tcp(control, 'PUT', '/v1/apps/shop/mode', { token: TOKENS.alice, body: deep });
  assert.equal(res.status, 400, res.body);
  assert.equal(res.json().error.code, 'BERTH_E_BAD_REQUEST');
  assert.match(res.json().error.message, /nested more than \d+ levels/);
  // The same on the socket, and an ordinary body still works.
  const viaSocket = await http({ socketPath: gateway.config.control.socket }, { method: 'POST', path: '/v1/apps/shop/deploys', body: `{"source":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}` });
  assert.equal(viaSocket.status, 400, viaSocket.body);
  const row = (await rows(gateway, { user: 'alice' })).find((r) => r.action === 'mode');
  assert.equal(row?.outcome, 'refused');
  assert.match(row?.detail ?? '', /nested/);
  assert.equal((await tcp(control, 'PUT', '/v1/apps/shop/mode', { token: TOKENS.alice, body: '{"mode":"read-only"}' })).status, 200);
});

test('finding 9: every mutating route audits its refusals: 401, 403, 400, 404 and 422', async (t) => {
  const { gateway, control } = await start(t);
  const changes = new ApiRoutes(gateway).changes();
  // Every change endpoint of the API is here (a new one must name an audit action to register at all).
  assert.deepEqual(changes.map((c) => `${c.method} ${c.path}`).sort(), [
    'POST /v1/apps/:app/deploys',
    'POST /v1/apps/:app/flush',
    'POST /v1/apps/:app/reload',
    'POST /v1/apps/:app/rollback',
    'POST /v1/apps/:app/run',
    'POST /v1/apps/:app/scale',
    'POST /v1/config/reload',
    'POST /v1/stop',
    'POST /v1/upgrade',
    'PUT /v1/apps/:app/mode',
  ]);
  for (const { method, path, action } of changes) {
    const url = path.replace(':app', 'shop');
    const app = path.includes(':app') ? 'shop' : null;
    const expect = async (status: number, user: string, opts: Parameters<typeof tcp>[3]) => {
      const res = await tcp(control, method, url, opts);
      assert.equal(res.status, status, `${method} ${url}: ${res.body}`);
      const row = (await rows(gateway, { user })).find((r) => r.action === action && r.app === app);
      assert.equal(row?.outcome, 'refused', `${status} on ${method} ${url} is audited: ${JSON.stringify(row)}`);
      assert.equal(row?.channel, 'tcp');
      return row!;
    };
    const anon = await expect(401, 'unauthenticated', { body: '{}' });
    assert.match(anon.detail ?? '', /needs an Authorization: Bearer token.*from 127\.0\.0\.1/);
    const bad = await expect(400, 'root', { token: TOKENS.root, body: '{"not json' });
    assert.match(bad.detail ?? '', /not valid JSON/);
    await expect(403, 'vic', { token: TOKENS.vic, body: '{}' });
  }
  // Refusals by the handler itself: an unknown app (404) and an impossible request (422).
  const missing = await tcp(control, 'POST', '/v1/apps/nope/reload', { token: TOKENS.root, body: '{}' });
  assert.equal(missing.status, 404);
  const unprocessable = await tcp(control, 'PUT', '/v1/apps/shop/mode', { token: TOKENS.root, body: '{"mode":"upside-down"}' });
  assert.equal(unprocessable.status, 422);
  const mine = await rows(gateway, { user: 'root' });
  assert.equal(mine.find((r) => r.action === 'reload' && r.app === 'nope')?.outcome, 'refused');
  assert.ok(mine.some((r) => r.action === 'mode' && r.outcome === 'refused' && /unknown mode/.test(r.detail ?? '')));
  assert.ok(mine.every((r) => r.outcome !== 'pending'));
  assert.equal(gateway.state, 'running', 'the refused stops stopped nothing');
});

test('finding 13: a permission regex matches the whole app name, and call-context users are plain and not berth\'s own', async (t) => {
  const { gateway, control } = await start(t);
  // `shop` grants shop and no longer shop-admin.
  const denied = await tcp(control, 'PUT', '/v1/apps/shop-admin/mode', { token: TOKENS.alice, body: '{"mode":"maintenance"}' });
  assert.equal(denied.status, 403, denied.body);
  assert.match(denied.json().error.message, /may not mode app "shop-admin"/);
  assert.equal((await tcp(control, 'GET', '/v1/apps/shop-admin', { token: TOKENS.alice })).status, 403);
  assert.equal((await tcp(control, 'PUT', '/v1/apps/shop/mode', { token: TOKENS.alice, body: '{"mode":"maintenance"}' })).status, 200);
  assert.equal(gateway.appStatus('shop-admin')!.mode, 'normal');
  assert.deepEqual((await tcp(control, 'GET', '/v1/whoami', { token: TOKENS.alice })).json().changeable, ['shop']);

  // A call context may not pose as berth itself, nor carry odd characters into the audit log.
  for (const user of ['berth-start', 'supervisor', 'scheduler', 'SIGHUP', 'reload-trigger', 'cleanup', 'root', 'system', 'unauthenticated', 'bob\u202e', 'a b', '<script>', 'x'.repeat(65)]) {
    const res = await tcp(control, 'POST', '/v1/apps/shop/reload', { headers: { [CONTEXT_HEADER]: b64({ user, roles: ['admin'] }) }, body: '{}' });
    assert.equal(res.status, 401, `${user}: ${res.body}`);
  }
  const carol = await tcp(control, 'GET', '/v1/whoami', { headers: { [CONTEXT_HEADER]: b64({ user: 'carol@example.com', roles: ['viewer'] }) } });
  assert.equal(carol.status, 200);
  assert.equal(carol.json().user, 'carol@example.com');
  const impostors = (await rows(gateway)).filter((r) => r.channel === 'tcp' && ['berth-start', 'supervisor', 'scheduler', 'SIGHUP'].includes(r.user));
  assert.deepEqual(impostors, []);
  // On the socket (admin through its file permissions) the CLI's OS account is kept, root included, but
  // a name berth writes for its own actions is kept apart from berth's own rows.
  const onSocket = async (name: string) => (await http({ socketPath: gateway.config.control.socket }, { path: '/v1/whoami', headers: { 'x-berth-user': name } })).json().user;
  assert.equal(await onSocket('berth-start'), 'berth-start@socket');
  assert.equal(await onSocket('Scheduler'), 'Scheduler@socket');
  assert.equal(await onSocket('root'), 'root');
  assert.equal(await onSocket('bad name'), 'socket');
});

/** A control call over TCP from a chosen local address (127.0.0.2 is loopback too, on Linux). */
function from(localAddress: string, port: number, path: string, headers: Record<string, string>): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers, localAddress, agent: false }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('finding 13: the call-context header is honoured only from control.call_context_from, and ignored elsewhere', async (t) => {
  const { control } = await start(t, { call_context_from: ['127.0.0.2/32'] });
  const context = { [CONTEXT_HEADER]: b64({ user: 'carol', roles: ['admin'] }) };
  // From the trusted proxy's address: honoured.
  const trusted = await from('127.0.0.2', control, '/v1/whoami', context);
  assert.equal(trusted.status, 200);
  assert.equal(trusted.body.user, 'carol');
  // From anywhere else: ignored, so it is a 401 that says why...
  const other = await from('127.0.0.1', control, '/v1/whoami', context);
  assert.equal(other.status, 401);
  assert.match(other.body.error.message, /not honoured from 127\.0\.0\.1: it is not in control\.call_context_from/);
  assert.ok(!other.body.error.message.includes('127.0.0.2'), 'the trusted proxy\'s address is not told');
  // ...or the bearer token beside it decides who the caller is.
  const withToken = await from('127.0.0.1', control, '/v1/whoami', { ...context, authorization: `Bearer ${TOKENS.vic}` });
  assert.equal(withToken.status, 200);
  assert.equal(withToken.body.user, 'vic');
  assert.equal(withToken.body.role, 'viewer');
});

test('finding 17: the front door gives status only; the control API gives the details', async (t) => {
  const { gateway, port, control } = await start(t);
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  const ready = await http({ port }, { path: '/_berth/ready' });
  assert.equal(ready.body, '{"status":"ready"}');
  const shop = await http({ port }, { path: '/_berth/apps/shop/health' });
  assert.equal(shop.status, 200);
  assert.equal(shop.body, '{"status":"ok"}');
  // An unknown app cannot be told from an unhealthy one on the front door.
  const unknown = await http({ port }, { path: '/_berth/apps/no-such-app/health' });
  assert.equal(unknown.status, 503);
  assert.equal(unknown.body, '{"status":"unavailable"}');
  assert.ok(!/shop|release|instances/.test(ready.body + shop.body + unknown.body));

  const detailed = await tcp(control, 'GET', '/v1/ready', { token: TOKENS.vic });
  assert.equal(detailed.status, 200);
  assert.equal(detailed.json().status, 'ready');
  assert.deepEqual(Object.keys(detailed.json().apps).sort(), ['shop', 'shop-admin']);
  assert.equal(detailed.json().apps.shop.release, gateway.appStatus('shop')!.activeRelease);
  // A caller limited to some apps sees only those.
  assert.deepEqual(Object.keys((await tcp(control, 'GET', '/v1/ready', { token: TOKENS.alice })).json().apps), ['shop']);
  const health = await tcp(control, 'GET', '/v1/apps/shop/health', { token: TOKENS.vic });
  assert.equal(health.json().status, 'ok');
  assert.equal(health.json().instances[0].state, 'ready');
  assert.equal((await tcp(control, 'GET', '/v1/apps/no-such-app/health', { token: TOKENS.vic })).status, 404);
  assert.equal((await tcp(control, 'GET', '/v1/apps/shop-admin/health', { token: TOKENS.alice })).status, 403);
});

test('finding 17: with public_details: true the front door gives the reasons again', async (t) => {
  const { port } = await start(t, {}, { public_details: true });
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  const ready = (await http({ port }, { path: '/_berth/ready' })).json();
  assert.equal(ready.status, 'ready');
  assert.deepEqual(Object.keys(ready.apps).sort(), ['shop', 'shop-admin']);
  assert.equal((await http({ port }, { path: '/_berth/apps/shop/health' })).json().healthy, true);
  assert.equal((await http({ port }, { path: '/_berth/apps/no-such-app/health' })).status, 404);
});

test('finding 9: a body berth does not read is not drained either: the answer closes the connection, so a trickled body holds nothing', async (t) => {
  const { control } = await start(t);
  // A client that sends headers, gets its answer, then trickles a body that berth never reads, for ever.
  const trickle = async (head: string) => {
    const sock = connect({ port: control, host: '127.0.0.1' });
    sock.on('error', () => {});
    let text = '';
    sock.on('data', (c: Buffer) => (text += c.toString('latin1')));
    const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    await new Promise<void>((r) => sock.once('connect', r));
    sock.write(head);
    const drip = setInterval(() => sock.write('a'), 200);
    const answered = await waitFor(() => /\r\n\r\n/.test(text) || null, { timeoutMs: 5_000, message: 'an answer' }).then(() => true);
    const ended = await Promise.race([closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3_000))]);
    clearInterval(drip);
    sock.destroy();
    return { answered, ended, status: statuses(text)[0] };
  };
  const body = 'Content-Length: 100000\r\n\r\n';
  const auth = `Authorization: Bearer ${TOKENS.root}\r\n`;
  // Unauthenticated: the dashboard's public page.
  assert.deepEqual(await trickle(`GET / HTTP/1.1\r\nHost: x\r\n${body}`), { answered: true, ended: true, status: 200 });
  // Authenticated: a read, an unknown endpoint, and a change on a path of another method.
  assert.deepEqual(await trickle(`GET /v1/status HTTP/1.1\r\nHost: x\r\n${auth}${body}`), { answered: true, ended: true, status: 200 });
  assert.deepEqual(await trickle(`POST /v1/nothing HTTP/1.1\r\nHost: x\r\n${auth}${body}`), { answered: true, ended: true, status: 404 });
  assert.deepEqual(await trickle(`POST /v1/apps/shop/mode HTTP/1.1\r\nHost: x\r\n${auth}Transfer-Encoding: chunked\r\n\r\n10\r\n`), { answered: true, ended: true, status: 400 });
  // A body that is read keeps the connection: two requests on one.
  const ok = await raw(control, `PUT /v1/apps/shop/mode HTTP/1.1\r\nHost: x\r\n${auth}Content-Length: 17\r\n\r\n{"mode":"normal"}GET /v1/whoami HTTP/1.1\r\nHost: x\r\n${auth}\r\n`, 1_500);
  assert.deepEqual(statuses(ok.text), [200, 200]);
  assert.equal(ok.ended, false);
});

test('finding 9: a refusal before routing is audited too: a change path with another method or a bad encoding', async (t) => {
  const { gateway, control } = await start(t);
  const post = await tcp(control, 'POST', '/v1/apps/shop/mode', { token: TOKENS.root, body: '{"mode":"maintenance"}' });
  assert.equal(post.status, 400, post.body);
  const bad = await tcp(control, 'POST', '/v1/apps/sh%E0%A4%Aop/deploys', { token: TOKENS.root, body: '{}' });
  assert.equal(bad.status, 400, bad.body);
  // (A DELETE body needs its length said: node's client sends neither a length nor chunks for one.)
  const anon = await tcp(control, 'DELETE', '/v1/apps/shop/deploys', { headers: { 'content-length': '2' }, body: '{}' });
  assert.equal(anon.status, 401, anon.body);
  const refused = (await rows(gateway)).filter((r) => r.outcome === 'refused');
  assert.ok(refused.some((r) => r.user === 'root' && r.action === 'mode' && r.app === 'shop' && /method POST is not allowed/.test(r.detail ?? '')), JSON.stringify(refused));
  assert.ok(refused.some((r) => r.user === 'root' && r.action === 'deploy' && r.app === 'sh%E0%A4%Aop' && /bad percent-encoding/.test(r.detail ?? '')), JSON.stringify(refused));
  assert.ok(refused.some((r) => r.user === 'unauthenticated' && r.action === 'deploy' && r.app === 'shop' && /from 127\.0\.0\.1/.test(r.detail ?? '')), JSON.stringify(refused));
  // Reads of a wrong method are not changes and write nothing.
  assert.equal((await tcp(control, 'POST', '/v1/status', { token: TOKENS.root, body: '{}' })).status, 400);
  assert.equal(gateway.appStatus('shop')!.mode, 'normal');
});

test('finding 9: a refused change\'s body is redacted before it is cut to fit the audit row, so no piece of a secret is kept', async (t) => {
  const { gateway, control } = await start(t);
  // The cut falls inside the userinfo: cut first, `https://user:SECRETPA` would no longer read as a URL with credentials.
  const body = JSON.stringify({ pad: 'x'.repeat(960), source: 'https://user:SECRETPASSWORD123@example.com/repo.git' });
  const res = await tcp(control, 'POST', '/v1/apps/no-such-app/deploys', { token: TOKENS.root, body });
  assert.equal(res.status, 404, res.body);
  const row = (await rows(gateway, { user: 'root' })).find((r) => r.action === 'deploy' && r.app === 'no-such-app');
  assert.equal(row?.outcome, 'refused');
  assert.match(row!.target ?? '', /characters\)$/, 'the target was cut');
  assert.ok(!/SECRET|user:/.test(row!.target ?? ''), row!.target ?? '');
  const history = await tcp(control, 'GET', '/v1/history?app=no-such-app', { token: TOKENS.vic });
  assert.ok(!/SECRET/.test(history.body), history.body.slice(-300));
});

test('finding 9: slow headers (slowloris) on the TCP control listener are cut off at the headers timeout, not up to twice it', async (t) => {
  const { control } = await start(t);
  const began = Date.now();
  const [idle, partial] = await Promise.all([raw(control, '', HEADERS_TIMEOUT_MS + 5_000), raw(control, 'GET /v1/status HTTP/1.1\r\nHost: x\r\n', HEADERS_TIMEOUT_MS + 5_000)]);
  const took = Date.now() - began;
  assert.ok(idle.ended && partial.ended, `both connections closed within ${HEADERS_TIMEOUT_MS + 5_000}ms`);
  assert.deepEqual(statuses(partial.text), [408]);
  assert.ok(took >= HEADERS_TIMEOUT_MS - 100, `closed after ${took}ms`);
  t.diagnostic(`closed after ${took}ms (headers timeout ${HEADERS_TIMEOUT_MS}ms)`);
});

test('finding 13: header tricks do not authenticate: duplicated call contexts, empty bearers, X-Forwarded-For', async (t) => {
  const { control } = await start(t, { call_context_from: ['127.0.0.2/32'] });
  const admin = b64({ user: 'carol', roles: ['admin'] });
  const ask = async (localAddress: string, headers: string) => {
    const sock = connect({ port: control, host: '127.0.0.1', localAddress });
    sock.on('error', () => {});
    let text = '';
    sock.on('data', (c: Buffer) => (text += c.toString('latin1')));
    await new Promise<void>((r) => sock.once('connect', r));
    sock.write(`GET /v1/whoami HTTP/1.1\r\nHost: x\r\n${headers}\r\n`);
    await waitFor(() => /\r\n\r\n[\s\S]*\}$/.test(text) || null, { timeoutMs: 5_000, message: 'an answer' });
    sock.destroy();
    return { status: statuses(text)[0], body: text.slice(text.indexOf('\r\n\r\n') + 4) };
  };
  // Any case of the header name counts, from the trusted address only.
  assert.equal((await ask('127.0.0.2', `x-AUTH-context: ${admin}\r\n`)).status, 200);
  // A second copy (a proxy that appends instead of replacing) makes the value unreadable: refused, not picked from.
  assert.equal((await ask('127.0.0.2', `X-Auth-Context: ${admin}\r\nX-Auth-Context: ${b64({ user: 'mallory', roles: ['viewer'] })}\r\n`)).status, 401);
  // X-Forwarded-For and X-Real-IP never make another address trusted.
  for (const h of ['X-Forwarded-For: 127.0.0.2', 'X-Real-IP: 127.0.0.2', 'Forwarded: for=127.0.0.2']) {
    assert.equal((await ask('127.0.0.1', `${h}\r\nX-Auth-Context: ${admin}\r\n`)).status, 401, h);
  }
  // Empty or odd bearers.
  for (const a of ['Bearer', 'Bearer ', 'Bearer  ', 'bearer', 'Basic YWxpY2U6eA==', `Bearer ${TOKENS.vic} extra`, `Bearer ${TOKENS.vic.toUpperCase()}`]) {
    assert.equal((await ask('127.0.0.1', `Authorization: ${a}\r\n`)).status, 401, a);
  }
  // Two Authorization headers: node keeps the first, so a second cannot raise the first's rights.
  const two = await ask('127.0.0.1', `Authorization: Bearer ${TOKENS.vic}\r\nAuthorization: Bearer ${TOKENS.root}\r\n`);
  assert.equal(two.status, 200);
  assert.equal(JSON.parse(two.body).user, 'vic');
});

test('finding 9: a body read after its client has left fails at once, not after the body timeout', async (t) => {
  // The handler waits before reading, as the server does while it looks up a call context's peer.
  let outcome: Promise<{ error: string; ms: number }> | null = null;
  const server = createServer((req, res) => {
    const closed = new Promise<void>((r) => req.socket.once('close', () => r()));
    outcome = closed.then(async () => {
      const began = Date.now();
      const error = await readJsonBody(req).then(() => 'none', (err: Error) => err.message);
      res.destroy();
      return { error, ms: Date.now() - began };
    });
  });
  t.after(() => server.close());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const sock = connect({ port: (server.address() as { port: number }).port, host: '127.0.0.1' });
  sock.on('error', () => {});
  await new Promise<void>((r) => sock.once('connect', r));
  sock.end('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}');
  sock.destroy();
  await waitFor(() => outcome, { timeoutMs: 5_000, message: 'the request' });
  const { error, ms } = await outcome!;
  assert.match(error, /cut short/);
  assert.ok(ms < 1_000, `failed after ${ms}ms`);
});
