/**
 * Self-upgrades under load, measured: a berth gateway (src/main.ts start) serving a 2-instance app
 * (examples/node-app) is upgraded N times in a row (default 10) with `POST /v1/upgrade`, each time
 * waiting for the old process to exit, while C clients (default 200) send requests without pause: half
 * on keep-alive connections, half on a fresh connection per request; `GET /` and `POST /echo` (whose body
 * must come back intact). The new gateway runs the same code: what is measured is the handover.
 *
 * Reports the requests and the failed ones (non-200, resets, timeouts, a wrong echo), each upgrade's
 * duration (the API call) and the time until the old process was gone, and whether the app's instance
 * pids were the same at the end (no app restarted). Exits 1 when any request or upgrade failed.
 *
 * Anchor: none is run. nginx's binary upgrade (USR2, WINCH, QUIT) needs a second nginx binary to make
 * sense and kamal-proxy's upgrade is a restart; the report says so.
 *
 * Usage: npx node bench/upgrade-under-load.ts [--short] [--json] [--clients N] [--upgrades N]
 * --short: 3 upgrades, 50 clients (what CI runs).
 */
import { cp, mkdir, open, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { benchAppUser } from './app-user.ts';
import { ROOT, benchMain, cleanEnv, note, waitUntil } from './harness.ts';
import { positiveInt, UsageError } from './options.ts';
import { LoadRunner } from '../test/deploy/load-runner.ts';
import { http } from '../test/helpers/gateway.ts';
import { processAlive } from '../src/lib/process-alive.ts';

const MAIN = join(ROOT, 'src/main.ts');
const USAGE = 'usage: npx node bench/upgrade-under-load.ts [--short] [--json] [--clients N] [--upgrades N]';

interface Options {
  json: boolean;
  clients: number;
  upgrades: number;
}

function parseOptions(argv: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: { short: { type: 'boolean', default: false }, json: { type: 'boolean', default: false }, clients: { type: 'string' }, upgrades: { type: 'string' } } }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return {
    json: values.json!,
    clients: values.clients !== undefined ? positiveInt(values.clients, '--clients', 2000) : values.short ? 50 : 200,
    upgrades: values.upgrades !== undefined ? positiveInt(values.upgrades, '--upgrades', 100) : values.short ? 3 : 10,
  };
}

async function status(socket: string): Promise<any> {
  return (await http({ socketPath: socket }, { path: '/v1/status', timeoutMs: 10_000 })).json();
}

function pids(s: any): number[] {
  return s.apps.flatMap((a: any) => a.generations.filter((g: any) => g.active).flatMap((g: any) => g.instances.map((i: any) => i.pid))).sort();
}

async function run(opts: Options, dir: string): Promise<number> {
  const source = join(dir, 'app');
  await cp(join(ROOT, 'examples/node-app'), source, { recursive: true });
  const socket = join(dir, 'control.sock');
  const config = join(dir, 'berth.yaml');
  await writeFile(config, YAML.stringify({
    listen: ['127.0.0.1:0'],
    state_dir: join(dir, 'state'),
    control: { socket },
    log_levels: { proxy: 'warn' },
    apps: { bench: { source, ...benchAppUser, processes: { web: { command: `"${process.execPath}" server.mjs`, instances: 2, concurrency: 128 } }, routes: [{ path: '/', to: 'web' }], health: { path: '/up' } } },
  }));
  await mkdir(join(dir, 'logs'), { recursive: true });
  const log = await open(join(dir, 'logs', 'gateways.log'), 'a');
  // Not a harness child: the process that serves changes at each upgrade. Stopped through the API below.
  spawn(process.execPath, [MAIN, 'start', '--config', config], { env: cleanEnv(), stdio: ['ignore', log.fd, log.fd], detached: true }).unref();
  let gateway = 0;
  try {
    await waitUntil('the gateway running', 60_000, async () => (await status(socket).catch(() => null))?.state === 'running');
    await waitUntil('the app ready', 60_000, async () => (await status(socket)).apps.every((a: any) => a.healthy));
    const first = await status(socket);
    gateway = first.pid;
    const port = Number(String(first.listen[0]).split(':').pop());
    const before = pids(first);
    note(`berth ${first.version} pid ${gateway} on ${port}; ${opts.clients} clients; ${opts.upgrades} upgrades`);
    const load = LoadRunner.start({ port, clients: opts.clients, timeoutMs: 10_000 });
    await load.more(opts.clients * 2, 60_000);
    const upgrades: { ms: number; goneMs: number; error: string | null }[] = [];
    for (let i = 0; i < opts.upgrades; i++) {
      const started = performance.now();
      const res = await http({ socketPath: socket }, { path: '/v1/upgrade', method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, timeoutMs: 120_000 }).catch((err) => ({ status: 0, body: String(err), json: () => null }));
      const ms = performance.now() - started;
      if (res.status !== 200) {
        upgrades.push({ ms, goneMs: 0, error: `${res.status}: ${res.body}` });
        continue;
      }
      const old = gateway;
      gateway = (res.json() as any).to.pid;
      await waitUntil(`the old gateway ${old} gone`, 60_000, async () => !processAlive(old));
      upgrades.push({ ms, goneMs: performance.now() - started, error: null });
      await load.more(opts.clients, 60_000);
    }
    const stats = await load.stop();
    const after = await status(socket);
    const sameInstances = JSON.stringify(pids(after)) === JSON.stringify(before);
    const failedUpgrades = upgrades.filter((u) => u.error !== null);
    const median = (xs: number[]) => (xs.length === 0 ? null : Math.round(xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]));
    const report = {
      ok: stats.failures.length === 0 && failedUpgrades.length === 0 && sameInstances,
      clients: opts.clients,
      requests: stats.ok + stats.failures.length,
      failed: stats.failures.length,
      failures: stats.failures.slice(0, 20),
      upgrades: upgrades.length,
      failedUpgrades: failedUpgrades.map((u) => u.error),
      upgradeMs: median(upgrades.filter((u) => u.error === null).map((u) => u.ms)),
      oldGoneMs: median(upgrades.filter((u) => u.error === null).map((u) => u.goneMs)),
      sameInstances,
      version: after.version,
      anchor: { skipped: "no anchor runs: nginx's binary upgrade needs a second nginx binary, and kamal-proxy's upgrade is a restart" },
    };
    if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    else {
      process.stdout.write(
        [
          `berth upgrade under load: ${report.upgrades} upgrades, ${report.clients} clients`,
          `  requests ${report.requests}, failed ${report.failed}${report.failed ? `: ${report.failures.slice(0, 5).join('; ')}` : ''}`,
          `  upgrades failed ${failedUpgrades.length}; median upgrade ${report.upgradeMs} ms, old process gone after ${report.oldGoneMs} ms (median)`,
          `  app instances restarted: ${sameInstances ? 'none' : 'some (pids changed)'}`,
          `  anchor: ${report.anchor.skipped}`,
        ].join('\n') + '\n',
      );
    }
    return report.ok ? 0 : 1;
  } finally {
    // Whichever gateway serves now stops, and its apps with it.
    const serving = (await status(socket).catch(() => null))?.pid ?? gateway;
    await http({ socketPath: socket }, { path: '/v1/stop', method: 'POST', timeoutMs: 5_000 }).catch(() => {});
    if (serving > 0) await waitUntil('the gateway stopped', 60_000, async () => !processAlive(serving)).catch(() => process.kill(serving, 'SIGKILL'));
    await log.close();
  }
}

process.exitCode = await benchMain(USAGE, parseOptions, (o) => (60 + o.upgrades * 30) * 1000, run);
