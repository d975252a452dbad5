/**
 * ACME through the proxy's own listeners, against a real ACME server (Debian's pebble): HTTP-01 is
 * answered on the cleartext listener before routing and redirects (the app has `https_redirect`), and
 * TLS-ALPN-01 by the TLS listener's handshake router. Then HTTPS reaches the app with the new certificate.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { silentLogger } from '../../src/lib/logger.ts';
import { Proxy } from '../../src/proxy/server.ts';
import { RoutingTable } from '../../src/proxy/router.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import type { AppConfig } from '../../src/config/schema.ts';
import { CertificateStore } from '../../src/tls/certificate-store.ts';
import { AcmeManager } from '../../src/tls/acme/acme-manager.ts';
import type { AcmeChallenge } from '../../src/tls/acme/acme-issuer.ts';
import { tempDir } from '../helpers/gateway.ts';
import { freePort, pebbleMissing, startPebble } from '../tls/pebble.ts';
import { appConfig, backend, berthConfig, entry, fetchRaw, okHandler, TestGeneration } from './fixtures.ts';

const missing = pebbleMissing();
// CI installs pebble (.ci/run): there a missing pebble is a failure, not a skip.
if (missing && process.env.CI === 'true') throw new Error(`CI=true but ${missing}`);
const skip = missing ?? false;

interface Bench {
  tlsPort: number;
  httpPort: number;
  root: string;
  acme: AcmeManager;
}

/** pebble, and a proxy whose listeners answer its challenges; `app` served by a real backend. */
async function bench(t: TestContext, challenge: AcmeChallenge, app: AppConfig, ask: string | null = null): Promise<Bench> {
  const dir = await tempDir(t, 'berth-proxy-acme-');
  const [httpPort, tlsPort] = [await freePort(), await freePort()];
  const pebble = await startPebble(t, { dir, httpPort, tlsPort });
  const store = new SqliteStore({ path: join(dir, 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  await store.open();
  t.after(() => store.close());
  const certificates = new CertificateStore({ sources: [], directory: null, defaultCertificate: null }, { logger: silentLogger(), watch: false });
  await certificates.start();
  t.after(() => certificates.stop());
  const acme = new AcmeManager({ directoryUrl: pebble.directoryUrl, caRoot: pebble.caRoot, email: 'ops@berth.test', store, certificates, logger: silentLogger(), challenge, pollMinMs: 100, ask });
  t.after(() => acme.stop());

  const be = await backend(t, okHandler('shop'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 4, [be.address]);
  const config = berthConfig([app], {
    stateDir: dir,
    listen: [
      { kind: 'tcp', host: '127.0.0.1', port: httpPort, text: `127.0.0.1:${httpPort}`, tls: false },
      { kind: 'tcp', host: '127.0.0.1', port: tlsPort, text: `127.0.0.1:${tlsPort}`, tls: true },
    ],
  });
  const proxy = new Proxy({ config, logger: silentLogger() });
  proxy.setTable(new RoutingTable([entry(app, gen)]));
  t.after(() => proxy.destroy());
  await proxy.start({ certificates, acme });

  await acme.start();
  return { tlsPort, httpPort, root: await pebble.issuingRoot(), acme };
}

/** A verified HTTPS request for `host` to the proxy's TLS port. */
function verified(b: Bench, host: string): Promise<{ status: number; body: string; authorized: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: b.tlsPort, servername: host, headers: { host }, ca: b.root, agent: false }, (res) => {
      let body = '';
      const authorized = (res.socket as TLSSocket).authorized;
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body, authorized }));
    });
    req.on('error', reject).end();
  });
}

async function issueThroughProxy(t: TestContext, challenge: AcmeChallenge): Promise<void> {
  const b = await bench(t, challenge, appConfig('shop', { hosts: ['shop.test'], acme: true, httpsRedirect: true }));
  const { httpPort, tlsPort, acme } = b;
  await acme.ensure(['shop.test']);
  const [row] = acme.status();
  assert.equal(row.state, 'valid', `status: ${JSON.stringify(row)}`);
  assert.deepEqual(await verified(b, 'shop.test'), { status: 200, body: 'shop', authorized: true });
  // The cleartext listener still redirects everything else to https.
  const plain = await fetchRaw(`http://127.0.0.1:${httpPort}/x`, { headers: { host: 'shop.test' } });
  assert.equal(plain.status, 308);
  assert.equal(plain.headers.location, `https://shop.test:${tlsPort}/x`);
  // A challenge path that is no pending challenge is routed as usual (redirected, here: it is the app's).
  const stale = await fetchRaw(`http://127.0.0.1:${httpPort}/.well-known/acme-challenge/unknown-token`, { headers: { host: 'shop.test' } });
  assert.equal(stale.status, 200);
  assert.equal(stale.text, 'shop');
}

test('HTTP-01 answered by the proxy\'s cleartext listener before its https redirect; HTTPS then serves the issued certificate', { skip }, async (t) => {
  await issueThroughProxy(t, 'http-01');
});

test('TLS-ALPN-01 answered by the proxy\'s TLS listener', { skip }, async (t) => {
  await issueThroughProxy(t, 'tls-alpn-01');
});

test('on demand through the proxy: a name under a wildcard ACME app gets a certificate at its first handshake when the ask URL allows it', { skip }, async (t) => {
  const asked: string[] = [];
  const ask = createHttpServer((req, res) => {
    const domain = new URL(req.url ?? '/', 'http://x').searchParams.get('domain') ?? '';
    asked.push(domain);
    res.writeHead(domain === 'a.shop.test' ? 200 : 403).end();
  });
  await new Promise<void>((r) => ask.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => ask.close(r)));
  const askUrl = `http://127.0.0.1:${(ask.address() as AddressInfo).port}/check`;
  const b = await bench(t, 'tls-alpn-01', appConfig('shop', { hosts: ['*.shop.test'], acme: true }), askUrl);
  assert.deepEqual(await verified(b, 'a.shop.test'), { status: 200, body: 'shop', authorized: true });
  await assert.rejects(verified(b, 'b.shop.test'), /alert|handshake|ECONNRESET|socket/i, 'refused by the ask URL: no certificate');
  // A name no ACME app routes is never asked about.
  await assert.rejects(verified(b, 'other.test'), /alert|handshake|ECONNRESET|socket/i);
  assert.deepEqual(asked, ['a.shop.test', 'b.shop.test']);
});
