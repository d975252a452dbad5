/**
 * ACME against a real ACME server: Debian's pebble validates HTTP-01 and TLS-ALPN-01 against the test's
 * own challenge servers on 127.0.0.1, which stand in for berth's listeners until the proxy is wired: an
 * HTTP server answering `/.well-known/acme-challenge/` from `httpChallenge`, and a TLS server built from
 * the CertificateStore's options and the HandshakeRouter. No validation is faked
 * (PEBBLE_VA_ALWAYS_VALID is never set); certificates are checked with real handshakes against pebble's
 * issuing root.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as connectHttp2, createSecureServer, type Http2SecureServer } from 'node:http2';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { pino } from 'pino';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { CertificateStore } from '../../src/tls/certificate-store.ts';
import { HandshakeRouter } from '../../src/tls/handshake-router.ts';
import { AcmeManager, type AcmeManagerOptions } from '../../src/tls/acme/acme-manager.ts';
import { LogSink, tempDir } from '../helpers/gateway.ts';
import { refusedTls } from './tls-client.ts';
import { freePort, pebbleMissing, startPebble, type Pebble } from './pebble.ts';

const missing = pebbleMissing();
// CI installs pebble (.ci/run): there a missing pebble is a failure, not a skip.
const skip = missing !== null && process.env.CI !== 'true' ? missing : false;
if (missing && process.env.CI === 'true') throw new Error(`CI=true but ${missing}`);

interface Bench {
  dir: string;
  pebble: Pebble;
  root: string;
  store: SqliteStore;
  certificates: CertificateStore;
  tlsPort: number;
  /** Managers whose challenges the servers answer. */
  managers: Set<AcmeManager>;
  /** Set to make the HTTP challenge server answer a wrong key authorization. */
  breakHttp: { on: boolean };
  httpRequests: string[];
  /** A new manager on the bench's store; stopped after the test. */
  manager(t: TestContext, over?: Partial<AcmeManagerOptions>): { acme: AcmeManager; sink: LogSink };
  /** A verified handshake for `host`: the served certificate's fingerprint. */
  served(t: TestContext, host: string): Promise<string>;
}

/** Pebble, a store, a CertificateStore, and the HTTP and TLS challenge servers the proxy will become. */
async function bench(t: TestContext, opts: { validitySeconds?: number; onDemandFor?: (name: string) => boolean } = {}): Promise<Bench> {
  const dir = await tempDir(t, 'berth-acme-');
  const managers = new Set<AcmeManager>();
  const breakHttp = { on: false };
  const httpRequests: string[] = [];

  const http: HttpServer = createHttpServer((req, res) => {
    httpRequests.push(req.url ?? '');
    let answer: string | null = null;
    for (const acme of managers) answer ??= acme.answerHttp(req.url ?? '/');
    if (answer === null) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/plain' }).end(breakHttp.on ? `${answer}-wrong` : answer);
  });
  const httpPort = await listen(t, http);

  const certificates = new CertificateStore({ sources: [], directory: null, defaultCertificate: null }, { logger: pino({ level: 'silent' }), watch: false });
  await certificates.start();
  t.after(() => certificates.stop());
  const acmeFacade = {
    alpnChallengeContext: (name: string) => {
      for (const acme of managers) {
        const ctx = acme.alpnChallengeContext(name);
        if (ctx) return ctx;
      }
      return null;
    },
    onDemand: async (name: string) => {
      for (const acme of managers) if (await acme.onDemand(name)) return true;
      return false;
    },
  };
  // The listener the proxy will use: h2 and http/1.1 by ALPN, plus acme-tls/1 through the router.
  const router = new HandshakeRouter(certificates, { protocols: ['h2', 'http/1.1'], acme: acmeFacade, onDemandFor: opts.onDemandFor });
  const tls = createSecureServer({ ...certificates.serverOptions(), allowHTTP1: true, ALPNCallback: router.ALPNCallback, SNICallback: router.SNICallback }, (req, res) => {
    res.end(`hello ${req.headers[':authority'] ?? req.headers.host}`);
  });
  // A TLS-ALPN-01 validation ends after the handshake; http2 reports its protocol as unknown.
  tls.on('unknownProtocol', (socket) => socket.destroy());
  certificates.attach(tls);
  const tlsPort = await listen(t, tls);

  const pebble = await startPebble(t, { dir, httpPort, tlsPort, validitySeconds: opts.validitySeconds });
  const root = await pebble.issuingRoot();
  const store = new SqliteStore({ path: join(dir, 'state', 'berth.db'), migrations: 'upgrade', resetState: false, logger: pino({ level: 'silent' }) });
  await store.open();
  t.after(() => store.close());

  return {
    dir, pebble, root, store, certificates, tlsPort, managers, breakHttp, httpRequests,
    manager(t2, over = {}) {
      const sink = new LogSink();
      const acme = new AcmeManager({
        directoryUrl: pebble.directoryUrl, caRoot: pebble.caRoot, email: 'ops@berth.test', store, certificates,
        logger: pino({ level: 'debug' }, sink), pollMinMs: 100, ...over,
      });
      managers.add(acme);
      t2.after(async () => {
        await acme.stop();
        managers.delete(acme);
        // Keys reach the store and the TLS layer, never the log.
        for (const line of sink.lines) assert.ok(!JSON.stringify(line).includes('PRIVATE KEY'), `a log line quotes a key: ${line.msg}`);
      });
      return { acme, sink };
    },
    async served(_t2, host) {
      return served(tlsPort, host, root);
    },
  };
}

/** A verified HTTPS request for `host` over HTTP/1.1 and over h2: the served certificate's fingerprint. */
async function served(port: number, host: string, root: string): Promise<string> {
  const h1 = await new Promise<string>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, servername: host, headers: { host }, ca: root, agent: false }, (res) => {
      const socket = res.socket as TLSSocket;
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => {
        if (body === `hello ${host}`) resolve(fingerprint);
        else reject(new Error(`unexpected body ${body}`));
      });
    });
    req.on('error', reject).end();
  });
  const session = connectHttp2(`https://${host}:${port}`, { ca: root, servername: host, createConnection: () => tlsConnect({ host: '127.0.0.1', port, servername: host, ca: root, ALPNProtocols: ['h2'] }) });
  try {
    const body = await new Promise<string>((resolve, reject) => {
      session.on('error', reject);
      const stream = session.request({ ':path': '/' });
      let data = '';
      stream.setEncoding('utf8').on('data', (d: string) => (data += d)).on('end', () => resolve(data)).on('error', reject);
    });
    assert.equal(body, `hello ${host}:${port}`);
    assert.equal((session.socket as TLSSocket).getPeerCertificate().fingerprint256, h1, 'h2 gets the same certificate');
  } finally {
    session.close();
  }
  return h1;
}

async function listen(t: TestContext, server: HttpServer | Http2SecureServer): Promise<number> {
  const port = await freePort();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  return port;
}

async function until<T>(what: string, probe: () => T | undefined | null | false, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('HTTP-01: a host is issued at start; certificate and account are kept in the store and reused by the next manager', { skip }, async (t) => {
  const b = await bench(t);
  const first = b.manager(t);
  await first.acme.start();
  await first.acme.ensure(['shop.test']);

  const [row] = first.acme.status();
  assert.equal(row.host, 'shop.test');
  assert.equal(row.state, 'valid', `status: ${JSON.stringify(row)}`);
  assert.equal(row.lastError, null);
  assert.ok(Date.parse(row.nextRenewal!) > Date.now(), 'a renewal is scheduled');
  assert.ok(b.httpRequests.some((u) => u.startsWith('/.well-known/acme-challenge/')), 'pebble fetched the HTTP-01 answer');
  const fingerprint = await b.served(t, 'shop.test');

  const stored = (await b.store.getCertificate('shop.test'))!;
  assert.equal(stored.directory, b.pebble.directoryUrl);
  assert.match(stored.keyPem, /PRIVATE KEY/);
  const account = (await b.store.getAcmeAccount(b.pebble.directoryUrl))!;
  assert.match(account.url ?? '', /^https:\/\/localhost:\d+\//);
  assert.equal(account.email, 'ops@berth.test');
  assert.deepEqual(first.acme.expirySeconds(), [{ host: 'shop.test', seconds: Math.floor(Date.parse(stored.notAfter) / 1000) }]);
  const described = b.certificates.describe().find((r) => r.host === 'shop.test')!;
  assert.equal(described.source, 'acme');
  assert.equal(described.nextRenewal, row.nextRenewal);
  assert.match(described.issuer, /Pebble/);
  await first.acme.stop();
  b.managers.delete(first.acme);
  b.certificates.setManaged('shop.test', null);

  // A restart: the certificate comes from the store, no order is placed, and the account is the same.
  const requestsBefore = b.httpRequests.length;
  const second = b.manager(t);
  await second.acme.start();
  await second.acme.ensure(['shop.test']);
  assert.equal(await b.served(t, 'shop.test'), fingerprint);
  assert.equal(b.httpRequests.length, requestsBefore, 'no challenge was fetched: nothing was ordered');
  assert.ok(second.sink.lines.some((l) => l.msg === 'ACME certificate loaded from the store'));
  assert.ok(!second.sink.lines.some((l) => l.msg === 'ACME order started'));

  // A new host on the same store orders with the same account key.
  await second.acme.ensure(['shop.test', 'www.shop.test']);
  assert.deepEqual(second.acme.status().map((r) => [r.host, r.state]), [['shop.test', 'valid'], ['www.shop.test', 'valid']]);
  const after = (await b.store.getAcmeAccount(b.pebble.directoryUrl))!;
  assert.equal(after.keyPem, account.keyPem);
  assert.equal(after.url, account.url, 'the same account at the CA');
  assert.ok(!second.sink.lines.some((l) => l.msg === 'ACME account created'));

  // A host dropped from the config is no longer served.
  await second.acme.ensure(['www.shop.test']);
  assert.equal(b.certificates.serves('shop.test'), false);
  await refusedTls(t, b.tlsPort, { servername: 'shop.test' });

  // A changed email is an update of the same account, at its next order.
  const third = b.manager(t, { email: 'new@berth.test' });
  await third.acme.start();
  await third.acme.ensure(['mail.shop.test']);
  assert.equal(third.acme.status()[0].state, 'valid');
  const updated = (await b.store.getAcmeAccount(b.pebble.directoryUrl))!;
  assert.deepEqual([updated.email, updated.url, updated.keyPem, updated.createdAt], ['new@berth.test', account.url, account.keyPem, account.createdAt]);
});

test('renewal at two thirds of a short lifetime: a failed validation keeps the old certificate and reports it; the retry renews', { skip }, async (t) => {
  // Pebble issues 15-second certificates here: renewal is due 10 s after issuance.
  const b = await bench(t, { validitySeconds: 15 });
  const { acme, sink } = b.manager(t, { retry: { minMs: 1_000, maxMs: 2_000 } });
  await acme.start();
  await acme.ensure(['renew.test']);
  const issued = acme.status()[0];
  assert.equal(issued.state, 'valid', JSON.stringify(issued));
  const lifetime = Date.parse(issued.notAfter!) - Date.parse(issued.notBefore!);
  assert.ok(lifetime <= 16_000, `pebble honoured the short validity (${lifetime} ms)`);
  const due = Date.parse(issued.notBefore!) + (lifetime * 2) / 3;
  assert.ok(Math.abs(Date.parse(issued.nextRenewal!) - due) < 1_000, 'renewal is due at two thirds of the lifetime');
  const oldFingerprint = await b.served(t, 'renew.test');

  // The challenge server now answers a wrong key authorization: pebble refuses the renewal.
  b.breakHttp.on = true;
  const failed = await until('a failed renewal', () => acme.status().find((r) => r.failures > 0), 20_000);
  t.diagnostic(`renewal error: ${failed.lastError}`);
  assert.match(failed.lastError ?? '', /renew\.test/);
  assert.match(failed.lastError ?? '', /key ?authorization|unauthorized|incorrect/i);
  assert.equal(failed.state, 'valid');
  assert.equal(failed.notAfter, issued.notAfter, 'still the old certificate');
  assert.equal(await b.served(t, 'renew.test'), oldFingerprint, 'the old certificate is still served');
  assert.ok(Date.parse(failed.nextRenewal!) > Date.parse(failed.lastErrorAt!), 'a retry is scheduled');
  const row = b.certificates.describe().find((r) => r.host === 'renew.test')!;
  assert.match(row.error ?? '', /renew\.test/, 'berth certs shows the error');
  assert.ok(sink.lines.some((l) => l.msg === 'ACME renewal failed, serving the previous certificate' && l.level === 50));

  // Fixed: the next retry (backoff 0.5-2 s) renews, and new handshakes get the new certificate.
  b.breakHttp.on = false;
  const renewed = await until('a renewed certificate', () => acme.status().find((r) => r.notAfter !== issued.notAfter && r.failures === 0), 20_000);
  assert.equal(renewed.lastError, null);
  assert.notEqual(await b.served(t, 'renew.test'), oldFingerprint);
  assert.equal((await b.store.getCertificate('renew.test'))!.notAfter, renewed.notAfter, 'the renewal is stored');
  assert.ok(sink.lines.some((l) => l.msg === 'ACME certificate renewed'));
});

test('a first order that fails validation reports the error, serves nothing, and retries with backoff', { skip }, async (t) => {
  const b = await bench(t);
  b.breakHttp.on = true;
  const { acme } = b.manager(t, { retry: { minMs: 60_000, maxMs: 60_000 } });
  await acme.start();
  await acme.ensure(['broken.test']);
  const [row] = acme.status();
  assert.equal(row.state, 'pending');
  assert.equal(row.failures, 1);
  t.diagnostic(`order error: ${row.lastError}`);
  assert.match(row.lastError ?? '', /broken\.test/);
  const wait = Date.parse(row.nextRenewal!) - Date.parse(row.lastErrorAt!);
  assert.ok(wait >= 30_000 && wait <= 60_000, `the retry waits 30-60 s (jittered), not ${wait} ms`);
  assert.deepEqual(acme.expirySeconds(), []);
  await refusedTls(t, b.tlsPort, { servername: 'broken.test' });
});

test('TLS-ALPN-01: pebble validates on the TLS port through the handshake router', { skip }, async (t) => {
  const b = await bench(t);
  const { acme } = b.manager(t, { challenge: 'tls-alpn-01' });
  await acme.start();
  await acme.ensure(['alpn.test']);
  const [row] = acme.status();
  assert.equal(row.state, 'valid', JSON.stringify(row));
  assert.deepEqual(b.httpRequests, [], 'nothing was asked on the HTTP port');
  await b.served(t, 'alpn.test');
  // Once issued no challenge is pending: a client offering acme-tls/1 gets no challenge certificate.
  assert.equal(acme.alpnChallengeContext('alpn.test'), null);
});

test('on-demand: the ask URL allows or refuses a name; refusals are remembered; issuance is rate-limited', { skip }, async (t) => {
  const b = await bench(t, { onDemandFor: (name) => name.endsWith('.apps.test') });
  const asked: string[] = [];
  const ask = createHttpServer((req, res) => {
    const domain = new URL(req.url ?? '/', 'http://x').searchParams.get('domain') ?? '';
    asked.push(domain);
    res.writeHead(domain.startsWith('evil.') ? 403 : 200).end();
  });
  const askPort = await listen(t, ask);
  const { acme, sink } = b.manager(t, { ask: `http://127.0.0.1:${askPort}/check`, onDemand: { perMinute: 2, inFlight: 2 } });
  await acme.start();

  // Allowed: the first handshake waits for the order and gets the new certificate.
  await b.served(t, 'a.apps.test');
  assert.deepEqual(asked, ['a.apps.test']);
  assert.deepEqual(acme.status().map((r) => [r.host, r.source, r.state]), [['a.apps.test', 'acme on-demand', 'valid']]);
  assert.equal((await b.store.getCertificate('a.apps.test'))!.onDemand, true);
  await b.served(t, 'a.apps.test');
  assert.deepEqual(asked, ['a.apps.test'], 'a served name is not asked about again');

  // Refused by the ask URL: the handshake fails, and the refusal is remembered.
  await refusedTls(t, b.tlsPort, { servername: 'evil.apps.test' });
  await refusedTls(t, b.tlsPort, { servername: 'evil.apps.test' });
  assert.deepEqual(asked, ['a.apps.test', 'evil.apps.test'], 'asked once, then refused from memory');
  assert.ok(sink.lines.some((l) => l.msg === 'on-demand certificate refused' && l.reason === 'ask-refused'));
  assert.equal(await acme.onDemand('not a name'), false);
  assert.equal(await acme.onDemand('10.0.0.1'), false);

  // Outside the wildcard apps nothing is ordered or asked.
  await refusedTls(t, b.tlsPort, { servername: 'other.test' });
  assert.equal(asked.length, 2);

  // Two orders a minute: the second name is issued, the third is refused as rate-limited.
  await b.served(t, 'b.apps.test');
  await refusedTls(t, b.tlsPort, { servername: 'c.apps.test' });
  assert.ok(sink.lines.some((l) => l.msg === 'on-demand certificate refused' && l.reason === 'rate-limited' && l.host === 'c.apps.test'));

  // A flood of handshakes for one new name shares one order at most.
  const before = sink.lines.filter((l) => l.msg === 'ACME order started').length;
  const flood = await Promise.all(Array.from({ length: 5 }, () => acme.onDemand('d.apps.test')));
  assert.deepEqual(flood, [false, false, false, false, false], 'still rate-limited');
  assert.equal(sink.lines.filter((l) => l.msg === 'ACME order started').length, before);

  // After a restart the on-demand certificates come from the store without asking.
  await acme.stop();
  b.managers.delete(acme);
  const next = b.manager(t, { ask: `http://127.0.0.1:${askPort}/check` });
  await next.acme.start();
  assert.deepEqual(next.acme.status().map((r) => r.host), ['a.apps.test', 'b.apps.test']);
  const askedBefore = asked.length;
  await b.served(t, 'b.apps.test');
  assert.equal(asked.length, askedBefore);
});

/** A clock the test moves: timers fire only when `advance` passes their time, in order. */
class TestClock {
  offset = 0;
  timers: { at: number; fn: () => void; id: number }[] = [];
  #ids = 0;
  now = (): number => Date.now() + this.offset;
  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = ++this.#ids;
    this.timers.push({ at: this.now() + ms, fn, id });
    return id;
  };
  clearTimeout = (id: unknown): void => {
    this.timers = this.timers.filter((timer) => timer.id !== id);
  };
  advance(ms: number): void {
    const target = this.now() + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const next = this.timers[0];
      if (!next || next.at > target) break;
      this.timers.shift();
      this.offset += Math.max(0, next.at - this.now());
      next.fn();
    }
    this.offset += Math.max(0, target - this.now());
  }
}

test('renewal follows the injected clock across pebble\'s five-year lifetime: nothing before two thirds, an order after', { skip }, async (t) => {
  const b = await bench(t);
  const clock = new TestClock();
  const { acme, sink } = b.manager(t, { clock });
  await acme.start();
  await acme.ensure(['clock.test']);
  const issued = acme.status()[0];
  assert.equal(issued.state, 'valid');
  const due = Date.parse(issued.nextRenewal!);
  assert.ok(due - clock.now() > 3 * 365 * 86_400_000, 'renewal is years away');
  assert.equal(clock.timers.length, 1);
  assert.ok(clock.timers[0].at - clock.now() <= 2 ** 31 - 1, 'a far renewal is armed in steps node can time');

  clock.advance(due - clock.now() - 60_000);
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(!sink.lines.some((l) => l.msg === 'ACME renewal started'), 'nothing is ordered a minute before it is due');
  assert.equal(clock.timers.length, 1, 'still one timer, re-armed');

  const before = await b.served(t, 'clock.test');
  clock.advance(120_000);
  // Pebble's times have whole seconds, so a renewal within the second has the same notAfter: the log and
  // the served certificate tell it apart.
  await until('the renewal', () => sink.lines.some((l) => l.msg === 'ACME certificate renewed'));
  const renewed = acme.status()[0];
  assert.equal(renewed.lastError, null);
  assert.ok(Date.parse(renewed.nextRenewal!) >= due, 'the next renewal is scheduled from the new certificate');
  assert.equal(clock.timers.length, 1);
  assert.notEqual(await b.served(t, 'clock.test'), before, 'new handshakes get the new certificate');
  assert.equal(sink.lines.filter((l) => l.msg === 'ACME renewal started').length, 1);
});
