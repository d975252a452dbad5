import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RoutingTable, normalizeHost, prefixMatches } from '../../src/proxy/router.ts';
import { appConfig, entry, route } from './fixtures.ts';

function where(table: RoutingTable, host: string, path: string): string | null {
  const m = table.lookup(host, path);
  return m === null ? null : `${m.app.name}:${m.route.path}`;
}

test('exact hosts win over wildcards, wildcards over catch-all', () => {
  const table = new RoutingTable([
    entry(appConfig('fallback'), null),
    entry(appConfig('wild', { hosts: ['*.shop.test'] }), null),
    entry(appConfig('exact', { hosts: ['a.shop.test'] }), null),
  ]);
  assert.equal(where(table, 'a.shop.test', '/'), 'exact:/');
  assert.equal(where(table, 'b.shop.test', '/'), 'wild:/');
  assert.equal(where(table, 'x.b.shop.test', '/x'), 'wild:/');
  assert.equal(where(table, 'shop.test', '/'), 'fallback:/', 'a wildcard does not match its bare suffix');
  assert.equal(where(table, 'other.test', '/'), 'fallback:/');
});

test('the longest wildcard suffix is tried first', () => {
  const table = new RoutingTable([
    entry(appConfig('broad', { hosts: ['*.test'] }), null),
    entry(appConfig('narrow', { hosts: ['*.shop.test'] }), null),
  ]);
  assert.equal(where(table, 'a.shop.test', '/'), 'narrow:/');
  assert.equal(where(table, 'a.blog.test', '/'), 'broad:/');
});

test('no catch-all: unknown hosts match nothing', () => {
  const table = new RoutingTable([entry(appConfig('shop', { hosts: ['shop.test'] }), null)]);
  assert.equal(table.lookup('nope.test', '/'), null);
  assert.equal(table.lookup('', '/'), null);
});

test('host is matched without port and case; IPv6 literals and trailing dots work', () => {
  const table = new RoutingTable([
    entry(appConfig('shop', { hosts: ['shop.test'] }), null),
    entry(appConfig('v6', { hosts: ['[::1]'] }), null),
  ]);
  assert.equal(where(table, 'SHOP.Test:8080', '/'), 'shop:/');
  assert.equal(where(table, 'shop.test.', '/'), 'shop:/');
  assert.equal(where(table, '[::1]:8080', '/'), 'v6:/');
  assert.equal(normalizeHost('shop.test'), 'shop.test');
  assert.equal(normalizeHost('[::1]'), '[::1]');
});

test('longest path prefix wins within a host', () => {
  const table = new RoutingTable([
    entry(appConfig('shop', { routes: [route('/'), route('/api', 'api'), route('/api/v2', 'v2')] }), null),
  ]);
  assert.equal(table.lookup('x', '/api/v2/users')?.route.to, 'v2');
  assert.equal(table.lookup('x', '/api/v1')?.route.to, 'api');
  assert.equal(table.lookup('x', '/about')?.route.to, 'web');
});

test('prefix matching is segment-aware', () => {
  assert.equal(prefixMatches('/api', '/api'), true);
  assert.equal(prefixMatches('/api', '/api/x'), true);
  assert.equal(prefixMatches('/api', '/api?x=1'), true);
  assert.equal(prefixMatches('/api', '/apix'), false);
  assert.equal(prefixMatches('/api', '/ap'), false);
  assert.equal(prefixMatches('/', '/anything'), true);
  assert.equal(prefixMatches('/', '*'), false);
  const table = new RoutingTable([entry(appConfig('shop', { hosts: ['s.test'], routes: [route('/api')] }), null)]);
  assert.equal(table.lookup('s.test', '/apix'), null);
});

test('a host rule without a matching route falls through to the next rule', () => {
  const table = new RoutingTable([
    entry(appConfig('api', { hosts: ['a.shop.test'], routes: [route('/api')] }), null),
    entry(appConfig('wild', { hosts: ['*.shop.test'] }), null),
    entry(appConfig('fallback'), null),
  ]);
  assert.equal(where(table, 'a.shop.test', '/api/x'), 'api:/api');
  assert.equal(where(table, 'a.shop.test', '/home'), 'wild:/');
  assert.equal(where(table, 'shop.test', '/home'), 'fallback:/');
});

test('apps sharing a host pattern have their routes merged', () => {
  const shop = entry(appConfig('shop', { hosts: ['example.test'], routes: [route('/')] }), null);
  const blog = entry(appConfig('blog', { hosts: ['example.test', 'blog.test'], routes: [route('/blog')] }), null);
  const table = new RoutingTable([shop, blog]);
  assert.equal(where(table, 'example.test', '/blog/post'), 'blog:/blog');
  assert.equal(where(table, 'example.test', '/blogroll'), 'shop:/');
  assert.equal(where(table, 'blog.test', '/'), null);
  // Two catch-all apps merge too.
  const both = new RoutingTable([
    entry(appConfig('a', { routes: [route('/a')] }), null),
    entry(appConfig('b', { routes: [route('/b')] }), null),
  ]);
  assert.equal(where(both, 'any', '/b/1'), 'b:/b');
  assert.equal(where(both, 'any', '/a'), 'a:/a');
  assert.equal(both.lookup('any', '/c'), null);
});

test('lookup returns the same match object every time (precomputed)', () => {
  const table = new RoutingTable([entry(appConfig('shop'), null)]);
  assert.equal(table.lookup('x', '/a'), table.lookup('y', '/b'));
});

test('app() and describe()', () => {
  const shop = entry(
    appConfig('shop', { hosts: ['shop.test', '*.shop.test'], routes: [route('/'), route('/static', null, 'public')] }),
    null,
    { mode: 'maintenance' },
  );
  const other = entry(appConfig('other'), null);
  const table = new RoutingTable([shop, other]);
  assert.equal(table.app('shop'), shop);
  assert.equal(table.app('nope'), undefined);
  assert.deepEqual(table.apps, [shop, other]);
  assert.deepEqual(table.describe(), [
    { host: 'shop.test', path: '/static', target: 'static:public', app: 'shop', mode: 'maintenance' },
    { host: 'shop.test', path: '/', target: 'web', app: 'shop', mode: 'maintenance' },
    { host: '*.shop.test', path: '/static', target: 'static:public', app: 'shop', mode: 'maintenance' },
    { host: '*.shop.test', path: '/', target: 'web', app: 'shop', mode: 'maintenance' },
    { host: '*', path: '/', target: 'web', app: 'other', mode: 'normal' },
  ]);
  assert.deepEqual(new RoutingTable([]).describe(), []);
});
