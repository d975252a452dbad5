/**
 * The one health rule (src/supervisor/app-health.ts) on its own: plain objects in, a verdict out.
 * test/gateway/app-health.test.ts shows status and the endpoints agree on a real gateway.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { everyInstance, judgeApp, type HealthInstance } from '../../src/supervisor/app-health.ts';
import type { InstanceState } from '../../src/supervisor/types.ts';

function inst(process: string, index: number, state: InstanceState): HealthInstance {
  return { process, index, state, inFlight: 0 };
}

/** A generation as the supervisor's: http pools, and `instances` listing every process type. */
function generation(pools: Record<string, HealthInstance[]>, background: HealthInstance[] = []) {
  const map = new Map(Object.entries(pools).map(([process, instances]) => [process, { process, instances }]));
  return { pools: map, instances: [...Object.values(pools).flat(), ...background] };
}

test('healthy: every http pool has a ready instance, nothing crashed; a pool scaled to zero does not count', () => {
  const gen = generation({ web: [inst('web', 0, 'ready'), inst('web', 1, 'starting')], admin: [] }, [inst('worker', 0, 'ready')]);
  assert.deepEqual(judgeApp({ failed: false, error: null, generation: gen }), { healthy: true, reasons: [] });
});

test('a restart in progress is not a crash: backoff and unhealthy instances count only when no instance of the pool is ready', () => {
  const restarting = generation({ web: [inst('web', 0, 'ready'), inst('web', 1, 'backoff'), inst('web', 2, 'unhealthy')] }, [inst('worker', 0, 'backoff')]);
  assert.equal(judgeApp({ failed: false, error: null, generation: restarting }).healthy, true);
  const none = generation({ web: [inst('web', 0, 'backoff'), inst('web', 1, 'starting')] });
  assert.deepEqual(judgeApp({ failed: false, error: null, generation: none }).reasons, ['pool web has no ready instance']);
});

test('a crashed instance of any process type makes the app unhealthy, even beside ready ones', () => {
  const gen = generation({ web: [inst('web', 0, 'ready'), inst('web', 1, 'crashed')] }, [inst('worker', 0, 'crashed')]);
  assert.deepEqual(judgeApp({ failed: false, error: null, generation: gen }), { healthy: false, reasons: ['web.1 crashed', 'worker.0 crashed'] });
  const all = generation({ web: [inst('web', 0, 'crashed')] });
  assert.deepEqual(judgeApp({ failed: false, error: null, generation: all }).reasons, ['pool web has no ready instance', 'web.0 crashed']);
});

test('a failed boot says why where the reader may see it; no generation says so', () => {
  assert.deepEqual(judgeApp({ failed: true, error: 'shared entry "uploads" is missing', generation: null }), { healthy: false, reasons: ['failed to boot: shared entry "uploads" is missing'] });
  assert.deepEqual(judgeApp({ failed: true, error: null, generation: null }).reasons, ['failed to boot']);
  // Failed stays failed even when a generation is left from it.
  assert.deepEqual(judgeApp({ failed: true, error: null, generation: generation({ web: [inst('web', 0, 'ready')] }) }).reasons, ['failed to boot']);
  assert.deepEqual(judgeApp({ failed: false, error: null, generation: null }), { healthy: false, reasons: ['no active generation'] });
});

test('a generation seen through its pools only gives its pools\' instances', () => {
  const pools = new Map([['web', { process: 'web', instances: [inst('web', 0, 'ready'), inst('web', 1, 'crashed')] }]]);
  assert.deepEqual(everyInstance({ pools }).map((i) => `${i.process}.${i.index}`), ['web.0', 'web.1']);
  assert.deepEqual(judgeApp({ failed: false, error: null, generation: { pools } }).reasons, ['web.1 crashed']);
});
