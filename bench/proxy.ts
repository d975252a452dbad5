/**
 * Proxy throughput and latency, in one run, in front of the same upstream program (bench/upstream.mjs):
 *   direct       the upstream itself
 *   berth        a berth gateway (src/main.ts start) supervising the upstream, `proxy.workers` 1
 *   berth-auto   the same with `proxy.workers: auto` (its own instance of the upstream program)
 *   nginx        nginx, 1 worker, proxying to berth's instance of the upstream (when installed)
 *   nginx-auto   nginx with `worker_processes auto`
 *   haproxy      HAProxy with one thread, caddy: Caddy with GOMAXPROCS=1 (each when installed)
 *   berth-affinity  with --affinity cookie|ip only: berth as above with that `affinity` on its route
 *                (cookie: every request carries the cookie berth set, so each is a hit); the report
 *                then says what affinity costs against berth without it
 * Scenarios: small GETs on keep-alive connections, small GETs with a new connection each, a 64 KiB
 * response, and 1 MiB POST uploads. For each: req/s, p50, p99, errors, CPU time per request of the proxy
 * processes, and berth's ratio at equal worker counts (berth vs nginx, berth-auto vs nginx-auto).
 * Then the latency berth adds: an open-loop load (bench/paced-load.mjs) at half of berth's keep-alive
 * maximum, against direct and berth, and the difference of their p99.
 *
 * With 4 cores or more, the proxies run on the lower half and the load tool and the upstream on the upper
 * half (taskset); with fewer, everything shares the cores, and the report says so.
 *
 * Usage: npx node bench/proxy.ts [--duration 10] [--connections 32] [--scenarios keepalive,close,64k,upload]
 *          [--no-nginx] [--no-auto] [--no-others] [--no-paced] [--affinity cookie|ip] [--tool wrk|autocannon] [--cpu-prof DIR] [--json]
 *
 * Everything listens on 127.0.0.1, every phase has a deadline, and children are stopped on exit or Ctrl-C.
 */
import { existsSync } from 'node:fs';
import { request } from 'node:http';
import { writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, benchMain, cpuMs, isStopping, note, onPath, runTool, Stopped, table, withChildren } from './harness.ts';
import { UsageError, positiveInt } from './options.ts';
import {
  BERTH_READY_TIMEOUT_MS,
  START_TIMEOUT_MS,
  nginxBinary,
  parseWrk,
  readPortFile,
  startBerth,
  startCaddy,
  startHaproxy,
  startNginx,
  startTargets,
  type ProxyTarget,
} from './proxy-targets.ts';

/** Per measured run, on top of warmup + duration: tool start-up and reporting. */
const RUN_SLACK_MS = 20_000;
const PACED = join(ROOT, 'bench/paced-load.mjs');
const GOAL = { keepAliveRatio: 0.8, addedP99Ms: 1 };

const SCENARIOS = ['keepalive', 'close', '64k', 'upload'] as const;
type Scenario = (typeof SCENARIOS)[number];
const SCENARIO_TITLES: Record<Scenario, string> = {
  keepalive: 'small GETs, keep-alive',
  close: 'small GETs, a new connection each',
  '64k': '64 KiB responses, keep-alive',
  upload: '1 MiB POST uploads, keep-alive',
};

const USAGE =
  'usage: npx node bench/proxy.ts [--duration SECONDS] [--connections N] [--scenarios keepalive,close,64k,upload] [--no-nginx] [--no-auto] [--no-others] [--no-paced] [--affinity cookie|ip] [--tool wrk|autocannon] [--cpu-prof DIR] [--json]';

const AFFINITIES = ['cookie', 'ip'] as const;

interface Options {
  durationS: number;
  connections: number;
  scenarios: Scenario[];
  tool: 'wrk' | 'autocannon';
  nginx: boolean;
  /** berth-auto and nginx-auto. */
  auto: boolean;
  /** HAProxy and Caddy, when installed. */
  others: boolean;
  paced: boolean;
  json: boolean;
  /** A directory where berth (1 worker) writes a V8 CPU profile (node --cpu-prof) when it stops. */
  cpuProf: string | null;
  /** `--affinity`: also measure berth with this `routes[].affinity` (berth-affinity); null: not. */
  affinity: (typeof AFFINITIES)[number] | null;
}

type TargetName = 'direct' | 'berth' | 'berth-auto' | 'berth-affinity' | 'nginx' | 'nginx-auto' | 'haproxy' | 'caddy';

interface Target {
  name: TargetName;
  /** How many workers (processes or threads) it proxies with, as the report shows it. */
  workers: string;
  port: number;
  /** The processes whose CPU time is the proxy's cost; none for direct. */
  pids: () => number[];
  /** Request headers every request to it carries (berth-affinity: the cookie berth set); none: {}. */
  headers: Record<string, string>;
}

interface Measurement {
  scenario: Scenario;
  target: TargetName;
  workers: string;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx responses plus socket errors and timeouts. */
  errors: number;
  /** CPU time (user + system) of the proxy's processes per request, in microseconds; null for direct. */
  cpuUsPerRequest: number | null;
}

interface Paced {
  ratePerSec: number;
  direct: PacedFigures;
  berth: PacedFigures;
  addedP99Ms: number;
}

interface PacedFigures {
  sent: number;
  ok: number;
  errors: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  lateStarts: number;
}

/** The part of autocannon's result this bench reads (the package ships no types). */
interface AutocannonResult {
  /** Seconds. */
  duration: number;
  requests: { total: number };
  latency: { p50: number; p99: number };
  non2xx: number;
  errors: number;
  timeouts: number;
}
type Autocannon = (opts: { url: string; connections: number; duration: number; timeout: number; pipelining: number; headers: Record<string, string> }) => Promise<AutocannonResult>;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '10' },
      connections: { type: 'string', default: '32' },
      scenarios: { type: 'string', default: SCENARIOS.join(',') },
      tool: { type: 'string' },
      'no-nginx': { type: 'boolean', default: false },
      'no-auto': { type: 'boolean', default: false },
      'no-others': { type: 'boolean', default: false },
      'no-paced': { type: 'boolean', default: false },
      affinity: { type: 'string' },
      json: { type: 'boolean', default: false },
      'cpu-prof': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  const durationS = positiveInt(values.duration, '--duration', 600);
  const connections = positiveInt(values.connections, '--connections', 1024);
  const scenarios = values.scenarios.split(',').map((s) => s.trim());
  for (const s of scenarios) if (!(SCENARIOS as readonly string[]).includes(s)) throw new UsageError(`--scenarios: unknown scenario "${s}" (known: ${SCENARIOS.join(', ')})`);
  const tool = values.tool ?? (onPath('wrk') ? 'wrk' : 'autocannon');
  if (tool !== 'wrk' && tool !== 'autocannon') throw new UsageError(`--tool must be wrk or autocannon, got "${tool}"`);
  if (tool === 'wrk' && !onPath('wrk')) throw new UsageError('--tool wrk: wrk is not on PATH');
  const affinity = values.affinity ?? null;
  if (affinity !== null && !(AFFINITIES as readonly string[]).includes(affinity)) throw new UsageError(`--affinity must be ${AFFINITIES.join(' or ')}, got "${affinity}"`);
  return {
    durationS,
    connections,
    scenarios: scenarios as Scenario[],
    tool,
    nginx: !values['no-nginx'],
    auto: !values['no-auto'],
    others: !values['no-others'],
    paced: !values['no-paced'],
    json: values.json,
    cpuProf: values['cpu-prof'] === undefined ? null : resolve(values['cpu-prof']),
    affinity: affinity as Options['affinity'],
  };
}

// ---- cores -------------------------------------------------------------------------------------------

/** Which cores the proxies get, and which the load tool and the upstream get; null: too few to split. */
interface CoreSplit {
  proxies: string;
  rest: string;
}

function coreSplit(cores: number): CoreSplit | null {
  if (cores < 4 || !onPath('taskset')) return null;
  const half = Math.floor(cores / 2);
  return { proxies: `0-${half - 1}`, rest: `${half}-${cores - 1}` };
}

/** Pins every thread of each process to `cpus`. */
async function pin(pids: number[], cpus: string): Promise<void> {
  for (const pid of pids) await runTool('taskset', ['-a', '-p', '-c', cpus, String(pid)], 5_000).catch((err: Error) => note(`taskset ${pid}: ${err.message.split('\n')[0]}`));
}

// ---- load tools ----------------------------------------------------------------------------------

/** wrk's Lua script for the upload scenario: a 1 MiB body on every request. */
async function uploadScript(dir: string): Promise<string> {
  const file = join(dir, 'upload.lua');
  await writeFile(file, 'wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\nwrk.headers["Content-Type"] = "application/octet-stream"\n');
  return file;
}

interface LoadContext {
  opts: Options;
  split: CoreSplit | null;
  uploadLua: string;
}

async function runWrk(ctx: LoadContext, scenario: Scenario, port: number, durationS: number, headers: Record<string, string>): Promise<Omit<Measurement, 'scenario' | 'target' | 'workers' | 'cpuUsPerRequest'>> {
  // Leave cores for the proxy and the upstream: the load generator competes with them on one machine.
  const cores = availableParallelism();
  const threads = Math.max(1, Math.min(ctx.opts.connections, ctx.split === null ? Math.floor(cores / 2) : Math.ceil(cores / 4)));
  const extra = scenario === 'close' ? ['-H', 'Connection: close'] : scenario === 'upload' ? ['-s', ctx.uploadLua] : [];
  const path = scenario === '64k' ? '/64k' : '/';
  const headerArgs = Object.entries(headers).flatMap(([name, value]) => ['-H', `${name}: ${value}`]);
  const args = ['-t', String(threads), '-c', String(ctx.opts.connections), '-d', `${durationS}s`, '--timeout', '5s', '--latency', ...extra, ...headerArgs, `http://127.0.0.1:${port}${path}`];
  const out = ctx.split === null ? await runTool('wrk', args, durationS * 1000 + RUN_SLACK_MS) : await runTool('taskset', ['-c', ctx.split.rest, 'wrk', ...args], durationS * 1000 + RUN_SLACK_MS);
  return parseWrk(out);
}

let autocannon: Autocannon | null = null;

async function runAutocannon(ctx: LoadContext, scenario: Scenario, port: number, durationS: number, headers: Record<string, string>): Promise<Omit<Measurement, 'scenario' | 'target' | 'workers' | 'cpuUsPerRequest'>> {
  autocannon ??= createRequire(import.meta.url)('autocannon') as Autocannon;
  if (isStopping()) throw new Stopped('stopping');
  const path = scenario === '64k' ? '/64k' : '/';
  const result = await autocannon({ url: `http://127.0.0.1:${port}${path}`, connections: ctx.opts.connections, duration: durationS, timeout: 5, pipelining: 1, headers });
  return {
    requestsPerSec: result.requests.total / result.duration,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    errors: result.non2xx + result.errors + result.timeouts,
  };
}

async function measure(ctx: LoadContext, scenario: Scenario, target: Target, durationS: number): Promise<Measurement> {
  const pids = target.pids();
  const before = cpuMs(pids);
  const figures = ctx.opts.tool === 'wrk' ? await runWrk(ctx, scenario, target.port, durationS, target.headers) : await runAutocannon(ctx, scenario, target.port, durationS, target.headers);
  const used = cpuMs(pids) - before;
  const requests = figures.requestsPerSec * durationS;
  const cpuUsPerRequest = pids.length > 0 && requests > 0 && used > 0 ? (used * 1000) / requests : null;
  return { scenario, target: target.name, workers: target.workers, ...figures, cpuUsPerRequest };
}

async function paced(ctx: LoadContext, port: number, rate: number): Promise<PacedFigures> {
  const args = [PACED, String(port), String(rate), String(ctx.opts.durationS), '64'];
  const out = ctx.split === null ? await runTool(process.execPath, args, ctx.opts.durationS * 1000 + RUN_SLACK_MS) : await runTool('taskset', ['-c', ctx.split.rest, process.execPath, ...args], ctx.opts.durationS * 1000 + RUN_SLACK_MS);
  return JSON.parse(out.trim().split('\n').pop()!) as PacedFigures;
}

// ---- targets -------------------------------------------------------------------------------------

async function startAll(opts: Options, dir: string, skipped: Record<string, string>): Promise<{ targets: Target[]; upstreamPids: number[] }> {
  const berthEnv: Record<string, string> = opts.cpuProf === null ? {} : { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${opts.cpuProf}` };
  const started = await startTargets(dir, { nginx: false, tls: null, berthEnv });
  // nginx is started here (1 worker and auto), not by startTargets.
  Object.assign(skipped, { ...started.skipped, nginx: undefined });
  delete skipped.nginx;
  const upstreamPort = started.upstreamPort;
  const targets: Target[] = [{ name: 'direct', workers: '-', port: upstreamPort, pids: () => [], headers: {} }];
  const upstreamPids: number[] = [];
  const berthPids = (t: ProxyTarget) => () => [t.child.proc.pid!];
  if (started.berth) {
    targets.push({ name: 'berth', workers: '1', port: started.berth.port, pids: berthPids(started.berth), headers: {} });
    upstreamPids.push(...withChildren(started.berth.child.proc.pid!).slice(1));
  }
  if (opts.affinity === null) skipped['berth-affinity'] = 'no --affinity';
  else {
    note(`starting berth with affinity: ${opts.affinity}`);
    try {
      const sticky = await startBerth(join(dir, 'affinity'), join(dir, 'affinity.port'), null, {}, 1, opts.affinity);
      await readPortFile(join(dir, 'affinity.port'), sticky.child);
      // Every request carries the cookie berth set on the first: the steady state of a session, a hit each.
      const headers: Record<string, string> = opts.affinity === 'cookie' ? { cookie: await affinityCookie(sticky.port) } : {};
      targets.push({ name: 'berth-affinity', workers: '1', port: sticky.port, pids: berthPids(sticky), headers });
      upstreamPids.push(...withChildren(sticky.child.proc.pid!).slice(1));
    } catch (err) {
      skipped['berth-affinity'] = `did not start: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  const cores = availableParallelism();
  if (!opts.auto) skipped['berth-auto'] = '--no-auto';
  else {
    note('starting berth with proxy.workers: auto');
    try {
      const auto = await startBerth(join(dir, 'auto'), join(dir, 'auto.port'), null, {}, 'auto');
      await readPortFile(join(dir, 'auto.port'), auto.child);
      targets.push({ name: 'berth-auto', workers: `auto (${cores})`, port: auto.port, pids: berthPids(auto), headers: {} });
      upstreamPids.push(...withChildren(auto.child.proc.pid!).slice(1));
    } catch (err) {
      skipped['berth-auto'] = `did not start: ${(err as Error).message.split('\n').find((l) => l.includes('workers')) ?? (err as Error).message.split('\n')[0]}`;
    }
  }
  const binary = nginxBinary();
  const nginxCounts: (1 | 'auto')[] = opts.auto ? [1, 'auto'] : [1];
  for (const workers of nginxCounts) {
    const name: TargetName = workers === 1 ? 'nginx' : 'nginx-auto';
    if (!opts.nginx) skipped[name] = '--no-nginx';
    else if (binary === null) skipped[name] = 'not installed';
    else {
      try {
        const t = await startNginx(binary, dir, upstreamPort, null, workers);
        targets.push({ name, workers: workers === 1 ? '1' : `auto (${cores})`, port: t.port, pids: t.proxyPids, headers: {} });
      } catch (err) {
        skipped[name] = `did not start: ${(err as Error).message.split('\n')[0]}`;
      }
    }
  }
  const others: [TargetName, string | null, typeof startHaproxy][] = [
    ['haproxy', onPath('haproxy') ?? (existsSync('/usr/sbin/haproxy') ? '/usr/sbin/haproxy' : null), startHaproxy],
    ['caddy', onPath('caddy') ?? (existsSync('/usr/bin/caddy') ? '/usr/bin/caddy' : null), startCaddy],
  ];
  for (const [name, path, start] of others) {
    if (!opts.others) skipped[name] = '--no-others';
    else if (path === null) skipped[name] = 'not installed';
    else {
      try {
        const t = await start(path, dir, upstreamPort);
        targets.push({ name, workers: '1', port: t.port, pids: t.proxyPids, headers: {} });
      } catch (err) {
        skipped[name] = `did not start: ${(err as Error).message.split('\n')[0]}`;
      }
    }
  }
  return { targets, upstreamPids };
}

// ---- report ----------------------------------------------------------------------------------------

function ms(value: number, tool: Options['tool']): string {
  if (tool === 'autocannon') return `${value.toFixed(0)}ms`;
  return value < 1 ? `${(value * 1000).toFixed(0)}us` : `${value.toFixed(2)}ms`;
}

/** berth's figure against `other`'s at the same worker count: berth-auto for the auto targets. */
function counterpart(m: Measurement): TargetName | null {
  if (m.target === 'berth' || m.target === 'berth-auto' || m.target === 'berth-affinity') return null;
  return m.target === 'nginx-auto' ? 'berth-auto' : 'berth';
}

function ratioOf(results: Measurement[], scenario: Scenario, berth: TargetName, other: TargetName): number | null {
  const b = results.find((r) => r.scenario === scenario && r.target === berth);
  const o = results.find((r) => r.scenario === scenario && r.target === other);
  return b && o && o.requestsPerSec > 0 ? b.requestsPerSec / o.requestsPerSec : null;
}

const x = (r: number | null): string => (r === null ? '-' : `${r.toFixed(2)}x`);

function report(opts: Options, split: CoreSplit | null, results: Measurement[], pacedResult: Paced | null, skipped: Record<string, string>): string {
  const cores = availableParallelism();
  const lines = [
    `${opts.tool}, ${opts.connections} connections, ${opts.durationS}s per run, node ${process.version}, ${cores} cpus; ` +
      (split === null ? `cores not split (fewer than 4, or no taskset): the load tool, the upstream and the proxy share them` : `proxies on cores ${split.proxies}, the load tool and the upstream on ${split.rest}`),
  ];
  for (const scenario of opts.scenarios) {
    const rows = [['target', 'workers', 'req/s', 'p50', 'p99', 'errors', 'CPU/req', 'berth vs this']];
    for (const r of results.filter((m) => m.scenario === scenario)) {
      const other = counterpart(r);
      rows.push([
        r.target,
        r.workers,
        r.requestsPerSec.toFixed(0),
        ms(r.p50Ms, opts.tool),
        ms(r.p99Ms, opts.tool),
        String(r.errors),
        r.cpuUsPerRequest === null ? '-' : `${r.cpuUsPerRequest.toFixed(0)}us`,
        other === null ? '' : `${x(ratioOf(results, scenario, other, r.target))}${other === 'berth-auto' ? ' (auto)' : ''}`,
      ]);
    }
    lines.push('', `${scenario}: ${SCENARIO_TITLES[scenario]}`, ...table(rows));
  }
  lines.push('');
  const one = ratioOf(results, 'keepalive', 'berth', 'nginx');
  const auto = ratioOf(results, 'keepalive', 'berth-auto', 'nginx-auto');
  const judge = (r: number | null) => (r === null ? 'not measured' : r >= GOAL.keepAliveRatio ? 'met' : 'not met');
  lines.push(`small keep-alive GETs, berth / nginx, 1 worker each: ${x(one)} (goal ${GOAL.keepAliveRatio}x: ${judge(one)})`);
  lines.push(`small keep-alive GETs, berth / nginx, auto workers each: ${x(auto)} (goal ${GOAL.keepAliveRatio}x: ${judge(auto)})`);
  if (opts.affinity !== null) lines.push(...affinityCost(opts, results));
  if (pacedResult !== null) {
    const p = pacedResult;
    lines.push(
      `p99 added over direct at half of berth's keep-alive maximum (${p.ratePerSec} req/s, open loop): ${p.addedP99Ms.toFixed(3)}ms ` +
        `(direct p99 ${p.direct.p99Ms}ms, berth p99 ${p.berth.p99Ms}ms; late starts ${p.direct.lateStarts} / ${p.berth.lateStarts}; errors ${p.direct.errors} / ${p.berth.errors}) ` +
        `(goal ${GOAL.addedP99Ms}ms: ${p.addedP99Ms <= GOAL.addedP99Ms ? 'met' : 'not met'})`,
    );
  }
  for (const [name, why] of Object.entries(skipped)) lines.push(`${name}: skipped, ${why}`);
  if (opts.tool === 'autocannon') lines.push('autocannon reports latency in whole milliseconds and runs keepalive and 64k only; install wrk for the rest.');
  return lines.join('\n');
}

/** What `--affinity` costs, per scenario: berth-affinity's req/s and CPU per request against berth's. */
function affinityCost(opts: Options, results: Measurement[]): string[] {
  const lines: string[] = [];
  for (const scenario of opts.scenarios) {
    const plain = results.find((r) => r.scenario === scenario && r.target === 'berth');
    const sticky = results.find((r) => r.scenario === scenario && r.target === 'berth-affinity');
    if (!plain || !sticky) continue;
    const delta = plain.cpuUsPerRequest !== null && sticky.cpuUsPerRequest !== null ? sticky.cpuUsPerRequest - plain.cpuUsPerRequest : null;
    const cpu = delta === null ? '' : `, CPU per request ${delta >= 0 ? '+' : ''}${delta.toFixed(1)}us`;
    lines.push(`affinity: ${opts.affinity}, ${scenario}: ${x(ratioOf(results, scenario, 'berth-affinity', 'berth'))} of berth's req/s${cpu} (p99 ${ms(sticky.p99Ms, opts.tool)} against ${ms(plain.p99Ms, opts.tool)})`);
  }
  return lines;
}

/** The `berth_affinity=...` pair a berth with cookie affinity sets on a first request. */
function affinityCookie(port: number): Promise<string> {
  return new Promise((resolveCookie, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false, timeout: 5_000 }, (res) => {
      res.resume();
      const set = (res.headers['set-cookie'] ?? []).find((c) => c.startsWith('berth_affinity='));
      if (set === undefined) reject(new Error('berth set no affinity cookie'));
      else resolveCookie(set.slice(0, set.indexOf(';')));
    });
    req.on('timeout', () => req.destroy(new Error('no answer')));
    req.on('error', reject);
    req.end();
  });
}

// ---- main ---------------------------------------------------------------------------------------------

async function run(opts: Options, dir: string): Promise<void> {
  const skipped: Record<string, string> = {};
  const { targets, upstreamPids } = await startAll(opts, dir, skipped);
  const split = coreSplit(availableParallelism());
  if (split !== null) {
    for (const t of targets) if (t.name !== 'direct') await pin(t.pids(), split.proxies);
    await pin(upstreamPids, split.rest);
  }
  const ctx: LoadContext = { opts, split, uploadLua: await uploadScript(dir) };
  const scenarios = opts.tool === 'autocannon' ? opts.scenarios.filter((s) => s === 'keepalive' || s === '64k') : opts.scenarios;
  const warmupS = Math.max(1, Math.min(3, Math.round(opts.durationS / 5)));
  const results: Measurement[] = [];
  for (const scenario of scenarios) {
    for (const target of targets) {
      note(`${scenario} on ${target.name}: warming up ${warmupS}s, then measuring ${opts.durationS}s on 127.0.0.1:${target.port}`);
      await measure(ctx, scenario, target, warmupS);
      results.push(await measure(ctx, scenario, target, opts.durationS));
    }
  }
  let pacedResult: Paced | null = null;
  const berth = targets.find((t) => t.name === 'berth');
  const max = results.find((r) => r.scenario === 'keepalive' && r.target === 'berth');
  if (opts.paced && berth && max) {
    const rate = Math.max(1, Math.round(max.requestsPerSec / 2));
    note(`open-loop load at ${rate} req/s (half of berth's keep-alive maximum) on direct, then berth`);
    const direct = await paced(ctx, targets[0].port, rate);
    const viaBerth = await paced(ctx, berth.port, rate);
    pacedResult = { ratePerSec: rate, direct, berth: viaBerth, addedP99Ms: Math.round((viaBerth.p99Ms - direct.p99Ms) * 1000) / 1000 };
  } else if (opts.paced) skipped.paced = 'needs berth and the keepalive scenario';
  if (opts.json) {
    const out = { tool: opts.tool, connections: opts.connections, durationS: opts.durationS, node: process.version, cpus: availableParallelism(), split, results, paced: pacedResult, skipped };
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else process.stdout.write(report(opts, split, results, pacedResult, skipped) + '\n');
}

/** Start-up of up to seven targets, then every measured run with its warmup and slack, and the paced runs. */
const budgetMs = (opts: Options): number =>
  3 * BERTH_READY_TIMEOUT_MS + 5 * START_TIMEOUT_MS + (opts.scenarios.length * 8 + 2) * (opts.durationS * 1000 + 2 * 3_000 + RUN_SLACK_MS);

process.exit(await benchMain(USAGE, parseOptions, budgetMs, run));
