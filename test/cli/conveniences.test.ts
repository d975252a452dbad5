/**
 * The conveniences PM2 users reach for: `berth completion bash|zsh` (the bash script completes verbs,
 * each verb's flags, modes, and app names asked of a running gateway reached through a `berth` on PATH;
 * the zsh script parses), `berth ls` (`berth status`), `berth status --watch`, and `berth logs` of every app.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, MAIN, fixtureApp, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig } from '../helpers/gateway.ts';

/** What the bash script completes for the words typed (the last one is being completed). */
function complete(script: string, words: string[], env: NodeJS.ProcessEnv = process.env): string[] {
  const program = `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _berth; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const res = spawnSync('bash', ['-c', program], { encoding: 'utf8', env });
  assert.equal(res.status, 0, res.stderr);
  return res.stdout.split('\n').filter(Boolean).sort();
}

test('bash completion: verbs, flags, modes and the running gateway\'s apps', async (t) => {
  const out = await runCli(['completion', 'bash']);
  assert.equal(out.code, 0, out.stderr);
  const script = out.stdout;
  assert.deepEqual(complete(script, ['berth', 'de']), ['deploy']);
  assert.ok(complete(script, ['berth', '']).includes('completion'));
  assert.ok(complete(script, ['berth', '']).includes('ls'));
  assert.deepEqual(complete(script, ['berth', 'status', '--f']), ['--fleet']);
  assert.deepEqual(complete(script, ['berth', 'mode', 'shop', 'm']), ['maintenance']);
  assert.deepEqual(complete(script, ['berth', 'completion', '']), ['bash', 'zsh']);

  // App names come from the gateway that answers.
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], apps: { shop: { source: src, hosts: ['shop.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } }, blog: { source: src, hosts: ['blog.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } } } } });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const bin = join(dir, 'bin');
  await mkdir(bin);
  await writeFile(join(bin, 'berth'), `#!/bin/sh\nexec "${process.execPath}" "${MAIN}" "$@" --socket "${gw.socket}"\n`);
  await chmod(join(bin, 'berth'), 0o755);
  const env = { ...process.env, PATH: `${bin}:${process.env.PATH}` };
  assert.deepEqual(complete(script, ['berth', 'deploy', ''], env), ['blog', 'shop']);
  assert.deepEqual(complete(script, ['berth', 'logs', 'sh'], env), ['shop']);

  // `berth ls` is `berth status`.
  const ls = await runCli(['ls', '--socket', gw.socket]);
  assert.equal(ls.code, 0, ls.stderr);
  assert.match(ls.stdout, /^shop\s/m);
  assert.match(ls.stdout, /^blog\s/m);
});

test('zsh completion parses, and a shell other than bash or zsh is a usage error', async (t) => {
  const out = await runCli(['completion', 'zsh']);
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stdout, /^#compdef berth/);
  assert.match(out.stdout, /verbs=\(.*\bdeploy\b.*\)/);
  const zsh = spawnSync('zsh', ['--version']);
  if (zsh.error) t.diagnostic('zsh is not installed: its script is not parsed here');
  else {
    const dir = await tempDir(t);
    await writeFile(join(dir, '_berth'), out.stdout);
    const parsed = spawnSync('zsh', ['-n', join(dir, '_berth')], { encoding: 'utf8' });
    assert.equal(parsed.status, 0, parsed.stderr);
  }
  const bad = await runCli(['completion', 'fish']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /bash or zsh/);
});

test('berth status --watch redraws the table every interval until stopped, and says when the gateway does not answer', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], apps: { shop: { source: src, processes: { web: { command: FIXTURE_WEB_COMMAND } } } } });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  const child = spawn(process.execPath, [MAIN, 'status', '--watch', '--interval', '0.3', '--socket', gw.socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
  // The window starts at the first frame: the CLI's own start-up is not what is measured.
  await waitFor(() => /every 0\.3s; Ctrl-C ends/.test(out), { timeoutMs: 15_000, message: 'the first frame' });
  await new Promise((r) => setTimeout(r, 1_500));
  gw.proc.kill('SIGTERM');
  await gw.exited;
  await new Promise((r) => setTimeout(r, 800));
  child.kill('SIGINT');
  const [code] = (await once(child, 'exit')) as [number | null];
  assert.equal(code, 0, 'Ctrl-C ends the watch with status 0');
  const frames = out.split(/^\d{4}-\d\d-\d\dT.*\(every 0\.3s; Ctrl-C ends\)$/m).filter((f) => f.trim() !== '');
  assert.ok(frames.length >= 4, `a frame every 0.3s (${frames.length})`);
  assert.match(frames[0]!, /^shop\s+healthy/m, 'a frame is the status table');
  assert.doesNotMatch(out, /\x1b\[/, 'no colour or screen codes when not on a terminal');
  assert.match(frames.at(-1)!, /berth status: /, 'a gateway that stopped is said in the frame, and the watch goes on');
  const bad = await runCli(['status', '--watch', '--json', '--socket', gw.socket]);
  assert.equal(bad.code, 2);
});

test('berth logs with no app: every app\'s process logs merged by time, each instance named by its app; -f follows them all', async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  // Each instance says hello on its output as it starts (commands run through sh -c).
  const command = `echo "hello from $BERTH_APP $BERTH_RELEASE"; exec ${FIXTURE_WEB_COMMAND}`;
  const apps = { shop: { source: src, hosts: ['shop.test'], processes: { web: { command } } }, blog: { source: src, hosts: ['blog.test'], processes: { web: { command } } } };
  const file = await writeConfig(dir, { state_dir: 'state', listen: ['127.0.0.1:0'], apps });
  const gw = await spawnGateway(t, file);
  await untilReady(gw);
  await waitFor(async () => {
    const now = (await runCli(['logs', '-n', '50', '--socket', gw.socket])).stdout;
    return / shop\/web\.0 .*hello from shop/.test(now) && / blog\/web\.0 .*hello from blog/.test(now);
  }, { timeoutMs: 10_000, message: 'both apps\' hellos' });
  const out = await runCli(['logs', '-n', '50', '--socket', gw.socket]);
  assert.equal(out.code, 0, out.stderr);
  const lines = out.stdout.split('\n').filter(Boolean);
  assert.ok(lines.some((l) => / shop\/web\.0 /.test(l)) && lines.some((l) => / blog\/web\.0 /.test(l)), out.stdout);
  const times = lines.map((l) => l.split(' ')[0]!);
  assert.deepEqual(times, [...times].sort(), 'merged by time');
  assert.equal((await runCli(['logs', '--process', 'web', '--socket', gw.socket])).code, 2, '--process needs an app');

  // Following: a reload of blog writes new lines, which arrive named by their app.
  const child = spawn(process.execPath, [MAIN, 'logs', '-f', '-n', '0', '--socket', gw.socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let followed = '';
  child.stdout.on('data', (c: Buffer) => (followed += c.toString('utf8')));
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await runCli(['reload', 'blog', '--socket', gw.socket])).code, 0);
  await waitFor(() => / blog\/web\.0 .*hello from blog/.test(followed), { timeoutMs: 15_000, message: 'blog lines followed' });
  child.kill('SIGINT');
});
