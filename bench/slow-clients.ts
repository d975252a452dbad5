/**
 * Slow clients: do an app's slots stay free for everyone while hostile clients hold connections open?
 * (security issue finding 4).
 *
 * The app (bench/slow-clients-app.mjs) runs 1 instance x concurrency 4 behind a berth gateway started as
 * a child (`src/main.ts start`). Against it:
 *   - `--slow-bodies` clients send a POST head with a large Content-Length, then trickle one byte a second;
 *   - `--non-readers` clients ask for `--bytes` of response and never read a byte;
 *   - `--websockets` clients open a WebSocket and stay silent.
 * Once they are all in place (the app has finished every big response, the WebSockets are open), ordinary
 * clients send `--requests` GET / over `--concurrency` keep-alive connections, while GET /_berth/health is
 * probed every 50ms. Before the attack, the same ordinary load runs alone, as a baseline.
 *
 * Reported: the ordinary requests' success and p50/p99/max latency (baseline and under attack), the
 * health probes' p50/p99/max, how many attackers were in place, and the app's own peak of requests in
 * flight (never above 4). Exit status: 0 when every ordinary request got 200 with p99 under 100ms and
 * every probe got 200, 1 when not, 2 on bad usage.
 *
 * Usage: node_modules/.bin/node bench/slow-clients.ts [--json] [--requests N] [--concurrency N]
 *        [--slow-bodies N] [--non-readers N] [--websockets N] [--bytes N]
 *
 * Everything listens on 127.0.0.1 in a temp directory, the whole run is bounded (RUN_LIMIT_MS), and the
 * gateway is stopped on exit or Ctrl-C. The attackers are exported for test/proxy/slow-clients.test.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { benchAppUser } from './app-user.ts';
import { positiveInt } from './options.ts';
import { percentile } from './percentile.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const SLOW_CLIENTS_APP = join(ROOT, 'bench/slow-clients-app.mjs');
const MAIN = join(ROOT, 'src/main.ts');
const P99_LIMIT_MS = 100;
const PROBE_INTERVAL_MS = 50;
const TRICKLE_INTERVAL_MS = 1_000;
/** The whole run, start to stop. */
const RUN_LIMIT_MS = 180_000;
const READY_TIMEOUT_MS = 60_000;
const SETTLE_TIMEOUT_MS = 60_000;

const USAGE =
  'usage: node_modules/.bin/node bench/slow-clients.ts [--json] [--requests N] [--concurrency N] [--slow-bodies N] [--non-readers N] [--websockets N] [--bytes N]';

export interface SiegeOptions {
  slowBodies: number;
  nonReaders: number;
  websockets: number;
  /** Response size each non-reader asks for. */
  bytes: number;
}

/** The hostile clients, against a gateway on 127.0.0.1:`port` serving bench/slow-clients-app.mjs. */
export class Siege {
  readonly port: number;
  readonly opts: SiegeOptions;
  /** WebSockets that got their 101. */
  websocketsOpen = 0;
  /** Slow-body clients whose connection the gateway closed (it should not, within body_timeout). */
  slowBodiesClosed = 0;
  #sockets = new Set<Socket>();
  #trickle: NodeJS.Timeout | null = null;
  #slow: Socket[] = [];

  constructor(port: number, opts: SiegeOptions) {
    this.port = port;
    this.opts = opts;
  }

  /** Opens every attacker; resolves once the WebSockets have answered (or failed). */
  async start(): Promise<void> {
    for (let i = 0; i < this.opts.slowBodies; i++) {
      const s = this.#open(`POST /upload HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 10000000\r\n\r\nx`);
      s.on('close', () => this.slowBodiesClosed++);
      this.#slow.push(s);
    }
    // One byte a second each: well inside body_timeout, so the gateway holds them as long as we like.
    this.#trickle = setInterval(() => {
      for (const s of this.#slow) if (!s.destroyed) s.write('x');
    }, TRICKLE_INTERVAL_MS);
    for (let i = 0; i < this.opts.nonReaders; i++) {
      const s = this.#open(`GET /big?bytes=${this.opts.bytes} HTTP/1.1\r\nHost: slow.test\r\n\r\n`);
      // Never reads a byte: the kernel buffers fill and the gateway's writes push back.
      s.pause();
    }
    const upgrades: Promise<void>[] = [];
    for (let i = 0; i < this.opts.websockets; i++) {
      const key = randomBytes(16).toString('base64');
      const s = this.#open(
        `GET /ws HTTP/1.1\r\nHost: slow.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
      upgrades.push(
        new Promise<void>((done) => {
          let head = '';
          const timer = setTimeout(done, 10_000);
          s.on('data', (c: Buffer) => {
            head += c.toString('latin1');
            if (head.startsWith('HTTP/1.1 101')) {
              this.websocketsOpen++;
              clearTimeout(timer);
              s.removeAllListeners('data');
              s.resume();
              done();
            } else if (head.includes('\r\n\r\n')) {
              clearTimeout(timer);
              done();
            }
          });
          s.on('close', () => {
            clearTimeout(timer);
            done();
          });
        }),
      );
    }
    await Promise.all(upgrades);
  }

  stop(): void {
    if (this.#trickle !== null) clearInterval(this.#trickle);
    this.#trickle = null;
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  #open(head: string): Socket {
    const s = connect(this.port, '127.0.0.1');
    s.on('error', () => {});
    s.write(head);
    this.#sockets.add(s);
    return s;
  }
}

export interface LoadResult {
  sent: number;
  ok: number;
  /** The first few failures. */
  failures: string[];
  /** Sorted, in ms. */
  latencies: number[];
}

/** `requests` GET `path`, `concurrency` at a time over keep-alive connections, each timed. */
export async function ordinaryLoad(port: number, requests: number, concurrency: number, path = '/'): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const result: LoadResult = { sent: 0, ok: 0, failures: [], latencies: [] };
  let next = 0;
  const worker = async () => {
    while (next < requests) {
      next++;
      result.sent++;
      const t0 = performance.now();
      try {
        const status = await get(port, path, agent, 10_000);
        if (status === 200) result.ok++;
        else if (result.failures.length < 5) result.failures.push(`status ${status}`);
      } catch (err) {
        if (result.failures.length < 5) result.failures.push((err as Error).message);
      }
      result.latencies.push(performance.now() - t0);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    agent.destroy();
  }
  result.latencies.sort((a, b) => a - b);
  return result;
}

/** GET /_berth/health every PROBE_INTERVAL_MS on a fresh connection until `stop()`. */
export class HealthProbe {
  readonly port: number;
  latencies: number[] = [];
  failures = 0;
  #timer: NodeJS.Timeout | null = null;
  #pending = new Set<Promise<void>>();

  constructor(port: number) {
    this.port = port;
  }

  start(): void {
    this.#timer = setInterval(() => {
      const t0 = performance.now();
      const p = get(this.port, '/_berth/health', false, 2_000).then(
        (status) => {
          this.latencies.push(performance.now() - t0);
          if (status !== 200) this.failures++;
        },
        () => {
          this.latencies.push(performance.now() - t0);
          this.failures++;
        },
      );
      this.#pending.add(p);
      void p.finally(() => this.#pending.delete(p));
    }, PROBE_INTERVAL_MS);
  }

  async stop(): Promise<void> {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    await Promise.all(this.#pending);
    this.latencies.sort((a, b) => a - b);
  }
}

/** One GET; resolves with the status once the body is read. */
export function get(port: number, path: string, agent: Agent | false, timeoutMs: number): Promise<number> {
  return new Promise((resolveGet, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent }, (res) => {
      res.resume();
      res.on('end', () => {
        clearTimeout(timer);
        resolveGet(res.statusCode ?? 0);
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

/** The app's own counters (GET / answers them). */
export async function appCounters(port: number): Promise<{ inFlight: number; peak: number; bigDone: number; websockets: number }> {
  return getJson({ host: '127.0.0.1', port }, '/', 5_000);
}

/** GET `path` over a fresh connection (TCP or the control socket) and parse its JSON body; rejects after `timeoutMs`. */
function getJson<T>(target: { host: string; port: number } | { socketPath: string }, path: string, timeoutMs: number): Promise<T> {
  return new Promise((resolveJson, reject) => {
    const req = request({ ...target, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        try {
          resolveJson(JSON.parse(body));
        } catch (err) {
          reject(err);
        }
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('no answer')));
    req.on('error', reject);
    req.end();
  });
}

/** The berth.yaml for the app: 1 instance x concurrency 4, everything else default. */
export function slowClientsConfig(src: string, stateDir: string, command: string): Record<string, unknown> {
  return {
    state_dir: stateDir,
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: {
      slow: {
        ...benchAppUser,
        source: src,
        processes: { web: { command, instances: 1, concurrency: 4 } },
        routes: [{ path: '/', to: 'web' }],
        health: { path: '/up', interval: '500ms' },
        queue: { max: 100, timeout: '10s' },
      },
    },
  };
}

// ---- the bench --------------------------------------------------------------------------------------

interface Options {
  json: boolean;
  requests: number;
  concurrency: number;
  siege: SiegeOptions;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      json: { type: 'boolean', default: false },
      requests: { type: 'string', default: '1000' },
      concurrency: { type: 'string', default: '4' },
      'slow-bodies': { type: 'string', default: '50' },
      'non-readers': { type: 'string', default: '50' },
      websockets: { type: 'string', default: '50' },
      bytes: { type: 'string', default: String(8 * 1024 * 1024) },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    process.exit(0);
  }
  return {
    json: values.json,
    requests: positiveInt(values.requests, '--requests', 100_000),
    concurrency: positiveInt(values.concurrency, '--concurrency', 256),
    siege: {
      slowBodies: positiveInt(values['slow-bodies'], '--slow-bodies', 1000, true),
      nonReaders: positiveInt(values['non-readers'], '--non-readers', 1000, true),
      websockets: positiveInt(values.websockets, '--websockets', 1000, true),
      bytes: positiveInt(values.bytes, '--bytes', 256 * 1024 * 1024),
    },
  };
}

function note(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await sleep(100);
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
}

function controlStatus(socketPath: string): Promise<{ state: string; listen: string[] }> {
  return getJson({ socketPath }, '/v1/status', 2_000);
}

function summary(r: LoadResult): { ok: number; sent: number; p50Ms: number; p99Ms: number; maxMs: number; failures: string[] } {
  const round = (n: number) => Math.round(n * 100) / 100;
  return {
    ok: r.ok,
    sent: r.sent,
    p50Ms: round(percentile(r.latencies, 50)),
    p99Ms: round(percentile(r.latencies, 99)),
    maxMs: round(r.latencies.at(-1) ?? 0),
    failures: r.failures,
  };
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const dir = await mkdtemp(join(tmpdir(), 'berth-slow-'));
  let child: ChildProcess | null = null;
  let siege: Siege | null = null;
  const limit = setTimeout(() => {
    note(`run limit of ${RUN_LIMIT_MS}ms passed: stopping`);
    child?.kill('SIGKILL');
    process.exit(1);
  }, RUN_LIMIT_MS);
  const onSignal = () => {
    child?.kill('SIGTERM');
    process.exit(1);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const src = join(dir, 'src');
    await mkdir(src, { recursive: true });
    await copyFile(SLOW_CLIENTS_APP, join(src, 'server.mjs'));
    const stateDir = join(dir, 'state');
    const file = join(dir, 'berth.yaml');
    await writeFile(file, YAML.stringify(slowClientsConfig(src, stateDir, `"${process.execPath}" server.mjs`)));
    note('starting berth with the app (1 instance x concurrency 4)');
    child = spawn(process.execPath, [MAIN, 'start', '--config', file], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    const socket = join(stateDir, 'control.sock');
    let port = 0;
    await waitUntil('the gateway to run', READY_TIMEOUT_MS, async () => {
      const status = await controlStatus(socket);
      if (status.state !== 'running') return false;
      port = Number(status.listen[0].slice(status.listen[0].lastIndexOf(':') + 1));
      return true;
    });
    await waitUntil('the app to be ready', READY_TIMEOUT_MS, async () => (await get(port, '/_berth/ready', false, 2_000)) === 200);

    // Warm-up (JIT, connections), so the baseline measures the steady state.
    await ordinaryLoad(port, Math.min(200, opts.requests), opts.concurrency);
    note(`baseline: ${opts.requests} requests, ${opts.concurrency} at a time`);
    const baseline = await ordinaryLoad(port, opts.requests, opts.concurrency);

    const s = opts.siege;
    note(`attack: ${s.slowBodies} slow bodies, ${s.nonReaders} non-readers of ${s.bytes} bytes, ${s.websockets} idle websockets`);
    siege = new Siege(port, s);
    const siegeStart = performance.now();
    await siege.start();
    // In place: the app has finished every big response (the clients have read none of it).
    await waitUntil('the app to finish the non-readers\' responses', SETTLE_TIMEOUT_MS, async () => (await appCounters(port)).bigDone >= s.nonReaders);
    const settledMs = performance.now() - siegeStart;

    note(`under attack: ${opts.requests} requests, ${opts.concurrency} at a time, health probed every ${PROBE_INTERVAL_MS}ms`);
    const probe = new HealthProbe(port);
    probe.start();
    const attacked = await ordinaryLoad(port, opts.requests, opts.concurrency);
    await probe.stop();
    const counters = await appCounters(port);
    const slowStillOpen = s.slowBodies - siege.slowBodiesClosed;

    const result = {
      cpus: availableParallelism(),
      node: process.version,
      app: { instances: 1, concurrency: 4, peakInFlight: counters.peak },
      attackers: {
        slowBodies: s.slowBodies,
        slowBodiesStillOpen: slowStillOpen,
        nonReaders: s.nonReaders,
        nonReaderBytes: s.bytes,
        nonReaderResponsesFinishedByApp: counters.bigDone,
        websockets: s.websockets,
        websocketsOpen: siege.websocketsOpen,
        settledMs: Math.round(settledMs),
      },
      baseline: summary(baseline),
      underAttack: summary(attacked),
      health: {
        probes: probe.latencies.length,
        failures: probe.failures,
        p50Ms: Math.round(percentile(probe.latencies, 50) * 100) / 100,
        p99Ms: Math.round(percentile(probe.latencies, 99) * 100) / 100,
        maxMs: Math.round((probe.latencies.at(-1) ?? 0) * 100) / 100,
      },
    };
    const pass =
      attacked.ok === attacked.sent && result.underAttack.p99Ms < P99_LIMIT_MS && probe.failures === 0 && counters.peak <= 4;
    if (opts.json) process.stdout.write(JSON.stringify({ ...result, pass }, null, 2) + '\n');
    else {
      const a = result.attackers;
      const line = (name: string, r: ReturnType<typeof summary>) =>
        `${name.padEnd(13)} ${`${r.ok}/${r.sent}`.padStart(11)}  p50 ${r.p50Ms.toFixed(2).padStart(7)}ms  p99 ${r.p99Ms.toFixed(2).padStart(7)}ms  max ${r.maxMs.toFixed(2).padStart(7)}ms`;
      process.stdout.write(
        [
          `slow-clients: app of 4 slots (1 instance x concurrency 4), node ${result.node}, ${result.cpus} cpus`,
          `attackers: ${a.slowBodies} slow bodies (${a.slowBodiesStillOpen} still open), ${a.nonReaders} non-readers of ${a.nonReaderBytes} bytes (app finished ${a.nonReaderResponsesFinishedByApp} of them), ${a.websocketsOpen}/${a.websockets} idle websockets open; in place after ${a.settledMs}ms`,
          '',
          `requests          200/sent`,
          line('baseline', result.baseline),
          line('under attack', result.underAttack),
          `health        ${`${result.health.probes - result.health.failures}/${result.health.probes}`.padStart(11)}  p50 ${result.health.p50Ms.toFixed(2).padStart(7)}ms  p99 ${result.health.p99Ms.toFixed(2).padStart(7)}ms  max ${result.health.maxMs.toFixed(2).padStart(7)}ms`,
          `app peak in flight: ${result.app.peakInFlight} (limit 4)`,
          ...(result.underAttack.failures.length > 0 ? [`failures: ${result.underAttack.failures.join('; ')}`] : []),
          `acceptance (all 200, p99 under ${P99_LIMIT_MS}ms, health all 200, peak <= 4): ${pass ? 'PASS' : 'FAIL'}`,
          '',
        ].join('\n'),
      );
    }
    return pass ? 0 : 1;
  } finally {
    clearTimeout(limit);
    siege?.stop();
    if (child !== null && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM');
      const kill = setTimeout(() => child?.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(kill);
    }
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
