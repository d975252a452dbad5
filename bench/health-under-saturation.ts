/**
 * Health under saturation: does a health check still answer, at once, while the app is saturated, and
 * is a busy instance left alone?
 *
 * The app (bench/blocking-app.mjs, 2 instances x concurrency 2) holds its event loop for `--block-ms`
 * on every request, so its own /up cannot answer meanwhile: in a synchronous wait by default (`--block
 * wait`: a request waiting on its database, the incident this bench reproduces), or in a busy loop
 * (`--block spin`: the instances also burn every core, so the gateway competes for the CPU). `--clients` concurrent clients send it
 * GET /block for `--duration` seconds: every slot is taken and the queue never empties (queue.max and
 * queue.timeout are sized so that clients wait rather than fail). Meanwhile GET /_berth/health and
 * GET /_berth/apps/<app>/health are probed every 100ms with a 1s timeout.
 *
 * Reported: the probes' success rate and p50/p99/max latency, the instances' restarts and unhealthy
 * marks (status and metrics), and the app's own count of the most requests each instance held at once.
 * When gunicorn and nginx are installed, the same load runs against gunicorn sync workers (as many as
 * berth's slots) behind nginx, with a 1s probe of the app's /up through nginx, for comparison.
 *
 * Usage: npx node bench/health-under-saturation.ts [--short] [--json] [--duration S] [--clients N]
 *        [--block-ms MS] [--workers N|auto] [--no-gunicorn]
 * --workers: berth's `proxy.workers` (default 1).
 * --short: 5s, 12 clients, 1s blocks. Exit status: 0 when the acceptance holds (every probe answered
 * 200 within 1s, p99 under 10ms, no restart, no unhealthy mark, no instance above its concurrency,
 * no client failed, the pool was saturated), 1 when not, 2 on bad usage.
 *
 * Everything listens on 127.0.0.1 in a temp directory, and every child is stopped on exit or Ctrl-C.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { request, type ClientRequest } from 'node:http';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { benchAppUser } from './app-user.ts';
import { UsageError, positiveInt } from './options.ts';
import { percentile } from './percentile.ts';
import { NGINX_CANDIDATES, nginxBinary } from './proxy-targets.ts';
import { ROOT, Stopped, benchMain, cleanEnv, freePort, isStopping, note, onPath, spawnChild, stopChild, stopStarted, waitUntil } from './harness.ts';

const APP = join(ROOT, 'bench/blocking-app.mjs');
const MAIN = join(ROOT, 'src/main.ts');
const APP_NAME = 'sat';
const INSTANCES = 2;
const CONCURRENCY = 2;
const CAPACITY = INSTANCES * CONCURRENCY;
const PROBE_INTERVAL_MS = 100;
const PROBE_TIMEOUT_MS = 1_000;
const P99_LIMIT_MS = 10;
/** Clients start this far apart, so the gateway sees them in the order they were sent (see Load.stop). */
const RAMP_MS = 10;
/** How often the gateway's pool levels are sampled, to show the pool was full and the queue not empty. */
const SAMPLE_MS = 250;
const READY_TIMEOUT_MS = 60_000;
const START_TIMEOUT_MS = 15_000;

const USAGE = 'usage: npx node bench/health-under-saturation.ts [--short] [--json] [--duration S] [--clients N] [--block-ms MS] [--block wait|spin] [--workers N|auto] [--no-gunicorn]';

interface Options {
  short: boolean;
  json: boolean;
  durationS: number;
  clients: number;
  blockMs: number;
  /** wait: the app's loop is stuck in a synchronous wait (a database call); spin: it burns the CPU too. */
  block: 'wait' | 'spin';
  /** berth's `proxy.workers`. */
  workers: number | 'auto';
  gunicorn: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      short: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      duration: { type: 'string' },
      clients: { type: 'string' },
      'block-ms': { type: 'string' },
      block: { type: 'string', default: 'wait' },
      workers: { type: 'string', default: '1' },
      'no-gunicorn': { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const short = values.short;
  return {
    short,
    json: values.json,
    durationS: positiveInt(values.duration ?? (short ? '5' : '30'), '--duration', 3600),
    clients: positiveInt(values.clients ?? (short ? '12' : '40'), '--clients', 1000),
    blockMs: positiveInt(values['block-ms'] ?? (short ? '1000' : '5000'), '--block-ms', 60_000),
    block: blockKind(values.block),
    workers: values.workers === 'auto' ? 'auto' : positiveInt(values.workers, '--workers', 32),
    gunicorn: !values['no-gunicorn'],
  };
}

function blockKind(text: string | undefined): 'wait' | 'spin' {
  if (text === 'wait' || text === 'spin') return text;
  throw new UsageError(`--block must be wait or spin, got "${text}"`);
}

/** queue.timeout: long enough for the last of `clients` to get a slot (FIFO), plus a margin. */
function queueTimeoutMs(opts: Options): number {
  return (Math.ceil(opts.clients / CAPACITY) + 3) * opts.blockMs;
}

/** A request can wait behind its instance's other one: headers (and busy_grace with it) must cover both. */
function headersTimeoutMs(opts: Options): number {
  return Math.max(30_000, 3 * opts.blockMs);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---- http -----------------------------------------------------------------------------------------

type Target = { port: number } | { socketPath: string };

interface Reply {
  status: number;
  body: string;
}

/** One GET over a fresh connection; rejects on error or after `timeoutMs`. */
function get(target: Target, path: string, timeoutMs: number): Promise<Reply> {
  return new Promise((resolveReply, reject) => {
    const req = request({ host: '127.0.0.1', ...target, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        clearTimeout(timer);
        resolveReply({ status: res.statusCode ?? 0, body });
      });
      res.on('error', reject);
    });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs}ms`)), timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end();
  });
}

function parseMetrics(text: string): { name: string; labels: Record<string, string>; value: number }[] {
  const out: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([\w:]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function sum(samples: ReturnType<typeof parseMetrics>, name: string, labels: Record<string, string> = {}): number {
  let n = 0;
  for (const s of samples) if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) n += s.value;
  return n;
}

// ---- probes and load ----------------------------------------------------------------------------

interface ProbeStats {
  path: string;
  sent: number;
  ok: number;
  /** Percent of probes answered 200 within the timeout. */
  successRate: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** The first few failures, for the report. */
  failures: string[];
}

/**
 * A probe every `PROBE_INTERVAL_MS` whatever the last one is doing, as a load balancer's health check
 * does; each one is a fresh connection with a `PROBE_TIMEOUT_MS` timeout. A failed probe counts its
 * time (the timeout, at most) in the latencies.
 */
class Prober {
  readonly target: Target;
  readonly path: string;
  #latencies: number[] = [];
  #ok = 0;
  #failures: string[] = [];
  #pending = new Set<Promise<void>>();
  #timer: NodeJS.Timeout | null = null;

  constructor(target: Target, path: string) {
    this.target = target;
    this.path = path;
  }

  start(): void {
    this.#timer = setInterval(() => this.#probe(), PROBE_INTERVAL_MS);
  }

  async stop(): Promise<ProbeStats> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    await Promise.all(this.#pending);
    const sorted = this.#latencies.slice().sort((a, b) => a - b);
    const sent = sorted.length;
    return {
      path: this.path,
      sent,
      ok: this.#ok,
      successRate: sent === 0 ? 0 : (100 * this.#ok) / sent,
      p50Ms: round(percentile(sorted, 50)),
      p99Ms: round(percentile(sorted, 99)),
      maxMs: round(sorted.at(-1) ?? 0),
      failures: this.#failures.slice(0, 5),
    };
  }

  #probe(): void {
    const t0 = performance.now();
    const p = get(this.target, this.path, PROBE_TIMEOUT_MS).then(
      (res) => {
        const ms = performance.now() - t0;
        this.#latencies.push(ms);
        if (res.status === 200) this.#ok++;
        else this.#failures.push(`status ${res.status} after ${round(ms)}ms`);
      },
      (err: Error) => {
        this.#latencies.push(performance.now() - t0);
        this.#failures.push(err.message);
      },
    );
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

interface LoadStats {
  clients: number;
  ok: number;
  failed: number;
  /** Queued requests the bench gave up at the end of the run. */
  aborted: number;
  failures: string[];
}

interface InFlight {
  sentAt: number;
  req: ClientRequest;
  aborting: boolean;
}

/**
 * `clients` loops of GET `path`, one request each at a time. stop() ends the run without disturbing
 * what it measures: the newest requests (necessarily still queued, admission being FIFO) are given up
 * at once, the oldest `keep` are let finish. Giving up an admitted request would free its slot at the
 * gateway while its instance still works on it, and the app would count one more than the gateway let in.
 */
class Load {
  #port: number;
  #path: string;
  #clients: number;
  #timeoutMs: number;
  #stopped = false;
  #loops: Promise<void>[] = [];
  #inFlight = new Set<InFlight>();
  #stats: LoadStats;

  constructor(port: number, path: string, clients: number, timeoutMs: number) {
    this.#port = port;
    this.#path = path;
    this.#clients = clients;
    this.#timeoutMs = timeoutMs;
    this.#stats = { clients, ok: 0, failed: 0, aborted: 0, failures: [] };
  }

  start(): void {
    for (let i = 0; i < this.#clients; i++) this.#loops.push(this.#loop(i * RAMP_MS));
  }

  async stop(keep: number): Promise<LoadStats> {
    this.#stopped = true;
    const newestFirst = [...this.#inFlight].sort((a, b) => b.sentAt - a.sentAt);
    for (const r of newestFirst.slice(0, Math.max(0, newestFirst.length - keep))) {
      r.aborting = true;
      r.req.destroy();
    }
    await Promise.all(this.#loops);
    return this.#stats;
  }

  async #loop(delayMs: number): Promise<void> {
    await sleep(delayMs);
    while (!this.#stopped) await this.#one();
  }

  #one(): Promise<void> {
    return new Promise((done) => {
      const entry: InFlight = { sentAt: performance.now(), req: null!, aborting: false };
      const finish = (failure: string | null) => {
        clearTimeout(timer);
        this.#inFlight.delete(entry);
        if (failure === null) this.#stats.ok++;
        else if (entry.aborting) this.#stats.aborted++;
        else {
          this.#stats.failed++;
          if (this.#stats.failures.length < 5) this.#stats.failures.push(failure);
        }
        done();
      };
      entry.req = request({ host: '127.0.0.1', port: this.#port, path: this.#path, agent: false }, (res) => {
        res.resume();
        res.on('end', () => finish(res.statusCode === 200 ? null : `status ${res.statusCode} (${res.headers['x-berth-reason'] ?? 'from the app'})`));
        res.on('error', (err) => finish(err.message));
      });
      const timer = setTimeout(() => entry.req.destroy(new Error(`no answer within ${this.#timeoutMs}ms`)), this.#timeoutMs);
      entry.req.on('error', (err) => finish(err.message));
      entry.req.end();
      this.#inFlight.add(entry);
    });
  }
}

// ---- berth -----------------------------------------------------------------------------------------

interface InstanceResult {
  instance: string;
  pid: number;
  /** The app's own count: the most requests this instance held at once. */
  maxInFlight: number;
  served: number;
  restarts: number;
  state: string;
}

interface BerthResult {
  probes: ProbeStats[];
  load: LoadStats;
  /** Highest levels the samples saw: the pool's in-flight (of CAPACITY) and queue depth. */
  maxInFlight: number;
  maxQueueDepth: number;
  instances: InstanceResult[];
  /** Instance slots whose process changed during the run (replaced or restarted). */
  replaced: string[];
  restarts: number;
  unhealthyMarks: number;
  /** berth's own probes of the instances, by result (busy: failed while busy, not counted). */
  instanceProbes: { ok: number; failed: number; busy: number };
}


async function runBerth(opts: Options, dir: string): Promise<BerthResult> {
  const port = await freePort();
  const source = join(dir, 'app');
  await mkdir(source, { recursive: true });
  // The command is absolute, so the release needs no files of its own; a deploy source must still exist.
  await writeFile(join(source, 'README'), 'The saturation bench app: its command runs bench/blocking-app.mjs from the repository.\n');
  const stateDir = join(dir, 'state');
  const config = {
    state_dir: stateDir,
    listen: [`127.0.0.1:${port}`],
    log_levels: { root: 'warn' },
    ...(opts.workers === 1 ? {} : { proxy: { workers: opts.workers } }),
    apps: {
      [APP_NAME]: {
        ...benchAppUser,
        source,
        processes: { web: { command: `"${process.execPath}" "${APP}"`, instances: INSTANCES, concurrency: CONCURRENCY } },
        routes: [{ path: '/', to: 'web' }],
        // Probed often, so a wrong verdict would show; busy_grace is timeouts.headers (the default).
        health: { path: '/up', interval: '500ms', timeout: '400ms', unhealthy_after: 3 },
        queue: { max: opts.clients, timeout: `${queueTimeoutMs(opts)}ms` },
        timeouts: { headers: `${headersTimeoutMs(opts)}ms` },
        db_connections: CAPACITY,
      },
    },
  };
  const file = join(dir, 'berth.yaml');
  await writeFile(file, YAML.stringify(config));
  const control = { socketPath: join(stateDir, 'control.sock') };
  const berth = spawnChild('berth', process.execPath, [MAIN, 'start', '--config', file], { env: cleanEnv(), log: join(dir, 'berth.log'), stopSignal: 'SIGTERM' });
  await waitUntil('GET /_berth/ready to answer 200', READY_TIMEOUT_MS, async () => (await get({ port }, '/_berth/ready', 2_000)).status === 200, berth);

  const appStatus = async () => JSON.parse((await get(control, `/v1/apps/${APP_NAME}`, 5_000)).body);
  const metrics = async () => parseMetrics((await get(control, '/metrics', 5_000)).body);
  const before = new Map<string, number>();
  for (const i of (await appStatus()).generations[0].instances) before.set(`${i.process}.${i.index}`, i.pid);

  const probers = [new Prober({ port }, '/_berth/health'), new Prober({ port }, `/_berth/apps/${APP_NAME}/health`)];
  const load = new Load(port, `/block?ms=${opts.blockMs}&how=${opts.block}`, opts.clients, queueTimeoutMs(opts) + 4 * opts.blockMs + 10_000);
  let maxInFlight = 0;
  let maxQueueDepth = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const m = await metrics().catch(() => []);
      maxInFlight = Math.max(maxInFlight, sum(m, 'berth_pool_in_flight', { app: APP_NAME }));
      maxQueueDepth = Math.max(maxQueueDepth, sum(m, 'berth_pool_queue_depth', { app: APP_NAME }));
      await sleep(SAMPLE_MS);
    }
  })();

  note(`berth: ${opts.clients} clients x GET /block?ms=${opts.blockMs} for ${opts.durationS}s, probing every ${PROBE_INTERVAL_MS}ms`);
  load.start();
  for (const p of probers) p.start();
  await sleep(opts.durationS * 1000);
  if (isStopping()) throw new Stopped('stopping');
  const probes = await Promise.all(probers.map((p) => p.stop()));
  sampling = false;
  await sampler;
  note('berth: letting the admitted requests finish');
  const loadStats = await load.stop(2 * CAPACITY);
  // The instances answer /stats once they are done with their last block.
  await waitUntil('the pool to drain', 4 * opts.blockMs + 10_000, async () => sum(await metrics(), 'berth_pool_in_flight', { app: APP_NAME }) === 0, berth);

  const after = await appStatus();
  const instances: InstanceResult[] = [];
  const replaced: string[] = [];
  for (const i of after.generations.flatMap((g: { instances: unknown[] }) => g.instances) as {
    process: string;
    index: number;
    pid: number;
    state: string;
    restarts: number;
    address: string;
  }[]) {
    const name = `${i.process}.${i.index}`;
    if (before.get(name) !== i.pid) replaced.push(name);
    // Straight to the instance ("127.0.0.1:port"), not through the gateway.
    const instancePort = Number(i.address.slice(i.address.lastIndexOf(':') + 1));
    const stats = JSON.parse((await get({ port: instancePort }, '/stats', 4 * opts.blockMs + 5_000).catch(() => ({ status: 0, body: '{}' }))).body);
    instances.push({ instance: name, pid: i.pid, maxInFlight: stats.maxInFlight ?? -1, served: stats.served ?? -1, restarts: i.restarts, state: i.state });
  }
  const m = await metrics();
  const result: BerthResult = {
    probes,
    load: loadStats,
    maxInFlight,
    maxQueueDepth,
    instances,
    replaced,
    restarts: Math.max(sum(m, 'berth_instance_restarts_total', { app: APP_NAME }), instances.reduce((n, i) => n + i.restarts, 0)),
    unhealthyMarks: sum(m, 'berth_instance_unhealthy_total', { app: APP_NAME }),
    instanceProbes: {
      ok: sum(m, 'berth_health_probes_total', { app: APP_NAME, result: 'ok' }),
      failed: sum(m, 'berth_health_probes_total', { app: APP_NAME, result: 'failed' }),
      busy: sum(m, 'berth_health_probes_total', { app: APP_NAME, result: 'busy' }),
    },
  };
  await stopChild(berth);
  return result;
}

// ---- gunicorn + nginx ------------------------------------------------------------------------------

interface ComparisonResult {
  workers: number;
  probe: ProbeStats;
  load: LoadStats;
}

const WSGI_APP = `# Written by bench/health-under-saturation.ts for one run: the blocking app as a WSGI callable.
import json
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    path = environ.get('PATH_INFO', '/')
    if path == '/up':
        body = b'{"ok": true}'
    elif path == '/block':
        query = parse_qs(environ.get('QUERY_STRING', ''))
        ms = min(float(query.get('ms', ['1000'])[0]), 60000)
        if query.get('how', ['wait'])[0] == 'spin':
            until = time.monotonic() + ms / 1000
            while time.monotonic() < until:
                pass
        else:
            # A sync worker waiting on its database: the worker is held, the CPU is free.
            time.sleep(ms / 1000)
        body = json.dumps({'ms': ms}).encode()
    else:
        start_response('404 Not Found', [('Content-Type', 'application/json')])
        return [b'{"error": "not found"}']
    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])
    return [body]
`;

async function runGunicorn(opts: Options, dir: string, gunicorn: string, nginx: string): Promise<ComparisonResult> {
  const appDir = join(dir, 'wsgi');
  await mkdir(appDir, { recursive: true });
  await writeFile(join(appDir, 'blocking_wsgi.py'), WSGI_APP);
  const appPort = await freePort();
  const workerTimeoutS = Math.ceil((queueTimeoutMs(opts) + 4 * opts.blockMs) / 1000);
  // As many sync workers as berth has slots: one request each.
  const g = spawnChild(
    'gunicorn',
    gunicorn,
    ['--workers', String(CAPACITY), '--worker-class', 'sync', '--bind', `127.0.0.1:${appPort}`, '--timeout', String(workerTimeoutS), '--graceful-timeout', '1', '--chdir', appDir, 'blocking_wsgi:app'],
    { log: join(dir, 'gunicorn.log'), stopSignal: 'SIGTERM' },
  );
  await waitUntil('gunicorn to answer /up', START_TIMEOUT_MS, async () => (await get({ port: appPort }, '/up', 1_000)).status === 200, g);
  const prefix = join(dir, 'nginx');
  await mkdir(prefix, { recursive: true });
  const port = await freePort();
  await writeFile(
    join(prefix, 'nginx.conf'),
    `# written by bench/health-under-saturation.ts for one run
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
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://127.0.0.1:${appPort};
      proxy_read_timeout ${workerTimeoutS}s;
    }
  }
}
`,
  );
  const n = spawnChild('nginx', nginx, ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-e', join(prefix, 'error.log')], {
    log: join(prefix, 'stdout.log'),
    stopSignal: 'SIGQUIT',
  });
  await waitUntil('nginx to proxy /up', START_TIMEOUT_MS, async () => (await get({ port }, '/up', 1_000)).status === 200, n);

  note(`gunicorn: ${opts.clients} clients x GET /block?ms=${opts.blockMs} through nginx for ${opts.durationS}s, probing /up every ${PROBE_INTERVAL_MS}ms`);
  const prober = new Prober({ port }, '/up');
  const load = new Load(port, `/block?ms=${opts.blockMs}&how=${opts.block}`, opts.clients, queueTimeoutMs(opts) + 4 * opts.blockMs + 10_000);
  load.start();
  prober.start();
  await sleep(opts.durationS * 1000);
  if (isStopping()) throw new Stopped('stopping');
  const probe = await prober.stop();
  // Nothing of gunicorn's is measured after this: give every request up and stop it.
  const loadStats = await load.stop(0);
  await stopChild(n);
  await stopChild(g);
  return { workers: CAPACITY, probe, load: loadStats };
}

// ---- report ----------------------------------------------------------------------------------------

interface Result {
  options: { clients: number; blockMs: number; block: 'wait' | 'spin'; durationS: number; instances: number; concurrency: number; queueMax: number; queueTimeoutMs: number };
  node: string;
  cpus: number;
  /** 1-minute load average before the run and after it: the probes' latency depends on spare CPU. */
  loadAverage: { before: number; after: number };
  berth: BerthResult;
  gunicorn: ComparisonResult | null;
  gunicornSkipped: string | null;
  acceptance: { passed: boolean; failures: string[] };
}

/** Every way the run can fail its acceptance, in words; empty when it holds. */
function acceptance(b: BerthResult): string[] {
  const failures: string[] = [];
  for (const p of b.probes) {
    if (p.successRate < 100) failures.push(`${p.path}: ${p.sent - p.ok} of ${p.sent} probes failed (${p.failures.join('; ')})`);
    if (p.p99Ms >= P99_LIMIT_MS) failures.push(`${p.path}: p99 ${p.p99Ms}ms, not under ${P99_LIMIT_MS}ms`);
  }
  if (b.restarts > 0) failures.push(`${b.restarts} instance restarts`);
  if (b.unhealthyMarks > 0) failures.push(`${b.unhealthyMarks} instances marked unhealthy`);
  if (b.replaced.length > 0) failures.push(`replaced during the run: ${b.replaced.join(', ')}`);
  for (const i of b.instances) {
    if (i.maxInFlight < 0) failures.push(`${i.instance}: its /stats could not be read`);
    else if (i.maxInFlight > CONCURRENCY) failures.push(`${i.instance} held ${i.maxInFlight} requests at once, more than its concurrency ${CONCURRENCY}`);
  }
  if (b.load.failed > 0) failures.push(`${b.load.failed} client requests failed (${b.load.failures.join('; ')})`);
  if (b.maxInFlight < CAPACITY || b.maxQueueDepth === 0) {
    failures.push(`the pool was not saturated (in flight at most ${b.maxInFlight} of ${CAPACITY}, queue depth at most ${b.maxQueueDepth})`);
  }
  return failures;
}

function report(r: Result): string {
  const o = r.options;
  const b = r.berth;
  const lines = [
    `health under saturation: ${o.clients} clients x GET /block?ms=${o.blockMs}&how=${o.block} for ${o.durationS}s; app ${o.instances} instances x concurrency ${o.concurrency}; queue max ${o.queueMax}, timeout ${o.queueTimeoutMs}ms`,
    `node ${r.node}, ${r.cpus} cpus, load average ${r.loadAverage.before.toFixed(2)} before, ${r.loadAverage.after.toFixed(2)} after; probes every ${PROBE_INTERVAL_MS}ms, ${PROBE_TIMEOUT_MS}ms timeout, fresh connection each`,
    '',
    'berth',
    `  saturation   in flight up to ${b.maxInFlight} of ${CAPACITY}, queue depth up to ${b.maxQueueDepth}; clients: ${b.load.ok} ok, ${b.load.failed} failed, ${b.load.aborted} given up while queued at the end`,
  ];
  const table = [['probe', 'sent', 'success', 'p50', 'p99', 'max']];
  const row = (name: string, p: ProbeStats) => [name, String(p.sent), `${p.successRate.toFixed(1)}%`, `${p.p50Ms}ms`, `${p.p99Ms}ms`, `${p.maxMs}ms`];
  for (const p of b.probes) table.push(row(`GET ${p.path}`, p));
  if (r.gunicorn) table.push(row(`gunicorn+nginx GET ${r.gunicorn.probe.path}`, r.gunicorn.probe));
  const widths = table[0].map((_, i) => Math.max(...table.map((t) => t[i].length)));
  for (const t of table) lines.push('  ' + t.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  '));
  for (const i of b.instances) {
    lines.push(`  ${i.instance.padEnd(6)}       pid ${i.pid}, ${i.state}: held at most ${i.maxInFlight} at once (concurrency ${CONCURRENCY}), served ${i.served}, ${i.restarts} restarts`);
  }
  lines.push(
    `  marks        ${b.unhealthyMarks} unhealthy, ${b.restarts} restarts, ${b.replaced.length} replaced; berth's own probes of the instances: ${b.instanceProbes.ok} ok, ${b.instanceProbes.busy} failed while busy (not counted), ${b.instanceProbes.failed} failed`,
  );
  lines.push('');
  if (r.gunicorn) {
    const g = r.gunicorn;
    lines.push(
      `gunicorn, ${g.workers} sync workers behind nginx: /up answered ${g.probe.successRate.toFixed(1)}% (berth: ${b.probes.map((p) => `${p.successRate.toFixed(1)}%`).join(' and ')}); clients: ${g.load.ok} ok, ${g.load.failed} failed`,
    );
  } else lines.push(`gunicorn+nginx comparison skipped: ${r.gunicornSkipped}`);
  lines.push('', r.acceptance.passed ? 'acceptance: PASS' : `acceptance: FAIL\n${r.acceptance.failures.map((f) => `  - ${f}`).join('\n')}`);
  return lines.join('\n');
}

// ---- main ---------------------------------------------------------------------------------------------

async function run(opts: Options, dir: string): Promise<boolean> {
  const loadBefore = loadavg()[0];
  const berth = await runBerth(opts, dir);
  const loadAfter = loadavg()[0];
  let gunicorn: ComparisonResult | null = null;
  let gunicornSkipped: string | null = null;
  const gunicornBin = onPath('gunicorn');
  const nginxBin = nginxBinary();
  if (!opts.gunicorn) gunicornSkipped = '--no-gunicorn';
  else if (gunicornBin === null) gunicornSkipped = 'gunicorn is not installed (not on PATH)';
  else if (nginxBin === null) gunicornSkipped = `nginx is not installed (${NGINX_CANDIDATES[0]})`;
  else {
    try {
      gunicorn = await runGunicorn(opts, dir, gunicornBin, nginxBin);
    } catch (err) {
      if (err instanceof Stopped) throw err;
      note(`gunicorn comparison failed: ${(err as Error).message}`);
      gunicornSkipped = `did not run: ${(err as Error).message.split('\n')[0]}`;
      await stopStarted();
    }
  }
  const failures = acceptance(berth);
  const result: Result = {
    options: {
      clients: opts.clients,
      blockMs: opts.blockMs,
      block: opts.block,
      durationS: opts.durationS,
      instances: INSTANCES,
      concurrency: CONCURRENCY,
      queueMax: opts.clients,
      queueTimeoutMs: queueTimeoutMs(opts),
    },
    node: process.version,
    cpus: availableParallelism(),
    loadAverage: { before: round(loadBefore), after: round(loadAfter) },
    berth,
    gunicorn,
    gunicornSkipped,
    acceptance: { passed: failures.length === 0, failures },
  };
  process.stdout.write(opts.json ? JSON.stringify(result, null, 2) + '\n' : report(result) + '\n');
  return result.acceptance.passed;
}

/** Start-up, berth's run and the comparison's, each with its drain and stops. */
const budgetMs = (opts: Options): number => {
  const perRunMs = opts.durationS * 1000 + queueTimeoutMs(opts) + 8 * opts.blockMs + 30_000;
  return READY_TIMEOUT_MS + 2 * START_TIMEOUT_MS + 2 * perRunMs;
};

if (import.meta.main) process.exit(await benchMain(USAGE, parseOptions, budgetMs, async (opts, dir) => ((await run(opts, dir)) ? 0 : 1)));
