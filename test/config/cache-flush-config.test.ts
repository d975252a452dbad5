/**
 * `apps.<app>.cache_flush`: how a valid section normalises, the problems a bad one gets (each at its key
 * path), and an environment overriding `enable` through load.ts's deep merge.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { normaliseConfig } from '../../src/config/validate.ts';
import { loadConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/lib/errors.ts';
import { CTX, problems } from './config-problems.ts';
import { removeAfter } from '../helpers/cleanup.ts';

/** A config with one app `shop` (a web process and a static route) whose cache_flush is `cacheFlush`. */
function withFlush(cacheFlush: unknown): Record<string, unknown> {
  return {
    apps: {
      shop: {
        processes: { web: { command: 'node server.js' } },
        routes: [{ path: '/static', static: 'public', cache: 'immutable' }, { path: '/', to: 'web' }],
        cache_flush: cacheFlush,
      },
    },
  };
}

const flushOf = (cacheFlush: unknown) => normaliseConfig(withFlush(cacheFlush), CTX).apps.shop.cacheFlush;

test('a valid cache_flush normalises: rules in order with their names, every default', () => {
  const config = flushOf({
    rules: {
      cdn: { templates: ['https://cdn.example.com/{path}', 'https://www.example.com/{path}'], excludes: ['\\.map$'] },
      edge: { templates: 'https://edge.example.com/{ttl}/{path}', includes: ['^/static/'], ttl: '1h' },
      all: { templates: ['https://all.example.com'] },
    },
  });
  assert.deepEqual(config, {
    provider: 'http',
    rules: [
      { name: 'cdn', templates: ['https://cdn.example.com/{path}', 'https://www.example.com/{path}'], includes: [], excludes: ['\\.map$'], ttlSeconds: null },
      { name: 'edge', templates: ['https://edge.example.com/{ttl}/{path}'], includes: ['^/static/'], excludes: [], ttlSeconds: 3600 },
      { name: 'all', templates: ['https://all.example.com'], includes: [], excludes: [], ttlSeconds: null },
    ],
    enable: ['cdn', 'edge', 'all'],
    paths: [],
    retryForMs: 900_000,
    method: 'PURGE',
    headers: {},
    concurrency: 4,
    timeoutMs: 10_000,
    action: 'invalidate',
    network: 'production',
  });
});

test('a written cache_flush keeps every value: method upper-cased, durations in ms, ttl in seconds', () => {
  const config = flushOf({
    provider: 'akamai',
    rules: { a: { templates: ['S/=/1/2/{ttl}/x/{path}'], ttl: '90s' }, b: { templates: ['https://b.test/{path}'], ttl: 0 } },
    enable: ['b'],
    paths: ['/', '/sitemap.xml'],
    retry_for: '2h',
    method: 'purge',
    headers: { 'X-Purge-Token': 'abc', 'Surrogate-Key': 'all pages' },
    concurrency: 8,
    timeout: '3s',
    action: 'delete',
    network: 'staging',
  });
  assert.deepEqual(config, {
    provider: 'akamai',
    rules: [
      { name: 'a', templates: ['S/=/1/2/{ttl}/x/{path}'], includes: [], excludes: [], ttlSeconds: 90 },
      { name: 'b', templates: ['https://b.test/{path}'], includes: [], excludes: [], ttlSeconds: 0 },
    ],
    enable: ['b'],
    paths: ['/', '/sitemap.xml'],
    retryForMs: 7_200_000,
    method: 'PURGE',
    headers: { 'X-Purge-Token': 'abc', 'Surrogate-Key': 'all pages' },
    concurrency: 8,
    timeoutMs: 3_000,
    action: 'delete',
    network: 'staging',
  });
});

test('enable: an empty list enables nothing; null means every rule; a repeated name counts once', () => {
  const rules = { a: { templates: 'https://a.test/{path}' }, b: { templates: 'https://b.test/{path}' } };
  assert.deepEqual(flushOf({ rules, enable: [] })?.enable, []);
  assert.deepEqual(flushOf({ rules, enable: null })?.enable, ['a', 'b']);
  assert.deepEqual(flushOf({ rules, enable: ['b', 'a', 'b'] })?.enable, ['b', 'a']);
  assert.deepEqual(flushOf({ rules, enable: 'b' })?.enable, ['b']);
});

test('a list of rules is read as rules named "1", "2", ...', () => {
  const config = flushOf({ rules: [{ templates: 'https://a.test/{path}' }, { templates: ['https://b.test/{path}'], includes: '\\.css$' }], enable: ['2'] });
  assert.deepEqual(config?.rules, [
    { name: '1', templates: ['https://a.test/{path}'], includes: [], excludes: [], ttlSeconds: null },
    { name: '2', templates: ['https://b.test/{path}'], includes: ['\\.css$'], excludes: [], ttlSeconds: null },
  ]);
  assert.deepEqual(config?.enable, ['2']);
  assert.deepEqual(flushOf({ rules: [{ templates: 'https://a.test/{path}' }, { templates: 'https://b.test/{path}' }] })?.enable, ['1', '2']);
  // Problems in a list are at the item's index.
  assert.deepEqual(problems(withFlush({ rules: [{ templates: 'https://a.test/{path}' }, { templates: 'https://b.test/{host}' }] })), [
    'apps.shop.cache_flush.rules.1.templates: unknown placeholder {host}: a template may use {path} and {ttl}',
  ]);
});

test('no cache_flush (or null) is none', () => {
  assert.equal(flushOf(null), null);
  assert.equal(normaliseConfig({ apps: { shop: { processes: { web: { command: 'x' } } } } }, CTX).apps.shop.cacheFlush, null);
});

test('an unknown placeholder is a problem at the template\'s key path', () => {
  assert.deepEqual(problems(withFlush({ rules: { cdn: { templates: ['https://cdn.test/{path}', 'https://{host}/{path}'] } } })), [
    'apps.shop.cache_flush.rules.cdn.templates.1: unknown placeholder {host}: a template may use {path} and {ttl}',
  ]);
  // One bare template string: the problem is at `templates` itself.
  assert.deepEqual(problems(withFlush({ provider: 'akamai', rules: { arl: { templates: 'S/=/1/{TTL}/{path}' } } })), [
    'apps.shop.cache_flush.rules.arl.templates: unknown placeholder {TTL}: a template may use {path} and {ttl}',
  ]);
  assert.deepEqual(problems(withFlush({ rules: { cdn: { templates: ['https://cdn.test/{}'] } } })), [
    'apps.shop.cache_flush.rules.cdn.templates.0: unknown placeholder {}: a template may use {path} and {ttl}',
  ]);
});

test('http provider: a template that is not an http(s) URL is a problem; akamai takes ARLs', () => {
  assert.deepEqual(problems(withFlush({ rules: { arl: { templates: ['S/=/123/4567/1d/www.example.com/{path}', 'ftp://cdn.test/{path}', 'cdn.test/{path}'] } } })), [
    'apps.shop.cache_flush.rules.arl.templates.0: the http provider purges URLs: expected http(s)://..., got "S/=/123/4567/1d/www.example.com/{path}"',
    'apps.shop.cache_flush.rules.arl.templates.1: the http provider purges URLs: expected http(s)://..., got "ftp://cdn.test/{path}"',
    'apps.shop.cache_flush.rules.arl.templates.2: the http provider purges URLs: expected http(s)://..., got "cdn.test/{path}"',
  ]);
  assert.deepEqual(flushOf({ provider: 'akamai', rules: { arl: { templates: ['S/=/123/4567/1d/www.example.com/{path}'] } } })?.rules[0].templates, ['S/=/123/4567/1d/www.example.com/{path}']);
  // Credentials in a template would reach logs and history with every purge URL: refused, and never quoted.
  const creds = problems(withFlush({ rules: { cdn: { templates: ['https://purger:s3cret@cdn.test/{path}'] } } }));
  assert.deepEqual(creds, ['apps.shop.cache_flush.rules.cdn.templates.0: a template carries user:password, which would be logged and shown: send a purge key in cache_flush.headers']);
});

test('enable naming an unknown rule: the problem names the rule and lists the rules', () => {
  assert.deepEqual(problems(withFlush({ rules: { cdn1: { templates: 'https://a.test/{path}' }, cdn2: { templates: 'https://b.test/{path}' } }, enable: ['cdn1', 'cdn3'] })), [
    'apps.shop.cache_flush.enable.1: no rule named "cdn3" in cache_flush.rules (rules: cdn1, cdn2)',
  ]);
  assert.deepEqual(problems(withFlush({ rules: { cdn1: { templates: 'https://a.test/{path}' } }, enable: 'cdn' })), [
    'apps.shop.cache_flush.enable: no rule named "cdn" in cache_flush.rules (rules: cdn1)',
  ]);
});

test('a bad regex in includes or excludes is a problem at its index', () => {
  const bad = problems(withFlush({ rules: { cdn: { templates: 'https://a.test/{path}', includes: ['^/ok/', '(unclosed'], excludes: ['*'] } } }));
  assert.equal(bad.length, 2, bad.join('\n'));
  assert.match(bad[0], /^apps\.shop\.cache_flush\.rules\.cdn\.includes\.1: expected a regular expression, got "\(unclosed": /);
  assert.match(bad[1], /^apps\.shop\.cache_flush\.rules\.cdn\.excludes\.0: expected a regular expression, got "\*": /);
});

test('rules missing (or null) is a problem; enable then lists no rules', () => {
  assert.deepEqual(problems(withFlush({ provider: 'http' })), [
    'apps.shop.cache_flush.rules: required: named rules, e.g. { cdn: { templates: ["https://cdn.example.com/{path}"] } }',
  ]);
  assert.deepEqual(problems(withFlush({ rules: null, enable: ['cdn'] })), [
    'apps.shop.cache_flush.rules: required: named rules, e.g. { cdn: { templates: ["https://cdn.example.com/{path}"] } }',
    'apps.shop.cache_flush.enable.0: no rule named "cdn" in cache_flush.rules (rules: none)',
  ]);
  assert.deepEqual(problems(withFlush({ rules: { cdn: {} } })), [
    'apps.shop.cache_flush.rules.cdn.templates: required: at least one URL template, e.g. "https://cdn.example.com/{path}"',
  ]);
});

test('a path in paths must start with "/", with no spaces and no "." or ".." segment', () => {
  const expected = 'expected a path starting with "/", without spaces or "." and ".." segments';
  assert.deepEqual(problems(withFlush({ rules: { cdn: { templates: 'https://a.test/{path}' } }, paths: ['/', 'sitemap.xml', '/a b', '/static/../admin', '/./x', '/a/..'] })), [
    `apps.shop.cache_flush.paths.1: ${expected}, got "sitemap.xml"`,
    `apps.shop.cache_flush.paths.2: ${expected}, got "/a b"`,
    `apps.shop.cache_flush.paths.3: ${expected}, got "/static/../admin"`,
    `apps.shop.cache_flush.paths.4: ${expected}, got "/./x"`,
    `apps.shop.cache_flush.paths.5: ${expected}, got "/a/.."`,
  ]);
  assert.deepEqual(normaliseConfig(withFlush({ rules: { cdn: { templates: 'https://a.test/{path}' } }, paths: ['/..well', '/a.b/c'] }), CTX).apps.shop.cacheFlush?.paths, ['/..well', '/a.b/c'], 'dots inside a name are fine');
});

test('headers: a value with a newline, a non-string value, or a bad name is a problem at the header', () => {
  const bad = problems(withFlush({ rules: { cdn: { templates: 'https://a.test/{path}' } }, headers: { 'X-Ok': 'fine', 'X-Bad': 'a\r\nInjected: yes', 'X-Num': 5, 'Bad Name': 'v' } }));
  assert.deepEqual(bad, [
    'apps.shop.cache_flush.headers.X-Bad: expected a header name and a one-line string value',
    'apps.shop.cache_flush.headers.X-Num: expected a header name and a one-line string value',
    'apps.shop.cache_flush.headers.Bad Name: expected a header name and a one-line string value',
  ]);
  assert.deepEqual(problems(withFlush({ rules: { cdn: { templates: 'https://a.test/{path}' } }, headers: { 'X-Bad': 'line\n' } })), [
    'apps.shop.cache_flush.headers.X-Bad: expected a header name and a one-line string value',
  ]);
});

test('other values: provider, action, network, method, concurrency, durations, a rule name, unknown keys', () => {
  const bad = problems(
    withFlush({
      provider: 'fastly',
      method: 'PUR GE',
      concurrency: 0,
      timeout: 0,
      retry_for: 'forever',
      action: 'purge',
      network: 'prod',
      rules: { 'bad name!': { templates: 'https://a.test/{path}', ttl: 'a day', include: ['x'] } },
      retries: 3,
    }),
  );
  assert.deepEqual(bad, [
    'apps.shop.cache_flush.provider: expected one of http, akamai, got "fastly"',
    'apps.shop.cache_flush.method: expected an HTTP method such as PURGE, got "PUR GE"',
    'apps.shop.cache_flush.concurrency: expected a positive integer, got 0',
    'apps.shop.cache_flush.timeout: expected a duration greater than 0, got 0',
    'apps.shop.cache_flush.retry_for: expected a duration such as 250ms, 30s, 5m, 2h or 14d, got "forever"',
    'apps.shop.cache_flush.action: expected one of invalidate, delete, got "purge"',
    'apps.shop.cache_flush.network: expected one of production, staging, got "prod"',
    'apps.shop.cache_flush.rules.bad name!: rule names are 1-64 letters, digits, . _ -, got "bad name!"',
    'apps.shop.cache_flush.rules.bad name!.ttl: expected a duration such as 250ms, 30s, 5m, 2h or 14d, got "a day"',
    'apps.shop.cache_flush.rules.bad name!.include: unknown key',
    'apps.shop.cache_flush.retries: unknown key',
  ]);
});

// ---- through load.ts, with an environment -----------------------------------------------------

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-flush-config-'));
  removeAfter(t, dir);
  return dir;
}

const YAML = [
  'apps:',
  '  shop:',
  '    processes: { web: { command: "node server.js" } }',
  '    cache_flush:',
  '      rules:',
  '        cdn1: { templates: ["https://cdn1.example.com/{path}"] }',
  '        cdn2: { templates: ["https://cdn2.example.com/{path}"], ttl: 1h }',
  '      enable: [cdn1]',
  'environments:',
  '  prod:',
  '    apps: { shop: { cache_flush: { enable: [cdn2] } } }',
  '  staging:',
  '    apps: { shop: { cache_flush: { network: staging } } }',
  '  broken:',
  '    apps: { shop: { cache_flush: { enable: [cdn9] } } }',
  '',
].join('\n');

test("an environment's enable replaces the top-level list; the rest of cache_flush is merged", async (t) => {
  const dir = await tempDir(t);
  const configPath = join(dir, 'berth.yaml');
  await writeFile(configPath, YAML);
  const base = await loadConfig({ configPath, environ: {} });
  assert.deepEqual(base.apps.shop.cacheFlush?.enable, ['cdn1']);
  const prod = await loadConfig({ configPath, env: 'prod', environ: {} });
  assert.equal(prod.environment, 'prod');
  assert.deepEqual(prod.apps.shop.cacheFlush?.enable, ['cdn2']);
  // The rules come from the top level, untouched.
  assert.deepEqual(prod.apps.shop.cacheFlush?.rules.map((r) => [r.name, r.ttlSeconds]), [['cdn1', null], ['cdn2', 3600]]);
  // BERTH_ENV picks the environment too.
  assert.deepEqual((await loadConfig({ configPath, environ: { BERTH_ENV: 'prod' } })).apps.shop.cacheFlush?.enable, ['cdn2']);
  // An environment that leaves enable alone keeps the top-level list, with its own change merged in.
  const staging = await loadConfig({ configPath, env: 'staging', environ: {} });
  assert.deepEqual(staging.apps.shop.cacheFlush?.enable, ['cdn1']);
  assert.equal(staging.apps.shop.cacheFlush?.network, 'staging');
  assert.equal(base.apps.shop.cacheFlush?.network, 'production');
});

test("an environment's enable naming an unknown rule is a problem that says where it was set", async (t) => {
  const dir = await tempDir(t);
  const configPath = join(dir, 'berth.yaml');
  await writeFile(configPath, YAML);
  const err = await loadConfig({ configPath, env: 'broken', environ: {} }).then(
    () => assert.fail('expected the config to be rejected'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ConfigError);
  assert.deepEqual(
    err.problems.map((p) => `${p.path}: ${p.message}`),
    ['apps.shop.cache_flush.enable.0: no rule named "cdn9" in cache_flush.rules (rules: cdn1, cdn2) (set in environments.broken)'],
  );
});
