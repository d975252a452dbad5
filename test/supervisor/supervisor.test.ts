import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, realpath, stat, symlink, writeFile, access } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import {
  APP_COMMAND,
  WORKER_COMMAND,
  appConfig,
  get,
  groupExists,
  pidExists,
  proc,
  supervisor,
  tempDir,
  waitFor,
  waitGroupGone,
} from './helpers.ts';

test('instances get the environment of SPEC, run in the release real path, and are ready on TCP connect', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const real = join(dir, 'releases', '20260101000000-abcdef');
  await mkdir(real, { recursive: true });
  const link = join(dir, 'current');
  await symlink(real, link);
  const out = join(dir, 'out');
  await mkdir(out);
  const sup = supervisor(t, stateDir, {
    baseEnv: { PATH: process.env.PATH, INHERITED: 'yes', OVERRIDE: 'base', PORT: '1', BERTH_SOCKET: '/nope', BERTH_HEARTBEAT_FILE: '/nope', UNSET: undefined },
  });
  const app = appConfig('shop', { env: { OVERRIDE: 'app', OUT_DIR: out } });
  const gen = sup.startGeneration(app, { id: '20260101000000-abcdef', dir: link }, {
    web: proc('web', APP_COMMAND, { instances: 2, concurrency: 3 }),
    worker: proc('worker', WORKER_COMMAND),
    idle: proc('idle', APP_COMMAND, { instances: 0, http: true }),
  });
  assert.equal(gen.id, 'shop#1');
  assert.equal(gen.releaseDir, await realpath(real));
  assert.equal(gen.state, 'starting');
  assert.deepEqual(sup.generations(), [gen]);
  assert.deepEqual(sup.generations('other'), []);
  await gen.waitReady();
  assert.equal(gen.state, 'ready');

  assert.deepEqual(gen.instances.map((i) => i.label), ['web.0', 'web.1', 'worker.0']);
  assert.deepEqual([...gen.pools.keys()], ['web', 'idle']);
  assert.deepEqual(gen.pools.get('web')!.instances, gen.instances.slice(0, 2));
  assert.deepEqual(gen.pools.get('idle')!.instances, [], 'instances: 0 starts nothing');
  assert.equal(gen.pools.get('web')!.concurrency, 3);

  const ports = new Set<number>();
  for (const inst of gen.instances.slice(0, 2)) {
    assert.equal(inst.state, 'ready');
    const a = inst.address!;
    assert.equal(a.kind, 'tcp');
    if (a.kind !== 'tcp') continue;
    ports.add(a.port);
    const { body } = await get(inst, '/env');
    assert.equal(body.cwd, await realpath(real), 'cwd is the real path, not the symlink');
    assert.equal(body.pid, inst.pid);
    assert.equal(body.env.PORT, String(a.port));
    assert.equal(body.env.BERTH_APP, 'shop');
    assert.equal(body.env.BERTH_RELEASE, '20260101000000-abcdef');
    assert.equal(body.env.BERTH_PROCESS, 'web');
    assert.equal(body.env.BERTH_INSTANCE, String(inst.index));
    assert.equal(body.env.BERTH_DB_POOL_SIZE, '3');
    assert.equal(body.env.INHERITED, undefined, 'only the pass-through list comes from the gateway environment (app-env.ts)');
    assert.equal(body.env.PATH, process.env.PATH);
    assert.equal(body.env.OVERRIDE, 'app', 'app env comes last');
    assert.equal(body.env.BERTH_SOCKET, undefined);
    assert.equal(body.env.BERTH_HEARTBEAT_FILE, undefined);
    assert.equal('UNSET' in body.env, false);
    const snap = inst.snapshot();
    assert.equal(snap.address, `127.0.0.1:${a.port}`);
    assert.equal(snap.pid, inst.pid);
    assert.equal(snap.state, 'ready');
    assert.equal(snap.http, true);
    assert.ok(snap.rssBytes !== null && snap.rssBytes > 1_000_000, `rss ${snap.rssBytes}`);
    assert.ok(snap.uptimeMs !== null && snap.uptimeMs >= 0);
    assert.equal(snap.restarts, 0);
    assert.equal(snap.lastExit, null);
  }
  assert.equal(ports.size, 2, 'each instance has its own port');

  const worker = gen.instances[2];
  assert.equal(worker.state, 'ready');
  assert.equal(worker.address, null, 'a background worker has no address');
  const seen = await waitFor(async () => JSON.parse(await readFile(join(out, 'worker.0.json'), 'utf8')), 'worker env file');
  assert.equal(seen.cwd, await realpath(real));
  assert.equal(seen.env.PORT, undefined, 'non-http types get no PORT');
  assert.equal(seen.env.BERTH_SOCKET, undefined);
  assert.equal(seen.env.BERTH_PROCESS, 'worker');
  assert.equal(seen.env.BERTH_INSTANCE, '0');
  assert.equal(seen.env.BERTH_DB_POOL_SIZE, '1');
  assert.ok(seen.env.BERTH_HEARTBEAT_FILE.startsWith(join(stateDir, 'apps', 'shop', 'run') + '/'), seen.env.BERTH_HEARTBEAT_FILE);
  await access(seen.env.BERTH_HEARTBEAT_FILE);

  const snap = gen.snapshot();
  assert.equal(snap.id, 'shop#1');
  assert.equal(snap.releaseId, '20260101000000-abcdef');
  assert.equal(snap.state, 'ready');
  assert.equal(snap.inFlight, 0);
  assert.equal(snap.instances.length, 3);

  // In-flight accounting, as the proxy drives it.
  const web0 = gen.instances[0];
  const a = web0.begin();
  const b = web0.begin();
  assert.equal(web0.inFlight, 2);
  assert.equal(gen.inFlight, 2);
  assert.equal(web0.busy, true);
  web0.end(a);
  web0.end(a); // a second end of the same ticket changes nothing
  web0.end(b);
  assert.equal(web0.inFlight, 0);
  assert.equal(web0.served, 2);
  assert.equal(web0.busy, false);

  const pids = gen.instances.map((i) => i.pid!);
  await sup.stopGeneration(gen);
  assert.equal(gen.state, 'stopped');
  assert.deepEqual(sup.generations(), []);
  for (const inst of gen.instances) {
    assert.equal(inst.state, 'stopped');
    assert.equal(inst.address, null);
    assert.equal(inst.pid, null);
  }
  for (const pid of pids) await waitGroupGone(pid);
  await assert.rejects(access(seen.env.BERTH_HEARTBEAT_FILE), { code: 'ENOENT' }, 'heartbeat file removed');
});

test('socket mode: BERTH_SOCKET under <stateDir>/sockets, removed when the instance stops', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const sup = supervisor(t, stateDir);
  const gen = sup.startGeneration(appConfig('shop', { listen: 'socket', health: { path: '/up' } }), { id: 'r1', dir }, { web: proc('web', APP_COMMAND) });
  await gen.waitReady();
  const inst = gen.instances[0];
  const a = inst.address!;
  assert.equal(a.kind, 'unix');
  if (a.kind !== 'unix') return;
  assert.ok(a.path.startsWith(join(stateDir, 'sockets') + '/'), a.path);
  assert.equal(inst.snapshot().address, `unix:${a.path}`);
  const { body } = await get(inst, '/env');
  assert.equal(body.env.BERTH_SOCKET, a.path);
  assert.equal(body.env.PORT, undefined);
  assert.ok((await stat(a.path)).isSocket());
  await sup.stopGeneration(gen);
  await waitFor(async () => {
    try {
      await stat(a.path);
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOENT';
    }
  }, 'socket file removed');
});

test('with a health path, an instance is ready only once the path answers 2xx', async (t) => {
  const dir = await tempDir(t);
  const flag = join(dir, 'ready-flag');
  const sup = supervisor(t, join(dir, 'state'));
  const gen = sup.startGeneration(appConfig('shop', { env: { READY_FILE: flag }, health: { path: '/up' } }), { id: 'r1', dir }, { web: proc('web', APP_COMMAND) });
  let readyAt = 0;
  void gen.waitReady().then(() => (readyAt = Date.now()));
  const inst = gen.instances[0];
  // The app listens (so a TCP connect would pass) and has answered several probes with 503.
  const stats = await waitFor(async () => {
    const { body } = await get(inst, '/stats');
    return body.upFailures >= 3 ? body : null;
  }, 'three failed readiness probes');
  assert.ok(stats.upHits >= 3);
  assert.equal(inst.state, 'starting');
  assert.equal(gen.state, 'starting');
  assert.equal(readyAt, 0);
  await writeFile(flag, '');
  await gen.waitReady();
  assert.equal(inst.state, 'ready');
  assert.equal(gen.state, 'ready');
});

test('kill -9 of an instance: backoff, then the same slot is ready again with a new pid and port', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'), { timing: { backoffInitialMs: 50 } });
  const gen = sup.startGeneration(appConfig('shop', { health: { path: '/up' } }), { id: 'r1', dir }, { web: proc('web', APP_COMMAND, { instances: 2 }) });
  await gen.waitReady();
  const [victim, other] = gen.instances;
  const pid = victim.pid!;
  const address = victim.address;
  const states: string[] = [];
  const origChanged = gen.instanceChanged.bind(gen);
  gen.instanceChanged = (inst) => {
    if (inst === victim) states.push(inst.state);
    origChanged(inst);
  };
  process.kill(pid, 'SIGKILL');
  await waitFor(() => victim.state === 'ready' && victim.pid !== null && victim.pid !== pid, 'victim back');
  assert.deepEqual(states, ['backoff', 'starting', 'ready']);
  assert.equal(gen.instances[0], victim, 'the same Instance object keeps the slot');
  assert.equal(gen.pools.get('web')!.instances[0], victim);
  assert.equal(victim.restarts, 1);
  assert.equal(victim.lastExit?.signal, 'SIGKILL');
  assert.equal(victim.lastExit?.code, null);
  assert.notDeepEqual(victim.address, address, 'a fresh port');
  const { body } = await get(victim, '/env');
  assert.equal(body.pid, victim.pid);
  assert.equal(other.restarts, 0);
  assert.equal(other.state, 'ready');
  await waitGroupGone(pid);
});

test('a command that exits at once is crashed after its failure budget; another app keeps running', async (t) => {
  const dir = await tempDir(t);
  const timing = { backoffInitialMs: 10, backoffMaxMs: 40, failureLimit: 4 };
  const sup = supervisor(t, join(dir, 'state'), { timing });
  const good = sup.startGeneration(appConfig('good'), { id: 'r1', dir }, { web: proc('web', APP_COMMAND) });
  await good.waitReady();
  const goodPid = good.instances[0].pid;
  const started = Date.now();
  const bad = sup.startGeneration(appConfig('bad'), { id: 'r2', dir }, { web: proc('web', 'echo "boom $BERTH_INSTANCE" >&2; exit 3') });
  const err = await bad.waitReady().then(
    () => assert.fail('a crash-looping generation must not be ready'),
    (e: unknown) => e as BerthError,
  );
  assert.ok(err instanceof BerthError);
  assert.equal(err.code, 'BERTH_E_SPAWN');
  assert.match(err.message, /bad#1/);
  assert.match(err.message, /web\.0/);
  assert.match(err.message, /boom 0/);
  const tail = err.details!.logTail as string[];
  assert.equal(tail.length, 4, 'one line per attempt');
  for (const line of tail) assert.match(line, /^\S+Z web\.0 r2 err boom 0$/);
  const inst = bad.instances[0];
  assert.equal(inst.state, 'crashed');
  assert.equal(inst.restarts, 3);
  assert.deepEqual({ code: inst.lastExit?.code, signal: inst.lastExit?.signal }, { code: 3, signal: null });
  assert.equal(bad.state, 'failed');
  assert.equal(inst.snapshot().state, 'crashed');
  // It waited between attempts (10 + 20 + 40ms) instead of respawning in a tight loop.
  assert.ok(Date.now() - started >= 65, `crashed after ${Date.now() - started}ms`);

  assert.equal(good.instances[0].state, 'ready');
  assert.equal(good.instances[0].pid, goodPid);
  assert.equal((await get(good.instances[0], '/')).status, 200);
  // A crashed generation can still be stopped (nothing left to kill).
  await sup.stopGeneration(bad);
  assert.equal(inst.state, 'stopped');
});

test('stop: SIGTERM first; an app that ignores it is SIGKILLed after stopMs with its whole group', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const polite = sup.startGeneration(appConfig('polite'), { id: 'r1', dir }, { web: proc('web', APP_COMMAND) });
  const stubborn = sup.startGeneration(
    appConfig('stubborn', { env: { IGNORE_TERM: '1', SPAWN_CHILD: '1' }, timeouts: { stopMs: 300 } }),
    { id: 'r2', dir },
    { web: proc('web', APP_COMMAND) },
  );
  await Promise.all([polite.waitReady(), stubborn.waitReady()]);
  const politePid = polite.instances[0].pid!;
  const pgid = stubborn.instances[0].pid!;
  const { body } = await get(stubborn.instances[0], '/env');
  const childPid: number = body.childPid;
  assert.ok(childPid > 0 && pidExists(childPid));

  const stopping = sup.stopGeneration(stubborn);
  assert.equal(stubborn.state, 'stopping');
  assert.equal(stubborn.instances[0].state, 'stopping');
  await stopping;
  const inst = stubborn.instances[0];
  assert.equal(inst.state, 'stopped');
  assert.equal(inst.lastExit?.signal, 'SIGKILL', 'SIGTERM was ignored, so SIGKILL ended it');
  await waitGroupGone(pgid);
  await waitFor(() => !pidExists(childPid), 'the child in the same group to be gone');

  await sup.stopGeneration(polite);
  assert.deepEqual(
    { code: polite.instances[0].lastExit?.code, signal: polite.instances[0].lastExit?.signal },
    { code: 0, signal: null },
    'the polite app got SIGTERM and exited by itself',
  );
  await waitGroupGone(politePid);
  assert.deepEqual(sup.generations(), []);
});

test('stop() resolves while an instance waits in backoff, and it never restarts; then nothing starts', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'), { timing: { backoffInitialMs: 60_000 } });
  const gen = sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, { web: proc('web', 'exit 1') });
  const inst = gen.instances[0];
  await waitFor(() => inst.state === 'backoff', 'backoff');
  const waiting = gen.waitReady().catch((e: unknown) => e);
  await sup.stop();
  assert.equal(inst.state, 'stopped');
  assert.equal(inst.restarts, 0);
  assert.equal(gen.state, 'stopped');
  const err = await waiting;
  assert.ok(err instanceof BerthError);
  assert.equal(err.code, 'BERTH_E_UNAVAILABLE');
  assert.throws(() => sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, { web: proc('web', APP_COMMAND) }), { code: 'BERTH_E_UNAVAILABLE' });
});

test('waitReady rejects after startup_timeout naming the instance, with its last 20 log lines', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  // Prints 25 lines and then never listens.
  const command = `"${process.execPath}" -e "for (let i = 1; i <= 25; i++) console.log('line ' + i); setInterval(() => {}, 1000)"`;
  const gen = sup.startGeneration(appConfig('shop', { health: { startupTimeoutMs: 1_500 } }), { id: 'r1', dir }, { web: proc('web', command) });
  const inst = gen.instances[0];
  await waitFor(() => inst.logTail().some((l) => l.endsWith(' line 25')), 'output');
  const err = await gen.waitReady().then(
    () => assert.fail('must not be ready'),
    (e: unknown) => e as BerthError,
  );
  assert.ok(err instanceof BerthError);
  assert.equal(err.code, 'BERTH_E_STARTUP_TIMEOUT');
  assert.match(err.message, /shop#1 not ready after 1500ms: web\.0 \(starting\)/);
  const tail = err.details!.logTail as string[];
  assert.equal(tail.length, 20);
  assert.match(tail[0], / web\.0 r1 out line 6$/);
  assert.match(tail[19], / web\.0 r1 out line 25$/);
  assert.ok(err.message.includes(tail[19]), 'the message carries the lines too');
  assert.deepEqual(err.details!.instances, ['web.0']);
  assert.equal(gen.state, 'failed');
  const pid = inst.pid!;
  await sup.stopGeneration(gen);
  await waitGroupGone(pid);
});

test('an http instance that never answers is killed at startup_timeout and restarted', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'), { timing: { backoffInitialMs: 20 } });
  const command = `"${process.execPath}" -e "setInterval(() => {}, 1000)"`;
  const gen = sup.startGeneration(appConfig('shop', { health: { startupTimeoutMs: 300 } }), { id: 'r1', dir }, { web: proc('web', command) });
  await assert.rejects(gen.waitReady(), { code: 'BERTH_E_STARTUP_TIMEOUT' });
  const inst = gen.instances[0];
  await waitFor(() => inst.restarts >= 1 && inst.state === 'starting', 'restarted');
  assert.equal(inst.lastExit?.signal, 'SIGKILL');
});

test('a release directory that does not exist is BERTH_E_SPAWN at once', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  assert.throws(() => sup.startGeneration(appConfig('shop'), { id: 'r1', dir: join(dir, 'missing') }, { web: proc('web', APP_COMMAND) }), (err: unknown) => {
    assert.ok(err instanceof BerthError);
    assert.equal(err.code, 'BERTH_E_SPAWN');
    assert.match(err.message, /missing/);
    return true;
  });
  assert.deepEqual(sup.generations(), []);
});

test('a release directory that vanishes before the spawn: spawn errors go through backoff to crashed', async (t) => {
  const dir = await tempDir(t);
  const release = join(dir, 'release');
  await mkdir(release);
  const sup = supervisor(t, join(dir, 'state'), { timing: { backoffInitialMs: 10, failureLimit: 2 } });
  const gen = sup.startGeneration(appConfig('shop'), { id: 'r1', dir: release }, { web: proc('web', APP_COMMAND) });
  rmSync(release, { recursive: true }); // before the spawn, which waits for a port first
  const err = await gen.waitReady().then(
    () => assert.fail('must not be ready'),
    (e: unknown) => e as BerthError,
  );
  assert.equal(err.code, 'BERTH_E_SPAWN');
  assert.match(err.message, /web\.0 crashed/);
  const tail = err.details!.logTail as string[];
  assert.equal(tail.length, 2, 'one line per attempt');
  assert.match(tail[0], / web\.0 r1 berth cannot start: spawn \/bin\/sh ENOENT \(cwd .*release\)$/);
  const inst = gen.instances[0];
  assert.equal(inst.state, 'crashed');
  assert.equal(inst.restarts, 1);
  assert.equal(inst.pid, null);
});

test('a generation with no instance to run is ready at once', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const gen = sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, { web: proc('web', APP_COMMAND, { instances: 0 }) });
  await gen.waitReady();
  assert.equal(gen.state, 'ready');
  assert.deepEqual(gen.instances, []);
});

test('output goes to <process>.log with its prefix; a last line without newline is kept', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const sup = supervisor(t, stateDir, { timing: { backoffInitialMs: 60_000 } });
  const command = `printf 'hello out\\n'; printf 'hello err\\n' >&2; printf 'no newline at the end'`;
  const gen = sup.startGeneration(appConfig('shop'), { id: 'r7', dir }, { worker: proc('worker', command, { instances: 2 }) });
  const file = join(stateDir, 'apps', 'shop', 'logs', 'worker.log');
  const text = await waitFor(async () => {
    const t = await readFile(file, 'utf8');
    return (t.match(/no newline at the end\n/g) ?? []).length === 2 ? t : null;
  }, 'both instances logged');
  const lines = text.trimEnd().split('\n');
  assert.equal(lines.length, 6, text);
  for (const index of [0, 1]) {
    const mine = lines.filter((l) => l.includes(` worker.${index} `));
    assert.equal(mine.length, 3);
    const iso = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z';
    assert.ok(mine.some((l) => new RegExp(`^${iso} worker\\.${index} r7 out hello out$`).test(l)), mine.join('\n'));
    assert.ok(mine.some((l) => new RegExp(`^${iso} worker\\.${index} r7 err hello err$`).test(l)), mine.join('\n'));
    assert.ok(mine.some((l) => new RegExp(`^${iso} worker\\.${index} r7 out no newline at the end$`).test(l)), mine.join('\n'));
  }
  const inst = gen.instances[1];
  await waitFor(() => inst.state === 'backoff', 'exit noticed');
  assert.equal(inst.logTail().length, 3);
  assert.deepEqual(inst.lastExit && { code: inst.lastExit.code, signal: inst.lastExit.signal }, { code: 0, signal: null });
});

test('the log file rotates past its max size, keeping the configured number of files', async (t) => {
  const dir = await tempDir(t);
  const stateDir = join(dir, 'state');
  const sup = supervisor(t, stateDir, { logs: { maxBytes: 4_096, keepFiles: 2 } });
  // 30 bursts of 10 lines of ~80 bytes, 5ms apart: about 24kB in all, many separate writes.
  const script = "let n = 0; const t = setInterval(() => { for (let i = 0; i < 10; i++) console.log('line ' + (n++) + ' ' + 'x'.repeat(40)); if (n >= 300) { clearInterval(t); console.log('done'); setInterval(() => {}, 1000); } }, 5)";
  sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, { web: proc('web', `"${process.execPath}" -e "${script}"`, { http: false }) });
  const logs = join(stateDir, 'apps', 'shop', 'logs');
  await waitFor(async () => (await readFile(join(logs, 'web.log'), 'utf8')).includes(' out done\n'), 'all output written');
  const sizes = await Promise.all(['web.log', 'web.log.1', 'web.log.2'].map(async (n) => (await stat(join(logs, n))).size));
  for (const size of sizes) assert.ok(size > 0 && size <= 4_096 * 2, `size ${size}`);
  await assert.rejects(stat(join(logs, 'web.log.3')), { code: 'ENOENT' });
  const oldest = await readFile(join(logs, 'web.log.2'), 'utf8');
  assert.doesNotMatch(oldest, / out line 0 /, 'the first lines were rotated out');
});

test('a background worker that stops touching its heartbeat file is restarted; a touching one is not', async (t) => {
  const dir = await tempDir(t);
  const out = join(dir, 'out');
  await mkdir(out);
  const sup = supervisor(t, join(dir, 'state'), { timing: { backoffInitialMs: 20 } });
  const gen = sup.startGeneration(appConfig('shop', { env: { OUT_DIR: out }, timeouts: { stopMs: 500 } }), { id: 'r1', dir }, {
    silent: proc('silent', WORKER_COMMAND, { heartbeatTimeoutMs: 300 }),
    beating: proc('beating', `HEARTBEAT_EVERY_MS=50 ${WORKER_COMMAND}`, { heartbeatTimeoutMs: 300 }),
  });
  await gen.waitReady();
  const [silent, beating] = gen.instances;
  const first = silent.pid;
  await waitFor(() => silent.restarts >= 2 && silent.state === 'ready', 'silent worker restarted twice', 20_000);
  assert.notEqual(silent.pid, first);
  assert.equal(silent.lastExit?.signal, 'SIGTERM', 'asked to stop first');
  assert.equal(beating.restarts, 0);
  assert.equal(beating.state, 'ready');
});

test('destroy() SIGKILLs every process group at once, even ones that ignore SIGTERM', async (t) => {
  const dir = await tempDir(t);
  const sup = supervisor(t, join(dir, 'state'));
  const gen = sup.startGeneration(appConfig('shop', { env: { IGNORE_TERM: '1', SPAWN_CHILD: '1' } }), { id: 'r1', dir }, {
    web: proc('web', APP_COMMAND, { instances: 2 }),
  });
  await gen.waitReady();
  const pids = gen.instances.map((i) => i.pid!);
  sup.destroy(new Error('gateway crashed'));
  assert.deepEqual(sup.generations(), []);
  assert.equal(gen.state, 'stopped');
  for (const inst of gen.instances) {
    assert.equal(inst.state, 'stopped');
    assert.equal(inst.address, null);
  }
  for (const pid of pids) await waitGroupGone(pid);
  assert.throws(() => sup.startGeneration(appConfig('shop'), { id: 'r1', dir }, {}), { code: 'BERTH_E_UNAVAILABLE' });
  await sup.stop(); // still resolves after a destroy
});
