/**
 * Contract tests of instance-count overrides (`berth scale`, migration 009), shared by every Store
 * implementation: an override reads back as written, replaces the one before it for the same app and
 * process type, is refused whole when a value is bad, is listed per app or all together in a stable
 * order, is deleted alone, and outlives the store being closed and opened again (a gateway restart).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError, ErrorCodes } from '../../src/lib/errors.ts';
import type { ScaleOverride } from '../../src/store/store.ts';
import { forEachBackend, openFresh, type Backend } from './backends.ts';

const T0 = '2026-01-01T00:00:00.000Z';

function scale(app: string, process: string, instances: number, over: Partial<ScaleOverride> = {}): ScaleOverride {
  return { app, process, instances, user: 'alice', setAt: T0, ...over };
}

/** An override as it reads back when written without a node by a store opened without one (`local`). */
function written(s: ScaleOverride, node = 'local'): ScaleOverride {
  return { ...s, node };
}

const badRequest = (err: unknown) => err instanceof BerthError && err.code === ErrorCodes.badRequest;

function scaleContract(backend: Backend): void {
  const name = backend.name;

  test(`${name}: an empty store has no overrides`, async (t) => {
    const store = await openFresh(backend, t);
    assert.deepEqual(await store.listScales(), []);
    assert.deepEqual(await store.listScales('shop'), []);
    assert.equal(await store.deleteScale('shop', 'web'), false, 'deleting what is not there says so');
  });

  test(`${name}: an override reads back field for field; a second one for the same type replaces it`, async (t) => {
    const store = await openFresh(backend, t);
    await store.setScale(scale('shop', 'web', 4));
    assert.deepEqual(await store.listScales('shop'), [written(scale('shop', 'web', 4))], 'the node is the store\'s own when left out');
    const later = scale('shop', 'web', 0, { user: null, setAt: '2026-01-02T03:04:05.678Z', node: 'web-2' });
    await store.setScale(later);
    assert.deepEqual(await store.listScales('shop'), [later], 'one row per app and type: the last write, its node kept');
  });

  test(`${name}: overrides list by app then type, byte by byte, and per app; a delete removes one alone`, async (t) => {
    const store = await openFresh(backend, t);
    for (const s of [scale('shop', 'worker', 2), scale('blog', 'web', 3), scale('shop', 'Web', 1), scale('shop', 'web', 5)]) await store.setScale(s);
    const all = await store.listScales();
    assert.deepEqual(all.map((s) => `${s.app}/${s.process}=${s.instances}`), ['blog/web=3', 'shop/Web=1', 'shop/web=5', 'shop/worker=2']);
    assert.deepEqual((await store.listScales('shop')).map((s) => s.process), ['Web', 'web', 'worker']);
    assert.deepEqual(await store.listScales('nope'), []);
    assert.equal(await store.deleteScale('shop', 'web'), true);
    assert.equal(await store.deleteScale('shop', 'web'), false);
    assert.deepEqual((await store.listScales()).map((s) => `${s.app}/${s.process}`), ['blog/web', 'shop/Web', 'shop/worker'], 'the others stay');
  });

  test(`${name}: a bad override is refused whole and writes nothing`, async (t) => {
    const store = await openFresh(backend, t);
    await store.setScale(scale('shop', 'web', 2));
    const bad: ScaleOverride[] = [
      scale('shop', 'web', -1),
      scale('shop', 'web', 1.5),
      scale('shop', 'web', Number.NaN),
      scale('', 'web', 1),
      scale('shop', '', 1),
      scale('shop', 'web', 3, { setAt: 'yesterday' }),
      scale('shop', 'web', 3, { user: 7 as unknown as string }),
    ];
    for (const s of bad) await assert.rejects(store.setScale(s), badRequest, JSON.stringify(s));
    assert.deepEqual(await store.listScales(), [written(scale('shop', 'web', 2))]);
  });

  test(`${name}: overrides outlive a close and reopen (a gateway restart)`, async (t) => {
    const db = await backend.database(t);
    const first = db.store();
    await first.open();
    await first.setScale(scale('shop', 'web', 4, { node: 'n1' }));
    await first.close();
    const again = db.store();
    await again.open();
    assert.deepEqual(await again.listScales(), [scale('shop', 'web', 4, { node: 'n1' })]);
  });
}

forEachBackend(scaleContract);
