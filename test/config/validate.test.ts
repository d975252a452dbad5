import { test } from 'node:test';
import { availableParallelism } from 'node:os';
import assert from 'node:assert/strict';
import { normaliseConfig, checkConfig, parseListenAddress, TOP_LEVEL_KEYS } from '../../src/config/validate.ts';
import { CTX, problems } from './config-problems.ts';
import { ConfigError } from '../../src/lib/errors.ts';
import {
  DEFAULT_BUFFER_MEMORY_BYTES,
  DEFAULT_CONCURRENCY,
  DEFAULT_INSTANCES,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_SCHEDULE_TIMEOUT_MS,
  DEFAULT_TIMEOUT_HEADERS_MS,
  DEFAULT_WEBSOCKETS_MAX,
  MAX_TIMER_MS,
} from '../../src/config/schema.ts';
import { formatDuration } from '../../src/lib/durations.ts';

const HASH = 'sha256:' + 'ab'.repeat(32);

/** A config with one app `shop` whose app-level keys are `app`. */
function withApp(app: Record<string, unknown>, top: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...top, apps: { shop: { processes: { web: { command: 'node server.js' } }, ...app } } };
}

test('an empty config is valid and every default applies', () => {
  for (const raw of [{}, null, { apps: null }, { apps: {} }]) {
    const config = normaliseConfig(raw, CTX);
    assert.deepEqual(config.apps, {});
    assert.equal(config.stateDir, '/srv/site/.berth');
    assert.equal(config.control.socket, '/srv/site/.berth/control.sock');
    assert.deepEqual(config.listen, [{ kind: 'tcp', host: '127.0.0.1', port: 8080, text: '127.0.0.1:8080', tls: false }]);
    assert.equal(config.internalPrefix, '/_berth');
    assert.equal(config.database, null);
  }
});

test('every top-level key is known; null means "use the default"', () => {
  const raw = Object.fromEntries(TOP_LEVEL_KEYS.map((k) => [k, null]));
  assert.deepEqual(normaliseConfig(raw, CTX), normaliseConfig({}, CTX));
});

test('health: path kept as written; a path without a leading slash is a problem', () => {
  const config = normaliseConfig(withApp({ health: { path: '/up/?deep=1', busy_grace: '5s', unhealthy_after: 5, startup_timeout: '2m' } }), CTX);
  assert.deepEqual(config.apps.shop.health, { path: '/up/?deep=1', intervalMs: 2_000, timeoutMs: 1_000, unhealthyAfter: 5, startupTimeoutMs: 120_000, busyGraceMs: 5_000 });
  assert.deepEqual(problems(withApp({ health: { path: 'up', unhealthy_after: 0 } })), [
    'apps.shop.health.path: expected a path starting with "/", got "up"',
    'apps.shop.health.unhealthy_after: expected a positive integer, got 0',
  ]);
});

test('a non-mapping top level is a problem', () => {
  assert.deepEqual(problems(['a', 'b']), ['the top level must be a mapping of keys, got a list']);
  assert.deepEqual(problems('text'), ['the top level must be a mapping of keys, got "text"']);
});

test('instances: two is reported with the SPEC wording', () => {
  const raw = withApp({ processes: { web: { command: 'node server.js', instances: 'two' } } });
  assert.deepEqual(problems(raw), ['apps.shop.processes.web.instances: expected a positive integer, got "two"']);
});

test('instances may be 0 but not negative; concurrency must be positive', () => {
  const ok = normaliseConfig(withApp({ processes: { web: { command: 'x', instances: 0 } } }), CTX);
  assert.equal(ok.apps.shop.processes?.web.instances, 0);
  assert.deepEqual(problems(withApp({ processes: { web: { command: 'x', instances: -1, concurrency: 0 } } })), [
    'apps.shop.processes.web.instances: expected a positive integer or 0, got -1',
    'apps.shop.processes.web.concurrency: expected a positive integer, got 0',
  ]);
  assert.deepEqual(problems(withApp({ processes: { web: { command: 'x', instances: 1.5 } } })), [
    'apps.shop.processes.web.instances: expected a positive integer, got 1.5',
  ]);
});

test('process defaults: web is http with the default concurrency, others are workers with concurrency 1', () => {
  const config = normaliseConfig(withApp({ processes: { web: { command: 'a' }, worker: { command: 'b', concurrency: 50, heartbeat_timeout: '30s' } } }), CTX);
  const { web, worker } = config.apps.shop.processes!;
  assert.deepEqual(web, { name: 'web', command: 'a', instances: DEFAULT_INSTANCES, concurrency: DEFAULT_CONCURRENCY, http: true, heartbeatTimeoutMs: null, env: {} });
  assert.deepEqual(worker, { name: 'worker', command: 'b', instances: 1, concurrency: 1, http: false, heartbeatTimeoutMs: 30_000, env: {} });
  assert.deepEqual(config.apps.shop.routes, [{ path: '/', to: 'web', static: null, cache: null, cors: null, buffering: true, affinity: null }]);
});

test('a route target becomes http; http: false on a route target is a problem', () => {
  const config = normaliseConfig(withApp({ processes: { api: { command: 'a' } }, routes: [{ path: '/', to: 'api' }] }), CTX);
  assert.equal(config.apps.shop.processes?.api.http, true);
  assert.equal(config.apps.shop.processes?.api.concurrency, DEFAULT_CONCURRENCY);
  assert.deepEqual(problems(withApp({ processes: { api: { command: 'a', http: false } }, routes: [{ path: '/', to: 'api' }] })), [
    'apps.shop.processes.api.http: is false, but a route sends traffic to this process type',
  ]);
});

test('heartbeat_timeout on an http type and a missing command are problems', () => {
  assert.deepEqual(problems(withApp({ processes: { web: { heartbeat_timeout: '10s' } } })), [
    'apps.shop.processes.web.heartbeat_timeout: only applies to non-http process types',
    'apps.shop.processes.web.command: required',
  ]);
});

test('a route to a missing process type is a problem', () => {
  const raw = withApp({ routes: [{ path: '/api', to: 'api' }, { path: '/', to: 'web' }] });
  assert.deepEqual(problems(raw), ['apps.shop.routes.0.to: names process type "api", which is not in processes (web)']);
  // Names inherited by every object are not process types either.
  assert.deepEqual(problems(withApp({ routes: [{ path: '/', to: 'toString' }] })), [
    'apps.shop.routes.0.to: names process type "toString", which is not in processes (web)',
  ]);
});

test('a Procfile app (no processes) may route to any type: it is checked at deploy time', () => {
  const config = normaliseConfig({ apps: { docs: { routes: [{ path: '/', to: 'api' }], scale: { api: 3 } } } }, CTX);
  assert.equal(config.apps.docs.processes, null);
  assert.deepEqual(config.apps.docs.scale, { api: 3 });
  const defaults = normaliseConfig({ apps: { docs: {} } }, CTX);
  assert.deepEqual(defaults.apps.docs.routes, [{ path: '/', to: 'web', static: null, cache: null, cors: null, buffering: true, affinity: null }]);
});

test('scale is a problem on an app with processes; empty processes is a problem', () => {
  assert.deepEqual(problems(withApp({ scale: { web: 2 } })), [
    'apps.shop.scale.web: scale only applies to apps whose process types come from a Procfile; set processes.<type>.instances instead',
  ]);
  assert.deepEqual(problems(withApp({ processes: {} })), [
    'apps.shop.processes: expected at least one process type (leave processes out to read them from the Procfile)',
  ]);
});

test('an app without a web type and without routes gets no routes', () => {
  const config = normaliseConfig(withApp({ processes: { worker: { command: 'w' } } }), CTX);
  assert.deepEqual(config.apps.shop.routes, []);
});

test('routes: trailing slashes, exactly one of to/static, duplicates, static-only keys, paths inside the release', () => {
  const config = normaliseConfig(withApp({ routes: [{ path: '/api/', to: 'web' }, { path: '/', static: './public/', cache: 'max-age=60' }] }), CTX);
  assert.deepEqual(config.apps.shop.routes, [
    { path: '/api', to: 'web', static: null, cache: null, cors: null, buffering: true, affinity: null },
    { path: '/', to: null, static: 'public', cache: 'max-age=60', cors: null, buffering: true, affinity: null },
  ]);
  const raw = withApp({
    routes: [
      { path: 'api', to: 'web' },
      { path: '/a', to: 'web', static: 'x' },
      { path: '/b' },
      { path: '/c/', to: 'web', cache: 'immutable' },
      { path: '/c', to: 'web' },
      { path: '/d', static: '../secrets' },
      { to: 'web' },
    ],
  });
  assert.deepEqual(problems(raw), [
    'apps.shop.routes.0.path: expected a path starting with "/", got "api"',
    'apps.shop.routes.1: expected either "to" (a process type) or "static" (a directory), not both',
    'apps.shop.routes.2: expected "to" (a process type) or "static" (a directory)',
    'apps.shop.routes.3.cache: only applies to static routes',
    'apps.shop.routes.4.path: duplicate path "/c": routes.3 already routes it',
    'apps.shop.routes.5.static: expected a relative path inside the release, without "..", got "../secrets"',
    'apps.shop.routes.6.path: required',
  ]);
});

test('unknown keys are problems at every level', () => {
  const raw = withApp(
    { procesess: {}, health: { path: '/up', intervl: '2s' }, routes: [{ path: '/', to: 'web', weight: 2 }] },
    { control: { sockett: 'x' }, listn: [] },
  );
  assert.deepEqual(problems(raw).sort(), [
    'apps.shop.health.intervl: unknown key',
    'apps.shop.procesess: unknown key',
    'apps.shop.routes.0.weight: unknown key',
    'control.sockett: unknown key',
    'listn: unknown key',
  ]);
});

test('overlapping host+path across apps names both apps', () => {
  const raw = {
    apps: {
      shop: { processes: { web: { command: 'a' } } },
      blog: { processes: { web: { command: 'b' } } },
    },
  };
  assert.deepEqual(problems(raw), ['apps.blog.hosts: overlapping host+path: apps "shop" and "blog" both route / on any host (both are catch-all)']);

  const sameHost = {
    apps: {
      shop: { hosts: ['Example.com'], processes: { web: { command: 'a' } }, routes: [{ path: '/api', to: 'web' }] },
      blog: { hosts: ['example.com', 'blog.example.com'], processes: { web: { command: 'b' } }, routes: [{ path: '/', to: 'web' }, { path: '/api/', to: 'web' }] },
    },
  };
  assert.deepEqual(problems(sameHost), ['apps.blog.routes.1.path: overlapping host+path: apps "shop" and "blog" both route /api on host example.com']);

  // Different hosts, or different paths on the same host, do not overlap.
  const distinct = {
    apps: {
      shop: { hosts: ['shop.example.com'], processes: { web: { command: 'a' } } },
      blog: { hosts: ['*.example.com'], processes: { web: { command: 'b' } } },
      www: { hosts: 'shop.example.com', processes: { web: { command: 'c' } }, routes: [{ path: '/www', to: 'web' }] },
    },
  };
  assert.deepEqual(Object.keys(normaliseConfig(distinct, CTX).apps), ['shop', 'blog', 'www']);
});

test('hosts are lower-cased and deduplicated; bad hosts are problems', () => {
  const config = normaliseConfig(withApp({ hosts: ['Shop.Example.COM', 'shop.example.com', '*.Test'] }), CTX);
  assert.deepEqual(config.apps.shop.hosts, ['shop.example.com', '*.test']);
  assert.deepEqual(problems(withApp({ hosts: ['shop.example.com:8080', 'a.*.com', ''] })), [
    'apps.shop.hosts.0: expected a host name such as "shop.example.com" or a wildcard such as "*.example.com", got "shop.example.com:8080"',
    'apps.shop.hosts.1: expected a host name such as "shop.example.com" or a wildcard such as "*.example.com", got "a.*.com"',
    'apps.shop.hosts.2: expected a non-empty string',
  ]);
});

test('the DB budget names the numbers of every http pool', () => {
  const raw = withApp({
    db_connections: 40,
    processes: { web: { command: 'a', instances: 2, concurrency: 8 }, ws: { command: 'b', instances: 1, concurrency: 32, http: true }, worker: { command: 'c', instances: 5 } },
  });
  assert.deepEqual(problems(raw), ['apps.shop.db_connections: the http pools need 48 connections (web 2x8 + ws 1x32), more than the budget of 40']);
  // Exactly at the budget is fine; workers do not count.
  const processes = { web: { command: 'a', instances: 2, concurrency: 8 }, ws: { command: 'b', instances: 1, concurrency: 32, http: true } };
  const atBudget = normaliseConfig(withApp({ db_connections: 48, processes }), CTX);
  assert.equal(atBudget.apps.shop.dbConnections, 48);
  assert.deepEqual(problems(withApp({ db_connections: 0 })), ['apps.shop.db_connections: expected a positive integer, got 0']);
});

test('durations: units, bare milliseconds, bad text and zero', () => {
  const config = normaliseConfig(withApp({ health: { interval: '250ms', timeout: 500 }, timeouts: { headers: '1m' } }, { history_retention: '2h' }), CTX);
  assert.equal(config.apps.shop.health.intervalMs, 250);
  assert.equal(config.apps.shop.health.timeoutMs, 500);
  assert.equal(config.apps.shop.timeouts.headersMs, 60_000);
  assert.equal(config.apps.shop.health.busyGraceMs, 60_000, 'busy_grace defaults to timeouts.headers');
  assert.equal(config.historyRetentionMs, 7_200_000);
  assert.deepEqual(problems(withApp({ health: { interval: 'soon', timeout: '0s' }, queue: { timeout: -5 } })), [
    'apps.shop.health.interval: expected a duration such as 250ms, 30s, 5m, 2h or 14d, got "soon"',
    'apps.shop.health.timeout: expected a duration greater than 0, got "0s"',
    'apps.shop.queue.timeout: expected a duration such as 250ms, 30s, 5m, 2h or 14d, got -5',
  ]);
  assert.equal(normaliseConfig(withApp({}), CTX).apps.shop.health.busyGraceMs, DEFAULT_TIMEOUT_HEADERS_MS);
});

test('listen: host:port, [v6]:port, unix paths, a bare string; bad addresses are problems', () => {
  const config = normaliseConfig({ listen: ['0.0.0.0:0', '[::]:443', 'unix:front.sock', 'unix:/run/berth.sock'], state_dir: 'state' }, CTX);
  assert.deepEqual(config.listen, [
    { kind: 'tcp', host: '0.0.0.0', port: 0, text: '0.0.0.0:0', tls: false },
    { kind: 'tcp', host: '::', port: 443, text: '[::]:443', tls: false },
    { kind: 'unix', path: '/srv/site/state/front.sock', text: 'unix:front.sock', tls: false },
    { kind: 'unix', path: '/run/berth.sock', text: 'unix:/run/berth.sock', tls: false },
  ]);
  assert.deepEqual(normaliseConfig({ listen: 'localhost:8080' }, CTX).listen, [{ kind: 'tcp', host: 'localhost', port: 8080, text: 'localhost:8080', tls: false }]);
  assert.deepEqual(problems({ listen: ['8080', 'localhost:http', '::1:80', 'host:70000', 'unix:', 80] }), [
    'listen.0: expected "host:port", "[v6]:port" or "unix:/path", got "8080"',
    'listen.1: expected a port from 0 to 65535 in "localhost:http"',
    'listen.2: expected "host:port", "[v6]:port" or "unix:/path", got "::1:80"',
    'listen.3: expected a port from 0 to 65535 in "host:70000"',
    'listen.4: expected "host:port", "[v6]:port" or "unix:/path", got "unix:"',
    'listen.5: expected "host:port", "[v6]:port", "unix:/path" or { address, tls }, got 80',
  ]);
  assert.deepEqual(problems({ listen: 'nope' }), ['listen: expected "host:port", "[v6]:port" or "unix:/path", got "nope"']);
  assert.deepEqual(problems({ listen: [] }), ['listen: expected at least one address to listen on']);
  assert.deepEqual(problems({ control: { listen: 'unix:/tmp/x.sock' } }), [
    'control.listen: expected "host:port" or "[v6]:port" (the control socket is set by control.socket), got "unix:/tmp/x.sock"',
  ]);
  assert.equal(typeof parseListenAddress('[::1]', '/'), 'string');
});

test('TLS: listeners, certificates, redirects, HSTS, canonical host and ACME, each problem at its key', () => {
  const tls = { address: '0.0.0.0:443', tls: true };
  const config = normaliseConfig(
    withApp(
      {
        hosts: ['shop.example.com', 'www.shop.example.com', '*.shop.test'],
        tls: [{ hosts: ['a.shop.test'], certificate: 'a.crt', key: 'a.key' }, { certificate: '/etc/ssl/shop.crt', key: '/etc/ssl/shop.key' }],
        https_redirect: true,
        hsts: { max_age: '2h' },
        canonical_host: 'Shop.Example.com',
      },
      { listen: ['0.0.0.0:80', tls] },
    ),
    CTX,
  );
  assert.deepEqual(config.listen.map((a) => [a.text, a.tls]), [['0.0.0.0:80', false], ['0.0.0.0:443', true]]);
  const shop = config.apps.shop;
  assert.deepEqual(shop.tls, [
    { from: 'apps.shop.tls.0', hosts: ['a.shop.test'], files: { certificate: '/srv/site/a.crt', key: '/srv/site/a.key' } },
    { from: 'apps.shop.tls.1', hosts: [], files: { certificate: '/etc/ssl/shop.crt', key: '/etc/ssl/shop.key' } },
  ]);
  assert.equal(shop.httpsRedirect, true);
  assert.deepEqual(shop.hsts, { maxAgeS: 7200, includeSubdomains: false, preload: false });
  assert.equal(shop.canonicalHost, 'shop.example.com');
  assert.equal(shop.acme, false);
  assert.deepEqual(config.tls, { directory: null, defaultCertificate: null });

  assert.deepEqual(problems({ listen: [{ address: 'unix:/x.sock', tls: true }, { tls: true }, { address: '127.0.0.1:1', tls: 'yes', extra: 1 }] }), [
    'listen.0.tls: TLS listeners take "host:port" or "[v6]:port", not a unix socket',
    'listen.1.address: required: "host:port", "[v6]:port" or "unix:/path"',
    'listen.2.tls: expected true or false, got "yes"',
    'listen.2.extra: unknown key',
  ]);
  assert.deepEqual(problems({ listen: [tls] }), ['listen.0: a TLS listener needs certificates: set apps.<app>.tls (files or acme: true), tls.directory or tls.default_certificate']);
  assert.deepEqual(
    problems(
      withApp({
        hosts: ['shop.example.com'],
        tls: [{ hosts: ['other.example.com'], certificate: 'a.crt' }],
        https_redirect: true,
        hsts: { preload: true },
        canonical_host: 'elsewhere.example.com',
      }),
    ),
    [
      'apps.shop.tls.0.hosts.0: "other.example.com" is not one of the app\'s hosts (shop.example.com)',
      'apps.shop.tls.0.key: required: the PEM private key file',
      'apps.shop.https_redirect: needs a TLS listener in listen, e.g. { address: "0.0.0.0:443", tls: true }',
      'apps.shop.hsts.preload: preload needs include_subdomains: true and a max_age of at least 365d (browsers refuse the preload list otherwise)',
      'apps.shop.canonical_host: "elsewhere.example.com" is not one of the app\'s hosts (shop.example.com): a redirect there would leave the app',
    ],
  );
  // ACME: a TLS listener, a cleartext one for http-01, and an ask URL for names only known at the handshake.
  const acme = normaliseConfig(withApp({ hosts: ['shop.example.com'], tls: { acme: true } }, { listen: ['0.0.0.0:80', tls], acme: { email: 'ops@example.com' } }), CTX);
  assert.equal(acme.apps.shop.acme, true);
  assert.equal(acme.acme.directory, 'https://acme-v02.api.letsencrypt.org/directory');
  assert.equal(acme.acme.challenge, 'http-01');
  assert.deepEqual(problems(withApp({ hosts: ['*.shop.test'], tls: { acme: true, certificate: 'x' } }, { listen: [tls], acme: { directory: 'ftp://x', email: 'nope', ask: 'x' } })), [
    'acme.directory: expected an https:// URL of an ACME directory, got "ftp://x"',
    'acme.email: expected an email address, got "nope"',
    'acme.ask: expected an http:// or https:// URL, got "x"',
    'apps.shop.tls.acme: give either acme: true or certificate and key files, not both',
    'apps.shop.tls.acme: the http-01 challenge needs a cleartext listener (port 80 for a public CA); or set acme.challenge: tls-alpn-01',
  ]);
  assert.deepEqual(problems(withApp({ tls: { acme: true } }, { listen: ['0.0.0.0:80', tls] })), [
    'apps.shop.tls.acme: a catch-all app gets certificates on demand, which needs acme.ask (a URL that answers 200 for names you own)',
  ]);
});

test('cron expressions are checked with croner', () => {
  const config = normaliseConfig(withApp({ schedule: { nightly: { cron: '*/10 * * * * *', command: 'x' } } }, { cleanup_cron: '15 * * * *' }), CTX);
  assert.deepEqual(config.apps.shop.schedule.nightly, {
    name: 'nightly', cron: '*/10 * * * * *', command: 'x', timeoutMs: DEFAULT_SCHEDULE_TIMEOUT_MS, timezone: null, overlap: 'skip',
  });
  const bad = problems(withApp({ schedule: { a: { cron: '61 * * * *', command: 'x' }, b: { cron: 'every day', command: 'x', overlap: 'queue', timezone: 'Mars/Base' }, c: {} } }, { cleanup_cron: '* * *' }));
  assert.equal(bad.length, 7, bad.join('\n'));
  // Problems come in the order their keys appear in the file; missing keys last within their mapping.
  assert.match(bad[0], /^cleanup_cron: expected a cron expression with 5 or 6 fields, got "\* \* \*"/);
  assert.match(bad[1], /^apps\.shop\.schedule\.a\.cron: expected a cron expression with 5 or 6 fields, got "61 \* \* \* \*": .*minute/);
  assert.match(bad[2], /^apps\.shop\.schedule\.b\.cron: expected a cron expression with 5 or 6 fields, got "every day"/);
  assert.equal(bad[3], 'apps.shop.schedule.b.overlap: expected one of skip, allow, got "queue"');
  assert.equal(bad[4], 'apps.shop.schedule.b.timezone: expected an IANA time zone such as "Europe/Paris" or "UTC", got "Mars/Base"');
  assert.equal(bad[5], 'apps.shop.schedule.c.cron: required');
  assert.equal(bad[6], 'apps.shop.schedule.c.command: required');
});

test('regexes must compile: permissions and cache_flush includes/excludes', () => {
  const raw = withApp(
    { cache_flush: { rules: [{ templates: ['https://cdn.test{path}'], includes: ['('], excludes: '[a-' }, { includes: ['.*'] }] } },
    { control: { permissions: { production: { ci: ['^shop$', '*bad'] } } } },
  );
  const bad = problems(raw);
  assert.equal(bad.length, 4, bad.join('\n'));
  assert.match(bad[0], /^control\.permissions\.production\.ci\.1: expected a regular expression, got "\*bad": Invalid regular expression/);
  assert.match(bad[1], /^apps\.shop\.cache_flush\.rules\.0\.includes\.0: expected a regular expression, got "\(":/);
  assert.match(bad[2], /^apps\.shop\.cache_flush\.rules\.0\.excludes: expected a regular expression, got "\[a-":/);
  assert.equal(bad[3], 'apps.shop.cache_flush.rules.1.templates: required: at least one URL template, e.g. "https://cdn.example.com/{path}"');
});

test('cache_flush defaults and checks', () => {
  // A list of rules (the first shape) still reads: its rules are named 1, 2...
  const config = normaliseConfig(withApp({ cache_flush: { rules: [{ templates: 'https://cdn.test{path}' }] } }), CTX);
  assert.deepEqual(config.apps.shop.cacheFlush, {
    provider: 'http',
    rules: [{ name: '1', templates: ['https://cdn.test{path}'], includes: [], excludes: [], ttlSeconds: null }],
    enable: ['1'],
    paths: [],
    retryForMs: 15 * 60_000,
    method: 'PURGE',
    headers: {},
    concurrency: 4,
    timeoutMs: 10_000,
    action: 'invalidate',
    network: 'production',
  });
  assert.deepEqual(problems(withApp({ cache_flush: { provider: 'fastly', method: 'PUR GE', concurrency: 0 } })), [
    'apps.shop.cache_flush.provider: expected one of http, akamai, got "fastly"',
    'apps.shop.cache_flush.method: expected an HTTP method such as PURGE, got "PUR GE"',
    'apps.shop.cache_flush.concurrency: expected a positive integer, got 0',
    'apps.shop.cache_flush.rules: required: named rules, e.g. { cdn: { templates: ["https://cdn.example.com/{path}"] } }',
  ]);
});

test('control tokens: hashes are checked without echoing them, roles must be known', () => {
  const config = normaliseConfig({ control: { tokens: { alice: { hash: HASH.toUpperCase().replace('SHA256', 'sha256'), roles: 'admin' } } } }, CTX);
  assert.deepEqual(config.control.tokens, { alice: { hash: HASH, roles: ['admin'] } });
  const bad = problems({
    control: {
      tokens: {
        bob: { hash: 'my-secret-token', roles: ['viewer', 'root'] },
        eve: { hash: 'sha256:abc', roles: [] },
        mallory: { roles: ['viewer'] },
        trent: { hash: HASH },
      },
    },
  });
  assert.deepEqual(bad, [
    'control.tokens.bob.hash: expected "sha256:" followed by 64 hex digits (the SHA-256 of the token), got a string of 15 characters',
    'control.tokens.bob.roles.1: expected one of viewer, deployer, admin, got "root"',
    'control.tokens.eve.hash: expected "sha256:" followed by 64 hex digits (the SHA-256 of the token), got a string of 10 characters',
    'control.tokens.eve.roles: expected at least one of viewer, deployer, admin',
    'control.tokens.mallory.hash: required',
    'control.tokens.trent.roles: required: a list of viewer, deployer, admin',
  ]);
  assert.ok(!bad.join('\n').includes('my-secret-token'));
});

test('control: socket relative to state_dir, header lower-cased, bad header is a problem', () => {
  const config = normaliseConfig({ state_dir: '/var/lib/berth', control: { socket: 'run/ctl.sock', call_context_header: 'X-Berth-Call-Context', socket_group: 'ops' } }, CTX);
  assert.equal(config.control.socket, '/var/lib/berth/run/ctl.sock');
  assert.equal(config.control.callContextHeader, 'x-berth-call-context');
  assert.equal(config.control.socketGroup, 'ops');
  assert.deepEqual(problems({ control: { call_context_header: 'X Berth' } }), ['control.call_context_header: expected an HTTP header name, got "X Berth"']);
});

test('top-level scalars: internal_prefix, log_levels, database, migrations, booleans', () => {
  const config = normaliseConfig({ internal_prefix: '/_gw', log_levels: { root: 'warn', store: 'debug', fleet: 'trace' }, database: 'postgresql://u:p@db/berth', migrations: 'none', reset_state: true, metrics_public: true, trusted_proxy_count: 2 }, CTX);
  assert.equal(config.internalPrefix, '/_gw');
  assert.deepEqual(config.logLevels, { root: 'warn', store: 'debug', fleet: 'trace' });
  assert.equal(config.database, 'postgresql://u:p@db/berth');
  assert.equal(config.migrations, 'none');
  assert.equal(config.resetState, true);
  assert.equal(config.metricsPublic, true);
  assert.equal(config.trustedProxyCount, 2);
  const bad = problems({
    internal_prefix: '/_berth/',
    log_levels: { root: 'loud', http: 'info' },
    database: 'mysql://root:hunter2@db/berth',
    migrations: 'auto',
    reset_state: 'yes',
    trusted_proxy_count: -1,
  });
  assert.deepEqual(bad, [
    'internal_prefix: expected a path such as "/_berth": starting with "/", without a trailing "/", got "/_berth/"',
    'log_levels.root: expected one of fatal, error, warn, info, debug, trace, silent, got "loud"',
    'log_levels.http: unknown key (loggers: root, proxy, supervisor, deploy, scheduler, api, store, tls, fleet)',
    'database: expected null (SQLite) or a postgres:// URL, got "mysql://root:***@db/berth"',
    'migrations: expected one of upgrade, none, model, got "auto"',
    'reset_state: expected true or false, got "yes"',
    'trusted_proxy_count: expected a positive integer or 0, got -1',
  ]);
  assert.ok(!bad.join('\n').includes('hunter2'), 'the database password is never echoed');
  assert.deepEqual(problems({ database: 'user:hunter2@db' }), ['database: expected null (SQLite) or a postgres:// URL, got text that is not a URL']);
});

test('paths: source (dir, git URL, path#ref), health_file, release paths, reload_trigger', () => {
  const apps = {
    a: { source: 'apps/a' },
    b: { source: 'https://git.example.com/b.git#main', hosts: 'b.test' },
    c: { source: 'git@github.com:x/c.git', hosts: 'c.test' },
    d: { source: '../repos/d#v2', hosts: 'd.test' },
    e: { source: '/abs/e.tar.gz', hosts: 'e.test', pages: { maintenance: 'pages/./m.html' }, shared: ['uploads/', '.env'], reload_trigger: 'tmp-restart.txt' },
  };
  const config = normaliseConfig({ apps, health_file: '/run/berth-ok' }, CTX);
  assert.deepEqual(Object.values(config.apps).map((a) => a.source), [
    '/srv/site/apps/a', 'https://git.example.com/b.git#main', 'git@github.com:x/c.git', '/srv/repos/d#v2', '/abs/e.tar.gz',
  ]);
  assert.equal(config.healthFile, '/run/berth-ok');
  assert.equal(config.apps.e.pages.maintenance, 'pages/m.html');
  assert.deepEqual(config.apps.e.shared, ['uploads', '.env']);
  assert.equal(config.apps.e.reloadTrigger, 'tmp-restart.txt');
  assert.deepEqual(problems(withApp({ keep_releases: 0, shared: ['../x'], reload_trigger: 'tmp/restart.txt', pages: { maintenance: '/etc/passwd', error: 'a/../../b' } })), [
    'apps.shop.keep_releases: expected a positive integer, got 0',
    'apps.shop.shared.0: expected a relative path inside the release, without "..", got "../x"',
    'apps.shop.reload_trigger: expected a plain file name such as "restart.txt", got "tmp/restart.txt"',
    'apps.shop.pages.maintenance: expected a relative path inside the release, without "..", got "/etc/passwd"',
    'apps.shop.pages.error: expected a relative path inside the release, without "..", got "a/../../b"',
  ]);
});

test('rate_limit: N/s, N/m, N/h; burst defaults to the count', () => {
  const config = normaliseConfig(withApp({ rate_limit: { per_ip: '100/m', paths: '/login/' } }), CTX);
  assert.deepEqual(config.apps.shop.rateLimit, { count: 100, perMs: 60_000, burst: 100, paths: ['/login'] });
  assert.equal(normaliseConfig(withApp({}), CTX).apps.shop.rateLimit, null);
  assert.deepEqual(problems(withApp({ rate_limit: { per_ip: '20 per second', burst: 0, paths: ['login'] } })), [
    'apps.shop.rate_limit.per_ip: expected a rate such as "20/s", "100/m" or "1000/h", got "20 per second"',
    'apps.shop.rate_limit.burst: expected a positive integer, got 0',
    'apps.shop.rate_limit.paths.0: expected a path starting with "/", got "login"',
  ]);
  assert.deepEqual(problems(withApp({ rate_limit: { burst: 5 } })), ['apps.shop.rate_limit.per_ip: required, e.g. "20/s", "100/m" or "1000/h"']);
});

test('env values become strings; names and nested values are checked', () => {
  const config = normaliseConfig(withApp({ env: { A: 'x', B: 2, C: true, D: null } }), CTX);
  assert.deepEqual(config.apps.shop.env, { A: 'x', B: '2', C: 'true', D: '' });
  assert.deepEqual(problems(withApp({ env: { 'BAD-NAME': 'x', NESTED: { a: 1 } } })), [
    'apps.shop.env.BAD-NAME: expected an environment variable name (letters, digits, _), got "BAD-NAME"',
    'apps.shop.env.NESTED: expected a string, number or boolean, got a mapping',
  ]);
});

test('names: apps, process types, schedule entries', () => {
  assert.deepEqual(problems({ apps: { Shop: { processes: { 'web.1': { command: 'x' } } } } }), [
    'apps.Shop: app names must match ^[a-z0-9][a-z0-9_-]*$, got "Shop"',
    'apps.Shop.processes.web.1: process type names must match ^[A-Za-z0-9_-]+$, got "web.1"',
  ]);
  assert.deepEqual(problems({ apps: { shop: 'yes' } }), ['apps.shop: expected a mapping of keys, got "yes"']);
});

test('a __proto__ key is reported as unknown, never merged into the prototype', () => {
  const raw = JSON.parse('{"__proto__": {"polluted": true}, "apps": {"__proto__": {}}}');
  const bad = problems(raw);
  assert.deepEqual(bad, ['__proto__: unknown key', 'apps.__proto__: app names must match ^[a-z0-9][a-z0-9_-]*$, got "__proto__"']);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

test('several problems are all reported in one ConfigError', () => {
  const raw = {
    listen: 'nowhere',
    trusted_proxy_count: 'one',
    apps: {
      shop: {
        procesess: {},
        processes: { web: { command: 'a', instances: 'two' } },
        routes: [{ path: '/', to: 'ws' }],
        health: { interval: 'often' },
      },
    },
  };
  const { issues } = checkConfig(raw, CTX);
  assert.equal(issues.length, 6);
  let caught: unknown;
  try {
    normaliseConfig(raw, CTX);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ConfigError);
  assert.deepEqual(caught.problems.map((p) => p.path).sort(), [
    'apps.shop.health.interval',
    'apps.shop.procesess',
    'apps.shop.processes.web.instances',
    'apps.shop.routes.0.to',
    'listen',
    'trusted_proxy_count',
  ]);
  assert.equal(caught.message.split('\n').length, 6, 'the message lists every problem, one per line');
});

test('scheduler_delay may be 0 (run schedules from the first tick); other durations may not', () => {
  assert.equal(normaliseConfig({ scheduler_delay: 0 }, CTX).schedulerDelayMs, 0);
  assert.equal(normaliseConfig({ scheduler_delay: '0s' }, CTX).schedulerDelayMs, 0);
  assert.deepEqual(problems({ history_retention: 0 }), ['history_retention: expected a duration greater than 0, got 0']);
});

test('timer durations beyond Node\'s limit (about 24.8 days) are errors; history_retention may be longer', () => {
  assert.deepEqual(problems(withApp({ health: { interval: '30d' }, timeouts: { drain: '25d' } })), [
    'apps.shop.health.interval: expected a duration of at most 24d20h31m (the longest timer Node can set, about 24.8 days), got "30d"',
    'apps.shop.timeouts.drain: expected a duration of at most 24d20h31m (the longest timer Node can set, about 24.8 days), got "25d"',
  ].map((line) => line.replace('24d20h31m', formatDuration(Math.floor(MAX_TIMER_MS / 60_000) * 60_000))));
  assert.equal(normaliseConfig(withApp({ health: { interval: '24d' } }), CTX).apps.shop.health.intervalMs, 24 * 86_400_000);
  assert.equal(normaliseConfig({ history_retention: '365d' }, CTX).historyRetentionMs, 365 * 86_400_000);
});

test('sizes, buffering, websockets and release limits: defaults, units and problems', () => {
  const shop = normaliseConfig(withApp({}), CTX).apps.shop;
  assert.equal(shop.maxBodyBytes, DEFAULT_MAX_BODY_BYTES);
  assert.deepEqual(shop.buffering, { requests: true, responses: true, memoryBytes: DEFAULT_BUFFER_MEMORY_BYTES, bodyTimeoutMs: 60_000, sendTimeoutMs: 60_000 });
  assert.deepEqual(shop.websockets, { max: DEFAULT_WEBSOCKETS_MAX, idleTimeoutMs: null });
  assert.equal(shop.maxReleaseBytes, 1024 ** 3);
  assert.equal(shop.maxReleaseFiles, 100_000);
  const set = normaliseConfig(withApp({ max_body: '512k', buffering: { memory: 4096, requests: false }, websockets: { max: 10, idle_timeout: '5m' }, max_release_size: '2G' }), CTX).apps.shop;
  assert.equal(set.maxBodyBytes, 512 * 1024);
  assert.equal(set.buffering.memoryBytes, 4096);
  assert.equal(set.buffering.requests, false);
  assert.deepEqual(set.websockets, { max: 10, idleTimeoutMs: 300_000 });
  assert.equal(set.maxReleaseBytes, 2 * 1024 ** 3);
  assert.deepEqual(problems(withApp({ max_body: 'lots', buffering: { memory: '-1k', extra: 1 }, websockets: { max: 0 }, max_release_size: 0 })), [
    'apps.shop.max_body: expected a size such as 512k, 10m or 1g (or a number of bytes), got "lots"',
    'apps.shop.buffering.memory: expected a size such as 512k, 10m or 1g (or a number of bytes), got "-1k"',
    'apps.shop.buffering.extra: unknown key',
    'apps.shop.websockets.max: expected a positive integer, got 0',
    'apps.shop.max_release_size: expected a size greater than 0, got 0',
  ]);
});

test('users, groups and call_context_from are checked by shape', () => {
  const config = normaliseConfig(withApp({ user: 'www-data', group: 33 }, { default_user: 'daemon', control: { call_context_from: ['10.1.2.3', 'fd00::/8'] } }), CTX);
  assert.equal(config.apps.shop.user, 'www-data');
  assert.equal(config.apps.shop.group, '33');
  assert.equal(config.defaultUser, 'daemon');
  assert.deepEqual(config.control.callContextFrom, ['10.1.2.3/32', 'fd00::/8']);
  assert.deepEqual(normaliseConfig({}, CTX).control.callContextFrom, ['127.0.0.0/8', '::1/128']);
  assert.equal(normaliseConfig({}, CTX).defaultUser, 'nobody');
  assert.deepEqual(problems(withApp({ user: 'bad user', group: '../x' }, { control: { call_context_from: ['example.com', '10.0.0.0/33'] } })), [
    'control.call_context_from.0: expected an IP address or a CIDR block such as "127.0.0.0/8" or "::1/128", got "example.com"',
    'control.call_context_from.1: expected an IP address or a CIDR block such as "127.0.0.0/8" or "::1/128", got "10.0.0.0/33"',
    'apps.shop.user: expected a user or group name (letters, digits, "_", "-", "."), or a numeric id, got "bad user"',
    'apps.shop.group: expected a user or group name (letters, digits, "_", "-", "."), or a numeric id, got "../x"',
  ]);
});

test('permissions: one entry per user, whatever the case', () => {
  assert.deepEqual(problems({ control: { permissions: { production: { alice: ['shop'], Alice: ['blog'] } } } }), [
    'control.permissions.production.Alice: names the same user as "alice" (user names match in any case): keep one entry',
  ]);
});

test('proxy.workers: 1 by default, an integer up to 32, or auto (one per core); anything else names the key', () => {
  assert.deepEqual(normaliseConfig({}, CTX).proxy, { workers: 1, auto: false });
  assert.deepEqual(normaliseConfig({ proxy: { workers: 4 } }, CTX).proxy, { workers: 4, auto: false });
  const auto = normaliseConfig({ proxy: { workers: 'auto' } }, CTX).proxy;
  assert.equal(auto.auto, true);
  assert.equal(auto.workers, Math.min(availableParallelism(), 32));
  for (const bad of [0, 33, 1.5, 'many', true]) {
    assert.deepEqual(problems({ proxy: { workers: bad } }), [`proxy.workers: expected an integer from 1 to 32 or "auto", got ${JSON.stringify(bad)}`]);
  }
  assert.deepEqual(problems({ proxy: { threads: 2 } }), ['proxy.threads: unknown key']);
});

test('database_pool: 4 by default, an integer from 1 to 100', () => {
  assert.equal(normaliseConfig({}, CTX).databasePool, 4);
  assert.equal(normaliseConfig({ database_pool: 12 }, CTX).databasePool, 12);
  assert.deepEqual(problems({ database_pool: 0 }), ['database_pool: expected a positive integer, got 0']);
  assert.deepEqual(problems({ database_pool: 101 }), ['database_pool: expected at most 100 connections, got 101']);
});
