/**
 * The certificate store over real handshakes: certificates made by openssl in the test, a real TLS
 * listener on 127.0.0.1:0 built from the store's options, and node's TLS client.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { get as httpsGet } from 'node:https';
import { connect as connectHttp2, createSecureServer } from 'node:http2';
import { checkServerIdentity, createServer, type TLSSocket } from 'node:tls';
import { chmod, copyFile, mkdir, readFile, rename, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { ConfigError } from '../../src/lib/errors.ts';
import { CertificateStore } from '../../src/tls/certificate-store.ts';
import { Certificate } from '../../src/tls/certificate.ts';
import { TicketKeys } from '../../src/tls/ticket-keys.ts';
import type { CertificateInput, CertificateReload } from '../../src/tls/types.ts';
import { LogSink, tempDir } from '../helpers/gateway.ts';
import { createCa, issueCertificate, type TestCa, type TestCertificate } from '../helpers/certificates.ts';
import { connectTls, refusedTls, startEchoServer } from './tls-client.ts';

const WATCH = { debounceMs: 50 };

function newStore(t: TestContext, input: CertificateInput, options: { watch?: boolean; ticketKeys?: TicketKeys } = {}): { store: CertificateStore; sink: LogSink } {
  const sink = new LogSink();
  const store = new CertificateStore(input, { logger: pino({ level: 'debug' }, sink), watch: options.watch ?? false, ticketKeys: options.ticketKeys, ...WATCH });
  t.after(() => store.stop());
  return { store, sink };
}

function input(partial: Partial<CertificateInput>): CertificateInput {
  return { sources: [], directory: null, defaultCertificate: null, ...partial };
}

function source(from: string, hosts: string[], cert: TestCertificate) {
  return { from, hosts, files: { certificate: cert.certificate, key: cert.key } };
}

/** Writes a new pair over `target` the way an editor or a deploy tool does: temp files, then rename. */
async function renameIntoPlace(from: TestCertificate, target: { certificate: string; key: string }): Promise<void> {
  await copyFile(from.key, `${target.key}.tmp`);
  await copyFile(from.certificate, `${target.certificate}.tmp`);
  await rename(`${target.key}.tmp`, target.key);
  await rename(`${target.certificate}.tmp`, target.certificate);
}

/** The next reload event in which `source` changed or failed. */
function nextReload(store: CertificateStore, source: string): Promise<CertificateReload> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reload of ${source} within 10 s`)), 10_000);
    const onReload = (r: CertificateReload) => {
      if (!r.changed.includes(source) && !r.problems.some((p) => p.source === source)) return;
      clearTimeout(timer);
      store.off('reload', onReload);
      resolve(r);
    };
    store.on('reload', onReload);
  });
}

/** Waits until a handshake for `host` would get the certificate with this fingerprint. */
async function served(store: CertificateStore, host: string, fingerprint: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (store.describe().find((r) => r.host === host)?.fingerprint !== fingerprint) {
    if (Date.now() > deadline) throw new Error(`${host} is not served ${fingerprint} within 10 s: ${JSON.stringify(store.describe())}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function fixture(t: TestContext): Promise<{ dir: string; ca: TestCa }> {
  const dir = await tempDir(t, 'berth-tls-');
  return { dir, ca: await createCa(join(dir, 'ca')) };
}

test('SNI picks each host\'s certificate, a one-label wildcard, the directory, and the default for the rest', async (t) => {
  const { dir, ca } = await fixture(t);
  const shop = await issueCertificate(ca, ['shop.test', 'www.shop.test']);
  const wild = await issueCertificate(ca, ['*.apps.test']);
  const fallback = await issueCertificate(ca, ['default.test']);
  const certs = join(dir, 'certs');
  await mkdir(join(certs, 'blog.test'), { recursive: true });
  // The three directory layouts: name.crt/.key, mkcert's name.pem/name-key.pem, certbot's name/fullchain.pem.
  const api = await issueCertificate(ca, ['api.apps.test'], { certificate: join(certs, 'api.apps.test.crt'), key: join(certs, 'api.apps.test.key') });
  const dirWild = await issueCertificate(ca, ['*.dir.test'], { certificate: join(certs, '_wildcard.dir.test.pem'), key: join(certs, '_wildcard.dir.test-key.pem') });
  const blog = await issueCertificate(ca, ['blog.test'], { certificate: join(certs, 'blog.test', 'fullchain.pem'), key: join(certs, 'blog.test', 'privkey.pem'), chain: true });
  await writeFile(join(certs, 'README'), 'not a certificate\n');

  const { store } = newStore(t, input({
    sources: [source('apps.shop.tls', ['shop.test', 'www.shop.test'], shop), source('apps.wild.tls', ['*.apps.test'], wild)],
    directory: certs,
    defaultCertificate: source('tls.default_certificate', [], fallback),
  }));
  await store.start();
  const { port } = await startEchoServer(t, store);

  const served = async (servername: string | undefined) => (await connectTls(t, port, { servername, ca: ca.pem })).fingerprint;
  assert.equal(await served('shop.test'), shop.fingerprint256);
  assert.equal(await served('WWW.Shop.Test.'), shop.fingerprint256, 'case and a trailing dot do not matter');
  assert.equal(await served('one.apps.test'), wild.fingerprint256);
  assert.equal(await served('api.apps.test'), api.fingerprint256, 'an exact name in the directory beats a configured wildcard');
  assert.equal(await served('a.b.apps.test'), fallback.fingerprint256, 'a wildcard covers one label only');
  assert.equal(await served('apps.test'), fallback.fingerprint256);
  assert.equal(await served('blog.test'), blog.fingerprint256);
  assert.equal(await served('x.dir.test'), dirWild.fingerprint256);
  assert.equal(await served('unknown.test'), fallback.fingerprint256);
  // Connecting to an IP address sends no SNI at all.
  assert.equal(await served(undefined), fallback.fingerprint256);

  // With the real identity check, a client trusting only the CA accepts the certificate it is given.
  const strict = await connectTls(t, port, { servername: 'one.apps.test', ca: ca.pem, rejectUnauthorized: true, checkServerIdentity });
  assert.equal(strict.authorized, true);
  await strict.ping();

  const rows = store.describe();
  assert.deepEqual(
    rows.map((r) => [r.host, r.source]),
    [
      ['api.apps.test', 'tls.directory'],
      ['blog.test', 'tls.directory'],
      ['shop.test', 'apps.shop.tls'],
      ['www.shop.test', 'apps.shop.tls'],
      ['*.apps.test', 'apps.wild.tls'],
      ['*.dir.test', 'tls.directory'],
      ['*', 'tls.default_certificate'],
    ],
  );
  const shopRow = rows.find((r) => r.host === 'shop.test')!;
  assert.match(shopRow.issuer, /CN=berth test CA/);
  assert.equal(shopRow.nextRenewal, null);
  assert.equal(shopRow.covered, true);
  assert.equal(shopRow.error, null);
  assert.equal(shopRow.fingerprint, shop.fingerprint256);
  assert.ok(Date.parse(shopRow.notAfter) > Date.now() + 29 * 86_400_000);
  assert.deepEqual(store.errors(), []);
});

test('with no default certificate, an unknown name and a client without SNI are refused with an alert', async (t) => {
  const { ca } = await fixture(t);
  const shop = await issueCertificate(ca, ['shop.test']);
  const { store } = newStore(t, input({ sources: [source('apps.shop.tls', ['shop.test'], shop)] }));
  await store.start();
  const { port } = await startEchoServer(t, store);

  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, shop.fingerprint256);
  for (const servername of ['unknown.test', undefined]) {
    const err = await refusedTls(t, port, { servername, ca: ca.pem });
    assert.match(String(err.code), /^ERR_SSL_.*ALERT/, `${servername}: ${err.code} ${err.message}`);
  }
  assert.equal(store.select('unknown.test'), null);
  assert.equal(store.select(null), null);
});

test('TLS 1.0 and 1.1 are refused; 1.2 and 1.3 are served', async (t) => {
  const { ca } = await fixture(t);
  const shop = await issueCertificate(ca, ['shop.test']);
  const { store } = newStore(t, input({ sources: [source('apps.shop.tls', ['shop.test'], shop)] }));
  await store.start();
  const { port } = await startEchoServer(t, store);
  // OpenSSL only speaks TLS 1.0/1.1 at security level 0; the control server below shows this client can.
  const old = { ciphers: 'DEFAULT@SECLEVEL=0' };

  const control = createServer({ cert: await readFile(shop.certificate), key: await readFile(shop.key), minVersion: 'TLSv1', ...old }, (s) => s.end());
  control.listen(0, '127.0.0.1');
  await once(control, 'listening');
  t.after(() => control.close());
  const controlPort = (control.address() as { port: number }).port;

  for (const version of ['TLSv1', 'TLSv1.1'] as const) {
    const ok = await connectTls(t, controlPort, { servername: 'shop.test', ca: ca.pem, minVersion: version, maxVersion: version, ...old });
    assert.equal(ok.protocol, version, 'the client can speak it');
    const err = await refusedTls(t, port, { servername: 'shop.test', ca: ca.pem, minVersion: version, maxVersion: version, ...old });
    assert.match(String(err.code), /PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL/, `${version}: ${err.code} ${err.message}`);
  }
  for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
    const ok = await connectTls(t, port, { servername: 'shop.test', ca: ca.pem, minVersion: version, maxVersion: version });
    assert.equal(ok.protocol, version);
    await ok.ping();
  }
});

test('files renamed into place serve new handshakes while an open connection keeps its certificate', async (t) => {
  const { dir, ca } = await fixture(t);
  const live = { certificate: join(dir, 'site', 'shop.crt'), key: join(dir, 'site', 'shop.key') };
  await mkdir(join(dir, 'site'));
  const first = await issueCertificate(ca, ['shop.test'], live);
  const { store, sink } = newStore(t, input({ sources: [{ from: 'apps.shop.tls', hosts: ['shop.test'], files: live }] }), { watch: true });
  await store.start();
  const { port } = await startEchoServer(t, store);
  assert.ok(store.watchedDirectories.includes(join(dir, 'site')));

  const open = await connectTls(t, port, { servername: 'shop.test', ca: ca.pem });
  assert.equal(open.fingerprint, first.fingerprint256);
  await open.ping();

  const second = await issueCertificate(ca, ['shop.test']);
  await renameIntoPlace(second, live);
  await served(store, 'shop.test', second.fingerprint256);
  assert.deepEqual(store.errors(), []);

  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, second.fingerprint256);
  await open.ping();
  assert.equal(open.socket.getPeerCertificate().fingerprint256, first.fingerprint256, 'the open connection kept its certificate');
  assert.ok(sink.lines.some((l) => l.msg === 'certificate loaded' && l.fingerprint === second.fingerprint256));
});

test('an atomic symlink swap (certbot, Kubernetes) in the certificate directory is picked up', async (t) => {
  const { dir, ca } = await fixture(t);
  const certs = join(dir, 'live');
  const archive = join(dir, 'archive', 'shop.test');
  await mkdir(join(certs, 'shop.test'), { recursive: true });
  await mkdir(archive, { recursive: true });
  const one = await issueCertificate(ca, ['shop.test'], { certificate: join(archive, 'fullchain1.pem'), key: join(archive, 'privkey1.pem'), chain: true });
  await symlink('../../archive/shop.test/fullchain1.pem', join(certs, 'shop.test', 'fullchain.pem'));
  await symlink('../../archive/shop.test/privkey1.pem', join(certs, 'shop.test', 'privkey.pem'));
  const { store } = newStore(t, input({ directory: certs }), { watch: true });
  await store.start();
  const { port } = await startEchoServer(t, store);
  const open = await connectTls(t, port, { servername: 'shop.test', ca: ca.pem });
  assert.equal(open.fingerprint, one.fingerprint256);

  const two = await issueCertificate(ca, ['shop.test'], { certificate: join(archive, 'fullchain2.pem'), key: join(archive, 'privkey2.pem'), chain: true });
  // certbot's way: a new link beside the old one, renamed over it.
  for (const [name, target] of [['privkey.pem', 'privkey2.pem'], ['fullchain.pem', 'fullchain2.pem']]) {
    await symlink(`../../archive/shop.test/${target}`, join(certs, 'shop.test', `${name}.new`));
    await rename(join(certs, 'shop.test', `${name}.new`), join(certs, 'shop.test', name));
  }
  await served(store, 'shop.test', two.fingerprint256);
  assert.deepEqual(store.errors(), []);
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, two.fingerprint256);
  await open.ping();
});

test('a broken replacement keeps the previous certificate and is reported until it is fixed', async (t) => {
  const { dir, ca } = await fixture(t);
  const live = { certificate: join(dir, 'shop.crt'), key: join(dir, 'shop.key') };
  const good = await issueCertificate(ca, ['shop.test'], live);
  const { store, sink } = newStore(t, input({ sources: [{ from: 'apps.shop.tls', hosts: ['shop.test'], files: live }] }), { watch: true });
  await store.start();
  const { port } = await startEchoServer(t, store);

  // A truncated certificate.
  let reloaded = nextReload(store, 'apps.shop.tls');
  await writeFile(`${live.certificate}.tmp`, (await readFile(live.certificate, 'utf8')).slice(0, 200));
  await rename(`${live.certificate}.tmp`, live.certificate);
  let result = await reloaded;
  assert.deepEqual(result.changed, []);
  assert.equal(result.problems[0].source, 'apps.shop.tls');
  assert.equal(result.problems[0].path, live.certificate);
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, good.fingerprint256);
  assert.equal(store.errors().length, 1);
  assert.equal(store.describe()[0].error, store.errors()[0].message);
  assert.ok(sink.lines.some((l) => l.msg === 'certificate not reloaded, serving the previous one' && l.path === live.certificate));

  // A valid certificate whose key was not replaced with it.
  const other = await issueCertificate(ca, ['shop.test']);
  reloaded = nextReload(store, 'apps.shop.tls');
  await copyFile(other.certificate, `${live.certificate}.tmp`);
  await rename(`${live.certificate}.tmp`, live.certificate);
  result = await reloaded;
  assert.match(result.problems[0].message, /does not match/);
  assert.equal(result.problems[0].path, live.key);
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, good.fingerprint256);

  // The matching key arrives: served, and the problem is gone.
  reloaded = nextReload(store, 'apps.shop.tls');
  await copyFile(other.key, `${live.key}.tmp`);
  await rename(`${live.key}.tmp`, live.key);
  result = await reloaded;
  assert.deepEqual(result.problems, []);
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, other.fingerprint256);
  assert.deepEqual(store.errors(), []);
  assert.equal(store.describe()[0].error, null);
});

test('a bad file fails the load naming the config key and the file, never the key\'s content', async (t) => {
  const { dir, ca } = await fixture(t);
  const shop = await issueCertificate(ca, ['shop.test']);
  const other = await issueCertificate(ca, ['other.test']);
  const expired = await issueCertificate(ca, ['old.test'], { days: -1 });
  const garbage = join(dir, 'garbage.key');
  await writeFile(garbage, '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n');

  const { store } = newStore(t, input({
    sources: [
      { from: 'apps.shop.tls', hosts: ['shop.test'], files: { certificate: shop.certificate, key: other.key } },
      source('apps.old.tls', ['old.test'], expired),
      { from: 'apps.gone.tls', hosts: ['gone.test'], files: { certificate: join(dir, 'missing.crt'), key: shop.key } },
      { from: 'apps.junk.tls', hosts: ['junk.test'], files: { certificate: other.certificate, key: garbage } },
    ],
  }));
  const err = await store.start().then(() => null, (e: unknown) => e);
  assert.ok(err instanceof ConfigError, String(err));
  const byPath = new Map(err.problems.map((p) => [p.path, p.message]));
  assert.deepEqual([...byPath.keys()], ['apps.shop.tls.key', 'apps.old.tls.certificate', 'apps.gone.tls.certificate', 'apps.junk.tls.key']);
  assert.match(byPath.get('apps.shop.tls.key')!, new RegExp(`^${other.key}: the key does not match the certificate ${shop.certificate}$`));
  assert.match(byPath.get('apps.old.tls.certificate')!, /the certificate expired on/);
  assert.match(byPath.get('apps.gone.tls.certificate')!, /missing\.crt: cannot be read \(ENOENT\)/);
  assert.match(byPath.get('apps.junk.tls.key')!, /garbage\.key: not a readable unencrypted PEM private key/);
  const keyText = await readFile(other.key, 'utf8');
  const keyBody = keyText.split('\n')[1];
  assert.ok(!err.message.includes('PRIVATE KEY') && !err.message.includes(keyBody) && !err.message.includes('bm90IGEga2V5'), err.message);
});

test('configure is all or nothing, and reload re-reads files on demand (SIGHUP)', async (t) => {
  const { dir, ca } = await fixture(t);
  const live = { certificate: join(dir, 'shop.crt'), key: join(dir, 'shop.key') };
  const first = await issueCertificate(ca, ['shop.test'], live);
  const blog = await issueCertificate(ca, ['blog.test']);
  const mismatched = { certificate: blog.certificate, key: first.key };
  const base = input({ sources: [{ from: 'apps.shop.tls', hosts: ['shop.test'], files: live }] });
  const { store } = newStore(t, base);
  await store.start();
  const { port } = await startEchoServer(t, store);

  await assert.rejects(store.configure(input({ sources: [...base.sources, { from: 'apps.blog.tls', hosts: ['blog.test'], files: mismatched }] })), ConfigError);
  assert.equal(store.select('blog.test'), null, 'nothing of the refused config is served');
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, first.fingerprint256);

  await store.configure(input({ sources: [...base.sources, source('apps.blog.tls', ['blog.test'], blog)] }));
  assert.equal((await connectTls(t, port, { servername: 'blog.test', ca: ca.pem })).fingerprint, blog.fingerprint256);

  // Not watching: the swap is seen when reload() is called.
  const second = await issueCertificate(ca, ['shop.test']);
  await renameIntoPlace(second, live);
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, first.fingerprint256);
  assert.deepEqual(await store.reload(), { changed: ['apps.shop.tls'], problems: [] });
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, second.fingerprint256);
  assert.deepEqual(await store.reload(), { changed: [], problems: [] }, 'unchanged files load nothing');
});

test('sessions resume, across a certificate swap and a new default certificate; a ticket key rotation ends them', async (t) => {
  const { dir, ca } = await fixture(t);
  const live = { certificate: join(dir, 'shop.crt'), key: join(dir, 'shop.key') };
  await issueCertificate(ca, ['shop.test'], live);
  const fallbackFiles = { certificate: join(dir, 'default.crt'), key: join(dir, 'default.key') };
  await issueCertificate(ca, ['default.test'], fallbackFiles);
  const keys = new TicketKeys();
  const { store } = newStore(t, input({
    sources: [{ from: 'apps.shop.tls', hosts: ['shop.test'], files: live }],
    defaultCertificate: { from: 'tls.default_certificate', hosts: [], files: fallbackFiles },
  }), { ticketKeys: keys });
  await store.start();
  const { port } = await startEchoServer(t, store);

  for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
    const opts = { servername: 'shop.test', ca: ca.pem, maxVersion: version };
    const first = await connectTls(t, port, opts);
    await first.ping();
    let session = await first.session();
    assert.equal(first.reused, false);

    const again = await connectTls(t, port, { ...opts, session });
    assert.equal(again.reused, true, `${version}: resumed`);
    await again.ping();

    // A new certificate for the name (a new SNI context) and a new default (a new listener context).
    await renameIntoPlace(await issueCertificate(ca, ['shop.test']), live);
    await renameIntoPlace(await issueCertificate(ca, ['default.test']), fallbackFiles);
    assert.equal((await store.reload()).changed.length, 2);
    const afterSwap = await connectTls(t, port, { ...opts, session });
    assert.equal(afterSwap.reused, true, `${version}: resumed after the swap`);
    await afterSwap.ping();

    // Rotation: the old ticket is refused (a full handshake), and the ticket from that handshake resumes.
    keys.rotate();
    const afterRotation = await connectTls(t, port, { ...opts, session });
    assert.equal(afterRotation.reused, false, `${version}: a ticket sealed with the old key is not accepted`);
    await afterRotation.ping();
    session = await afterRotation.session();
    const resumed = await connectTls(t, port, { ...opts, session });
    assert.equal(resumed.reused, true, `${version}: resumed with the new key`);
    await resumed.ping();
  }
});

test('the same options and attach serve http2.createSecureServer: h2 and http/1.1 by ALPN, per SNI name', async (t) => {
  const { ca } = await fixture(t);
  const shop = await issueCertificate(ca, ['shop.test']);
  const fallback = await issueCertificate(ca, ['default.test']);
  const { store } = newStore(t, input({ sources: [source('apps.shop.tls', ['shop.test'], shop)], defaultCertificate: source('tls.default_certificate', [], fallback) }));
  await store.start();
  const server = createSecureServer({ ...store.serverOptions(), allowHTTP1: true, ALPNProtocols: ['h2', 'http/1.1'] }, (req, res) => {
    res.end(`${req.httpVersion} ${(req.socket as TLSSocket).servername}`);
  });
  const detach = store.attach(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    detach();
    server.close();
  });
  const port = (server.address() as { port: number }).port;

  const session = connectHttp2(`https://127.0.0.1:${port}`, { servername: 'shop.test', ca: ca.pem, checkServerIdentity: () => undefined });
  t.after(() => session.close());
  await once(session, 'connect');
  assert.equal((session.socket as TLSSocket).alpnProtocol, 'h2');
  assert.equal((session.socket as TLSSocket).getPeerCertificate().fingerprint256, shop.fingerprint256);
  const stream = session.request({ ':path': '/' });
  let body = '';
  for await (const chunk of stream) body += chunk;
  assert.equal(body, '2.0 shop.test');

  const h1 = await new Promise<{ body: string; fingerprint: string }>((resolve, reject) => {
    const req = httpsGet({ host: '127.0.0.1', port, servername: 'unknown.test', ca: ca.pem, checkServerIdentity: () => undefined, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c));
      res.on('end', () => resolve({ body: text, fingerprint: (res.socket as TLSSocket).getPeerCertificate().fingerprint256 }));
    });
    req.on('error', reject);
  });
  assert.equal(h1.body, '1.1 unknown.test');
  assert.equal(h1.fingerprint, fallback.fingerprint256);
});

test('what is odd but servable is logged: Must-Staple, a world-readable key, a host the certificate does not cover', async (t) => {
  const { ca } = await fixture(t);
  const staple = await issueCertificate(ca, ['staple.test'], { extensions: ['tlsfeature=status_request'] });
  const shop = await issueCertificate(ca, ['shop.test']);
  await chmod(shop.key, 0o644);
  const { store, sink } = newStore(t, input({
    sources: [source('apps.staple.tls', ['staple.test'], staple), source('apps.shop.tls', ['shop.test', 'www.shop.test'], shop)],
  }));
  await store.start();
  const warned = (msg: string) => sink.lines.filter((l) => l.level === 40 && l.msg.includes(msg));
  assert.equal(warned('Must-Staple')[0]?.source, 'apps.staple.tls');
  assert.equal(warned('readable by every user')[0]?.path, shop.key);
  assert.equal(warned('does not cover')[0]?.host, 'www.shop.test');
  const rows = new Map(store.describe().map((r) => [r.host, r]));
  assert.equal(rows.get('shop.test')!.covered, true);
  assert.equal(rows.get('www.shop.test')!.covered, false);
  // Keys and certificate text never reach the log.
  const log = JSON.stringify(sink.lines);
  assert.ok(!log.includes('PRIVATE KEY') && !log.includes('BEGIN CERTIFICATE'));
});

test('the certificate directory: the later expiry wins a name, a pair without a key is skipped, a vanished directory keeps serving', async (t) => {
  const { dir, ca } = await fixture(t);
  const certs = join(dir, 'certs');
  await mkdir(certs);
  const short = await issueCertificate(ca, ['shop.test'], { days: 10, certificate: join(certs, 'a-shop.crt'), key: join(certs, 'a-shop.key') });
  const long = await issueCertificate(ca, ['shop.test'], { days: 60, certificate: join(certs, 'b-shop.crt'), key: join(certs, 'b-shop.key') });
  await copyFile(ca.certificate, join(certs, 'ca.crt'));
  const { store, sink } = newStore(t, input({ directory: certs }));
  await store.start();
  const { port } = await startEchoServer(t, store);
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, long.fingerprint256);
  assert.ok(short.fingerprint256 !== long.fingerprint256);
  assert.ok(sink.lines.some((l) => l.msg.includes('without a key') && l.path === join(certs, 'ca.crt')));

  await rename(certs, `${certs}.gone`);
  const result = await store.reload();
  assert.equal(result.problems[0].source, 'tls.directory');
  assert.match(result.problems[0].message, /cannot be read \(ENOENT\)/);
  assert.equal((await connectTls(t, port, { servername: 'shop.test', ca: ca.pem })).fingerprint, long.fingerprint256);
  await rename(`${certs}.gone`, certs);
  assert.deepEqual((await store.reload()).problems, []);
  assert.deepEqual(store.errors(), []);
});

test('a host that is an IP address is covered by an IP entry of the certificate, not by a DNS name that reads the same', async (t) => {
  const dir = await tempDir(t);
  const ca = await createCa(join(dir, 'ca'));
  const withIp = await issueCertificate(ca, ['shop.test', '127.0.0.1', '::1']);
  const dnsOnly = await issueCertificate(ca, ['shop.test']);
  const a = await Certificate.load({ certificate: withIp.certificate, key: withIp.key });
  const b = await Certificate.load({ certificate: dnsOnly.certificate, key: dnsOnly.key });
  assert.equal(a.covers('127.0.0.1'), true);
  assert.equal(a.covers('::1'), true);
  assert.equal(a.covers('[::1]'), true);
  assert.equal(a.covers('127.0.0.2'), false);
  assert.equal(a.covers('shop.test'), true);
  assert.equal(b.covers('127.0.0.1'), false);
});
