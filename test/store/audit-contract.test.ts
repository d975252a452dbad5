/** Contract tests of the audit log, shared by every Store implementation. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BerthError } from '../../src/lib/errors.ts';
import type { AuditRecord } from '../../src/store/store.ts';
import { forEachBackend, openFresh, type Backend } from './backends.ts';

function row(over: Partial<Omit<AuditRecord, 'id'>> = {}): Omit<AuditRecord, 'id'> {
  return { at: '2026-11-22T10:00:00.000Z', user: 'alice', channel: 'tcp', action: 'deploy', app: 'shop', target: null, outcome: 'pending', detail: null, finishedAt: null, ...over };
}

function auditContract(backend: Backend): void {
  const name = backend.name;
  test(`${name}: audit rows are added pending, finished with an outcome, and listed newest first`, async (t) => {
    const store = await openFresh(backend, t);
    const a = await store.addAudit(row({ at: '2026-11-22T10:00:00.000Z' }));
    const b = await store.addAudit(row({ at: '2026-11-22T10:00:01.000Z', user: 'bob', action: 'mode', app: 'blog', target: 'maintenance' }));
    assert.ok(b > a);
    await store.finishAudit(a, 'ok', 'release r1', '2026-11-22T10:00:05.000Z');
    const rows = await store.listAudit();
    assert.deepEqual(rows.map((r) => r.id), [b, a]);
    assert.equal(rows[1].outcome, 'ok');
    assert.equal(rows[1].detail, 'release r1');
    assert.equal(rows[1].finishedAt, '2026-11-22T10:00:05.000Z');
    assert.equal(rows[0].outcome, 'pending');
    assert.equal(rows[0].target, 'maintenance');
    // A finish without detail keeps the detail written at the start.
    const c = await store.addAudit(row({ at: '2026-11-22T10:00:02.000Z', detail: 'asked' }));
    await store.finishAudit(c, 'refused', null, '2026-11-22T10:00:06.000Z');
    assert.equal((await store.listAudit({ limit: 1 }))[0].detail, 'asked');
  });

  test(`${name}: audit rows filter by app, user and since, and obey the limit`, async (t) => {
    const store = await openFresh(backend, t);
    for (let i = 0; i < 5; i++) await store.addAudit(row({ at: `2026-11-22T10:00:0${i}.000Z`, user: i % 2 ? 'bob' : 'alice', app: i < 3 ? 'shop' : 'blog', outcome: 'ok' }));
    assert.equal((await store.listAudit({ app: 'shop' })).length, 3);
    assert.equal((await store.listAudit({ user: 'bob' })).length, 2);
    assert.deepEqual((await store.listAudit({ since: '2026-11-22T10:00:03.000Z' })).map((r) => r.at), ['2026-11-22T10:00:04.000Z', '2026-11-22T10:00:03.000Z']);
    assert.equal((await store.listAudit({ app: 'shop', user: 'alice' })).length, 2);
    assert.equal((await store.listAudit({ limit: 2 })).length, 2);
    assert.equal(await store.deleteAuditBefore('2026-11-22T10:00:02.000Z'), 2);
    assert.equal((await store.listAudit()).length, 3);
  });

  test(`${name}: bad audit input is refused clearly`, async (t) => {
    const store = await openFresh(backend, t);
    const bad = (code: string) => (err: unknown) => err instanceof BerthError && err.code === code;
    await assert.rejects(store.addAudit(row({ outcome: 'maybe' as never })), bad('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.addAudit(row({ channel: 'pigeon' as never })), bad('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.addAudit(row({ user: '' })), bad('BERTH_E_BAD_REQUEST'));
    await assert.rejects(store.finishAudit(999_999, 'ok', null, '2026-11-22T10:00:00.000Z'), bad('BERTH_E_NOT_FOUND'));
    await assert.rejects(store.listAudit({ limit: 0 }), bad('BERTH_E_BAD_REQUEST'));
  });
}

forEachBackend(auditContract);
