/**
 * `berth scale <app> <type>=N` end to end: `berth start` as a child process, the CLI as another, real
 * app processes and real sockets. Scaling up and down under load fails no request and restarts no
 * other instance (on two proxy threads); the count outlives a restart and a deploy until `=config`;
 * refusals name their cause and change nothing; history shows every change; in a fleet every node
 * applies it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, deployUntilWaitHealthy, fixtureApp, http, processGroupAlive, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';
import { LoadRunner } from '../deploy/load-runner.ts';
import { gatedBoot } from '../deploy/gated-boot.ts';
import { freshDatabase, POSTGRES_SKIP } from '../helpers/postgres.ts';
import { servedRelease, shopApp, startNode, untilAllServe } from '../fleet/fleet-nodes.ts';

/** A background process that runs until it is stopped. */
const WORKER_COMMAND = `"${process.execPath}" -e "setInterval(() => {}, 1000)"`;

/** The active generation's instances of `app`, by `<process>.<index>`: pid and state. */
async function instances(gw: ChildGateway, app = 'shop'): Promise<Map<string, { pid: number; state: string; served: number }>> {
  const status = await gw.api(`/v1/apps/${app}`);
  const gen = status.generations.find((g: any) => g.active);
  return new Map(gen.instances.map((i: any) => [`${i.process}.${i.index}`, { pid: i.pid, state: i.state, served: i.served }]));
}

/** `<process>.<index>` -> pid of the active generation's instances: what a change that restarts nothing keeps. */
async function pids(gw: ChildGateway): Promise<Record<string, number>> {
  return Object.fromEntries([...(await instances(gw))].map(([key, i]) => [key, i.pid]));
}

/** `POST /v1/apps/<app>/scale` on the control socket, as the CLI sends it. */
function scaleApi(gw: ChildGateway, app: string, body: unknown) {
  return http({ socketPath: gw.socket }, { method: 'POST', path: `/v1/apps/${app}/scale`, body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
}

test('scale 2 -> 4 -> 1 under load on two proxy threads: no request fails, the first instances keep their pids, history shows each change', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    proxy: { workers: 2 },
    apps: {
      shop: {
        source: src,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2, concurrency: 4 } },
        db_connections: 40,
        health: { path: '/up', interval: '250ms' },
        timeouts: { drain: '10s' },
      },
    },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const first = await instances(gw);
  assert.deepEqual([...first.keys()].sort(), ['web.0', 'web.1']);
  const load = LoadRunner.start({ port: gw.port });
  t.after(() => load.stop());
  await load.more(20);

  const up = await runCli(['scale', 'shop', 'web=4', '--socket', gw.socket]);
  assert.equal(up.code, 0, up.stderr);
  assert.match(up.stdout, /^shop web: 2 -> 4, kept over the config \(the config says 2\)$/m);
  assert.match(up.stdout, /^started web\.2, web\.3: ready$/m);
  const four = await instances(gw);
  assert.deepEqual([...four.keys()].sort(), ['web.0', 'web.1', 'web.2', 'web.3']);
  for (const [key, i] of four) assert.equal(i.state, 'ready', key);
  for (const key of ['web.0', 'web.1']) assert.equal(four.get(key)!.pid, first.get(key)!.pid, `${key} was not restarted`);
  // The new instances take their share of the traffic, and the admission limit grew with them.
  await waitFor(async () => {
    const now = await instances(gw);
    return now.get('web.2')!.served > 0 && now.get('web.3')!.served > 0;
  }, { message: 'the new instances serving' });
  const status = await gw.api('/v1/apps/shop');
  assert.equal(status.db.demand, 16, '4 x 4');
  const web = status.processes.find((p: any) => p.name === 'web');
  assert.equal(web.instances, 4);
  assert.equal(web.configured, 2);
  assert.equal(web.override.instances, 4);
  assert.ok(web.override.user, 'who set it');
  const shown = await runCli(['status', 'shop', '--socket', gw.socket]);
  assert.match(shown.stdout, /processes: web 4 \(berth scale by .+; the config says 2\)/);

  await load.more(40);
  const down = await runCli(['scale', 'shop', 'web=1', '--socket', gw.socket]);
  assert.equal(down.code, 0, down.stderr);
  assert.match(down.stdout, /^shop web: 4 -> 1, kept over the config \(the config says 2\)$/m);
  assert.match(down.stdout, /^stopping web\.1, web\.2, web\.3 once their requests end/m);
  const one = await instances(gw);
  assert.deepEqual([...one.keys()], ['web.0']);
  assert.equal(one.get('web.0')!.pid, first.get('web.0')!.pid, 'web.0 was not restarted');
  for (const key of ['web.1', 'web.2', 'web.3']) {
    const pid = four.get(key)!.pid;
    await waitFor(() => !processGroupAlive(pid), { message: `${key} stopped` });
  }
  await load.more(40);
  const stats = await load.stop();
  assert.deepEqual(stats.failures, []);
  assert.ok(stats.ok > 100, `${stats.ok} requests`);

  const history = (await gw.api('/v1/history?app=shop&action=scale')).history;
  assert.deepEqual(history.map((h: any) => [h.target, h.detail, h.outcome]), [['web', 'web 4 -> 1', 'ok'], ['web', 'web 2 -> 4', 'ok']]);
  const listed = await runCli(['history', 'shop', '--action', 'scale', '--socket', gw.socket]);
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, /scale .* ok +web 2 -> 4/);
});

test('an override outlives a restart and a deploy; <type>=config goes back to the config\'s count; refusals change nothing', async (t) => {
  const dir = await tempDir(t);
  const v1 = await fixtureApp(dir, 'v1');
  const slow = await fixtureApp(dir, 'slow');
  const gate = join(dir, 'gate');
  await gatedBoot(slow, gate);
  const shop = {
    source: v1,
    processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1, concurrency: 8 }, worker: { command: WORKER_COMMAND, instances: 1 } },
    db_connections: 24,
    health: { path: '/up', interval: '250ms' },
  };
  const config = { state_dir: 'state', listen: ['127.0.0.1:0'], log_levels: { root: 'warn' }, apps: { shop } };
  const file = await writeConfig(dir, config);
  let gw = await spawnGateway(t, file);
  await untilReady(gw);

  const scaled = await runCli(['scale', 'shop', 'web=3', 'worker=0', '--socket', gw.socket]);
  assert.equal(scaled.code, 0, scaled.stderr);
  assert.match(scaled.stdout, /^shop web: 1 -> 3, kept over the config \(the config says 1\)$/m);
  assert.match(scaled.stdout, /^shop worker: 1 -> 0, kept over the config \(the config says 1\)$/m);
  assert.deepEqual([...(await instances(gw)).keys()].sort(), ['web.0', 'web.1', 'web.2']);
  const row = (await gw.api('/v1/history?app=shop&action=scale')).history[0];
  assert.deepEqual([row.target, row.detail, row.outcome], ['web,worker', 'web 1 -> 3, worker 1 -> 0', 'ok']);

  // Refusals: each names its cause, is audited, and changes nothing.
  const before = await pids(gw);
  const refusals: [unknown, string, number, RegExp][] = [
    [{ processes: { web: 2 } }, 'nope', 404, /no app named "nope"/],
    [{ processes: { api: 2 } }, 'shop', 404, /no process type "api" \(it runs web, worker\)/],
    [{ processes: { web: 0 } }, 'shop', 422, /web of shop takes 1 to 100 instances \(a route sends traffic to it\), got 0/],
    [{ processes: { worker: 101 } }, 'shop', 422, /worker of shop takes 0 to 100 instances, got 101/],
    [{ processes: { web: -1 } }, 'shop', 422, /whole number from 0/],
    [{ processes: { web: 'two' } }, 'shop', 400, /must be a number or "config"/],
    [{ processes: {} }, 'shop', 400, /1 to 100 process types/],
    [{ processes: { web: 4 } }, 'shop', 422, /web=4: the http pools need 32 connections \(web 4x8\), more than the budget of 24 \(db_connections\)/],
  ];
  for (const [body, app, status, message] of refusals) {
    const res = await scaleApi(gw, app, body);
    assert.equal(res.status, status, `${JSON.stringify(body)}: ${res.body}`);
    assert.match(res.json().error.message, message);
  }
  const cli = await runCli(['scale', 'shop', 'web=4', '--socket', gw.socket]);
  assert.equal(cli.code, 1);
  assert.match(cli.stderr, /need 32 connections .* budget of 24/);
  assert.equal((await runCli(['scale', 'shop', 'web=two', '--socket', gw.socket])).code, 2, 'a bad pair is a usage error');
  assert.deepEqual(await pids(gw), before);
  const refused = (await gw.api('/v1/history?app=shop&action=scale')).history.filter((h: any) => h.outcome === 'refused');
  assert.ok(refused.some((h: any) => h.target === 'web' && /budget of 24/.test(h.detail)), JSON.stringify(refused));

  // A deploy running refuses a scale (409); the deploy's generation starts the override's counts.
  const id = await deployUntilWaitHealthy(gw, slow);
  const busy = await scaleApi(gw, 'shop', { processes: { web: 2 } });
  assert.equal(busy.status, 409, busy.body);
  assert.match(busy.json().error.message, new RegExp(`a deploy of shop is running: ${id}`));
  await writeFile(gate, '');
  await waitFor(async () => (await gw.api(`/v1/deploys/${id}`)).state === 'succeeded', { timeoutMs: 30_000, message: 'the deploy done' });
  const deployed = await instances(gw);
  assert.deepEqual([...deployed.keys()].sort(), ['web.0', 'web.1', 'web.2'], 'the new generation runs 3 web instances and no worker');
  assert.ok([...deployed.values()].every((i) => !Object.values(before).includes(i.pid)), 'they are the new release\'s');

  // A restart starts the override's counts too.
  gw.proc.kill('SIGTERM');
  assert.equal((await gw.exited).code, 0);
  gw = await spawnGateway(t, file);
  await untilReady(gw);
  assert.deepEqual([...(await instances(gw)).keys()].sort(), ['web.0', 'web.1', 'web.2']);
  const kept = (await gw.api('/v1/apps/shop')).processes;
  assert.deepEqual(kept.map((p: any) => [p.name, p.instances, p.configured, p.override?.instances]), [['web', 3, 1, 3], ['worker', 0, 1, 0]]);

  // A config reload whose budget the overrides would exceed is refused, naming them; nothing changes.
  const running = await pids(gw);
  await writeConfig(dir, { ...config, apps: { shop: { ...shop, db_connections: 16 } } });
  const reload = await runCli(['reload-config', '--socket', gw.socket]);
  assert.notEqual(reload.code, 0, reload.stdout);
  assert.match(reload.stderr, /apps\.shop\.db_connections: the http pools need 24 connections \(web 3x8\), more than the budget of 16, with the instance counts set with berth scale \(web=3 worker=0\)/);
  assert.deepEqual(await pids(gw), running);
  await writeConfig(dir, config);

  // `=config` drops the override: back to the config's count, and so after the next restart.
  const reset = await runCli(['scale', 'shop', 'web=config', 'worker=config', '--socket', gw.socket]);
  assert.equal(reset.code, 0, reset.stderr);
  assert.match(reset.stdout, /^shop web: 3 -> 1, the config's count \(override dropped\)$/m);
  assert.match(reset.stdout, /^started worker\.0: ready$/m);
  assert.deepEqual([...(await instances(gw)).keys()].sort(), ['web.0', 'worker.0']);
  assert.deepEqual((await gw.api('/v1/apps/shop')).processes.map((p: any) => p.override), [null, null]);
  const last = (await gw.api('/v1/history?app=shop&action=scale')).history[0];
  assert.equal(last.detail, 'web 3 -> 1 (config), worker 0 -> 1 (config)');
});

test('a scaled-up instance that cannot start makes berth scale exit 1 naming it; the count stays', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  // The fixture exits at once as instance 1: its first start got ready, its second cannot.
  await writeFile(join(src, 'boot.mjs'), `if (process.env.BERTH_INSTANCE !== '0') { console.error('instance ' + process.env.BERTH_INSTANCE + ' refuses to start'); process.exit(3); }\nawait import('./server.mjs');\n`);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, processes: { web: { command: `"${process.execPath}" boot.mjs`, instances: 1 } }, health: { path: '/up', interval: '250ms' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const res = await runCli(['scale', 'shop', 'web=2', '--socket', gw.socket]);
  assert.equal(res.code, 1, res.stdout);
  assert.match(res.stdout, /^started web\.1: NOT READY$/m);
  assert.match(res.stderr, /web\.1 exited with code 3 before it was ready/);
  assert.match(res.stderr, /instance 1 refuses to start/);
  assert.equal((await http({ port: gw.port }, { path: '/' })).status, 200, 'web.0 serves on');
  assert.equal((await gw.api('/v1/apps/shop')).processes[0].override.instances, 2, 'the count stays');
  const row = (await gw.api('/v1/history?app=shop&action=scale')).history[0];
  assert.equal(row.outcome, 'failed');
  assert.match(row.detail, /^web 1 -> 2: .*web\.1 exited with code 3/);
});

test('a background instance scaled away and back at once starts after the old one stopped: its heartbeat file stays its own', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  // Touches its heartbeat file every 100 ms (a missing file kills it), and takes 500 ms to stop.
  await writeFile(join(src, 'worker.mjs'), `import { utimesSync } from 'node:fs';
setInterval(() => { const now = new Date(); utimesSync(process.env.BERTH_HEARTBEAT_FILE, now, now); }, 100);
process.on('SIGTERM', () => setTimeout(() => process.exit(0), 500));
`);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND }, worker: { command: `"${process.execPath}" worker.mjs`, heartbeat_timeout: '5s' } }, health: { path: '/up', interval: '250ms' } } },
  });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const old = (await instances(gw)).get('worker.0')!.pid;
  const away = await scaleApi(gw, 'shop', { processes: { worker: 0 } });
  assert.equal(away.status, 200, away.body);
  const back = await scaleApi(gw, 'shop', { processes: { worker: 1 } });
  assert.equal(back.status, 200, back.body);
  assert.equal(back.json().ready, true, back.body);
  assert.equal(processGroupAlive(old), false, 'the old worker had stopped before the new one was ready');
  await new Promise((r) => setTimeout(r, 1_000));
  const status = await gw.api('/v1/apps/shop');
  const worker = status.generations.find((g: any) => g.active).instances.find((i: any) => i.process === 'worker');
  assert.deepEqual([worker.state, worker.restarts], ['ready', 0], JSON.stringify(worker));
});

test('in a fleet the override is the fleet\'s: a scale on one node is applied live by the other, and =config there reaches back', { skip: POSTGRES_SKIP }, async (t) => {
  const dir = await tempDir(t);
  const url = await freshDatabase(t);
  const src = await fixtureApp(dir, 'v1');
  const apps = shopApp(src);
  const a = await startNode(t, dir, url, 'node-a', apps);
  await untilReady(a);
  const b = await startNode(t, dir, url, 'node-b', apps);
  const release = await servedRelease(a);
  assert.ok(release);
  await untilAllServe([a, b], release, 30_000);
  const bFirst = (await instances(b)).get('web.0')!.pid;

  const scaled = await runCli(['scale', 'shop', 'web=3', '--socket', a.socket]);
  assert.equal(scaled.code, 0, scaled.stderr);
  await waitFor(async () => {
    const now = await instances(b);
    return now.size === 3 && [...now.values()].every((i) => i.state === 'ready');
  }, { timeoutMs: 15_000, message: 'node-b running 3 ready web instances' });
  assert.equal((await instances(b)).get('web.0')!.pid, bFirst, 'node-b restarted nothing');
  const seen = (await b.api('/v1/apps/shop')).processes[0];
  assert.equal(seen.override.instances, 3);
  assert.equal(seen.override.node, 'node-a');

  const reset = await runCli(['scale', 'shop', 'web=config', '--socket', b.socket]);
  assert.equal(reset.code, 0, reset.stderr);
  await waitFor(async () => (await instances(a)).size === 1, { timeoutMs: 15_000, message: 'node-a back to 1 instance' });
  assert.equal((await a.api('/v1/apps/shop')).processes[0].override, null);
});
