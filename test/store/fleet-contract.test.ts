/**
 * Contract tests of fleet mode (migration 007), shared by every Store implementation: node heartbeats,
 * fleet-wide locks, once-only claims, shared ACME answers, the reload count of an app's desired state,
 * and the node that rows name. Each test opens two (or three) stores on one database with different
 * `node` options, as the gateways of a fleet do; for SQLite that is the same file opened again.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { BerthError } from '../../src/lib/errors.ts';
import type { AuditRecord, DeployRecord, NodeRecord, ProcessRecord, Store, TaskRunRecord } from '../../src/store/store.ts';
import { forEachBackend, type Backend } from './backends.ts';

const LOCK = 'deploy:shop';

/** An ISO time `ms` before now (after now for a negative `ms`). */
function ago(ms: number): string {
  return new Date(Date.now() - ms).toISOString();
}

/** How long before now a holder's heartbeat makes it lost, in these tests. */
const TIMEOUT_MS = 10_000;
const staleBefore = () => ago(TIMEOUT_MS);

function nodeRecord(node: string, over: Partial<NodeRecord> = {}): NodeRecord {
  return {
    node, hostname: `host-${node}`, pid: 4242, version: '1.2.3', state: 'running', startedAt: '2026-01-01T00:00:00.000Z', heartbeatAt: ago(0),
    serving: [], ...over,
  };
}

function deploy(id: string, over: Partial<DeployRecord> = {}): DeployRecord {
  return {
    id, app: 'shop', kind: 'deploy', state: 'running', releaseId: null, previousRelease: null, source: null, user: null,
    failedStep: null, error: null, logTail: [], createdAt: '2026-01-01T00:00:00.000Z', finishedAt: null, ...over,
  };
}

function auditRow(over: Partial<Omit<AuditRecord, 'id'>> = {}): Omit<AuditRecord, 'id'> {
  return { at: '2026-01-01T00:00:00.000Z', user: 'alice', channel: 'tcp', action: 'deploy', app: 'shop', target: null, outcome: 'pending', detail: null, finishedAt: null, ...over };
}

function run(id: string, over: Partial<TaskRunRecord> = {}): TaskRunRecord {
  return {
    id, app: 'shop', task: 'nightly', trigger: 'schedule', state: 'running', command: 'node nightly.js', releaseId: null, user: null,
    startedAt: '2026-01-01T00:00:00.000Z', finishedAt: null, exitCode: null, durationMs: null, output: '', error: null, ...over,
  };
}

function proc(pgid: number, over: Partial<ProcessRecord> = {}): ProcessRecord {
  return { pgid, app: 'shop', generation: 'g1', process: 'web', index: 0, gatewayPid: 4242, startedAt: '2026-01-01T00:00:00.000Z', ...over };
}

const isCode = (code: string) => (err: unknown) => err instanceof BerthError && err.code === code;

/** One database and a store on it for each node named, all opened; they close when `t` ends. */
async function fleet(backend: Backend, t: TestContext, ...nodes: string[]): Promise<Store[]> {
  const db = await backend.database(t);
  const stores = nodes.map((node) => db.store({ node }));
  // One after the other: the first migrates the new database, the others find it current.
  for (const store of stores) await store.open();
  return stores;
}

function fleetContract(backend: Backend): void {
  const name = backend.name;

  test(`${name}: a store writes as the node it was given`, async (t) => {
    const [a, b] = await fleet(backend, t, 'node-a', 'node-b');
    assert.equal(a.node, 'node-a');
    assert.equal(b.node, 'node-b');
  });

  test(`${name}: saveNode and listNodes round-trip every field, serving list included, listed by name and replaced by name`, async (t) => {
    const [a, b] = await fleet(backend, t, 'web-2', 'web-1');
    assert.deepEqual(await a.listNodes(), []);
    const two = nodeRecord('web-2', {
      serving: [
        { app: 'shop', release: '20260101000000-abcdef', mode: 'normal', reloads: 3, converged: true, error: null },
        { app: 'blog', release: null, mode: 'maintenance', reloads: 0, converged: false, error: 'build failed: "npm" exited with 1 — ünïcødé' },
      ],
    });
    const one = nodeRecord('web-1', { hostname: 'other.example', pid: 7, version: '1.3.0', startedAt: '2026-01-02T00:00:00.000Z' });
    await a.saveNode(two);
    await b.saveNode(one);
    assert.deepEqual(await a.listNodes(), [one, two], 'by node name, each node sees every row');
    assert.deepEqual(await b.listNodes(), [one, two]);

    // A later heartbeat replaces the node's row as a whole; the other row is untouched.
    const later = { ...two, state: 'stopped' as const, heartbeatAt: ago(-1000), serving: [{ app: 'shop', release: 'r2', mode: 'read-only' as const, reloads: 4, converged: false, error: null }] };
    await a.saveNode(later);
    assert.deepEqual(await b.listNodes(), [one, later]);
    await a.saveNode({ ...later, serving: [] });
    assert.deepEqual((await b.listNodes()).map((n) => [n.node, n.serving]), [['web-1', []], ['web-2', []]]);
  });

  test(`${name}: deleteNodesBefore forgets the nodes silent since before the cut, whoever asks`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.saveNode(nodeRecord('a', { heartbeatAt: ago(0) }));
    await b.saveNode(nodeRecord('b', { state: 'stopped', heartbeatAt: ago(3_600_000) }));
    assert.equal(await a.deleteNodesBefore(ago(7_200_000)), 0, 'nobody is that silent');
    assert.equal(await a.deleteNodesBefore(ago(60_000)), 1);
    assert.deepEqual((await b.listNodes()).map((n) => n.node), ['a']);
  });

  test(`${name}: a bad node row is refused with BERTH_E_BAD_REQUEST and writes nothing`, async (t) => {
    const [a] = await fleet(backend, t, 'a');
    const bad: Partial<NodeRecord>[] = [
      { node: '' },
      { state: 'lost' as 'running' },
      { pid: 0 },
      { pid: 1.5 },
      { heartbeatAt: 'a while ago' },
      { startedAt: 'yesterday' },
      { serving: 'shop' as never },
    ];
    for (const over of bad) await assert.rejects(a.saveNode(nodeRecord('a', over)), isCode('BERTH_E_BAD_REQUEST'), JSON.stringify(over));
    assert.deepEqual(await a.listNodes(), []);
  });

  test(`${name}: acquireLock takes a free lock, and a node that holds it takes it again`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.saveNode(nodeRecord('a'));
    await b.saveNode(nodeRecord('b'));
    assert.equal(await a.acquireLock(LOCK, staleBefore()), null, 'nobody held it');
    assert.equal(await a.acquireLock(LOCK, staleBefore()), null, 'the holder takes it again');
    assert.equal(await b.acquireLock(LOCK, staleBefore()), 'a', 'still a\'s after it took it again');
    // Locks are by name: another one is free.
    assert.equal(await b.acquireLock('deploy:blog', staleBefore()), null);
    assert.equal(await a.acquireLock('deploy:blog', staleBefore()), 'b');
  });

  test(`${name}: acquireLock names the holder while it runs with a fresh heartbeat, and takes over once the heartbeat is older than staleBefore`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.saveNode(nodeRecord('a'));
    await b.saveNode(nodeRecord('b'));
    assert.equal(await a.acquireLock(LOCK, staleBefore()), null);
    assert.equal(await b.acquireLock(LOCK, staleBefore()), 'a');
    assert.equal(await b.acquireLock(LOCK, staleBefore()), 'a', 'asking again changes nothing');

    // A heartbeat written exactly at the cut is still fresh.
    const cut = staleBefore();
    await a.saveNode(nodeRecord('a', { heartbeatAt: cut }));
    assert.equal(await b.acquireLock(LOCK, cut), 'a');

    // a went silent: its last heartbeat is older than the cut, so b takes the lock over.
    await a.saveNode(nodeRecord('a', { heartbeatAt: ago(TIMEOUT_MS * 6) }));
    assert.equal(await b.acquireLock(LOCK, staleBefore()), null, 'a lost node\'s lock is taken over');
    // a comes back: the lock is b's now, and b is running with a fresh heartbeat.
    await a.saveNode(nodeRecord('a'));
    assert.equal(await a.acquireLock(LOCK, staleBefore()), 'b');
  });

  test(`${name}: acquireLock takes a lock whose holder stopped, even with a fresh heartbeat`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.saveNode(nodeRecord('a'));
    await b.saveNode(nodeRecord('b'));
    assert.equal(await a.acquireLock(LOCK, staleBefore()), null);
    await a.saveNode(nodeRecord('a', { state: 'stopped' }));
    assert.equal(await b.acquireLock(LOCK, staleBefore()), null, 'a stopped node holds nothing');
    await a.saveNode(nodeRecord('a', { state: 'running' }));
    assert.equal(await a.acquireLock(LOCK, staleBefore()), 'b');
  });

  test(`${name}: releaseLock with a token lets go only of that taking of the lock, not a later one`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.saveNode(nodeRecord('a'));
    assert.equal(await a.acquireLock(LOCK, staleBefore(), 'first'), null);
    await a.releaseLock(LOCK, 'first');
    assert.equal(await a.acquireLock(LOCK, staleBefore(), 'second'), null);
    await a.releaseLock(LOCK, 'first'); // late: the first taking is long over
    assert.equal(await b.acquireLock(LOCK, staleBefore()), 'a', 'the second taking still holds');
    await a.releaseLock(LOCK, 'second');
    assert.equal(await b.acquireLock(LOCK, staleBefore()), null);
  });

  test(`${name}: listChallenges gives every shared answer, by key`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    assert.deepEqual(await b.listChallenges(), []);
    await a.putChallenge('tls-alpn-01:shop.test', '{"certificate":"c","key":"k"}');
    await a.putChallenge('http-01:tok', 'tok.thumb');
    assert.deepEqual(await b.listChallenges(), [['http-01:tok', 'tok.thumb'], ['tls-alpn-01:shop.test', '{"certificate":"c","key":"k"}']]);
    await b.deleteChallenge('http-01:tok');
    assert.deepEqual((await a.listChallenges()).map(([k]) => k), ['tls-alpn-01:shop.test']);
  });

  test(`${name}: releaseLock lets go only of this node's own lock`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.saveNode(nodeRecord('a'));
    await b.saveNode(nodeRecord('b'));
    assert.equal(await a.acquireLock(LOCK, staleBefore()), null);
    await b.releaseLock(LOCK);
    assert.equal(await b.acquireLock(LOCK, staleBefore()), 'a', 'b cannot release a\'s lock');
    await b.releaseLock('never-taken');
    await a.releaseLock(LOCK);
    assert.equal(await b.acquireLock(LOCK, staleBefore()), null, 'released by its holder, it is free');
    assert.equal(await a.acquireLock(LOCK, staleBefore()), 'b');
  });

  test(`${name}: releaseAllLocks lets go of every lock of this node alone and counts them`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.saveNode(nodeRecord('a'));
    await b.saveNode(nodeRecord('b'));
    for (const lock of ['x', 'y', 'z']) assert.equal(await a.acquireLock(lock, staleBefore()), null, lock);
    assert.equal(await b.acquireLock('w', staleBefore()), null);
    assert.equal(await a.releaseAllLocks(), 3);
    assert.equal(await a.releaseAllLocks(), 0, 'nothing left to release');
    assert.equal(await a.acquireLock('w', staleBefore()), 'b', 'b\'s lock is still held');
    for (const lock of ['x', 'y']) assert.equal(await b.acquireLock(lock, staleBefore()), null, `${lock} is free`);
    assert.equal(await b.releaseAllLocks(), 3);
    assert.equal(await a.acquireLock('w', staleBefore()), null);
  });

  test(`${name}: claimOnce gives a key to the first node that claims it, and to nobody after`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    const key = 'schedule:shop:nightly:2026-01-01T03:00:00.000Z';
    assert.equal(await a.claimOnce(key), true);
    assert.equal(await b.claimOnce(key), false, 'another node on the database');
    assert.equal(await a.claimOnce(key), false, 'the same node again');
    assert.equal(await b.claimOnce('schedule:shop:nightly:2026-01-02T03:00:00.000Z'), true, 'another key');
    // Claimed at once by both, one key still goes to exactly one of them.
    const both = await Promise.all([a.claimOnce('race'), b.claimOnce('race')]);
    assert.deepEqual(both.filter(Boolean), [true], JSON.stringify(both));
  });

  test(`${name}: deleteClaimsBefore deletes the claims made before the cut, which can then be claimed again`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    assert.equal(await a.claimOnce('old'), true);
    await sleep(20);
    const cut = new Date().toISOString();
    await sleep(20);
    assert.equal(await b.claimOnce('new'), true);
    assert.equal(await a.deleteClaimsBefore(ago(60_000)), 0, 'nothing is that old');
    assert.equal(await a.deleteClaimsBefore(cut), 1, 'whichever node made it');
    assert.equal(await b.claimOnce('old'), true, 'a deleted claim can be made again');
    assert.equal(await a.claimOnce('new'), false, 'a claim after the cut is kept');
    assert.equal(await b.deleteClaimsBefore(ago(-60_000)), 2);
    assert.equal(await a.claimOnce('new'), true);
  });

  test(`${name}: an ACME answer put by one node is given by every node, replaced by token, and deleted`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    assert.equal(await b.getChallenge('tok-1'), null);
    await a.putChallenge('tok-1', 'tok-1.thumbprint');
    await a.putChallenge('tok-2', 'tok-2.thumbprint');
    assert.equal(await b.getChallenge('tok-1'), 'tok-1.thumbprint');
    assert.equal(await a.getChallenge('tok-1'), 'tok-1.thumbprint');
    await b.putChallenge('tok-1', 'tok-1.other');
    assert.equal(await a.getChallenge('tok-1'), 'tok-1.other', 'put again, it is replaced');
    await b.deleteChallenge('tok-1');
    assert.equal(await a.getChallenge('tok-1'), null);
    assert.equal(await a.getChallenge('tok-2'), 'tok-2.thumbprint', 'other tokens are untouched');
    await b.deleteChallenge('tok-1');
    await b.deleteChallenge('never-put');
    assert.equal(await b.getChallenge('tok-2'), 'tok-2.thumbprint');
  });

  test(`${name}: requestReload counts from 0, creating a missing app row, for every node; the release and the mode leave the count alone`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    const before = Date.now();
    assert.equal(await a.getAppState('shop'), null);
    assert.equal(await a.requestReload('shop'), 1);
    const created = (await b.getAppState('shop'))!;
    assert.deepEqual({ ...created, updatedAt: '' }, { app: 'shop', activeRelease: null, mode: 'normal', modeMessage: null, modeRetryAfter: null, reloads: 1, updatedAt: '' });
    assert.ok(Date.parse(created.updatedAt) >= before - 1000, `updatedAt ${created.updatedAt} is a recent ISO time`);
    assert.equal(await a.requestReload('shop'), 2);
    assert.equal(await b.requestReload('shop'), 3, 'one count for the fleet');

    await a.setActiveRelease('shop', 'r1');
    await b.setMode('shop', 'maintenance', 'back soon', 60);
    assert.deepEqual({ ...(await a.getAppState('shop'))!, updatedAt: '' }, {
      app: 'shop', activeRelease: 'r1', mode: 'maintenance', modeMessage: 'back soon', modeRetryAfter: 60, reloads: 3, updatedAt: '',
    });
    assert.equal(await a.requestReload('shop'), 4);
    const after = (await b.getAppState('shop'))!;
    assert.equal(after.activeRelease, 'r1', 'a reload keeps the release');
    assert.equal(after.mode, 'maintenance', 'a reload keeps the mode');
    assert.equal(after.modeMessage, 'back soon');

    // Apps count apart; an app made by setMode starts from 0.
    await a.setMode('blog', 'read-only', null, null);
    assert.equal((await a.getAppState('blog'))?.reloads, 0);
    assert.equal(await b.requestReload('blog'), 1);
    assert.equal((await a.getAppState('blog'))?.mode, 'read-only');
    assert.deepEqual((await b.listAppStates()).map((s) => [s.app, s.reloads]), [['blog', 1], ['shop', 4]]);
  });

  test(`${name}: requestReload asked at once by several nodes loses no count`, async (t) => {
    const [a, b, c] = await fleet(backend, t, 'a', 'b', 'c');
    const counts = await Promise.all([a, b, c, a, b, c].map((store) => store.requestReload('shop')));
    assert.deepEqual([...counts].sort(), [1, 2, 3, 4, 5, 6]);
    assert.equal((await a.getAppState('shop'))?.reloads, 6);
  });

  test(`${name}: deploys, audit rows and task runs name the node of the store that wrote them`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.createDeploy(deploy('d1'));
    await b.createDeploy(deploy('d2', { createdAt: '2026-01-01T00:00:01.000Z' }));
    assert.equal((await b.getDeploy('d1'))?.node, 'a');
    assert.equal((await a.getDeploy('d2'))?.node, 'b');
    assert.deepEqual((await a.listDeploys()).map((d) => [d.id, d.node]), [['d2', 'b'], ['d1', 'a']], 'every node lists every deploy');
    // An update leaves the node as written.
    await b.updateDeploy('d1', { state: 'interrupted', finishedAt: '2026-01-01T00:01:00.000Z' });
    assert.equal((await a.getDeploy('d1'))?.node, 'a');

    const first = await a.addAudit(auditRow());
    const second = await b.addAudit(auditRow({ at: '2026-01-01T00:00:01.000Z', action: 'mode' }));
    await b.finishAudit(first, 'ok', null, '2026-01-01T00:00:02.000Z');
    assert.deepEqual((await a.listAudit()).map((r) => [r.id, r.node]), [[second, 'b'], [first, 'a']]);

    await a.createTaskRun(run('t1'));
    await b.createTaskRun(run('t2', { startedAt: '2026-01-01T00:00:01.000Z' }));
    await b.finishTaskRun('t1', { state: 'succeeded', finishedAt: '2026-01-01T00:00:05.000Z', exitCode: 0, durationMs: 5000, output: 'done', error: null });
    assert.equal((await b.getTaskRun('t1'))?.node, 'a');
    assert.deepEqual((await a.listTaskRuns()).map((r) => [r.id, r.node]), [['t2', 'b'], ['t1', 'a']]);
  });

  test(`${name}: a record that names its node keeps it, whichever store writes it`, async (t) => {
    const [a] = await fleet(backend, t, 'a');
    await a.createDeploy(deploy('d1', { node: 'elsewhere' }));
    assert.equal((await a.getDeploy('d1'))?.node, 'elsewhere');
    await a.addAudit(auditRow({ node: 'elsewhere' }));
    assert.equal((await a.listAudit())[0]?.node, 'elsewhere');
    await a.createTaskRun(run('t1', { node: 'elsewhere' }));
    assert.equal((await a.getTaskRun('t1'))?.node, 'elsewhere');
  });

  test(`${name}: listProcesses lists this node's process groups, not another node's`, async (t) => {
    const [a, b, c] = await fleet(backend, t, 'a', 'b', 'c');
    const a1 = proc(3001, { startedAt: '2026-01-01T00:00:02.000Z' });
    const a2 = proc(3003, { app: 'blog', startedAt: '2026-01-01T00:00:01.000Z' });
    const b1 = proc(3002, { gatewayPid: 5151 });
    await a.recordProcess(a1);
    await b.recordProcess(b1);
    await a.recordProcess(a2);
    assert.deepEqual(await a.listProcesses(), [{ ...a2, node: 'a' }, { ...a1, node: 'a' }]);
    assert.deepEqual(await b.listProcesses(), [{ ...b1, node: 'b' }]);
    assert.deepEqual(await c.listProcesses(), [], 'a node that started nothing has no orphans to kill');
    // A pgid means something on one machine only: C on another machine may record B's pgid too. Both
    // rows stay, each node lists and forgets its own, and a record naming another node is still C's.
    await c.recordProcess(proc(3002, { node: 'b', gatewayPid: 6161 }));
    assert.deepEqual(await b.listProcesses(), [{ ...b1, node: 'b' }]);
    assert.deepEqual((await c.listProcesses()).map((p) => [p.pgid, p.node, p.gatewayPid]), [[3002, 'c', 6161]]);
    await b.removeProcess(3002);
    assert.deepEqual(await b.listProcesses(), []);
    assert.deepEqual((await c.listProcesses()).map((p) => p.pgid), [3002], 'B forgetting its group leaves C\'s');
  });

  test(`${name}: interruptTaskRuns on one node leaves the runs of another node running`, async (t) => {
    const [a, b] = await fleet(backend, t, 'a', 'b');
    await a.createTaskRun(run('a1', { startedAt: '2026-01-01T00:00:01.000Z' }));
    await a.createTaskRun(run('a2', { startedAt: '2026-01-01T00:00:03.000Z' }));
    await b.createTaskRun(run('b1', { startedAt: '2026-01-01T00:00:02.000Z' }));
    assert.deepEqual(await b.interruptTaskRuns('2026-01-02T00:00:00.000Z'), ['b1']);
    assert.equal((await a.getTaskRun('b1'))?.state, 'interrupted');
    for (const id of ['a1', 'a2']) {
      const left = (await b.getTaskRun(id))!;
      assert.equal(left.state, 'running', id);
      assert.equal(left.finishedAt, null, id);
      assert.equal(left.error, null, id);
    }
    assert.deepEqual(await b.interruptTaskRuns('2026-01-02T00:00:00.000Z'), [], 'b has nothing left to interrupt');
    assert.deepEqual(await a.interruptTaskRuns('2026-01-02T00:00:01.000Z'), ['a1', 'a2']);
    assert.equal((await b.getTaskRun('a2'))?.finishedAt, '2026-01-02T00:00:01.000Z');
  });
}

forEachBackend(fleetContract);
