/**
 * Issue #12 acceptance, end to end over real handshakes: `berth start` as a child process with a
 * cleartext and a TLS listener, real app processes, certificates made by openssl for a throwaway CA,
 * and real clients (node:http2, HTTP/1.1 over node:https, node:tls, and Debian's `nghttp` as a second,
 * independent h2 client). Certificates by SNI from every file source (an app's files, a `*.` wildcard,
 * the certificate directory, the default), h2 multiplexing, X-Forwarded-Proto, https_redirect, HSTS,
 * old TLS versions refused; then files swapped on disk, config reloads and SIGHUP.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createCa, issueCertificate, type TestCa, type TestCertificate } from '../helpers/certificates.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';
import { h1Tls, h2Request, h2Session, HttpsAgent, sameFingerprint, servedFingerprint, SharedCleanup } from '../helpers/https.ts';
import { checkServerIdentity } from 'node:tls';
import { connectTls, refusedTls } from '../tls/tls-client.ts';
import { freePort } from '../tls/pebble.ts';
import { parseMetrics } from '../helpers/prometheus.ts';

const NGHTTP = '/usr/bin/nghttp';
const hasNghttp = spawnSync(NGHTTP, ['--version']).status === 0;
// CI installs nghttp2-client (.ci/run): there a missing nghttp is a failure, not a skip.
if (!hasNghttp && process.env.CI === 'true') throw new Error(`CI=true but ${NGHTTP} is missing: apt-get install -y nghttp2-client`);

function web(instances = 1) {
  return { web: { command: FIXTURE_WEB_COMMAND, instances, concurrency: 16 } };
}

const HEALTH = { path: '/up', interval: '250ms' };

// ---- one gateway, four certificate sources -------------------------------------------------------------

interface FrontDoor {
  dir: string;
  ca: TestCa;
  gw: ChildGateway;
  httpPort: number;
  tlsPort: number;
  /** shop.test + api.test, the shop app's own files. */
  shop: TestCertificate;
  /** *.blog.test, the blog app's own files. */
  wildcard: TestCertificate;
  /** api.test alone, from tls.directory. */
  directory: TestCertificate;
  /** tls.default_certificate. */
  fallback: TestCertificate;
}

describe('HTTPS front door: certificates by SNI, h2 and h1 over TLS, redirects, HSTS', () => {
  const cleanup = new SharedCleanup();
  let fd: FrontDoor;

  before(async () => {
    const t = cleanup.context;
    const dir = await tempDir(t, 'berth-https-');
    const ca = await createCa(join(dir, 'ca'));
    await mkdir(join(dir, 'certs'));
    // The shop's certificate also names api.test: one h2 connection can then carry both apps (below).
    const shop = await issueCertificate(ca, ['shop.test', 'api.test']);
    const wildcard = await issueCertificate(ca, ['*.blog.test']);
    const directory = await issueCertificate(ca, ['api.test'], { certificate: join(dir, 'certs', 'api.test.crt'), key: join(dir, 'certs', 'api.test.key') });
    const fallback = await issueCertificate(ca, ['default.test']);
    const src = await fixtureApp(dir);
    const [httpPort, tlsPort] = [await freePort(), await freePort()];
    const file = await writeConfig(dir, {
      state_dir: 'state',
      listen: [`127.0.0.1:${httpPort}`, { address: `127.0.0.1:${tlsPort}`, tls: true }],
      log_levels: { root: 'warn' },
      tls: { directory: join(dir, 'certs'), default_certificate: { certificate: fallback.certificate, key: fallback.key } },
      apps: {
        shop: {
          hosts: ['shop.test'],
          source: src,
          processes: web(),
          health: HEALTH,
          tls: { certificate: shop.certificate, key: shop.key },
          https_redirect: true,
          hsts: { max_age: '1h', include_subdomains: true },
        },
        // No tls of its own: api.test is served by the certificate directory.
        api: { hosts: ['api.test'], source: src, processes: web(), health: HEALTH },
        blog: { hosts: ['*.blog.test'], source: src, processes: web(), health: HEALTH, tls: { certificate: wildcard.certificate, key: wildcard.key } },
      },
    });
    const gw = await spawnGateway(t, file);
    assert.equal(gw.port, httpPort, 'the cleartext listener is listen[0]');
    await untilReady(gw);
    fd = { dir, ca, gw, httpPort, tlsPort, shop, wildcard, directory, fallback };
  });
  after(() => cleanup.run());

  test('SNI picks each source: an app\'s files, a *. wildcard, the directory, and the default for no SNI or an unknown name', async (t) => {
    const cases: [string | null, TestCertificate][] = [
      ['shop.test', fd.shop],
      ['SHOP.test', fd.shop],
      ['a.blog.test', fd.wildcard],
      ['b.blog.test', fd.wildcard],
      ['api.test', fd.directory],
      ['unknown.test', fd.fallback],
      // One label only, as TLS wildcards match: a.b.blog.test is not *.blog.test.
      ['a.b.blog.test', fd.fallback],
      [null, fd.fallback],
    ];
    for (const [name, want] of cases) {
      const got = await servedFingerprint(fd.tlsPort, name);
      assert.ok(sameFingerprint(got, want.fingerprint256), `${name ?? '(no SNI)'}: served ${got}, want ${want.fingerprint256}`);
    }
    // Verified for real against the CA: each name's certificate is valid for that name.
    for (const name of ['shop.test', 'a.blog.test', 'api.test']) {
      const c = await connectTls(t, fd.tlsPort, { servername: name, ca: fd.ca.pem, checkServerIdentity, rejectUnauthorized: true, ALPNProtocols: ['h2', 'http/1.1'] });
      assert.equal(c.authorized, true, name);
      assert.equal(c.socket.alpnProtocol, 'h2', `${name}: ALPN offers h2 first`);
      assert.ok(['TLSv1.2', 'TLSv1.3'].includes(String(c.protocol)));
      c.close();
    }
  });

  test('TLS 1.0 and 1.1 are refused at the handshake; 1.2 and 1.3 are served, and their sessions resume', async (t) => {
    // OpenSSL only speaks TLS 1.0/1.1 at security level 0, so the client is allowed to; the server must say no.
    const old = { ciphers: 'DEFAULT@SECLEVEL=0' };
    for (const version of ['TLSv1', 'TLSv1.1'] as const) {
      const err = await refusedTls(t, fd.tlsPort, { servername: 'shop.test', ca: fd.ca.pem, minVersion: version, maxVersion: version, ...old });
      assert.match(String(err.code), /PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL/, `${version}: ${err.code} ${err.message}`);
    }
    // Counted by reason on the control API's metrics.
    const refused = async () =>
      parseMetrics((await http({ socketPath: fd.gw.socket }, { path: '/metrics' })).body).find((m) => m.name === 'berth_tls_handshake_failures_total' && m.labels.reason === 'protocol-version')?.value ?? 0;
    await waitFor(async () => (await refused()) >= 2, { message: 'two protocol-version failures counted' });
    for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
      const opts = { servername: 'shop.test', ca: fd.ca.pem, minVersion: version, maxVersion: version, ALPNProtocols: ['http/1.1'] };
      const c = await connectTls(t, fd.tlsPort, opts);
      assert.equal(c.protocol, version);
      assert.equal(c.reused, false);
      // A request, so that a TLS 1.3 ticket (sent after the handshake) has arrived with its answer.
      const closed = new Promise((resolve) => c.socket.once('close', resolve));
      c.socket.write('GET /up HTTP/1.1\r\nhost: shop.test\r\nconnection: close\r\n\r\n');
      c.socket.resume(); // read (and drop) the answer: the ticket comes in with it
      await closed;
      const session = await Promise.race([c.session(), new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${version}: no session`)), 5_000))]);
      const again = await connectTls(t, fd.tlsPort, { ...opts, session });
      assert.equal(again.reused, true, `${version}: the session resumed`);
      again.close();
    }
  });

  test('h2: streams to two apps multiplexed over one connection, and two hosts of a wildcard app over another', async (t) => {
    // One h2 connection is bound to the SNI name of its handshake. A client may still send requests for
    // another origin on it when that connection's certificate names the other host too and it resolves
    // to the same address (RFC 9113 § 9.1.1, "connection coalescing", which browsers do). The shop's
    // certificate names shop.test and api.test, both on 127.0.0.1: one connection carries both apps,
    // each routed by its :authority. node:http2 does not coalesce by itself, so the test sends
    // :authority explicitly, which is what a coalescing browser puts on the wire.
    const session = await h2Session(t, fd.tlsPort, 'shop.test', fd.ca.pem);
    const sockets = new Set([session.socket]);
    // The shop's slow stream is open while the api's stream starts and finishes: multiplexed, no
    // head-of-line blocking (over HTTP/1.1 on one connection the api request would wait behind it).
    const slow = h2Request(session, { path: '/slow?ms=1500', authority: 'shop.test' });
    let slowDone = false;
    void slow.then(() => (slowDone = true), () => {});
    const api = await h2Request(session, { path: '/headers', authority: 'api.test' });
    assert.equal(slowDone, false, 'the api stream finished while the shop stream was still open');
    const shopHeaders = await h2Request(session, { path: '/headers', authority: 'shop.test' });
    const slowRes = await slow;
    for (const r of [api, shopHeaders, slowRes]) assert.equal(r.status, 200, r.text());
    assert.equal(slowRes.json().app, 'shop');
    assert.equal(slowRes.json().slept, 1500);
    const whoApi = await h2Request(session, { path: '/', authority: 'api.test' });
    const whoShop = await h2Request(session, { path: '/', authority: 'shop.test' });
    assert.equal(whoApi.json().app, 'api');
    assert.equal(whoShop.json().app, 'shop');
    sockets.add(session.socket);
    assert.equal(sockets.size, 1, 'every stream went over one connection');
    assert.equal((session.socket as unknown as { alpnProtocol: string }).alpnProtocol, 'h2');
    // Upstreams stay HTTP/1.1; the app is told the client came over TLS, and sees the host it asked for.
    assert.equal(api.json().headers['x-forwarded-proto'], 'https');
    assert.equal(shopHeaders.json().headers['x-forwarded-proto'], 'https');
    assert.equal(api.json().headers.host, 'api.test');
    // HSTS only for the app that asks for it, and only over TLS.
    assert.equal(shopHeaders.headers['strict-transport-security'], 'max-age=3600; includeSubDomains');
    assert.equal(api.headers['strict-transport-security'], undefined);

    // A connection whose certificate is *.blog.test carries any one-label name under it.
    const blog = await h2Session(t, fd.tlsPort, 'a.blog.test', fd.ca.pem);
    const [a, b] = await Promise.all([h2Request(blog, { path: '/', authority: 'a.blog.test' }), h2Request(blog, { path: '/', authority: 'b.blog.test' })]);
    assert.equal(a.json().app, 'blog');
    assert.equal(b.json().app, 'blog');
  });

  test('HTTP/1.1 over TLS: X-Forwarded-Proto https, HSTS; the cleartext listener says http and redirects the shop with a 308', async () => {
    const h1 = await h1Tls(fd.tlsPort, { servername: 'shop.test', ca: fd.ca.pem, path: '/headers' });
    assert.equal(h1.status, 200, h1.body);
    assert.equal(h1.socket.alpnProtocol, 'http/1.1');
    assert.equal(h1.json().headers['x-forwarded-proto'], 'https');
    assert.equal(h1.headers['strict-transport-security'], 'max-age=3600; includeSubDomains');
    // A client that offers no ALPN at all gets HTTP/1.1 too.
    const blog = await h1Tls(fd.tlsPort, { servername: 'x.blog.test', ca: fd.ca.pem, path: '/' });
    assert.equal(blog.json().app, 'blog');

    // Cleartext: the shop redirects (method and body kept: 308), keeping path and query.
    for (const method of ['GET', 'POST', 'HEAD']) {
      const r = await http({ port: fd.httpPort }, { method, path: '/a/b?c=1&d=%20', host: 'shop.test' });
      assert.equal(r.status, 308, `${method}: ${r.body}`);
      assert.equal(r.headers.location, `https://shop.test:${fd.tlsPort}/a/b?c=1&d=%20`);
      assert.equal(r.headers['strict-transport-security'], undefined, 'HSTS is never sent over http (RFC 6797 § 7.2)');
    }
    // Not redirected: ACME challenges and the internal prefix.
    const challenge = await http({ port: fd.httpPort }, { path: '/.well-known/acme-challenge/nothing-here', host: 'shop.test' });
    assert.notEqual(challenge.status, 308);
    const ready = await http({ port: fd.httpPort }, { path: '/_berth/ready', host: 'shop.test' });
    assert.equal(ready.status, 200);
    // An app without https_redirect is served over cleartext, told it came over http.
    const api = await http({ port: fd.httpPort }, { path: '/headers', host: 'api.test' });
    assert.equal(api.status, 200);
    assert.equal(api.json().headers['x-forwarded-proto'], 'http');
    // A client cannot claim TLS it did not use: its own X-Forwarded-Proto is not trusted (trusted_proxy_count 0).
    const spoofed = await http({ port: fd.httpPort }, { path: '/headers', host: 'api.test', headers: { 'x-forwarded-proto': 'https' } });
    assert.equal(spoofed.json().headers['x-forwarded-proto'], 'http');
  });

  test('nghttp (nghttp2-client) negotiates h2 and gets the right body', { skip: hasNghttp ? false : `${NGHTTP} is not installed: apt-get install -y nghttp2-client` }, async () => {
    // nghttp sends no SNI for an IP address, so it gets the default certificate (it does not verify);
    // :authority picks the app.
    const verbose = await nghttp(['-nv', '-H', ':authority: shop.test', `https://127.0.0.1:${fd.tlsPort}/`]);
    assert.equal(verbose.code, 0, verbose.stderr);
    assert.match(verbose.stdout, /The negotiated protocol: h2/);
    assert.match(verbose.stdout, /:status: 200/);
    assert.match(verbose.stdout, /strict-transport-security: max-age=3600; includeSubDomains/);
    const plain = await nghttp(['-H', ':authority: shop.test', `https://127.0.0.1:${fd.tlsPort}/from-nghttp?x=1`]);
    assert.equal(plain.code, 0, plain.stderr);
    const body = JSON.parse(plain.stdout);
    assert.equal(body.app, 'shop');
    assert.equal(body.path, '/from-nghttp');
    // Two URIs on one connection, two apps (coalescing as above).
    const both = await nghttp(['-nv', '-H', ':authority: api.test', `https://127.0.0.1:${fd.tlsPort}/one`, `https://127.0.0.1:${fd.tlsPort}/two`]);
    assert.equal(both.code, 0, both.stderr);
    assert.equal(both.stdout.match(/:status: 200/g)?.length, 2, both.stdout);
  });
});

function nghttp(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(NGHTTP, ['--timeout=20', ...args], { maxBuffer: 16 * 1024 * 1024, timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

// ---- certificates that change ------------------------------------------------------------------------------

/** Replaces a certificate and key the way a renewal tool does: each written beside, then renamed in, key first. */
async function swapFiles(target: { certificate: string; key: string }, next: TestCertificate): Promise<void> {
  await writeFile(`${target.key}.tmp`, await readFile(next.key), { mode: 0o600 });
  await writeFile(`${target.certificate}.tmp`, await readFile(next.certificate));
  await rename(`${target.key}.tmp`, target.key);
  await rename(`${target.certificate}.tmp`, target.certificate);
}

test('a certificate swapped on disk: new handshakes get it, open h1 and h2 connections go on; berth certs and the API show it; a reload to a broken file is refused; SIGHUP re-reads', async (t) => {
  const dir = await tempDir(t, 'berth-https-');
  const ca = await createCa(join(dir, 'ca'));
  const live = { certificate: join(dir, 'live', 'shop.crt'), key: join(dir, 'live', 'shop.key') };
  await mkdir(join(dir, 'live'));
  const first = await issueCertificate(ca, ['shop.test'], live);
  const second = await issueCertificate(ca, ['shop.test']);
  const fallback = await issueCertificate(ca, ['default.test']);
  const src = await fixtureApp(dir);
  const [httpPort, tlsPort] = [await freePort(), await freePort()];
  const config = (over: { shopTls?: { certificate: string; key: string }; defaultCertificate?: TestCertificate } = {}) => ({
    state_dir: 'state',
    listen: [`127.0.0.1:${httpPort}`, { address: `127.0.0.1:${tlsPort}`, tls: true }],
    log_levels: { root: 'warn' },
    ...(over.defaultCertificate ? { tls: { default_certificate: { certificate: over.defaultCertificate.certificate, key: over.defaultCertificate.key } } } : {}),
    apps: { shop: { hosts: ['shop.test'], source: src, processes: web(), health: HEALTH, tls: over.shopTls ?? live } },
  });
  const file = await writeConfig(dir, config());
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  assert.ok(sameFingerprint(await servedFingerprint(tlsPort, 'shop.test'), first.fingerprint256));

  // Open connections, each having made a request: HTTP/1.1 keep-alive and h2.
  const agent = new HttpsAgent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const before = await h1Tls(tlsPort, { servername: 'shop.test', ca: ca.pem, path: '/', agent });
  assert.equal(before.status, 200);
  const keptSocket = before.socket;
  assert.ok(sameFingerprint(before.fingerprint, first.fingerprint256));
  const session = await h2Session(t, tlsPort, 'shop.test', ca.pem);
  assert.equal((await h2Request(session, { path: '/' })).status, 200);

  await swapFiles(live, second);
  await waitFor(async () => sameFingerprint(await servedFingerprint(tlsPort, 'shop.test'), second.fingerprint256), { timeoutMs: 15_000, message: 'a new handshake to get the new certificate' });

  // The open connections go on, on the same sockets, with the certificate they started with.
  const afterSwap = await h1Tls(tlsPort, { servername: 'shop.test', ca: ca.pem, path: '/', agent });
  assert.equal(afterSwap.status, 200);
  assert.equal(afterSwap.socket, keptSocket, 'the keep-alive connection was reused');
  assert.ok(sameFingerprint(afterSwap.fingerprint, first.fingerprint256));
  const h2After = await h2Request(session, { path: '/' });
  assert.equal(h2After.status, 200);
  assert.equal(session.closed, false);
  // A fresh verified request sees the new one.
  const fresh = await h1Tls(tlsPort, { servername: 'shop.test', ca: ca.pem, path: '/' });
  assert.ok(sameFingerprint(fresh.fingerprint, second.fingerprint256));

  // berth certs (table and JSON) and GET /v1/certificates show the new one.
  const api = await gw.api('/v1/certificates');
  const row = api.certificates.find((r: any) => r.host === 'shop.test');
  assert.ok(row, JSON.stringify(api));
  assert.ok(sameFingerprint(row.fingerprint, second.fingerprint256), `API shows ${row.fingerprint}`);
  assert.equal(row.source, 'apps.shop.tls');
  assert.equal(row.nextRenewal, null, 'files are renewed by their owner');
  assert.equal(row.covered, true);
  assert.equal(row.error, null);
  assert.ok(!JSON.stringify(api).includes('PRIVATE KEY'));
  const json = await runCli(['certs', '--json', '--socket', gw.socket]);
  assert.equal(json.code, 0, json.stderr);
  assert.deepEqual(JSON.parse(json.stdout), api);
  const table = await runCli(['certs', '--socket', gw.socket]);
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /^host\s+source\s+issuer\s+expires\s+next renewal\s+state/im);
  assert.match(table.stdout, new RegExp(`^shop\\.test\\s+apps\\.shop\\.tls\\s+berth test CA \\S+\\s+${row.notAfter.replace(/[.]/g, '\\.')}\\s+-\\s+ok`, 'm'));

  // A config reload that points at a broken certificate is refused, naming the key; the current one stays.
  const broken = join(dir, 'broken.crt');
  await writeFile(broken, '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n');
  await writeConfig(dir, config({ shopTls: { certificate: broken, key: live.key } }));
  const refused = await runCli(['reload-config', '--socket', gw.socket]);
  assert.equal(refused.code, 2, refused.stdout + refused.stderr);
  assert.match(refused.stderr, /apps\.shop\.tls\.certificate/);
  assert.ok(!refused.stderr.includes('PRIVATE KEY'));
  assert.ok(sameFingerprint(await servedFingerprint(tlsPort, 'shop.test'), second.fingerprint256), 'the old certificate keeps serving');
  assert.equal((await h1Tls(tlsPort, { servername: 'shop.test', ca: ca.pem, path: '/' })).status, 200);

  // SIGHUP re-reads the config and its certificates. A default certificate is something no file watch
  // could bring (it is new in the config), so serving it shows the SIGHUP did the reading.
  await assert.rejects(servedFingerprint(tlsPort, 'other.test'), 'without a default certificate an unknown name is refused');
  await writeConfig(dir, config({ defaultCertificate: fallback }));
  gw.proc.kill('SIGHUP');
  await waitFor(async () => sameFingerprint(await servedFingerprint(tlsPort, 'other.test').catch(() => ''), fallback.fingerprint256), { timeoutMs: 15_000, message: 'the default certificate after SIGHUP' });
  assert.ok(sameFingerprint(await servedFingerprint(tlsPort, 'shop.test'), second.fingerprint256));

  // A file that breaks on disk (watch or SIGHUP) keeps the previous certificate serving, and says so.
  await writeFile(live.certificate, 'garbage\n');
  gw.proc.kill('SIGHUP');
  await waitFor(async () => (await gw.api('/v1/certificates')).certificates.find((r: any) => r.host === 'shop.test')?.error, { timeoutMs: 15_000, message: 'the broken file reported' });
  assert.ok(sameFingerprint(await servedFingerprint(tlsPort, 'shop.test'), second.fingerprint256), 'the previous certificate keeps serving');
  assert.equal((await h2Request(session, { path: '/' })).status, 200, 'the old h2 connection still works');
  await waitFor(() => gw.logs.some((l) => /certificate not reloaded/.test(String(l.msg))), { timeoutMs: 5_000, message: 'the log line' });
  assert.ok(!gw.logs.some((l) => JSON.stringify(l).includes('PRIVATE KEY')), 'no key in the log');
  const shown = await runCli(['certs', '--socket', gw.socket]);
  assert.match(shown.stdout, /^shop\.test\s.*error: /m);
  // Fixed on disk (a new pair: the first one's files were overwritten above): served without a restart, error gone.
  const third = await issueCertificate(ca, ['shop.test']);
  await swapFiles(live, third);
  gw.proc.kill('SIGHUP');
  await waitFor(async () => sameFingerprint(await servedFingerprint(tlsPort, 'shop.test'), third.fingerprint256), { timeoutMs: 15_000, message: 'the fixed file served' });
  await waitFor(async () => (await gw.api('/v1/certificates')).certificates.find((r: any) => r.host === 'shop.test')?.error === null, { timeoutMs: 5_000, message: 'the error cleared' });
  assert.equal(gw.proc.exitCode, null, 'the gateway never stopped');
});
