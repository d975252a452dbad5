/**
 * Session affinity (`routes[].affinity`) through a real Proxy in front of real backends on port 0:
 * signed cookies and what a forged or stale one does, waiting for one's own instance, draining
 * generations, the rendezvous hash's keys as instances come and go, and the signing key's file.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import type { AppConfig, BerthConfig, RouteAffinity } from '../../src/config/schema.ts';
import type { UpstreamAddress } from '../../src/supervisor/types.ts';
import { Proxy } from '../../src/proxy/server.ts';
import { RoutingTable, type AppEntry } from '../../src/proxy/router.ts';
import { AFFINITY_KEY_FILE } from '../../src/proxy/affinity-key.ts';
import { Affinity, hashString, queryValue } from '../../src/proxy/affinity.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import {
  appConfig,
  backend,
  berthConfig,
  captureLogger,
  entry,
  fetchRaw,
  gate,
  processConfig,
  route,
  spillDir,
  startProxy,
  TestGeneration,
  TestUpstream,
  type Reply,
} from './fixtures.ts';

// ---- helpers ---------------------------------------------------------------------------------------

/** A backend that answers with its label; `/hold` waits for `held` to open first. */
async function labelled(t: TestContext, label: string, held: Promise<void> = Promise.resolve()): Promise<UpstreamAddress> {
  const b = await backend(t, (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    const answer = () => {
      res.writeHead(200, { 'content-type': 'text/plain', 'set-cookie': 'app_session=1; Path=/' });
      res.end(label);
    };
    if (req.url === '/hold') void held.then(answer);
    else answer();
  });
  return b.address;
}

interface Shop {
  proxy: Proxy;
  url: string;
  gen: TestGeneration;
  app: AppConfig;
  config: BerthConfig;
  lines: Record<string, unknown>[];
}

/** App `shop`: `instances` labelled backends (`<prefix><index>`) in generation `shop#1`, its one route with `affinity`. */
async function shop(t: TestContext, affinity: RouteAffinity, opts: { instances?: number; concurrency?: number; prefix?: string; over?: Partial<AppConfig>; held?: Promise<void>; top?: Partial<BerthConfig> } = {}): Promise<Shop> {
  const n = opts.instances ?? 3;
  const addresses: UpstreamAddress[] = [];
  for (let i = 0; i < n; i++) addresses.push(await labelled(t, `${opts.prefix ?? 'i'}${i}`, opts.held));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', opts.concurrency ?? 8, addresses);
  const app = appConfig('shop', { routes: [{ ...route('/'), affinity }], processes: { web: processConfig('web', n, opts.concurrency ?? 8) }, ...opts.over });
  const config = berthConfig([app], { stateDir: await spillDir(t), ...opts.top });
  const { logger, lines } = captureLogger();
  const running = await startProxy(t, [entry(app, gen)], { config, logger });
  return { proxy: running.proxy, url: running.url, gen, app, config, lines };
}

/** The berth_affinity Set-Cookie of a reply (null: none). */
function affinityCookie(r: Reply): string | null {
  const all = r.headers['set-cookie'] ?? [];
  return all.find((c) => c.startsWith('berth_affinity=')) ?? null;
}

/** The `name=value` part of a Set-Cookie, as a client sends it back. */
function pair(setCookie: string): string {
  return setCookie.slice(0, setCookie.indexOf(';'));
}

/** The access-log `request` lines' affinity outcomes, in order. */
function outcomes(lines: Record<string, unknown>[]): unknown[] {
  return lines.filter((l) => l.msg === 'request').map((l) => l.affinity);
}

// ---- cookie ------------------------------------------------------------------------------------------

test('cookie: the first answer names its instance in a signed cookie; requests carrying it keep going there', async (t) => {
  const s = await shop(t, { by: 'cookie' });
  const first = await fetchRaw(s.url + '/');
  assert.equal(first.status, 200);
  const set = affinityCookie(first);
  assert.ok(set !== null, 'a cookie names the instance');
  assert.match(set, /^berth_affinity=[A-Za-z0-9_-]{22}; Path=\/; HttpOnly; SameSite=Lax$/);
  // The app's own cookie is kept beside it.
  assert.ok(first.headers['set-cookie']!.includes('app_session=1; Path=/'));
  for (let i = 0; i < 20; i++) {
    const again = await fetchRaw(s.url + `/x${i}`, { headers: { cookie: `app_session=1; ${pair(set)}` } });
    assert.equal(again.text, first.text);
    assert.equal(affinityCookie(again), null, 'a hit sets no cookie');
  }
  // Clients without the cookie are spread as before (least busy, rotating): all three instances serve.
  const spread = new Set<string>();
  for (let i = 0; i < 6; i++) spread.add((await fetchRaw(s.url + '/')).text);
  assert.equal(spread.size, 3);
  const logged = outcomes(s.lines);
  assert.equal(logged[0], 'miss');
  assert.deepEqual(logged.slice(1, 21), Array(20).fill('hit'));
  // A quoted value is the same cookie (RFC 6265 allows DQUOTEs around it).
  const value = pair(set).split('=')[1];
  assert.equal((await fetchRaw(s.url + '/', { headers: { cookie: `berth_affinity="${value}"` } })).text, first.text);
});

test('cookie: forged, badly signed, stale or foreign cookies never pick an instance outside the pool and never fail a request', async (t) => {
  const s = await shop(t, { by: 'cookie' }, { over: { hosts: ['shop.test'] } });
  // Another app, with its own instances: its cookie must not lead a shop request there.
  const otherGen = new TestGeneration({ id: 'other#1', app: 'other', releaseId: 'o1' });
  otherGen.addPool('web', 8, [await labelled(t, 'other0')]);
  const other = appConfig('other', { hosts: ['other.test'], routes: [{ ...route('/'), affinity: { by: 'cookie' } }] });
  // A cookie of a generation that is gone: made by shop#0, which the table then drops.
  const oldGen = new TestGeneration({ id: 'shop#0', app: 'shop', releaseId: 'r0' });
  oldGen.addPool('web', 8, [await labelled(t, 'gone0')]);
  s.proxy.setTable(new RoutingTable([entry(s.app, oldGen), entry(other, otherGen)]));
  const stale = pair(affinityCookie(await fetchRaw(s.url + '/', { headers: { host: 'shop.test' } }))!);
  const foreign = pair(affinityCookie(await fetchRaw(s.url + '/', { headers: { host: 'other.test' } }))!);
  s.proxy.setTable(new RoutingTable([entry(s.app, s.gen), entry(other, otherGen)]));
  s.lines.length = 0;

  const value = stale.split('=')[1];
  const flipped = value.slice(0, -1) + (value.endsWith('A') ? 'B' : 'A');
  const bad = [
    stale,
    foreign,
    `berth_affinity=${flipped}`,
    `berth_affinity=${'A'.repeat(22)}`,
    'berth_affinity=short',
    'berth_affinity=',
    `berth_affinity=${'x'.repeat(4000)}`,
    `xberth_affinity=${value}`,
    Array.from({ length: 700 }, (_, i) => `berth_affinity=${i}`).join('; '),
    `berth_affinity=../../etc/passwd; berth_affinity=%00%ff`,
  ];
  for (const cookie of bad) {
    const r = await fetchRaw(s.url + '/', { headers: { host: 'shop.test', cookie } });
    assert.equal(r.status, 200, cookie.slice(0, 60));
    assert.match(r.text, /^i[012]$/, `${cookie.slice(0, 60)}: only the pool's instances`);
    assert.ok(affinityCookie(r) !== null, 'a miss is pinned again with a fresh cookie');
  }
  assert.deepEqual(outcomes(s.lines), Array(bad.length).fill('miss'));

  // Bytes no client library sends (obs-text, a bare CR-less line): written on a socket by hand.
  const port = Number(new URL(s.url).port);
  const raw = await new Promise<string>((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let got = '';
    sock.on('data', (c) => (got += c.toString('latin1')));
    sock.on('end', () => resolve(got));
    sock.on('error', reject);
    sock.write(Buffer.concat([Buffer.from('GET / HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\ncookie: berth_affinity='), Buffer.from([0xc3, 0xa9, 0xff, 0x80, 0x22]), Buffer.from('\r\n\r\n')]));
  });
  assert.match(raw, /^HTTP\/1\.1 200 /);
  assert.match(raw, /\r\n\r\n2\r\ni[012]\r\n0\r\n\r\n$/, 'one of the pool\'s instances answered');
});

test('cookie: an instance that is not ready is left for another (a repin, with a new cookie); a cookie never outlives the pool', async (t) => {
  const s = await shop(t, { by: 'cookie' });
  const first = await fetchRaw(s.url + '/');
  const cookie = pair(affinityCookie(first)!);
  const named = s.gen.instances().find((u) => `i${u.index}` === first.text)!;
  named.state = 'unhealthy';
  const moved = await fetchRaw(s.url + '/', { headers: { cookie } });
  assert.equal(moved.status, 200);
  assert.notEqual(moved.text, first.text);
  const fresh = affinityCookie(moved);
  assert.ok(fresh !== null && pair(fresh) !== cookie, 'the answer names its own instance');
  assert.equal((await fetchRaw(s.url + '/', { headers: { cookie: pair(fresh) } })).text, moved.text);
  named.state = 'ready';
  assert.equal((await fetchRaw(s.url + '/', { headers: { cookie } })).text, first.text, 'the first instance is back: its cookie leads there again');
  assert.deepEqual(outcomes(s.lines), ['miss', 'repin', 'hit', 'hit']);
});

test('cookie: an affine request waits for its own instance\'s slot, within the queue timeout, while others go elsewhere', async (t) => {
  const held = gate();
  const s = await shop(t, { by: 'cookie' }, { concurrency: 1, held: held.promise, over: { queue: { max: 10, timeoutMs: 2_000 } } });
  const first = await fetchRaw(s.url + '/');
  const cookie = pair(affinityCookie(first)!);
  const mine = s.gen.instances().find((u) => `i${u.index}` === first.text)!;
  // Its one slot is taken by a long request.
  const long = fetchRaw(s.url + '/hold', { headers: { cookie } });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(mine.inFlight, 1);
  let answered = false;
  const waiting = fetchRaw(s.url + '/after', { headers: { cookie } }).then((r) => ((answered = true), r));
  // A request without the cookie is served at once by another instance.
  const other = await fetchRaw(s.url + '/');
  assert.notEqual(other.text, first.text);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(answered, false, 'it waits rather than going elsewhere');
  held.open();
  assert.equal((await long).text, first.text);
  const after = await waiting;
  assert.equal(after.text, first.text);
  assert.equal(mine.peak, 1, 'its concurrency held');
  assert.deepEqual(s.gen.instances().flatMap((u) => u.mistakes), []);
});

test('cookie: an affine request whose instance stays full gets the queue timeout, not another instance', async (t) => {
  const held = gate();
  t.after(() => held.open());
  const s = await shop(t, { by: 'cookie' }, { concurrency: 1, held: held.promise, over: { queue: { max: 10, timeoutMs: 400 } } });
  const first = await fetchRaw(s.url + '/');
  const cookie = pair(affinityCookie(first)!);
  void fetchRaw(s.url + '/hold', { headers: { cookie } }).catch(() => {});
  await new Promise((r) => setTimeout(r, 100));
  const started = Date.now();
  const r = await fetchRaw(s.url + '/next', { headers: { cookie } });
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-reason'], 'queue-timeout');
  assert.ok(Date.now() - started >= 350);
  const served = s.gen.instances().filter((u) => `i${u.index}` !== first.text).reduce((n, u) => n + u.served, 0);
  assert.equal(served, 0, 'no other instance was sent the request');
});

test('cookie: during a drain, a cookie naming an instance of the old generation reaches it; new sessions go to the new one; then it re-pins', async (t) => {
  const s = await shop(t, { by: 'cookie' }, { prefix: 'old' });
  const old = await fetchRaw(s.url + '/');
  const cookie = pair(affinityCookie(old)!);
  const gen2 = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2' });
  gen2.addPool('web', 8, [await labelled(t, 'new0'), await labelled(t, 'new1')]);
  const draining: AppEntry = { ...entry(s.app, gen2), draining: [s.gen] };
  s.proxy.setTable(new RoutingTable([draining]));
  const kept = await fetchRaw(s.url + '/', { headers: { cookie } });
  assert.equal(kept.text, old.text, 'the session finishes where it started');
  assert.equal(affinityCookie(kept), null);
  const fresh = await fetchRaw(s.url + '/');
  assert.match(fresh.text, /^new[01]$/, 'a new session goes to the new generation');
  // A request with a body is pinned when its body is whole: it stays with its draining instance too.
  const posted = await fetchRaw(s.url + '/', { method: 'POST', headers: { cookie, 'content-type': 'text/plain' }, body: 'x'.repeat(1000) });
  assert.equal(posted.text, old.text);
  // The drain is over: the cookie names nothing in the table any more.
  s.proxy.setTable(new RoutingTable([entry(s.app, gen2)]));
  const repinned = await fetchRaw(s.url + '/', { headers: { cookie } });
  assert.match(repinned.text, /^new[01]$/);
  assert.ok(affinityCookie(repinned) !== null);
  assert.deepEqual(outcomes(s.lines), ['miss', 'hit', 'miss', 'hit', 'miss']);
  // Requests of a cookie route mark the instance: a drain gives its clients a moment to come back.
  assert.ok(s.gen.instances().some((u) => u.lastAffineAt > 0));
});

test('cookie: a WebSocket upgrade carrying the cookie opens on its instance, and an answer to one without names it', async (t) => {
  const addresses: UpstreamAddress[] = [];
  for (let i = 0; i < 3; i++) {
    const server = createServer((_req, res) => res.end(`i${i}`));
    const wss = new WebSocketServer({ server });
    wss.on('connection', (ws) => ws.send(`ws${i}`));
    t.after(async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    addresses.push({ kind: 'tcp', host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  }
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 8, addresses);
  const app = appConfig('shop', { routes: [{ ...route('/'), affinity: { by: 'cookie' } }], processes: { web: processConfig('web', 3, 8) } });
  const { url } = await startProxy(t, [entry(app, gen)], { config: berthConfig([app], { stateDir: await spillDir(t) }) });
  const open = (headers: Record<string, string>) =>
    new Promise<{ first: string; setCookie: string[] }>((resolve, reject) => {
      const ws = new WebSocket(url.replace('http', 'ws') + '/socket', { headers });
      let setCookie: string[] = [];
      ws.on('upgrade', (res) => (setCookie = res.headers['set-cookie'] ?? []));
      ws.on('message', (data) => {
        resolve({ first: String(data), setCookie });
        ws.close();
      });
      ws.on('error', reject);
    });
  const page = await fetchRaw(url + '/');
  const cookie = pair(affinityCookie(page)!);
  for (let i = 0; i < 4; i++) {
    const opened = await open({ cookie });
    assert.equal(opened.first, page.text.replace('i', 'ws'));
    assert.deepEqual(opened.setCookie, []);
  }
  const bare = await open({});
  const named = bare.setCookie.find((c) => c.startsWith('berth_affinity='));
  assert.ok(named !== undefined, 'the 101 names the instance');
  assert.equal((await fetchRaw(url + '/', { headers: { cookie: pair(named) } })).text, bare.first.replace('ws', 'i'));
});

test('cookie attributes: the route\'s path, Secure over TLS; a path a header cannot carry gives Path=/', async (t) => {
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 8, [{ kind: 'tcp', host: '127.0.0.1', port: 1 }]);
  const pool = gen.pools.get('web')!;
  const affinity = new Affinity(await spillDir(t), silentLogger());
  const over = (path: string, tls: boolean) => affinity.cookie(gen, pool, inst, path, tls).replace(/^berth_affinity=[A-Za-z0-9_-]{22}/, '');
  assert.equal(over('/socket.io', false), '; Path=/socket.io; HttpOnly; SameSite=Lax');
  assert.equal(over('/socket.io', true), '; Path=/socket.io; HttpOnly; SameSite=Lax; Secure');
  assert.equal(over('/a;b', false), '; Path=/; HttpOnly; SameSite=Lax');
  assert.equal(over('/caf\u00e9', true), '; Path=/; HttpOnly; SameSite=Lax; Secure');
  // One instance, one value, whichever route names it.
  assert.equal(affinity.cookie(gen, pool, inst, '/x', false).split(';')[0], affinity.cookie(gen, pool, inst, '/y', true).split(';')[0]);
});

// ---- hash ---------------------------------------------------------------------------------------------

/** The instance label each key's request reached, by key. */
async function mapping(url: string, keys: string[], headers: (key: string) => Record<string, string>, path: (key: string) => string = () => '/'): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const key of keys) out.set(key, (await fetchRaw(url + path(key), { headers: headers(key) })).text);
  return out;
}

test('header: one key, one instance; an instance out moves only its keys, and they come back with it; adding one takes keys only for itself', async (t) => {
  const s = await shop(t, { by: 'header', name: 'x-user' });
  const keys = Array.from({ length: 60 }, (_, i) => `user-${i}`);
  const byKey = (k: string) => ({ 'X-User': k });
  const before = await mapping(s.url, keys, byKey);
  assert.deepEqual(await mapping(s.url, keys, byKey), before, 'stable');
  const counts = new Map<string, number>();
  for (const v of before.values()) counts.set(v, (counts.get(v) ?? 0) + 1);
  assert.equal(counts.size, 3, 'every instance takes keys');
  for (const n of counts.values()) assert.ok(n >= 8, `a fair share: ${[...counts.values()]}`);

  s.gen.instances()[1].state = 'backoff';
  s.lines.length = 0;
  const without = await mapping(s.url, keys, byKey);
  for (const k of keys) {
    if (before.get(k) === 'i1') assert.notEqual(without.get(k), 'i1');
    else assert.equal(without.get(k), before.get(k), `${k} stays where it was`);
  }
  const moved = keys.filter((k) => before.get(k) === 'i1').length;
  assert.equal(outcomes(s.lines).filter((o) => o === 'repin').length, moved);
  s.gen.instances()[1].state = 'ready';
  assert.deepEqual(await mapping(s.url, keys, byKey), before, 'back where they were');

  // A fourth instance: the keys that move all move to it.
  const pool = s.gen.pools.get('web')!;
  pool.setInstances([...pool.instances, new TestUpstream({ app: 'shop', index: 3, releaseId: 'r1', address: await labelled(t, 'i3'), concurrency: 8 })]);
  const grown = await mapping(s.url, keys, byKey);
  const changed = keys.filter((k) => grown.get(k) !== before.get(k));
  assert.ok(changed.length > 0 && changed.length < 30, `about a quarter move: ${changed.length}`);
  for (const k of changed) assert.equal(grown.get(k), 'i3');

  s.lines.length = 0;
  await fetchRaw(s.url + '/');
  assert.deepEqual(outcomes(s.lines), ['miss'], 'no header: placed by load');
});

test('query and ip: the parameter\'s raw value and the client IP after trusted_proxy_count are the keys', async (t) => {
  const q = await shop(t, { by: 'query', name: 'sid' });
  const keys = Array.from({ length: 20 }, (_, i) => `s${i}`);
  const a = await mapping(q.url, keys, () => ({}), (k) => `/?a=1&sid=${k}`);
  const b = await mapping(q.url, keys, () => ({}), (k) => `/poll?sid=${k}&b=2`);
  assert.deepEqual(a, b);
  assert.ok(new Set(a.values()).size > 1);
  assert.equal(queryValue('/x?sidx=1&sid=2', 'sid'), '2');
  assert.equal(queryValue('/x?sid&a=1', 'sid'), '');
  assert.equal(queryValue('/x', 'sid'), '');

  const ip = await shop(t, { by: 'ip' }, { top: { trustedProxyCount: 1 } });
  const clients = Array.from({ length: 20 }, (_, i) => `203.0.113.${i + 1}`);
  const viaProxy = (c: string) => ({ 'x-forwarded-for': c });
  const first = await mapping(ip.url, clients, viaProxy);
  assert.deepEqual(await mapping(ip.url, clients, viaProxy), first);
  assert.ok(new Set(first.values()).size > 1, 'clients spread over the instances');
  // The IP is what trusted_proxy_count makes of X-Forwarded-For: the hop a client adds itself is ignored.
  const spoofed = await mapping(ip.url, clients, (c) => ({ 'x-forwarded-for': `198.51.100.7, ${c}` }));
  assert.deepEqual(spoofed, first);
  assert.equal(hashString('a'), hashString('a'));
  assert.notEqual(hashString('a'), hashString('b'));
});

// ---- the key ---------------------------------------------------------------------------------------

test('the signing key: one 0600 file per state dir, shared by every proxy over it; a broken file still serves', async (t) => {
  const s = await shop(t, { by: 'cookie' });
  const file = join(s.config.stateDir, AFFINITY_KEY_FILE);
  const info = await stat(file);
  assert.equal(info.mode & 0o777, 0o600);
  assert.equal(info.size, 32);
  const cookie = pair(affinityCookie(await fetchRaw(s.url + '/'))!);
  const labelOf = async (url: string) => (await fetchRaw(url + '/', { headers: { cookie } })).text;
  const expected = await labelOf(s.url);

  // Another proxy over the same state dir (another thread, or the gateway after a restart) knows the cookie.
  const { logger, lines } = captureLogger();
  const twin = new Proxy({ config: s.config, logger });
  twin.setTable(new RoutingTable([entry(s.app, s.gen)]));
  t.after(() => twin.destroy());
  await twin.start();
  const twinUrl = `http://127.0.0.1:${(twin.addresses()[0] as { port: number }).port}`;
  assert.equal(await labelOf(twinUrl), expected);
  assert.deepEqual(outcomes(lines), ['hit']);
  assert.deepEqual(await readFile(file), await readFile(file), 'the file is not rewritten');

  // A key file that is not a key: the proxy says so and goes on serving (its cookies are its own then).
  const broken = await spillDir(t);
  await writeFile(join(broken, AFFINITY_KEY_FILE), 'short');
  await chmod(join(broken, AFFINITY_KEY_FILE), 0o600);
  const bad = captureLogger();
  const third = new Proxy({ config: { ...s.config, stateDir: broken }, logger: bad.logger });
  third.setTable(new RoutingTable([entry(s.app, s.gen)]));
  t.after(() => third.destroy());
  await third.start();
  const thirdUrl = `http://127.0.0.1:${(third.addresses()[0] as { port: number }).port}`;
  const r = await fetchRaw(thirdUrl + '/', { headers: { cookie } });
  assert.equal(r.status, 200);
  assert.ok(affinityCookie(r) !== null, 'the cookie of another key is a miss');
  assert.ok(bad.lines.some((l) => l.level === 50 && String(l.err).includes(AFFINITY_KEY_FILE)), 'the broken file is named');
  assert.equal(await readFile(join(broken, AFFINITY_KEY_FILE), 'utf8'), 'short', 'left for the operator to look at');
});
