/**
 * Proxy throughput and latency, in one run, against ONE upstream process (bench/upstream.mjs):
 *   direct  the upstream itself
 *   berth   through a berth gateway (src/main.ts start) that supervises that upstream
 *   nginx   through nginx proxying to the same upstream (when nginx is installed)
 * Keep-alive, fixed connections, fixed duration; wrk when it is on PATH, else autocannon (in-process).
 *
 * Usage: npx node bench/proxy.ts [--duration 10] [--connections 32] [--tool wrk|autocannon] [--no-nginx] [--json]
 *
 * Everything listens on 127.0.0.1, every phase has a deadline, and children are stopped on exit or Ctrl-C.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { benchMain, isStopping, note, onPath, runTool, Stopped, table } from './harness.ts';
import { UsageError, positiveInt } from './options.ts';
import { BERTH_READY_TIMEOUT_MS, START_TIMEOUT_MS, parseWrk, startTargets } from './proxy-targets.ts';

/** Per measured target, on top of warmup + duration: tool start-up and reporting. */
const RUN_SLACK_MS = 20_000;

const USAGE = 'usage: npx node bench/proxy.ts [--duration SECONDS] [--connections N] [--tool wrk|autocannon] [--no-nginx] [--json]';

interface Options {
  durationS: number;
  connections: number;
  tool: 'wrk' | 'autocannon';
  nginx: boolean;
  json: boolean;
}

type TargetName = 'direct' | 'berth' | 'nginx';

interface Target {
  name: TargetName;
  port: number;
}

interface Measurement {
  target: TargetName;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx responses plus socket errors and timeouts. */
  errors: number;
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
type Autocannon = (opts: { url: string; connections: number; duration: number; timeout: number; pipelining: number }) => Promise<AutocannonResult>;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      duration: { type: 'string', default: '10' },
      connections: { type: 'string', default: '32' },
      tool: { type: 'string' },
      'no-nginx': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
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
  const tool = values.tool ?? (onPath('wrk') ? 'wrk' : 'autocannon');
  if (tool !== 'wrk' && tool !== 'autocannon') throw new UsageError(`--tool must be wrk or autocannon, got "${tool}"`);
  if (tool === 'wrk' && !onPath('wrk')) throw new UsageError('--tool wrk: wrk is not on PATH');
  return { durationS, connections, tool, nginx: !values['no-nginx'], json: values.json };
}

// ---- load tools ----------------------------------------------------------------------------------

async function runWrk(target: Target, durationS: number, connections: number): Promise<Measurement> {
  // Leave cores for the proxy and the upstream: the load generator competes with them on one machine.
  const threads = Math.max(1, Math.min(connections, Math.floor(availableParallelism() / 2)));
  const args = ['-t', String(threads), '-c', String(connections), '-d', `${durationS}s`, '--timeout', '5s', '--latency', `http://127.0.0.1:${target.port}/`];
  const out = await runTool('wrk', args, durationS * 1000 + RUN_SLACK_MS);
  return { target: target.name, ...parseWrk(out) };
}

let autocannon: Autocannon | null = null;

async function runAutocannon(target: Target, durationS: number, connections: number): Promise<Measurement> {
  autocannon ??= createRequire(import.meta.url)('autocannon') as Autocannon;
  if (isStopping()) throw new Stopped('stopping');
  const result = await autocannon({ url: `http://127.0.0.1:${target.port}/`, connections, duration: durationS, timeout: 5, pipelining: 1 });
  return {
    target: target.name,
    requestsPerSec: result.requests.total / result.duration,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    errors: result.non2xx + result.errors + result.timeouts,
  };
}

function measure(opts: Options, target: Target, durationS: number): Promise<Measurement> {
  return opts.tool === 'wrk' ? runWrk(target, durationS, opts.connections) : runAutocannon(target, durationS, opts.connections);
}

// ---- report ----------------------------------------------------------------------------------------

function ms(value: number, tool: Options['tool']): string {
  if (tool === 'autocannon') return `${value.toFixed(0)}ms`;
  return value < 1 ? `${(value * 1000).toFixed(0)}us` : `${value.toFixed(2)}ms`;
}

function ratio(a: Measurement | undefined, b: Measurement | undefined): string {
  return a && b && b.requestsPerSec > 0 ? `${(a.requestsPerSec / b.requestsPerSec).toFixed(2)}x` : '-';
}

function report(opts: Options, results: Measurement[], skipped: Record<string, string>): string {
  const byName = new Map(results.map((r) => [r.target, r]));
  const berth = byName.get('berth');
  const rows = [['target', 'req/s', 'p50', 'p99', 'errors', 'berth vs this']];
  for (const r of results) {
    rows.push([r.target, r.requestsPerSec.toFixed(0), ms(r.p50Ms, opts.tool), ms(r.p99Ms, opts.tool), String(r.errors), r.target === 'berth' ? '' : ratio(berth, r)]);
  }
  for (const [name, why] of Object.entries(skipped)) rows.push([name, 'skipped', '', '', '', why]);
  const lines = table(rows);
  const header = `${opts.tool}, ${opts.connections} connections, ${opts.durationS}s per target, keep-alive, node ${process.version}, ${availableParallelism()} cpus`;
  const summary: string[] = [];
  if (berth) {
    summary.push(`berth / nginx  req/s: ${ratio(berth, byName.get('nginx'))}`);
    summary.push(`berth / direct req/s: ${ratio(berth, byName.get('direct'))}`);
  }
  if (opts.tool === 'autocannon') summary.push('autocannon reports latency in whole milliseconds; install wrk for finer percentiles.');
  return [header, '', ...lines, '', ...summary].join('\n');
}

// ---- main ---------------------------------------------------------------------------------------------

async function run(opts: Options, dir: string): Promise<void> {
  const started = await startTargets(dir, { nginx: opts.nginx, tls: null });
  const skipped = started.skipped;
  // Under berth the upstream is berth's instance: direct and nginx hit that very process.
  const targets: Target[] = [{ name: 'direct', port: started.upstreamPort }];
  if (started.berth) targets.push({ name: 'berth', port: started.berth.port });
  if (started.nginx) targets.push({ name: 'nginx', port: started.nginx.port });

  const warmupS = Math.max(1, Math.min(3, Math.round(opts.durationS / 5)));
  const results: Measurement[] = [];
  for (const target of targets) {
    note(`${target.name}: warming up ${warmupS}s, then measuring ${opts.durationS}s on 127.0.0.1:${target.port}`);
    await measure(opts, target, warmupS);
    results.push(await measure(opts, target, opts.durationS));
  }
  if (opts.json) process.stdout.write(JSON.stringify({ tool: opts.tool, connections: opts.connections, durationS: opts.durationS, node: process.version, results, skipped }, null, 2) + '\n');
  else process.stdout.write(report(opts, results, skipped) + '\n');
}

const budgetMs = (opts: Options): number => BERTH_READY_TIMEOUT_MS + 2 * START_TIMEOUT_MS + 3 * (opts.durationS * 1000 + 2 * 3_000 + RUN_SLACK_MS);

process.exit(await benchMain(USAGE, parseOptions, budgetMs, run));
