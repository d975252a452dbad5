/**
 * Issue #6 acceptance for one-off and scheduled tasks, end to end: `berth start` as a child process,
 * `berth run`, `berth tasks`, `berth logs --task` and `berth history` as real CLI processes.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, realpath, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, MAIN, fixtureApp, http, runCli, spawnGateway, tempDir, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';

const NODE = `"${process.execPath}"`;

async function demoGateway(t: TestContext, extra: Record<string, unknown> = {}): Promise<{ gw: ChildGateway; dir: string }> {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    scheduler_delay: '100ms',
    apps: {
      demo: {
        source: src,
        env: { GREETING: 'hello' },
        processes: {
          web: { command: FIXTURE_WEB_COMMAND },
          // instances: 0 is allowed: a type that only ever runs as `berth run demo hello`.
          hello: { command: 'echo "$GREETING from $BERTH_TASK"', instances: 0 },
        },
        ...extra,
      },
    },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  return { gw, dir };
}

/** `berth run` as a child process whose output the test reads while it runs. */
function startRun(gw: ChildGateway, args: string[]) {
  const proc = spawn(process.execPath, [MAIN, 'run', ...args.slice(0, 1), '--socket', gw.socket, ...args.slice(1)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (c: Buffer) => (stdout += c));
  proc.stderr.on('data', (c: Buffer) => (stderr += c));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return { proc, exited, stdout: () => stdout, stderr: () => stderr };
}

async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat[stat.lastIndexOf(')') + 2];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

test('berth run: the exit code is the CLI\'s, output streams before the command ends, it runs in the release real path with the app env', async (t) => {
  const { gw, dir } = await demoGateway(t);
  const seven = await runCli(['run', 'demo', '--socket', gw.socket, '--', process.execPath, '-e', 'console.log("out"); console.error("err"); process.exit(7)']);
  assert.equal(seven.code, 7, seven.stderr);
  assert.equal(seven.stdout, 'out\n');
  assert.match(seven.stderr, /^err\n/);

  // The command prints, then waits for a file only the test creates once it has seen the line.
  const go = join(dir, 'go');
  const script = `console.log("first"); const fs = require("fs"); const t = setInterval(() => { if (fs.existsSync(${JSON.stringify(go)})) { clearInterval(t); console.log("second"); } }, 20);`;
  const run = startRun(gw, ['demo', '--', process.execPath, '-e', script]);
  t.after(() => run.proc.kill('SIGKILL'));
  await waitFor(() => run.stdout().includes('first\n'), { message: 'the first line before the command ends' });
  assert.equal(run.stdout(), 'first\n');
  await writeFile(go, '');
  assert.deepEqual(await run.exited, { code: 0, signal: null });
  assert.equal(run.stdout(), 'first\nsecond\n');

  const where = await runCli(['run', 'demo', '--socket', gw.socket, '--', 'sh', '-c', 'pwd -P; pwd; echo "$BERTH_APP $BERTH_TASK $GREETING $BERTH_RELEASE"']);
  assert.equal(where.code, 0, where.stderr);
  const status = await gw.api('/v1/apps/demo');
  const release = status.activeRelease;
  const real = await realpath(join(dir, 'state/apps/demo/releases', release));
  assert.equal(where.stdout, `${real}\n${real}\ndemo run hello ${release}\n`, 'the real path, never the current symlink');

  const proc = await runCli(['run', 'demo', 'hello', '--socket', gw.socket]);
  assert.equal(proc.code, 0, proc.stderr);
  assert.equal(proc.stdout, 'hello from hello\n');

  // Recorded: as task runs (trigger manual) and in history (action run) with the outcome.
  const { runs } = await gw.api('/v1/apps/demo/task-runs');
  const sevenRun = runs.find((r: any) => r.exitCode === 7);
  assert.equal(sevenRun.trigger, 'manual');
  assert.equal(sevenRun.state, 'failed');
  assert.equal(sevenRun.output, 'out\nerr\n');
  assert.ok(runs.some((r: any) => r.task === 'hello' && r.state === 'succeeded'));
  const history = await runCli(['history', 'demo', '--json', '--socket', gw.socket]);
  const rows = JSON.parse(history.stdout).history.filter((h: any) => h.action === 'run');
  assert.equal(rows.length, 4);
  const failed = rows.find((h: any) => h.outcome === 'failed');
  assert.equal(failed.user, process.env.BERTH_USER ?? (await import('node:os')).userInfo().username);
  assert.match(failed.target, /"command":\[.*process\.exit\(7\)/, 'the request is the target');
  assert.match(failed.detail, new RegExp(`^${sevenRun.id}: failed in \\d+ms: exited with code 7$`));
  const output = await runCli(['logs', 'demo', '--task', sevenRun.id, '--socket', gw.socket]);
  assert.equal(output.code, 0, output.stderr);
  assert.equal(output.stdout, 'out\nerr\n');
});

test('killing berth run (SIGTERM, or SIGKILL: the connection closes) kills the task\'s process tree', async (t) => {
  const { gw } = await demoGateway(t);
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    const run = startRun(gw, ['demo', '--', 'sh', '-c', 'sleep 60 & echo "$$ $!"; wait']);
    t.after(() => run.proc.kill('SIGKILL'));
    const line = await waitFor(() => /^\d+ \d+\n/.exec(run.stdout())?.[0], { message: 'the task pids' });
    const pids = line.trim().split(' ').map(Number);
    for (const pid of pids) assert.equal(await alive(pid), true);
    run.proc.kill(signal);
    const exit = await run.exited;
    if (signal === 'SIGTERM') assert.equal(exit.code, 143);
    await waitFor(async () => !(await alive(pids[0])) && !(await alive(pids[1])), { timeoutMs: 10_000, message: `the task tree gone after ${signal} of the CLI` });
  }
  const { runs } = await waitFor(async () => {
    const body = await gw.api('/v1/apps/demo/task-runs');
    return body.runs.length === 2 && body.runs.every((r: any) => r.state !== 'running') ? body : null;
  }, { message: 'both runs recorded' });
  for (const r of runs) {
    assert.equal(r.state, 'failed');
    assert.equal(r.error, 'cancelled: the client went away');
  }
});

test('berth run refuses bad requests: usage errors exit 2, API errors name the problem', async (t) => {
  const { gw } = await demoGateway(t);
  for (const args of [['demo'], ['demo', '--'], ['--', 'true'], ['demo', 'web', 'extra']]) {
    const res = await runCli(['run', '--socket', gw.socket, ...args]);
    assert.equal(res.code, 2, `${args.join(' ')}: ${res.stderr}`);
    assert.match(res.stderr, /usage: berth run/);
  }
  const unknown = await runCli(['run', 'nope', '--socket', gw.socket, '--', 'true']);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /no app named "nope" \[BERTH_E_NOT_FOUND\]/);
  const proc = await runCli(['run', 'demo', 'worker', '--socket', gw.socket]);
  assert.equal(proc.code, 1);
  assert.match(proc.stderr, /no process type "worker" \(it has: web, hello\)/);
  const post = (body: unknown) =>
    http({ socketPath: gw.socket }, { path: '/v1/apps/demo/run', method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  for (const body of [{}, { command: [] }, { command: [''] }, { command: '  ' }, { command: [1] }, { command: 'true', process: 'web' }, { process: '../web' }, { cmd: 'true' }, ['true']]) {
    const res = await post(body);
    assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.body}`);
    assert.equal(res.json().error.code, 'BERTH_E_BAD_REQUEST');
  }
  for (const [query, status] of [
    ['tasks', 200],
    ['task-runs?limit=0', 400],
    ['task-runs?trigger=cron', 400],
    ['task-runs?state=done', 400],
    ['task-runs/t20200101000000-abcdef', 404],
  ] as const) {
    const res = await http({ socketPath: gw.socket }, { path: `/v1/apps/demo/${query}` });
    assert.equal(res.status, status, `${query}: ${res.body}`);
  }
  for (const query of ['tasks', 'task-runs', 'task-runs/t1']) assert.equal((await http({ socketPath: gw.socket }, { path: `/v1/apps/nope/${query}` })).status, 404, query);
  const history = await gw.api('/v1/history?app=demo');
  assert.ok(history.history.some((h: any) => h.action === 'run' && h.outcome === 'refused' && /exactly one of/.test(h.detail)), 'refused runs are audited too');
});

test('a scheduled task runs after scheduler_delay; berth tasks shows its next and last run, berth history its runs', async (t) => {
  const { gw } = await demoGateway(t, { schedule: { tick: { cron: '* * * * * *', command: 'echo "tick from $BERTH_TASK"' }, nightly: { cron: '0 3 * * *', command: 'true', timezone: 'UTC' } } });
  const tick = await waitFor(async () => {
    const body = await gw.api('/v1/apps/demo/tasks');
    return body.tasks.find((e: any) => e.name === 'tick' && e.lastRun?.state === 'succeeded');
  }, { message: 'a tick run' });
  assert.equal(tick.cron, '* * * * * *');
  assert.ok(tick.nextRun);
  const tasks = await runCli(['tasks', 'demo', '--socket', gw.socket]);
  assert.equal(tasks.code, 0, tasks.stderr);
  const lines = tasks.stdout.trim().split('\n');
  assert.match(lines[0], /^TASK +CRON +NEXT RUN +LAST RUN +STATUS +DURATION +COMMAND$/);
  assert.match(tasks.stdout, /\ntick +\* \* \* \* \* \* +\S+Z +\S+Z +succeeded +\d+ms +echo "tick from \$BERTH_TASK"/);
  assert.match(tasks.stdout, /\nnightly +0 3 \* \* \* \(UTC\) +\S+T03:00:00\.000Z +- +- +- +true/);
  const runs = await runCli(['tasks', 'demo', '--runs', '--socket', gw.socket, '--json']);
  const run = JSON.parse(runs.stdout).runs.find((r: any) => r.task === 'tick' && r.state === 'succeeded');
  assert.equal(run.output, 'tick from tick\n');
  assert.equal(run.trigger, 'schedule');
  const history = await runCli(['history', 'demo', '--socket', gw.socket]);
  assert.match(history.stdout, /demo +task +scheduler +internal +ok +t\S+: succeeded/);
  const bad = await runCli(['tasks', 'nope', '--socket', gw.socket]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /no app named "nope"/);
  assert.equal((await runCli(['tasks', '--socket', gw.socket])).code, 2);
});
