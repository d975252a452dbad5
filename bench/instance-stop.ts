/**
 * Instance stop: what stopping a generation costs the gateway, besides the app's own shutdown time.
 *
 * `--instances` background workers each run a shell (the group leader) that dies at once on SIGTERM,
 * and a subshell of its group that takes `--linger-ms` to finish (a `sleep` in its trap), as a
 * gunicorn worker finishes its request after its master has gone; a `sleep 1000` in the group dies at
 * once. The generation is stopped `--rounds` times (a fresh one each round). Reported per round: the
 * stop's wall time beyond the linger (how late berth notices the group is gone) and the CPU time the
 * gateway process used during the stop (what watching for the end costs).
 *
 * `--root DIR` runs the same bench against another checkout's src/ (e.g. `git worktree add /tmp/old
 * HEAD~1`), to compare before and after.
 *
 * Usage: npx node bench/instance-stop.ts [--json] [--instances N] [--linger-ms MS] [--rounds N] [--root DIR]
 * Exit status: 0 when every stop ended within linger + 1s with every group gone, 1 when not, 2 on bad usage.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { UsageError, positiveInt } from './options.ts';
import { percentile } from './percentile.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const USAGE = 'usage: npx node bench/instance-stop.ts [--json] [--instances N] [--linger-ms MS] [--rounds N] [--root DIR]';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      instances: { type: 'string', default: '4' },
      'linger-ms': { type: 'string', default: '1000' },
      rounds: { type: 'string', default: '5' },
      root: { type: 'string', default: resolve(HERE, '..') },
    },
  });
  const instances = positiveInt(values.instances!, '--instances', 64);
  const lingerMs = positiveInt(values['linger-ms']!, '--linger-ms', 60_000, true);
  const rounds = positiveInt(values.rounds!, '--rounds', 100);
  const root = resolve(values.root!);
  const { Supervisor } = await import(join(root, 'src/supervisor/supervisor.ts'));
  const { ProcessGroup } = await import(join(root, 'src/supervisor/process-group.ts'));
  const { appConfig, proc, testLogger } = await import(join(root, 'test/supervisor/helpers.ts'));

  const dir = await mkdtemp(join(tmpdir(), 'berth-stop-'));
  const sup = new Supervisor({ stateDir: join(dir, 'state'), logger: testLogger() });
  const lingerS = (lingerMs / 1000).toFixed(3);
  const command = `(trap 'sleep ${lingerS}; exit 0' TERM; sleep 1000 & wait) & wait`;
  const app = appConfig('stop', { timeouts: { stopMs: lingerMs + 10_000 } });
  const overheads: number[] = [];
  const cpus: number[] = [];
  let ok = true;
  try {
    for (let r = 0; r < rounds; r++) {
      const gen = sup.startGeneration(app, { id: `r${r}`, dir }, { worker: proc('worker', command, { http: false, instances }) });
      await gen.waitReady();
      // Let the shells reach their `wait`, so the trap runs on SIGTERM.
      await new Promise((res) => setTimeout(res, 200));
      const pgids: number[] = gen.instances.map((i: { pid: number | null }) => i.pid!);
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      await sup.stopGeneration(gen);
      const wall = performance.now() - t0;
      const cpu = process.cpuUsage(cpu0);
      overheads.push(wall - lingerMs);
      cpus.push((cpu.user + cpu.system) / 1000);
      // A live (non-zombie) process left in a group: kill(-pgid, 0) alone would count zombies too.
      const left = [];
      // `await`: an older checkout's running() returns a promise.
      for (const pgid of pgids) if (await new ProcessGroup(pgid).running()) left.push(pgid);
      if (left.length > 0 || wall > lingerMs + 1_000) ok = false;
    }
  } finally {
    await sup.stop();
    await rm(dir, { recursive: true, force: true });
  }
  const sorted = (a: number[]) => a.slice().sort((x, y) => x - y);
  const result = {
    root,
    instances,
    lingerMs,
    rounds,
    overheadMs: { p50: round(percentile(sorted(overheads), 50)), max: round(Math.max(...overheads)) },
    cpuMs: { p50: round(percentile(sorted(cpus), 50)), max: round(Math.max(...cpus)) },
    ok,
  };
  if (values.json) console.log(JSON.stringify(result));
  else {
    console.log(`stop of ${instances} instance(s) lingering ${lingerMs}ms, ${rounds} rounds (${root})`);
    console.log(`  late by:    p50 ${result.overheadMs.p50}ms, max ${result.overheadMs.max}ms`);
    console.log(`  gateway CPU during the stop: p50 ${result.cpuMs.p50}ms, max ${result.cpuMs.max}ms`);
    console.log(ok ? 'ok' : 'FAIL: a stop ran late or left a process');
  }
  return ok ? 0 : 1;
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err instanceof UsageError ? `${err.message}\n${USAGE}` : err);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
