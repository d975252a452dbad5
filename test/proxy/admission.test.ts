import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Admission, type AdmissionRejection, type Waiter } from '../../src/proxy/admission.ts';
import type { PoolView, Upstream } from '../../src/supervisor/types.ts';
import { RoutingTable } from '../../src/proxy/router.ts';
import {
  appConfig,
  backend,
  entry,
  fetchRaw,
  openRequest,
  processConfig,
  startProxy,
  TestGeneration,
  waitFor,
  type Backend,
} from './fixtures.ts';

// ---- unit: the queue itself, over a real Pool of test upstreams --------------------------------

class TestWaiter implements Waiter {
  prev: Waiter | null = null;
  next: Waiter | null = null;
  deadline = 0;
  queued = false;
  readonly pool: PoolView;
  readonly name: string;
  readonly log: string[];
  upstream: Upstream | null = null;
  ticket = 0;
  rejected: AdmissionRejection | null = null;
  readonly affine: Upstream | null = null;

  constructor(name: string, pool: PoolView, log: string[]) {
    this.name = name;
    this.pool = pool;
    this.log = log;
  }

  acquire(): Upstream | null {
    return this.pool.acquire();
  }

  admit(upstream: Upstream): void {
    this.upstream = upstream;
    this.ticket = upstream.begin(true);
    this.log.push(`admit ${this.name}`);
  }

  reject(reason: AdmissionRejection): void {
    this.rejected = reason;
    this.log.push(`${reason} ${this.name}`);
  }

  finish(adm: Admission): void {
    this.upstream!.end(this.ticket);
    adm.leave();
  }
}

function onePool(instances: number, concurrency: number): { gen: TestGeneration; pool: PoolView } {
  const gen = new TestGeneration({ id: 'a#1', app: 'a', releaseId: 'r1' });
  gen.addPool('web', concurrency, Array.from({ length: instances }, (_, i) => ({ kind: 'tcp' as const, host: '127.0.0.1', port: 1000 + i })));
  return { gen, pool: gen.pools.get('web')! };
}

test('admits up to the limit, then queues FIFO, then rejects queue-full', () => {
  const { pool } = onePool(2, 1);
  const adm = new Admission('a', 'web', { limit: 2, queueMax: 2, queueTimeoutMs: 1000 });
  const log: string[] = [];
  const w = ['a', 'b', 'c', 'd', 'e'].map((n) => new TestWaiter(n, pool, log));
  for (const x of w) adm.enter(x, 0);
  assert.deepEqual(log, ['admit a', 'admit b', 'queue-full e']);
  assert.equal(adm.active, 2);
  assert.equal(adm.depth, 2);
  w[1].finish(adm);
  assert.deepEqual(log.slice(3), ['admit c']);
  w[0].finish(adm);
  assert.deepEqual(log.slice(4), ['admit d']);
  assert.equal(adm.depth, 0);
});

test('a newcomer never overtakes waiters', () => {
  const { pool } = onePool(1, 1);
  const adm = new Admission('a', 'web', { limit: 1, queueMax: 10, queueTimeoutMs: 1000 });
  const log: string[] = [];
  const a = new TestWaiter('a', pool, log);
  const b = new TestWaiter('b', pool, log);
  adm.enter(a, 0);
  adm.enter(b, 0);
  // Free the instance without telling admission (as if the pool grew): a new waiter must still queue.
  a.upstream!.end(a.ticket);
  const c = new TestWaiter('c', pool, log);
  adm.enter(c, 0);
  assert.deepEqual(log, ['admit a']);
  adm.leave();
  assert.deepEqual(log, ['admit a', 'admit b']);
});

test('each instance is held to its concurrency even when the budget has room', () => {
  const { gen, pool } = onePool(2, 1);
  const adm = new Admission('a', 'web', { limit: 10, queueMax: 10, queueTimeoutMs: 1000 });
  const log: string[] = [];
  for (const n of ['a', 'b', 'c']) adm.enter(new TestWaiter(n, pool, log), 0);
  assert.deepEqual(log, ['admit a', 'admit b']);
  assert.equal(adm.depth, 1);
  for (const i of gen.instances()) assert.ok(i.inFlight <= 1);
});

test('the limit holds across generations', () => {
  const old = onePool(2, 2);
  const next = onePool(2, 2);
  const adm = new Admission('a', 'web', { limit: 4, queueMax: 10, queueTimeoutMs: 1000 });
  const log: string[] = [];
  const olds = [1, 2, 3, 4].map((i) => new TestWaiter(`old${i}`, old.pool, log));
  for (const w of olds) adm.enter(w, 0);
  const news = [1, 2].map((i) => new TestWaiter(`new${i}`, next.pool, log));
  for (const w of news) adm.enter(w, 0);
  assert.equal(adm.active, 4);
  assert.equal(adm.depth, 2, 'the new generation has free instances, but the budget is spent');
  olds[0].finish(adm);
  assert.deepEqual(log.slice(-1), ['admit new1']);
});

test('a waiter whose pool cannot serve does not block one whose pool can', () => {
  const stuck = onePool(1, 1);
  stuck.gen.instances()[0].state = 'starting';
  const ok = onePool(1, 1);
  const adm = new Admission('a', 'web', { limit: 5, queueMax: 10, queueTimeoutMs: 1000 });
  const log: string[] = [];
  adm.enter(new TestWaiter('s1', stuck.pool, log), 0);
  adm.enter(new TestWaiter('s2', stuck.pool, log), 0);
  adm.enter(new TestWaiter('o1', ok.pool, log), 0);
  assert.deepEqual(log, []);
  adm.pump();
  assert.deepEqual(log, ['admit o1']);
  stuck.gen.instances()[0].state = 'ready';
  adm.sweep(0);
  assert.deepEqual(log, ['admit o1', 'admit s1']);
});

test('cancel leaves the queue at once, from any position', () => {
  const { pool } = onePool(1, 1);
  const adm = new Admission('a', 'web', { limit: 1, queueMax: 10, queueTimeoutMs: 1000 });
  const log: string[] = [];
  const w = ['a', 'b', 'c', 'd'].map((n) => new TestWaiter(n, pool, log));
  for (const x of w) adm.enter(x, 0);
  adm.cancel(w[2]);
  assert.equal(adm.depth, 2);
  adm.cancel(w[2]);
  assert.equal(adm.depth, 2, 'cancelling twice is harmless');
  adm.cancel(w[3]);
  adm.cancel(w[1]);
  assert.equal(adm.depth, 0);
  adm.enter(new TestWaiter('e', pool, log), 0);
  w[0].finish(adm);
  assert.deepEqual(log, ['admit a', 'admit e']);
});

test('sweep expires waiters past their deadline with queue-timeout', () => {
  const { pool } = onePool(1, 1);
  const adm = new Admission('a', 'web', { limit: 1, queueMax: 10, queueTimeoutMs: 100 });
  const log: string[] = [];
  adm.enter(new TestWaiter('a', pool, log), 0);
  adm.enter(new TestWaiter('b', pool, log), 0);
  adm.enter(new TestWaiter('c', pool, log), 50);
  adm.sweep(99);
  assert.deepEqual(log, ['admit a']);
  adm.sweep(100);
  assert.deepEqual(log, ['admit a', 'queue-timeout b']);
  adm.sweep(150);
  assert.deepEqual(log, ['admit a', 'queue-timeout b', 'queue-timeout c']);
  assert.equal(adm.depth, 0);
});

test('queue max 0 means no queue; raising the limit admits waiters', () => {
  const { pool } = onePool(3, 1);
  const log: string[] = [];
  const none = new Admission('a', 'web', { limit: 1, queueMax: 0, queueTimeoutMs: 100 });
  none.enter(new TestWaiter('a', pool, log), 0);
  none.enter(new TestWaiter('b', pool, log), 0);
  assert.deepEqual(log, ['admit a', 'queue-full b']);

  const log2: string[] = [];
  const adm = new Admission('a', 'web', { limit: 1, queueMax: 10, queueTimeoutMs: 100 });
  for (const n of ['x', 'y', 'z']) adm.enter(new TestWaiter(n, onePool(3, 1).pool, log2), 0);
  adm.configure({ limit: 3, queueMax: 10, queueTimeoutMs: 100 });
  assert.deepEqual(log2, ['admit x', 'admit y', 'admit z']);
});

test('a waiter that finishes inside admit (synchronous failure) does not corrupt the queue', () => {
  const { pool } = onePool(1, 1);
  const adm = new Admission('a', 'web', { limit: 1, queueMax: 10, queueTimeoutMs: 1000 });
  const log: string[] = [];
  class FailFast extends TestWaiter {
    override admit(upstream: Upstream): void {
      super.admit(upstream);
      this.finish(adm);
    }
  }
  const holder = new TestWaiter('h', pool, log);
  adm.enter(holder, 0);
  const ws = ['a', 'b', 'c'].map((n) => new FailFast(n, pool, log));
  for (const w of ws) adm.enter(w, 0);
  holder.finish(adm);
  assert.deepEqual(log, ['admit h', 'admit a', 'admit b', 'admit c']);
  assert.equal(adm.active, 0);
  assert.equal(adm.depth, 0);
});

// ---- end to end: through a real proxy to real backends --------------------------------------------

/** A backend that holds every request until `release()`, counting how many it holds at once. */
async function holdingBackend(t: Parameters<typeof backend>[0]) {
  const held: { req: IncomingMessage; res: ServerResponse }[] = [];
  let current = 0;
  let peak = 0;
  const order: string[] = [];
  const be: Backend = await backend(t, (req, res) => {
    current++;
    peak = Math.max(peak, current);
    order.push(req.url ?? '');
    res.on('close', () => current--);
    held.push({ req, res });
  });
  return {
    be,
    held,
    order,
    get peak() {
      return peak;
    },
    release(): void {
      for (const h of held.splice(0)) h.res.end(h.req.url);
    },
  };
}

function app(instances: number, concurrency: number, queue = { max: 100, timeoutMs: 10_000 }) {
  return appConfig('shop', { processes: { web: processConfig('web', instances, concurrency) }, queue });
}

test('in-flight at the backends never exceeds instances x concurrency', async (t) => {
  const h = await holdingBackend(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const insts = gen.addPool('web', 2, [h.be.address, h.be.address]);
  const { url, proxy } = await startProxy(t, [entry(app(2, 2), gen)]);
  const replies = Array.from({ length: 12 }, (_, i) => fetchRaw(`${url}/${i}`));
  await waitFor(() => h.held.length === 4 && proxy.queueDepth('shop') === 8, '4 held and 8 queued');
  assert.equal(proxy.inFlight, 12);
  // Release in waves: each wave admits the next ones, never more than the limit.
  while ((await Promise.race([Promise.all(replies).then(() => true), new Promise((r) => setTimeout(r, 20, false))])) === false) {
    h.release();
  }
  for (const r of await Promise.all(replies)) assert.equal(r.status, 200);
  assert.equal(h.peak, 4);
  for (const i of insts) assert.ok(i.peak <= 2, `instance peak ${i.peak}`);
  await waitFor(() => proxy.inFlight === 0, 'in-flight to drain');
});

test('the limit holds across a switch: the new generation waits for the old one\'s slots', async (t) => {
  const oldB = await holdingBackend(t);
  const newB = await holdingBackend(t);
  const old = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  old.addPool('web', 2, [oldB.be.address]);
  const next = new TestGeneration({ id: 'shop#2', app: 'shop', releaseId: 'r2' });
  next.addPool('web', 2, [newB.be.address]);
  const config = app(1, 2);
  const { url, proxy } = await startProxy(t, [entry(config, old)]);
  const first = [fetchRaw(`${url}/o1`), fetchRaw(`${url}/o2`)];
  await waitFor(() => oldB.held.length === 2, 'old generation busy');
  proxy.setTable(new RoutingTable([entry(config, next)]));
  const later = [fetchRaw(`${url}/n1`), fetchRaw(`${url}/n2`)];
  await waitFor(() => proxy.queueDepth('shop') === 2, 'new requests queued');
  assert.equal(newB.held.length, 0, 'the new generation is idle but the app budget is spent');
  oldB.release();
  await waitFor(() => newB.held.length === 2, 'new generation admitted');
  newB.release();
  assert.deepEqual((await Promise.all(first)).map((r) => r.text), ['/o1', '/o2']);
  assert.deepEqual((await Promise.all(later)).map((r) => r.text), ['/n1', '/n2']);
});

test('queued requests are served in FIFO order', async (t) => {
  const h = await holdingBackend(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [h.be.address]);
  const { url, proxy } = await startProxy(t, [entry(app(1, 1), gen)]);
  const replies = [fetchRaw(`${url}/0`)];
  await waitFor(() => h.held.length === 1, 'first held');
  for (let i = 1; i <= 5; i++) {
    replies.push(fetchRaw(`${url}/${i}`));
    await waitFor(() => proxy.queueDepth('shop') === i, `request ${i} queued`);
  }
  while (h.order.length < 6) {
    h.release();
    await new Promise((r) => setTimeout(r, 5));
  }
  h.release();
  await Promise.all(replies);
  assert.deepEqual(h.order, ['/0', '/1', '/2', '/3', '/4', '/5']);
});

test('a full queue answers 503 queue-full with Retry-After', async (t) => {
  const h = await holdingBackend(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [h.be.address]);
  const { url, proxy } = await startProxy(t, [entry(app(1, 1, { max: 2, timeoutMs: 10_000 }), gen)]);
  const held = [fetchRaw(url), fetchRaw(url)];
  await waitFor(() => h.held.length === 1, 'first held');
  held.push(fetchRaw(url));
  await waitFor(() => proxy.queueDepth('shop') === 2, 'queue full');
  const r = await fetchRaw(url, { headers: { accept: 'application/json' } });
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-reason'], 'queue-full');
  assert.equal(r.headers['retry-after'], '1');
  assert.deepEqual(JSON.parse(r.text), { error: { status: 503, reason: 'queue-full' } });
  while (h.order.length < 3) {
    h.release();
    await new Promise((r) => setTimeout(r, 5));
  }
  h.release();
  for (const x of await Promise.all(held)) assert.equal(x.status, 200);
});

test('a request queued too long answers 503 queue-timeout with Retry-After', async (t) => {
  const h = await holdingBackend(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [h.be.address]);
  const { url, proxy } = await startProxy(t, [entry(app(1, 1, { max: 5, timeoutMs: 150 }), gen)]);
  const first = fetchRaw(url);
  await waitFor(() => h.held.length === 1, 'first held');
  const r = await fetchRaw(url);
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-reason'], 'queue-timeout');
  assert.equal(r.headers['retry-after'], '1');
  assert.match(String(r.headers['content-type']), /text\/html/);
  assert.equal(proxy.queueDepth('shop'), 0);
  assert.equal(h.be.requests.length, 1, 'the timed-out request never reached the backend');
  h.release();
  assert.equal((await first).status, 200);
});

test('a client that disconnects while queued frees its place at once', async (t) => {
  const h = await holdingBackend(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  gen.addPool('web', 1, [h.be.address]);
  const { url, proxy } = await startProxy(t, [entry(app(1, 1, { max: 1, timeoutMs: 10_000 }), gen)]);
  const first = fetchRaw(`${url}/first`);
  await waitFor(() => h.held.length === 1, 'first held');
  const gone = openRequest(`${url}/gone`);
  gone.done.catch(() => {});
  await waitFor(() => proxy.queueDepth('shop') === 1, 'queued');
  gone.abort();
  await waitFor(() => proxy.queueDepth('shop') === 0, 'left the queue');
  // The single queue place is free again.
  const next = fetchRaw(`${url}/next`);
  await waitFor(() => proxy.queueDepth('shop') === 1, 'next queued');
  h.release();
  await waitFor(() => h.held.length === 1, 'next admitted');
  h.release();
  assert.equal((await first).text, '/first');
  assert.equal((await next).text, '/next');
  assert.deepEqual(h.order, ['/first', '/next']);
  await waitFor(() => proxy.inFlight === 0, 'drained');
});

test('requests wait in the queue for an instance that is still starting', async (t) => {
  const be = await backend(t, (req, res) => res.end('up'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 4, [be.address]);
  inst.state = 'starting';
  const { url, proxy } = await startProxy(t, [entry(app(1, 4), gen)]);
  const pending = fetchRaw(url);
  await waitFor(() => proxy.queueDepth('shop') === 1, 'queued while starting');
  inst.state = 'ready';
  const r = await pending;
  assert.equal(r.text, 'up');
});

test('with every instance in backoff or crashed, a request gets 503 no-healthy-instance at once, not after the queue timeout', async (t) => {
  const be = await backend(t, (req, res) => res.end('up'));
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [a, b] = gen.addPool('web', 4, [be.address, be.address]);
  a.state = 'backoff';
  b.state = 'crashed';
  const { url, proxy } = await startProxy(t, [entry(app(2, 4, { max: 10, timeoutMs: 10_000 }), gen)]);
  const started = performance.now();
  const r = await fetchRaw(url, { headers: { accept: 'application/json' } });
  assert.ok(performance.now() - started < 2_000, 'answered long before the 10s queue timeout');
  assert.equal(r.status, 503);
  assert.equal(r.headers['x-berth-reason'], 'no-healthy-instance');
  assert.equal(r.headers['retry-after'], '5');
  assert.equal(proxy.queueDepth('shop'), 0);
  assert.equal(be.requests.length, 0);
  // A restart under way (starting) is worth waiting for: the request queues, then is served.
  a.state = 'starting';
  const pending = fetchRaw(url);
  await waitFor(() => proxy.queueDepth('shop') === 1, 'queued while an instance starts');
  a.state = 'ready';
  assert.equal((await pending).text, 'up');
});

test('waiters already queued get 503 no-healthy-instance when the last instance leaves service', async (t) => {
  const h = await holdingBackend(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', 1, [h.be.address]);
  const { url, proxy } = await startProxy(t, [entry(app(1, 1, { max: 5, timeoutMs: 10_000 }), gen)]);
  const first = fetchRaw(url);
  await waitFor(() => h.held.length === 1, 'first held');
  const queued = [fetchRaw(url), fetchRaw(url)];
  await waitFor(() => proxy.queueDepth('shop') === 2, 'two queued');
  const started = performance.now();
  // The instance dies (its held request will fail) and goes into backoff.
  inst.state = 'backoff';
  for (const r of await Promise.all(queued)) {
    assert.equal(r.status, 503);
    assert.equal(r.headers['x-berth-reason'], 'no-healthy-instance');
  }
  assert.ok(performance.now() - started < 2_000, 'turned away at the next tick, not after the queue timeout');
  assert.equal(proxy.queueDepth('shop'), 0);
  h.release();
  await first;
});
