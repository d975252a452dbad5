import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import { dbDemand } from '../../src/config/schema.ts';
import { parseProcfile } from '../../src/deploy/procfile.ts';
import { http, spawnGateway, tempDir, waitFor } from '../helpers/gateway.ts';
import { EXAMPLES } from './demo-app.ts';

const CONFIG = join(EXAMPLES, 'berth.yaml');
const python = spawnSync('python3', ['--version']);
const noPython = python.error ? `python3 is not available (${(python.error as NodeJS.ErrnoException).code}); py-demo needs it` : false;

test('examples/berth.yaml loads: two apps, their sources, hosts and DB budgets', async () => {
  const config = await loadConfig({ configPath: CONFIG, environ: {} });
  assert.deepEqual(Object.keys(config.apps), ['node-demo', 'py-demo']);
  assert.deepEqual(config.listen.map((l) => l.text), ['127.0.0.1:8080']);
  assert.equal(config.stateDir, join(EXAMPLES, '.berth'));
  assert.equal(config.database, null, 'the quick start runs on the embedded SQLite store');

  const node = config.apps['node-demo'];
  const py = config.apps['py-demo'];
  assert.deepEqual(node.hosts, ['node.localhost', 'localhost', '127.0.0.1']);
  assert.deepEqual(py.hosts, ['py.localhost']);
  for (const app of [node, py]) {
    assert.ok(app.source && existsSync(app.source), `${app.name}: source ${app.source} exists`);
    assert.equal(app.processes?.web.http, true);
    // node-demo also serves its public/ directory as a static route.
    const expected = app === node ? [['/static', null], ['/', 'web']] : [['/', 'web']];
    assert.deepEqual(app.routes.map((r) => [r.path, r.to]), expected);
    assert.equal(app.health.path, '/up');
    assert.equal(app.dbConnections, dbDemand(app), `${app.name}: the budget covers the pool exactly`);
    // The Procfile shipped beside each app agrees with the config's command.
    const procfile = parseProcfile(readFileSync(join(app.source!, 'Procfile'), 'utf8'));
    assert.equal(procfile.processes.web.command, app.processes!.web.command, `${app.name}: Procfile and config agree`);
  }
  assert.equal(node.processes!.web.instances, 2);
  assert.equal(py.processes!.web.instances, 1);
  assert.ok(node.pages.maintenance && existsSync(join(node.source!, node.pages.maintenance)), 'the maintenance page exists in the release');
});

test('quick start: the gateway serves both demo apps by Host header, and the health lane answers', { skip: noPython }, async (t) => {
  const dir = await tempDir(t, 'berth-qs-');
  // The example file as is, moved off port 8080 and out of the repository by environment overrides.
  const gateway = await spawnGateway(t, CONFIG, { env: { BERTH_LISTEN: '127.0.0.1:0', BERTH_STATE_DIR: join(dir, 'state') } });
  // The gateway's own liveness answers as soon as it listens, before the apps are ready.
  const health = await http({ port: gateway.port }, { path: '/_berth/health' });
  assert.equal(health.status, 200);
  assert.deepEqual(health.json(), { status: 'ok' });
  await waitFor(async () => (await http({ port: gateway.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 60_000, message: 'both apps ready' });

  const plain = await http({ port: gateway.port }, { path: '/' });
  assert.equal(plain.status, 200);
  assert.equal(plain.json().app, 'node-demo');

  const node = await http({ port: gateway.port }, { path: '/', host: 'node.localhost' });
  assert.equal(node.status, 200);
  assert.equal(node.json().app, 'node-demo');
  assert.match(node.json().release, /^\d{14}-[0-9a-f]{6}$/);

  const py = await http({ port: gateway.port }, { path: '/', host: 'py.localhost' });
  assert.equal(py.status, 200);
  assert.equal(py.json().app, 'py-demo');
  assert.equal(py.json().lang, 'python');

  const echo = await http({ port: gateway.port }, { path: '/echo', method: 'POST', host: 'py.localhost', headers: { 'content-type': 'text/plain' }, body: 'through berth' });
  assert.equal(echo.body, 'through berth');

  const unknown = await http({ port: gateway.port }, { path: '/', host: 'nope.localhost' });
  assert.equal(unknown.status, 404);
});
