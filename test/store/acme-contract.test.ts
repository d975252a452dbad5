/** Contract tests of ACME accounts and certificates (migration 006), shared by every Store implementation. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { BerthError } from '../../src/lib/errors.ts';
import type { AcmeAccountRecord, AcmeCertificateRecord } from '../../src/store/store.ts';
import { forEachBackend, openFresh, type Backend } from './backends.ts';

const DIRECTORY = 'https://acme.example.test/dir';
const STAGING = 'https://acme-staging.example.test/dir';

function keyPem(): string {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
}

/** The store checks that it holds PEM certificates, not that they verify: the TLS layer does that. */
const CHAIN = '-----BEGIN CERTIFICATE-----\nMIIBleaf\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMIIBchain\n-----END CERTIFICATE-----\n';

function account(over: Partial<AcmeAccountRecord> = {}): AcmeAccountRecord {
  return { directory: DIRECTORY, email: 'ops@example.test', keyPem: keyPem(), url: 'https://acme.example.test/acct/1', createdAt: '2026-01-01T00:00:00.000Z', updatedAt: '2026-01-01T00:00:00.000Z', ...over };
}

function certificate(host: string, over: Partial<AcmeCertificateRecord> = {}): AcmeCertificateRecord {
  return {
    host, directory: DIRECTORY, certificatePem: CHAIN, keyPem: keyPem(), notBefore: '2026-01-01T00:00:00.000Z', notAfter: '2026-04-01T00:00:00.000Z',
    onDemand: false, issuedAt: '2026-01-01T00:00:05.000Z', ...over,
  };
}

const badRequest = (err: unknown) => err instanceof BerthError && err.code === 'BERTH_E_BAD_REQUEST';

function acmeContract(backend: Backend): void {
  const name = backend.name;
  test(`${name}: an ACME account is kept per directory, read back field for field, and replaced keeping its creation time`, async (t) => {
    const store = await openFresh(backend, t);
    assert.equal(await store.getAcmeAccount(DIRECTORY), null);
    const first = account({ url: null });
    await store.saveAcmeAccount(first);
    assert.deepEqual(await store.getAcmeAccount(DIRECTORY), first);
    const staging = account({ directory: STAGING, email: null });
    await store.saveAcmeAccount(staging);
    assert.deepEqual(await store.getAcmeAccount(STAGING), staging);

    const later = { ...first, url: 'https://acme.example.test/acct/9', email: 'new@example.test', createdAt: '2026-03-01T00:00:00.000Z', updatedAt: '2026-03-01T00:00:00.000Z' };
    await store.saveAcmeAccount(later);
    assert.deepEqual(await store.getAcmeAccount(DIRECTORY), { ...later, createdAt: first.createdAt });
    assert.deepEqual(await store.getAcmeAccount(STAGING), staging, 'the other directory\'s account is untouched');
  });

  test(`${name}: certificates are kept per host, replaced on renewal, listed by host, and deleted`, async (t) => {
    const store = await openFresh(backend, t);
    assert.equal(await store.getCertificate('shop.test'), null);
    const shop = certificate('shop.test');
    const blog = certificate('blog.test', { onDemand: true, directory: STAGING });
    await store.saveCertificate(shop);
    await store.saveCertificate(blog);
    assert.deepEqual(await store.getCertificate('shop.test'), shop);
    assert.deepEqual(await store.getCertificate('blog.test'), blog);
    assert.deepEqual((await store.listCertificates()).map((c) => c.host), ['blog.test', 'shop.test']);

    const renewed = certificate('shop.test', { notBefore: '2026-03-01T00:00:00.000Z', notAfter: '2026-06-01T00:00:00.000Z', issuedAt: '2026-03-01T00:00:01.000Z' });
    await store.saveCertificate(renewed);
    assert.deepEqual(await store.getCertificate('shop.test'), renewed);
    assert.equal((await store.listCertificates()).length, 2);

    assert.equal(await store.deleteCertificate('shop.test'), true);
    assert.equal(await store.deleteCertificate('shop.test'), false);
    assert.deepEqual((await store.listCertificates()).map((c) => c.host), ['blog.test']);
  });

  test(`${name}: bad ACME records are refused with BERTH_E_BAD_REQUEST, and no message quotes a key`, async (t) => {
    const store = await openFresh(backend, t);
    const secret = keyPem();
    const refusals: [string, Promise<unknown>][] = [
      ['upper-case host', store.saveCertificate(certificate('Shop.test', { keyPem: secret }))],
      ['host with a trailing dot', store.saveCertificate(certificate('shop.test.', { keyPem: secret }))],
      ['wildcard host', store.saveCertificate(certificate('*.shop.test', { keyPem: secret }))],
      ['key that is not PEM', store.saveCertificate(certificate('shop.test', { keyPem: secret.replace(/-----[A-Z ]+-----/g, '') }))],
      ['certificate that is not PEM', store.saveCertificate(certificate('shop.test', { certificatePem: secret }))],
      ['bad time', store.saveCertificate(certificate('shop.test', { keyPem: secret, notAfter: 'soon' }))],
      ['directory that is not a URL', store.saveCertificate(certificate('shop.test', { keyPem: secret, directory: 'letsencrypt' }))],
      ['account key that is not PEM', store.saveAcmeAccount(account({ keyPem: 'x' + secret.slice(40) }))],
      ['account email', store.saveAcmeAccount(account({ keyPem: secret, email: 'not an address' }))],
      ['account url', store.saveAcmeAccount(account({ keyPem: secret, url: 'ftp://x' }))],
    ];
    const body = secret.split('\n')[1];
    for (const [what, attempt] of refusals) {
      await assert.rejects(attempt, (err: unknown) => {
        assert.ok(badRequest(err), `${what}: ${String(err)}`);
        assert.ok(!(err as Error).message.includes(body) && !(err as Error).message.includes('PRIVATE KEY'), `${what}: the message quotes the key`);
        return true;
      });
    }
    assert.deepEqual(await store.listCertificates(), [], 'nothing was written');
    assert.equal(await store.getAcmeAccount(DIRECTORY), null);
  });
}

forEachBackend(acmeContract);
