/**
 * Issue #12: what must work the same over HTTP/2 as over HTTP/1.1, end to end on a TLS listener of
 * `berth start` (a child process) with real app processes: a deploy under h2 load with no failed
 * stream, maintenance mode, static files with Range and ETag, and a WebSocket on the same TLS port over
 * an HTTP/1.1 upgrade. Bounded: a few seconds of load, a few hundred requests.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ClientHttp2Session } from 'node:http2';
import WebSocket from 'ws';
import { createCa, issueCertificate } from '../helpers/certificates.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, spawnGateway, tempDir, untilReady, waitFor, writeConfig } from '../helpers/gateway.ts';
import { h2Request, h2Session } from '../helpers/https.ts';
import { freePort } from '../tls/pebble.ts';

const CSS = 'body { color: #222; background: white; }\n'.repeat(40);

/** Load over a few h2 connections until stopped: every stream must end in a 200 from the app. */
function h2Load(sessions: ClientHttp2Session[], streamsPerSession: number, maxRequests: number) {
  const failures: string[] = [];
  const releases = new Map<string, number>();
  let sent = 0;
  let stopped = false;
  const loop = async (session: ClientHttp2Session) => {
    while (!stopped && sent < maxRequests) {
      sent++;
      try {
        const r = await h2Request(session, { path: '/', timeoutMs: 15_000 });
        if (r.status !== 200) failures.push(`status ${r.status}: ${r.text().slice(0, 200)}`);
        else {
          const release = r.json().release as string;
          releases.set(release, (releases.get(release) ?? 0) + 1);
        }
      } catch (err) {
        failures.push(`stream failed: ${(err as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const loops = sessions.flatMap((s) => Array.from({ length: streamsPerSession }, () => loop(s)));
  return {
    get sent() {
      return sent;
    },
    async stop() {
      stopped = true;
      await Promise.all(loops);
      return { sent, failures, releases };
    },
  };
}

test('over h2 on the TLS port: a deploy under load fails no stream; maintenance mode; static Range and ETag; a WebSocket over HTTP/1.1 on the same port', async (t) => {
  const dir = await tempDir(t, 'berth-h2-');
  const ca = await createCa(join(dir, 'ca'));
  const cert = await issueCertificate(ca, ['shop.test']);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  for (const src of [v1, v2]) {
    await mkdir(join(src, 'public'), { recursive: true });
    await writeFile(join(src, 'public', 'app.css'), CSS);
  }
  const [httpPort, tlsPort] = [await freePort(), await freePort()];
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: [`127.0.0.1:${httpPort}`, { address: `127.0.0.1:${tlsPort}`, tls: true }],
    log_levels: { root: 'warn' },
    apps: {
      shop: {
        hosts: ['shop.test'],
        source: v1,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 16 } },
        health: { path: '/up', interval: '250ms' },
        timeouts: { drain: '10s' },
        routes: [{ path: '/static', static: 'public' }, { path: '/', to: 'web' }],
        tls: { certificate: cert.certificate, key: cert.key },
      },
    },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const session = await h2Session(t, tlsPort, 'shop.test', ca.pem);

  // Static files over h2: Range, ETag and If-None-Match, as over HTTP/1.1.
  const whole = await h2Request(session, { path: '/static/app.css' });
  assert.equal(whole.status, 200);
  assert.equal(whole.text(), CSS);
  const etag = String(whole.headers.etag);
  assert.match(etag, /^"[0-9a-f]+-[0-9a-f]+"$/);
  const range = await h2Request(session, { path: '/static/app.css', headers: { range: 'bytes=10-19' } });
  assert.equal(range.status, 206);
  assert.equal(range.headers['content-range'], `bytes 10-19/${CSS.length}`);
  assert.equal(range.text(), CSS.slice(10, 20));
  const suffix = await h2Request(session, { path: '/static/app.css', headers: { range: 'bytes=-5' } });
  assert.equal(suffix.status, 206);
  assert.equal(suffix.text(), CSS.slice(-5));
  assert.equal((await h2Request(session, { path: '/static/app.css', headers: { range: `bytes=${CSS.length}-` } })).status, 416);
  const cached = await h2Request(session, { path: '/static/app.css', headers: { 'if-none-match': etag } });
  assert.equal(cached.status, 304);
  assert.equal(cached.body.length, 0);

  // Maintenance mode over h2: the page and its headers, then back to normal; the session survives both.
  const putMode = (mode: string) =>
    http({ socketPath: gw.socket }, { path: '/v1/apps/shop/mode', method: 'PUT', headers: { 'content-type': 'application/json', 'x-berth-user': 'tester' }, body: JSON.stringify({ mode, ...(mode === 'maintenance' ? { message: 'back soon', retry_after: 60 } : {}) }) });
  assert.equal((await putMode('maintenance')).status, 200);
  const closed = await h2Request(session, { path: '/', headers: { accept: 'application/json' } });
  assert.equal(closed.status, 503, closed.text());
  assert.equal(closed.headers['x-berth-mode'], 'maintenance');
  assert.equal(closed.headers['retry-after'], '60');
  assert.deepEqual(closed.json(), { error: { status: 503, reason: 'maintenance', message: 'back soon' } });
  assert.equal((await putMode('normal')).status, 200);
  assert.equal((await h2Request(session, { path: '/' })).status, 200);

  // A WebSocket on the TLS port: HTTP/1.1 upgrade (a ws client offers no ALPN, so no h2), told https.
  // servername is passed on to tls.connect (and checked against the certificate); ws's types omit it.
  const ws = new WebSocket(`wss://127.0.0.1:${tlsPort}/ws`, { ca: ca.pem, servername: 'shop.test', headers: { host: 'shop.test' } } as WebSocket.ClientOptions);
  t.after(() => ws.terminate());
  const messages: string[] = [];
  ws.on('message', (d) => messages.push(String(d)));
  await new Promise<void>((resolve, reject) => ws.once('open', resolve).once('error', reject));
  await waitFor(() => messages.length >= 1, { message: 'the hello frame' });
  const hello = JSON.parse(messages[0]);
  assert.equal(hello.app, 'shop');
  assert.equal(hello.headers['x-forwarded-proto'], 'https');
  ws.send('over tls');
  await waitFor(() => messages.includes('over tls'), { message: 'the echo' });
  // Closed before the deploy, so the drain below does not wait for it.
  ws.close();
  await new Promise((resolve) => ws.once('close', resolve));

  // A deploy under h2 load: 3 connections x 4 concurrent streams, bounded to a few hundred requests.
  const sessions = [session, await h2Session(t, tlsPort, 'shop.test', ca.pem), await h2Session(t, tlsPort, 'shop.test', ca.pem)];
  const old = (await h2Request(session, { path: '/' })).json().release;
  const load = h2Load(sessions, 4, 1_000);
  await waitFor(() => load.sent >= 50, { message: 'load running' });
  const started = await http({ socketPath: gw.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body: JSON.stringify({ source: v2 }), headers: { 'content-type': 'application/json' } });
  assert.equal(started.status, 202, started.body);
  const id: string = started.json().id;
  const done = await waitFor(
    async () => {
      const d = await gw.api(`/v1/deploys/${id}`);
      return d.state === 'running' ? null : d;
    },
    { timeoutMs: 60_000, message: 'the deploy to end' },
  );
  assert.equal(done.state, 'succeeded', done.error);
  // Some load on the new release after the switch, then stop.
  const target = load.sent + 50;
  await waitFor(() => load.sent >= target || load.sent >= 1_000, { message: 'load after the switch' });
  const stats = await load.stop();
  t.diagnostic(`h2 load: ${stats.sent} requests, releases ${JSON.stringify(Object.fromEntries(stats.releases))}`);
  assert.deepEqual(stats.failures, []);
  assert.ok(stats.sent >= 100, `sent ${stats.sent}`);
  const now = (await h2Request(session, { path: '/' })).json().release;
  assert.notEqual(now, old);
  assert.ok(stats.releases.has(old) && stats.releases.has(now), `both releases served: ${[...stats.releases.keys()]}`);
  for (const s of sessions) assert.equal(s.closed, false, 'no h2 connection was closed by the deploy');
  assert.equal(gw.proc.exitCode, null);
});
