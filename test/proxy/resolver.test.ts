/**
 * Requests and WebSocket upgrades are resolved by one function (resolver.ts, issue #11 "Resolve each
 * request once"): for the same cause both get the same answer, the same request id and the same
 * access-log line; they differ only where an upgrade cannot be served (the health lane, static routes)
 * and where a static route is served in maintenance. A real Proxy, a raw client and a raw upstream.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type { AppConfig, RouteConfig } from '../../src/config/schema.ts';
import { RoutingTable, type AppEntry } from '../../src/proxy/router.ts';
import { appConfig, berthConfig, captureLogger, entry, route, startProxy, TestGeneration } from './fixtures.ts';
import { exchange, RawUpstream, responseHeader, seenResponder, WS_HEAD, type RawResponse } from './raw-upstream.ts';

const ROUTES: RouteConfig[] = [route('/'), { path: '/static', to: null, static: 'public', cache: null, cors: null, buffering: true, affinity: null }];

async function setup(t: TestContext) {
  const up = await RawUpstream.start(t, seenResponder);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [up.address]);
  const config: AppConfig = appConfig('shop', { hosts: ['shop.test'], routes: ROUTES, rateLimit: { count: 1, perMs: 60_000, burst: 1, paths: ['/limited'] } });
  const log = captureLogger();
  const running = await startProxy(t, [entry(config, gen)], { config: berthConfig([config]), logger: log.logger });
  const use = (e: AppEntry) => running.proxy.setTable(new RoutingTable([e]));
  return { ...running, up, gen, config, lines: log.lines, use };
}

interface Answer {
  status: number;
  reason: string | undefined;
  retryAfter: string | undefined;
  requestId: string | undefined;
}

function answer(r: RawResponse | undefined): Answer {
  assert.ok(r !== undefined, 'an answer came');
  return { status: r.status, reason: responseHeader(r, 'x-berth-reason'), retryAfter: responseHeader(r, 'retry-after'), requestId: responseHeader(r, 'x-request-id') };
}

/** The same request, plain and as a WebSocket upgrade, each on its own connection. */
async function both(port: number, path: string, host = 'shop.test', id = 'trace-1'): Promise<{ plain: Answer; upgrade: Answer }> {
  const head = `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nX-Request-Id: ${id}\r\n`;
  const plain = await exchange(port, `${head}\r\n`);
  const upgrade = await exchange(port, `${head}${WS_HEAD}\r\n`);
  return { plain: answer(plain.responses[0]), upgrade: answer(upgrade.responses[0]) };
}

test('every refusal is the same for a request and an upgrade: status, reason, Retry-After, request id and log line', async (t) => {
  const { port, up, gen, config, lines, use } = await setup(t);
  const expectSame = async (what: string, path: string, want: Partial<Answer>, host?: string) => {
    const before = lines.length;
    const { plain, upgrade } = await both(port, path, host, `id-${what.replace(/\W+/g, '-')}`);
    assert.deepEqual(upgrade, plain, `${what}: the upgrade is answered as the request is`);
    for (const [k, v] of Object.entries(want)) assert.equal(plain[k as keyof Answer], v, `${what}: ${k}`);
    assert.equal(plain.requestId, `id-${what.replace(/\W+/g, '-')}`, `${what}: the client's request id is kept`);
    const logged = lines.slice(before).filter((l) => l.msg === 'request');
    assert.equal(logged.length, 2, `${what}: one access-log line each`);
    for (const l of logged) {
      assert.equal(l.status, plain.status, what);
      assert.equal(l.clientIp, '127.0.0.1', what);
      assert.equal(l.requestId, plain.requestId, what);
    }
  };

  await expectSame('no route', '/', { status: 404, reason: 'no-route' }, 'other.test');
  await expectSame('two hosts', '/', { status: 400, reason: 'bad-request' }, 'shop.test\r\nHost: evil.example');
  await expectSame('not an authority', '/', { status: 400, reason: 'bad-request' }, 'evil.example/.shop.test');
  // The one token of /limited goes to a plain request; after it, both are limited alike.
  assert.equal((await exchange(port, 'GET /limited HTTP/1.1\r\nHost: shop.test\r\n\r\n')).responses[0].status, 200);
  await expectSame('rate limited', '/limited', { status: 429, reason: 'rate-limited' });

  use(entry(config, gen, { mode: 'maintenance', message: null, retryAfter: 30 }));
  await expectSame('maintenance', '/', { status: 503, reason: 'maintenance', retryAfter: '30' });

  use(entry(config, null));
  await expectSame('no generation', '/', { status: 503, reason: 'no-active-generation', retryAfter: '5' });
  use({ ...entry(config, null), noGeneration: 'start-failed' });
  await expectSame('start failed', '/', { status: 503, reason: 'start-failed', retryAfter: undefined });

  const empty = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2' });
  use(entry(config, empty));
  await expectSame('no pool', '/', { status: 503, reason: 'no-pool', retryAfter: '5' });

  assert.equal(up.requests.length, 1, 'only the request that was let through reached the app');
});

test('where they differ: the health lane and static routes serve requests only; a static route in maintenance still serves requests', async (t) => {
  const { port, up, gen, config, use } = await setup(t);
  const lane = await both(port, '/_berth/health');
  assert.equal(lane.plain.status, 200);
  assert.deepEqual([lane.upgrade.status, lane.upgrade.reason], [400, 'bad-request']);

  // The release dir does not exist: the request is answered by the static handler (not an app, not a 400).
  const statics = await both(port, '/static/app.css');
  assert.notEqual(statics.plain.status, 400);
  assert.notEqual(statics.plain.reason, 'bad-request');
  assert.deepEqual([statics.upgrade.status, statics.upgrade.reason], [400, 'bad-request']);

  use(entry(config, gen, { mode: 'maintenance', message: null, retryAfter: null }));
  const inMaintenance = await both(port, '/static/app.css');
  assert.deepEqual(inMaintenance.plain, statics.plain, 'static files are still served in maintenance');
  assert.deepEqual([inMaintenance.upgrade.status, inMaintenance.upgrade.reason], [503, 'maintenance']);
  assert.equal(up.requests.length, 0);
});
