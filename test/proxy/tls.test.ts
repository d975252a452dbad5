/**
 * HTTPS at the front door, through the Proxy class with real TLS handshakes: certificates by SNI, h2 and
 * http/1.1 by ALPN on one listener, X-Forwarded-Proto, HSTS, the redirects, the modes, static files,
 * WebSockets over HTTP/1.1 on the TLS port, an h2 stream reset freeing its admission slot, and `nghttp`
 * (Debian's nghttp2-client) as a second, independent h2 client.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { handshakeFailureChannel } from '../../src/tls/handshake-failure.ts';
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect as h2connect, constants as h2constants, type ClientHttp2Session, type IncomingHttpHeaders as H2Headers } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import WebSocket, { WebSocketServer } from 'ws';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { silentLogger } from '../../src/lib/logger.ts';
import { Proxy } from '../../src/proxy/server.ts';
import { RoutingTable, type AppEntry } from '../../src/proxy/router.ts';
import { CertificateStore } from '../../src/tls/certificate-store.ts';
import type { AppConfig, ListenAddress, RouteConfig } from '../../src/config/schema.ts';
import { createCa, issueCertificate, type TestCa } from '../helpers/certificates.ts';
import { appConfig, backend, berthConfig, captureLogger, entry, fetchRaw, processConfig, route, TestGeneration, waitFor, type Backend } from './fixtures.ts';

const run = promisify(execFile);

interface Front {
  proxy: Proxy;
  ca: TestCa;
  /** The TLS port and the cleartext one. */
  tlsPort: number;
  httpPort: number;
  /** Fingerprints of the certificates served, by name. */
  fingerprints: Record<string, string>;
}

const LISTEN: ListenAddress[] = [
  { kind: 'tcp', host: '127.0.0.1', port: 0, text: '127.0.0.1:0', tls: false },
  { kind: 'tcp', host: '127.0.0.1', port: 0, text: '127.0.0.1:0', tls: true },
];

/** A backend that echoes what it was asked, as JSON: the headers an app gets. */
function echo(label: string) {
  return (req: IncomingMessage, res: import('node:http').ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', connection: 'keep-alive', 'keep-alive': 'timeout=5' });
      res.end(JSON.stringify({ label, url: req.url, method: req.method, headers: req.headers, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks).toString() }));
    });
  };
}

/** A proxy with a cleartext and a TLS listener; certificates for shop.test and *.blog.test from a test CA. */
async function front(t: TestContext, apps: AppEntry[], logger = silentLogger()): Promise<Front> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-proxy-tls-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = await createCa(join(dir, 'ca'));
  const shop = await issueCertificate(ca, ['shop.test', 'www.shop.test', 'localhost']);
  const blog = await issueCertificate(ca, ['*.blog.test']);
  const certificates = new CertificateStore(
    {
      sources: [
        { from: 'apps.shop.tls', hosts: [], files: { certificate: shop.certificate, key: shop.key } },
        { from: 'apps.blog.tls', hosts: [], files: { certificate: blog.certificate, key: blog.key } },
      ],
      directory: null,
      defaultCertificate: null,
    },
    { logger: silentLogger(), watch: false },
  );
  await certificates.start();
  t.after(() => certificates.stop());
  const config = berthConfig(apps.map((a) => a.config), { listen: LISTEN, stateDir: dir });
  const proxy = new Proxy({ config, logger });
  proxy.setTable(new RoutingTable(apps));
  t.after(() => proxy.destroy());
  await proxy.start({ certificates, acme: null });
  const [plain, secure] = proxy.addresses();
  return {
    proxy,
    ca,
    httpPort: plain.kind === 'tcp' ? plain.port : 0,
    tlsPort: secure.kind === 'tcp' ? secure.port : 0,
    fingerprints: { 'shop.test': shop.fingerprint256, 'x.blog.test': blog.fingerprint256 },
  };
}

async function shopAndBlog(t: TestContext, shopOver: Partial<AppConfig> = {}, concurrency = 4): Promise<{ f: Front; shop: Backend; blog: Backend; shopGen: TestGeneration }> {
  const shop = await backend(t, echo('shop'));
  const blog = await backend(t, echo('blog'));
  const shopGen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: shopOver.name ?? '/nonexistent' });
  shopGen.addPool('web', concurrency, [shop.address]);
  const blogGen = new TestGeneration({ id: 'blog#1', app: 'blog', releaseId: 'b1' });
  blogGen.addPool('web', 4, [blog.address]);
  const f = await front(t, [
    entry(appConfig('shop', { hosts: ['shop.test', 'www.shop.test'], processes: { web: processConfig('web', 1, concurrency) }, ...shopOver }), shopGen),
    entry(appConfig('blog', { hosts: ['*.blog.test'] }), blogGen),
  ]);
  return { f, shop, blog, shopGen };
}

interface H2Reply {
  status: number;
  headers: H2Headers;
  body: Buffer;
  text: string;
}

function h2session(t: TestContext, f: Front, servername = 'shop.test'): ClientHttp2Session {
  const session = h2connect(`https://127.0.0.1:${f.tlsPort}`, { ca: f.ca.pem, servername });
  session.on('error', () => {});
  t.after(() => session.destroy());
  return session;
}

function h2get(session: ClientHttp2Session, headers: Record<string, string>, body?: string): Promise<H2Reply> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': body === undefined ? 'GET' : 'POST', ...headers }, { endStream: body === undefined });
    let responseHeaders: H2Headers = {};
    stream.on('response', (h) => (responseHeaders = h));
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      const b = Buffer.concat(chunks);
      resolve({ status: Number(responseHeaders[':status']), headers: responseHeaders, body: b, text: b.toString() });
    });
    stream.on('error', reject);
    if (body !== undefined) stream.end(body);
  });
}

/** An HTTPS/1.1 request (ALPN http/1.1 only) to the TLS port with `servername` as SNI and Host. */
function h1get(f: Front, host: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: import('node:http').IncomingHttpHeaders; text: string; fingerprint: string; protocol: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { host: '127.0.0.1', port: f.tlsPort, path, servername: host, headers: { host, ...headers }, ca: f.ca.pem, agent: false },
      (res) => {
        const socket = res.socket as import('node:tls').TLSSocket;
        const fingerprint = socket.getPeerCertificate().fingerprint256;
        const protocol = socket.alpnProtocol || '';
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString(), fingerprint, protocol }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

test('SNI picks each app certificate (a wildcard too) through the proxy; an unknown name is refused; TLS 1.1 is refused; each refusal is counted by reason', async (t) => {
  const { f } = await shopAndBlog(t);
  const failures: string[] = [];
  const onFailure = (m: unknown) => failures.push((m as { reason: string }).reason);
  subscribe(handshakeFailureChannel.name, onFailure);
  t.after(() => unsubscribe(handshakeFailureChannel.name, onFailure));
  const shop = await h1get(f, 'shop.test', '/');
  assert.equal(shop.status, 200);
  assert.equal(shop.fingerprint, f.fingerprints['shop.test']);
  assert.notEqual(shop.protocol, 'h2', 'node:https offers no ALPN: HTTP/1.1');
  const blog = await h1get(f, 'x.blog.test', '/');
  assert.equal(blog.fingerprint, f.fingerprints['x.blog.test']);
  assert.equal(JSON.parse(blog.text).label, 'blog');
  // No default certificate: a name nothing serves gets an alert, not some other site's certificate.
  await assert.rejects(h1get(f, 'other.test', '/'), /alert|handshake|ECONNRESET|socket/i);
  await assert.rejects(
    new Promise((resolve, reject) => {
      // OpenSSL speaks TLS 1.0/1.1 only at security level 0: so the client really offers it, and the server says no.
      const s = tlsConnect({ host: '127.0.0.1', port: f.tlsPort, servername: 'shop.test', ca: f.ca.pem, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }, () => resolve(s.getProtocol()));
      s.on('error', reject);
    }),
    /version|protocol|alert/i,
  );
  await waitFor(() => failures.length >= 2, 'both failures counted');
  assert.deepEqual(failures, ['unknown-name', 'protocol-version']);
});

test('h2: requests to two apps multiplexed over one connection; pseudo-headers never reach the app; X-Forwarded-Proto https; HSTS only over TLS', async (t) => {
  const { f, shop, blog } = await shopAndBlog(t, { hsts: { maxAgeS: 600, includeSubdomains: true, preload: false } });
  const session = h2session(t, f);
  await new Promise((r) => session.once('connect', r));
  assert.equal(session.alpnProtocol, 'h2');
  // *.blog.test is served by its own certificate; this connection's (shop.test) does not cover it, so
  // the request to blog goes on a connection of its own name, and both apps share one for shop's names.
  const [a, b, c] = await Promise.all([
    h2get(session, { ':path': '/one?x=1', ':authority': 'shop.test', cookie: 'a=1' }),
    h2get(session, { ':path': '/two', ':authority': 'www.shop.test', cookie: 'b=2' }),
    h2get(session, { ':path': '/post', ':authority': 'shop.test' }, 'hello body'),
  ]);
  for (const r of [a, b, c]) assert.equal(r.status, 200);
  const one = JSON.parse(a.text);
  assert.equal(one.url, '/one?x=1');
  assert.equal(one.headers.host, 'shop.test');
  assert.equal(one.headers['x-forwarded-proto'], 'https');
  assert.equal(one.headers['x-forwarded-host'], 'shop.test');
  assert.ok(!one.rawHeaders.some((h: string) => h.startsWith(':')), 'no pseudo-header reaches the app');
  assert.equal(JSON.parse(c.text).body, 'hello body', 'an h2 body without Content-Length is forwarded');
  assert.equal(a.headers['strict-transport-security'], 'max-age=600; includeSubDomains');
  assert.equal(a.headers.connection, undefined);
  assert.equal(shop.connections >= 1, true);

  // Two apps over one connection: a wildcard certificate that also names shop would be needed for
  // one certificate; instead, h2 connection coalescing is by certificate, so blog gets its own session,
  // and the same session multiplexes shop's two hosts. Both sessions run at once.
  const blogSession = h2session(t, f, 'x.blog.test');
  const [d, e] = await Promise.all([
    h2get(blogSession, { ':path': '/b', ':authority': 'x.blog.test' }),
    h2get(session, { ':path': '/s', ':authority': 'shop.test' }),
  ]);
  assert.equal(JSON.parse(d.text).label, 'blog');
  assert.equal(JSON.parse(e.text).label, 'shop');
  assert.equal(d.headers['strict-transport-security'], undefined, 'blog has no hsts');
  assert.equal(blog.requests.length, 1);

  // Over cleartext: no HSTS (RFC 6797 § 7.2), X-Forwarded-Proto http.
  const plain = await fetchRaw(`http://127.0.0.1:${f.httpPort}/p`, { headers: { host: 'shop.test' } });
  assert.equal(plain.status, 200);
  assert.equal(plain.headers['strict-transport-security'], undefined);
  assert.equal(JSON.parse(plain.text).headers['x-forwarded-proto'], 'http');
  // Over TLS with HTTP/1.1 too.
  const h1 = await h1get(f, 'shop.test', '/h1');
  assert.equal(JSON.parse(h1.text).headers['x-forwarded-proto'], 'https');
  assert.equal(h1.headers['strict-transport-security'], 'max-age=600; includeSubDomains');
});

test('h2: one connection carries requests to two apps when one certificate names both', async (t) => {
  // Coalescing (RFC 9113 § 9.1.1): a client reuses a connection for any name its certificate covers.
  const one = await backend(t, echo('one'));
  const two = await backend(t, echo('two'));
  const g1 = new TestGeneration({ id: 'one#1', app: 'one', releaseId: 'r1' });
  g1.addPool('web', 4, [one.address]);
  const g2 = new TestGeneration({ id: 'two#1', app: 'two', releaseId: 'r2' });
  g2.addPool('web', 4, [two.address]);
  // www.shop.test is in shop.test's certificate: two apps, one certificate.
  const f = await front(t, [entry(appConfig('one', { hosts: ['shop.test'] }), g1), entry(appConfig('two', { hosts: ['www.shop.test'] }), g2)]);
  const session = h2session(t, f);
  const replies = await Promise.all(
    Array.from({ length: 10 }, (_, i) => h2get(session, { ':path': `/${i}`, ':authority': i % 2 === 0 ? 'shop.test' : 'www.shop.test' })),
  );
  replies.forEach((r, i) => assert.equal(JSON.parse(r.text).label, i % 2 === 0 ? 'one' : 'two'));
  assert.equal(one.requests.length, 5);
  assert.equal(two.requests.length, 5);
});

test('https_redirect: 308 to https with path and query, except ACME challenges and the internal prefix; canonical_host: 308 keeping scheme and path', async (t) => {
  const { f } = await shopAndBlog(t, { httpsRedirect: true, canonicalHost: 'shop.test' });
  const http = `http://127.0.0.1:${f.httpPort}`;
  const r = await fetchRaw(`${http}/a/b?c=1&d=2`, { headers: { host: 'shop.test' } });
  assert.equal(r.status, 308);
  assert.equal(r.headers.location, `https://shop.test:${f.tlsPort}/a/b?c=1&d=2`);
  // Both at once: one redirect straight to the canonical https URL.
  const both = await fetchRaw(`${http}/x`, { method: 'POST', headers: { host: 'www.shop.test:8080' }, body: 'keep' });
  assert.equal(both.status, 308);
  assert.equal(both.headers.location, `https://shop.test:${f.tlsPort}/x`);
  // Exceptions: an ACME challenge path reaches the app; the internal prefix is the gateway's.
  const acme = await fetchRaw(`${http}/.well-known/acme-challenge/abc`, { headers: { host: 'shop.test' } });
  assert.equal(acme.status, 200);
  assert.equal(JSON.parse(acme.text).url, '/.well-known/acme-challenge/abc');
  const health = await fetchRaw(`${http}/_berth/health`, { headers: { host: 'shop.test' } });
  assert.notEqual(health.status, 308);
  // Over TLS: no https redirect, but the canonical host one, keeping https and the port.
  const tlsWww = await h1get(f, 'www.shop.test', '/y?z');
  assert.equal(tlsWww.status, 308);
  assert.equal(tlsWww.headers.location, 'https://shop.test/y?z');
  const tlsCanonical = await h1get(f, 'shop.test', '/y');
  assert.equal(tlsCanonical.status, 200);
  const session = h2session(t, f);
  const h2www = await h2get(session, { ':path': '/h2?q', ':authority': `www.shop.test:${f.tlsPort}` });
  assert.equal(h2www.status, 308);
  assert.equal(h2www.headers.location, `https://shop.test:${f.tlsPort}/h2?q`);
  // An upgrade refused with a redirect gets the 308, not a tunnel.
  const ws = new WebSocket(`ws://127.0.0.1:${f.httpPort}/ws?a=1`, { headers: { host: 'shop.test' }, followRedirects: false });
  const refused = await new Promise<IncomingMessage>((resolve, reject) => {
    ws.once('unexpected-response', (_req, res) => resolve(res));
    ws.once('open', () => reject(new Error('the upgrade became a tunnel')));
    ws.once('error', reject);
  });
  assert.equal(refused.statusCode, 308);
  assert.equal(refused.headers.location, `https://shop.test:${f.tlsPort}/ws?a=1`);
  ws.terminate();
});

test('canonical_host over cleartext keeps http and the port', async (t) => {
  const { f } = await shopAndBlog(t, { canonicalHost: 'shop.test' });
  const r = await fetchRaw(`http://127.0.0.1:${f.httpPort}/a?b`, { headers: { host: 'WWW.shop.test:8080' } });
  assert.equal(r.status, 308);
  assert.equal(r.headers.location, 'http://shop.test:8080/a?b');
  assert.equal((await fetchRaw(`http://127.0.0.1:${f.httpPort}/a`, { headers: { host: 'shop.test' } })).status, 200);
});

test('h2: maintenance mode answers 503 with its page; read-only passes GET with the header', async (t) => {
  const shop = await backend(t, echo('shop'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [shop.address]);
  const f = await front(t, [entry(appConfig('shop', { hosts: ['shop.test'] }), gen, { mode: 'maintenance', message: 'back soon', retryAfter: 60 })]);
  const session = h2session(t, f);
  const r = await h2get(session, { ':path': '/', ':authority': 'shop.test', accept: 'application/json' });
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-mode'], 'maintenance');
  assert.ok(r.headers['retry-after']);
  assert.match(r.text, /back soon/);
  assert.equal(shop.requests.length, 0);
});

test('h2: static files with Range and ETag', async (t) => {
  const rel = await mkdtemp(join(tmpdir(), 'berth-tls-static-'));
  t.after(() => rm(rel, { recursive: true, force: true }));
  await mkdir(join(rel, 'public'));
  await writeFile(join(rel, 'public', 'data.txt'), '0123456789abcdef');
  const shop = await backend(t, echo('shop'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1', releaseDir: rel });
  gen.addPool('web', 4, [shop.address]);
  const staticRoute: RouteConfig = { path: '/static', to: null, static: 'public', cache: null, cors: null, buffering: true, affinity: null };
  const f = await front(t, [entry(appConfig('shop', { hosts: ['shop.test'], routes: [route('/'), staticRoute] }), gen)]);
  const session = h2session(t, f);
  const full = await h2get(session, { ':path': '/static/data.txt', ':authority': 'shop.test' });
  assert.equal(full.status, 200);
  assert.equal(full.text, '0123456789abcdef');
  const etag = String(full.headers.etag);
  assert.match(etag, /^"/);
  const part = await h2get(session, { ':path': '/static/data.txt', ':authority': 'shop.test', range: 'bytes=2-5' });
  assert.equal(part.status, 206);
  assert.equal(part.text, '2345');
  assert.equal(part.headers['content-range'], 'bytes 2-5/16');
  const notModified = await h2get(session, { ':path': '/static/data.txt', ':authority': 'shop.test', 'if-none-match': etag });
  assert.equal(notModified.status, 304);
  assert.equal(notModified.body.length, 0);
  assert.equal(shop.requests.length, 0);
});

test('a WebSocket on the TLS port over HTTP/1.1, with X-Forwarded-Proto https', async (t) => {
  const server = createServer((_req, res) => res.end('plain'));
  const wss = new WebSocketServer({ noServer: true });
  const upgrades: IncomingMessage[] = [];
  const sockets = new Set<Socket>();
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    upgrades.push(req);
    sockets.add(socket);
    wss.handleUpgrade(req, socket, head, (ws) => ws.on('message', (d) => ws.send(`echo:${d}`)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    for (const s of sockets) s.destroy();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [{ kind: 'tcp', host: '127.0.0.1', port: (server.address() as AddressInfo).port }]);
  const f = await front(t, [entry(appConfig('shop', { hosts: ['shop.test'] }), gen)]);
  const ws = new WebSocket(`wss://127.0.0.1:${f.tlsPort}/chat`, { servername: 'shop.test', headers: { host: 'shop.test' }, ca: f.ca.pem } as WebSocket.ClientOptions);
  t.after(() => ws.terminate());
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.send('hi');
  const msg = await new Promise<string>((r) => ws.once('message', (d) => r(String(d))));
  assert.equal(msg, 'echo:hi');
  assert.equal(upgrades[0].headers['x-forwarded-proto'], 'https');
  assert.equal(f.proxy.upgrades, 1);
});

test('h2: a client that resets its stream mid-request frees its admission slot and cancels the upstream request', async (t) => {
  let held = 0;
  let aborted = 0;
  const slow = await backend(t, (req, res) => {
    if (req.url === '/hang') {
      held++;
      res.on('close', () => {
        if (!res.writableFinished) aborted++;
      });
      return;
    }
    res.end('fast');
  });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [slow.address]);
  const f = await front(t, [entry(appConfig('shop', { hosts: ['shop.test'], processes: { web: processConfig('web', 1, 1) } }), gen)]);
  const session = h2session(t, f);
  const stream = session.request({ ':path': '/hang', ':authority': 'shop.test' });
  stream.on('error', () => {});
  await waitFor(() => held === 1, 'the request to reach the app');
  assert.equal(f.proxy.inFlight, 1);
  // A second request queues behind the only slot.
  const next = h2get(session, { ':path': '/after', ':authority': 'shop.test' });
  await waitFor(() => f.proxy.queueDepth('shop') === 1, 'the second request to queue');
  stream.close(h2constants.NGHTTP2_CANCEL);
  const r = await next;
  assert.equal(r.status, 200);
  assert.equal(r.text, 'fast');
  await waitFor(() => aborted === 1, 'the upstream request to be cancelled');
  await waitFor(() => f.proxy.inFlight === 0, 'in-flight to reach zero');
  assert.equal(gen.instances()[0].inFlight, 0);
  assert.deepEqual(gen.instances()[0].mistakes, []);
});

// nghttp (Debian's nghttp2-client) as a second, independent h2 client. CI installs it (.ci/run).
const NGHTTP = '/usr/bin/nghttp';
const nghttpMissing = existsSync(NGHTTP) ? null : `${NGHTTP} not installed (apt-get install nghttp2-client)`;
if (nghttpMissing !== null && process.env.CI === 'true') throw new Error(`CI=true but ${nghttpMissing}`);

test('nghttp -nv negotiates h2 and gets the right bodies', { skip: nghttpMissing ?? false }, async (t) => {
  const { f } = await shopAndBlog(t);
  // nghttp has no CA option and does not verify the certificate; SNI is the URL's host, so the URL
  // names localhost (in shop's certificate here) and `:authority` routes the request to shop.
  const nghttp = (args: string[]) =>
    run(NGHTTP, [...args, '-H', ':authority: shop.test'], { timeout: 20_000 }).catch((e: { stdout?: string; stderr?: string; message: string }) => {
      throw new Error(`nghttp failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
    });
  // -nv: the frames, the body discarded.
  const verbose = (await nghttp(['-nv', `https://localhost:${f.tlsPort}/hello?x=1`])).stdout;
  assert.match(verbose, /negotiated protocol: h2/i);
  assert.match(verbose, /recv \(stream_id=\d+\) :status: 200/);
  assert.match(verbose, /recv DATA frame .*\n\s+; END_STREAM/);
  // Without -n, the bodies, fetched as two streams of one connection.
  const bodies = (await nghttp([`https://localhost:${f.tlsPort}/a?x=1`, `https://localhost:${f.tlsPort}/b`])).stdout;
  const urls = [...bodies.matchAll(/"url":"([^"]*)"/g)].map((m) => m[1]).sort();
  assert.deepEqual(urls, ['/a?x=1', '/b']);
  assert.match(bodies, /"x-forwarded-proto":"https"/);
  assert.match(bodies, /"label":"shop"/);
});

test('a graceful stop lets an h2 request under way finish, sends GOAWAY, and closes TLS connections', async (t) => {
  let release = () => {};
  const held = new Promise<void>((r) => (release = r));
  const be = await backend(t, (req, res) => {
    if (req.url === '/slow') void held.then(() => res.end('slow done'));
    else res.end('ok');
  });
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const f = await front(t, [entry(appConfig('shop', { hosts: ['shop.test'] }), gen)]);
  const session = h2session(t, f);
  const goaway = new Promise((r) => session.once('goaway', r));
  const slow = h2get(session, { ':path': '/slow', ':authority': 'shop.test' });
  // An idle HTTPS/1.1 keep-alive connection too.
  assert.equal((await h1get(f, 'shop.test', '/')).status, 200);
  await waitFor(() => f.proxy.inFlight === 1, 'the slow request to be under way');
  const stopped = f.proxy.stop(10_000);
  await goaway;
  release();
  const r = await slow;
  assert.equal(r.status, 200);
  assert.equal(r.text, 'slow done');
  const began = Date.now();
  await stopped;
  assert.ok(Date.now() - began < 5_000, 'the stop did not wait for its deadline');
  assert.equal(f.proxy.state, 'stopped');
});

test('h2 parity: rate limits, the health lane, read-only mode, Expect: 100-continue, access logs', async (t) => {
  const shop = await backend(t, echo('shop'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [shop.address]);
  const { logger, lines } = captureLogger();
  const limited = appConfig('shop', { hosts: ['shop.test'], rateLimit: { count: 1, perMs: 60_000, burst: 2, paths: ['/limited'] } });
  const f = await front(t, [entry(limited, gen, { mode: 'read-only' })], logger);
  const session = h2session(t, f);
  const statuses: number[] = [];
  for (let i = 0; i < 3; i++) statuses.push((await h2get(session, { ':path': '/limited', ':authority': 'shop.test' })).status);
  assert.deepEqual(statuses, [200, 200, 429]);
  const health = await h2get(session, { ':path': '/_berth/health', ':authority': 'shop.test' });
  assert.equal(health.status, 200);
  const ro = await h2get(session, { ':path': '/write', ':authority': 'shop.test' }, 'x');
  assert.equal(ro.status, 503);
  assert.equal(ro.headers['x-berth-mode'], 'read-only');
  const get = await h2get(session, { ':path': '/read', ':authority': 'shop.test' });
  assert.equal(get.headers['x-berth-mode'], 'read-only');
  assert.equal(JSON.parse(get.text).headers['x-berth-mode'], 'read-only');
  // Expect: 100-continue over h2: the proxy asks for the body once it wants it (OPTIONS: read-only lets it in).
  const continued = await new Promise<H2Reply>((resolve, reject) => {
    const stream = session.request({ ':method': 'OPTIONS', ':path': '/cont', ':authority': 'shop.test', expect: '100-continue' }, { endStream: false });
    let headers: H2Headers = {};
    stream.on('continue', () => stream.end('sent after 100'));
    stream.on('response', (h) => (headers = h));
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve({ status: Number(headers[':status']), headers, body: Buffer.concat(chunks), text: Buffer.concat(chunks).toString() }));
    stream.on('error', reject);
  });
  assert.equal(continued.status, 200);
  assert.equal(JSON.parse(continued.text).body, 'sent after 100');
  await waitFor(() => lines.filter((l) => l.msg === 'request').length >= 6, 'access log lines');
  const logged = lines.filter((l) => l.msg === 'request').map((l) => `${l.status} ${l.path}`);
  for (const want of ['200 /limited', '429 /limited', '503 /write', '200 /read', '200 /cont']) assert.ok(logged.includes(want), `${want} in ${logged.join(', ')}`);
});

test('h2: an :authority and a Host that differ are a 400; a Host alone routes', async (t) => {
  const { f, shop } = await shopAndBlog(t);
  const session = h2session(t, f);
  const both = await h2get(session, { ':path': '/', ':authority': 'shop.test', host: 'x.blog.test' });
  assert.equal(both.status, 400);
  const hostOnly = await h2get(session, { ':path': '/h', host: 'www.shop.test' });
  assert.equal(hostOnly.status, 200);
  assert.equal(JSON.parse(hostOnly.text).headers.host, 'www.shop.test');
  assert.equal(shop.requests.length, 1);
});

test('a TLS listener without certificates is a listen error naming the address, and nothing stays bound', async () => {
  const proxy = new Proxy({ config: berthConfig([], { listen: LISTEN }), logger: silentLogger() });
  await assert.rejects(proxy.start(), (err: Error & { code?: string }) => err.code === 'BERTH_E_LISTEN' && /127\.0\.0\.1:0: a TLS listener needs certificates/.test(err.message));
  assert.equal(proxy.state, 'stopped');
});

test('h2: a deploy (table swap) under h2 load fails no stream; a large h2 body is buffered and forwarded whole', async (t) => {
  const one = await backend(t, echo('r1'));
  const two = await backend(t, echo('r2'));
  const g1 = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  g1.addPool('web', 4, [one.address]);
  const g2 = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2' });
  g2.addPool('web', 4, [two.address]);
  const config = appConfig('shop', { hosts: ['shop.test'], processes: { web: processConfig('web', 1, 4) }, queue: { max: 1000, timeoutMs: 10_000 } });
  const f = await front(t, [entry(config, g1)]);
  const sessions = [h2session(t, f), h2session(t, f), h2session(t, f)];
  let swapped = false;
  const statuses: number[] = [];
  const labels = new Set<string>();
  await Promise.all(
    sessions.map(async (session, s) => {
      for (let i = 0; i < 60; i++) {
        if (s === 0 && i === 20 && !swapped) {
          swapped = true;
          f.proxy.setTable(new RoutingTable([entry(config, g2)]));
        }
        const r = await h2get(session, { ':path': `/${s}/${i}`, ':authority': 'shop.test' });
        statuses.push(r.status);
        labels.add(JSON.parse(r.text).label);
      }
    }),
  );
  assert.equal(statuses.length, 180);
  assert.deepEqual(statuses.filter((x) => x !== 200), []);
  assert.deepEqual([...labels].sort(), ['r1', 'r2']);

  const big = 'x'.repeat(300 * 1024);
  const r = await h2get(sessions[0], { ':path': '/upload', ':authority': 'shop.test' }, big);
  assert.equal(r.status, 200);
  const got = JSON.parse(r.text);
  assert.equal(got.body.length, big.length);
  assert.equal(got.headers['content-length'], String(big.length), 'a body sent without a length reaches the app with one');
});
