import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hstsHeader, redirectTarget } from '../../src/proxy/https-policy.ts';
import { appConfig } from './fixtures.ts';

test('redirectTarget: https_redirect, canonical_host, both at once, and what is never redirected', () => {
  const https = appConfig('shop', { hosts: ['shop.test', 'www.shop.test'], httpsRedirect: true });
  assert.equal(redirectTarget(https, false, 'shop.test:8080', '/a?b=1', 443), 'https://shop.test/a?b=1', 'port 443 is left out, the http port dropped');
  assert.equal(redirectTarget(https, false, 'Shop.Test.', '/', 8443), 'https://shop.test:8443/');
  assert.equal(redirectTarget(https, true, 'shop.test', '/', 443), null, 'already over TLS');
  assert.equal(redirectTarget(https, false, 'shop.test', '/', null), null, 'no TLS listener');
  assert.equal(redirectTarget(https, false, 'shop.test', '/.well-known/acme-challenge/t', 443), null);
  assert.equal(redirectTarget(https, false, '[::1]:80', '/x', 443), 'https://[::1]/x', 'an IPv6 literal keeps its brackets');
  assert.equal(redirectTarget(https, false, '', '/x', 443), null, 'no Host: nowhere to redirect to');

  const canonical = appConfig('shop', { hosts: ['shop.test', 'www.shop.test'], canonicalHost: 'shop.test' });
  assert.equal(redirectTarget(canonical, false, 'www.shop.test:8080', '/p?q', 443), 'http://shop.test:8080/p?q');
  assert.equal(redirectTarget(canonical, true, 'www.shop.test', '/p', 443), 'https://shop.test/p');
  assert.equal(redirectTarget(canonical, true, 'shop.test:8443', '/p', 443), null);

  const both = appConfig('shop', { hosts: ['shop.test', 'www.shop.test'], canonicalHost: 'shop.test', httpsRedirect: true });
  assert.equal(redirectTarget(both, false, 'www.shop.test', '/p', 8443), 'https://shop.test:8443/p');
  assert.equal(redirectTarget(both, true, 'shop.test', '/p', 8443), null);
});

test('hstsHeader: the directives written, built once per block', () => {
  assert.equal(hstsHeader(appConfig('a')), null);
  const app = appConfig('a', { hsts: { maxAgeS: 31_536_000, includeSubdomains: true, preload: true } });
  assert.equal(hstsHeader(app), 'max-age=31536000; includeSubDomains; preload');
  assert.equal(hstsHeader(app), hstsHeader(app));
  assert.equal(hstsHeader(appConfig('b', { hsts: { maxAgeS: 0, includeSubdomains: false, preload: false } })), 'max-age=0');
});
