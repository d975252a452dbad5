import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hasSubscribers } from 'node:diagnostics_channel';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { Histogram, Registry } from 'prom-client';
import { FastHistogram, LATENCY_BUCKETS, Metrics, type InstanceLevels, type PoolLevels } from '../../src/metrics/metrics.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { requestChannel } from '../../src/proxy/access-log.ts';
import { HealthLane } from '../../src/proxy/health-lane.ts';
import { RoutingTable } from '../../src/proxy/router.ts';
import { Admission, admissionChannel, type AdmissionRejection, type Waiter } from '../../src/proxy/admission.ts';
import { Health, probeChannel } from '../../src/supervisor/health.ts';
import { instanceChannel } from '../../src/supervisor/instance.ts';
import type { PoolView, Upstream } from '../../src/supervisor/types.ts';
import { appConfig, backend, berthConfig, entry, fetchRaw, okHandler, processConfig, route, startProxy, TestGeneration } from '../proxy/fixtures.ts';
import { http, startGateway, tempDir, writeConfig } from '../helpers/gateway.ts';
import { parseMetrics as parse, type Sample } from '../helpers/prometheus.ts';

/** The one sample with this name whose labels include `labels`; undefined when there is none. */
function sample(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
  return found[0]?.value;
}

/** A Metrics over a source the test sets, started, and stopped after the test. */
function metrics(t: { after(fn: () => void): void }, source: { pools?: PoolLevels[]; instances?: InstanceLevels[] } = {}): Metrics {
  const m = new Metrics({ pools: () => source.pools ?? [], instances: () => source.instances ?? [] }, silentLogger());
  m.start();
  t.after(() => m.stop());
  return m;
}

test('FastHistogram writes the same exposition as prom-client for the same observations', async () => {
  const values = [0, 0.0005, 0.001, 0.0011, 0.02, 0.02, 0.7, 3, 29.9, 30, 31, 1000];
  const ours = new FastHistogram('h_seconds', 'help text', LATENCY_BUCKETS);
  const theirs = new Histogram({ name: 'h_seconds', help: 'help text', labelNames: ['app', 'route'], buckets: LATENCY_BUCKETS, registers: [] });
  for (const [app, route] of [['shop', '/'], ['shop', '/api'], ['blog', '/']]) {
    const series = ours.series({ app, route });
    for (const v of values) {
      series.observe(v);
      theirs.observe({ app, route }, v);
    }
  }
  // Asking again for the same labels gives the same series, not a duplicate.
  assert.equal(ours.series({ app: 'shop', route: '/' }), ours.series({ app: 'shop', route: '/' }));
  const a = new Registry();
  a.registerMetric(ours as unknown as Histogram);
  const b = new Registry();
  b.registerMetric(theirs);
  const sort = (text: string) => text.split('\n').sort();
  assert.deepEqual(sort(await a.metrics()), sort(await b.metrics()));
});

test('requests are counted by app, route and status class, with their duration', async (t) => {
  const m = metrics(t);
  const root = { path: '/' };
  const api = { path: '/api' };
  const now = performance.now();
  for (const [route, status] of [[root, 200], [root, 204], [root, 404], [root, 499], [api, 503], [api, 302], [api, 101], [api, 0]] as const) {
    requestChannel.publish({ app: { name: 'shop' }, route, status, start: now - 20 });
  }
  // A second route object with the same labels (a config reload) adds to the same series.
  requestChannel.publish({ app: { name: 'shop' }, route: { path: '/' }, status: 200, start: now - 20 });
  const s = parse(await m.text());
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/', status_class: '2xx' }), 3);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/', status_class: '4xx' }), 2);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/api', status_class: '5xx' }), 1);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/api', status_class: '3xx' }), 1);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/api', status_class: '1xx' }), 1);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/api', status_class: 'other' }), 1);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/', status_class: '5xx' }), undefined);
  assert.equal(sample(s, 'berth_request_duration_seconds_count', { app: 'shop', route: '/' }), 5);
  const sum = sample(s, 'berth_request_duration_seconds_sum', { app: 'shop', route: '/' })!;
  assert.ok(sum >= 5 * 0.02 && sum < 5, `duration sum ${sum}`);
  assert.equal(sample(s, 'berth_request_duration_seconds_bucket', { app: 'shop', route: '/', le: '0.01' }), 0);
  assert.equal(sample(s, 'berth_request_duration_seconds_bucket', { app: 'shop', route: '/', le: '+Inf' }), 5);
});

test('admission publishes admissions with their queue wait and rejections with their reason', async (t) => {
  const m = metrics(t);
  let free = 1;
  const upstream = { begin: () => 1 } as unknown as Upstream;
  const pool: PoolView = { process: 'web', concurrency: 1, instances: [], pick: () => (free > 0 ? upstream : null), acquire: () => (free > 0 ? (free--, upstream) : null), pickTunnel: () => null, serviceable: () => true };
  const adm = new Admission('shop', 'web', { limit: 1, queueMax: 1, queueTimeoutMs: 1_000 });
  const outcomes: string[] = [];
  const waiter = (name: string): Waiter => ({
    prev: null,
    next: null,
    deadline: 0,
    queued: false,
    pool,
    affine: null,
    acquire: () => pool.acquire(),
    admit: () => outcomes.push(`${name} admitted`),
    reject: (reason: AdmissionRejection) => outcomes.push(`${name} ${reason}`),
  });
  const t0 = performance.now();
  adm.enter(waiter('a'), t0); // admitted at once: waited 0
  adm.enter(waiter('b'), t0); // queued
  adm.enter(waiter('c'), t0); // the queue (max 1) is full
  free = 1;
  adm.sweep(t0 + 250); // b is still in time: not expired, and not admitted either (the limit is 1)
  adm.leave(); // a is done: b is admitted, having waited since t0 (pump reads the clock itself)
  adm.enter(waiter('d'), t0 + 300); // queued behind nobody, but the limit is taken by b
  adm.sweep(t0 + 300 + 1_000); // d times out after exactly the queue timeout
  assert.deepEqual(outcomes, ['a admitted', 'c queue-full', 'b admitted', 'd queue-timeout']);

  const s = parse(await m.text());
  assert.equal(sample(s, 'berth_admission_rejections_total', { app: 'shop', process: 'web', reason: 'queue-full' }), 1);
  assert.equal(sample(s, 'berth_admission_rejections_total', { app: 'shop', process: 'web', reason: 'queue-timeout' }), 1);
  // a (0), b (admitted from the queue) and d (1s, timed out); c was turned away on arrival.
  assert.equal(sample(s, 'berth_queue_wait_seconds_count', { app: 'shop', process: 'web' }), 3);
  assert.equal(sample(s, 'berth_queue_wait_seconds_bucket', { app: 'shop', process: 'web', le: '0.25' }), 2, 'a and b: no real wait');
  assert.equal(sample(s, 'berth_queue_wait_seconds_bucket', { app: 'shop', process: 'web', le: '0.5' }), 2, 'd waited 1s');
  assert.equal(sample(s, 'berth_queue_wait_seconds_bucket', { app: 'shop', process: 'web', le: '1' }), 3);
});

test('pool levels and instance states are read from the source when scraped, every state listed', async (t) => {
  const pools: PoolLevels[] = [{ app: 'shop', process: 'web', active: 3, depth: 7, limit: 4 }];
  const instances: InstanceLevels[] = [
    { app: 'shop', process: 'web', state: 'ready' },
    { app: 'shop', process: 'web', state: 'ready' },
    { app: 'shop', process: 'worker', state: 'backoff' },
  ];
  const source = { pools, instances };
  const m = metrics(t, source);
  let s = parse(await m.text());
  assert.equal(sample(s, 'berth_pool_in_flight', { app: 'shop', process: 'web' }), 3);
  assert.equal(sample(s, 'berth_pool_queue_depth', { app: 'shop', process: 'web' }), 7);
  assert.equal(sample(s, 'berth_pool_limit', { app: 'shop', process: 'web' }), 4);
  assert.equal(sample(s, 'berth_instances', { app: 'shop', process: 'web', state: 'ready' }), 2);
  assert.equal(sample(s, 'berth_instances', { app: 'shop', process: 'web', state: 'crashed' }), 0);
  assert.equal(sample(s, 'berth_instances', { app: 'shop', process: 'worker', state: 'backoff' }), 1);
  assert.equal(s.filter((x) => x.name === 'berth_instances').length, 14, 'seven states for each of two process types');

  // Live: the next scrape sees the change, and a pool that went away is gone.
  source.pools = [];
  source.instances = [{ app: 'shop', process: 'web', state: 'unhealthy' }];
  s = parse(await m.text());
  assert.equal(sample(s, 'berth_pool_queue_depth', { app: 'shop', process: 'web' }), undefined);
  assert.equal(sample(s, 'berth_instances', { app: 'shop', process: 'web', state: 'ready' }), 0);
  assert.equal(sample(s, 'berth_instances', { app: 'shop', process: 'web', state: 'unhealthy' }), 1);
  assert.equal(sample(s, 'berth_instances', { app: 'shop', process: 'worker', state: 'backoff' }), undefined);
});

test('probe results, restarts and unhealthy marks are counted per app and process', async (t) => {
  const m = metrics(t);
  const inst = { app: 'shop', process: 'web' };
  for (const result of ['ok', 'ok', 'failed', 'busy']) probeChannel.publish({ target: { address: null, busy: false, ...inst }, result });
  instanceChannel.publish({ instance: inst, event: 'restart' });
  instanceChannel.publish({ instance: inst, event: 'restart' });
  instanceChannel.publish({ instance: inst, event: 'unhealthy' });
  const s = parse(await m.text());
  assert.equal(sample(s, 'berth_health_probes_total', { app: 'shop', process: 'web', result: 'ok' }), 2);
  assert.equal(sample(s, 'berth_health_probes_total', { app: 'shop', process: 'web', result: 'failed' }), 1);
  assert.equal(sample(s, 'berth_health_probes_total', { app: 'shop', process: 'web', result: 'busy' }), 1);
  assert.equal(sample(s, 'berth_instance_restarts_total', inst), 2);
  assert.equal(sample(s, 'berth_instance_unhealthy_total', inst), 1);
});

test('Health publishes each probe result: ok, failed, and failed while busy', async (t) => {
  const m = metrics(t);
  let status = 200;
  const server = createServer((_req, res) => res.writeHead(status).end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => server.close(r)));
  const target = { address: { kind: 'tcp' as const, host: '127.0.0.1', port: (server.address() as AddressInfo).port }, busy: false, app: 'shop', process: 'web' };
  const health = new Health(target, { path: '/up', intervalMs: 10, timeoutMs: 500, unhealthyAfter: 1000, startupTimeoutMs: 1000, busyGraceMs: 1000 }, silentLogger(), () => {});
  t.after(() => health.stop());
  const count = async (result: string) => sample(parse(await m.text()), 'berth_health_probes_total', { app: 'shop', process: 'web', result }) ?? 0;
  const until = async (result: string, n: number) => {
    const deadline = Date.now() + 5_000;
    while ((await count(result)) < n) {
      assert.ok(Date.now() < deadline, `${n} ${result} probes`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  health.start();
  await until('ok', 2);
  status = 500;
  await until('failed', 2);
  target.busy = true;
  await until('busy', 2);
});

test('stop() unsubscribes: nothing is counted and the publishers see no subscriber', async (t) => {
  const m = metrics(t);
  assert.equal(m.state, 'running');
  assert.equal(hasSubscribers(requestChannel.name), true);
  m.stop();
  assert.equal(m.state, 'stopped');
  for (const ch of [requestChannel, admissionChannel, probeChannel, instanceChannel]) assert.equal(ch.hasSubscribers, false, String(ch.name));
  requestChannel.publish({ app: { name: 'shop' }, route: { path: '/' }, status: 200, start: performance.now() });
  assert.equal(sample(parse(await m.text()), 'berth_requests_total'), undefined);
  // Idempotent, and destroy() after stop() is harmless.
  m.stop();
  m.destroy();
  assert.equal(m.state, 'stopped');
});

test('through a real proxy: a request is counted once, and /_berth/metrics is served only when public', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const config = appConfig('shop', { processes: { web: processConfig('web', 1, 4) } });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const running = await startProxy(t, [entry(config, gen)], { config: berthConfig([config], { metricsPublic: true }) });
  const m = metrics(t, {});
  // The real sources: the proxy's admissions.
  const live = new Metrics({ pools: () => running.proxy.admissions(), instances: () => gen.instances() }, silentLogger());
  running.proxy.setMetrics(live);
  assert.equal((await fetchRaw(`${running.url}/`)).status, 200);
  assert.equal((await fetchRaw(`${running.url}/nope`)).status, 200);
  const res = await fetchRaw(`${running.url}/_berth/metrics`);
  assert.equal(res.status, 200);
  assert.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  assert.equal(res.headers['cache-control'], 'no-store');
  const s = parse(res.text);
  // `m` subscribed; `live` never started, so it counted nothing but reads the levels.
  assert.equal(sample(s, 'berth_requests_total'), undefined);
  assert.equal(sample(s, 'berth_pool_limit', { app: 'shop', process: 'web' }), 4);
  assert.equal(sample(s, 'berth_pool_in_flight', { app: 'shop', process: 'web' }), 0);
  assert.equal(sample(s, 'berth_instances', { app: 'shop', process: 'web', state: 'ready' }), 1);
  const counted = parse(await m.text());
  assert.equal(sample(counted, 'berth_requests_total', { app: 'shop', route: '/', status_class: '2xx' }), 2);
  assert.equal(sample(counted, 'berth_request_duration_seconds_count', { app: 'shop', route: '/' }), 2);
  assert.equal(sample(counted, 'berth_queue_wait_seconds_count', { app: 'shop', process: 'web' }), 2);
  // Gateway endpoints are not proxied requests: scraping counted nothing.
  assert.equal((await fetchRaw(`${running.url}/_berth/health`)).status, 200);
  assert.equal(sample(parse(await m.text()), 'berth_requests_total', { app: 'shop', route: '/', status_class: '2xx' }), 2);

  // Only GET and HEAD; HEAD has the headers and no body.
  assert.equal((await fetchRaw(`${running.url}/_berth/metrics`, { method: 'POST' })).status, 405);
  const head = await fetchRaw(`${running.url}/_berth/metrics`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.text, '');

  // Not public: the path is a 404 like any unknown gateway path, and nothing is forwarded to the app.
  running.proxy.setConfig(berthConfig([config], { metricsPublic: false }));
  const hidden = await fetchRaw(`${running.url}/_berth/metrics`);
  assert.equal(hidden.status, 404);
  assert.equal(be.requests.length, 2);
});

test('the gateway serves GET /metrics on the control socket always, and on the front door only with metrics_public', async (t) => {
  for (const metricsPublic of [false, true]) {
    const dir = await tempDir(t);
    const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'warn' }, metrics_public: metricsPublic, apps: {} });
    const { gateway, port } = await startGateway(t, file);
    const socketPath = gateway.config.control.socket;
    const control = await http({ socketPath }, { path: '/metrics' });
    assert.equal(control.status, 200);
    assert.match(String(control.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    assert.match(control.body, /^# HELP berth_requests_total /m);
    assert.match(control.body, /^# TYPE berth_request_duration_seconds histogram$/m);
    const bad = await http({ socketPath }, { path: '/metrics', method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json().error.code, 'BERTH_E_BAD_REQUEST');
    const front = await http({ port }, { path: '/_berth/metrics' });
    assert.equal(front.status, metricsPublic ? 200 : 404, `metrics_public: ${metricsPublic}`);
    if (metricsPublic) assert.equal(front.body.split('\n').filter((l) => l.startsWith('# TYPE')).length, control.body.split('\n').filter((l) => l.startsWith('# TYPE')).length);
    await gateway.stop();
    assert.equal(gateway.metrics.state, 'stopped');
  }
});

test('the health lane answers 500 when the metrics cannot be rendered, and stays up', async (t) => {
  const source = {
    table: new RoutingTable([]),
    queueDepth: () => 0,
    accepting: true,
    publicMetrics: { contentType: 'text/plain', text: () => Promise.reject(new Error('collect failed')) },
  };
  const lane = new HealthLane(source);
  const server = createServer((req, res) => lane.handle(req, res, (req.url ?? '').slice('/_berth'.length)));
  t.after(() => new Promise((r) => server.close(r)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/_berth`;
  const failed = await fetchRaw(`${url}/metrics`);
  assert.equal(failed.status, 500);
  assert.deepEqual(JSON.parse(failed.text), { error: { status: 500, reason: 'metrics-failed' } });
  assert.equal((await fetchRaw(`${url}/health`)).status, 200);
});

test('static files and WebSocket upgrades are counted on their routes too', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'public'));
  await writeFile(join(dir, 'public', 'a.txt'), 'hello');
  const be = await backend(t, okHandler('ok'));
  be.server.on('upgrade', (_req, socket) => {
    socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
  });
  const config = appConfig('shop', { routes: [route('/static', null, 'public'), route('/')] });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: dir });
  gen.addPool('web', 4, [be.address]);
  const running = await startProxy(t, [entry(config, gen)]);
  const m = metrics(t);
  assert.equal((await fetchRaw(`${running.url}/static/a.txt`)).status, 200);
  assert.equal((await fetchRaw(`${running.url}/static/missing.txt`)).status, 404);
  // A WebSocket handshake the backend accepts and then closes: one request on route /, status 101.
  await new Promise<void>((resolve, reject) => {
    const req = httpRequest(`${running.url}/socket`, { headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' }, agent: false });
    req.on('upgrade', (res, socket) => {
      assert.equal(res.statusCode, 101);
      socket.on('close', () => resolve());
      socket.on('error', () => {});
      socket.end();
    });
    req.on('error', reject);
    req.end();
  });
  const deadline = Date.now() + 5_000;
  let s = parse(await m.text());
  while (sample(s, 'berth_requests_total', { app: 'shop', route: '/', status_class: '1xx' }) === undefined && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    s = parse(await m.text());
  }
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/static', status_class: '2xx' }), 1);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/static', status_class: '4xx' }), 1);
  assert.equal(sample(s, 'berth_requests_total', { app: 'shop', route: '/', status_class: '1xx' }), 1);
});
