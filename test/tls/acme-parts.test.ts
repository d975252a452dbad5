/**
 * The parts of ACME that need no CA: when renewals and retries fall, the on-demand gate against a real
 * ask server, certificates from memory in the CertificateStore, and the handshake router over real TLS
 * handshakes. The end-to-end behaviour against pebble is in acme.test.ts.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { mkdir, readFile } from 'node:fs/promises';
import { createSecureContext, createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { Certificate, CertificateFileError } from '../../src/tls/certificate.ts';
import { CertificateStore } from '../../src/tls/certificate-store.ts';
import { HandshakeRouter } from '../../src/tls/handshake-router.ts';
import { OnDemandGate } from '../../src/tls/acme/on-demand-gate.ts';
import { nextRenewal, retryDelay, ACME_RETRY_MAX_MS, ACME_RETRY_MIN_MS } from '../../src/tls/acme/renewal.ts';
import { isDnsName } from '../../src/tls/acme/dns-name.ts';
import { AcmeManager } from '../../src/tls/acme/acme-manager.ts';
import type { AcmeStore } from '../../src/store/store.ts';
import { tempDir } from '../helpers/gateway.ts';
import { createCa, issueCertificate, type TestCa, type TestCertificate } from '../helpers/certificates.ts';
import { connectTls, refusedTls } from './tls-client.ts';
import { freePort } from './pebble.ts';

const DAY = 86_400_000;

test('renewal falls at two thirds of the lifetime; retries double from the minimum, cap, and jitter down by at most a half', () => {
  assert.equal(nextRenewal(0, 90 * DAY), 60 * DAY);
  assert.equal(nextRenewal(1_000, 16_000), 11_000);
  const policy = { minMs: 1_000, maxMs: 10_000 };
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => retryDelay(n, () => 0, policy)), [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
  assert.equal(retryDelay(3, () => 0.999999, policy), 2_000, 'the most jitter halves the wait');
  for (let i = 0; i < 100; i++) {
    const d = retryDelay(2, Math.random, policy);
    assert.ok(d >= 1_000 && d <= 2_000, String(d));
  }
  assert.equal(retryDelay(1, () => 0), ACME_RETRY_MIN_MS);
  assert.equal(retryDelay(100, () => 0), ACME_RETRY_MAX_MS);
});

test('only concrete DNS names can be ordered', () => {
  for (const ok of ['shop.test', 'a-b.c.example.com', 'xn--bcher-kva.example']) assert.ok(isDnsName(ok), ok);
  for (const bad of ['*.shop.test', 'localhost', '10.0.0.1', 'Shop.test', 'shop.test.', '-a.test', 'a..test', `${'a'.repeat(64)}.test`, 'a b.test', '']) assert.ok(!isDnsName(bad), bad);
});

/** An ask server: 200 for names in `allow`, 403 for others; `slow` names are answered after `delayMs`. */
async function askServer(t: TestContext, allow: Set<string>, slow: { names: Set<string>; delayMs: number } = { names: new Set(), delayMs: 0 }): Promise<{ url: string; asked: string[] }> {
  const asked: string[] = [];
  const server: HttpServer = createHttpServer((req, res) => {
    const domain = new URL(req.url ?? '/', 'http://x').searchParams.get('domain') ?? '';
    asked.push(domain);
    const answer = () => res.writeHead(allow.has(domain) ? 200 : domain === 'broken.test' ? 500 : 403).end();
    if (slow.names.has(domain)) setTimeout(answer, slow.delayMs);
    else answer();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/allowed?x=1`, asked };
}

test('on-demand gate: the ask URL decides, refusals and failures are remembered, names are checked first', async (t) => {
  const { url, asked } = await askServer(t, new Set(['ok.test']), { names: new Set(['slow.test']), delayMs: 2_000 });
  let now = 1_000_000;
  const gate = new OnDemandGate(url, { refusedTtlMs: 60_000, askTimeoutMs: 300 }, () => now);

  const ok = await gate.admit('ok.test');
  assert.equal(ok.ok, true);
  if (ok.ok) ok.release();
  assert.deepEqual(await gate.admit('no.test'), { ok: false, reason: 'ask-refused', detail: 'ask answered 403' });
  assert.deepEqual(await gate.admit('no.test'), { ok: false, reason: 'refused-recently' });
  assert.deepEqual(await gate.admit('broken.test'), { ok: false, reason: 'ask-refused', detail: 'ask answered 500' });
  assert.deepEqual(await gate.admit('slow.test'), { ok: false, reason: 'ask-refused', detail: 'ask timed out' });
  assert.deepEqual(await gate.admit('10.1.2.3'), { ok: false, reason: 'invalid-name' });
  assert.deepEqual(await gate.admit('*.x.test'), { ok: false, reason: 'invalid-name' });
  assert.deepEqual(asked, ['ok.test', 'no.test', 'broken.test', 'slow.test'], 'the ask URL got its own query plus domain, once per name');

  now += 60_001;
  assert.deepEqual(await gate.admit('no.test'), { ok: false, reason: 'ask-refused', detail: 'ask answered 403' }, 'asked again after the refusal expired');

  // An order that failed is refused like a refusal.
  gate.refuse('ok.test');
  assert.deepEqual(await gate.admit('ok.test'), { ok: false, reason: 'refused-recently' });

  const none = new OnDemandGate(null, {}, () => now);
  assert.deepEqual(await none.admit('ok.test'), { ok: false, reason: 'no-ask-url' });

  const closed = await freePort();
  const down = new OnDemandGate(`http://127.0.0.1:${closed}/ask`, {}, () => now);
  const verdict = await down.admit('ok.test');
  assert.equal(verdict.ok, false);
  assert.match(!verdict.ok ? verdict.detail ?? '' : '', /ask failed \(ECONNREFUSED\)/);
});

test('on-demand gate: at most N asks and orders in flight, and M orders a minute', async (t) => {
  const allow = new Set(['a.test', 'b.test', 'c.test', 'd.test', 'e.test']);
  const { url } = await askServer(t, allow, { names: new Set(['a.test', 'b.test']), delayMs: 200 });
  let now = 0;
  const gate = new OnDemandGate(url, { inFlight: 2, perMinute: 3 }, () => now);

  // Two slow asks fill the flight; a third name is refused at once, without asking.
  const [a, b, c] = await Promise.all([gate.admit('a.test'), gate.admit('b.test'), gate.admit('c.test')]);
  assert.deepEqual(c, { ok: false, reason: 'busy' });
  assert.ok(a.ok && b.ok);
  // Still in flight until released (the orders run).
  assert.deepEqual(await gate.admit('c.test'), { ok: false, reason: 'busy' });
  if (a.ok) a.release();
  if (b.ok) b.release();
  if (a.ok) a.release(); // a second release changes nothing
  const third = await gate.admit('c.test');
  assert.ok(third.ok);
  if (third.ok) third.release();
  assert.deepEqual(await gate.admit('d.test'), { ok: false, reason: 'rate-limited' }, 'three orders this minute already');
  now += 60_001;
  const later = await gate.admit('d.test');
  assert.ok(later.ok, 'a minute later there is room again');
  if (later.ok) later.release();
});

async function fixture(t: TestContext): Promise<{ ca: TestCa; dir: string }> {
  const dir = await tempDir(t, 'berth-acme-parts-');
  return { dir, ca: await createCa(join(dir, 'ca')) };
}

async function fromPem(cert: TestCertificate, label: string): Promise<Certificate> {
  return Certificate.fromPem(label, await readFile(cert.certificate), await readFile(cert.key));
}

async function tlsServer(t: TestContext, options: object): Promise<number> {
  const sockets = new Set<TLSSocket>();
  const server: TlsServer = createTlsServer(options, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return (server.address() as AddressInfo).port;
}

test('a certificate from memory: checked like a file, named by its label, and its key never in the message', async (t) => {
  const { ca } = await fixture(t);
  const a = await issueCertificate(ca, ['a.test']);
  const b = await issueCertificate(ca, ['b.test']);
  const cert = await fromPem(a, 'acme:a.test');
  assert.deepEqual(cert.names, ['a.test']);
  assert.equal(cert.files.certificate, 'acme:a.test');
  const wrongKey = await readFile(b.key);
  const keyText = wrongKey.toString('utf8');
  assert.throws(() => Certificate.fromPem('acme:a.test', Buffer.from(a.pem), wrongKey), (err: unknown) => {
    assert.ok(err instanceof CertificateFileError);
    assert.match(err.message, /^acme:a\.test: the key does not match/);
    assert.ok(!err.message.includes(keyText.split('\n')[1]));
    return true;
  });
  assert.ok(wrongKey.every((byte) => byte === 0), 'the key buffer is wiped');
});

test('managed certificates: files win, managed beats the directory and the default, and berth certs shows renewal and error', async (t) => {
  const { ca, dir } = await fixture(t);
  const certDir = join(dir, 'certs');
  await mkdir(certDir);
  const dirBlog = await issueCertificate(ca, ['blog.test'], { certificate: join(certDir, 'blog.test.crt'), key: join(certDir, 'blog.test.key') });
  const fileShop = await issueCertificate(ca, ['shop.test']);
  const acmeShop = await issueCertificate(ca, ['shop.test']);
  const acmeBlog = await issueCertificate(ca, ['blog.test']);
  const fallback = await issueCertificate(ca, ['default.test']);
  const store = new CertificateStore(
    { sources: [{ from: 'apps.shop.tls', hosts: ['shop.test'], files: { certificate: fileShop.certificate, key: fileShop.key } }], directory: certDir, defaultCertificate: { from: 'tls.default_certificate', hosts: [], files: { certificate: fallback.certificate, key: fallback.key } } },
    { logger: pino({ level: 'silent' }), watch: false },
  );
  await store.start();
  t.after(() => store.stop());
  const port = await tlsServer(t, store.serverOptions());

  assert.equal((await connectTls(t, port, { servername: 'blog.test' })).fingerprint, dirBlog.fingerprint256, 'the directory serves it first');
  const blogCert = await fromPem(acmeBlog, 'acme:blog.test');
  store.setManaged('blog.test', blogCert, { source: 'acme', nextRenewal: '2026-02-01T00:00:00.000Z', error: null });
  store.setManaged('Shop.test.', await fromPem(acmeShop, 'acme:shop.test'));
  assert.equal(store.serves('blog.test'), true);
  assert.equal(store.serves('BLOG.test.'), true);
  assert.equal((await connectTls(t, port, { servername: 'blog.test' })).fingerprint, acmeBlog.fingerprint256, 'managed beats the directory');
  assert.equal((await connectTls(t, port, { servername: 'shop.test' })).fingerprint, fileShop.fingerprint256, 'the configured file wins');

  const row = store.describe().find((r) => r.host === 'blog.test')!;
  assert.deepEqual([row.source, row.path, row.nextRenewal, row.error], ['acme', 'acme:blog.test', '2026-02-01T00:00:00.000Z', null]);

  // A failed renewal: the same certificate goes on being served; the error and the retry time show.
  const context = store.select('blog.test');
  store.setManaged('blog.test', blogCert, { source: 'acme', nextRenewal: '2026-02-01T01:00:00.000Z', error: 'ACME: no certificate for blog.test: timeout' });
  assert.equal(store.select('blog.test'), context);
  const failed = store.describe().find((r) => r.host === 'blog.test')!;
  assert.equal(failed.error, 'ACME: no certificate for blog.test: timeout');
  assert.equal(failed.nextRenewal, '2026-02-01T01:00:00.000Z');

  // A reload of the files keeps the managed certificates.
  await store.reload();
  assert.equal(store.serves('blog.test'), true);

  store.setManaged('blog.test', null);
  assert.equal((await connectTls(t, port, { servername: 'blog.test' })).fingerprint, dirBlog.fingerprint256, 'back to the directory');
  assert.equal((await connectTls(t, port, { servername: 'nothing.test' })).fingerprint, fallback.fingerprint256, 'the default for the rest');
});

test('handshake router: only a client offering acme-tls/1 alone gets the challenge certificate; others get SNI as usual', async (t) => {
  const { ca } = await fixture(t);
  const real = await issueCertificate(ca, ['alpn.test']);
  const challenge = await issueCertificate(ca, ['alpn.test']);
  const certificates = new CertificateStore({ sources: [], directory: null, defaultCertificate: null }, { logger: pino({ level: 'silent' }), watch: false });
  await certificates.start();
  t.after(() => certificates.stop());
  certificates.setManaged('alpn.test', await fromPem(real, 'acme:alpn.test'));
  const challengeContext = createSecureContext({ cert: await readFile(challenge.certificate), key: await readFile(challenge.key) });
  const onDemandAsked: string[] = [];
  const router = new HandshakeRouter(certificates, {
    protocols: ['h2', 'http/1.1'],
    acme: {
      alpnChallengeContext: (name) => (name === 'alpn.test' ? challengeContext : null),
      onDemand: async (name) => {
        onDemandAsked.push(name);
        return false;
      },
    },
    onDemandFor: (name) => name.endsWith('.wild.test'),
  });
  const port = await tlsServer(t, { ...certificates.serverOptions(), ALPNCallback: router.ALPNCallback, SNICallback: router.SNICallback });

  const validator = await connectTls(t, port, { servername: 'alpn.test', ALPNProtocols: ['acme-tls/1'] });
  assert.equal(validator.socket.alpnProtocol, 'acme-tls/1');
  assert.equal(validator.fingerprint, challenge.fingerprint256);

  const browser = await connectTls(t, port, { servername: 'alpn.test', ALPNProtocols: ['acme-tls/1', 'h2', 'http/1.1'] });
  assert.equal(browser.socket.alpnProtocol, 'h2');
  assert.equal(browser.fingerprint, real.fingerprint256);
  const old = await connectTls(t, port, { servername: 'alpn.test', ALPNProtocols: ['http/1.1'] });
  assert.equal(old.socket.alpnProtocol, 'http/1.1');
  const none = await connectTls(t, port, { servername: 'alpn.test' });
  assert.equal(none.fingerprint, real.fingerprint256);

  // acme-tls/1 for a name without a pending challenge is no protocol of ours.
  await refusedTls(t, port, { servername: 'other.test', ALPNProtocols: ['acme-tls/1'] });
  // On demand is asked only for names under the wildcard apps, and refusal ends the handshake.
  await refusedTls(t, port, { servername: 'x.wild.test' });
  await refusedTls(t, port, { servername: 'x.elsewhere.test' });
  assert.deepEqual(onDemandAsked, ['x.wild.test']);
});

test('answerHttp: only the challenge path with a base64url token is looked up; anything else is routed as usual', () => {
  const acme = new AcmeManager({ directoryUrl: 'https://acme.invalid/dir', email: null, store: null as unknown as AcmeStore, certificates: null as unknown as CertificateStore, logger: pino({ level: 'silent' }) });
  for (const path of ['/', '/.well-known/acme-challenge/', '/.well-known/acme-challenge/../x', '/.well-known/acme-challenge/a/b', '/.well-known/acme-challenge/abc', '/.well-known/acme-challenge/abc?x=1']) {
    assert.equal(acme.answerHttp(path), null, path);
  }
});
