/**
 * `berth upgrade`: a new gateway from the installed code takes the listeners and the running instances
 * over, under load, with no failed request and no app restart; a broken build leaves the old one serving.
 * The "installed code" is a copy of the sources in a temp dir, changed between upgrades as an install
 * of a new version would change it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, open, readFile, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURE_WEB_COMMAND, ROOT, fixtureApp, http, runCli, waitFor, writeConfig } from '../helpers/gateway.ts';
import { removeAfter } from '../helpers/cleanup.ts';
import { createCa, issueCertificate } from '../helpers/certificates.ts';
import { LoadRunner } from '../deploy/load-runner.ts';
import { processAlive } from '../../src/lib/process-alive.ts';

/** A copy of berth as installed: sources, bin and package.json, with the checkout's node_modules. */
async function install(dir: string): Promise<string> {
  const at = join(dir, 'berth');
  await mkdir(at, { recursive: true });
  await cp(join(ROOT, 'src'), join(at, 'src'), { recursive: true });
  await cp(join(ROOT, 'bin'), join(at, 'bin'), { recursive: true });
  await cp(join(ROOT, 'package.json'), join(at, 'package.json'));
  await symlink(join(ROOT, 'node_modules'), join(at, 'node_modules'));
  return at;
}

async function setVersion(at: string, version: string): Promise<void> {
  await writeFile(join(at, 'src/lib/version.ts'), `export const VERSION = '${version}';\n`);
}

interface Running {
  socket: string;
  port: number;
  status(): Promise<any>;
}

/** Starts the installed copy's gateway in the background (it will not stay our child: upgrades replace it). */
async function startInstalled(t: TestContext, at: string, config: string, socket: string, pidFile: string): Promise<Running> {
  // Every gateway of the chain (the new ones inherit it) logs to one file, which a failure shows.
  const log = await open(join(at, '..', 'gateways.log'), 'a');
  t.after(async () => {
    await log.close();
  });
  spawn(process.execPath, [join(at, 'bin/berth.js'), 'start', '--config', config, '--pid-file', pidFile], { stdio: ['ignore', log.fd, log.fd] });
  const status = async () => (await http({ socketPath: socket }, { path: '/v1/status', timeoutMs: 5_000 })).json();
  t.after(async () => {
    // Whichever gateway serves now stops, and with it every app process.
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '0')).trim());
    await http({ socketPath: socket }, { path: '/v1/stop', method: 'POST' }).catch(() => {});
    if (pid > 0) await waitFor(() => !processAlive(pid), { timeoutMs: 60_000, message: 'the gateway gone' }).catch(() => process.kill(pid, 'SIGKILL'));
  });
  const first = await waitFor(async () => ((await status()).state === 'running' ? status() : null), { timeoutMs: 30_000, message: 'gateway running' }).catch(async (err) => {
    throw new Error(`${err.message}\n${await logTail(join(at, '..'))}`);
  });
  const address: string = first.listen[0];
  return { socket, port: Number(address.slice(address.lastIndexOf(':') + 1)), status };
}

/** The gateways' last log lines, for a failure's message. */
async function logTail(dir: string): Promise<string> {
  const text = await readFile(join(dir, 'gateways.log'), 'utf8').catch(() => '');
  return text.split('\n').slice(-80).join('\n');
}

function instancesOf(status: any): any[] {
  return status.apps.flatMap((a: any) => a.generations.filter((g: any) => g.active).flatMap((g: any) => g.instances));
}

function instancePids(status: any): number[] {
  return instancesOf(status).map((i: any) => i.pid).sort();
}

test('berth upgrade under load: every upgrade hands over with no failed request and no app restart; a broken build changes nothing', async (t) => {
  // Removed after the gateway's stop (hooks run in the order they are added): not with tempDir().
  const dir = await mkdtemp(join(tmpdir(), 'berth-'));
  const at = await install(dir);
  const source = await fixtureApp(dir);
  const socket = join(dir, 'control.sock');
  const pidFile = join(dir, 'berth.pid');
  // A TLS listener too: its socket is handed over, and redirects to it name its port after upgrades.
  const ca = await createCa(join(dir, 'ca'));
  const cert = await issueCertificate(ca, ['secure.test']);
  const config = await writeConfig(dir, {
    listen: ['127.0.0.1:0', { address: '127.0.0.1:0', tls: true }],
    state_dir: join(dir, 'state'),
    control: { socket },
    // No access log: the load would fill the gateways' log.
    log_levels: { proxy: 'warn' },
    apps: {
      shop: {
        source,
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 2 }, worker: { command: 'while true; do echo tick; sleep 0.2; done', http: false } },
        routes: [{ path: '/', to: 'web' }],
        health: { path: '/up' },
      },
      secure: {
        source,
        hosts: ['secure.test'],
        https_redirect: true,
        tls: { certificate: cert.certificate, key: cert.key },
        processes: { web: { command: FIXTURE_WEB_COMMAND, instances: 1 } },
        routes: [{ path: '/', to: 'web' }],
        health: { path: '/up' },
      },
    },
  });
  const gw = await startInstalled(t, at, config, socket, pidFile);
  removeAfter(t, dir);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'ready' });
  const before = await waitFor(async () => {
    const s = await gw.status();
    return instancesOf(s).every((i: any) => i.state === 'ready') ? s : null;
  }, { message: 'every instance ready' });
  const pids = instancePids(before);
  assert.equal(pids.length, 4, JSON.stringify(before.apps));
  const tlsPort = Number(String(before.listen[1]).split(':').pop());
  const redirect = async () => (await http({ port: gw.port }, { path: '/x', host: 'secure.test' })).headers.location;
  assert.equal(await redirect(), `https://secure.test:${tlsPort}/x`);
  assert.equal(Number((await readFile(pidFile, 'utf8')).trim()), before.pid);

  const load = LoadRunner.start({ port: gw.port, clients: 16 });
  t.after(async () => {
    await load.stop();
  });
  await load.more(50);
  let gatewayPid: number = before.pid;
  for (let i = 1; i <= 3; i++) {
    await setVersion(at, `9.0.${i}`);
    const res = await runCli(['upgrade', '--socket', socket], { timeoutMs: 90_000 });
    assert.equal(res.code, 0, `upgrade ${i}: ${res.stdout}\n${res.stderr}\n${await logTail(dir)}`);
    assert.match(res.stdout, new RegExp(`handed over to pid \\d+ \\(berth 9\\.0\\.${i}\\)`));
    const now = await gw.status();
    assert.equal(now.version, `9.0.${i}`);
    assert.notEqual(now.pid, gatewayPid, 'a new gateway process serves');
    assert.deepEqual(instancePids(now), pids, 'no app instance was restarted');
    assert.equal(await redirect(), `https://secure.test:${tlsPort}/x`, 'https_redirect names the TLS port handed over');
    assert.equal(Number((await readFile(pidFile, 'utf8')).trim()), now.pid, 'the pid file names the new gateway');
    await waitFor(() => !processAlive(gatewayPid), { timeoutMs: 40_000, message: `the old gateway ${gatewayPid} exits` }).catch(async (err) => {
      throw new Error(`${err.message}\n${await logTail(dir)}`);
    });
    gatewayPid = now.pid;
    await load.more(50);
  }
  // The adopted instances are supervised: the front door still reaches them, the worker's output still
  // reaches its log file, and a killed instance is restarted.
  const logFile = join(dir, 'state/apps/shop/logs/worker.log');
  const lines = (await readFile(logFile, 'utf8')).split('\n').length;
  await waitFor(async () => (await readFile(logFile, 'utf8')).split('\n').length > lines + 3, { message: 'the worker still logs through the adopted pipe' });

  // A broken build: the new gateway fails at start. The old one serves on, with everything.
  await writeFile(join(at, 'src/main.ts'), "throw new Error('this build is broken');\n");
  const broken = await runCli(['upgrade', '--socket', socket], { timeoutMs: 90_000 });
  assert.equal(broken.code, 1, broken.stdout + broken.stderr);
  assert.match(broken.stderr, /new gateway .*exited|before it took over/);
  const after = await gw.status();
  assert.equal(after.pid, gatewayPid, 'the old gateway still serves');
  assert.deepEqual(instancePids(after), pids);
  await load.more(50);

  const stats = await load.stop();
  assert.deepEqual(stats.failures, [], `failed requests across the upgrades`);
  assert.ok(stats.ok > 200, `only ${stats.ok} requests`);

  // An adopted instance that dies is restarted by the gateway that adopted it.
  const web0 = instancesOf(after).find((i: any) => i.process === 'web' && i.index === 0);
  process.kill(-web0.pid, 'SIGKILL');
  await waitFor(async () => {
    const s = await gw.status();
    const inst = instancesOf(s).find((i: any) => i.process === 'web' && i.index === 0);
    return inst.state === 'ready' && inst.pid !== web0.pid;
  }, { timeoutMs: 30_000, message: 'the adopted instance restarted' });
});
