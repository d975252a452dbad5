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
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { benchAppUser } from './app-user.ts';
import { UsageError, positiveInt } from './options.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const UPSTREAM = join(ROOT, 'bench/upstream.mjs');
const MAIN = join(ROOT, 'src/main.ts');
const NGINX_CANDIDATES = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx'];
/** The first start deploys the bench app (copy, spawn, health check) before /_berth/ready turns 200. */
const BERTH_READY_TIMEOUT_MS = 60_000;
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 15_000;
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

function onPath(command: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, command))) return join(dir, command);
  }
  return null;
}

function note(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

// ---- children: tracked so every exit path stops them --------------------------------------------

interface Child {
  name: string;
  proc: ChildProcess;
  /** Signal for a graceful stop (berth drains; nginx's QUIT waits for requests in flight). */
  stopSignal: NodeJS.Signals;
  exited: Promise<void>;
  log: string | null;
}

const children: Child[] = [];
/** Set once cleanup begins: nothing new may start after that (a load run ending early must not start the next). */
let stopping = false;

class Stopped extends Error {}

function running(child: Child): boolean {
  return child.proc.exitCode === null && child.proc.signalCode === null;
}

/** Spawns in its own process group, with output to a log file (a pipe nobody reads would stall it). */
function spawnChild(name: string, command: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; log: string | null; stopSignal: NodeJS.Signals }): Child {
  if (stopping) throw new Stopped('stopping');
  const fd = opts.log === null ? 'ignore' : openSync(opts.log, 'a');
  const proc = spawn(command, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: ['ignore', fd, fd], detached: true });
  if (typeof fd === 'number') closeSync(fd);
  const exited = new Promise<void>((r) => {
    proc.once('exit', () => r());
    proc.once('error', () => r());
  });
  const child: Child = { name, proc, stopSignal: opts.stopSignal, exited, log: opts.log };
  children.push(child);
  return child;
}

function signalGroup(child: Child, signal: NodeJS.Signals): void {
  if (!running(child) || child.proc.pid === undefined) return;
  try {
    process.kill(-child.proc.pid, signal);
  } catch {
    // Gone already.
  }
}

/** Graceful stop with a deadline, then SIGKILL to the group. */
async function stopChild(child: Child): Promise<void> {
  if (!running(child)) return;
  // berth must get the signal itself (not its group) so it can stop its apps in order.
  try {
    child.proc.kill(child.stopSignal);
  } catch {
    // Gone already.
  }
  const timer = setTimeout(() => signalGroup(child, 'SIGKILL'), STOP_TIMEOUT_MS);
  await child.exited;
  clearTimeout(timer);
}

async function stopAll(): Promise<void> {
  // Reverse start order: nginx and the load tool before berth, which owns the upstream.
  for (const child of [...children].reverse()) await stopChild(child);
}

function tail(file: string | null, lines = 20): string {
  if (file === null || !existsSync(file)) return '';
  return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
}

// ---- helpers --------------------------------------------------------------------------------------

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

function getStatus(port: number, path: string): Promise<number> {
  return new Promise((resolveStatus) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: 2_000 }, (res) => {
      res.resume();
      resolveStatus(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolveStatus(0));
    req.end();
  });
}

/** Polls until `check` is true; fails early when `child` exits, and at the deadline. */
async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>, child?: Child): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && !running(child)) throw new Error(`${child.name} exited (${child.proc.exitCode ?? child.proc.signalCode}) before ${what}\n${tail(child.log)}`);
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}${child ? `\n${tail(child.log)}` : ''}`);
}

async function readPortFile(file: string, child: Child): Promise<number> {
  let port = 0;
  await waitUntil('the upstream port file', START_TIMEOUT_MS, async () => {
    const text = await readFile(file, 'utf8').catch(() => '');
    port = Number(text);
    return Number.isInteger(port) && port > 0;
  }, child);
  return port;
}

// ---- the three targets ------------------------------------------------------------------------------

/** Environment for children without BERTH_* overrides from the caller's shell, which would change the config. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('BERTH_')) env[k] = v;
  return { ...env, ...extra };
}

async function startBerth(dir: string, portFile: string): Promise<{ child: Child; port: number }> {
  const port = await freePort();
  const source = join(dir, 'bench-app');
  await mkdir(source, { recursive: true });
  // The command is absolute, so the release needs no files of its own; a deploy source must still exist.
  await writeFile(join(source, 'README'), 'The proxy bench app: its command runs bench/upstream.mjs from the repository.\n');
  const config = {
    state_dir: join(dir, 'state'),
    listen: [`127.0.0.1:${port}`],
    log_levels: { root: 'warn' },
    apps: {
      bench: {
        ...benchAppUser,
        source,
        env: { BENCH_PORT_FILE: portFile },
        processes: { web: { command: `"${process.execPath}" "${UPSTREAM}"`, instances: 1, concurrency: 64 } },
        routes: [{ path: '/', to: 'web' }],
        health: { path: '/up' },
        queue: { max: 128, timeout: '10s' },
        db_connections: 64,
      },
    },
  };
  const file = join(dir, 'berth.yaml');
  await writeFile(file, YAML.stringify(config));
  const child = spawnChild('berth', process.execPath, [MAIN, 'start', '--config', file], { env: cleanEnv(), log: join(dir, 'berth.log'), stopSignal: 'SIGTERM' });
  await waitUntil('GET /_berth/ready to answer 200', BERTH_READY_TIMEOUT_MS, async () => (await getStatus(port, '/_berth/ready')) === 200, child);
  return { child, port };
}

function nginxBinary(): string | null {
  return NGINX_CANDIDATES.find((p) => existsSync(p)) ?? null;
}

async function startNginx(binary: string, dir: string, upstreamPort: number): Promise<number> {
  const prefix = join(dir, 'nginx');
  await mkdir(prefix, { recursive: true });
  const port = await freePort();
  const conf = `# written by bench/proxy.ts for one run
daemon off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  upstream bench_upstream {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }
  }
}
`;
  await writeFile(join(prefix, 'nginx.conf'), conf);
  // -e: the compiled-in error log (/var/log/nginx) may not be writable; the config's one takes over once read.
  const child = spawnChild('nginx', binary, ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-e', join(prefix, 'error.log')], {
    log: join(prefix, 'stdout.log'),
    stopSignal: 'SIGQUIT',
  });
  child.log = join(prefix, 'error.log');
  await waitUntil('nginx to proxy GET /', START_TIMEOUT_MS, async () => (await getStatus(port, '/')) === 200, child);
  return port;
}

// ---- load tools ----------------------------------------------------------------------------------

/** "1.23ms", "456.00us", "1.5s", "2m" -> milliseconds. */
function wrkDuration(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text);
  if (!m) throw new Error(`unexpected wrk duration "${text}"`);
  const factor = { us: 0.001, ms: 1, s: 1_000, m: 60_000 }[m[2] as 'us' | 'ms' | 's' | 'm'];
  return Number(m[1]) * factor;
}

function parseWrk(target: TargetName, out: string): Measurement {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const p50 = /^\s+50%\s+(\S+)/m.exec(out);
  const p99 = /^\s+99%\s+(\S+)/m.exec(out);
  if (!rps || !p50 || !p99) throw new Error(`could not read wrk's output:\n${out}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = socket ? socket.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0;
  return { target, requestsPerSec: Number(rps[1]), p50Ms: wrkDuration(p50[1]), p99Ms: wrkDuration(p99[1]), errors: non2xx + socketErrors };
}

async function runWrk(target: Target, durationS: number, connections: number): Promise<Measurement> {
  // Leave cores for the proxy and the upstream: the load generator competes with them on one machine.
  const threads = Math.max(1, Math.min(connections, Math.floor(availableParallelism() / 2)));
  const args = ['-t', String(threads), '-c', String(connections), '-d', `${durationS}s`, '--timeout', '5s', '--latency', `http://127.0.0.1:${target.port}/`];
  if (stopping) throw new Stopped('stopping');
  const proc = spawn('wrk', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const child: Child = { name: 'wrk', proc, stopSignal: 'SIGINT', exited: new Promise((r) => proc.once('exit', () => r())), log: null };
  children.push(child);
  let out = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c));
  proc.stderr!.on('data', (c: Buffer) => (out += c));
  const timer = setTimeout(() => proc.kill('SIGKILL'), durationS * 1000 + RUN_SLACK_MS);
  await child.exited;
  clearTimeout(timer);
  children.splice(children.indexOf(child), 1);
  if (stopping) throw new Stopped('stopping');
  if (proc.exitCode !== 0) throw new Error(`wrk failed (${proc.exitCode ?? proc.signalCode}):\n${out}`);
  return parseWrk(target.name, out);
}

let autocannon: Autocannon | null = null;

async function runAutocannon(target: Target, durationS: number, connections: number): Promise<Measurement> {
  autocannon ??= createRequire(import.meta.url)('autocannon') as Autocannon;
  if (stopping) throw new Stopped('stopping');
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
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const lines = rows.map((row) => row.map((cell, i) => (i === 0 || i === row.length - 1 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
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
  const portFile = join(dir, 'upstream.port');
  const targets: Target[] = [];
  const skipped: Record<string, string> = {};
  let upstream: Child;

  note('starting berth with the bench app');
  try {
    const berth = await startBerth(dir, portFile);
    upstream = berth.child;
    targets.push({ name: 'berth', port: berth.port });
  } catch (err) {
    note(`berth did not start, measuring without it: ${(err as Error).message}`);
    skipped.berth = 'did not start (see above)';
    for (const child of children.splice(0)) await stopChild(child);
    upstream = spawnChild('upstream', process.execPath, [UPSTREAM], { env: cleanEnv({ PORT: '0', BENCH_PORT_FILE: portFile }), log: join(dir, 'upstream.log'), stopSignal: 'SIGTERM' });
  }
  // Under berth the upstream is berth's instance: direct and nginx hit that very process.
  const upstreamPort = await readPortFile(portFile, upstream);
  targets.unshift({ name: 'direct', port: upstreamPort });

  const nginx = nginxBinary();
  if (!opts.nginx) skipped.nginx = '--no-nginx';
  else if (nginx === null) skipped.nginx = `not installed (${NGINX_CANDIDATES[0]})`;
  else {
    note(`starting ${nginx}`);
    try {
      targets.push({ name: 'nginx', port: await startNginx(nginx, dir, upstreamPort) });
    } catch (err) {
      note(`nginx did not start: ${(err as Error).message}`);
      skipped.nginx = 'did not start (see above)';
    }
  }

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

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const dir = await mkdtemp(join(tmpdir(), 'berth-bench-'));
  let cleaning: Promise<void> | null = null;
  let exitCode: number | null = null;
  /** The first caller's status wins: a signal's 130 is not turned into a failure by the run it interrupted. */
  const cleanup = async (code: number): Promise<never> => {
    stopping = true;
    exitCode ??= code;
    cleaning ??= stopAll().then(() => rm(dir, { recursive: true, force: true }));
    await cleaning;
    process.exit(exitCode);
  };
  const onSignal = (code: number): void => {
    // A second Ctrl-C while cleaning up means "now": kill everything outright.
    if (cleaning) {
      for (const child of children) signalGroup(child, 'SIGKILL');
      process.exit(code);
    }
    void cleanup(code);
  };
  process.on('SIGINT', () => onSignal(130));
  process.on('SIGTERM', () => onSignal(143));
  // Last resort if we die without cleaning up (an uncaught error): no child may outlive the bench.
  process.once('exit', () => {
    for (const child of children) signalGroup(child, 'SIGKILL');
  });
  const budgetMs = BERTH_READY_TIMEOUT_MS + 2 * START_TIMEOUT_MS + 3 * (opts.durationS * 1000 + 2 * 3_000 + RUN_SLACK_MS);
  setTimeout(() => {
    note(`overall deadline of ${Math.round(budgetMs / 1000)}s passed, stopping`);
    void cleanup(1);
  }, budgetMs).unref();
  try {
    await run(opts, dir);
    await cleanup(0);
  } catch (err) {
    // Stopped: a signal handler is already cleaning up and will exit with its own status.
    if (!(err instanceof Stopped) && !stopping) note((err as Error).message);
    await cleanup(1);
  }
  return 0;
}

process.exit(await main());
