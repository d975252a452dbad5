import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { Health } from '../../src/supervisor/health.ts';
import type { UpstreamAddress } from '../../src/supervisor/types.ts';
import type { HealthConfig } from '../../src/config/schema.ts';
import { APP_COMMAND, appConfig, get, proc, supervisor, tempDir, testLogger, waitFor, waitGroupGone } from './helpers.ts';

const HEALTH: HealthConfig = { path: '/up', intervalMs: 20, timeoutMs: 500, unhealthyAfter: 3, startupTimeoutMs: 10_000, busyGraceMs: 30_000 };

/** A real server whose /up answers with whatever `status` says, counting probes. */
async function statusServer(t: { after(fn: () => unknown): void }) {
  const state = { status: 200, probes: 0 };
  const server = createServer((_req, res) => {
    state.probes++;
    res.writeHead(state.status).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => server.close(r)));
  const address: UpstreamAddress = { kind: 'tcp', host: '127.0.0.1', port: (server.address() as { port: number }).port };
  return { state, address };
}

test('Health: counted failures in a row call onUnhealthy once; a passing probe resets the count', async (t) => {
  const { state, address } = await statusServer(t);
  const target = { address: address as UpstreamAddress | null, busy: false };
  const calls: number[] = [];
  const health = new Health(target, HEALTH, testLogger(), (n) => calls.push(n));
  t.after(() => health.stop());
  health.start();
  state.status = 500;
  await waitFor(() => health.failures === 2, 'two failures');
  state.status = 200;
  await waitFor(() => health.failures === 0, 'reset by a passing probe');
  assert.deepEqual(calls, []);
  state.status = 503;
  await waitFor(() => calls.length === 1, 'unhealthy');
  assert.deepEqual(calls, [3]);
  // It stopped probing: no second call however long we wait for more probes (the server sees none).
  const probes = state.probes;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(state.probes, probes);
  assert.deepEqual(calls, [3]);
});

test('Health: failures while busy do not count; an instance without address is not probed', async (t) => {
  const { state, address } = await statusServer(t);
  const target = { address: address as UpstreamAddress | null, busy: true };
  const calls: number[] = [];
  const health = new Health(target, HEALTH, testLogger(), (n) => calls.push(n));
  t.after(() => health.stop());
  state.status = 500;
  health.start();
  await waitFor(() => state.probes >= 6, 'six failed probes while busy');
  assert.equal(health.failures, 0);
  assert.deepEqual(calls, []);
  target.address = null;
  await new Promise((r) => setTimeout(r, 60)); // let a probe in flight land
  const probes = state.probes;
  target.busy = false;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(state.probes, probes, 'no address, no probe');
  target.address = address;
  await waitFor(() => calls.length === 1, 'counted once not busy');
});

test('Health without a path does nothing', async (t) => {
  const { state, address } = await statusServer(t);
  const health = new Health({ address, busy: false }, { ...HEALTH, path: null }, testLogger(), () => assert.fail('no path, no verdict'));
  health.start();
  t.after(() => health.stop());
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(state.probes, 0);
});

test('an instance whose health path starts failing while idle is replaced, then the old one is stopped', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const app = appConfig('shop', { health: { path: '/up', intervalMs: 50, unhealthyAfter: 2 }, timeouts: { drainMs: 5_000 } });
  const gen = sup.startGeneration(app, { id: 'r1', dir }, { web: proc('web', APP_COMMAND, { instances: 2 }) });
  await gen.waitReady();
  const [old, other] = gen.instances;
  const oldPid = old.pid!;
  const pool = gen.pools.get('web')!;
  const poolBefore = pool.instances;
  await get(old, '/sick');
  const fresh = await waitFor(() => (gen.instances[0] !== old ? gen.instances[0] : null), 'replacement in place');
  assert.equal(fresh.state, 'ready');
  assert.equal(fresh.index, 0);
  assert.equal(fresh.process, 'web');
  assert.notEqual(fresh.pid, oldPid);
  assert.deepEqual(pool.instances, [fresh, other], 'the pool got a new array with the new instance');
  assert.deepEqual(poolBefore, [old, other], 'readers holding the old array are unaffected');
  assert.equal(gen.instances[1], other);
  await waitFor(() => old.state === 'stopped', 'old instance stopped');
  await waitGroupGone(oldPid);
  assert.equal((await get(fresh, '/up')).status, 200);
  assert.equal(other.state, 'ready');
  // Stopping the generation stops the replacement too.
  const freshPid = fresh.pid!;
  await sup.stopGeneration(gen);
  assert.equal(fresh.state, 'stopped');
  await waitGroupGone(freshPid);
});

test('a busy instance (request in flight within busy_grace) with failing probes is NOT marked unhealthy', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const app = appConfig('shop', { health: { path: '/up', intervalMs: 30, unhealthyAfter: 2, busyGraceMs: 60_000 }, timeouts: { drainMs: 5_000 } });
  const gen = sup.startGeneration(app, { id: 'r1', dir }, { web: proc('web', APP_COMMAND) });
  await gen.waitReady();
  const inst = gen.instances[0];
  const ticket = inst.begin();
  await get(inst, '/sick');
  const stats = await waitFor(async () => {
    const { body } = await get(inst, '/stats');
    return body.upFailures >= 6 ? body : null;
  }, 'six failed probes');
  assert.ok(stats.upFailures >= 6);
  assert.equal(inst.state, 'ready', 'busy is slow, not dead');
  assert.equal(inst.busy, true);
  assert.equal(inst.snapshot().busy, true);
  assert.equal(gen.instances[0], inst);
  // Once idle, the same failing probes count.
  inst.end(ticket);
  assert.equal(inst.busy, false);
  await waitFor(() => gen.instances[0] !== inst, 'replaced once idle');
  await waitFor(() => inst.state === 'stopped', 'old stopped at once: nothing in flight');
});

test('a request older than busy_grace does not shield an instance; drain stops waiting at timeouts.drain', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const app = appConfig('shop', { health: { path: '/up', intervalMs: 30, unhealthyAfter: 2, busyGraceMs: 100 }, timeouts: { drainMs: 300 } });
  const gen = sup.startGeneration(app, { id: 'r1', dir }, { web: proc('web', APP_COMMAND) });
  await gen.waitReady();
  const inst = gen.instances[0];
  inst.begin(); // a request that never ends (stuck)
  assert.equal(inst.busy, true);
  await get(inst, '/sick');
  await waitFor(() => !inst.busy, 'the request outlives busy_grace');
  const fresh = await waitFor(() => (gen.instances[0] !== inst ? gen.instances[0] : null), 'replaced although in flight');
  assert.equal(fresh.state, 'ready');
  assert.equal(gen.inFlight, 1, 'the retiring instance still counts until it is stopped');
  await waitFor(() => inst.state === 'stopped', 'stopped after the drain timeout');
  assert.equal(inst.inFlight, 1, 'it was cut, not drained');
  await waitFor(() => gen.inFlight === 0, 'a stopped instance no longer counts');
});
