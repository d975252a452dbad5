/**
 * Contract tests of CDN cache flushes (migration 008), shared by every Store implementation: a flush
 * reads back as written, is updated field by field, is refused whole when a value is bad, and is listed
 * pending (by node), by app or deploy, and deleted by age once finished. The node tests open two stores
 * on one database with different `node` options, as the gateways of a fleet do.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../../src/lib/errors.ts';
import type { FlushRecord, Store } from '../../src/store/store.ts';
import { forEachBackend, openFresh, type Backend, type Database } from './backends.ts';

const T0 = '2026-01-01T00:00:00.000Z';

/** `T0` plus `s` seconds, as ISO. */
function at(s: number): string {
  return new Date(Date.parse(T0) + s * 1000).toISOString();
}

function flush(id: string, over: Partial<FlushRecord> = {}): FlushRecord {
  return {
    id, app: 'shop', deployId: 'd20260101000000-abcdef', provider: 'http', urls: ['https://cdn.test/a', 'https://cdn.test/b'], done: [],
    state: 'pending', attempts: 0, nextAt: T0, giveUpAt: at(3600), error: null, user: null, createdAt: T0, finishedAt: null, ...over,
  };
}

/** A flush as it reads back when written without a node by a store opened without one (`local`). */
function written(f: FlushRecord, node = 'local'): FlushRecord {
  return { ...f, node };
}

const isCode = (code: string) => (err: unknown) => err instanceof BerthError && err.code === code;

/** One database and a store on it for each node named, all opened; they close when `t` ends. */
async function fleet(backend: Backend, t: TestContext, ...nodes: string[]): Promise<{ db: Database; stores: Store[] }> {
  const db = await backend.database(t);
  const stores = nodes.map((node) => db.store({ node }));
  for (const store of stores) await store.open();
  return { db, stores };
}

const ids = (flushes: FlushRecord[]) => flushes.map((f) => f.id);

function flushContract(backend: Backend): void {
  const name = backend.name;

  test(`${name}: a flush reads back field for field, the node stamped when left out and kept when given`, async (t) => {
    const store = await openFresh(backend, t);
    const urls = ['https://cdn.test/assets/app.js?v=3&token=kept-as-is', 'https://cdn.test/ünïcødé path/', '1/000/1234/1d/cdn.test/x'];
    const full = flush('f20260101000000-aaaaaa', {
      provider: 'akamai', urls, done: [urls[0]!], state: 'failed', attempts: 7, nextAt: at(60), giveUpAt: at(7200),
      error: 'akamai answered 403: not allowed', user: 'alice', createdAt: at(1), finishedAt: at(90), node: 'web-9',
    });
    await store.createFlush(full);
    assert.deepEqual(await store.getFlush(full.id), full, 'every field, the URLs verbatim (they are what the CDN is asked to purge), the given node');

    const bare = flush('f20260101000000-bbbbbb', { deployId: null, urls: [], user: 'bob' });
    await store.createFlush(bare);
    assert.deepEqual(await store.getFlush(bare.id), written(bare), 'nulls stay null, an empty list stays empty, the node is the store\'s own');

    // A node given as null is the store's own too (`node ?? this node`).
    await store.createFlush(flush('f-null-node', { node: null }));
    assert.equal((await store.getFlush('f-null-node'))?.node, 'local');
    assert.equal(await store.getFlush('nope'), null);
  });

  test(`${name}: a flush's error is redacted like a deploy's; its URLs are not`, async (t) => {
    const store = await openFresh(backend, t);
    await store.createFlush(flush('f1', { urls: ['https://user:pw@cdn.test/x?token=abc'], error: 'POST https://user:pw@purge.test/api?token=abc failed' }));
    const read = (await store.getFlush('f1'))!;
    assert.deepEqual(read.urls, ['https://user:pw@cdn.test/x?token=abc']);
    assert.equal(read.error, 'POST https://***@purge.test/api?token=*** failed');
    await store.updateFlush('f1', { error: 'again: https://u:p@purge.test/' });
    assert.equal((await store.getFlush('f1'))?.error, 'again: https://***@purge.test/');
  });

  test(`${name}: a flush id is taken once: a second create is a conflict and changes nothing`, async (t) => {
    const store = await openFresh(backend, t);
    await store.createFlush(flush('f1'));
    await assert.rejects(store.createFlush(flush('f1', { app: 'blog', state: 'succeeded', urls: ['https://other.test/'] })), isCode('BERTH_E_CONFLICT'));
    assert.deepEqual(await store.getFlush('f1'), written(flush('f1')));
    assert.deepEqual(ids(await store.listFlushes()), ['f1']);
  });

  test(`${name}: updateFlush sets only the fields given; null clears error and finishedAt`, async (t) => {
    const store = await openFresh(backend, t);
    const start = flush('f1');
    await store.createFlush(start);
    await store.createFlush(flush('f2'));

    await store.updateFlush('f1', { attempts: 1, nextAt: at(30), error: 'HTTP 503' });
    let want = written({ ...start, attempts: 1, nextAt: at(30), error: 'HTTP 503' });
    assert.deepEqual(await store.getFlush('f1'), want);

    await store.updateFlush('f1', { done: ['https://cdn.test/a'], attempts: undefined });
    want = { ...want, done: ['https://cdn.test/a'] };
    assert.deepEqual(await store.getFlush('f1'), want, 'an undefined field is left as it was');

    await store.updateFlush('f1', { state: 'succeeded', done: start.urls, attempts: 2, error: null, finishedAt: at(31) });
    want = { ...want, state: 'succeeded', done: start.urls, attempts: 2, error: null, finishedAt: at(31) };
    assert.deepEqual(await store.getFlush('f1'), want);

    await store.updateFlush('f1', { finishedAt: null, state: 'pending' });
    want = { ...want, finishedAt: null, state: 'pending' };
    assert.deepEqual(await store.getFlush('f1'), want);

    await store.updateFlush('f1', {});
    assert.deepEqual(await store.getFlush('f1'), want, 'no fields: nothing changes');
    assert.deepEqual(await store.getFlush('f2'), written(flush('f2')), 'the other flush is untouched');
  });

  test(`${name}: updateFlush of an unknown id is not found, and bad fields are refused with nothing changed`, async (t) => {
    const store = await openFresh(backend, t);
    await assert.rejects(store.updateFlush('nope', { attempts: 1 }), isCode('BERTH_E_NOT_FOUND'));
    await assert.rejects(store.updateFlush('nope', {}), isCode('BERTH_E_NOT_FOUND'));
    assert.equal(await store.getFlush('nope'), null, 'an update creates nothing');

    await store.createFlush(flush('f1', { attempts: 2, error: 'x' }));
    const before = await store.getFlush('f1');
    const bad: [label: string, fields: Record<string, unknown>][] = [
      ['unknown state', { state: 'done' }],
      ['null state', { state: null }],
      ['negative attempts', { attempts: -1 }],
      ['fractional attempts', { attempts: 2.5 }],
      ['attempts as text', { attempts: '3' }],
      ['nextAt not a time', { nextAt: 'soon' }],
      ['nextAt null', { nextAt: null }],
      ['finishedAt not a time', { finishedAt: 'later' }],
      ['done not a list', { done: 'https://cdn.test/a' }],
      ['done not strings', { done: ['https://cdn.test/a', 1] }],
      ['done null', { done: null }],
      ['error not text', { error: 42 }],
      ['a field set at creation', { app: 'blog' }],
      ['the node', { node: 'web-2' }],
      ['a good field with a bad one', { attempts: 3, state: 'later' }],
    ];
    for (const [label, fields] of bad) {
      await assert.rejects(store.updateFlush('f1', fields as never), isCode('BERTH_E_BAD_REQUEST'), label);
      assert.deepEqual(await store.getFlush('f1'), before, `${label}: nothing changed`);
    }
  });

  test(`${name}: a flush with a bad value is refused whole and nothing is written`, async (t) => {
    const store = await openFresh(backend, t);
    const bad: [label: string, over: Record<string, unknown>][] = [
      ['unknown state', { state: 'done' }],
      ['unknown provider', { provider: 'fastly' }],
      ['no id', { id: '' }],
      ['id not text', { id: 7 }],
      ['no app', { app: '' }],
      ['negative attempts', { attempts: -1 }],
      ['fractional attempts', { attempts: 0.5 }],
      ['nextAt not a time', { nextAt: 'soon' }],
      ['giveUpAt not a time', { giveUpAt: 'never' }],
      ['createdAt not a time', { createdAt: 'yesterday' }],
      ['createdAt missing', { createdAt: undefined }],
      ['finishedAt not a time', { finishedAt: 'later' }],
      ['urls a string', { urls: 'https://cdn.test/a' }],
      ['urls not strings', { urls: ['https://cdn.test/a', 2] }],
      ['urls nested', { urls: [['https://cdn.test/a']] }],
      ['urls missing', { urls: undefined }],
      ['done not strings', { done: [null] }],
      ['done missing', { done: undefined }],
      ['deployId not text', { deployId: 12 }],
      ['user not text', { user: {} }],
      ['error not text', { error: ['x'] }],
    ];
    for (const [label, over] of bad) {
      await assert.rejects(store.createFlush(flush('f1', over as Partial<FlushRecord>)), isCode('BERTH_E_BAD_REQUEST'), label);
    }
    assert.equal(await store.getFlush('f1'), null);
    assert.deepEqual(await store.listFlushes(), [], 'no row was written');
    assert.deepEqual(await store.listPendingFlushes(), []);
    // The id is still free.
    await store.createFlush(flush('f1'));
    assert.deepEqual(await store.getFlush('f1'), written(flush('f1')));
  });

  test(`${name}: listPendingFlushes gives this node's pending flushes and those naming no node, oldest first`, async (t) => {
    const { db, stores: [a, b] } = await fleet(backend, t, 'node-a', 'node-b');
    assert.deepEqual(await a.listPendingFlushes(), []);
    // Ids out of created order, so the order shown is created_at's; a tie in created_at goes by id.
    await a.createFlush(flush('f-late', { createdAt: at(30) }));
    await a.createFlush(flush('f-early', { createdAt: at(10) }));
    await a.createFlush(flush('f-tie-2', { createdAt: at(20) }));
    await a.createFlush(flush('f-tie-1', { createdAt: at(20) }));
    // Finished ones are never listed, whatever their node.
    await a.createFlush(flush('f-succeeded', { state: 'succeeded', createdAt: at(1), finishedAt: at(2) }));
    await a.createFlush(flush('f-failed', { state: 'failed', createdAt: at(1), finishedAt: at(2) }));
    await a.createFlush(flush('f-skipped', { state: 'skipped', createdAt: at(1), finishedAt: at(2) }));
    // Another node's pending flushes: written by it, or by this one naming it.
    await b.createFlush(flush('f-b-own', { createdAt: at(0) }));
    await a.createFlush(flush('f-for-b', { createdAt: at(5), node: 'node-b' }));
    // One that names no node (written behind the stores' backs, as only such a row can be).
    await a.createFlush(flush('f-nobody', { createdAt: at(15) }));
    await db.exec(`UPDATE cache_flushes SET node = NULL WHERE id = 'f-nobody'`);
    await a.createFlush(flush('f-nobody-done', { state: 'succeeded', createdAt: at(15), finishedAt: at(16) }));
    await db.exec(`UPDATE cache_flushes SET node = NULL WHERE id = 'f-nobody-done'`);

    const pendingA = await a.listPendingFlushes();
    assert.deepEqual(ids(pendingA), ['f-early', 'f-nobody', 'f-tie-1', 'f-tie-2', 'f-late']);
    assert.deepEqual(pendingA[1], { ...flush('f-nobody', { createdAt: at(15) }), node: null }, 'read back whole, naming no node');
    assert.deepEqual(pendingA[0], written(flush('f-early', { createdAt: at(10) }), 'node-a'));
    assert.deepEqual(ids(await b.listPendingFlushes()), ['f-b-own', 'f-for-b', 'f-nobody']);

    // Once finished, a flush leaves the list; while still pending after an attempt, it stays.
    await a.updateFlush('f-early', { state: 'succeeded', finishedAt: at(40) });
    await a.updateFlush('f-late', { attempts: 1, nextAt: at(60), error: 'HTTP 503' });
    assert.deepEqual(ids(await a.listPendingFlushes()), ['f-nobody', 'f-tie-1', 'f-tie-2', 'f-late']);
    // listFlushes is not by node: every node's flushes are there.
    assert.equal((await b.listFlushes()).length, 11);
  });

  test(`${name}: listFlushes is newest first, filtered by app and deploy, within the limit (100 by default)`, async (t) => {
    const store = await openFresh(backend, t);
    await store.createFlush(flush('f1', { createdAt: at(1), deployId: 'd1' }));
    await store.createFlush(flush('f2', { createdAt: at(2), deployId: 'd2', state: 'succeeded', finishedAt: at(3) }));
    await store.createFlush(flush('f3', { createdAt: at(3), app: 'blog', deployId: 'd3' }));
    await store.createFlush(flush('f4', { createdAt: at(4), deployId: null, user: 'alice' }));
    await store.createFlush(flush('f5b', { createdAt: at(5), deployId: 'd1' }));
    await store.createFlush(flush('f5a', { createdAt: at(5), deployId: 'd1', state: 'failed', finishedAt: at(6) }));

    assert.deepEqual(ids(await store.listFlushes()), ['f5b', 'f5a', 'f4', 'f3', 'f2', 'f1'], 'created_at, then id, both descending');
    assert.deepEqual(ids(await store.listFlushes({ app: 'shop' })), ['f5b', 'f5a', 'f4', 'f2', 'f1']);
    assert.deepEqual(ids(await store.listFlushes({ app: 'blog' })), ['f3']);
    assert.deepEqual(ids(await store.listFlushes({ deployId: 'd1' })), ['f5b', 'f5a', 'f1']);
    assert.deepEqual(ids(await store.listFlushes({ app: 'shop', deployId: 'd3' })), []);
    assert.deepEqual(ids(await store.listFlushes({ app: 'blog', deployId: 'd3' })), ['f3']);
    assert.deepEqual(ids(await store.listFlushes({ app: 'shop', deployId: 'd1', limit: 2 })), ['f5b', 'f5a']);
    assert.deepEqual(ids(await store.listFlushes({ limit: 1 })), ['f5b']);
    assert.deepEqual(ids(await store.listFlushes({ app: 'none' })), []);
    assert.deepEqual((await store.listFlushes({ deployId: 'd2' }))[0], written(flush('f2', { createdAt: at(2), deployId: 'd2', state: 'succeeded', finishedAt: at(3) })));
    for (const limit of [0, -1, 1.5]) await assert.rejects(store.listFlushes({ limit }), isCode('BERTH_E_BAD_REQUEST'), `limit ${limit}`);

    // 100 by default: 101 flushes list as the newest 100.
    for (let i = 0; i < 95; i++) await store.createFlush(flush(`g${String(i).padStart(3, '0')}`, { createdAt: at(100 + i), app: 'many' }));
    const all = await store.listFlushes();
    assert.equal(all.length, 100);
    assert.equal(all[0]!.id, 'g094');
    assert.deepEqual(ids(all.slice(-6)), ['g000', 'f5b', 'f5a', 'f4', 'f3', 'f2'], 'the oldest (f1) is left out');
    assert.equal((await store.listFlushes({ limit: 500 })).length, 101);
  });

  test(`${name}: deleteFlushesBefore deletes finished flushes older than the cut, keeping pending and recent ones`, async (t) => {
    const { stores: [a, b] } = await fleet(backend, t, 'node-a', 'node-b');
    const cut = at(100);
    await a.createFlush(flush('old-succeeded', { createdAt: at(1), state: 'succeeded', finishedAt: at(2) }));
    await a.createFlush(flush('old-failed', { createdAt: at(2), state: 'failed', finishedAt: at(3) }));
    await b.createFlush(flush('old-skipped', { createdAt: at(3), state: 'skipped', finishedAt: at(3) }));
    await a.createFlush(flush('old-pending', { createdAt: at(4), attempts: 40 }));
    await a.createFlush(flush('at-cut', { createdAt: cut, state: 'succeeded', finishedAt: at(101) }));
    await a.createFlush(flush('new-succeeded', { createdAt: at(200), state: 'succeeded', finishedAt: at(201) }));
    await a.createFlush(flush('new-pending', { createdAt: at(200) }));

    assert.equal(await a.deleteFlushesBefore(cut), 3, 'every node\'s finished flushes older than the cut');
    assert.deepEqual(ids(await a.listFlushes()), ['new-succeeded', 'new-pending', 'at-cut', 'old-pending']);
    assert.equal(await a.getFlush('old-succeeded'), null);
    assert.deepEqual(ids(await a.listPendingFlushes()), ['old-pending', 'new-pending'], 'a pending flush is never deleted, however old');
    assert.equal(await b.deleteFlushesBefore(cut), 0, 'nothing left to delete');
    // The id of a deleted flush is free again.
    await a.createFlush(flush('old-succeeded'));
  });

  test(`${name}: a flush row whose URLs are not a JSON list of strings fails the read with BERTH_E_STORE`, async (t) => {
    const db = await backend.database(t);
    const store = db.store();
    await store.open();
    await store.createFlush(flush('f1'));
    await db.exec(`UPDATE cache_flushes SET urls = 'not json' WHERE id = 'f1'`);
    const storeError = (action: string) => (err: unknown) => isCode('BERTH_E_STORE')(err) && (err as Error).message.startsWith(`store: cannot ${action}: `);
    await assert.rejects(store.getFlush('f1'), storeError('read flush'));
    await assert.rejects(store.listFlushes(), storeError('list flushes'));
    await assert.rejects(store.listPendingFlushes(), storeError('list pending flushes'));
    await db.exec(`UPDATE cache_flushes SET urls = '["https://cdn.test/a"]', done = '[1]' WHERE id = 'f1'`);
    await assert.rejects(store.getFlush('f1'), storeError('read flush'));
    await db.exec(`UPDATE cache_flushes SET done = '[]' WHERE id = 'f1'`);
    assert.deepEqual((await store.getFlush('f1'))?.urls, ['https://cdn.test/a']);
  });
}

forEachBackend(flushContract);
