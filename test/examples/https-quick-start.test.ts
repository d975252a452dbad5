/**
 * The HTTPS quick start (README "HTTPS"): examples/local-ca.sh makes a local CA and the demo
 * certificates, and examples/berth.https.yaml serves both demo apps over HTTPS with them. The gateway,
 * the apps, openssl and the handshakes are real; every client trusts only the CA the script made.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadConfig } from '../../src/config/load.ts';
import { http, spawnGateway, tempDir, waitFor } from '../helpers/gateway.ts';
import { h1Tls, h2Request, h2Session, sameFingerprint, servedFingerprint } from '../helpers/https.ts';
import { EXAMPLES, freePort } from './demo-app.ts';

const run = promisify(execFile);
const CONFIG = join(EXAMPLES, 'berth.https.yaml');
const SCRIPT = join(EXAMPLES, 'local-ca.sh');
const LOCAL_CA = join(EXAMPLES, '.berth/local-ca');
const python = spawnSync('python3', ['--version']);
const noPython = python.error ? 'python3 is not available; py-demo needs it' : false;
const curl = spawnSync('curl', ['--version']);

/** Runs the CA script the way `npm run start:https` does, into `dir`. */
async function makeCertificates(dir: string): Promise<{ stdout: string }> {
  return run('sh', [SCRIPT, dir]);
}

async function mode(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

test('examples/berth.https.yaml: the demo apps of berth.yaml, with a TLS listener and certificates from the local CA', async () => {
  const https = await loadConfig({ configPath: CONFIG, environ: {} });
  const plain = await loadConfig({ configPath: join(EXAMPLES, 'berth.yaml'), environ: {} });
  assert.deepEqual(https.listen.map((l) => [l.text, l.tls]), [['127.0.0.1:8080', false], ['127.0.0.1:8443', true]]);
  assert.equal(https.stateDir, plain.stateDir);
  assert.deepEqual(https.tls.defaultCertificate, { certificate: join(LOCAL_CA, 'demo.crt'), key: join(LOCAL_CA, 'demo.key') });
  const node = https.apps['node-demo'];
  const py = https.apps['py-demo'];
  assert.deepEqual(node.tls, [], 'the default certificate serves node-demo');
  assert.deepEqual(py.tls.map((c) => c.files), [{ certificate: join(LOCAL_CA, 'py.crt'), key: join(LOCAL_CA, 'py.key') }]);
  assert.equal(node.httpsRedirect, false, 'node-demo still answers plain http');
  assert.equal(py.httpsRedirect, true);
  assert.deepEqual(py.hsts, { maxAgeS: 300, includeSubdomains: false, preload: false });
  // Apart from HTTPS, the very apps of the cleartext quick start: the two files must not drift apart.
  for (const name of ['node-demo', 'py-demo']) {
    const { tls: _a, httpsRedirect: _b, hsts: _c, ...rest } = https.apps[name];
    const { tls: _d, httpsRedirect: _e, hsts: _f, ...expected } = plain.apps[name];
    assert.deepEqual(rest, expected, name);
  }
});

test('examples/local-ca.sh: a CA and two certificates it signs, keys 0600, kept when run again', async (t) => {
  const dir = join(await tempDir(t, 'berth-ca-'), 'local-ca');
  const first = await makeCertificates(dir);
  assert.match(first.stdout, /made a CA/);
  assert.equal(await mode(dir), 0o700);
  for (const key of ['ca.key', 'demo.key', 'py.key']) assert.equal(await mode(join(dir, key)), 0o600, key);
  for (const crt of ['ca.crt', 'demo.crt', 'py.crt']) assert.equal(await mode(join(dir, crt)), 0o644, crt);

  const ca = new X509Certificate(await readFile(join(dir, 'ca.crt')));
  assert.equal(ca.ca, true);
  const demo = new X509Certificate(await readFile(join(dir, 'demo.crt')));
  const py = new X509Certificate(await readFile(join(dir, 'py.crt')));
  for (const leaf of [demo, py]) {
    assert.ok(leaf.verify(ca.publicKey), 'signed by the CA');
    assert.equal(leaf.ca, false);
  }
  for (const host of ['localhost', 'node.localhost']) assert.ok(demo.checkHost(host), host);
  assert.equal(demo.checkIP('127.0.0.1'), '127.0.0.1');
  assert.ok(py.checkHost('py.localhost'));
  assert.equal(py.checkHost('node.localhost'), undefined);

  // Again: nothing changes, so a client that trusts the CA keeps trusting it.
  const files = ['ca.crt', 'ca.key', 'demo.crt', 'demo.key', 'py.crt', 'py.key'];
  const before = await Promise.all(files.map((f) => readFile(join(dir, f), 'utf8')));
  const again = await makeCertificates(dir);
  assert.equal(again.stdout, '');
  assert.deepEqual(await Promise.all(files.map((f) => readFile(join(dir, f), 'utf8'))), before);

  // A missing certificate is made again, by the same CA.
  await rm(join(dir, 'py.crt'));
  const third = await makeCertificates(dir);
  assert.match(third.stdout, /made .*py\.crt/);
  assert.doesNotMatch(third.stdout, /made a CA/);
  assert.equal(await readFile(join(dir, 'ca.crt'), 'utf8'), before[0]);
  assert.ok(new X509Certificate(await readFile(join(dir, 'py.crt'))).verify(ca.publicKey));
});

test('HTTPS quick start: both demo apps over HTTPS (h2 and http/1.1), certificates by SNI, redirect and HSTS', { skip: noPython }, async (t) => {
  const dir = await tempDir(t, 'berth-https-qs-');
  const state = join(dir, 'state');
  // As `npm run start:https` does: the script first (it creates the state dir), then the gateway.
  const certs = join(state, 'local-ca');
  await makeCertificates(certs);
  const ca = await readFile(join(certs, 'ca.crt'), 'utf8');
  const tlsPort = await freePort();
  // The example file as is, moved to free ports, a temp state dir and the certificates just made.
  const gateway = await spawnGateway(t, CONFIG, {
    env: {
      BERTH_LISTEN: `["127.0.0.1:0", { address: "127.0.0.1:${tlsPort}", tls: true }]`,
      BERTH_STATE_DIR: state,
      BERTH_TLS__DEFAULT_CERTIFICATE__CERTIFICATE: join(certs, 'demo.crt'),
      BERTH_TLS__DEFAULT_CERTIFICATE__KEY: join(certs, 'demo.key'),
      BERTH_APPS__PY_DEMO__TLS__CERTIFICATE: join(certs, 'py.crt'),
      BERTH_APPS__PY_DEMO__TLS__KEY: join(certs, 'py.key'),
    },
  });
  await waitFor(async () => (await http({ port: gateway.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 60_000, message: 'both apps ready' });
  const demoPem = await readFile(join(certs, 'demo.crt'), 'utf8');
  const pyPem = await readFile(join(certs, 'py.crt'), 'utf8');
  const demoFingerprint = new X509Certificate(demoPem).fingerprint256;
  const pyFingerprint = new X509Certificate(pyPem).fingerprint256;

  // No SNI (an IP address): the default certificate, verified for 127.0.0.1 against the CA.
  const byIp = await h1Tls(tlsPort, { servername: '', host: `127.0.0.1:${tlsPort}`, ca });
  assert.equal(byIp.status, 200);
  assert.equal(byIp.json().app, 'node-demo');
  assert.ok(sameFingerprint(byIp.socket.getPeerCertificate().fingerprint256, demoFingerprint));
  assert.equal(byIp.headers['strict-transport-security'], undefined, 'node-demo sets no hsts');
  assert.ok(sameFingerprint(await servedFingerprint(tlsPort, null), demoFingerprint));

  // SNI picks each app's certificate.
  const py = await h1Tls(tlsPort, { servername: 'py.localhost', host: `py.localhost:${tlsPort}`, ca });
  assert.equal(py.status, 200);
  assert.equal(py.json().app, 'py-demo');
  assert.equal(py.json().lang, 'python');
  assert.equal(py.headers['strict-transport-security'], 'max-age=300');
  assert.ok(sameFingerprint(py.socket.getPeerCertificate().fingerprint256, pyFingerprint));
  assert.ok(sameFingerprint(await servedFingerprint(tlsPort, 'node.localhost'), demoFingerprint));

  // h2 by ALPN: the app, and a static file the gateway serves itself.
  const session = await h2Session(t, tlsPort, 'node.localhost', ca);
  const h2 = await h2Request(session, { path: '/' });
  assert.equal(h2.status, 200);
  assert.equal(h2.json().app, 'node-demo');
  const css = await h2Request(session, { path: '/static/app.css' });
  assert.equal(css.status, 200);
  assert.equal(css.text(), await readFile(join(EXAMPLES, 'node-app/public/app.css'), 'utf8'));

  // Plain http: node-demo still answers; py-demo sends a 308 to the TLS listener, path and query kept.
  const plainNode = await http({ port: gateway.port }, { path: '/' });
  assert.equal(plainNode.status, 200);
  const redirect = await http({ port: gateway.port }, { path: '/echo?x=1', host: 'py.localhost' });
  assert.equal(redirect.status, 308);
  assert.equal(redirect.headers.location, `https://py.localhost:${tlsPort}/echo?x=1`);
  // The certificates fit the hosts they serve, and the keys are private: the quick start warns of nothing.
  assert.deepEqual(gateway.logs.filter((l) => l.logger === 'tls' && l.level >= 40), []);

  // The README's own client: curl trusting the local CA, as a second, independent TLS stack.
  if (curl.error) {
    t.diagnostic('curl is not installed: its check is left out');
    return;
  }
  const { stdout } = await run('curl', ['--silent', '--show-error', '--cacert', join(certs, 'ca.crt'), `https://py.localhost:${tlsPort}/`]);
  assert.equal(JSON.parse(stdout).app, 'py-demo');
  const viaIp = await run('curl', ['--silent', '--show-error', '--http2', '--cacert', join(certs, 'ca.crt'), '--write-out', '\n%{http_version}', `https://127.0.0.1:${tlsPort}/`]);
  const cut = viaIp.stdout.lastIndexOf('\n');
  assert.equal(JSON.parse(viaIp.stdout.slice(0, cut)).app, 'node-demo');
  assert.equal(viaIp.stdout.slice(cut + 1), '2', 'curl negotiated h2');
});
