/**
 * Issue 17's acceptance: a stock socket.io 4 server (from npm, test/fixtures/apps/socketio) with 3
 * instances behind a real gateway, real socket.io clients. With `affinity: cookie` on its route, 20
 * clients each complete 50 acknowledged emits, on polling only and on polling then websocket, with 0
 * failures; the same with the front door on two threads. Without affinity, the same server fails as
 * the issue describes ("Session ID unknown").
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, tempDir, waitFor, writeConfig, http, type LogSink } from '../helpers/gateway.ts';
import { parseMetrics } from '../helpers/prometheus.ts';
import { CHAT_COMMAND, CHAT_ENV, ChatClient, activeInstancesReady, chatSource, type Transports } from './chat-clients.ts';

const CLIENTS = 20;
const EMITS = 50;

async function chatGateway(t: TestContext, opts: { affinity: string | null; workers?: number }) {
  const dir = await tempDir(t);
  const src = await chatSource(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn', proxy: 'info' },
    ...(opts.workers ? { proxy: { workers: opts.workers } } : {}),
    apps: {
      chat: {
        source: src,
        env: CHAT_ENV,
        // A polling client holds a slot with its long poll, and takes another for each emit.
        processes: { io: { command: CHAT_COMMAND, instances: 3, concurrency: 64, http: true } },
        routes: [{ path: '/socket.io', to: 'io', ...(opts.affinity ? { affinity: opts.affinity } : {}) }],
        health: { path: '/up', interval: '250ms' },
      },
    },
  });
  const started = await startGateway(t, file);
  await waitFor(async () => (await http({ port: started.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  // Every instance, not only the first (what /ready asks for), so sessions can spread.
  await waitFor(() => activeInstancesReady(started.gateway), { timeoutMs: 30_000, message: 'every instance ready' });
  if (opts.workers) await waitFor(() => started.gateway.proxyWorkers?.running === opts.workers, { message: 'every proxy thread running' });
  return started;
}

/** 20 clients, 50 acknowledged emits each, all at once; every client closed after the test. */
async function load(t: TestContext, port: number, transports: Transports): Promise<ChatClient[]> {
  const clients = Array.from({ length: CLIENTS }, () => new ChatClient(port, transports));
  t.after(() => clients.forEach((c) => c.close()));
  await Promise.all(clients.map((c) => c.connected()));
  await Promise.all(clients.map((c) => c.run(EMITS)));
  return clients;
}

/** The counts the acceptance is about, each checked, with what the access log and metrics say of them. */
function assertClean(clients: ChatClient[], sink: LogSink, transports: Transports): void {
  const acks = clients.reduce((n, c) => n + c.acks.length, 0);
  const failures = clients.reduce((n, c) => n + c.failures.length, 0);
  const disconnects = clients.reduce((n, c) => n + c.disconnects.length, 0);
  const connectErrors = clients.reduce((n, c) => n + c.connectErrors.length, 0);
  assert.deepEqual({ acks, failures, disconnects, connectErrors }, { acks: CLIENTS * EMITS, failures: 0, disconnects: 0, connectErrors: 0 });
  for (const c of clients) {
    // Every emit of a session answered by the instance that holds it.
    assert.equal(new Set(c.acks.map((a) => a.pid)).size, 1, 'one instance per session');
    assert.deepEqual(c.acks.map((a) => a.n), Array.from({ length: EMITS }, (_, i) => i));
    if (transports.includes('websocket')) assert.equal(c.acks.at(-1)!.transport, 'websocket', 'the upgrade reached the session\'s instance');
  }
  assert.ok(new Set(clients.map((c) => c.acks[0].pid)).size >= 2, 'sessions spread over the instances');
  const lines = sink.lines.filter((l) => l.msg === 'request' && typeof l.path === 'string' && l.path.startsWith('/socket.io'));
  assert.deepEqual(lines.filter((l) => l.status === 400 || l.status >= 500), [], 'no request failed');
  // One miss per session (its handshake), hits after: a request per emit on polling, the upgrade at least.
  assert.equal(lines.filter((l) => l.affinity === 'miss').length, CLIENTS);
  assert.equal(lines.filter((l) => l.affinity === 'repin').length, 0);
  assert.ok(lines.filter((l) => l.affinity === 'hit').length >= hitsAtLeast(transports));
}

function hitsAtLeast(transports: Transports): number {
  return transports.includes('websocket') ? CLIENTS : CLIENTS * EMITS;
}

for (const transports of [['polling'], ['polling', 'websocket']] as Transports[]) {
  test(`affinity: cookie, 3 instances: ${CLIENTS} clients x ${EMITS} acknowledged emits over ${transports.join(' then ')}, 0 failures`, async (t) => {
    const { gateway, port, sink } = await chatGateway(t, { affinity: 'cookie' });
    const clients = await load(t, port, transports);
    // Lines are written as each request ends: the last polls close with the clients.
    clients.forEach((c) => c.close());
    await new Promise((r) => setTimeout(r, 300));
    assertClean(clients, sink, transports);
    const samples = parseMetrics(await gateway.metrics.text()).filter((s) => s.name === 'berth_affinity_requests_total' && s.labels.app === 'chat');
    const count = (outcome: string) => samples.find((s) => s.labels.outcome === outcome)?.value ?? 0;
    assert.equal(count('miss'), CLIENTS);
    assert.ok(count('hit') >= hitsAtLeast(transports));
    assert.equal(count('repin'), 0);
  });
}

test('affinity: cookie, on two proxy threads: a cookie one thread set is honoured by the other', async (t) => {
  const { gateway, port, sink } = await chatGateway(t, { affinity: 'cookie', workers: 2 });
  const clients = await load(t, port, ['polling', 'websocket']);
  clients.forEach((c) => c.close());
  await waitFor(() => sink.lines.filter((l) => l.msg === 'request' && l.affinity === 'miss').length >= CLIENTS, { message: 'every thread\'s lines' });
  await new Promise((r) => setTimeout(r, 300));
  assertClean(clients, sink, ['polling', 'websocket']);
  const threads = new Set(sink.lines.filter((l) => l.msg === 'request' && l.affinity === 'hit').map((l) => (l.thread as number | undefined) ?? 0));
  assert.equal(threads.size, 2, 'both threads served hits');
  // The worker thread's outcomes reach the main thread's metrics (every 250 ms).
  const misses = async () =>
    parseMetrics(await gateway.metrics.text()).find((s) => s.name === 'berth_affinity_requests_total' && s.labels.app === 'chat' && s.labels.outcome === 'miss')?.value ?? 0;
  await waitFor(async () => (await misses()) === CLIENTS, { message: 'a miss per session, counted across threads' });
});

test('without affinity, the same server fails as the issue says: a session\'s next poll reaches another instance', async (t) => {
  const { port, sink } = await chatGateway(t, { affinity: null });
  const clients = Array.from({ length: 3 }, () => new ChatClient(port, ['polling'], { reconnection: false }));
  t.after(() => clients.forEach((c) => c.close()));
  // Each either never connects, or loses its session within a few emits.
  await Promise.all(
    clients.map(async (c) => {
      try {
        await c.connected(3_000);
        for (let n = 0; n < 5 && c.socket.connected; n++) await c.emit(n, 1_000);
      } catch {
        // not connected: counted below
      }
    }),
  );
  clients.forEach((c) => c.close());
  const broken = clients.filter((c) => c.connectErrors.length + c.disconnects.length + c.failures.length > 0 || c.acks.length < 5);
  assert.ok(broken.length >= 1, 'the test would catch it');
  await waitFor(() => sink.lines.some((l) => l.msg === 'request' && l.status === 400), { message: 'a 400 (Session ID unknown)' });
});
