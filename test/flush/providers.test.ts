/**
 * The providers' pure parts (Fast Purge batches, Retry-After, credentials from the environment) and the
 * http provider against a real local node:http server.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { batches, FAST_PURGE_MAX_BODY, fastPurgeCredentials, httpProvider, retryAfterMs, type FlushOutcome } from '../../src/flush/providers.ts';

const bodyOf = (batch: string[]) => JSON.stringify({ objects: batch });

// ---- batches ----------------------------------------------------------------------------------

test('batches: every body stays within the limit, order is kept, and nothing is lost or repeated', () => {
  const objects = Array.from({ length: 200 }, (_, i) => `https://cdn.test/assets/file-${i}${'x'.repeat(i % 37)}.js`);
  for (const limit of [120, 200, 457, 1000]) {
    const out = batches(objects, limit);
    assert.ok(out.length > 1, `limit ${limit}: expected several batches`);
    for (const b of out) {
      assert.ok(b.length > 0, 'no empty batch');
      assert.ok(Buffer.byteLength(bodyOf(b)) <= limit, `limit ${limit}: body of ${Buffer.byteLength(bodyOf(b))} bytes`);
    }
    assert.deepEqual(out.flat(), objects);
  }
});

test('batches: each batch is as full as it may be (the next object would not have fitted)', () => {
  const objects = Array.from({ length: 60 }, (_, i) => `/p/${i}`);
  const out = batches(objects, 200);
  for (let i = 0; i < out.length - 1; i++) {
    assert.ok(Buffer.byteLength(bodyOf([...out[i], out[i + 1][0]])) > 200, `batch ${i} could have taken one more`);
  }
});

test('batches: a body exactly at the limit is allowed', () => {
  // {"objects":["aaaa"]} is 14 + 6 = 20 bytes; two of them 20 + 7 = 27.
  assert.deepEqual(batches(['aaaa', 'bbbb'], 27), [['aaaa', 'bbbb']]);
  assert.deepEqual(batches(['aaaa', 'bbbb'], 26), [['aaaa'], ['bbbb']]);
});

test('batches: an object too big on its own goes alone, between the others', () => {
  const big = 'https://cdn.test/' + 'b'.repeat(300);
  const out = batches(['/a', '/b', big, '/c', '/d'], 200);
  assert.deepEqual(out, [['/a', '/b'], [big], ['/c', '/d']]);
  assert.deepEqual(batches([big], 200), [[big]]);
  assert.deepEqual(batches([big, big], 200), [[big], [big]]);
});

test('batches: none for no objects; the default limit is Fast Purge\'s 50,000 bytes', () => {
  assert.deepEqual(batches([]), []);
  assert.equal(FAST_PURGE_MAX_BODY, 50_000);
  const objects = Array.from({ length: 5000 }, (_, i) => `https://www.example.com/static/assets/abc${String(i).padStart(6, '0')}.js`);
  const out = batches(objects);
  // 5000 objects of 50 bytes (52 with quotes, 53 with the comma): 943 fit in a body, so 6 batches.
  assert.equal(objects[0].length, 50);
  assert.deepEqual(out.map((b) => b.length), [943, 943, 943, 943, 943, 285]);
  for (const b of out) assert.ok(Buffer.byteLength(bodyOf(b)) <= 50_000);
  assert.deepEqual(out.flat(), objects);
});

test('batches: quotes and backslashes are counted as JSON writes them', () => {
  const objects = Array.from({ length: 40 }, (_, i) => `S/=/1/"quoted"\\${i}`);
  const out = batches(objects, 150);
  for (const b of out) assert.ok(Buffer.byteLength(bodyOf(b)) <= 150, `${Buffer.byteLength(bodyOf(b))} bytes`);
  assert.deepEqual(out.flat(), objects);
});

test('batches: the limit is in bytes, so non-ASCII objects (more bytes than characters) stay within it too', () => {
  const objects = Array.from({ length: 30 }, (_, i) => `https://café.test/é/${i}`);
  for (const b of batches(objects, 200)) assert.ok(Buffer.byteLength(bodyOf(b)) <= 200, `${Buffer.byteLength(bodyOf(b))} bytes`);
});

// ---- retryAfterMs -----------------------------------------------------------------------------

test('retryAfterMs: seconds, an HTTP date, garbage, nothing, and the one-hour cap', () => {
  assert.equal(retryAfterMs('5'), 5000);
  assert.equal(retryAfterMs(' 2 '), 2000);
  assert.equal(retryAfterMs('0'), 0);
  const now = Date.parse('2026-10-21T07:28:00Z');
  assert.equal(retryAfterMs('Wed, 21 Oct 2026 07:28:30 GMT', now), 30_000);
  assert.equal(retryAfterMs(new Date(now + 120_000).toUTCString(), now), 120_000);
  // A date in the past: no wait.
  assert.equal(retryAfterMs('Wed, 21 Oct 2026 07:00:00 GMT', now), 0);
  assert.equal(retryAfterMs('soon', now), null);
  assert.equal(retryAfterMs('', now), null);
  assert.equal(retryAfterMs('   ', now), null);
  assert.equal(retryAfterMs(null), null);
  assert.equal(retryAfterMs('3600'), 3_600_000);
  assert.equal(retryAfterMs('3601'), 3_600_000);
  assert.equal(retryAfterMs('86400'), 3_600_000);
  assert.equal(retryAfterMs(new Date(now + 5 * 3_600_000).toUTCString(), now), 3_600_000);
  assert.equal(retryAfterMs('-5'), 0);
});

// ---- fastPurgeCredentials ---------------------------------------------------------------------

const FULL_PROD_EU = {
  BERTH_FASTPURGE_HOST_PROD_EU: 'akab-host.luna.akamaiapis.net',
  BERTH_FASTPURGE_CLIENT_TOKEN_PROD_EU: 'akab-client',
  BERTH_FASTPURGE_CLIENT_SECRET_PROD_EU: 'secret=',
  BERTH_FASTPURGE_ACCESS_TOKEN_PROD_EU: 'akab-access',
};

test('fastPurgeCredentials: the environment suffix is upper-cased with other characters as _', () => {
  const environ = {
    ...FULL_PROD_EU,
    // Unsuffixed names and another environment's are not read.
    BERTH_FASTPURGE_HOST: 'wrong-host',
    BERTH_FASTPURGE_HOST_STAGING: 'wrong-host-2',
  };
  assert.deepEqual(fastPurgeCredentials(environ, 'prod-eu'), {
    credentials: { host: 'akab-host.luna.akamaiapis.net', clientToken: 'akab-client', clientSecret: 'secret=', accessToken: 'akab-access' },
    missing: [],
  });
  assert.deepEqual(fastPurgeCredentials(environ, 'Prod.EU').credentials?.host, 'akab-host.luna.akamaiapis.net');
});

test('fastPurgeCredentials: missing lists exactly the names not set (or blank), and gives no credentials', () => {
  const environ = { ...FULL_PROD_EU, BERTH_FASTPURGE_CLIENT_SECRET_PROD_EU: undefined, BERTH_FASTPURGE_ACCESS_TOKEN_PROD_EU: '   ' };
  assert.deepEqual(fastPurgeCredentials(environ, 'prod-eu'), {
    credentials: null,
    missing: ['BERTH_FASTPURGE_CLIENT_SECRET_PROD_EU', 'BERTH_FASTPURGE_ACCESS_TOKEN_PROD_EU'],
  });
  assert.deepEqual(fastPurgeCredentials({}, 'prod-eu').missing, [
    'BERTH_FASTPURGE_HOST_PROD_EU',
    'BERTH_FASTPURGE_CLIENT_TOKEN_PROD_EU',
    'BERTH_FASTPURGE_CLIENT_SECRET_PROD_EU',
    'BERTH_FASTPURGE_ACCESS_TOKEN_PROD_EU',
  ]);
});

test('fastPurgeCredentials: no environment reads the names without a suffix; values are trimmed', () => {
  const environ = {
    ...FULL_PROD_EU,
    BERTH_FASTPURGE_HOST: ' host.test ',
    BERTH_FASTPURGE_CLIENT_TOKEN: 'ct',
  };
  assert.deepEqual(fastPurgeCredentials(environ, null), {
    credentials: null,
    missing: ['BERTH_FASTPURGE_CLIENT_SECRET', 'BERTH_FASTPURGE_ACCESS_TOKEN'],
  });
  assert.deepEqual(fastPurgeCredentials({ ...environ, BERTH_FASTPURGE_CLIENT_SECRET: 'cs', BERTH_FASTPURGE_ACCESS_TOKEN: 'at' }, null).credentials, {
    host: 'host.test',
    clientToken: 'ct',
    clientSecret: 'cs',
    accessToken: 'at',
  });
});

// ---- httpProvider against a real server -------------------------------------------------------

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/**
 * A CDN on 127.0.0.1:0 answering by path: /ok 200, /gone 404, /busy 503, /slow-down 429 with
 * Retry-After: 2, /forbidden 403, /timeout-408 408, /moved 301, /hang never; /held/* 200 after 40 ms.
 * Counts requests in flight, and the most at once.
 */
async function fakeCdn(t: TestContext, onRequest: (seen: Seen[]) => void = () => {}): Promise<{ base: string; seen: Seen[]; maxInFlight: () => number }> {
  const seen: Seen[] = [];
  let inFlight = 0;
  let max = 0;
  const server = createServer((req, res) => {
    seen.push({ method: req.method!, url: req.url!, headers: req.headers });
    onRequest(seen);
    inFlight++;
    max = Math.max(max, inFlight);
    res.on('close', () => inFlight--);
    const path = req.url!;
    if (path === '/hang') return;
    if (path.startsWith('/held/')) {
      setTimeout(() => res.writeHead(200).end('purged'), 40);
      return;
    }
    const status = ({ '/ok': 200, '/gone': 404, '/busy': 503, '/slow-down': 429, '/forbidden': 403, '/timeout-408': 408, '/moved': 301 } as Record<string, number>)[path] ?? 500;
    res.writeHead(status, status === 429 ? { 'retry-after': '2' } : status === 301 ? { location: '/ok' } : {}).end('body');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  );
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, maxInFlight: () => max };
}

/** A port nothing listens on: one a server had, closed again. */
async function closedPort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

const CONFIG = { method: 'PURGE', headers: {}, concurrency: 4, timeoutMs: 2000 };

function sortedOutcome(out: FlushOutcome) {
  return { done: [...out.done].sort(), retry: out.retry.map((r) => r.url).sort(), failed: out.failed.map((f) => f.url).sort() };
}

test('http: 200 and 404 are done, 503, 429 and 408 to retry (with the Retry-After), 403 and a redirect failed', async (t) => {
  const cdn = await fakeCdn(t);
  const u = (p: string) => `${cdn.base}${p}`;
  const urls = ['/ok', '/gone', '/busy', '/slow-down', '/timeout-408', '/forbidden', '/moved'].map(u);
  const out = await httpProvider(CONFIG).send(urls, new AbortController().signal);
  assert.deepEqual(sortedOutcome(out), {
    done: [u('/gone'), u('/ok')].sort(),
    retry: [u('/busy'), u('/slow-down'), u('/timeout-408')].sort(),
    failed: [u('/forbidden'), u('/moved')].sort(),
  });
  assert.equal(out.retryAfterMs, 2000);
  assert.deepEqual(Object.fromEntries(out.retry.map((r) => [r.url, r.error])), { [u('/busy')]: 'HTTP 503', [u('/slow-down')]: 'HTTP 429', [u('/timeout-408')]: 'HTTP 408' });
  assert.deepEqual(Object.fromEntries(out.failed.map((f) => [f.url, f.error])), { [u('/forbidden')]: 'HTTP 403', [u('/moved')]: 'HTTP 301' });
  // Each URL was sent once; the redirect was not followed.
  assert.deepEqual(cdn.seen.map((s) => s.url).sort(), ['/ok', '/gone', '/busy', '/slow-down', '/timeout-408', '/forbidden', '/moved'].sort());
});

test('http: no Retry-After leaves retryAfterMs null', async (t) => {
  const cdn = await fakeCdn(t);
  const out = await httpProvider(CONFIG).send([`${cdn.base}/busy`, `${cdn.base}/ok`], new AbortController().signal);
  assert.equal(out.retryAfterMs, null);
  assert.deepEqual(out.done, [`${cdn.base}/ok`]);
  assert.deepEqual(out.retry.map((r) => r.url), [`${cdn.base}/busy`]);
});

test('http: a connection refused is worth a retry, with the error', async () => {
  const url = `http://127.0.0.1:${await closedPort()}/x`;
  const out = await httpProvider(CONFIG).send([url], new AbortController().signal);
  assert.deepEqual(out.done, []);
  assert.deepEqual(out.failed, []);
  assert.equal(out.retry.length, 1);
  assert.equal(out.retry[0].url, url);
  assert.ok(out.retry[0].error.length > 0);
});

test('http: a server that never answers is a retry after the timeout', async (t) => {
  const cdn = await fakeCdn(t);
  const started = Date.now();
  const out = await httpProvider({ ...CONFIG, timeoutMs: 200 }).send([`${cdn.base}/hang`, `${cdn.base}/ok`], new AbortController().signal);
  assert.deepEqual(out.done, [`${cdn.base}/ok`]);
  assert.deepEqual(out.retry.map((r) => r.url), [`${cdn.base}/hang`]);
  assert.ok(Date.now() - started < 5000, 'the timeout ended the request');
});

test('http: the server sees the configured method and headers', async (t) => {
  const cdn = await fakeCdn(t);
  // (node:http answers 400 itself to a method its parser does not know, such as BAN: DELETE stands in.)
  const config = { ...CONFIG, method: 'DELETE', headers: { 'X-Purge-Token': 's3cret', 'Surrogate-Key': 'all' } };
  const out = await httpProvider(config).send([`${cdn.base}/ok`, `${cdn.base}/gone`], new AbortController().signal);
  assert.equal(out.done.length, 2);
  assert.equal(cdn.seen.length, 2);
  for (const s of cdn.seen) {
    assert.equal(s.method, 'DELETE');
    assert.equal(s.headers['x-purge-token'], 's3cret');
    assert.equal(s.headers['surrogate-key'], 'all');
  }
  const cdn2 = await fakeCdn(t);
  await httpProvider({ ...CONFIG, method: 'PURGE' }).send([`${cdn2.base}/ok`], new AbortController().signal);
  assert.equal(cdn2.seen[0].method, 'PURGE');
});

test('http: concurrency 2 never has more than 2 requests in flight (and does run 2 at once)', async (t) => {
  const cdn = await fakeCdn(t);
  const urls = Array.from({ length: 8 }, (_, i) => `${cdn.base}/held/${i}`);
  const out = await httpProvider({ ...CONFIG, concurrency: 2 }).send(urls, new AbortController().signal);
  assert.deepEqual([...out.done].sort(), [...urls].sort());
  assert.equal(cdn.seen.length, 8);
  assert.equal(cdn.maxInFlight(), 2);
});

test('http: concurrency 1 sends one at a time, in order', async (t) => {
  const cdn = await fakeCdn(t);
  const urls = Array.from({ length: 4 }, (_, i) => `${cdn.base}/held/${i}`);
  const out = await httpProvider({ ...CONFIG, concurrency: 1 }).send(urls, new AbortController().signal);
  assert.deepEqual(out.done, urls);
  assert.deepEqual(cdn.seen.map((s) => s.url), ['/held/0', '/held/1', '/held/2', '/held/3']);
  assert.equal(cdn.maxInFlight(), 1);
});

test('http: an aborted send gives back every URL not purged as a retry, each once', async (t) => {
  const ac = new AbortController();
  // Aborted when the third request arrives: with concurrency 1 the first two are done, the third in flight.
  const cdn = await fakeCdn(t, (seen) => {
    if (seen.length === 3) ac.abort();
  });
  const urls = Array.from({ length: 6 }, (_, i) => `${cdn.base}/held/${i}`);
  const out = await httpProvider({ ...CONFIG, concurrency: 1 }).send(urls, ac.signal);
  assert.deepEqual(out.done, urls.slice(0, 2));
  assert.deepEqual(out.retry.map((r) => r.url), urls.slice(2));
  assert.deepEqual(out.failed, []);
  assert.notEqual(out.retry[0].error, 'not sent: the gateway stopped');
  assert.deepEqual(out.retry.slice(1).map((r) => r.error), Array(3).fill('not sent: the gateway stopped'));
  assert.equal(cdn.seen.length, 3);
  // Already aborted: nothing is sent at all.
  const none = await httpProvider(CONFIG).send(urls, AbortSignal.abort());
  assert.equal(cdn.seen.length, 3);
  assert.deepEqual(none.retry.map((r) => r.url), urls);
});

test('http: no URLs, no requests', async (t) => {
  const cdn = await fakeCdn(t);
  const out = await httpProvider(CONFIG).send([], new AbortController().signal);
  assert.deepEqual(out, { done: [], retry: [], failed: [], retryAfterMs: null });
  assert.equal(cdn.seen.length, 0);
});
