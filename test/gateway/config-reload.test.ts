/**
 * A config reload is planned and validated as a whole before anything applies (src/gateway/
 * config-reload.ts): a reload refused for any reason, through the API or SIGHUP, leaves every part of
 * the previous config serving, even the parts of the new file that were fine on their own. An app the
 * reload adds is part of the config once applied: its boot failing later is that app's failure, shown
 * in status and /ready, and undoes nothing else.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../../src/lib/errors.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';

test('a refused config reload changes nothing: routing, apps, log levels and the config in effect stay as they were', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const web = { command: FIXTURE_WEB_COMMAND };
  const base = { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'warn' }, apps: { shop: { source: src, hosts: ['shop.test'], processes: { web } } } };
  const file = await writeConfig(dir, base);
  const { gateway, port } = await startGateway(t, file);
  await gateway.whenAppsBooted();
  const before = gateway.config;
  const pids = () => gateway.appStatus('shop')!.generations.flatMap((g) => g.instances.map((i) => i.pid));
  const shopPids = pids();
  const routes = JSON.stringify(gateway.routes());
  const unchanged = async (why: string) => {
    assert.equal(gateway.config, before, why);
    assert.deepEqual(gateway.appNames(), ['shop'], why);
    assert.equal(JSON.stringify(gateway.routes()), routes, why);
    assert.deepEqual(pids(), shopPids, why);
    assert.equal((await http({ port }, { host: 'shop.test', path: '/' })).status, 200, why);
    // The parts of the refused file that were valid on their own did not apply either.
    assert.equal((await http({ port }, { host: 'www.shop.test', path: '/' })).status, 404, why);
    assert.equal((await http({ port }, { host: 'docs.test', path: '/' })).status, 404, why);
  };
  // Valid changes (a new host, a new app, a process change, log levels) beside one that needs a restart.
  const changes = {
    ...base,
    log_levels: { root: 'debug' },
    apps: {
      shop: { source: src, hosts: ['shop.test', 'www.shop.test'], processes: { web: { ...web, instances: 2 } } },
      docs: { source: src, hosts: ['docs.test'], processes: { web } },
    },
  };
  await writeConfig(dir, { ...changes, listen: ['127.0.0.1:1'] });
  await assert.rejects(gateway.reloadConfig({ user: 'ops', channel: 'socket' }), (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.path === 'listen'));
  await unchanged('restart-only change');
  // The same changes beside one invalid key.
  await writeConfig(dir, { ...changes, apps: { ...changes.apps, docs: { ...changes.apps.docs, processes: { web: { ...web, instances: 'two' } } } } });
  await assert.rejects(gateway.reloadConfig({ user: 'ops', channel: 'socket' }), ConfigError);
  await unchanged('invalid config');
  // SIGHUP: the same, logged and audited instead of thrown.
  await gateway.reloadConfigOnSignal();
  await unchanged('SIGHUP with an invalid config');
  const rows = await gateway.history({ action: 'config-reload' });
  assert.deepEqual(rows.map((r) => `${r.user} ${r.outcome}`), ['SIGHUP failed']);
  assert.match(rows[0].detail!, /apps\.docs\.processes\.web\.instances/);

  // Applied: a new app whose first deploy cannot work (its source does not exist) is added and fails on
  // its own; the rest of the reload stands and the previous app keeps serving.
  await writeConfig(dir, { ...base, apps: { shop: { ...base.apps.shop, hosts: ['shop.test', 'www.shop.test'] }, docs: { source: `${dir}/no-such-source`, hosts: ['docs.test'], processes: { web } } } });
  const result = await gateway.reloadConfig({ user: 'ops', channel: 'socket' });
  assert.deepEqual({ added: result.added, updated: result.updated, reloaded: result.reloaded }, { added: ['docs'], updated: ['shop'], reloaded: [] });
  const docs = await waitFor(() => (gateway.appStatus('docs')?.phase === 'failed' ? gateway.appStatus('docs') : null), { timeoutMs: 30_000, message: 'docs failed to boot' });
  assert.equal(docs.healthy, false);
  assert.equal((await http({ port }, { host: 'www.shop.test', path: '/' })).status, 200);
  assert.equal((await http({ port }, { host: 'docs.test', path: '/' })).headers['x-berth-reason'], 'start-failed');
  assert.deepEqual(pids(), shopPids, 'shop kept its processes');
  assert.equal((await http({ port }, { path: '/_berth/apps/shop/health' })).status, 200);
  assert.equal((await http({ port }, { path: '/_berth/ready' })).status, 503);
});
