/**
 * The gateway's own log (issue 16): `berth start` writes its JSON lines to stdout and to
 * `<state_dir>/logs/berth.log`, proxy worker threads' lines included, rotated by size as app logs are
 * (lib/log-writer.ts). CLI verbs write no file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';
import { Gateway } from '../../src/gateway.ts';
import { LoggerFactory, gatewayLogFile } from '../../src/lib/logger.ts';
import { FIXTURE_WEB_COMMAND, LogSink, fixtureApp, http, runCli, spawnGateway, tempDir, untilReady, waitFor, writeConfig } from '../helpers/gateway.ts';

/** One app on the fixture web server, its front door on two threads (the main one and a worker). */
async function siteConfig(dir: string): Promise<string> {
  const source = await fixtureApp(dir);
  return writeConfig(dir, {
    state_dir: join(dir, 'state'),
    listen: ['127.0.0.1:0'],
    proxy: { workers: 2 },
    apps: {
      shop: {
        hosts: ['127.0.0.1'],
        source,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1, concurrency: 4 } },
        routes: [{ path: '/', to: 'web' }],
        health: { path: '/up' },
        db_connections: 4,
      },
    },
  });
}

/** The file's lines, parsed; each must be a whole JSON object. */
async function fileLines(file: string): Promise<any[]> {
  const text = await readFile(file, 'utf8');
  assert.ok(text === '' || text.endsWith('\n'), 'the file ends with a whole line');
  return text.split('\n').filter(Boolean).map((line) => JSON.parse(line));
}

test('berth start writes every line it prints to <state_dir>/logs/berth.log (0600), worker threads\' too; berth check writes none', async (t) => {
  const dir = await tempDir(t);
  const config = await siteConfig(dir);
  const file = gatewayLogFile(join(dir, 'state'));
  assert.equal(file, join(dir, 'state', 'logs', 'berth.log'));

  // A CLI verb loads the same config and leaves the state dir alone.
  const checked = await runCli(['check', '--config', config]);
  assert.equal(checked.code, 0, checked.stderr);
  assert.equal(existsSync(join(dir, 'state')), false, 'berth check made no state dir, no log file');

  const gw = await spawnGateway(t, config);
  await untilReady(gw);
  for (let i = 0; i < 24; i++) assert.equal((await http({ port: gw.port }, { path: `/n/${i}` })).status, 200);
  await waitFor(async () => (await fileLines(file)).some((l) => l.msg === 'request' && l.path === '/n/23'), { message: 'the last request in the file' });

  assert.equal((await stat(file)).mode & 0o777, 0o600);
  assert.equal((await stat(join(dir, 'state', 'logs'))).mode & 0o777, 0o700);
  const requests = (await fileLines(file)).filter((l) => l.msg === 'request' && l.path.startsWith('/n/'));
  assert.equal(requests.length, 24);
  assert.ok(requests.some((l) => l.thread !== undefined), 'a proxy worker thread served some and its lines are in the file');

  gw.proc.kill('SIGTERM');
  assert.equal((await gw.exited).code, 0, gw.stderr());
  // stdout and the file hold the same lines, to the last one written before the exit.
  const lines = await fileLines(file);
  assert.equal(lines.at(-1).msg, 'gateway stopped');
  const text = (xs: any[]) => xs.map((l) => JSON.stringify(l)).sort();
  assert.deepEqual(text(lines), text(gw.logs));
  assert.ok(lines.some((l) => l.msg === 'gateway state' && l.state === 'running'));
});

test('the gateway log rotates by size, keeping keepFiles old files of whole lines', async (t) => {
  const dir = await tempDir(t);
  const configPath = await siteConfig(dir);
  const config = await loadConfig({ configPath, environ: process.env });
  const sink = new LogSink();
  const loggers = new LoggerFactory(config.logLevels, sink);
  const file = gatewayLogFile(config.stateDir);
  // A test-sized threshold: a few access log lines fill a file.
  loggers.logToFile({ file, maxBytes: 4096, keepFiles: 2 });
  const gateway = new Gateway({ config, loggers });
  t.after(async () => {
    await gateway.stop();
    await loggers.closeFile();
  });
  await gateway.start();
  const addr = gateway.proxy.addresses()[0];
  const port = addr.kind === 'tcp' ? addr.port : 0;
  await waitFor(async () => (await http({ port }, { path: '/_berth/ready' })).status === 200, { message: 'ready' });

  for (let i = 0; i < 80; i++) assert.equal((await http({ port }, { path: `/r/${i}` })).status, 200);
  await waitFor(async () => (await fileLines(file)).some((l) => l.path === '/r/79'), { message: 'the last request in the live file' });

  const logs = join(config.stateDir, 'logs');
  assert.deepEqual((await readdir(logs)).sort(), ['berth.log', 'berth.log.1', 'berth.log.2']);
  const all: any[] = [];
  for (const name of ['berth.log.2', 'berth.log.1', 'berth.log']) {
    const st = await stat(join(logs, name));
    assert.ok(st.size <= 4096, `${name} is ${st.size} bytes`);
    assert.equal(st.mode & 0o777, 0o600, name);
    all.push(...(await fileLines(join(logs, name))));
  }
  // The newest lines are kept, each once (a worker thread's line may arrive a little after the main
  // thread's next one, so the order across threads is not asserted).
  const paths = all.filter((l) => l.msg === 'request' && l.path.startsWith('/r/')).map((l) => Number(l.path.slice('/r/'.length)));
  assert.ok(paths.length > 10 && paths.length < 80, `${paths.length} request lines kept`);
  assert.equal(new Set(paths).size, paths.length, 'no line is written twice');
  assert.equal(Math.max(...paths), 79);
  assert.ok(all.some((l) => l.msg === 'request' && l.thread !== undefined), 'worker threads\' lines rotate with the rest');
  // What went to the file went to the output too.
  const seen = new Set(sink.lines.map((l) => JSON.stringify(l)));
  for (const l of all) assert.ok(seen.has(JSON.stringify(l)), `${JSON.stringify(l)} is in the output too`);
});
