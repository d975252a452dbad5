/**
 * What the gateway hands the certificate store and the ACME manager, from config: per-host certificates
 * before whole-app ones (the first source naming a host serves it), a whole-app certificate serving the
 * app's hosts, and only exact hosts of ACME apps ordered ahead of time (wildcards wait for a handshake).
 * And `berth check`, which loads those files as the gateway would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normaliseConfig } from '../../src/config/validate.ts';
import { join } from 'node:path';
import { acmeHosts, certificateInput } from '../../src/gateway/certificates.ts';
import { createCa, issueCertificate } from '../helpers/certificates.ts';
import { runCli, tempDir, writeConfig } from '../helpers/gateway.ts';

const CTX = { file: '/srv/site/berth.yaml', environment: null };
const web = { processes: { web: { command: 'node server.js' } } };

test('certificate sources: per-host entries first, whole-app entries serve the app hosts, the default last', () => {
  const config = normaliseConfig(
    {
      listen: ['0.0.0.0:80', { address: '0.0.0.0:443', tls: true }],
      tls: { directory: 'certs', default_certificate: { certificate: 'd.crt', key: 'd.key' } },
      acme: { ask: 'http://127.0.0.1:9/ask' },
      apps: {
        shop: { ...web, hosts: ['shop.example.com', '*.shop.test'], tls: [{ certificate: 'shop.crt', key: 'shop.key' }, { hosts: ['a.shop.test'], certificate: 'a.crt', key: 'a.key' }] },
        blog: { ...web, hosts: ['blog.example.com', 'www.blog.example.com', '*.blog.test'], tls: { acme: true } },
        docs: { ...web, hosts: ['docs.example.com'], tls: { acme: true } },
      },
    },
    CTX,
  );
  const input = certificateInput(config);
  assert.deepEqual(
    input.sources.map((s) => [s.from, s.hosts, s.files.certificate]),
    [
      ['apps.shop.tls.1', ['a.shop.test'], '/srv/site/a.crt'],
      ['apps.shop.tls.0', ['shop.example.com', '*.shop.test'], '/srv/site/shop.crt'],
    ],
  );
  assert.equal(input.directory, '/srv/site/certs');
  assert.deepEqual(input.defaultCertificate, { from: 'tls.default_certificate', hosts: [], files: { certificate: '/srv/site/d.crt', key: '/srv/site/d.key' } });
  assert.deepEqual(acmeHosts(config), ['blog.example.com', 'www.blog.example.com', 'docs.example.com']);
});

test('berth check loads the certificate files: a key that does not match is exit 2 naming key and file; a host the certificate does not cover is a warning', async (t) => {
  const dir = await tempDir(t);
  const ca = await createCa(join(dir, 'ca'));
  const shop = await issueCertificate(ca, ['shop.test']);
  const other = await issueCertificate(ca, ['other.test']);
  const write = (tls: unknown) =>
    writeConfig(dir, {
      state_dir: 'state',
      listen: ['127.0.0.1:18443', { address: '127.0.0.1:18444', tls: true }],
      apps: { shop: { hosts: ['shop.test', 'www.shop.test'], source: dir, processes: { web: { command: 'node server.js' } }, tls } },
    });
  const bad = await runCli(['check', '--config', await write({ certificate: shop.certificate, key: other.key })]);
  assert.equal(bad.code, 2, bad.stdout + bad.stderr);
  assert.match(bad.stderr, /apps\.shop\.tls(\.0)?\.key/);
  assert.ok(bad.stderr.includes(other.key), bad.stderr);
  assert.doesNotMatch(bad.stderr, /PRIVATE KEY/);
  const ok = await runCli(['check', '--config', await write({ certificate: shop.certificate, key: shop.key })]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stderr, /warning: certificate: certificate does not cover a host it serves \(.*host www\.shop\.test/);
});
