/**
 * Fleet mode end to end: three `berth start` nodes on one PostgreSQL database, each with its own state
 * dir, port and node_id. A deploy or a mode switch on one node reaches the others; load spread over all
 * three sees no failure; deploy locks are fleet-wide; `berth status --fleet` and `GET /v1/fleet` say who
 * serves what.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fixtureApp, http, runCli, tempDir, waitFor, untilReady } from '../helpers/gateway.ts';
import { freshDatabase, POSTGRES_SKIP } from '../helpers/postgres.ts';
import { servedRelease, shopApp, spreadLoad, startNode, untilAllServe } from './fleet-nodes.ts';

test('three nodes: a deploy on A is served by all three, a mode switch reaches all, and load over the three sees no failure', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  await writeFile(join(v2, 'VERSION'), '2\n');
  const apps = shopApp(v1);
  // A first: it makes the first release; B and C follow it.
  const a = await startNode(t, dir, url, 'node-a', apps);
  await untilReady(a);
  const [b, c] = await Promise.all([startNode(t, dir, url, 'node-b', apps), startNode(t, dir, url, 'node-c', apps)]);
  const nodes = [a, b, c];
  const first = await servedRelease(a);
  assert.ok(first);
  await untilAllServe(nodes, first, 30_000);

  const load = spreadLoad(nodes);
  const started = Date.now();
  const deployed = await runCli(['deploy', 'shop', v2, '--socket', a.socket]);
  const deployMs = Date.now() - started;
  assert.equal(deployed.code, 0, deployed.stderr);
  const second = await servedRelease(a);
  assert.ok(second && second !== first);
  const lag = await untilAllServe(nodes, second, 30_000);
  t.diagnostic(`deploy on A took ${deployMs} ms; B and C served ${second} ${lag} ms after it ended`);
  assert.ok(lag <= deployMs + 2_000, `B and C serve the new release within 2s plus the deploy time (${lag} ms, deploy ${deployMs} ms)`);
  // Every node's active release is the same id, made from the same source with the same revision.
  for (const n of nodes) assert.equal((await n.api('/v1/apps/shop')).activeRelease, second, n.name);
  await new Promise((r) => setTimeout(r, 500));
  const { ok, failed } = await load.stop();
  t.diagnostic(`${ok} requests over three nodes during the deploy`);
  assert.deepEqual(failed, [], 'no request failed');
  assert.ok(ok > 50, `load ran (${ok})`);

  // A mode switch on B reaches A and C within 2s.
  const switched = Date.now();
  const mode = await runCli(['mode', 'shop', 'maintenance', '--message', 'back soon', '--socket', b.socket]);
  assert.equal(mode.code, 0, mode.stderr);
  await waitFor(async () => (await Promise.all(nodes.map((n) => http({ port: n.port }, { path: '/' })))).every((r) => r.status === 503), { timeoutMs: 5_000, intervalMs: 20, message: 'maintenance everywhere' });
  const modeMs = Date.now() - switched;
  t.diagnostic(`mode switch reached all three in ${modeMs} ms`);
  assert.ok(modeMs <= 2_000, `within 2s (${modeMs} ms)`);
  assert.match((await http({ port: c.port }, { path: '/' })).body, /back soon/);
  assert.equal((await runCli(['mode', 'shop', 'normal', '--socket', c.socket])).code, 0);
  await waitFor(async () => (await Promise.all(nodes.map((n) => http({ port: n.port }, { path: '/' })))).every((r) => r.status === 200), { timeoutMs: 5_000, message: 'normal everywhere' });

  // A reload on C reloads every node: new pids everywhere.
  const pidsBefore = await Promise.all(nodes.map(async (n) => (await http({ port: n.port }, { path: '/' })).json().pid));
  assert.equal((await runCli(['reload', 'shop', '--socket', c.socket])).code, 0);
  await waitFor(async () => {
    const now = await Promise.all(nodes.map(async (n) => (await http({ port: n.port }, { path: '/' })).json().pid));
    return now.every((pid, i) => pid !== pidsBefore[i]);
  }, { timeoutMs: 20_000, message: 'every node reloaded' });

  // Status: every node running and converged, and history names the nodes.
  const fleet = await waitFor(async () => {
    const f = await a.api('/v1/fleet');
    return f.nodes.length === 3 && f.nodes.every((n: any) => n.state === 'running' && n.converged) ? f : null;
  }, { timeoutMs: 10_000, message: 'three converged nodes' });
  assert.equal(fleet.fleet, true);
  assert.deepEqual(fleet.nodes.map((n: any) => n.node), ['node-a', 'node-b', 'node-c']);
  assert.equal(fleet.desired[0].release, second);
  const text = await runCli(['status', '--fleet', '--socket', b.socket]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /fleet of 3 nodes/);
  for (const n of nodes) assert.match(text.stdout, new RegExp(`${n.name}\\b.*running`));
  const history = (await b.api('/v1/history?app=shop&limit=100')).history;
  assert.ok(history.some((h: any) => h.node === 'node-a' && h.action === 'deploy' && h.user !== 'fleet'), 'the deploy is recorded on A');
  assert.ok(history.some((h: any) => h.node === 'node-b' && h.user === 'fleet'), 'B following is recorded on B');
  assert.ok(history.some((h: any) => h.node === 'node-b' && h.action === 'mode'), 'the mode switch is recorded on B');
});

test('deploy locks are fleet-wide: a second deploy on another node is refused naming the node that deploys', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const v1 = await fixtureApp(dir, 'v1');
  const slow = await fixtureApp(dir, 'slow');
  const apps = { shop: { ...(shopApp(v1).shop as object), build: 'sleep 3' } };
  const a = await startNode(t, dir, url, 'node-a', apps);
  await untilReady(a, { timeoutMs: 60_000 });
  const b = await startNode(t, dir, url, 'node-b', apps);
  await untilReady(b, { timeoutMs: 60_000 });
  const started = await http({ socketPath: a.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body: JSON.stringify({ source: slow }), headers: { 'content-type': 'application/json' } });
  assert.equal(started.status, 202, started.body);
  const refused = await http({ socketPath: b.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body: JSON.stringify({ source: slow }), headers: { 'content-type': 'application/json' } });
  assert.equal(refused.status, 409, refused.body);
  assert.match(refused.json().error.message, /running on node node-a/);
  const cli = await runCli(['rollback', 'shop', '--socket', b.socket]);
  assert.notEqual(cli.code, 0);
  assert.match(cli.stderr, /node-a/);
});

test('a scheduled task runs once per scheduled time in the whole fleet, not once per node', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const v1 = await fixtureApp(dir, 'v1');
  const apps = { shop: { ...(shopApp(v1).shop as object), schedule: { tick: { cron: '* * * * * *', command: 'true' } } } };
  const a = await startNode(t, dir, url, 'node-a', apps, { scheduler_delay: '0s' });
  await untilReady(a, { timeoutMs: 60_000 });
  const b = await startNode(t, dir, url, 'node-b', apps, { scheduler_delay: '0s' });
  await untilReady(b);
  // Both schedulers run: give them a few seconds of ticks together.
  await new Promise((r) => setTimeout(r, 4_000));
  const rows: any[] = (await a.api('/v1/apps/shop/task-runs?task=tick&limit=100')).runs;
  const bySecond = new Map<string, string[]>();
  for (const r of rows) {
    const second = r.startedAt.slice(0, 19);
    bySecond.set(second, [...(bySecond.get(second) ?? []), r.node]);
  }
  t.diagnostic(`${rows.length} runs over ${bySecond.size} seconds; nodes: ${[...new Set(rows.map((r) => r.node))].join(', ')}`);
  assert.ok(bySecond.size >= 3, `ticks ran (${bySecond.size})`);
  for (const [second, nodes] of bySecond) assert.equal(nodes.length, 1, `${second} ran on ${nodes.join(' and ')}`);
});
