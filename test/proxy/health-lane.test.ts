import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HealthLane } from '../../src/proxy/health-lane.ts';
import { RoutingTable } from '../../src/proxy/router.ts';
import { appConfig, backend, entry, fetchRaw, okHandler, processConfig, startProxy, TestGeneration, waitFor } from './fixtures.ts';

test('GET /_berth/health is 200 {"status":"ok"}; HEAD has no body; other methods 405', async (t) => {
  const { url } = await startProxy(t, []);
  const r = await fetchRaw(`${url}/_berth/health`);
  assert.equal(r.status, 200);
  assert.equal(r.text, '{"status":"ok"}');
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.headers['cache-control'], 'no-store');
  const head = await fetchRaw(`${url}/_berth/health`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.body.length, 0);
  const post = await fetchRaw(`${url}/_berth/health`, { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, 'GET, HEAD');
  assert.equal((await fetchRaw(`${url}/_berth/health?probe=1`)).status, 200);
});

test('unknown paths under the prefix are 404 and never reach an app', async (t) => {
  const be = await backend(t, okHandler('app'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen)]);
  for (const p of ['/_berth', '/_berth/', '/_berth/metrics', '/_berth/apps/shop', '/_berth/apps/nope/health', '/_berth/apps/%zz/health']) {
    const r = await fetchRaw(`${url}${p}`);
    assert.equal(r.status, 404, p);
    assert.equal(r.headers['content-type'], 'application/json', p);
  }
  assert.equal(be.requests.length, 0);
  // Only a whole segment counts as the prefix.
  assert.equal((await fetchRaw(`${url}/_berthday`)).text, 'app');
});

test('/ready and /apps/<app>/health follow instance readiness', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 4, [be.address]);
  inst.state = 'starting';
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen), entry(appConfig('blog', { hosts: ['blog.test'] }), null)]);

  let r = await fetchRaw(`${url}/_berth/ready`);
  assert.equal(r.status, 503);
  let body = JSON.parse(r.text);
  assert.equal(body.status, 'unavailable');
  assert.deepEqual(body.reasons, ['shop: pool web has no ready instance', 'blog: no active generation']);
  assert.deepEqual(body.apps.shop, {
    healthy: false,
    reasons: ['pool web has no ready instance'],
    generation: 'shop#1',
    release: 'r1',
    mode: 'normal',
    queue: 0,
    instances: [{ process: 'web', index: 0, state: 'starting', inFlight: 0 }],
  });
  assert.equal(body.apps.blog.generation, null);

  r = await fetchRaw(`${url}/_berth/apps/shop/health`);
  assert.equal(r.status, 503);
  assert.equal(JSON.parse(r.text).healthy, false);

  inst.state = 'ready';
  r = await fetchRaw(`${url}/_berth/apps/shop/health`);
  assert.equal(r.status, 200);
  assert.equal(JSON.parse(r.text).healthy, true);
  r = await fetchRaw(`${url}/_berth/ready`);
  assert.equal(r.status, 503, 'blog still has no generation');
  assert.deepEqual(JSON.parse(r.text).reasons, ['blog: no active generation']);
});

test('/ready is 200 when every app is healthy', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  gen.addPool('idle', 4, []); // a pool scaled to zero does not count
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen, { mode: 'maintenance' })]);
  const r = await fetchRaw(`${url}/_berth/ready`);
  assert.equal(r.status, 200);
  const body = JSON.parse(r.text);
  assert.equal(body.status, 'ready');
  assert.deepEqual(body.reasons, []);
  assert.equal(body.apps.shop.mode, 'maintenance');
});

test('health endpoints answer at once while every slot is busy and the queue is full', async (t) => {
  const held: (() => void)[] = [];
  const be = await backend(t, (_req, res) => held.push(() => res.end('ok')));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 2, [be.address]);
  const app = appConfig('shop', { processes: { web: processConfig('web', 1, 2) }, queue: { max: 3, timeoutMs: 30_000 } });
  const { url, proxy } = await startProxy(t, [entry(app, gen)]);
  const pending = Array.from({ length: 5 }, () => fetchRaw(url));
  await waitFor(() => held.length === 2 && proxy.queueDepth('shop') === 3, 'saturated');
  assert.equal((await fetchRaw(url)).headers['x-berth-reason'], 'queue-full');

  assert.equal((await fetchRaw(`${url}/_berth/health`)).status, 200);
  const ready = await fetchRaw(`${url}/_berth/ready`);
  assert.equal(ready.status, 200, 'busy instances are ready, not dead');
  const shop = JSON.parse((await fetchRaw(`${url}/_berth/apps/shop/health`)).text);
  assert.equal(shop.queue, 3);
  assert.deepEqual(shop.instances, [{ process: 'web', index: 0, state: 'ready', inFlight: 2 }]);
  assert.equal(be.requests.length, 2, 'nothing reached the app meanwhile');

  const all = Promise.all(pending);
  let finished = false;
  void all.then(() => (finished = true));
  while (!finished) {
    for (const h of held.splice(0)) h();
    await new Promise((r) => setTimeout(r, 5));
  }
  for (const r of await all) assert.equal(r.status, 200);
});

test('/health reports stopping once the proxy stops accepting', async (t) => {
  // The lane on its own real server, reading a source whose state the test sets.
  const source = { table: new RoutingTable([]), queueDepth: () => 0, accepting: true };
  const lane = new HealthLane(source);
  const server = createServer((req, res) => lane.handle(req, res, (req.url ?? '').slice('/_berth'.length)));
  t.after(() => server.close());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/_berth/health`;
  assert.equal((await fetchRaw(url)).status, 200);
  source.accepting = false;
  const r = await fetchRaw(url);
  assert.equal(r.status, 503);
  assert.equal(r.text, '{"status":"stopping"}');
});
