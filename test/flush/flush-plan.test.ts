/**
 * flushUrls and akamaiTtl: which rules take a path, how a template is expanded ({path}, {ttl}, a
 * template without {path}), and the TTL taken from the rule or the static route's `cache` setting.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { akamaiTtl, flushUrls } from '../../src/flush/flush-plan.ts';
import type { CacheFlushRule, RouteConfig } from '../../src/config/schema.ts';

function rule(name: string, templates: string[], more: Partial<CacheFlushRule> = {}): CacheFlushRule {
  return { name, templates, includes: [], excludes: [], ttlSeconds: null, ...more };
}

function route(path: string, opts: { static?: string | null; to?: string | null; cache?: string | null } = {}): RouteConfig {
  return { path, to: opts.to ?? null, static: opts.static ?? null, cache: opts.cache ?? null, cors: null, buffering: true, affinity: null };
}

const NO_ROUTES = { routes: [] as RouteConfig[] };

test('only the rules named in enable contribute URLs', () => {
  const rules = [rule('a', ['https://a.test/{path}']), rule('b', ['https://b.test/{path}']), rule('c', ['https://c.test/{path}'])];
  assert.deepEqual(flushUrls(NO_ROUTES, { rules, enable: ['a', 'c'] }, ['/x.js']), ['https://a.test/x.js', 'https://c.test/x.js']);
  assert.deepEqual(flushUrls(NO_ROUTES, { rules, enable: ['b'] }, ['/x.js']), ['https://b.test/x.js']);
  assert.deepEqual(flushUrls(NO_ROUTES, { rules, enable: [] }, ['/x.js']), []);
  // A name in enable with no such rule is ignored (config validation reports it).
  assert.deepEqual(flushUrls(NO_ROUTES, { rules, enable: ['zzz'] }, ['/x.js']), []);
});

test('includes: a path matching any include is taken; without includes every path is', () => {
  const rules = [rule('css-or-js', ['https://cdn.test/{path}'], { includes: ['\\.css$', '\\.js$'] }), rule('all', ['https://all.test/{path}'])];
  const urls = flushUrls(NO_ROUTES, { rules, enable: ['css-or-js', 'all'] }, ['/a.css', '/b.js', '/c.png']);
  assert.deepEqual(urls, ['https://cdn.test/a.css', 'https://all.test/a.css', 'https://cdn.test/b.js', 'https://all.test/b.js', 'https://all.test/c.png']);
});

test('excludes win over includes', () => {
  const rules = [rule('static', ['https://cdn.test/{path}'], { includes: ['^/static/'], excludes: ['\\.map$', '^/static/private/'] })];
  const urls = flushUrls(NO_ROUTES, { rules, enable: ['static'] }, ['/static/app.js', '/static/app.js.map', '/static/private/a.txt', '/other.js']);
  assert.deepEqual(urls, ['https://cdn.test/static/app.js']);
});

test('each URL is given once, even when two rules (or two paths) make the same one; order is first seen', () => {
  const rules = [rule('one', ['https://cdn.test/{path}', 'https://cdn.test/{path}']), rule('two', ['https://cdn.test/{path}', 'https://other.test/{path}'])];
  const urls = flushUrls(NO_ROUTES, { rules, enable: ['one', 'two'] }, ['/b.js', '/a.js', '/b.js']);
  assert.deepEqual(urls, ['https://cdn.test/b.js', 'https://other.test/b.js', 'https://cdn.test/a.js', 'https://other.test/a.js']);
});

test('{path} is the path without its leading slash, each segment percent-encoded (space, #, unicode)', () => {
  const rules = [rule('cdn', ['https://cdn.test/{path}'])];
  const urls = flushUrls(NO_ROUTES, { rules, enable: ['cdn'] }, ['/files/my report.pdf', '/files/a#b.txt', '/déjà vu/日本.txt', '/q?x=1']);
  assert.deepEqual(urls, [
    'https://cdn.test/files/my%20report.pdf',
    'https://cdn.test/files/a%23b.txt',
    'https://cdn.test/d%C3%A9j%C3%A0%20vu/%E6%97%A5%E6%9C%AC.txt',
    'https://cdn.test/q%3Fx%3D1',
  ]);
  // The slashes between segments are kept; only the leading one goes.
  assert.deepEqual(flushUrls(NO_ROUTES, { rules: [rule('arl', ['S/=/123/4567/1d/www.example.com/{path}'])], enable: ['arl'] }, ['/a/b/c.js']), ['S/=/123/4567/1d/www.example.com/a/b/c.js']);
});

test('a template without {path} gets "/" + path, with no double slash when it ends with "/"', () => {
  const rules = [rule('bare', ['https://a.test']), rule('slash', ['https://b.test/']), rule('deep', ['https://c.test/purge/'])];
  const urls = flushUrls(NO_ROUTES, { rules, enable: ['bare', 'slash', 'deep'] }, ['/x/y z.js']);
  assert.deepEqual(urls, ['https://a.test/x/y%20z.js', 'https://b.test/x/y%20z.js', 'https://c.test/purge/x/y%20z.js']);
  // The root path: just the template's slash.
  assert.deepEqual(flushUrls(NO_ROUTES, { rules, enable: ['bare', 'slash'] }, ['/']), ['https://a.test/', 'https://b.test/']);
});

test('{path} may appear more than once, and with {ttl}', () => {
  const rules = [rule('arl', ['S/=/1/2/{ttl}/origin.test/{path}?mirror={path}'], { ttlSeconds: 600 })];
  assert.deepEqual(flushUrls(NO_ROUTES, { rules, enable: ['arl'] }, ['/a b']), ['S/=/1/2/10m/origin.test/a%20b?mirror=a%20b']);
});

test("{ttl}: the rule's ttlSeconds wins over the route's cache", () => {
  const routes = [route('/', { static: 'site', cache: 'immutable' })];
  const rules = [rule('r', ['S/=/1/2/{ttl}/x/{path}'], { ttlSeconds: 3600 }), rule('zero', ['Z/{ttl}/{path}'], { ttlSeconds: 0 })];
  assert.deepEqual(flushUrls({ routes }, { rules, enable: ['r', 'zero'] }, ['/a.js']), ['S/=/1/2/1h/x/a.js', 'Z/0s/a.js']);
});

test("{ttl} without a rule ttl: the longest matching static route's cache", () => {
  const routes = [
    route('/', { static: 'site', cache: 'public, max-age=600' }),
    route('/static', { static: 'public', cache: 'immutable' }),
    route('/static/nocache', { static: 'nc' }),
    route('/api', { to: 'web' }),
  ];
  const rules = [rule('arl', ['T/{ttl}/{path}'])];
  const urls = flushUrls({ routes }, { rules, enable: ['arl'] }, ['/index.html', '/static/app.js', '/static', '/static/nocache/x', '/staticky.js', '/api/thing']);
  assert.deepEqual(urls, [
    'T/10m/index.html', // under '/' only: public, max-age=600
    'T/365d/static/app.js', // '/static' is longer than '/': immutable is a year
    'T/365d/static', // the route path itself
    'T/0s/static/nocache/x', // cache null: 0
    'T/10m/staticky.js', // not under /static (a prefix of the name, not a segment): '/'
    'T/10m/api/thing', // /api is a proxied route, not static: the static '/' still counts
  ]);
});

test('{ttl} is 0s for a path under no static route', () => {
  const routes = [route('/static', { static: 'public', cache: 'immutable' }), route('/', { to: 'web' })];
  const rules = [rule('arl', ['T/{ttl}/{path}'])];
  assert.deepEqual(flushUrls({ routes }, { rules, enable: ['arl'] }, ['/index.html', '/static/a.css']), ['T/0s/index.html', 'T/365d/static/a.css']);
  assert.deepEqual(flushUrls(NO_ROUTES, { rules, enable: ['arl'] }, ['/a']), ['T/0s/a']);
});

test('{ttl} reads max-age wherever it is in the cache value; no max-age is 0s', () => {
  const rules = [rule('arl', ['T/{ttl}/{path}'])];
  const ttl = (cache: string | null) => flushUrls({ routes: [route('/', { static: 'site', cache })] }, { rules, enable: ['arl'] }, ['/a'])[0];
  assert.equal(ttl('max-age=86400'), 'T/1d/a');
  assert.equal(ttl('public,max-age=120'), 'T/2m/a');
  assert.equal(ttl('public, MAX-AGE=90, must-revalidate'), 'T/90s/a');
  assert.equal(ttl('no-store'), 'T/0s/a');
  assert.equal(ttl('public, s-maxage=600'), 'T/0s/a');
  assert.equal(ttl(null), 'T/0s/a');
});

test('akamaiTtl: the largest whole unit of d, h, m, s', () => {
  assert.equal(akamaiTtl(86_400), '1d');
  assert.equal(akamaiTtl(31_536_000), '365d');
  assert.equal(akamaiTtl(3_600), '1h');
  assert.equal(akamaiTtl(7_200), '2h');
  assert.equal(akamaiTtl(90_000), '25h');
  assert.equal(akamaiTtl(120), '2m');
  assert.equal(akamaiTtl(90), '90s');
  assert.equal(akamaiTtl(61), '61s');
  assert.equal(akamaiTtl(0), '0s');
});

test('a {path} written right after the host gets its slash back', () => {
  const app = { routes: [] };
  const flush = { rules: [{ name: 'r', templates: ['https://cdn.example.com{path}', 'https://cdn.example.com/?u={path}'], includes: [], excludes: [], ttlSeconds: 60 }], enable: ['r'] };
  assert.deepEqual(flushUrls(app, flush, ['/static/app.js']), ['https://cdn.example.com/static/app.js', 'https://cdn.example.com/?u=static/app.js']);
});
