/**
 * PostgreSQL stops while a fleet is up (its own file: it stops the test process's one server). Every node
 * keeps serving its release; every change is refused with a clear error; once the server is back, all of
 * it recovers by itself, with no restart of any node.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fixtureApp, http, runCli, tempDir, untilReady, waitFor } from '../helpers/gateway.ts';
import { freshDatabase, postgresServer, POSTGRES_SKIP } from '../helpers/postgres.ts';
import { servedRelease, shopApp, spreadLoad, startNode, untilAllServe } from './fleet-nodes.ts';

test('PostgreSQL stops: every node serves on, every change is refused clearly, and all recovers when it is back', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const server = await postgresServer();
  const url = await freshDatabase(t, async () => {
    // The database is dropped after the test: the server must be up for that, whatever happened.
    await server.start().catch(() => {});
  });
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  await writeFile(join(v2, 'VERSION'), '2\n');
  const a = await startNode(t, dir, url, 'node-a', shopApp(v1));
  await untilReady(a, { timeoutMs: 60_000 });
  const [b, c] = await Promise.all([startNode(t, dir, url, 'node-b', shopApp(v1)), startNode(t, dir, url, 'node-c', shopApp(v1))]);
  const nodes = [a, b, c];
  const first = (await servedRelease(a))!;
  await untilAllServe(nodes, first);

  const load = spreadLoad(nodes, 3);
  await server.stop();
  // Long enough for several heartbeats and polls to fail.
  await new Promise((r) => setTimeout(r, 3_000));
  for (const n of nodes) assert.equal(await servedRelease(n), first, `${n.name} serves on`);

  const mode = await http({ socketPath: a.socket }, { path: '/v1/apps/shop/mode', method: 'PUT', body: JSON.stringify({ mode: 'maintenance' }), headers: { 'content-type': 'application/json' } });
  assert.equal(mode.status, 503, mode.body);
  assert.match(mode.json().error.message, /store/);
  const deploy = await runCli(['deploy', 'shop', v2, '--socket', b.socket]);
  assert.notEqual(deploy.code, 0);
  assert.match(deploy.stderr, /state store is unreachable|store/);
  const fleet = await http({ socketPath: c.socket }, { path: '/v1/fleet' });
  assert.equal(fleet.status, 503, fleet.body);
  for (const n of nodes) assert.equal((await http({ port: n.port }, { path: '/' })).status, 200, `${n.name} still in normal mode`);
  for (const n of nodes) assert.ok(n.logs.some((l) => l.msg?.startsWith('state store unreachable')), `${n.name} says the store is unreachable`);

  await server.start();
  // Changes work again, on every node, with no restart.
  await waitFor(async () => (await http({ socketPath: a.socket }, { path: '/v1/fleet' })).status === 200, { timeoutMs: 15_000, message: 'the store answers again' });
  const { ok, failed } = await load.stop();
  assert.deepEqual(failed, [], 'no request failed while the store was away');
  assert.ok(ok > 20, `load ran (${ok})`);
  assert.equal((await runCli(['mode', 'shop', 'maintenance', '--socket', a.socket])).code, 0);
  await waitFor(async () => (await Promise.all(nodes.map((n) => http({ port: n.port }, { path: '/' })))).every((r) => r.status === 503), { timeoutMs: 5_000, message: 'maintenance everywhere' });
  assert.equal((await runCli(['mode', 'shop', 'normal', '--socket', a.socket])).code, 0);
  await waitFor(async () => (await Promise.all(nodes.map((n) => http({ port: n.port }, { path: '/' })))).every((r) => r.status === 200), { timeoutMs: 5_000, message: 'normal everywhere' });
  const redeploy = await runCli(['deploy', 'shop', v2, '--socket', b.socket]);
  assert.equal(redeploy.code, 0, redeploy.stderr);
  const second = (await servedRelease(b))!;
  assert.notEqual(second, first);
  await untilAllServe(nodes, second);
  await waitFor(async () => {
    const f = await c.api('/v1/fleet');
    return f.nodes.length === 3 && f.nodes.every((n: any) => n.state === 'running' && n.converged) ? f : null;
  }, { timeoutMs: 10_000, message: 'three converged nodes' });
  for (const n of nodes) assert.ok(n.logs.some((l) => l.msg?.startsWith('state store reachable again')), `${n.name} says the store is back`);
});
