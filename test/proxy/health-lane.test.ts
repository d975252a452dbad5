import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HealthLane } from '../../src/proxy/health-lane.ts';
import { RoutingTable } from '../../src/proxy/router.ts';
import type { AppEntry } from '../../src/proxy/router.ts';
import { appConfig, backend, berthConfig, entry, fetchRaw, okHandler, processConfig, startProxy, TestGeneration, waitFor } from './fixtures.ts';

/** The proxy's config with `public_details: true`: the front door gives reasons and app details. */
function detailed(apps: AppEntry[]) {
  return { config: berthConfig(apps.map((a) => a.config), { publicDetails: true }) };
}

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
  const apps = [entry(appConfig('shop'), gen)];
  const { url } = await startProxy(t, apps);
  for (const p of ['/_berth', '/_berth/', '/_berth/metrics', '/_berth/apps/shop']) {
    const r = await fetchRaw(`${url}${p}`);
    assert.equal(r.status, 404, p);
    assert.equal(r.headers['content-type'], 'application/json', p);
  }
  // Without public details an unknown app's health is "unavailable", as an unhealthy app's would be.
  for (const p of ['/_berth/apps/nope/health', '/_berth/apps/%zz/health']) assert.equal((await fetchRaw(`${url}${p}`)).status, 503, p);
  // With them, an unknown app is a 404.
  const open = await startProxy(t, apps, detailed(apps));
  for (const p of ['/_berth/apps/nope/health', '/_berth/apps/%zz/health']) assert.equal((await fetchRaw(`${open.url}${p}`)).status, 404, p);
  assert.equal(be.requests.length, 0);
  // Only a whole segment counts as the prefix.
  assert.equal((await fetchRaw(`${url}/_berthday`)).text, 'app');
});

test('/ready and /apps/<app>/health follow instance readiness (public_details: true gives the reasons)', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 4, [be.address]);
  inst.state = 'starting';
  const apps = [entry(appConfig('shop'), gen), entry(appConfig('blog', { hosts: ['blog.test'] }), null)];
  const { url } = await startProxy(t, apps, detailed(apps));

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
  const apps = [entry(appConfig('shop'), gen, { mode: 'maintenance' })];
  const { url } = await startProxy(t, apps, detailed(apps));
  assert.equal((await fetchRaw(`${url}/_berth/apps/shop/health`)).status, 200);
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
  const apps = [entry(app, gen)];
  const { url, proxy } = await startProxy(t, apps, detailed(apps));
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

test('by default /ready and /apps/<app>/health give the status only, and an unknown app reads as an unhealthy one (issue #10, finding 17)', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 4, [be.address]);
  const { url } = await startProxy(t, [entry(appConfig('shop'), gen), entry(appConfig('blog', { hosts: ['blog.test'] }), null)]);
  const ready = await fetchRaw(`${url}/_berth/ready`);
  assert.equal(ready.status, 503);
  assert.equal(ready.text, '{"status":"unavailable"}');
  const shop = await fetchRaw(`${url}/_berth/apps/shop/health`);
  assert.equal(shop.status, 200);
  assert.equal(shop.text, '{"status":"ok"}');
  inst.state = 'starting';
  const unhealthy = await fetchRaw(`${url}/_berth/apps/shop/health`);
  const unknown = await fetchRaw(`${url}/_berth/apps/nope/health`);
  const blog = await fetchRaw(`${url}/_berth/apps/blog/health`);
  for (const r of [unhealthy, unknown, blog]) {
    assert.equal(r.status, 503);
    assert.equal(r.text, '{"status":"unavailable"}');
  }
  // Byte for byte the same answer, headers included (bar the date).
  const strip = (h: Record<string, unknown>) => Object.fromEntries(Object.entries(h).filter(([k]) => k !== 'date'));
  assert.deepEqual(strip(unknown.headers), strip(unhealthy.headers));
  const head = await fetchRaw(`${url}/_berth/ready`, { method: 'HEAD' });
  assert.equal(head.status, 503);
  assert.equal(head.body.length, 0);
  // Nothing names an app, a release or an instance.
  for (const text of [ready.text, shop.text, unhealthy.text, unknown.text]) assert.doesNotMatch(text, /shop|blog|r1|web|reason/);
  assert.equal(be.requests.length, 0);
});
