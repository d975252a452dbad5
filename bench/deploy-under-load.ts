/**
 * Zero-downtime deploys under load, measured: a berth gateway (src/main.ts start, as a child process)
 * serving a 2-instance app (examples/node-app) while it goes through 20 deploys (alternating two source
 * trees that differ by a VERSION file), 10 reloads and 5 rollbacks, one after the other, through the
 * control API. Meanwhile N clients (default 200) send requests without pause: three in four on
 * keep-alive connections, one in four on a fresh connection per request; half `GET /` (whose answer
 * names the release and pid that served it), half `POST /echo` with a body that must come back intact.
 *
 * Reports the total and failed requests (non-2xx, resets, timeouts, wrong echo), latency, and for every
 * switch the time from the switch event to the first request served by the new generation (found by the
 * release and pid in the answer, or the X-Berth-Release response header when the gateway sends one).
 * Exits 1 when any request or operation failed.
 *
 * With `--https` the clients speak HTTPS (HTTP/1.1, TLS 1.3) to a TLS listener whose certificate a CA
 * made for the run signs, so the fresh-connection clients each pay a full handshake per request.
 *
 * Anchor: when nginx and gunicorn are both on PATH, the same load runs against gunicorn (bench/anchor_app.py)
 * behind nginx (over TLS with the same certificate under `--https`), with as many `kill -HUP` reloads as
 * berth had operations, and its failures print beside berth's. Otherwise the report says the anchor was
 * skipped and why.
 *
 * Usage: npx node bench/deploy-under-load.ts [--short] [--json] [--https] [--workers N|auto] [--clients N]
 *          [--deploys N] [--reloads N] [--rollbacks N] [--min-requests N] [--max-seconds S] [--no-anchor]
 * --workers: berth's `proxy.workers` (default 1).
 */
import { readFileSync } from 'node:fs';
import { cp, mkdir, writeFile } from 'node:fs/promises';
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { createCa, issueCertificate } from '../test/helpers/certificates.ts';
import { benchAppUser } from './app-user.ts';
import { ROOT, benchMain, cleanEnv, freePort, getStatus, note, onPath, spawnChild, stopChild, waitUntil, type Child } from './harness.ts';
import { UsageError } from './options.ts';
import { nginxBinary } from './proxy-targets.ts';

const MAIN = join(ROOT, 'src/main.ts');
const APP_SOURCE = join(ROOT, 'examples/node-app');
const ANCHOR_APP_DIR = join(ROOT, 'bench');
const APP = 'bench';
/** A request without an answer by then counts as failed (timeout). */
const REQUEST_TIMEOUT_MS = 10_000;
const START_TIMEOUT_MS = 60_000;
/** Load before the first operation and after the last one. */
const SETTLE_MS = 1_000;

const USAGE =
  'usage: npx node bench/deploy-under-load.ts [--short] [--json] [--https] [--workers N|auto] [--clients N] [--deploys N] [--reloads N] [--rollbacks N] [--min-requests N] [--max-seconds S] [--no-anchor]';
/** The name the run's certificate is made for, and the SNI and Host the HTTPS clients send. */
const TLS_NAME = 'localhost';

interface Options {
  short: boolean;
  json: boolean;
  https: boolean;
  /** berth's `proxy.workers`. */
  workers: number | 'auto';
  clients: number;
  deploys: number;
  reloads: number;
  rollbacks: number;
  /** The load goes on after the operations until this many requests were sent (bounded by maxSeconds). */
  minRequests: number;
  /** Hard bound on the load phase; operations still running then count as failed. */
  maxSeconds: number;
  anchor: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      short: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      https: { type: 'boolean', default: false },
      workers: { type: 'string', default: '1' },
      clients: { type: 'string' },
      deploys: { type: 'string' },
      reloads: { type: 'string' },
      rollbacks: { type: 'string' },
      'min-requests': { type: 'string' },
      'max-seconds': { type: 'string' },
      'no-anchor': { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const short = values.short;
  const int = (text: string | undefined, fallback: number, flag: string, min: number, max: number): number => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!/^\d+$/.test(text) || n < min || n > max) throw new UsageError(`--${flag} must be an integer from ${min} to ${max}, got "${text}"`);
    return n;
  };
  const deploys = int(values.deploys, short ? 3 : 20, 'deploys', 1, 1000);
  return {
    short,
    json: values.json,
    https: values.https,
    workers: values.workers === 'auto' ? 'auto' : int(values.workers, 1, 'workers', 1, 32),
    clients: int(values.clients, short ? 50 : 200, 'clients', 1, 2000),
    deploys,
    reloads: int(values.reloads, short ? 2 : 10, 'reloads', 0, 1000),
    // A rollback needs a deploy before it to go back from.
    rollbacks: int(values.rollbacks, short ? 1 : 5, 'rollbacks', 0, deploys),
    minRequests: int(values['min-requests'], short ? 0 : 100_000, 'min-requests', 0, 100_000_000),
    maxSeconds: int(values['max-seconds'], short ? 60 : 900, 'max-seconds', 1, 86_400),
    anchor: !values['no-anchor'],
  };
}

// ---- control API -----------------------------------------------------------------------------------

interface DeployEvent {
  step: string;
  status: string;
  at: string;
  message: string | null;
}

interface DeployEnd {
  id: string;
  state: string;
  releaseId: string | null;
  failedStep: string | null;
  error: string | null;
}

/** One JSON call on the control socket. */
function control<T>(socket: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  return new Promise((resolveCall, reject) => {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = text === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) };
    const req = httpRequest({ socketPath: socket, method, path, headers }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (data += c));
      res.on('end', () => {
        try {
          resolveCall({ status: res.statusCode ?? 0, body: JSON.parse(data) as T });
        } catch (err) {
          reject(new Error(`${method} ${path}: bad JSON (${res.statusCode}): ${data.slice(0, 200)}`, { cause: err }));
        }
      });
    });
    req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${path}: no answer`)));
    req.on('error', reject);
    req.end(text);
  });
}

/** Follows a deploy's NDJSON stream to its end. */
function follow(socket: string, id: string): Promise<{ events: DeployEvent[]; end: DeployEnd }> {
  return new Promise((resolveFollow, reject) => {
    const req = httpRequest({ socketPath: socket, path: `/v1/deploys/${id}?follow=1` }, (res) => {
      const events: DeployEvent[] = [];
      let end: DeployEnd | null = null;
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (!line) continue;
          const msg = JSON.parse(line);
          if (msg.type === 'event') events.push(msg);
          else if (msg.type === 'end') end = msg.deploy;
        }
      });
      res.on('end', () => (end ? resolveFollow({ events, end }) : reject(new Error(`deploy ${id}: the stream ended without an end record`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

// ---- load ------------------------------------------------------------------------------------------

interface LoadResult {
  requests: number;
  failed: number;
  /** reason -> count */
  failures: Record<string, number>;
  examples: string[];
  latencyMs: { p50: number; p99: number; max: number };
  durationS: number;
}

/** Where the load goes: a port on 127.0.0.1, spoken to over HTTPS when `ca` (the PEM that signed its certificate) is set. */
interface LoadTarget {
  port: number;
  ca: string | null;
}

/**
 * N client loops, each with one request in flight at a time. Records latencies, failures by reason,
 * and when each `release:pid` first answered a request.
 */
class LoadGenerator {
  #target: LoadTarget;
  #running = true;
  #loops: Promise<void>[] = [];
  #agent: HttpAgent;
  #seq = 0;
  #started = performance.now();
  #ended = 0;
  requests = 0;
  failed = 0;
  #failures = new Map<string, number>();
  #examples: string[] = [];
  #latencies: number[] = [];
  /** `release:pid` -> epoch ms of the first answer it gave. */
  readonly firstSeen = new Map<string, number>();

  constructor(target: LoadTarget, clients: number) {
    this.#target = target;
    this.#agent = target.ca === null ? new HttpAgent({ keepAlive: true, maxSockets: clients }) : new HttpsAgent({ keepAlive: true, maxSockets: clients, ca: target.ca, servername: TLS_NAME });
    for (let i = 0; i < clients; i++) this.#loops.push(this.#loop(i % 4 !== 3));
  }

  async stop(): Promise<LoadResult> {
    this.#running = false;
    await Promise.all(this.#loops);
    this.#ended = performance.now();
    this.#agent.destroy();
    const sorted = Float64Array.from(this.#latencies).sort();
    const at = (q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0);
    return {
      requests: this.requests,
      failed: this.failed,
      failures: Object.fromEntries(this.#failures),
      examples: this.#examples,
      latencyMs: { p50: round(at(0.5)), p99: round(at(0.99)), max: round(sorted.length ? sorted[sorted.length - 1] : 0) },
      durationS: round((this.#ended - this.#started) / 1000),
    };
  }

  #fail(reason: string, detail: string): void {
    this.failed++;
    this.#failures.set(reason, (this.#failures.get(reason) ?? 0) + 1);
    if (this.#examples.length < 5) this.#examples.push(detail);
  }

  async #loop(keepAlive: boolean): Promise<void> {
    while (this.#running) {
      const n = this.#seq++;
      const echo = n % 2 === 1;
      const body = echo ? `echo-${n}-${'x'.repeat(n % 512)}` : null;
      const t0 = performance.now();
      this.requests++;
      try {
        const res = await this.#send(keepAlive, body);
        this.#latencies.push(performance.now() - t0);
        if (res.status < 200 || res.status > 299) this.#fail(`status ${res.status}`, `${echo ? 'POST /echo' : 'GET /'}: ${res.status} ${res.body.slice(0, 120)}`);
        else if (echo) {
          if (res.body !== body) this.#fail('echo mismatch', `POST /echo: got ${res.body.length} bytes, sent ${body!.length}`);
        } else this.#seen(res.headers, res.body, res.at);
      } catch (err) {
        this.#latencies.push(performance.now() - t0);
        const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        this.#fail(code, `${echo ? 'POST /echo' : 'GET /'}: ${(err as Error).message}`);
      }
    }
  }

  #seen(headers: IncomingHttpHeaders, body: string, at: number): void {
    let info: { release?: string; pid?: number };
    try {
      info = JSON.parse(body);
    } catch {
      this.#fail('bad body', `GET /: not JSON: ${body.slice(0, 120)}`);
      return;
    }
    const release = (headers['x-berth-release'] as string | undefined) ?? info.release;
    const key = `${release}:${info.pid}`;
    if (!this.firstSeen.has(key)) this.firstSeen.set(key, at);
  }

  #send(keepAlive: boolean, body: string | null): Promise<{ status: number; headers: IncomingHttpHeaders; body: string; at: number }> {
    return new Promise((resolveSend, reject) => {
      const headers: Record<string, string> = body === null ? {} : { 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(body)) };
      const options = { host: '127.0.0.1', port: this.#target.port, method: body === null ? 'GET' : 'POST', path: body === null ? '/' : '/echo', headers, agent: keepAlive ? this.#agent : false };
      const onResponse = (res: IncomingMessage): void => {
          // When the answer started: the moment the serving instance is known to have served it.
          const at = performance.timeOrigin + performance.now();
          let data = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (data += c));
          res.on('end', () => resolveSend({ status: res.statusCode ?? 0, headers: res.headers, body: data, at }));
          res.on('error', reject);
      };
      const ca = this.#target.ca;
      // A fresh connection over TLS is a full handshake: no session is kept between them.
      const req = ca === null ? httpRequest(options, onResponse) : httpsRequest({ ...options, ca, servername: TLS_NAME }, onResponse);
      req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'timeout' })));
      req.on('error', reject);
      req.end(body ?? undefined);
    });
  }
}

// ---- berth -----------------------------------------------------------------------------------------

type OpKind = 'deploy' | 'reload' | 'rollback';

interface OpResult {
  kind: OpKind;
  id: string | null;
  state: string;
  release: string | null;
  error: string | null;
  durationMs: number;
  /** Epoch ms of the switch step's end. */
  switchAt: number | null;
  /** Instances of the generation it switched to, as `release:pid`. */
  serving: string[];
}

/** The operations in order: deploys spread out, reloads and rollbacks between them. */
export function schedule(deploys: number, reloads: number, rollbacks: number): OpKind[] {
  const ops: OpKind[] = [];
  let r = 0;
  let b = 0;
  for (let i = 0; i < deploys; i++) {
    ops.push('deploy');
    if (r < reloads && ((i + 1) * reloads) / deploys >= r + 1) (ops.push('reload'), r++);
    if (b < rollbacks && ((i + 1) * rollbacks) / deploys >= b + 1) (ops.push('rollback'), b++);
  }
  while (r++ < reloads) ops.push('reload');
  return ops;
}

/** The run's certificate for `TLS_NAME`, its key, and the PEM of the CA that signed it. */
interface RunTls {
  certificate: string;
  key: string;
  ca: string;
}

async function makeTls(dir: string): Promise<RunTls> {
  const ca = await createCa(join(dir, 'certs'), 'berth deploy-under-load CA');
  const leaf = await issueCertificate(ca, [TLS_NAME]);
  return { certificate: leaf.certificate, key: leaf.key, ca: ca.pem };
}

async function startBerth(dir: string, sources: string[], tls: RunTls | null, workers: number | 'auto'): Promise<{ child: Child; target: LoadTarget; socket: string }> {
  const stateDir = join(dir, 'state');
  const config = {
    state_dir: stateDir,
    // The cleartext listener answers the readiness probe; under --https the load goes to the TLS one.
    listen: tls === null ? ['127.0.0.1:0'] : ['127.0.0.1:0', { address: '127.0.0.1:0', tls: true }],
    ...(tls === null ? {} : { tls: { default_certificate: { certificate: tls.certificate, key: tls.key } } }),
    ...(workers === 1 ? {} : { proxy: { workers } }),
    log_levels: { root: 'warn' },
    // Responses carry X-Berth-Release only with public_details; the bench reads it to see the switch.
    public_details: true,
    apps: {
      [APP]: {
        ...benchAppUser,
        source: sources[0],
        processes: { web: { command: `"${process.execPath}" server.mjs`, instances: 2, concurrency: 128 } },
        routes: [{ path: '/', to: 'web' }],
        health: { path: '/up', interval: '500ms' },
        queue: { max: 5000, timeout: '30s' },
        timeouts: { drain: '30s', stop: '10s' },
      },
    },
  };
  const file = join(dir, 'berth.yaml');
  await writeFile(file, YAML.stringify(config));
  const socket = join(stateDir, 'control.sock');
  const child = spawnChild('berth', process.execPath, [MAIN, 'start', '--config', file], { env: cleanEnv(), log: join(dir, 'berth.log'), stopSignal: 'SIGTERM' });
  let ports: number[] = [];
  await waitUntil('berth to run', START_TIMEOUT_MS, async () => {
    const status = await control<{ state: string; listen: string[] }>(socket, 'GET', '/v1/status').catch(() => null);
    if (status?.body.state !== 'running') return false;
    // In config order: the cleartext listener, then the TLS one.
    ports = status.body.listen.map((address) => Number(address.slice(address.lastIndexOf(':') + 1)));
    return true;
  }, child);
  await waitUntil('the app to be ready', START_TIMEOUT_MS, async () => (await getStatus(ports[0], '/_berth/ready')) === 200, child);
  return { child, target: tls === null ? { port: ports[0], ca: null } : { port: ports[1], ca: tls.ca }, socket };
}

async function runOp(socket: string, kind: OpKind, source: string | null): Promise<OpResult> {
  const t0 = performance.now();
  const path = kind === 'deploy' ? `/v1/apps/${APP}/deploys` : `/v1/apps/${APP}/${kind}`;
  const started = await control<{ id?: string; error?: { message: string } }>(socket, 'POST', path, kind === 'deploy' ? { source } : {});
  if (started.status !== 202 || !started.body.id) {
    return { kind, id: null, state: 'refused', release: null, error: started.body.error?.message ?? `status ${started.status}`, durationMs: performance.now() - t0, switchAt: null, serving: [] };
  }
  const { events, end } = await follow(socket, started.body.id);
  const durationMs = performance.now() - t0;
  const sw = events.find((e) => e.step === 'switch' && e.status === 'succeeded');
  let serving: string[] = [];
  if (end.state === 'succeeded') {
    const app = (await control<{ generations: { active: boolean; releaseId: string; instances: { pid: number | null }[] }[] }>(socket, 'GET', `/v1/apps/${APP}`)).body;
    const active = app.generations.find((g) => g.active);
    serving = active ? active.instances.map((i) => `${active.releaseId}:${i.pid}`) : [];
  }
  const error = end.state === 'succeeded' ? null : `${end.failedStep ?? '?'}: ${end.error ?? end.state}`;
  return { kind, id: end.id, state: end.state, release: end.releaseId, error, durationMs, switchAt: sw ? Date.parse(sw.at) : null, serving };
}

interface BerthResult {
  load: LoadResult;
  ops: OpResult[];
  /** Per switch: ms from the switch event to the first request answered by the new generation. */
  switchToFirstMs: number[];
  /** Switches after which no request was seen on the new generation. */
  unseen: number;
  leftoverGenerations: number;
}

async function runBerth(opts: Options, dir: string, tls: RunTls | null): Promise<BerthResult> {
  const sources = [join(dir, 'src-a'), join(dir, 'src-b')];
  for (const [i, src] of sources.entries()) {
    await cp(APP_SOURCE, src, { recursive: true });
    await writeFile(join(src, 'VERSION'), `${'ab'[i]}\n`);
  }
  const berth = await startBerth(dir, sources, tls, opts.workers);
  const deadline = Date.now() + opts.maxSeconds * 1000;
  const load = new LoadGenerator(berth.target, opts.clients);
  const ops: OpResult[] = [];
  let loadResult: LoadResult;
  try {
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    let deployNo = 0;
    for (const kind of schedule(opts.deploys, opts.reloads, opts.rollbacks)) {
      if (Date.now() > deadline) {
        ops.push({ kind, id: null, state: 'not run', release: null, error: `--max-seconds ${opts.maxSeconds} reached`, durationMs: 0, switchAt: null, serving: [] });
        continue;
      }
      // The first release came from sources[0]; deploys alternate b, a, b...
      const source = kind === 'deploy' ? sources[++deployNo % 2] : null;
      const op = await runOp(berth.socket, kind, source);
      ops.push(op);
      if (!opts.json) note(`${kind.padEnd(8)} ${op.state.padEnd(9)} ${Math.round(op.durationMs)}ms${op.error ? `  ${op.error}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    while (load.requests < opts.minRequests && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  } finally {
    loadResult = await load.stop();
  }
  const app = (await control<{ generations: unknown[] }>(berth.socket, 'GET', `/v1/apps/${APP}`)).body;
  await control(berth.socket, 'POST', '/v1/stop').catch(() => {});
  await stopChild(berth.child);
  const switchToFirstMs: number[] = [];
  let unseen = 0;
  for (const op of ops) {
    if (op.switchAt === null || op.state !== 'succeeded') continue;
    const firsts = op.serving.map((k) => load.firstSeen.get(k)).filter((v): v is number => v !== undefined);
    if (firsts.length === 0) unseen++;
    else switchToFirstMs.push(round(Math.max(0, Math.min(...firsts) - op.switchAt)));
  }
  return { load: loadResult, ops, switchToFirstMs, unseen, leftoverGenerations: app.generations.length - 1 };
}

// ---- anchor: gunicorn behind nginx -----------------------------------------------------------------

interface AnchorResult {
  skipped: string | null;
  reloads?: number;
  load?: LoadResult;
}

async function runAnchor(opts: Options, dir: string, tls: RunTls | null, reloads: number, spacingMs: number): Promise<AnchorResult> {
  if (!opts.anchor) return { skipped: 'turned off with --no-anchor' };
  const nginx = onPath('nginx') ?? nginxBinary();
  const gunicorn = onPath('gunicorn');
  if (!nginx || !gunicorn) return { skipped: `${[nginx ? null : 'nginx', gunicorn ? null : 'gunicorn'].filter(Boolean).join(' and ')} not on PATH` };
  const prefix = join(dir, 'anchor');
  await mkdir(prefix, { recursive: true });
  const appPort = await freePort();
  const port = await freePort();
  const tlsPort = tls === null ? null : await freePort();
  const pidFile = join(prefix, 'gunicorn.pid');
  const gun = spawnChild('gunicorn', gunicorn, ['--chdir', ANCHOR_APP_DIR, '--bind', `127.0.0.1:${appPort}`, '--workers', '2', '--threads', '64', '--worker-class', 'gthread', '--pid', pidFile, '--graceful-timeout', '30', 'anchor_app:app'], {
    log: join(prefix, 'gunicorn.log'),
    stopSignal: 'SIGTERM',
  });
  const location = 'location / { proxy_pass http://anchor_app; proxy_http_version 1.1; proxy_set_header Connection ""; }';
  const tlsServer =
    tls === null
      ? ''
      : `
  server {
    listen 127.0.0.1:${tlsPort} ssl;
    ssl_certificate ${tls.certificate};
    ssl_certificate_key ${tls.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ${location}
  }`;
  const conf = `# written by bench/deploy-under-load.ts for one run
daemon off;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  upstream anchor_app { server 127.0.0.1:${appPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    ${location}
  }${tlsServer}
}
`;
  await writeFile(join(prefix, 'nginx.conf'), conf);
  const ngx = spawnChild('nginx', nginx, ['-p', prefix, '-c', join(prefix, 'nginx.conf'), '-e', join(prefix, 'error.log')], { log: join(prefix, 'nginx.log'), stopSignal: 'SIGQUIT' });
  try {
    await waitUntil('gunicorn behind nginx', START_TIMEOUT_MS, async () => (await getStatus(port, '/')) === 200, ngx);
    const load = new LoadGenerator(tls === null ? { port, ca: null } : { port: tlsPort!, ca: tls.ca }, opts.clients);
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const master = Number(readFileSync(pidFile, 'utf8').trim());
    for (let i = 0; i < reloads; i++) {
      // HUP: gunicorn starts new workers and gracefully stops the old ones, its zero-downtime reload.
      process.kill(master, 'SIGHUP');
      await new Promise((r) => setTimeout(r, spacingMs));
    }
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    return { skipped: null, reloads, load: await load.stop() };
  } finally {
    await stopChild(ngx);
    await stopChild(gun);
  }
}

// ---- report ----------------------------------------------------------------------------------------

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = xs.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : round((s[m - 1] + s[m]) / 2);
}

function report(opts: Options, berth: BerthResult, anchor: AnchorResult): { text: string; json: unknown; ok: boolean } {
  const { load, ops } = berth;
  const count = (k: OpKind) => ops.filter((o) => o.kind === k).length;
  const failedOps = ops.filter((o) => o.state !== 'succeeded');
  const sw = berth.switchToFirstMs;
  const ok = load.failed === 0 && failedOps.length === 0 && load.requests > 0 && berth.leftoverGenerations === 0;
  const json = {
    ok,
    https: opts.https,
    workers: opts.workers,
    clients: opts.clients,
    operations: { deploys: count('deploy'), reloads: count('reload'), rollbacks: count('rollback'), failed: failedOps.map((o) => ({ kind: o.kind, id: o.id, error: o.error })) },
    requests: load.requests,
    failed: load.failed,
    failures: load.failures,
    examples: load.examples,
    durationS: load.durationS,
    requestsPerS: Math.round(load.requests / Math.max(load.durationS, 0.001)),
    latencyMs: load.latencyMs,
    switchToFirstRequestMs: { min: sw.length ? Math.min(...sw) : null, median: sw.length ? median(sw) : null, max: sw.length ? Math.max(...sw) : null, switches: sw.length, unseen: berth.unseen },
    opDurationMs: Object.fromEntries((['deploy', 'reload', 'rollback'] as const).map((k) => [k, median(ops.filter((o) => o.kind === k).map((o) => round(o.durationMs)))])),
    leftoverGenerations: berth.leftoverGenerations,
    anchor: anchor.skipped ? { skipped: anchor.skipped } : { name: 'nginx + gunicorn', reloads: anchor.reloads, requests: anchor.load!.requests, failed: anchor.load!.failed, failures: anchor.load!.failures, latencyMs: anchor.load!.latencyMs },
  };
  const n = (x: number) => x.toLocaleString('en-US');
  const lines = [
    `deploy-under-load${opts.https ? ' over HTTPS' : ''}${opts.workers === 1 ? '' : ` (proxy.workers: ${opts.workers})`}: ${json.operations.deploys} deploys, ${json.operations.reloads} reloads, ${json.operations.rollbacks} rollbacks under ${opts.clients} clients (keep-alive and fresh connections, GET / and POST /echo)`,
    `  requests      ${n(load.requests)} in ${load.durationS}s (${n(json.requestsPerS)}/s)`,
    `  failed        ${n(load.failed)}${load.failed ? `  ${JSON.stringify(load.failures)}` : ''}`,
    ...load.examples.map((e) => `                ${e}`),
    `  latency       p50 ${load.latencyMs.p50}ms  p99 ${load.latencyMs.p99}ms  max ${load.latencyMs.max}ms`,
    `  switch -> first request on the new generation: min ${json.switchToFirstRequestMs.min}ms  median ${json.switchToFirstRequestMs.median}ms  max ${json.switchToFirstRequestMs.max}ms  (${sw.length} switches${berth.unseen ? `, ${berth.unseen} never seen` : ''})`,
    `  operations    ${ops.length - failedOps.length} ok, ${failedOps.length} failed; median deploy ${json.opDurationMs.deploy}ms, reload ${json.opDurationMs.reload}ms, rollback ${json.opDurationMs.rollback}ms`,
    ...failedOps.map((o) => `                ${o.kind} ${o.id ?? ''}: ${o.error}`),
    anchor.skipped
      ? `  anchor        nginx + gunicorn skipped: ${anchor.skipped}`
      : `  anchor        nginx + gunicorn, ${anchor.reloads} HUP reloads: ${n(anchor.load!.requests)} requests, ${n(anchor.load!.failed)} failed${anchor.load!.failed ? ` ${JSON.stringify(anchor.load!.failures)}` : ''}, max latency ${anchor.load!.latencyMs.max}ms  (berth: ${n(load.failed)} failed)`,
  ];
  return { text: lines.join('\n'), json, ok };
}

async function run(opts: Options, dir: string): Promise<number> {
  const tls = opts.https ? await makeTls(dir) : null;
  const berth = await runBerth(opts, dir, tls);
  const ops = berth.ops.length;
  // The anchor gets as many reloads as berth had operations, spaced like them.
  const spacing = Math.max(200, Math.round((berth.load.durationS * 1000 - 2 * SETTLE_MS) / Math.max(ops, 1)));
  let anchor: AnchorResult;
  try {
    anchor = await runAnchor(opts, dir, tls, ops, spacing);
  } catch (err) {
    anchor = { skipped: `failed to run: ${(err as Error).message.split('\n')[0]}` };
  }
  const out = report(opts, berth, anchor);
  process.stdout.write((opts.json ? JSON.stringify(out.json, null, 2) : out.text) + '\n');
  return out.ok ? 0 : 1;
}

/** berth's load phase and the anchor's (as long again), each with its start-up and stop, and slack. */
const budgetMs = (opts: Options): number => 2 * (opts.maxSeconds * 1000 + 2 * START_TIMEOUT_MS) + 60_000;

if (import.meta.main) process.exit(await benchMain(USAGE, parseOptions, budgetMs, run));
