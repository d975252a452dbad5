/**
 * Generation#whenIdle: a drain awaits the end of the last request or WebSocket instead of polling the
 * in-flight count. The proxy's side of the contract (begin/end, beginTunnel/endTunnel) drives it here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { APP_COMMAND, appConfig, proc, supervisor, tempDir } from './helpers.ts';

/** Whether `p` has settled after the pending callbacks ran. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
}

test('whenIdle resolves at once when nothing is in flight, else when the last request or WebSocket ends', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const gen = sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, { web: proc('web', APP_COMMAND, { instances: 2 }) });
  await gen.waitReady();
  assert.equal(await settled(gen.whenIdle()), true, 'idle now');

  const [a, b] = gen.instances;
  const first = a.begin();
  const second = b.begin();
  b.beginTunnel();
  const idle = gen.whenIdle();
  a.end(first);
  assert.equal(await settled(idle), false, 'a request and a WebSocket are still open');
  b.end(second);
  assert.equal(await settled(idle), false, 'the WebSocket is still open');
  b.endTunnel();
  assert.equal(await settled(idle), true, 'the last one ended');
  assert.equal(gen.inFlight, 0);
});

test('idleWithin gives up at its deadline and says what is still in flight', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const gen = sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, { web: proc('web', APP_COMMAND) });
  await gen.waitReady();
  const [inst] = gen.instances;
  assert.equal(await gen.idleWithin(1_000), 0);
  const ticket = inst.begin();
  const started = Date.now();
  assert.equal(await gen.idleWithin(150), 1);
  assert.ok(Date.now() - started >= 140);
  setTimeout(() => inst.end(ticket), 50);
  assert.equal(await gen.idleWithin(10_000), 0);
  assert.ok(Date.now() - started < 5_000, 'woken by the end, not the deadline');
});
