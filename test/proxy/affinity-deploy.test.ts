/**
 * Issue 17's acceptance through a deploy: socket.io clients (polling only, and polling then websocket)
 * emitting steadily while the app is deployed. The sessions that were open go on, on the old
 * generation's instances, until the drain deadline; new sessions start on the new generation; at the
 * deadline the old sessions end and their clients reconnect to the new one. The test counts every
 * error, and the only ones are those reconnects (and an emit a reconnect cut short).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, startGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';
import { AFFINITY_LINGER_MS } from '../../src/deploy/deployer.ts';
import { CHAT_COMMAND, CHAT_ENV, ChatClient, activeInstancesReady, chatSource } from './chat-clients.ts';

const DRAIN_MS = 4_000;
/** Clock slack between the deploy's event times and the clients' own. */
const SLACK_MS = 300;
const EMITS = 50;

async function steady(c: ChatClient, stopped: () => boolean): Promise<void> {
  for (let n = 0; !stopped(); ) {
    if ((await c.emit(n)) !== null) n++;
    else if (!stopped()) await c.connected(15_000);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function deployUnderLoad(t: TestContext, workers: number): Promise<void> {
  const dir = await tempDir(t);
  const v1 = await chatSource(dir, 'v1');
  const v2 = await chatSource(dir, 'v2');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn', proxy: 'info' },
    ...(workers > 1 ? { proxy: { workers } } : {}),
    apps: {
      chat: {
        source: v1,
        env: CHAT_ENV,
        processes: { io: { command: CHAT_COMMAND, instances: 3, concurrency: 64, http: true } },
        routes: [{ path: '/socket.io', to: 'io', affinity: 'cookie' }],
        health: { path: '/up', interval: '250ms' },
        timeouts: { drain: `${DRAIN_MS}ms`, stop: '2s' },
      },
    },
  });
  const { gateway, port, sink } = await startGateway(t, file);
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  await waitFor(() => activeInstancesReady(gateway), { timeoutMs: 30_000, message: 'every instance ready' });
  if (workers > 1) await waitFor(() => gateway.proxyWorkers?.running === workers, { message: 'every proxy thread running' });

  const clients = [...Array.from({ length: 10 }, () => new ChatClient(port, ['polling'])), ...Array.from({ length: 10 }, () => new ChatClient(port, ['polling', 'websocket']))];
  t.after(() => clients.forEach((c) => c.close()));
  await Promise.all(clients.map((c) => c.connected()));
  let stopped = false;
  const loops = clients.map((c) => steady(c, () => stopped));
  await waitFor(() => clients.every((c) => c.acks.length >= 5), { message: 'every client emitting' });
  const oldRelease = clients[0].acks[0].release;

  const deploy = gateway.deployer.begin('chat', { kind: 'deploy', source: v2 });
  const switched = await waitFor(() => deploy.events.find((e) => e.step === 'switch' && e.status === 'succeeded'), { timeoutMs: 60_000, message: 'the switch' });
  const switchAt = Date.parse(switched.at);
  // A session that starts during the drain is the new generation's.
  const fresh = new ChatClient(port, ['polling', 'websocket']);
  t.after(() => fresh.close());
  await fresh.connected();
  await fresh.run(5);
  const newRelease = fresh.acks[0].release;
  assert.notEqual(newRelease, oldRelease);
  assert.deepEqual([...new Set(fresh.acks.map((a) => a.release))], [newRelease]);

  await deploy.done;
  assert.equal(deploy.state, 'succeeded', deploy.error ?? '');
  const drainStarted = deploy.events.find((e) => e.step === 'drain' && e.status === 'started')!;
  const deadline = Date.parse(drainStarted.at) + DRAIN_MS;
  assert.ok(deadline - switchAt >= DRAIN_MS - SLACK_MS);
  // Clients go on until each has reconnected to the new generation and made its emits.
  await waitFor(() => clients.every((c) => c.acks.length >= EMITS && c.acks.at(-1)!.release === newRelease), { timeoutMs: 60_000, message: 'every client on the new generation' });
  stopped = true;
  await Promise.all(loops);

  let forced = 0;
  let cut = 0;
  for (const [i, c] of clients.entries()) {
    const what = `client ${i} (${i < 10 ? 'polling' : 'polling then websocket'})`;
    const session = c.acks[0];
    assert.equal(session.release, oldRelease);
    const before = c.acks.filter((a) => a.at < deadline - SLACK_MS);
    const after = c.acks.filter((a) => a.at > deadline + SLACK_MS);
    // Until the deadline, every emit was answered by the instance that held its session...
    assert.deepEqual([...new Set(before.map((a) => `${a.release}/${a.pid}`))], [`${oldRelease}/${session.pid}`], what);
    // ...also during the drain, after the switch...
    assert.ok(before.filter((a) => a.at > switchAt + 1_000).length >= 5, `${what}: its session went on during the drain`);
    // ...then by the new generation only, after one reconnect, at the deadline.
    assert.ok(after.length > 0 && after.every((a) => a.release === newRelease), what);
    assert.equal(c.disconnects.length, 1, `${what}: ${JSON.stringify(c.disconnects)}`);
    assert.ok(c.disconnects[0].at >= deadline - SLACK_MS, `${what}: disconnected ${deadline - c.disconnects[0].at}ms before the deadline`);
    assert.deepEqual(c.connectErrors, [], what);
    // An emit under way when the session ended may be lost with it (it is sent again), nothing else.
    assert.ok(c.failures.length <= 1, `${what}: ${JSON.stringify(c.failures)}`);
    for (const f of c.failures) assert.ok(f.at >= deadline - SLACK_MS, `${what}: a failure before the deadline`);
    forced += c.disconnects.length;
    cut += c.failures.length;
  }
  t.diagnostic(`${clients.length} sessions, ${forced} reconnects forced by the drain deadline, ${cut} emits cut short by them (sent again)`);
  assert.equal(forced, clients.length, 'every session open at the switch ended at the deadline, once');
  assert.deepEqual(fresh.disconnects, [], 'the new session was not touched');
  // Nothing failed before the deadline: the front door answered every request of the drain.
  const at = (l: { time: string }) => Date.parse(l.time);
  const early = sink.lines.filter((l) => l.msg === 'request' && l.status >= 400 && at(l) < deadline - SLACK_MS);
  assert.deepEqual(early, []);
  assert.ok(sink.lines.some((l) => l.msg === 'request' && l.affinity === 'hit' && l.release === oldRelease && at(l) > switchAt + 1_000), 'hits on the draining generation');
}

test('a deploy under socket.io load: sessions finish on the old generation until the drain deadline, then reconnect to the new one', async (t) => {
  await deployUnderLoad(t, 1);
});

test('the same on two proxy threads: every thread follows cookies to the draining generation, and lets go at the deadline', async (t) => {
  await deployUnderLoad(t, 2);
});

/** A plain web app (the fixture) whose `/` route has cookie affinity, 2 instances, drained for `drain`. */
async function webGateway(t: TestContext, drain: string) {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const v2 = await fixtureApp(dir, 'v2');
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      shop: {
        source: v1,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 8 } },
        routes: [{ path: '/', to: 'web', affinity: 'cookie' }],
        health: { path: '/up', interval: '250ms' },
        timeouts: { drain, stop: '2s' },
      },
    },
  });
  const started = await startGateway(t, file);
  await waitFor(async () => (await http({ port: started.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  await waitFor(() => activeInstancesReady(started.gateway, 'shop'), { timeoutMs: 30_000, message: 'every instance ready' });
  return { ...started, v2 };
}

function drainMs(events: readonly { step: string; status: string; durationMs: number | null }[]): number {
  return events.find((e) => e.step === 'drain' && e.status === 'succeeded')!.durationMs!;
}

test('a client that comes back between quick requests keeps the old generation draining, up to the deadline and no longer', async (t) => {
  const { gateway, port, v2 } = await webGateway(t, '4s');
  const first = await http({ port }, { path: '/' });
  const cookie = String(first.headers['set-cookie']).split(';')[0];
  const old = first.json();
  const deploy = gateway.deployer.begin('shop', { kind: 'deploy', source: v2 });
  await waitFor(() => deploy.events.some((e) => e.step === 'switch' && e.status === 'succeeded'), { timeoutMs: 60_000, message: 'the switch' });
  // Nothing is in flight between these requests: without the linger the drain would end at once.
  const seen: { release: string; pid: number }[] = [];
  while (deploy.state === 'running') {
    seen.push((await http({ port }, { path: '/', headers: { cookie } })).json());
    await new Promise((r) => setTimeout(r, 700));
  }
  assert.equal(deploy.state, 'succeeded', deploy.error ?? '');
  const drained = drainMs(deploy.events);
  assert.ok(drained >= 3_800 && drained < 4_000 + AFFINITY_LINGER_MS, `the drain lasted to its deadline: ${drained}ms`);
  assert.ok(seen.filter((s) => s.pid === old.pid).length >= 4, 'the session kept its instance during the drain');
  const after = await http({ port }, { path: '/', headers: { cookie } });
  assert.notEqual(after.json().release, old.release, 'then it re-pins to the new generation');
  assert.match(String(after.headers['set-cookie']), /berth_affinity=/);
});

test('a drain with no client coming back ends once its affinity sessions are quiet, long before the deadline', async (t) => {
  const { gateway, port, v2 } = await webGateway(t, '60s');
  await http({ port }, { path: '/' });
  const deploy = gateway.deployer.begin('shop', { kind: 'deploy', source: v2 });
  await deploy.done;
  assert.equal(deploy.state, 'succeeded', deploy.error ?? '');
  const drained = drainMs(deploy.events);
  assert.ok(drained <= AFFINITY_LINGER_MS + 1_000, `quiet sessions do not hold the drain: ${drained}ms`);
});
