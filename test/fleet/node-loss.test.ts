/**
 * Fleet nodes that die and start: a node killed with -9 shows `lost` and catches up when it restarts
 * (and its restart leaves the other nodes' processes alone); a dead node's deploy lock frees after
 * node_timeout; five nodes starting at once on an empty database migrate it once and make one release.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { activePids, fixtureApp, http, runCli, spawnGateway, tempDir, untilReady, waitFor } from '../helpers/gateway.ts';
import { gatedBoot } from '../deploy/gated-boot.ts';
import { freshDatabase, POSTGRES_SKIP } from '../helpers/postgres.ts';
import { killNode, servedRelease, shopApp, startNode, untilAllServe, type FleetNode } from './fleet-nodes.ts';

test('kill -9 of node B during a fleet deploy: A and C converge, B shows lost, and B restarted converges', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  await writeFile(join(v2, 'VERSION'), '2\n');
  // The build takes a while, so B is still making the release when it is killed.
  const apps = { shop: { ...(shopApp(v1).shop as object), build: 'sleep 1' } };
  const a = await startNode(t, dir, url, 'node-a', apps);
  await untilReady(a, { timeoutMs: 60_000 });
  const [b, c] = await Promise.all([startNode(t, dir, url, 'node-b', apps), startNode(t, dir, url, 'node-c', apps)]);
  const first = (await servedRelease(a))!;
  await untilAllServe([a, b, c], first);

  const started = await http({ socketPath: a.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body: JSON.stringify({ source: v2 }), headers: { 'content-type': 'application/json' } });
  assert.equal(started.status, 202, started.body);
  const deployId = started.json().id;
  // B starts following as soon as A switches; kill it mid-follow.
  await waitFor(async () => (await b.api('/v1/apps/shop/deploys')).deploys.some((d: any) => d.state === 'running' && d.node === 'node-b'), { timeoutMs: 30_000, intervalMs: 20, message: 'B following' });
  await killNode(t, b);
  await waitFor(async () => (await a.api(`/v1/deploys/${deployId}`)).state === 'succeeded' || null, { timeoutMs: 30_000, message: 'A deploy done' });
  const second = (await servedRelease(a))!;
  assert.notEqual(second, first);
  await untilAllServe([a, c], second);
  const pidsA = await activePids(a);
  const pidsC = await activePids(c);

  const lost = await waitFor(async () => {
    const f = await a.api('/v1/fleet');
    const row = f.nodes.find((n: any) => n.node === 'node-b');
    return row?.state === 'lost' ? f : null;
  }, { timeoutMs: 15_000, message: 'B lost' });
  assert.deepEqual(lost.nodes.filter((n: any) => n.node !== 'node-b').map((n: any) => [n.node, n.state, n.converged]), [['node-a', 'running', true], ['node-c', 'running', true]]);
  const check = await runCli(['status', '--fleet', '--check', '--socket', c.socket]);
  assert.equal(check.code, 1, 'a lost node fails --check');
  assert.match(check.stdout, /node-b\s+lost/);

  const again: FleetNode = { ...(await spawnGateway(t, b.config)), name: 'node-b', config: b.config };
  await untilAllServe([a, again, c], second);
  assert.equal((await again.api('/v1/apps/shop')).activeRelease, second);
  const fleet = await waitFor(async () => {
    const f = await c.api('/v1/fleet');
    return f.nodes.every((n: any) => n.state === 'running' && n.converged) ? f : null;
  }, { timeoutMs: 10_000, message: 'all three converged' });
  assert.equal(fleet.nodes.length, 3);
  // B's restart reaped its own orphans only: A's and C's instances are the same processes.
  assert.deepEqual(await activePids(a), pidsA);
  assert.deepEqual(await activePids(c), pidsC);
  // B's interrupted follow is B's: marked interrupted, and named so in the history.
  const deploysB = (await again.api('/v1/apps/shop/deploys')).deploys;
  assert.ok(deploysB.some((d: any) => d.state === 'interrupted' && d.node === 'node-b'), JSON.stringify(deploysB.map((d: any) => [d.id, d.state, d.node])));
  assert.ok(!deploysB.some((d: any) => d.state === 'interrupted' && d.node !== 'node-b'), 'no other node\'s deploy was marked interrupted');
});

test('a dead node\'s deploy lock frees after node_timeout, and its restart reaps its own orphans', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const v1 = await fixtureApp(dir, 'v1');
  const gated = await fixtureApp(dir, 'gated');
  await gatedBoot(gated, join(dir, 'never-open'));
  const v3 = await fixtureApp(dir, 'v3');
  await writeFile(join(v3, 'VERSION'), '3\n');
  const apps = shopApp(v1);
  const a = await startNode(t, dir, url, 'node-a', apps);
  await untilReady(a, { timeoutMs: 60_000 });
  const b = await startNode(t, dir, url, 'node-b', apps);
  await untilReady(b);
  const started = await http({ socketPath: a.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body: JSON.stringify({ source: gated }), headers: { 'content-type': 'application/json' } });
  assert.equal(started.status, 202, started.body);
  await waitFor(async () => (await a.api(`/v1/deploys/${started.json().id}`)).events.some((e: any) => e.step === 'wait_healthy' && e.status === 'started'), { message: 'A in wait_healthy' });
  await killNode(t, a);
  const killedAt = Date.now();
  const body = JSON.stringify({ source: v3 });
  const refused = await http({ socketPath: b.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body, headers: { 'content-type': 'application/json' } });
  assert.equal(refused.status, 409, 'the lock is held while A may still be alive');
  assert.match(refused.json().error.message, /node-a/);
  const taken = await waitFor(async () => {
    const res = await http({ socketPath: b.socket }, { path: '/v1/apps/shop/deploys', method: 'POST', body, headers: { 'content-type': 'application/json' } });
    return res.status === 202 ? res : null;
  }, { timeoutMs: 20_000, intervalMs: 250, message: 'B takes the lock' });
  const waited = Date.now() - killedAt;
  t.diagnostic(`B took A's lock ${waited} ms after A died (node_timeout 5s)`);
  assert.ok(waited >= 3_000, `not before A's heartbeat went stale (${waited} ms)`);
  await waitFor(async () => (await b.api(`/v1/deploys/${taken.json().id}`)).state === 'succeeded' || null, { timeoutMs: 30_000, message: 'B deploy' });
  const third = (await servedRelease(b))!;

  // A restarts: it reaps the gated generation its killed self left, and follows the fleet to B's release.
  const leftPids = (await query(url, "SELECT pgid FROM node_process_groups WHERE node = 'node-a'")).map((row) => Number(row.pgid));
  assert.ok(leftPids.length >= 2, `A's groups are recorded as A's (${leftPids})`);
  const again: FleetNode = { ...(await spawnGateway(t, a.config)), name: 'node-a', config: a.config };
  await untilAllServe([again, b], third);
  for (const pgid of leftPids) {
    if ((await activePids(again)).includes(pgid)) continue;
    await waitFor(() => !alive(pgid), { timeoutMs: 5_000, message: `orphan ${pgid} reaped` });
  }
});

test('five nodes starting at once on an empty database migrate it exactly once and make one first release', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const v1 = await fixtureApp(dir, 'v1');
  const names = ['n1', 'n2', 'n3', 'n4', 'n5'];
  const nodes = await Promise.all(names.map((n) => startNode(t, dir, url, n, shopApp(v1))));
  await Promise.all(nodes.map((n) => untilReady(n, { timeoutMs: 60_000 })));
  const versions = (await query(url, 'SELECT version FROM schema_migrations ORDER BY version')).map((r) => Number(r.version));
  const applied = nodes.flatMap((n) => n.logs.filter((l) => l.msg === 'migration applied').map((l) => l.version)).sort((x, y) => x - y);
  assert.deepEqual(applied, versions, 'each migration was applied by exactly one node');
  assert.ok(versions.length >= 7);
  const releases = await query(url, "SELECT id FROM releases WHERE app = 'shop'");
  assert.equal(releases.length, 1, 'one first release for the fleet');
  await untilAllServe(nodes, releases[0].id);
});

/** The rows of one statement, on a connection of its own that is closed before the test's database is dropped. */
async function query(url: string, sql: string): Promise<any[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end();
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

test('a node that cannot make the fleet\'s release serves its own, says why, cannot reload the fleet back, and catches up once it can', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  await writeFile(join(v2, 'VERSION'), '2\n');
  const a = await startNode(t, dir, url, 'node-a', shopApp(v1));
  await untilReady(a, { timeoutMs: 60_000 });
  const b = await startNode(t, dir, url, 'node-b', shopApp(v1));
  const first = (await servedRelease(a))!;
  await untilAllServe([a, b], first);

  // B is away while A deploys v2; then v2's directory changes, so B cannot make the same release.
  b.proc.kill('SIGTERM');
  await b.exited;
  const deployed = await runCli(['deploy', 'shop', v2, '--socket', a.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  const second = (await servedRelease(a))!;
  await writeFile(join(v2, 'EXTRA'), 'changed after the deploy\n');
  const again: FleetNode = { ...(await spawnGateway(t, b.config)), name: 'node-b', config: b.config };
  await untilReady(again);
  assert.equal(await servedRelease(again), first, 'B serves its last good release');
  const row = await waitFor(async () => {
    const f = await a.api('/v1/fleet');
    const n = f.nodes.find((x: any) => x.node === 'node-b');
    return n && n.state === 'running' && !n.converged && n.apps[0]?.error ? n : null;
  }, { timeoutMs: 20_000, message: 'B says why it has not converged' });
  assert.match(row.apps[0].error, /revision/);
  const check = await runCli(['status', '--fleet', '--check', '--socket', a.socket]);
  assert.equal(check.code, 1, 'a node that has not converged fails --check');

  // A reload asked of B would reload B's old release for everyone: refused, and the fleet keeps v2.
  const reload = await http({ socketPath: again.socket }, { path: '/v1/apps/shop/reload', method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
  assert.equal(reload.status, 409, reload.body);
  assert.match(reload.json().error.message, /has not converged/);
  assert.equal((await a.api('/v1/fleet')).desired[0].release, second);
  assert.equal(await servedRelease(a), second);

  // The source is back as it was: B's next try makes the release, and it serves it.
  await rm(join(v2, 'EXTRA'));
  await untilAllServe([a, again], second, 60_000);
});
