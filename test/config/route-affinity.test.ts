/** `routes[].affinity`: the forms it takes, and each problem named at its key. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normaliseConfig } from '../../src/config/validate.ts';
import { CTX, problems } from './config-problems.ts';

function withRoutes(routes: unknown[]): Record<string, unknown> {
  return { apps: { shop: { processes: { web: { command: 'node server.js' }, ws: { command: 'node ws.js' } }, routes } } };
}

test('affinity: cookie, ip, header:<name> (lower-cased), query:<name> (as written); none by default', () => {
  const config = normaliseConfig(
    withRoutes([
      { path: '/socket.io', to: 'ws', affinity: 'cookie' },
      { path: '/a', to: 'web', affinity: 'ip' },
      { path: '/b', to: 'web', affinity: 'header:X-Session-Id' },
      { path: '/c', to: 'web', affinity: 'query:sid' },
      { path: '/d', to: 'web', affinity: null },
      { path: '/', to: 'web' },
    ]),
    CTX,
  );
  assert.deepEqual(
    config.apps.shop.routes.map((r) => r.affinity),
    [{ by: 'cookie' }, { by: 'ip' }, { by: 'header', name: 'x-session-id' }, { by: 'query', name: 'sid' }, null, null],
  );
  // An app without routes gets `/ -> web` with no affinity.
  const plain = normaliseConfig({ apps: { shop: { processes: { web: { command: 'x' } } } } }, CTX);
  assert.equal(plain.apps.shop.routes[0].affinity, null);
});

test('affinity problems: unknown forms, missing or bad names, static routes, wrong types', () => {
  assert.deepEqual(
    problems(
      withRoutes([
        { path: '/a', to: 'web', affinity: 'sticky' },
        { path: '/b', to: 'web', affinity: 'header:' },
        { path: '/c', to: 'web', affinity: 'header:x session' },
        { path: '/d', to: 'web', affinity: 'query:a&b' },
        { path: '/e', to: 'web', affinity: 'query' },
        { path: '/f', to: 'web', affinity: `header:${'x'.repeat(129)}` },
        { path: '/g', static: 'public', affinity: 'cookie' },
        { path: '/h', to: 'web', affinity: true },
        { path: '/i', to: 'web', affinity: 'cookie:name' },
      ]),
    ),
    [
      'apps.shop.routes.0.affinity: expected cookie, ip, header:<name> or query:<name>, got "sticky"',
      'apps.shop.routes.1.affinity: expected header:<name>, with a header name (letters, digits and !#$%&\'*+.^_`|~-), got "header:"',
      'apps.shop.routes.2.affinity: expected a header name (letters, digits and !#$%&\'*+.^_`|~-) after "header:", got "x session"',
      'apps.shop.routes.3.affinity: expected a query parameter name (letters, digits and - . _ ~) after "query:", got "a&b"',
      'apps.shop.routes.4.affinity: expected query:<name>, with a query parameter name (letters, digits and - . _ ~), got "query"',
      'apps.shop.routes.5.affinity: expected a name of at most 128 characters after "header:", got one of 129',
      'apps.shop.routes.6.affinity: only applies to routes to a process type ("to"): a static route has no instances',
      'apps.shop.routes.7.affinity: expected a string, got true',
      'apps.shop.routes.8.affinity: expected cookie, ip, header:<name> or query:<name>, got "cookie:name"',
    ],
  );
});
