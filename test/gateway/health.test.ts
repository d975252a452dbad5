/**
 * Health acceptance, end to end: a real gateway process and real app processes. A SIGSTOPped instance
 * is alive to the kernel (its port still accepts) but answers nothing: only the probes can find it.
 * That a busy instance is never marked unhealthy is the other half, measured under saturation by
 * bench/health-under-saturation.ts (test/bench/health-under-saturation.test.ts runs it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT, http, spawnGateway, tempDir, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';

const APP_COMMAND = `"${process.execPath}" server.mjs`;

/** The value of one sample of GET /metrics on the control socket (labels given must match); 0 when absent. */
async function metric(gw: ChildGateway, name: string, labels: Record<string, string>): Promise<number> {
  const res = await http({ socketPath: gw.socket }, { path: '/metrics' });
  assert.equal(res.status, 200);
  for (const line of res.body.split('\n')) {
    const m = /^([\w:]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[l[1]] = l[2];
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return 0;
}

test('a SIGSTOPped instance is marked unhealthy in time and replaced; after the mark no GET fails', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await copyFile(join(ROOT, 'bench/blocking-app.mjs'), join(src, 'server.mjs'));
  const health = { intervalMs: 200, timeoutMs: 100, unhealthyAfter: 3, busyGraceMs: 400 };
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      shop: {
        source: src,
        processes: { web: { command: APP_COMMAND, instances: 2, concurrency: 4 } },
        health: {
          path: '/up',
          interval: `${health.intervalMs}ms`,
          timeout: `${health.timeoutMs}ms`,
          unhealthy_after: health.unhealthyAfter,
          busy_grace: `${health.busyGraceMs}ms`,
        },
        timeouts: { drain: '500ms', stop: '500ms' },
      },
    },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { message: 'ready' });
  const before = (await gw.api('/v1/apps/shop')).generations[0].instances;
  assert.equal(before.length, 2);
  const victim = before[0];

  let stop = false;
  const results: { at: number; outcome: string }[] = [];
  const worker = async () => {
    while (!stop) {
      const at = Date.now();
      try {
        const res = await http({ port: gw.port }, { path: '/sleep?ms=5' });
        results.push({ at, outcome: res.status === 200 ? 'ok' : `status ${res.status}: ${res.body}` });
      } catch (err) {
        results.push({ at, outcome: String(err) });
      }
    }
  };
  const ok = () => results.filter((r) => r.outcome === 'ok').length;
  const workers = Array.from({ length: 8 }, worker);
  t.after(async () => {
    stop = true;
    await Promise.all(workers);
  });
  await waitFor(() => ok() >= 50, { message: 'load running' });

  // Registered before the stop, so a failing test never leaves a stopped process behind.
  t.after(() => {
    try {
      process.kill(victim.pid, 'SIGCONT');
    } catch {
      // Already gone: replaced and killed.
    }
  });
  const stoppedAt = Date.now();
  process.kill(victim.pid, 'SIGSTOP');

  // Log lines are buffered until the gateway exits; the metric shows the mark as it happens.
  await waitFor(async () => (await metric(gw, 'berth_instance_unhealthy_total', { app: 'shop', process: 'web' })) === 1, {
    timeoutMs: 10_000,
    intervalMs: 20,
    message: 'the instance marked unhealthy',
  });
  const seenAt = Date.now();

  const replacement = await waitFor(
    async () => {
      const inst = (await gw.api('/v1/apps/shop')).generations[0].instances.find((i: any) => i.index === victim.index);
      return inst.pid !== victim.pid && inst.state === 'ready' ? inst : null;
    },
    { timeoutMs: 10_000, message: 'a ready replacement' },
  );
  assert.equal(replacement.restarts, 0, 'a replacement is a new instance, not a restart');
  const okAtReplace = ok();
  await waitFor(() => ok() >= okAtReplace + 100, { message: 'load after the replacement' });
  stop = true;
  await Promise.all(workers);

  // The old process is gone (SIGKILL reaches a stopped process), and the metrics tell the story.
  await waitFor(
    () => {
      try {
        process.kill(victim.pid, 0);
        return false;
      } catch {
        return true;
      }
    },
    { timeoutMs: 5_000, message: 'the stopped instance killed' },
  );
  assert.equal(await metric(gw, 'berth_instance_unhealthy_total', { app: 'shop', process: 'web' }), 1);
  assert.ok((await metric(gw, 'berth_health_probes_total', { app: 'shop', process: 'web', result: 'failed' })) >= health.unhealthyAfter);
  assert.ok((await metric(gw, 'berth_health_probes_total', { app: 'shop', process: 'web', result: 'ok' })) > 0);
  assert.equal(await metric(gw, 'berth_instance_restarts_total', { app: 'shop', process: 'web' }), 0);
  assert.equal(await metric(gw, 'berth_instances', { app: 'shop', process: 'web', state: 'ready' }), 2);
  assert.equal(await metric(gw, 'berth_instances', { app: 'shop', process: 'web', state: 'unhealthy' }), 0);

  // The exact time of the mark, from its log line, once the gateway has exited and flushed its logs.
  gw.proc.kill('SIGTERM');
  assert.equal((await gw.exited).code, 0);
  const mark = gw.logs.find((l) => l.msg === 'instance unhealthy' && l.instance === `web.${victim.index}`);
  assert.ok(mark, 'the mark is logged');
  const markedAt = Date.parse(mark.time);
  assert.ok(markedAt <= seenAt);
  const tookMs = markedAt - stoppedAt;
  const boundMs = health.busyGraceMs + health.unhealthyAfter * health.intervalMs + health.timeoutMs;
  t.diagnostic(`marked unhealthy ${tookMs}ms after SIGSTOP (bound ${boundMs}ms)`);
  // A little over the bound for timers on a loaded 2-core machine.
  assert.ok(tookMs <= boundMs + 300, `marked after ${tookMs}ms, bound ${boundMs}ms`);
  const failedAfterMark = results.filter((r) => r.at >= markedAt && r.outcome !== 'ok');
  assert.deepEqual(failedAfterMark, []);
  const failedBefore = results.filter((r) => r.at < markedAt && r.outcome !== 'ok');
  t.diagnostic(`${results.length} requests, ${failedBefore.length} failed before the mark`);
});
