/**
 * Units of src/api/auth.ts: token and call-context authentication, roles and app permissions. The
 * end-to-end behaviour over real sockets is in test/gateway/control-plane.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { ControlConfig } from '../../src/config/schema.ts';
import { BerthError } from '../../src/lib/errors.ts';
import { addressIn, addressList, Auth, authorize, hashToken, hasRole, MAX_CALL_CONTEXT_BYTES, parseCallContext, permits, requiredRole, reservedUserName, topRole } from '../../src/api/auth.ts';
import type { RequestContext } from '../../src/api/routes.ts';

const HEADER = 'x-berth-call-context';
/** A connection from loopback: where the call-context header is honoured by default. */
const LOCAL = '127.0.0.1';

function control(over: Partial<ControlConfig> = {}): ControlConfig {
  return {
    socket: '/nonexistent/control.sock',
    socketGroup: null,
    listen: null,
    tokens: {
      alice: { hash: hashToken('alice-secret'), roles: ['deployer'] },
      vic: { hash: hashToken('viewer-secret'), roles: ['viewer'] },
      root: { hash: hashToken('admin-secret'), roles: ['admin'] },
    },
    callContextHeader: HEADER,
    permissions: { production: { alice: ['^shop$', 'shop-.*'] } },
    permissionsUnenforcedOk: false,
    callContextFrom: ['127.0.0.0/8', '::1/128'],
    ...over,
  };
}

function b64(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64');
}

/** Asserts that fn throws a BerthError with `code` whose message matches `re`. */
function throwsCode(fn: () => unknown, code: string, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected BerthError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.match(err.message, re);
    return true;
  });
}

test('hashToken gives the sha256: form the config stores', () => {
  assert.equal(hashToken('secret'), `sha256:${createHash('sha256').update('secret').digest('hex')}`);
  assert.match(hashToken('x'), /^sha256:[0-9a-f]{64}$/);
});

test('a bearer token maps to its user, roles and app rule in the active environment', () => {
  const auth = new Auth(control(), 'production');
  const ctx = auth.authenticate({ authorization: 'Bearer alice-secret' }, LOCAL);
  assert.equal(ctx.user, 'alice');
  assert.equal(ctx.channel, 'tcp');
  assert.deepEqual(ctx.roles, ['deployer']);
  assert.equal(ctx.apps?.rule, 'control.permissions.production.alice');
  assert.deepEqual(ctx.apps?.sources, ['^shop$', 'shop-.*']);
  // The scheme is case-insensitive, as HTTP says.
  assert.equal(auth.authenticate({ authorization: 'bearer viewer-secret' }, LOCAL).user, 'vic');
  // A user with no permissions entry is unrestricted.
  assert.equal(auth.authenticate({ authorization: 'Bearer admin-secret' }, LOCAL).apps, null);
});

test('missing, wrong and malformed bearer tokens are 401 BERTH_E_UNAUTHORIZED', () => {
  const auth = new Auth(control({ callContextHeader: null }), 'production');
  throwsCode(() => auth.authenticate({}, LOCAL), 'BERTH_E_UNAUTHORIZED', /needs an Authorization: Bearer token/);
  throwsCode(() => auth.authenticate({ authorization: 'Bearer wrong' }, LOCAL), 'BERTH_E_UNAUTHORIZED', /not valid/);
  throwsCode(() => auth.authenticate({ authorization: 'Bearer alice-secretX' }, LOCAL), 'BERTH_E_UNAUTHORIZED', /not valid/);
  for (const bad of ['Basic YWxpY2U6eA==', 'Bearer', 'Bearer ', 'Bearer a b', 'alice-secret', `Bearer ${'a'.repeat(5000)}`]) {
    throwsCode(() => auth.authenticate({ authorization: bad }, LOCAL), 'BERTH_E_UNAUTHORIZED', /Bearer|not valid/);
  }
  // A hash that is not sha256 hex (a config mistake) never matches anything.
  const odd = new Auth(control({ callContextHeader: null, tokens: { eve: { hash: 'sha256:nothex', roles: ['admin'] } } }), null);
  throwsCode(() => odd.authenticate({ authorization: 'Bearer nothex' }, LOCAL), 'BERTH_E_UNAUTHORIZED', /not valid/);
});

test('the call-context header identifies the caller, and wins over a bearer token', () => {
  const auth = new Auth(control(), 'production');
  const ctx = auth.authenticate({ [HEADER]: b64({ user: 'alice', roles: ['viewer', 'viewer'] }), authorization: 'Bearer admin-secret' }, LOCAL);
  assert.equal(ctx.user, 'alice');
  assert.deepEqual(ctx.roles, ['viewer']);
  assert.equal(ctx.apps?.rule, 'control.permissions.production.alice');
  // base64url is accepted too, and unknown keys are ignored.
  const url = Buffer.from(JSON.stringify({ user: 'carol@example.com', roles: ['admin'], extra: 1 })).toString('base64url');
  assert.equal(auth.authenticate({ [HEADER]: url }, LOCAL).user, 'carol@example.com');
  // Without a configured header the same header means nothing.
  const tokensOnly = new Auth(control({ callContextHeader: null }), 'production');
  throwsCode(() => tokensOnly.authenticate({ [HEADER]: b64({ user: 'alice', roles: ['admin'] }) }, LOCAL), 'BERTH_E_UNAUTHORIZED', /Bearer/);
});

test('malformed call-context headers are each refused with a clear 401', () => {
  const cases: [string | string[], RegExp][] = [
    ['', /empty/],
    ['not base64!', /not base64/],
    ['%%%', /not base64/],
    [b64('not json'), /JSON object/],
    [b64('[1,2]'), /JSON object/],
    [b64('null'), /JSON object/],
    [b64('"alice"'), /JSON object/],
    [Buffer.from([0xff, 0xfe, 0x7b]).toString('base64'), /JSON object/],
    [b64({ roles: ['viewer'] }), /"user"/],
    [b64({ user: 42, roles: ['viewer'] }), /"user"/],
    [b64({ user: '', roles: ['viewer'] }), /"user"/],
    [b64({ user: ' alice', roles: ['viewer'] }), /"user"/],
    [b64({ user: 'al\nice', roles: ['viewer'] }), /"user"/],
    [b64({ user: 'a'.repeat(65), roles: ['viewer'] }), /"user"/],
    [b64({ user: 'carol?>', roles: ['viewer'] }), /"user"/],
    [b64({ user: '-alice', roles: ['viewer'] }), /"user"/],
    [b64({ user: 'al ice', roles: ['viewer'] }), /"user"/],
    [b64({ user: 'berth-start', roles: ['admin'] }), /keeps for itself/],
    [b64({ user: 'Scheduler', roles: ['admin'] }), /keeps for itself/],
    [b64({ user: 'alice' }), /"roles"/],
    [b64({ user: 'alice', roles: [] }), /"roles"/],
    [b64({ user: 'alice', roles: 'admin' }), /"roles"/],
    [b64({ user: 'alice', roles: ['root'] }), /unknown role "root"/],
    [b64({ user: 'alice', roles: ['viewer', 7] }), /unknown role 7/],
    [b64({ user: 'alice', roles: ['viewer'], pad: 'x'.repeat(MAX_CALL_CONTEXT_BYTES) }), /larger than 4096 bytes/],
    [[b64({ user: 'alice', roles: ['viewer'] }), b64({ user: 'bob', roles: ['admin'] })], /more than once/],
  ];
  assert.ok(cases.length >= 20);
  for (const [value, re] of cases) {
    throwsCode(() => parseCallContext(HEADER, value), 'BERTH_E_UNAUTHORIZED', re);
    // The value itself is never echoed back.
    try {
      parseCallContext(HEADER, value);
    } catch (err) {
      if (typeof value === 'string' && value.length > 8) assert.ok(!(err as Error).message.includes(value));
    }
  }
});

test('roles rank viewer < deployer < admin, and each action needs its role', () => {
  assert.equal(requiredRole('GET', null), 'viewer');
  assert.equal(requiredRole('HEAD', null), 'viewer');
  for (const action of ['deploy', 'rollback', 'reload', 'mode', 'run']) assert.equal(requiredRole('POST', action), 'deployer');
  assert.equal(requiredRole('POST', 'config-reload'), 'admin');
  assert.equal(requiredRole('POST', 'stop'), 'admin');
  // A change nobody classified needs admin.
  assert.equal(requiredRole('POST', 'something-new'), 'admin');
  assert.equal(requiredRole('DELETE', null), 'admin');
  assert.equal(requiredRole('POST', 'deploy', 'viewer'), 'viewer');
  assert.ok(hasRole(['admin'], 'deployer'));
  assert.ok(hasRole(['viewer', 'deployer'], 'deployer'));
  assert.ok(!hasRole(['viewer'], 'deployer'));
  assert.ok(!hasRole([], 'viewer'));
  assert.equal(topRole(['viewer', 'admin', 'deployer']), 'admin');
  assert.equal(topRole([]), null);
});

test('authorize: 403 for a missing role, for an app outside the rule (naming both), and for gateway-wide changes of limited users', () => {
  const auth = new Auth(control(), 'production');
  const alice = auth.authenticate({ authorization: 'Bearer alice-secret' }, LOCAL);
  const vic = auth.authenticate({ authorization: 'Bearer viewer-secret' }, LOCAL);
  const root = auth.authenticate({ authorization: 'Bearer admin-secret' }, LOCAL);
  authorize(alice, 'deployer', 'shop', 'deploy');
  authorize(alice, 'deployer', 'shop-eu', 'deploy');
  throwsCode(() => authorize(alice, 'deployer', 'blog', 'deploy'), 'BERTH_E_FORBIDDEN', /alice may not deploy app "blog": control\.permissions\.production\.alice allows only \^shop\$, shop-\.\*/);
  throwsCode(() => authorize(alice, 'viewer', 'blog', 'read'), 'BERTH_E_FORBIDDEN', /app "blog"/);
  throwsCode(() => authorize(alice, 'admin', null, 'stop'), 'BERTH_E_FORBIDDEN', /needs the admin role/);
  throwsCode(() => authorize(vic, 'deployer', 'shop', 'mode'), 'BERTH_E_FORBIDDEN', /vic \(viewer\) may not mode: it needs the deployer role/);
  authorize(vic, 'viewer', 'blog', 'read');
  authorize(root, 'admin', null, 'config-reload');
  authorize(root, 'deployer', 'blog', 'deploy');
  // An admin limited to some apps may not change the whole gateway.
  const limitedAdmin: RequestContext = { ...root, apps: alice.apps };
  throwsCode(() => authorize(limitedAdmin, 'admin', null, 'config-reload'), 'BERTH_E_FORBIDDEN', /limited to some apps by control\.permissions\.production\.alice/);
  authorize(limitedAdmin, 'viewer', null, 'read');
  assert.ok(permits(alice, 'shop'));
  assert.ok(!permits(alice, 'shopping'));
  assert.ok(permits({ user: 'socket', channel: 'socket', roles: ['admin'] }, 'anything'));
});

test('permissions apply per environment; with no environment the key "default" applies', () => {
  const perms = { production: { alice: ['^shop$'] }, default: { alice: ['^blog$'] } };
  const prod = new Auth(control({ permissions: perms }), 'production');
  const none = new Auth(control({ permissions: perms }), null);
  const staging = new Auth(control({ permissions: perms }), 'staging');
  assert.deepEqual(prod.ruleFor('alice')?.sources, ['^shop$']);
  assert.equal(none.environment, 'default');
  assert.deepEqual(none.ruleFor('alice')?.sources, ['^blog$']);
  assert.equal(none.ruleFor('alice')?.rule, 'control.permissions.default.alice');
  assert.equal(staging.ruleFor('alice'), null);
  assert.equal(prod.ruleFor('bob'), null);
});

test('permission regexes match the whole app name: "shop" does not grant "shop-admin" (issue #10, finding 13)', () => {
  const auth = new Auth(control({ permissions: { production: { alice: ['shop', 'blog|wiki', 'eu-.*'] } } }), 'production');
  const alice = auth.authenticate({ authorization: 'Bearer alice-secret' }, LOCAL);
  for (const app of ['shop', 'blog', 'wiki', 'eu-shop']) assert.ok(permits(alice, app), app);
  for (const app of ['shop-admin', 'myshop', 'blogs', 'awiki', 'eu']) assert.ok(!permits(alice, app), app);
  throwsCode(() => authorize(alice, 'deployer', 'shop-admin', 'deploy'), 'BERTH_E_FORBIDDEN', /may not deploy app "shop-admin"/);
});

test('the call-context header is honoured only from control.call_context_from; elsewhere it is ignored (issue #10, finding 13)', () => {
  const context = b64({ user: 'carol', roles: ['admin'] });
  const auth = new Auth(control({ callContextFrom: ['10.1.0.0/16', '192.0.2.7', 'fd00::/8'] }), 'production');
  assert.equal(auth.authenticate({ [HEADER]: context }, '10.1.2.3').user, 'carol');
  assert.equal(auth.authenticate({ [HEADER]: context }, '::ffff:10.1.2.3').user, 'carol', 'an IPv4-mapped address counts as IPv4');
  assert.equal(auth.authenticate({ [HEADER]: context }, '192.0.2.7').user, 'carol');
  assert.equal(auth.authenticate({ [HEADER]: context }, 'fd00::5').user, 'carol');
  for (const from of ['127.0.0.1', '10.2.0.1', '192.0.2.8', '::1', undefined]) {
    throwsCode(() => auth.authenticate({ [HEADER]: context }, from), 'BERTH_E_UNAUTHORIZED', /is not honoured from .*: it is not in control\.call_context_from; send an Authorization: Bearer token$/);
    // The trusted proxy's addresses are not told to whoever is refused.
    assert.throws(() => auth.authenticate({ [HEADER]: context }, from), (err: Error) => !/10\.1\.|192\.0\.2\.7|fd00/.test(err.message));
    // Ignored, not refused: a bearer token on the same request identifies the caller.
    assert.equal(auth.authenticate({ [HEADER]: context, authorization: 'Bearer viewer-secret' }, from).user, 'vic');
  }
  // The default is loopback.
  const loopback = new Auth(control({ callContextFrom: ['127.0.0.0/8', '::1/128'] }), null);
  assert.equal(loopback.authenticate({ [HEADER]: context }, '127.0.0.2').user, 'carol');
  assert.equal(loopback.authenticate({ [HEADER]: context }, '::1').user, 'carol');
  throwsCode(() => loopback.authenticate({ [HEADER]: context }, '10.0.0.1'), 'BERTH_E_UNAUTHORIZED', /not honoured from 10\.0\.0\.1/);
  const list = addressList(['not-an-ip', '10.0.0.0/99', '::1']);
  assert.ok(addressIn(list, '::1'));
  assert.ok(!addressIn(list, '10.0.0.1'));
});

test('names berth writes into the audit log itself are reserved', () => {
  for (const name of ['berth-start', 'supervisor', 'scheduler', 'reload-trigger', 'SIGHUP', 'cleanup', 'socket', 'system', 'root', 'unauthenticated']) assert.ok(reservedUserName(name), name);
  assert.ok(!reservedUserName('alice'));
});

test('permissions bind a call-context user whatever the case of its name', () => {
  const auth = new Auth(control(), 'production');
  for (const name of ['alice', 'Alice', 'ALICE']) {
    const rule = auth.ruleFor(name);
    assert.ok(rule !== null, `${name} is limited`);
    assert.equal(rule.rule, 'control.permissions.production.alice');
  }
  assert.equal(auth.ruleFor('bob'), null);
});
