/**
 * Issue #12 acceptance: ACME through the gateway against a real ACME server. `berth start` (a child
 * process) with a cleartext and a TLS listener on ports picked first; Debian's pebble validates HTTP-01
 * against the cleartext port and TLS-ALPN-01 against the TLS port, with pebble-challtestsrv resolving
 * every test name to 127.0.0.1. No validation is faked: PEBBLE_VA_ALWAYS_VALID is never set (and
 * test/tls/pebble.ts starts pebble with an environment of its own, so the runner's cannot leak in).
 * Served certificates are checked by real handshakes against pebble's issuing root.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';
import { h1Tls, h2Request, h2Session, sameFingerprint } from '../helpers/https.ts';
import { parseMetrics } from '../helpers/prometheus.ts';
import { refusedTls } from '../tls/tls-client.ts';
import { freePort, pebbleMissing, startPebble, type Pebble } from '../tls/pebble.ts';

const missing = pebbleMissing();
// CI installs pebble (.ci/run): there a missing pebble is a failure, not a skip.
if (missing && process.env.CI === 'true') throw new Error(`CI=true but ${missing}`);
const skip = missing ?? false;

const web = { web: { command: FIXTURE_WEB_COMMAND, instances: 1, concurrency: 16 } };
const HEALTH = { path: '/up', interval: '250ms' };

/** A tiny `acme.ask` endpoint: 200 for the allowed names, 403 for the rest; remembers what it was asked. */
async function askServer(t: TestContext, allowed: string[]): Promise<{ url: string; asked: string[] }> {
  const asked: string[] = [];
  const server = createServer((req, res) => {
    const domain = new URL(req.url ?? '/', 'http://x').searchParams.get('domain') ?? '';
    asked.push(domain);
    res.writeHead(allowed.includes(domain) ? 200 : 403, { 'content-type': 'text/plain' }).end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  // The gateway may hold a keep-alive connection to it: closing must not wait for that to idle out.
  t.after(() => new Promise((r) => {
    server.close(r);
    server.closeAllConnections();
  }));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/ask`, asked };
}

interface AcmeGateway {
  gw: ChildGateway;
  pebble: Pebble;
  /** The root that signs what pebble issues. */
  root: string;
  tlsPort: number;
  httpPort: number;
  /** Writes the config again with these apps (for `berth reload-config`). */
  rewrite(apps: Record<string, unknown>): Promise<void>;
}

/**
 * Ports first (pebble must know where to validate), then pebble, then the gateway. Pebble validates
 * HTTP-01 on the gateway's cleartext port, or with `closedHttp` on a port nothing answers on.
 */
async function acmeGateway(t: TestContext, opts: { challenge: 'http-01' | 'tls-alpn-01'; apps: Record<string, unknown>; ask?: string; validitySeconds?: number; closedHttp?: boolean; workers?: number }): Promise<AcmeGateway> {
  const dir = await tempDir(t, 'berth-acme-gw-');
  const [httpPort, tlsPort, unused] = [await freePort(), await freePort(), await freePort()];
  const pebble = await startPebble(t, { dir, httpPort: opts.closedHttp ? unused : httpPort, tlsPort, validitySeconds: opts.validitySeconds });
  const caRoot = join(dir, 'pebble-directory-ca.pem');
  await writeFile(caRoot, pebble.caRoot);
  const src = await fixtureApp(dir);
  const config = (given: Record<string, unknown>) => {
    const apps: Record<string, unknown> = {};
    for (const [name, app] of Object.entries(given)) apps[name] = { source: src, processes: web, health: HEALTH, tls: { acme: true }, ...(app as object) };
    return {
      state_dir: 'state',
      listen: [`127.0.0.1:${httpPort}`, { address: `127.0.0.1:${tlsPort}`, tls: true }],
      log_levels: { root: 'info' },
      acme: { directory: pebble.directoryUrl, email: 'ops@berth.test', ca_root: caRoot, challenge: opts.challenge, ...(opts.ask ? { ask: opts.ask } : {}) },
      ...(opts.workers ? { proxy: { workers: opts.workers } } : {}),
      apps,
    };
  };
  const file = await writeConfig(dir, config(opts.apps));
  const gw = await spawnGateway(t, file);
  t.after(() => {
    // Keys reach the store and the TLS layer, never the log.
    assert.ok(!gw.stderr().includes('PRIVATE KEY') && !gw.logs.some((l) => JSON.stringify(l).includes('PRIVATE KEY')), 'a log line quotes a key');
  });
  await untilReady(gw);
  return { gw, pebble, root: await pebble.issuingRoot(), tlsPort, httpPort, rewrite: async (apps) => void (await writeConfig(dir, config(apps))) };
}

/**
 * `GET /v1/certificates`' row for `host`, or undefined. Polled, so the API rather than a `berth certs`
 * process each time; the tests check that `berth certs --json` says the same.
 */
async function certRow(gw: ChildGateway, host: string): Promise<any> {
  return (await gw.api('/v1/certificates')).certificates.find((r: any) => r.host === host);
}

/** Waits for `host`'s first certificate: its row with a fingerprint (before that, the row shows the order pending). */
function issued(gw: ChildGateway, host: string): Promise<any> {
  return waitFor(
    async () => {
      const r = await certRow(gw, host);
      return r && r.fingerprint !== '' ? r : null;
    },
    { timeoutMs: 60_000, intervalMs: 250, message: `the certificate for ${host} issued at start` },
  );
}

test('with proxy.workers 2: HTTP-01 and TLS-ALPN-01 validations are answered whichever thread the CA reaches, ACME certificates are served by every thread, and on-demand names are ordered from any thread', { skip }, async (t) => {
  // Six orders per challenge, so that (with the kernel spreading connections over the threads) worker
  // threads answer some of the CA's validations.
  const hosts = (prefix: string) => ['a', 'b', 'c', 'd', 'e', 'f'].map((h) => `${h}.${prefix}.acme.test`);
  const sites = (list: string[]) => Object.fromEntries(list.map((host, i) => [`site${i}`, { hosts: [host] }]));
  /** Every one of `n` new connections for `host` gets `fingerprint` (so every thread serves it). */
  const servedEverywhere = async (port: number, host: string, root: string, fingerprint: string) => {
    const all = await Promise.all(Array.from({ length: 12 }, () => h1Tls(port, { servername: host, ca: root, path: '/' })));
    for (const r of all) {
      assert.equal(r.status, 200);
      assert.ok(sameFingerprint(r.fingerprint, fingerprint), `${host}: a thread served another certificate`);
    }
  };

  const http01 = hosts('h1');
  const a = await acmeGateway(t, { challenge: 'http-01', apps: sites(http01), workers: 2 });
  for (const host of http01) {
    const row = await issued(a.gw, host);
    assert.equal(row.error, null, `${host}: ${row.error}`);
    await servedEverywhere(a.tlsPort, host, a.root, row.fingerprint);
  }

  const alpn = hosts('alpn');
  const b = await acmeGateway(t, { challenge: 'tls-alpn-01', apps: sites(alpn), closedHttp: true, workers: 2 });
  for (const host of alpn) {
    const row = await issued(b.gw, host);
    assert.equal(row.error, null, `${host}: ${row.error}`);
    await servedEverywhere(b.tlsPort, host, b.root, row.fingerprint);
  }

  // On demand: each name's first handshake, on a new connection, may reach either thread.
  const names = ['one', 'two', 'three', 'four'].map((n) => `${n}.wild.acme.test`);
  const ask = await askServer(t, names);
  const c = await acmeGateway(t, { challenge: 'http-01', apps: { wild: { hosts: ['*.wild.acme.test'] } }, ask: ask.url, workers: 2 });
  for (const name of names) {
    const first = await h1Tls(c.tlsPort, { servername: name, ca: c.root, path: '/', timeoutMs: 60_000 });
    assert.equal(first.status, 200);
    const row = await certRow(c.gw, name);
    assert.ok(row && sameFingerprint(first.fingerprint, row.fingerprint), `${name} served with its on-demand certificate`);
    await servedEverywhere(c.tlsPort, name, c.root, row.fingerprint);
  }
  await refusedTls(t, c.tlsPort, { servername: 'refused.wild.acme.test', ca: c.root });
});

test('HTTP-01 through the gateway: a certificate is issued at start, served by SNI over h1 and h2, chaining to pebble\'s root; berth certs shows source acme and the next renewal; renewal replaces it', { skip }, async (t) => {
  // https_redirect is on: HTTP-01 answers come before redirects (and routing and modes), or no order could pass.
  const a = await acmeGateway(t, { challenge: 'http-01', apps: { shop: { hosts: ['shop.acme.test'], https_redirect: true } }, validitySeconds: 45 });
  const row = await issued(a.gw, 'shop.acme.test');
  assert.equal(row.source, 'acme');
  assert.equal(row.covered, true);
  assert.equal(row.error, null);
  assert.match(row.issuer, /Pebble/i);
  assert.ok(row.nextRenewal, 'a next renewal is shown');
  const [notBefore, notAfter, next] = [Date.parse(row.notBefore), Date.parse(row.notAfter), Date.parse(row.nextRenewal)];
  assert.ok(notBefore < next && next < notAfter, `renewal ${row.nextRenewal} within ${row.notBefore}..${row.notAfter}`);
  const json = await runCli(['certs', '--json', '--socket', a.gw.socket]);
  assert.equal(json.code, 0, json.stderr);
  assert.deepEqual(JSON.parse(json.stdout).certificates.find((r: any) => r.host === 'shop.acme.test'), row);
  const table = await runCli(['certs', '--socket', a.gw.socket]);
  assert.match(table.stdout, /^shop\.acme\.test\s+acme\s+Pebble Intermediate/im);
  const redirected = await http({ port: a.httpPort }, { path: '/x', host: 'shop.acme.test' });
  assert.equal(redirected.status, 308);
  assert.equal(redirected.headers.location, `https://shop.acme.test:${a.tlsPort}/x`);

  // Verified handshakes against pebble's issuing root, over HTTP/1.1 and h2, reach the app.
  const h1 = await h1Tls(a.tlsPort, { servername: 'shop.acme.test', ca: a.root, path: '/headers' });
  assert.equal(h1.status, 200);
  assert.equal(h1.json().headers['x-forwarded-proto'], 'https');
  assert.ok(sameFingerprint(h1.fingerprint, row.fingerprint));
  const session = await h2Session(t, a.tlsPort, 'shop.acme.test', a.root);
  const h2 = await h2Request(session, { path: '/' });
  assert.equal(h2.json().app, 'shop');

  // The expiry metric on the control API.
  const metrics = parseMetrics((await http({ socketPath: a.gw.socket }, { path: '/metrics' })).body);
  const expiry = metrics.find((m) => m.name === 'berth_certificate_expiry_timestamp_seconds' && m.labels.host === 'shop.acme.test');
  assert.ok(expiry, 'berth_certificate_expiry_timestamp_seconds{host="shop.acme.test"}');
  assert.equal(expiry.value, Math.floor(notAfter / 1000));

  // Renewal at two thirds of pebble's short lifetime, validated again for real (pebble reuses no
  // authorization): new handshakes get the new certificate, the open h2 connection goes on.
  const renewed = await waitFor(
    async () => {
      const r = await certRow(a.gw, 'shop.acme.test');
      return r && !sameFingerprint(r.fingerprint, row.fingerprint) ? r : null;
    },
    { timeoutMs: Math.max(0, next - Date.now()) + 45_000, intervalMs: 500, message: 'the renewal' },
  );
  assert.equal(renewed.source, 'acme');
  assert.ok(Date.parse(renewed.notAfter) > notAfter);
  const after = await h1Tls(a.tlsPort, { servername: 'shop.acme.test', ca: a.root, path: '/' });
  assert.ok(sameFingerprint(after.fingerprint, renewed.fingerprint));
  assert.equal((await h2Request(session, { path: '/' })).status, 200, 'the connection opened before the renewal goes on');
  assert.ok(a.gw.logs.some((l) => l.msg === 'ACME certificate renewed' && l.host === 'shop.acme.test'), 'the renewal is logged');
});

test('TLS-ALPN-01 through the gateway: pebble validates on the TLS port (HTTP-01 could not: its port answers nothing); a host added by a config reload is ordered then', { skip }, async (t) => {
  const a = await acmeGateway(t, { challenge: 'tls-alpn-01', apps: { shop: { hosts: ['alpn.acme.test'] } }, closedHttp: true });
  const row = await issued(a.gw, 'alpn.acme.test');
  assert.equal(row.source, 'acme');
  assert.ok(row.nextRenewal);
  const res = await h1Tls(a.tlsPort, { servername: 'alpn.acme.test', ca: a.root, path: '/' });
  assert.equal(res.status, 200);
  assert.equal(res.json().app, 'shop');
  assert.ok(sameFingerprint(res.fingerprint, row.fingerprint));
  // The challenge certificate went only to pebble's acme-tls/1 handshakes; ordinary clients still get h2.
  const session = await h2Session(t, a.tlsPort, 'alpn.acme.test', a.root);
  assert.equal((await h2Request(session, { path: '/' })).status, 200);

  // A host that appears on a config reload is ordered then, and served without a restart.
  await a.rewrite({ shop: { hosts: ['alpn.acme.test', 'later.acme.test'] } });
  const reloaded = await runCli(['reload-config', '--socket', a.gw.socket]);
  assert.equal(reloaded.code, 0, reloaded.stderr);
  const later = await issued(a.gw, 'later.acme.test');
  assert.equal(later.source, 'acme');
  const res2 = await h1Tls(a.tlsPort, { servername: 'later.acme.test', ca: a.root, path: '/' });
  assert.equal(res2.json().app, 'shop');
  assert.ok(sameFingerprint(res2.fingerprint, later.fingerprint));
  assert.equal((await h2Request(session, { path: '/' })).status, 200, 'the open connection went on');
});

test('on-demand for a wildcard app: a name the ask URL allows is issued at its first handshake; a refused one gets no certificate', { skip }, async (t) => {
  const ask = await askServer(t, ['yes.wild.acme.test']);
  const a = await acmeGateway(t, { challenge: 'http-01', apps: { wild: { hosts: ['*.wild.acme.test'], https_redirect: true } }, ask: ask.url });
  // Nothing is ordered ahead of time for a wildcard host: names are only known at the handshake.
  assert.equal((await runCli(['certs', '--json', '--socket', a.gw.socket])).stdout.includes('wild.acme.test'), false);

  // The first handshake waits for the order (validated by pebble over the cleartext port), then is served.
  const first = await h1Tls(a.tlsPort, { servername: 'yes.wild.acme.test', ca: a.root, path: '/', timeoutMs: 60_000 });
  assert.equal(first.status, 200);
  assert.equal(first.json().app, 'wild');
  assert.ok(ask.asked.includes('yes.wild.acme.test'));
  const row = await certRow(a.gw, 'yes.wild.acme.test');
  assert.ok(row, 'berth certs lists the on-demand name');
  assert.equal(row.source, 'acme on-demand');
  assert.ok(row.nextRenewal);
  assert.ok(sameFingerprint(first.fingerprint, row.fingerprint));
  // Later handshakes are served from memory: the ask URL is not asked again.
  const asks = ask.asked.length;
  const session = await h2Session(t, a.tlsPort, 'yes.wild.acme.test', a.root);
  assert.equal((await h2Request(session, { path: '/' })).json().app, 'wild');
  assert.equal(ask.asked.length, asks);

  // A name the ask URL refuses: no order, and (no default certificate) the handshake is refused.
  const err = await refusedTls(t, a.tlsPort, { servername: 'no.wild.acme.test', ca: a.root });
  assert.ok(err, 'refused');
  assert.ok(ask.asked.includes('no.wild.acme.test'), 'the ask URL was asked');
  assert.equal(await certRow(a.gw, 'no.wild.acme.test'), undefined);
  // A name outside every app is never asked about.
  await refusedTls(t, a.tlsPort, { servername: 'elsewhere.test', ca: a.root });
  assert.ok(!ask.asked.includes('elsewhere.test'));

  // A config reload that routes the name to no ACME app any more: its certificate is no longer served,
  // listed or renewed, and it leaves the store.
  await a.rewrite({ other: { hosts: ['other.acme.test'] } });
  const reloaded = await runCli(['reload-config', '--socket', a.gw.socket]);
  assert.equal(reloaded.code, 0, reloaded.stderr);
  // The new app boots (a release, a process) before the test ends, so the cleanup meets a quiet gateway.
  await untilReady(a.gw);
  await waitFor(async () => (await certRow(a.gw, 'yes.wild.acme.test')) === undefined, { message: 'the on-demand name dropped' });
  // The gateway's log reaches us a moment after the API's answer.
  await waitFor(() => a.gw.logs.some((l) => l.host === 'yes.wild.acme.test' && /no longer served or renewed/.test(l.msg)), { message: 'the drop logged' });
});

/** Points `host` at `address` in pebble's DNS (pebble-challtestsrv): its validations go there from now on. */
async function resolveTo(pebble: Pebble, host: string, address: string): Promise<void> {
  const res = await fetch(`${pebble.dnsManagementUrl}/add-a`, { method: 'POST', body: JSON.stringify({ host: `${host}.`, addresses: [address] }) });
  assert.equal(res.status, 200, await res.text());
}

test('a renewal whose validation fails keeps the old certificate serving, and berth certs, berth status and the log report it', { skip }, async (t) => {
  const a = await acmeGateway(t, { challenge: 'http-01', apps: { shop: { hosts: ['shop.acme.test'] } }, validitySeconds: 30 });
  const row = await issued(a.gw, 'shop.acme.test');
  // From now on pebble validates shop.acme.test at 127.0.0.2, where nothing listens (the gateway is on
  // 127.0.0.1): a real failed validation, not a faked one.
  await resolveTo(a.pebble, 'shop.acme.test', '127.0.0.2');
  const failed = await waitFor(
    async () => {
      const r = await certRow(a.gw, 'shop.acme.test');
      return r?.error ? r : null;
    },
    { timeoutMs: Math.max(0, Date.parse(row.nextRenewal) - Date.now()) + 45_000, intervalMs: 500, message: 'the failed renewal reported' },
  );
  assert.ok(sameFingerprint(failed.fingerprint, row.fingerprint), 'berth certs still shows the old certificate');
  assert.ok(Date.parse(failed.nextRenewal) > Date.now(), 'a retry is scheduled');
  const served = await h1Tls(a.tlsPort, { servername: 'shop.acme.test', ca: a.root, path: '/' });
  assert.equal(served.status, 200);
  assert.ok(sameFingerprint(served.fingerprint, row.fingerprint), 'the old certificate keeps serving');
  const status = await runCli(['status', '--socket', a.gw.socket]);
  assert.match(status.stdout, /^! certificate for shop\.acme\.test \(acme\): .+/m);
  assert.ok(a.gw.logs.some((l) => l.msg === 'ACME renewal failed, serving the previous certificate' && l.host === 'shop.acme.test'), 'logged');
});

test('a first order that fails validation is reported by berth certs and berth status; the gateway serves on', { skip }, async (t) => {
  // HTTP-01 validated on a port nothing answers on: the order cannot succeed.
  const a = await acmeGateway(t, { challenge: 'http-01', apps: { shop: { hosts: ['fail.acme.test'] } }, closedHttp: true });
  await waitFor(() => a.gw.logs.some((l) => l.msg === 'ACME order failed' && l.host === 'fail.acme.test'), { timeoutMs: 60_000, message: 'the failed order logged' });
  assert.equal((await http({ port: a.httpPort }, { path: '/', host: 'fail.acme.test' })).json().app, 'shop', 'cleartext still serves');
  const status = await runCli(['status', '--socket', a.gw.socket]);
  assert.match(status.stdout, /^! certificate for fail\.acme\.test \(acme\): .+/m, 'berth status names the host with no certificate');
  const row = await certRow(a.gw, 'fail.acme.test');
  assert.ok(row?.error, 'berth certs lists the host and its error');
  assert.equal(row.source, 'acme');
  assert.equal(row.fingerprint, '', 'no certificate');
  assert.ok(Date.parse(row.nextRenewal) > Date.now(), 'the retry time is shown');
  const table = await runCli(['certs', '--socket', a.gw.socket]);
  assert.match(table.stdout, /^fail\.acme\.test\s+acme\s+-\s+-\s+\S+\s+error: /m);
  // Nothing is served for it, and no expiry metric claims a certificate.
  await refusedTls(t, a.tlsPort, { servername: 'fail.acme.test', ca: a.root });
  const metrics = parseMetrics((await http({ socketPath: a.gw.socket }, { path: '/metrics' })).body);
  assert.equal(metrics.find((m) => m.name === 'berth_certificate_expiry_timestamp_seconds' && m.labels.host === 'fail.acme.test'), undefined);
});
