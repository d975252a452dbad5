/**
 * `proxy.workers`: the front door on several threads. Every guarantee the single-threaded proxy gives
 * must hold with N > 1: admission counted globally (checked against the app's own count of what it
 * holds), pinning and drains across a deploy, WebSockets closed with 1001 at the drain deadline, mode
 * switches from the next request on, the health lane under saturation, metrics summed over threads,
 * one intact access-log line per request, a graceful stop that loses nothing, and a worker thread that
 * dies being replaced without touching the others' requests.
 *
 * Each request goes on a new connection, so the kernel spreads them over the threads (SO_REUSEPORT);
 * the access log says which thread served each (`thread` on a worker's lines), and the tests check
 * that more than one did.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import WebSocket from 'ws';
import { ROOT, fixtureApp, http, runCli, startGateway, tempDir, waitFor, writeConfig, type LogSink } from '../helpers/gateway.ts';
import { createCa, issueCertificate } from '../helpers/certificates.ts';
import { h1Tls, h2Request, h2Session, sameFingerprint } from '../helpers/https.ts';
import { connectTls } from '../tls/tls-client.ts';
import { freePort } from '../tls/pebble.ts';
import { parseMetrics } from '../helpers/prometheus.ts';

const WEB = `"${process.execPath}" server.mjs`;
const WORKERS = 2;

/** A release source holding bench/blocking-app.mjs (it counts the most requests it held at once: /stats). */
async function blockingApp(dir: string, name = 'src'): Promise<string> {
  const src = join(dir, name);
  await mkdir(src, { recursive: true });
  await copyFile(join(ROOT, 'bench/blocking-app.mjs'), join(src, 'server.mjs'));
  return src;
}

async function ready(port: number): Promise<void> {
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 20_000, message: 'ready' });
}

/** Which threads wrote access-log lines: 0 for the main thread (its lines carry no `thread`). */
function servingThreads(sink: LogSink): Set<number> {
  return new Set(sink.lines.filter((l) => l.msg === 'request' || l.status !== undefined).filter((l) => l.app !== undefined).map((l) => (l.thread as number | undefined) ?? 0));
}

async function gatewayWith(t: TestContext, dir: string, apps: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'warn', proxy: 'info' }, proxy: { workers: WORKERS }, apps, ...extra });
  const started = await startGateway(t, file);
  await ready(started.port);
  await waitFor(() => started.gateway.proxyWorkers?.running === WORKERS, { message: 'every proxy thread running' });
  return started;
}

test('admission holds across threads: the app never holds more than concurrency per instance, nor the pool more than its limit', async (t) => {
  const dir = await tempDir(t);
  const src = await blockingApp(dir);
  const { gateway, port, sink } = await gatewayWith(t, dir, {
    shop: { source: src, processes: { web: { command: WEB, instances: 2, concurrency: 2 } }, health: { path: '/up', interval: '200ms' }, queue: { max: 200, timeout: '20s' } },
  });
  let stop = false;
  const statuses = new Map<number, number>();
  const client = async () => {
    while (!stop) {
      const res = await http({ port }, { path: '/sleep?ms=40' });
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
    }
  };
  const clients = Array.from({ length: 30 }, client);
  await waitFor(() => (statuses.get(200) ?? 0) >= 300, { timeoutMs: 30_000, message: '300 answers' });
  stop = true;
  await Promise.all(clients);
  assert.deepEqual([...statuses.keys()], [200]);
  const app = gateway.appStatus('shop')!;
  const pids = app.generations[0].instances.map((i) => i.pid);
  assert.equal(pids.length, 2);
  // The app's own count: the most requests each instance held at once.
  for (const inst of app.generations[0].instances) {
    const stats = await waitFor(async () => {
      const r = await http({ port }, { path: '/stats', headers: {} });
      const s = r.json();
      return s.pid === inst.pid ? s : null;
    }, { message: `stats of ${inst.pid}` });
    assert.ok(stats.maxInFlight <= 2, `instance ${inst.pid} held ${stats.maxInFlight} requests at once, concurrency is 2`);
  }
  assert.ok(servingThreads(sink).size >= 2, `requests were served by threads ${[...servingThreads(sink)].join(', ')}`);
  await waitFor(() => gateway.appStatus('shop')!.db.inUse === 0, { message: 'nothing left in flight' });
  assert.equal(gateway.appStatus('shop')!.queue, 0);
});

test('queue.max bounds the pool\'s waiters across threads, not each thread\'s', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const { gateway, port, sink } = await gatewayWith(t, dir, {
    shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 1 } }, health: { path: '/up' }, queue: { max: 4, timeout: '30s' } },
  });
  const all = Array.from({ length: 20 }, (_, i) => http({ port }, { path: `/slow?ms=1000&n=${i}` }));
  const statuses = (await Promise.all(all)).map((r) => r.status);
  assert.equal(statuses.filter((s) => s === 200).length, 5, `1 in flight + 4 queued are served: ${statuses.join(',')}`);
  assert.equal(statuses.filter((s) => s === 503).length, 15);
  assert.equal(gateway.appStatus('shop')!.queue, 0);
  await waitFor(() => sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith('/slow')).length >= 20, { message: 'every line' });
  assert.ok(new Set(sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith('/slow')).map((l) => l.thread ?? 0)).size >= 2);
});

test('a mode switch applies to the very next request on every thread', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const { gateway, port } = await gatewayWith(t, dir, { shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 8 } }, health: { path: '/up' } } });
  for (let round = 0; round < 3; round++) {
    await gateway.setMode('shop', 'maintenance');
    const during = await Promise.all(Array.from({ length: 16 }, () => http({ port }, { path: '/' })));
    assert.deepEqual([...new Set(during.map((r) => r.status))], [503], 'maintenance on every thread from the next request');
    await gateway.setMode('shop', 'normal');
    const after = await Promise.all(Array.from({ length: 16 }, () => http({ port }, { path: '/' })));
    assert.deepEqual([...new Set(after.map((r) => r.status))], [200], 'normal again on every thread');
  }
});

test('across a deploy under load: requests keep the release they arrived under, none fails, and the old generation drains', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  const { gateway, port, sink } = await gatewayWith(t, dir, {
    shop: { source: v1, processes: { web: { command: WEB, instances: 2, concurrency: 16 } }, health: { path: '/up', interval: '200ms' }, timeouts: { drain: '10s' } },
  });
  const r1 = gateway.appStatus('shop')!.generations[0].releaseId;
  // Slow requests pinned to the first release before the switch, on several connections (threads).
  const slow = Array.from({ length: 8 }, () => http({ port }, { path: '/slow?ms=1500' }));
  await waitFor(() => gateway.appStatus('shop')!.db.inUse >= 8, { message: 'the slow requests in flight' });
  let stop = false;
  const failures: string[] = [];
  const seen = new Set<string>();
  const client = async () => {
    while (!stop) {
      const res = await http({ port }, { path: '/' }).catch((err: Error) => ({ status: 0, body: err.message, json: () => ({}) }));
      if (res.status !== 200) failures.push(`${res.status} ${res.body.slice(0, 80)}`);
      else seen.add(res.json().release);
    }
  };
  const clients = Array.from({ length: 10 }, client);
  const deploy = gateway.deployer.begin('shop', { kind: 'deploy', source: v2 });
  await deploy.done;
  assert.equal(deploy.state, 'succeeded', deploy.error ?? '');
  stop = true;
  await Promise.all(clients);
  const pinned = await Promise.all(slow);
  for (const res of pinned) {
    assert.equal(res.status, 200);
    assert.equal(res.json().release, r1, 'a request that arrived before the switch finished on its release');
  }
  assert.deepEqual(failures, []);
  const r2 = gateway.appStatus('shop')!.generations[0].releaseId;
  assert.notEqual(r2, r1);
  assert.ok(seen.has(r2), 'the new release served after the switch');
  const drain = deploy.events.find((e) => e.step === 'drain' && e.status === 'succeeded');
  assert.match(drain?.message ?? '', /drained/);
  const after = await Promise.all(Array.from({ length: 12 }, () => http({ port }, { path: '/' })));
  for (const res of after) assert.equal(res.json().release, r2, 'every thread routes to the new release');
  assert.ok(servingThreads(sink).size >= 2);
});

test('WebSockets on every thread get 1001 at the drain deadline, and the drain waits for them', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  const drainMs = 1200;
  const { gateway, port, sink } = await gatewayWith(t, dir, {
    chat: { source: v1, processes: { web: { command: WEB, instances: 1, concurrency: 8 } }, health: { path: '/up', interval: '200ms' }, timeouts: { drain: `${drainMs}ms` } },
  });
  const sockets = await Promise.all(
    Array.from({ length: 8 }, () =>
      new Promise<{ ws: WebSocket; closed: Promise<number> }>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
        t.after(() => ws.terminate());
        const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
        ws.once('message', () => resolve({ ws, closed }));
        ws.once('error', reject);
      }),
    ),
  );
  assert.equal(gateway.appStatus('chat')!.db.inUse, 8, 'every thread counts its sockets into the shared count');
  const deploy = gateway.deployer.begin('chat', { kind: 'deploy', source: v2 });
  const codes = await Promise.all(sockets.map((s) => s.closed));
  assert.deepEqual([...new Set(codes)], [1001]);
  await deploy.done;
  assert.equal(deploy.state, 'succeeded', deploy.error ?? '');
  const drain = deploy.events.find((e) => e.step === 'drain' && e.status === 'succeeded');
  assert.match(drain?.message ?? '', /8 WebSocket\(s\) closed with 1001/);
  assert.equal(gateway.appStatus('chat')!.generations.length, 1);
  // A tunnel's line is written when it closes; a worker's lines reach the main thread within ~20 ms.
  await waitFor(() => sink.lines.filter((l) => l.path === '/ws').length >= 8, { message: 'a line per WebSocket' });
  assert.ok(new Set(sink.lines.filter((l) => l.path === '/ws').map((l) => l.thread ?? 0)).size >= 2, 'the sockets were spread over the threads');
});

test('a per-IP rate limit counts a client once, whichever thread its connections reach', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const { port, sink } = await gatewayWith(t, dir, {
    shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 16 } }, health: { path: '/up' }, rate_limit: { per_ip: '1/m', burst: 5 } },
  });
  const statuses: number[] = [];
  for (let i = 0; i < 24; i++) statuses.push((await http({ port }, { path: `/limited/${i}` })).status);
  assert.equal(statuses.filter((s) => s === 200).length, 5, `one burst for the client across threads: ${statuses.join(',')}`);
  assert.equal(statuses.filter((s) => s === 429).length, 19);
  await waitFor(() => sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith('/limited/')).length >= 24, { message: 'every line' });
  const threads = new Set(sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith('/limited/')).map((l) => l.thread ?? 0));
  assert.ok(threads.size >= 2, 'the requests reached more than one thread');
});

test('the health lane answers on every thread while every slot of the app is taken', async (t) => {
  const dir = await tempDir(t);
  const src = await blockingApp(dir);
  const { port } = await gatewayWith(t, dir, {
    shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 2 } }, health: { path: '/up', interval: '1s' }, queue: { max: 100, timeout: '20s' } },
  });
  // Every slot held, and a queue behind them, on both threads.
  const held = Array.from({ length: 6 }, () => http({ port }, { path: '/sleep?ms=1500' }));
  await new Promise((r) => setTimeout(r, 300));
  const probes = await Promise.all(
    Array.from({ length: 20 }, async () => {
      const t0 = performance.now();
      const res = await http({ port }, { path: '/_berth/health' });
      return { status: res.status, ms: performance.now() - t0 };
    }),
  );
  for (const p of probes) {
    assert.equal(p.status, 200);
    assert.ok(p.ms < 1_000, `a probe took ${Math.round(p.ms)}ms behind the app's traffic`);
  }
  for (const res of await Promise.all(held)) assert.equal(res.status, 200);
});

test('metrics sum the requests of every thread, and each request has one intact access-log line', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const { gateway, port, sink } = await gatewayWith(t, dir, { shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 16 } }, health: { path: '/up' } } });
  const N = 80;
  const results = await Promise.all(Array.from({ length: N }, (_, i) => http({ port }, { path: `/count/${i}` })));
  for (const r of results) assert.equal(r.status, 200);
  const count = async () => {
    const sample = parseMetrics(await gateway.metrics.text()).find((s) => s.name === 'berth_requests_total' && s.labels.app === 'shop' && s.labels.status_class === '2xx');
    return sample?.value ?? 0;
  };
  await waitFor(async () => (await count()) >= N, { message: `${N} requests counted` });
  assert.equal(await count(), N);
  await waitFor(() => sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith('/count/')).length >= N, { message: 'every access-log line written' });
  const lines = sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith('/count/'));
  assert.equal(lines.length, N);
  assert.equal(new Set(lines.map((l) => l.path)).size, N, 'one line per request');
  assert.ok(new Set(lines.map((l) => l.thread ?? 0)).size >= 2, 'lines from more than one thread');
});

test('a config reload reaches every thread: new log levels silence the access log of workers too', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const apps = { shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 16 } }, health: { path: '/up' } } };
  const { gateway, port, sink } = await gatewayWith(t, dir, apps);
  const lines = (prefix: string) => sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith(prefix));
  await Promise.all(Array.from({ length: 16 }, (_, i) => http({ port }, { path: `/before/${i}` })));
  await waitFor(() => lines('/before/').length >= 16, { message: 'lines before the reload' });
  assert.ok(new Set(lines('/before/').map((l) => l.thread ?? 0)).size >= 2);
  await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'warn', proxy: 'warn' }, proxy: { workers: WORKERS }, apps });
  const result = await gateway.reloadConfig({ user: 'tester', channel: 'socket' });
  assert.deepEqual(result.removed, [], JSON.stringify(result));
  await Promise.all(Array.from({ length: 16 }, (_, i) => http({ port }, { path: `/after/${i}` })));
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(lines('/after/'), [], 'no access-log line from any thread at proxy: warn');
});

test('a graceful stop lets the requests in flight on every thread finish', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const { gateway, port } = await gatewayWith(t, dir, { shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 16 } }, health: { path: '/up' } } });
  const slow = Array.from({ length: 10 }, () => http({ port }, { path: '/slow?ms=800' }));
  await waitFor(() => gateway.appStatus('shop')!.db.inUse >= 10, { message: 'in flight' });
  const stopped = gateway.stop();
  for (const res of await Promise.all(slow)) assert.equal(res.status, 200);
  await stopped;
});

test('a worker thread that dies is replaced; the other threads\' requests are untouched and what it held is given back', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  // Concurrency 4 for 24 requests: both threads hold slots and queue the rest when one dies.
  const { gateway, port, sink } = await gatewayWith(t, dir, { shop: { source: src, processes: { web: { command: WEB, instances: 1, concurrency: 4 } }, health: { path: '/up' }, queue: { max: 100, timeout: '30s' } } });
  const slow = Array.from({ length: 24 }, () => http({ port }, { path: '/slow?ms=400' }).then((r) => r.status, () => 0));
  await waitFor(() => gateway.appStatus('shop')!.db.inUse === 4 && gateway.appStatus('shop')!.queue === 20, { message: 'slots taken and 20 queued' });
  await gateway.proxyWorkers!.kill(1);
  const statuses = await Promise.all(slow);
  // The main thread's requests finish (queued ones too); the dead thread's connections went with it.
  assert.ok(statuses.includes(200), `statuses ${statuses.join(',')}`);
  assert.ok(statuses.every((s) => s === 200 || s === 0));
  // Its slots and its places in the queue are given back: nothing stays counted.
  await waitFor(() => gateway.appStatus('shop')!.db.inUse === 0 && gateway.appStatus('shop')!.queue === 0, { message: 'what the dead thread held given back' });
  await waitFor(() => gateway.proxyWorkers!.running === WORKERS, { timeoutMs: 10_000, message: 'the thread started again' });
  assert.ok(sink.lines.some((l) => l.msg === 'proxy worker exited; restarting it'));
  const after = await Promise.all(Array.from({ length: 16 }, () => http({ port }, { path: '/' })));
  for (const r of after) assert.equal(r.status, 200);
  assert.deepEqual(gateway.status().proxyThreads, { configured: WORKERS, running: WORKERS });
  const status = await runCli(['status', '--socket', join(dir, 'state', 'control.sock')]);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /proxy threads 2\/2/);
});

test('TLS listeners on every thread: SNI, h2, sessions that resume on any thread, certificate files re-read everywhere, redirects to the TLS port', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const ca = await createCa(join(dir, 'ca'));
  const first = await issueCertificate(ca, ['shop.test']);
  const files = { certificate: join(dir, 'shop.crt'), key: join(dir, 'shop.key') };
  await copyFile(first.certificate, files.certificate);
  await copyFile(first.key, files.key);
  const [httpPort, tlsPort] = [await freePort(), await freePort()];
  const config = (apps: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
    state_dir: 'state',
    listen: [`127.0.0.1:${httpPort}`, { address: `127.0.0.1:${tlsPort}`, tls: true }],
    log_levels: { root: 'warn', proxy: 'info' },
    proxy: { workers: WORKERS },
    apps,
    ...extra,
  });
  const shop = { hosts: ['shop.test'], source: src, processes: { web: { command: WEB, instances: 1, concurrency: 8 } }, health: { path: '/up' }, tls: files, https_redirect: true };
  const { gateway, sink } = await startGateway(t, await writeConfig(dir, config({ shop })));
  await waitFor(() => gateway.proxyWorkers?.running === WORKERS, { message: 'every proxy thread running' });
  await ready(httpPort);
  const lines = (prefix: string) => sink.lines.filter((l) => typeof l.path === 'string' && l.path.startsWith(prefix));

  // Each request on a new TLS connection: both threads handshake with the app's certificate.
  for (const r of await Promise.all(Array.from({ length: 16 }, (_, i) => h1Tls(tlsPort, { servername: 'shop.test', ca: ca.pem, path: `/tls/${i}` })))) {
    assert.equal(r.status, 200);
    assert.ok(sameFingerprint(r.fingerprint, first.fingerprint256));
    assert.equal(r.json().app, 'shop');
  }
  await waitFor(() => lines('/tls/').length >= 16, { message: 'a line per TLS request' });
  assert.ok(new Set(lines('/tls/').map((l) => l.thread ?? 0)).size >= 2, 'TLS requests were served by more than one thread');
  const session = await h2Session(t, tlsPort, 'shop.test', ca.pem);
  assert.equal((await h2Request(session, { path: '/' })).status, 200);

  // One ticket key for every thread: a session from one connection resumes on new ones, wherever they land.
  const opts = { servername: 'shop.test', ca: ca.pem, minVersion: 'TLSv1.3' as const, maxVersion: 'TLSv1.3' as const, ALPNProtocols: ['http/1.1'] };
  const c = await connectTls(t, tlsPort, opts);
  const closed = new Promise((resolve) => c.socket.once('close', resolve));
  c.socket.write('GET /up HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n');
  c.socket.resume();
  await closed;
  const ticket = await c.session();
  for (let i = 0; i < 12; i++) {
    const again = await connectTls(t, tlsPort, { ...opts, session: ticket });
    assert.equal(again.reused, true, `connection ${i} resumed the session`);
    again.close();
  }

  // New files on disk: every thread serves them to new handshakes.
  const second = await issueCertificate(ca, ['shop.test']);
  await copyFile(second.certificate, `${files.certificate}.new`);
  await copyFile(second.key, `${files.key}.new`);
  await rename(`${files.key}.new`, files.key);
  await rename(`${files.certificate}.new`, files.certificate);
  await waitFor(async () => {
    const all = await Promise.all(Array.from({ length: 16 }, () => h1Tls(tlsPort, { servername: 'shop.test', ca: ca.pem, path: '/up' })));
    return all.every((r) => sameFingerprint(r.fingerprint, second.fingerprint256));
  }, { timeoutMs: 10_000, message: 'the new certificate on every thread' });

  // Cleartext: every thread redirects to the TLS port.
  const redirects = await Promise.all(Array.from({ length: 16 }, (_, i) => http({ port: httpPort }, { path: `/r/${i}`, host: 'shop.test' })));
  for (const [i, r] of redirects.entries()) {
    assert.equal(r.status, 308);
    assert.equal(r.headers.location, `https://shop.test:${tlsPort}/r/${i}`);
  }
  await waitFor(() => lines('/r/').length >= 16, { message: 'every line' });
  assert.ok(new Set(lines('/r/').map((l) => l.thread ?? 0)).size >= 2, 'both threads redirected');

});
