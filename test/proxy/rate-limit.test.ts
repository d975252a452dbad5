import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { RateLimitConfig } from '../../src/config/schema.ts';
import { clientKey, MAX_BUCKETS, RateLimit } from '../../src/proxy/rate-limit.ts';
import { appConfig, backend, berthConfig, entry, fetchRaw, okHandler, startProxy, TestGeneration } from './fixtures.ts';

function limit(over: Partial<RateLimitConfig> = {}): RateLimitConfig {
  return { count: 10, perMs: 1000, burst: 5, paths: [], ...over };
}

test('a fresh client gets exactly burst requests at once, then one per interval', () => {
  const rl = new RateLimit('shop', limit({ count: 10, perMs: 1000, burst: 5 }));
  const t0 = 1_000;
  for (let i = 0; i < 5; i++) assert.equal(rl.take('10.0.0.1', t0), 0, `request ${i + 1} of the burst`);
  const wait = rl.take('10.0.0.1', t0);
  assert.ok(wait > 99 && wait <= 100.001, `waits one interval (100ms), got ${wait}`);
  // A refused request takes nothing: still refused a moment later, admitted once the interval passed.
  assert.ok(rl.take('10.0.0.1', t0 + 50) > 0);
  assert.equal(rl.take('10.0.0.1', t0 + 100), 0);
  assert.ok(rl.take('10.0.0.1', t0 + 100) > 0);
  // After a full refill (burst x interval) the whole burst is back.
  for (let i = 0; i < 5; i++) assert.equal(rl.take('10.0.0.1', t0 + 100 + 500), 0);
  assert.ok(rl.take('10.0.0.1', t0 + 600) > 0);
});

test('buckets are per client: another IP is unaffected', () => {
  const rl = new RateLimit('shop', limit({ burst: 2 }));
  assert.equal(rl.take('10.0.0.1', 0), 0);
  assert.equal(rl.take('10.0.0.1', 0), 0);
  assert.ok(rl.take('10.0.0.1', 0) > 0);
  assert.equal(rl.take('10.0.0.2', 0), 0);
  assert.equal(rl.take('10.0.0.2', 0), 0);
  assert.equal(rl.size, 2);
});

test('a 1/m limit asks to wait a minute', () => {
  const rl = new RateLimit('shop', limit({ count: 1, perMs: 60_000, burst: 1 }));
  assert.equal(rl.take('10.0.0.1', 0), 0);
  assert.equal(Math.ceil(rl.take('10.0.0.1', 0) / 1000), 60);
});

test('paths limit only matching prefixes, segment by segment', () => {
  const rl = new RateLimit('shop', limit({ paths: ['/login', '/api/auth'] }));
  assert.equal(rl.applies('/login'), true);
  assert.equal(rl.applies('/login?next=/'), true);
  assert.equal(rl.applies('/login/2fa'), true);
  assert.equal(rl.applies('/api/auth/token'), true);
  assert.equal(rl.applies('/loginx'), false);
  assert.equal(rl.applies('/'), false);
  assert.equal(rl.applies('/api'), false);
  assert.equal(new RateLimit('shop', limit()).applies('/anything'), true);
});

test('IPv6 clients share a bucket per /64; IPv4 and odd values are keyed as they are', () => {
  assert.equal(clientKey('10.1.2.3'), '10.1.2.3');
  assert.equal(clientKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  assert.equal(clientKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
  assert.equal(clientKey('2001:0DB8:0001:0002::9'), '2001:db8:1:2::/64');
  assert.equal(clientKey('::1'), '0:0:0:0::/64');
  assert.equal(clientKey('fe80::1%eth0'), 'fe80:0:0:0::/64');
  assert.equal(clientKey('unix:'), 'unix:');
  assert.equal(clientKey('::ffff:1.2.3.4'), '::ffff:1.2.3.4');
  assert.equal(clientKey('not:an:address:zz::1'), 'not:an:address:zz::1');
  assert.equal(clientKey('1::2::3'), '1::2::3');
  const rl = new RateLimit('shop', limit({ burst: 1 }));
  assert.equal(rl.take('2001:db8:1:2::1', 0), 0);
  assert.ok(rl.take('2001:db8:1:2::ffff', 0) > 0, 'another address of the same /64 shares the bucket');
  assert.equal(rl.take('2001:db8:1:3::1', 0), 0);
});

test('sweep drops idle (full) buckets only, which changes no decision', () => {
  const rl = new RateLimit('shop', limit({ count: 10, perMs: 1000, burst: 2 }));
  rl.take('10.0.0.1', 0);
  rl.take('10.0.0.2', 0);
  rl.take('10.0.0.2', 0);
  // At 150ms the first bucket (one token used, 100ms interval) is full again; the second is still 100ms behind.
  assert.equal(rl.sweep(150), 1);
  assert.equal(rl.size, 1);
  assert.equal(rl.take('10.0.0.2', 150), 0);
  assert.ok(rl.take('10.0.0.2', 150) > 0, 'the busy bucket kept its state');
});

test('the bucket count never passes the cap; an idle bucket is evicted first', () => {
  const rl = new RateLimit('shop', limit({ count: 1, perMs: 1000, burst: 1 }), { maxBuckets: 3 });
  rl.take('a', 0); // idle again at 1000
  rl.take('b', 500); // busy until 1500
  rl.take('c', 900); // busy until 1900
  rl.take('d', 1200); // full: 'a' is idle and goes
  assert.equal(rl.size, 3);
  assert.ok(rl.take('b', 1200) > 0, 'b kept its bucket');
  assert.ok(rl.take('c', 1200) > 0, 'c kept its bucket');
  // Nobody idle: the oldest (b) goes, and gets a fresh burst at worst.
  rl.take('e', 1300);
  assert.equal(rl.size, 3);
  assert.equal(rl.take('b', 1300), 0);
  assert.equal(rl.size, 3);
});

test('a reconfigured limit keeps its buckets; matches() tells a change', () => {
  const config = limit({ burst: 1 });
  const rl = new RateLimit('shop', config);
  assert.equal(rl.matches(limit({ burst: 1 })), true);
  assert.equal(rl.matches(limit({ burst: 2 })), false);
  assert.equal(rl.matches(limit({ burst: 1, paths: ['/x'] })), false);
  assert.equal(rl.matches(limit({ burst: 1, count: 20, perMs: 2000 })), true, 'same rate, other words');
  rl.take('10.0.0.1', 0);
  rl.configure(limit({ burst: 2 }));
  assert.equal(rl.take('10.0.0.1', 0), 0, 'the larger burst applies at once');
  assert.ok(rl.take('10.0.0.1', 0) > 0);
});

test('a cap below one bucket is refused', () => {
  assert.throws(() => new RateLimit('shop', limit(), { maxBuckets: 0 }), { code: 'BERTH_E_INTERNAL', message: /at least 1/ });
  assert.throws(() => new RateLimit('shop', limit(), { maxBuckets: Number.NaN }), { code: 'BERTH_E_INTERNAL' });
});

test('100,000 distinct IPs: at most MAX_BUCKETS buckets and under 16 MB (the documented bound)', () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const ip = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
  gc();
  const before = process.memoryUsage();
  const rl = new RateLimit('shop', limit({ count: 1, perMs: 60_000, burst: 5 }));
  // Every client stays busy for a minute, so nothing is idle: the cap alone bounds memory. Each address
  // is a new string, as from a socket, so the keys the limiter keeps are counted too.
  let admitted = 0;
  for (let i = 0; i < 100_000; i++) if (rl.take(ip(i), 1000 + i * 0.01) === 0) admitted++;
  gc();
  const after = process.memoryUsage();
  const bytes = after.heapUsed - before.heapUsed + (after.arrayBuffers - before.arrayBuffers);
  assert.equal(admitted, 100_000);
  assert.equal(rl.size, MAX_BUCKETS);
  const perBucket = Math.round(bytes / rl.size);
  process.stdout.write(`# rate limit: ${rl.size} buckets for 100000 IPs, ${(bytes / 1048576).toFixed(1)} MB (${perBucket} B per bucket)\n`);
  assert.ok(bytes < 16 * 1024 * 1024, `limiter memory ${bytes} bytes`);
  // The most recent clients are the ones kept, and still limited.
  for (let i = 0; i < 5; i++) rl.take(ip(99_999), 2000);
  assert.ok(rl.take(ip(99_999), 2000) > 0);
  assert.equal(rl.sweep(1000 + 61_000 * 6), MAX_BUCKETS, 'all idle after a full refill');
  assert.equal(rl.size, 0);
});

test('through the proxy: a burst of 100 from one IP gets exactly `burst` through, then 429 with Retry-After', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 64, [be.address]);
  const app = appConfig('shop', { rateLimit: limit({ count: 1, perMs: 60_000, burst: 7 }), queue: { max: 200, timeoutMs: 10_000 } });
  // One trusted hop: X-Forwarded-For's last entry is the client, as that hop would have appended it.
  const { url } = await startProxy(t, [entry(app, gen)], { config: berthConfig([app], { trustedProxyCount: 1 }) });
  const burst = await Promise.all(Array.from({ length: 100 }, () => fetchRaw(url, { headers: { 'x-forwarded-for': '203.0.113.7' } })));
  const ok = burst.filter((r) => r.status === 200);
  const limited = burst.filter((r) => r.status === 429);
  assert.equal(ok.length, 7);
  assert.equal(limited.length, 93);
  for (const r of limited) {
    assert.equal(r.headers['x-berth-reason'], 'rate-limited');
    const retryAfter = Number(r.headers['retry-after']);
    assert.ok(retryAfter >= 50 && retryAfter <= 60, `Retry-After ${retryAfter}`);
  }
  assert.match(limited[0].text, /429 Too Many Requests/);
  assert.equal(be.requests.length, 7);
  const json = await fetchRaw(url, { headers: { 'x-forwarded-for': '203.0.113.7', accept: 'application/json' } });
  assert.deepEqual(JSON.parse(json.text), { error: { status: 429, reason: 'rate-limited' } });
  // Another client is unaffected.
  const other = await fetchRaw(url, { headers: { 'x-forwarded-for': '203.0.113.8' } });
  assert.equal(other.status, 200);
});

test('through the proxy: only the configured paths are limited, and the health lane never is', async (t) => {
  const be = await backend(t, okHandler('ok'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 8, [be.address]);
  const app = appConfig('shop', { rateLimit: limit({ count: 1, perMs: 60_000, burst: 1, paths: ['/login'] }) });
  const { url } = await startProxy(t, [entry(app, gen)]);
  assert.equal((await fetchRaw(`${url}/login`)).status, 200);
  assert.equal((await fetchRaw(`${url}/login`)).status, 429);
  assert.equal((await fetchRaw(`${url}/login/2fa`)).status, 429);
  for (let i = 0; i < 5; i++) assert.equal((await fetchRaw(`${url}/`)).status, 200);
  for (let i = 0; i < 5; i++) assert.equal((await fetchRaw(`${url}/_berth/health`)).status, 200);
});
