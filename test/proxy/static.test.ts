import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RouteConfig } from '../../src/config/schema.ts';
import { RoutingTable } from '../../src/proxy/router.ts';
import { acceptsEncoding, contentType, IMMUTABLE_CACHE_CONTROL, parseRange, relativePath, staticChannel, type StaticFileEvent } from '../../src/proxy/static.ts';
import { appConfig, backend, entry, fetchRaw, gate, okHandler, processConfig, route, startProxy, TestGeneration, waitFor } from './fixtures.ts';

const hasMkfifo = spawnSync('mkfifo', ['--version']).status === 0;
const MTIME = new Date('2024-05-01T12:00:00Z');

function staticRoute(path: string, dir: string, over: Partial<RouteConfig> = {}): RouteConfig {
  return { path, to: null, static: dir, cache: null, cors: null, buffering: true, affinity: null, ...over };
}

/** A release dir with a `public` static dir, a secret beside it and one outside the release. */
async function release(t: TestContext, fill = 'A'): Promise<{ root: string; dir: string; outside: string }> {
  const base = await mkdtemp(join(tmpdir(), 'berth-static-'));
  t.after(() => rm(base, { recursive: true, force: true }));
  const dir = join(base, 'release');
  const pub = join(dir, 'public');
  await mkdir(join(pub, 'sub'), { recursive: true });
  await mkdir(join(pub, '.well-known'), { recursive: true });
  await mkdir(join(base, 'elsewhere'), { recursive: true });
  await writeFile(join(pub, 'app.css'), 'body{color:red}');
  await writeFile(join(pub, 'app.css.br'), 'BROTLI-BYTES');
  await writeFile(join(pub, 'app.css.gz'), 'GZIP-BYTES!');
  await writeFile(join(pub, 'app.js'), 'console.log(1)');
  await writeFile(join(pub, 'app.js.gz'), 'GZ-JS');
  await writeFile(join(pub, 'index.html'), '<h1>home</h1>');
  await writeFile(join(pub, 'sub', 'index.html'), '<h1>sub</h1>');
  await writeFile(join(pub, 'data.bin'), Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 256)));
  await writeFile(join(pub, 'empty.txt'), '');
  await writeFile(join(pub, 'big.bin'), Buffer.alloc(4 * 1024 * 1024, fill));
  await writeFile(join(pub, '.env'), 'SECRET=dotfile');
  await writeFile(join(pub, '.well-known', 'security.txt'), 'Contact: me');
  await writeFile(join(pub, 'weird name.txt'), 'spaced');
  await writeFile(join(dir, 'secret.txt'), 'SECRET=release-root');
  await writeFile(join(base, 'elsewhere', 'secret.txt'), 'SECRET=outside');
  await symlink('app.css', join(pub, 'link-in.css'));
  await symlink('../secret.txt', join(pub, 'link-out.txt'));
  await symlink(join(base, 'elsewhere'), join(pub, 'linkdir'));
  for (const f of ['app.css', 'app.css.br', 'app.css.gz', 'data.bin']) await utimes(join(pub, f), MTIME, MTIME);
  return { root: base, dir, outside: join(base, 'elsewhere') };
}

async function setup(t: TestContext, opts: { routes?: RouteConfig[]; fill?: string } = {}) {
  const rel = await release(t, opts.fill);
  const be = await backend(t, okHandler('app'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: rel.dir });
  gen.addPool('web', 4, [be.address]);
  const config = appConfig('shop', {
    routes: opts.routes ?? [route('/'), staticRoute('/static', 'public'), staticRoute('/assets', 'public', { cache: 'immutable', cors: '*' })],
  });
  const running = await startProxy(t, [entry(config, gen)]);
  return { ...running, rel, be, gen, config };
}

/** Sends one request with the exact target bytes (no client-side normalisation) and returns the status. */
function rawStatus(port: number, target: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, '127.0.0.1');
    let text = '';
    sock.on('data', (c) => (text += c.toString('latin1')));
    sock.on('end', () => resolve({ status: Number(text.slice(9, 12)), text }));
    sock.on('error', reject);
    // Not end(): a half-closed client makes node:http drop a response that is still being prepared.
    sock.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  });
}

test('serves a file with its type, validators and default Cache-Control; HEAD sends no body', async (t) => {
  const { url, be } = await setup(t);
  const r = await fetchRaw(`${url}/static/app.css`);
  assert.equal(r.status, 200);
  assert.equal(r.text, 'body{color:red}');
  assert.equal(r.headers['content-type'], 'text/css; charset=utf-8');
  assert.equal(r.headers['content-length'], '15');
  assert.equal(r.headers['last-modified'], MTIME.toUTCString());
  assert.match(String(r.headers.etag), /^"f-[0-9a-f]+"$/);
  assert.equal(r.headers['cache-control'], 'public, max-age=0, must-revalidate');
  assert.equal(r.headers['accept-ranges'], 'bytes');
  assert.equal(r.headers.vary, 'Accept-Encoding');
  assert.equal(r.headers['x-content-type-options'], 'nosniff');
  assert.ok(r.headers['x-request-id']);
  const head = await fetchRaw(`${url}/static/app.css`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-length'], '15');
  assert.equal(head.body.length, 0);
  assert.equal((await fetchRaw(`${url}/static/weird%20name.txt`)).text, 'spaced');
  assert.equal((await fetchRaw(`${url}/static/empty.txt`)).status, 200);
  assert.equal((await fetchRaw(`${url}/static/data.bin?v=3`)).body.length, 1000);
  assert.equal((await fetchRaw(`${url}/static/data.bin`)).headers['content-type'], 'application/octet-stream');
  assert.equal(be.requests.length, 0, 'static requests never reach the app');
});

test('conditional GET: If-None-Match and If-Modified-Since give 304; If-Match and If-Unmodified-Since give 412', async (t) => {
  const { url } = await setup(t);
  const first = await fetchRaw(`${url}/static/app.css`);
  const etag = String(first.headers.etag);
  const inm = await fetchRaw(`${url}/static/app.css`, { headers: { 'if-none-match': `"nope", ${etag}` } });
  assert.equal(inm.status, 304);
  assert.equal(inm.body.length, 0);
  assert.equal(inm.headers.etag, etag);
  assert.equal(inm.headers['cache-control'], 'public, max-age=0, must-revalidate');
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-none-match': `W/${etag}` } })).status, 304, 'weak comparison');
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-none-match': '*' } })).status, 304);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-none-match': '"other"' } })).status, 200);
  const later = new Date(MTIME.getTime() + 1000).toUTCString();
  const earlier = new Date(MTIME.getTime() - 1000).toUTCString();
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-modified-since': MTIME.toUTCString() } })).status, 304);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-modified-since': later } })).status, 304);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-modified-since': earlier } })).status, 200);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-modified-since': 'yesterday-ish' } })).status, 200, 'an unparsable date is ignored');
  // If-None-Match wins over If-Modified-Since (RFC 9110 § 13.2.2).
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-none-match': '"other"', 'if-modified-since': later } })).status, 200);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-match': '"other"' } })).status, 412);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-match': etag } })).status, 200);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-match': `W/${etag}` } })).status, 412, 'If-Match compares strongly');
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-unmodified-since': earlier } })).status, 412);
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'if-unmodified-since': later } })).status, 200);
});

test('Range: 206 for one span, 416 beyond the end, the whole file for several spans or a stale If-Range', async (t) => {
  const { url } = await setup(t);
  const whole = (await fetchRaw(`${url}/static/data.bin`)).body;
  const r = await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=10-19' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers['content-range'], 'bytes 10-19/1000');
  assert.equal(r.headers['content-length'], '10');
  assert.deepEqual(r.body, whole.subarray(10, 20));
  const suffix = await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=-5' } });
  assert.equal(suffix.headers['content-range'], 'bytes 995-999/1000');
  assert.deepEqual(suffix.body, whole.subarray(995));
  const open = await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=990-' } });
  assert.deepEqual(open.body, whole.subarray(990));
  const clamped = await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=998-5000' } });
  assert.equal(clamped.headers['content-range'], 'bytes 998-999/1000');
  const beyond = await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=1000-1001' } });
  assert.equal(beyond.status, 416);
  assert.equal(beyond.headers['content-range'], 'bytes */1000');
  assert.equal(beyond.body.length, 0);
  const several = await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=0-1,5-6' } });
  assert.equal(several.status, 200);
  assert.equal(several.body.length, 1000);
  assert.equal((await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'lines=1-2' } })).status, 200);
  const etag = String(r.headers.etag);
  assert.equal((await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=0-0', 'if-range': etag } })).status, 206);
  assert.equal((await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=0-0', 'if-range': '"old"' } })).status, 200);
  assert.equal((await fetchRaw(`${url}/static/data.bin`, { headers: { range: 'bytes=0-0', 'if-range': MTIME.toUTCString() } })).status, 206);
  assert.equal((await fetchRaw(`${url}/static/empty.txt`, { headers: { range: 'bytes=0-0' } })).status, 416);
});

test('precompressed siblings: br first, gzip when only it is accepted, identity otherwise; Vary always', async (t) => {
  const { url } = await setup(t);
  const br = await fetchRaw(`${url}/static/app.css`, { headers: { 'accept-encoding': 'gzip, deflate, br' } });
  assert.equal(br.text, 'BROTLI-BYTES');
  assert.equal(br.headers['content-encoding'], 'br');
  assert.equal(br.headers['content-type'], 'text/css; charset=utf-8');
  assert.equal(br.headers.vary, 'Accept-Encoding');
  const gz = await fetchRaw(`${url}/static/app.css`, { headers: { 'accept-encoding': 'gzip' } });
  assert.equal(gz.text, 'GZIP-BYTES!');
  assert.equal(gz.headers['content-encoding'], 'gzip');
  assert.notEqual(gz.headers.etag, br.headers.etag, 'each encoding has its own ETag');
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'accept-encoding': 'br;q=0, gzip;q=0.5' } })).text, 'GZIP-BYTES!');
  assert.equal((await fetchRaw(`${url}/static/app.css`, { headers: { 'accept-encoding': '*' } })).text, 'BROTLI-BYTES');
  const plain = await fetchRaw(`${url}/static/app.css`, { headers: { 'accept-encoding': 'identity' } });
  assert.equal(plain.text, 'body{color:red}');
  assert.equal(plain.headers['content-encoding'], undefined);
  assert.equal(plain.headers.vary, 'Accept-Encoding');
  // Only a .gz sibling: a br-only client gets the plain file.
  assert.equal((await fetchRaw(`${url}/static/app.js`, { headers: { 'accept-encoding': 'br' } })).text, 'console.log(1)');
  assert.equal((await fetchRaw(`${url}/static/app.js`, { headers: { 'accept-encoding': 'br, gzip' } })).text, 'GZ-JS');
  // Ranges apply to the encoded bytes.
  const part = await fetchRaw(`${url}/static/app.css`, { headers: { 'accept-encoding': 'br', range: 'bytes=0-5' } });
  assert.equal(part.status, 206);
  assert.equal(part.text, 'BROTLI');
  assert.equal(part.headers['content-range'], 'bytes 0-5/12');
});

test('cache: immutable and cors; an OPTIONS preflight is answered', async (t) => {
  const { url } = await setup(t);
  const r = await fetchRaw(`${url}/assets/app.css`);
  assert.equal(r.headers['cache-control'], IMMUTABLE_CACHE_CONTROL);
  assert.equal(r.headers['cache-control'], 'public, max-age=31536000, immutable');
  assert.equal(r.headers['access-control-allow-origin'], '*');
  assert.equal((await fetchRaw(`${url}/static/app.css`)).headers['access-control-allow-origin'], undefined);
  const pre = await fetchRaw(`${url}/assets/app.css`, { method: 'OPTIONS', headers: { origin: 'https://a.test', 'access-control-request-method': 'GET', 'access-control-request-headers': 'x-thing' } });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers['access-control-allow-origin'], '*');
  assert.equal(pre.headers['access-control-allow-headers'], 'x-thing');
  assert.match(String(pre.headers.allow), /GET, HEAD/);
});

test('index files: a directory path with a slash serves index.html, without one it redirects; no listings', async (t) => {
  const { url, port } = await setup(t);
  assert.equal((await fetchRaw(`${url}/static/`)).text, '<h1>home</h1>');
  assert.equal((await fetchRaw(`${url}/static/sub/`)).text, '<h1>sub</h1>');
  const redirect = await fetchRaw(`${url}/static/sub?x=1`);
  assert.equal(redirect.status, 301);
  assert.equal(redirect.headers.location, '/static/sub/?x=1');
  assert.equal((await fetchRaw(`${url}/static`)).headers.location, '/static/');
  assert.equal((await fetchRaw(`${url}/static/app.css/`)).status, 404, 'a file is not a directory');
  assert.equal((await rawStatus(port, '/static/linkdir/')).status, 404, 'a directory outside, even with an index');
});

test('a missing file is 404 (HTML or JSON); other methods are 405 with Allow', async (t) => {
  const { url, be } = await setup(t);
  const html = await fetchRaw(`${url}/static/nope.css`);
  assert.equal(html.status, 404);
  assert.equal(html.headers['x-berth-reason'], 'not-found');
  assert.match(html.text, /404 Not Found/);
  const json = await fetchRaw(`${url}/static/nope.css`, { headers: { accept: 'application/json' } });
  assert.deepEqual(JSON.parse(json.text), { error: { status: 404, reason: 'not-found' } });
  const post = await fetchRaw(`${url}/static/app.css`, { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, 'GET, HEAD, OPTIONS');
  assert.equal(be.requests.length, 0);
});

test('traversal: encoded dots and slashes, NUL, dot-files and symlinks leaving the dir are 404, and nothing outside is opened', async (t) => {
  const { port, url, rel } = await setup(t);
  const opened: string[] = [];
  const onOpen = (m: unknown) => opened.push((m as StaticFileEvent).file);
  subscribe(staticChannel.name, onOpen);
  t.after(() => unsubscribe(staticChannel.name, onOpen));
  const attempts = [
    '/static/../secret.txt',
    '/static/%2e%2e/secret.txt',
    '/static/%2E%2E/secret.txt',
    '/static/.%2e/secret.txt',
    '/static/%2e./secret.txt',
    '/static/..%2fsecret.txt',
    '/static/%2e%2e%2fsecret.txt',
    '/static/%2e%2e%5csecret.txt',
    '/static/..%5csecret.txt',
    '/static/%252e%252e/secret.txt',
    '/static/%00/../secret.txt',
    '/static/app.css%00.txt',
    '/static/%c0%ae%c0%ae/secret.txt',
    '/static/./../secret.txt',
    '/static//../secret.txt',
    '/static/sub/../../secret.txt',
    '/static/%2e%2e/%2e%2e/elsewhere/secret.txt',
    '/static/link-out.txt',
    '/static/linkdir/secret.txt',
    '/static/.env',
    '/static/%2eenv',
    '/static/sub/%2e%2e%2f%2e%2e%2fsecret.txt',
  ];
  for (const target of attempts) {
    const r = await rawStatus(port, target);
    assert.equal(r.status, 404, `${target} -> ${r.status}`);
    assert.ok(!r.text.includes('SECRET'), `${target} leaked a file`);
  }
  // Allowed neighbours still work: a symlink inside, and .well-known.
  assert.equal((await fetchRaw(`${url}/static/link-in.css`)).text, 'body{color:red}');
  assert.equal((await fetchRaw(`${url}/static/.well-known/security.txt`)).text, 'Contact: me');
  assert.ok(opened.length >= 2);
  const inside = join(rel.dir, 'public');
  for (const file of opened) assert.ok(file.startsWith(inside + '/'), `opened ${file}`);
});

test('only regular files are opened: a FIFO in the static dir is 404 at once', { skip: hasMkfifo ? false : 'mkfifo is not installed' }, async (t) => {
  const { url, rel } = await setup(t);
  assert.equal(spawnSync('mkfifo', [join(rel.dir, 'public', 'pipe')]).status, 0);
  assert.equal((await fetchRaw(`${url}/static/pipe`)).status, 404);
});

test('static requests take no admission slot: they are served while the pool is full', async (t) => {
  const rel = await release(t);
  const hold = gate();
  const be = await backend(t, (req, res) => void hold.promise.then(() => res.end('slow')));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: rel.dir });
  gen.addPool('web', 1, [be.address]);
  const config = appConfig('shop', { processes: { web: processConfig('web', 1, 1) }, queue: { max: 0, timeoutMs: 1000 }, routes: [route('/'), staticRoute('/static', 'public')] });
  const { url, proxy } = await startProxy(t, [entry(config, gen)]);
  const slow = fetchRaw(`${url}/slow`);
  await waitFor(() => be.requests.length === 1, 'the slow request at the app');
  const full = await fetchRaw(`${url}/other`);
  assert.equal(full.status, 503);
  assert.equal(full.headers['x-berth-reason'], 'queue-full');
  const file = await fetchRaw(`${url}/static/app.css`);
  assert.equal(file.status, 200);
  assert.equal(gen.inFlight, 1);
  assert.equal(proxy.inFlight, 1);
  hold.open();
  assert.equal((await slow).text, 'slow');
});

test('pinned: a download that began on one release finishes from it after the switch; new requests get the new one', async (t) => {
  const { url, proxy, config, gen } = await setup(t, { fill: 'A' });
  const rel2 = await release(t, 'B');
  const gen2 = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2', releaseDir: rel2.dir });
  gen2.addPool('web', 4, gen.instances().map((i) => i.address));
  const body = await new Promise<Buffer>((resolve, reject) => {
    const req = httpRequest(`${url}/static/big.bin`, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.pause();
      // The table swaps while the response is under way; the client then reads the rest.
      proxy.setTable(new RoutingTable([entry(config, gen2)]));
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve(Buffer.concat(chunks)));
      res.on('error', reject);
      setTimeout(() => res.resume(), 50);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(body.length, 4 * 1024 * 1024);
  assert.ok(body.every((b) => b === 0x41), 'every byte from release 1');
  const after = await fetchRaw(`${url}/static/big.bin`, { headers: { range: 'bytes=0-3' } });
  assert.equal(after.text, 'BBBB');
});

test('clients that leave before or during a download leave nothing in flight', async (t) => {
  const { port, proxy } = await setup(t);
  const gone = [];
  for (let i = 0; i < 20; i++) {
    gone.push(
      new Promise<void>((resolve) => {
        const sock = connect(port, '127.0.0.1');
        sock.on('error', () => {});
        sock.write(`GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n`);
        // Half of them leave at once, the others after the first bytes of the body.
        if (i % 2 === 0) sock.destroy();
        else sock.once('data', () => sock.destroy());
        sock.once('close', () => resolve());
      }),
    );
  }
  await Promise.all(gone);
  await waitFor(() => proxy.inFlight === 0, 'every static request to end');
});

test('503 while the app has no generation; in maintenance static routes are still served', async (t) => {
  const rel = await release(t);
  const config = appConfig('shop', { routes: [route('/'), staticRoute('/static', 'public')] });
  const { url, proxy } = await startProxy(t, [entry(config, null)]);
  const none = await fetchRaw(`${url}/static/app.css`);
  assert.equal(none.status, 503);
  assert.equal(none.headers['x-berth-reason'], 'no-active-generation');
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: rel.dir });
  gen.addPool('web', 4, []);
  proxy.setTable(new RoutingTable([entry(config, gen, { mode: 'maintenance', message: 'back soon' })]));
  const css = await fetchRaw(`${url}/static/app.css`);
  assert.equal(css.status, 200);
  assert.equal(css.headers['x-berth-mode'], 'maintenance');
  assert.equal((await fetchRaw(`${url}/`)).status, 503);
});

test('relativePath refuses anything that is not a plain name below the prefix', () => {
  assert.deepEqual(relativePath('/static/a/b.css?x', '/static'), { path: 'a/b.css', dir: false });
  assert.deepEqual(relativePath('/static/a/', '/static'), { path: 'a', dir: true });
  assert.deepEqual(relativePath('/static', '/static'), { path: '', dir: false });
  assert.deepEqual(relativePath('/', '/'), { path: '', dir: true });
  assert.deepEqual(relativePath('/a%20b', '/'), { path: 'a b', dir: false });
  assert.deepEqual(relativePath('/.well-known/x', '/'), { path: '.well-known/x', dir: false });
  for (const bad of ['/..', '/%2e%2e/x', '/a/./b', '/a%2fb', '/a%5Cb', '/a\\b', '/%00', '/%zz', '/.git/config', '/.well-known']) {
    assert.equal(relativePath(bad, '/'), null, bad);
  }
});

test('parseRange, acceptsEncoding and contentType', () => {
  assert.deepEqual(parseRange('bytes=0-0', 10), { start: 0, end: 0 });
  assert.deepEqual(parseRange('bytes=5-', 10), { start: 5, end: 9 });
  assert.deepEqual(parseRange('bytes=-3', 10), { start: 7, end: 9 });
  assert.deepEqual(parseRange('bytes=-30', 10), { start: 0, end: 9 });
  assert.deepEqual(parseRange(' bytes = 2 - 4 ', 10), { start: 2, end: 4 });
  assert.equal(parseRange('bytes=10-', 10), 'unsatisfiable');
  assert.equal(parseRange('bytes=-0', 10), 'unsatisfiable');
  assert.equal(parseRange('bytes=5-2', 10), null);
  assert.equal(parseRange('bytes=-', 10), null);
  assert.equal(parseRange('bytes=1-2,4-5', 10), null);
  assert.equal(parseRange('items=1-2', 10), null);
  assert.equal(acceptsEncoding('gzip, br;q=0.1', 'br'), true);
  assert.equal(acceptsEncoding('gzip, br;q=0', 'br'), false);
  assert.equal(acceptsEncoding('*;q=0.5', 'gzip'), true);
  assert.equal(acceptsEncoding('*, gzip;q=0', 'gzip'), false);
  assert.equal(acceptsEncoding('identity', 'gzip'), false);
  assert.equal(acceptsEncoding(['gzip', 'br'], 'br'), true);
  assert.equal(contentType('a/b/site.WEBMANIFEST'), 'application/manifest+json');
  assert.equal(contentType('x.svg'), 'image/svg+xml');
  assert.equal(contentType('x.woff2'), 'font/woff2');
  assert.equal(contentType('Makefile'), 'application/octet-stream');
});
