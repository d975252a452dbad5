/**
 * Issue #6 acceptance for logs, end to end: `berth start` as a child process, `berth logs` as another,
 * the demo worker writing real log lines through the supervisor.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFile, cp, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, MAIN, ROOT, fixtureApp, http, runCli, spawnGateway, tempDir, waitFor, writeConfig, type ChildGateway } from '../helpers/gateway.ts';

const NODE = `"${process.execPath}"`;
const LINE_RE = /^(\S+) (\S+) (\S+) (out|err|berth) (.*)$/;

async function logGateway(t: TestContext, app: Record<string, unknown> = {}): Promise<{ gw: ChildGateway; dir: string; src: string }> {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  await cp(join(ROOT, 'examples/node-app/worker.mjs'), join(src, 'worker.mjs'));
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      demo: {
        source: src,
        // A line every 10 jobs: with 20ms jobs, a few lines a second from each worker.
        env: { WORKER_TICK_MS: '20' },
        processes: { web: { command: FIXTURE_WEB_COMMAND }, worker: { command: `${NODE} worker.mjs` }, other: { command: `${NODE} worker.mjs` } },
        timeouts: { drain: '1s' },
        ...app,
      },
    },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  return { gw, dir, src };
}

/** `berth logs` as a child process whose output the test reads while it runs. */
function startLogs(t: TestContext, gw: ChildGateway, args: string[]) {
  const proc = spawn(process.execPath, [MAIN, 'logs', '--socket', gw.socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => proc.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (c: Buffer) => (stdout += c));
  proc.stderr.on('data', (c: Buffer) => (stderr += c));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return { proc, exited, stdout: () => stdout, stderr: () => stderr };
}

function assertTimeOrder(lines: string[]): void {
  for (let i = 1; i < lines.length; i++) assert.ok(lines[i].split(' ')[0] >= lines[i - 1].split(' ')[0], `in time order:\n${lines[i - 1]}\n${lines[i]}`);
}

test('berth logs -f shows lines from both generations across a deploy, in time order', async (t) => {
  const { gw } = await logGateway(t);
  const oldRelease = (await gw.api('/v1/apps/demo')).activeRelease;
  const logs = startLogs(t, gw, ['demo', '-f', '-n', '5']);
  await waitFor(() => logs.stdout().includes(`${oldRelease} out worker`), { message: 'old worker lines' });
  const deployed = await runCli(['deploy', 'demo', '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  const newRelease = (await gw.api('/v1/apps/demo')).activeRelease;
  assert.notEqual(newRelease, oldRelease);
  await waitFor(() => logs.stdout().includes(`worker.0 stopping`) && logs.stdout().includes(`worker worker.0 processed 11 job(s) on release ${newRelease}`), {
    message: 'the old worker stopping and the new one working',
  });
  logs.proc.kill('SIGINT');
  assert.equal(await logs.exited, 0);
  const lines = logs.stdout().trim().split('\n');
  for (const line of lines) assert.match(line, LINE_RE);
  assertTimeOrder(lines);
  const text = logs.stdout();
  assert.match(text, new RegExp(` worker\\.0 ${oldRelease} out worker worker\\.0 stopping`));
  assert.match(text, new RegExp(` worker\\.0 ${newRelease} out worker worker\\.0 started: release ${newRelease}`));
  assert.match(text, new RegExp(` other\\.0 ${newRelease} out `), 'every process type is followed');
});

test('berth logs merges process logs by time, with -n and --process; rotated files are read and followed', async (t) => {
  const { gw, dir } = await logGateway(t);
  await waitFor(async () => {
    const res = await http({ socketPath: gw.socket }, { path: '/v1/apps/demo/logs?lines=40' });
    return res.body.includes(' worker.0 ') && res.body.includes(' other.0 ') && res.body.trim().split('\n').length === 40;
  }, { message: '40 lines, of both workers' });
  const merged = await runCli(['logs', 'demo', '-n', '40', '--socket', gw.socket]);
  assert.equal(merged.code, 0, merged.stderr);
  const lines = merged.stdout.trim().split('\n');
  assert.equal(lines.length, 40);
  assertTimeOrder(lines);
  const three = await runCli(['logs', 'demo', '-n', '3', '--process', 'other', '--socket', gw.socket]);
  assert.equal(three.stdout.trim().split('\n').length, 3);
  for (const line of three.stdout.trim().split('\n')) assert.match(line, / other\.0 /);
  const json = await runCli(['logs', 'demo', '-n', '1', '--process', 'worker', '--json', '--socket', gw.socket]);
  const parsed = JSON.parse(json.stdout);
  assert.equal(parsed.instance, 'worker.0');
  assert.equal(parsed.stream, 'out');
  assert.match(parsed.text, /^worker worker\.0 /);

  // A log written by hand, rotated the way the supervisor rotates: `.1` is older than the live file.
  const logsDir = join(dir, 'state/apps/demo/logs');
  const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
  await writeFile(join(logsDir, 'extra.log.1'), `${at(1)} extra.0 r1 out one\n${at(2)} extra.0 r1 out two\n`);
  await writeFile(join(logsDir, 'extra.log'), `${at(3)} extra.0 r1 out three\n`);
  const tail = await runCli(['logs', 'demo', '--process', 'extra', '-n', '2', '--socket', gw.socket]);
  assert.equal(tail.stdout, `${at(2)} extra.0 r1 out two\n${at(3)} extra.0 r1 out three\n`);
  const follow = startLogs(t, gw, ['demo', '--process', 'extra', '-n', '1', '-f']);
  // The last line comes first: from then on the follow has its starting point.
  await waitFor(() => follow.stdout().includes('three'), { message: 'the follow to start' });
  await appendFile(join(logsDir, 'extra.log'), `${at(4)} extra.0 r1 out four\n`);
  await waitFor(() => follow.stdout().includes('four'), { message: 'an appended line' });
  await appendFile(join(logsDir, 'extra.log'), `${at(5)} extra.0 r1 out five\n`);
  await rename(join(logsDir, 'extra.log.1'), join(logsDir, 'extra.log.2'));
  await rename(join(logsDir, 'extra.log'), join(logsDir, 'extra.log.1'));
  await writeFile(join(logsDir, 'extra.log'), `${at(6)} extra.0 r2 out six\n`);
  await waitFor(() => follow.stdout().includes('six'), { message: 'the line after the rotation' });
  assert.equal(follow.stdout(), [3, 4, 5, 6].map((s) => `${at(s)} extra.0 ${s === 6 ? 'r2' : 'r1'} out ${['three', 'four', 'five', 'six'][s - 3]}\n`).join(''));
});

test('berth logs --deploy shows a deploy\'s command output; bad requests are refused', async (t) => {
  const { gw } = await logGateway(t, { build: 'echo "building $BERTH_RELEASE"' });
  const deployed = await runCli(['deploy', 'demo', '--socket', gw.socket]);
  assert.equal(deployed.code, 0, deployed.stderr);
  const id = /\((d\d{14}-[0-9a-f]{6})\)/.exec(deployed.stdout)![1];
  const release = (await gw.api('/v1/apps/demo')).activeRelease;
  const out = await runCli(['logs', 'demo', '--deploy', id, '--socket', gw.socket]);
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stdout, new RegExp(`^\\S+Z out building ${release}\\n$`));

  const api = (query: string) => http({ socketPath: gw.socket }, { path: `/v1/apps/demo/logs?${query}` });
  for (const [query, status] of [
    ['lines=-1', 400],
    ['lines=abc', 400],
    ['process=..%2Fweb', 400],
    ['process=nope', 404],
    ['deploy=x', 400],
    ['deploy=d20200101000000-abcdef', 404],
    ['task=t20200101000000-abcdef', 404],
    ['task=t1&follow=1', 400],
    ['process=web&deploy=' + id, 400],
  ] as const) {
    const res = await api(query);
    assert.equal(res.status, status, `${query}: ${res.body}`);
    assert.match(res.json().error.code, /^BERTH_E_/);
  }
  assert.equal((await http({ socketPath: gw.socket }, { path: '/v1/apps/nope/logs' })).status, 404);
  for (const args of [['demo', '-n', 'x'], ['demo', '--task', 't1', '-f'], ['demo', '--process', 'web', '--deploy', id], ['demo', 'more']]) {
    const res = await runCli(['logs', '--socket', gw.socket, ...args]);
    assert.equal(res.code, 2, `${args.join(' ')}: ${res.stderr}`);
  }
});
