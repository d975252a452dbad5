/**
 * Issue #10, finding 8: `berth dashboard` gave any local user admin through its 127.0.0.1 port. Now its
 * printed URL carries a one-time secret; the first request with it gets a session cookie (HttpOnly,
 * SameSite=Strict, Path=/) and a redirect to the clean URL, and everything else is a 401. Real gateway,
 * real `berth dashboard` process, real sockets.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, spawnGateway, tempDir, writeConfig, type ChildGateway } from '../helpers/gateway.ts';
import { spawnDashboard } from '../helpers/dashboard.ts';

/** A gateway with one app, and `berth dashboard` on its socket; resolves with the printed line. */
async function dashboard(t: TestContext, json: boolean): Promise<{ gw: ChildGateway; printed: string; stop: () => Promise<number | null> }> {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'warn' }, apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND } } } } });
  const gw = await spawnGateway(t, file);
  const dash = spawnDashboard(t, gw.socket, json ? ['--json'] : []);
  return { gw, printed: await dash.firstLine(), stop: dash.stop };
}

test('berth dashboard: without the one-time secret or its session cookie every request is 401; the secret works once', async (t) => {
  const { gw, printed, stop } = await dashboard(t, true);
  const url = new URL(JSON.parse(printed).url);
  const port = Number(url.port);

  // Another local user who finds the port: nothing, not even the page, and no change goes through.
  for (const path of ['/', '/index.html', '/ui/app.js', '/ui/session.json', '/v1/whoami', '/v1/status', '/v1/events']) {
    const res = await http({ port }, { path });
    assert.equal(res.status, 401, path);
    assert.equal(res.json().error.code, 'BERTH_E_UNAUTHORIZED');
  }
  const attack = await http({ port }, { method: 'PUT', path: '/v1/apps/shop/mode', headers: { 'content-type': 'application/json', origin: `http://127.0.0.1:${port}` }, body: '{"mode":"maintenance"}' });
  assert.equal(attack.status, 401);
  assert.equal((await gw.api('/v1/apps/shop')).mode, 'normal');
  const token = url.searchParams.get('token');
  assert.match(token ?? '', /^[A-Za-z0-9_-]{43}$/, 'a 256-bit secret in the URL');
  for (const guess of ['x', token!.slice(1), `${token}x`, token!.toLowerCase() === token ? token!.toUpperCase() : token!.toLowerCase()]) {
    assert.equal((await http({ port }, { path: `/?token=${encodeURIComponent(guess)}` })).status, 401, guess);
  }
  assert.equal((await http({ port }, { path: '/', headers: { cookie: `berth-dashboard-${port}=forged` } })).status, 401);
  assert.equal((await gw.api('/v1/apps/shop')).mode, 'normal');
  assert.equal((await gw.api('/v1/history?app=shop')).history.filter((r: { action: string }) => r.action === 'mode').length, 0);

  // A HEAD (a link preview) does not spend the secret.
  assert.equal((await http({ port }, { method: 'HEAD', path: `/?token=${token}` })).status, 401);
  // The secret, even behind a path that would read as another host: a cookie and a redirect that stays here.
  const login = await http({ port }, { path: `//evil.example/x?a=1&token=${token}` });
  assert.equal(login.status, 303);
  assert.equal(login.headers.location, '/evil.example/x?a=1', 'no token in the clean URL, and never a //host');
  const setCookie = String(login.headers['set-cookie']);
  assert.match(setCookie, new RegExp(`^berth-dashboard-${port}=[A-Za-z0-9_-]{43}; `));
  for (const attr of ['HttpOnly', 'SameSite=Strict', 'Path=/']) assert.ok(setCookie.split('; ').includes(attr), `${attr} in ${setCookie}`);
  const cookie = setCookie.split(';')[0];
  assert.ok(!cookie.includes(token!), 'the session is not the URL secret');

  // One time only: a second use of the same URL (another browser, or whoever read it later) gets 401.
  const again = await http({ port }, { path: `/?token=${token}` });
  assert.equal(again.status, 401);
  assert.match(again.json().error.message, /already used/);

  // With the cookie: the dashboard, as admin, and the cookie is not passed on to the gateway.
  const page = await http({ port }, { path: '/', headers: { cookie: `other=1; ${cookie}` } });
  assert.equal(page.status, 200);
  assert.match(page.body, /<title>berth dashboard<\/title>/);
  const who = await http({ port }, { path: '/v1/whoami', headers: { cookie } });
  assert.equal(who.json().user, 'dash-user');
  assert.equal(who.json().role, 'admin');
  const change = await http({ port }, { method: 'PUT', path: '/v1/apps/shop/mode', headers: { cookie, 'content-type': 'application/json', origin: `http://127.0.0.1:${port}` }, body: '{"mode":"read-only"}' });
  assert.equal(change.status, 200, change.body);
  assert.equal((await gw.api('/v1/apps/shop')).mode, 'read-only');
  assert.equal(await stop(), 0);
});

test('berth dashboard prints its one-time URL for a person too', async (t) => {
  const { printed, stop } = await dashboard(t, false);
  assert.match(printed, /^dashboard: http:\/\/127\.0\.0\.1:\d+\/\?token=[A-Za-z0-9_-]{43}$/);
  assert.equal(await stop(), 0);
});
