/**
 * Test doubles of the supervisor side (Upstream, GenerationView) over REAL node:http backends on port 0,
 * plus a real Proxy on port 0 and a plain HTTP client. Nothing in node:http is mocked.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse, type Agent } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { Writable, type Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { readdirSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { AppConfig, BerthConfig, BufferingConfig, ProcessConfig, RouteConfig } from '../../src/config/schema.ts';
import type { GenerationState, GenerationView, InstanceState, Upstream, UpstreamAddress } from '../../src/supervisor/types.ts';
import { Pool } from '../../src/supervisor/pool.ts';
import { silentLogger, type Logger } from '../../src/lib/logger.ts';
import { Proxy } from '../../src/proxy/server.ts';
import { RoutingTable, type AppEntry, type ModeState } from '../../src/proxy/router.ts';

// ---- config ------------------------------------------------------------------------------------

export function route(path: string, to: string | null = 'web', staticDir: string | null = null): RouteConfig {
  return { path, to: staticDir === null ? to : null, static: staticDir, cache: null, cors: null, buffering: true, affinity: null };
}

export function processConfig(name: string, instances: number, concurrency: number): ProcessConfig {
  return { name, command: 'node server.js', instances, concurrency, http: true, heartbeatTimeoutMs: null, env: {} };
}

export function appConfig(name: string, over: Partial<AppConfig> = {}): AppConfig {
  return {
    name,
    user: null,
    group: null,
    hosts: [],
    source: null,
    build: null,
    release: null,
    keepReleases: 5,
    shared: [],
    env: {},
    processes: { web: processConfig('web', 1, 8) },
    scale: {},
    listen: 'port',
    routes: [route('/')],
    health: { path: '/up', intervalMs: 2000, timeoutMs: 1000, unhealthyAfter: 3, startupTimeoutMs: 30000, busyGraceMs: 30000 },
    queue: { max: 100, timeoutMs: 10_000 },
    timeouts: { headersMs: 30_000, drainMs: 30_000, stopMs: 10_000 },
    dbConnections: null,
    rateLimit: null,
    schedule: {},
    reloadTrigger: null,
    pages: { maintenance: null, readOnly: null, error: null },
    cacheFlush: null,
    maxBodyBytes: 100 * 1024 * 1024,
    buffering: { requests: true, responses: true, memoryBytes: 1024 * 1024, bodyTimeoutMs: 60_000, sendTimeoutMs: 60_000 },
    websockets: { max: 1000, idleTimeoutMs: null },
    maxReleaseBytes: 1024 ** 3,
    maxReleaseFiles: 100_000,
    tls: [],
    acme: false,
    httpsRedirect: false,
    hsts: null,
    canonicalHost: null,
    ...over,
  };
}

export function berthConfig(apps: AppConfig[], over: Partial<BerthConfig> = {}): BerthConfig {
  return {
    file: 'berth.yaml',
    environment: null,
    // Absolute, as normalised; bodies and responses past the memory threshold spill to <stateDir>/tmp.
    stateDir: join(tmpdir(), 'berth-proxy-fixtures'),
    listen: [{ kind: 'tcp', host: '127.0.0.1', port: 0, text: '127.0.0.1:0', tls: false }],
    control: { socket: 'control.sock', socketGroup: null, listen: null, tokens: {}, callContextHeader: null, permissions: {}, permissionsUnenforcedOk: false, callContextFrom: ['127.0.0.0/8', '::1/128'] },
    trustedProxyCount: 0,
    internalPrefix: '/_berth',
    logLevels: {},
    database: null,
    databasePool: 4,
    nodeId: null,
    nodeTimeoutMs: 10_000,
    migrations: 'upgrade',
    resetState: false,
    historyRetentionMs: 14 * 86_400_000,
    cleanupCron: '0 * * * *',
    schedulerDelayMs: 60_000,
    healthFile: null,
    metricsPublic: false,
    underscoresInHeaders: false,
    publicDetails: false,
    defaultUser: 'nobody',
    tls: { directory: null, defaultCertificate: null },
    acme: { directory: 'https://acme-v02.api.letsencrypt.org/directory', email: null, caRoot: null, challenge: 'http-01', ask: null, onDemand: { perMinute: 10, inFlight: 4 } },
    proxy: { workers: 1, auto: false },
    apps: Object.fromEntries(apps.map((a) => [a.name, a])),
    ...over,
  };
}

// ---- supervisor test doubles ---------------------------------------------------------------------

/** An instance as the supervisor would show it; counts begin/end and records accounting mistakes. */
export class TestUpstream implements Upstream {
  readonly app: string;
  readonly process: string;
  readonly index: number;
  readonly releaseId: string;
  state: InstanceState = 'ready';
  address: UpstreamAddress | null;
  inFlight = 0;
  readonly concurrency: number;
  served = 0;
  /** WebSockets open to it (beginTunnel/endTunnel). */
  tunnels = 0;
  /** Most requests seen in flight at once. */
  peak = 0;
  /** Tickets ended twice or never begun: must stay empty. */
  readonly mistakes: string[] = [];
  #open = new Set<number>();
  #next = 0;

  constructor(opts: { app: string; process?: string; index: number; releaseId: string; address: UpstreamAddress | null; concurrency: number }) {
    this.app = opts.app;
    this.process = opts.process ?? 'web';
    this.index = opts.index;
    this.releaseId = opts.releaseId;
    this.address = opts.address;
    this.concurrency = opts.concurrency;
  }

  tryReserve(): boolean {
    if (this.inFlight >= this.concurrency) return false;
    this.inFlight++;
    this.peak = Math.max(this.peak, this.inFlight);
    return true;
  }

  begin(reserved = false): number {
    const ticket = ++this.#next;
    this.#open.add(ticket);
    if (!reserved) {
      this.inFlight++;
      this.peak = Math.max(this.peak, this.inFlight);
    }
    return ticket;
  }

  end(ticket: number): void {
    if (!this.#open.delete(ticket)) {
      this.mistakes.push(`end(${ticket}) without an open begin`);
      return;
    }
    this.inFlight--;
    this.served++;
  }

  beginTunnel(): void {
    this.tunnels++;
  }

  endTunnel(): void {
    if (this.tunnels === 0) this.mistakes.push('endTunnel() without an open beginTunnel()');
    else this.tunnels--;
  }

  /** Epoch ms of the last request of a cookie-affinity route it served (0: none). */
  lastAffineAt = 0;

  markAffine(): void {
    this.lastAffineAt = Date.now();
  }
}

export class TestGeneration implements GenerationView {
  readonly id: string;
  readonly app: string;
  readonly releaseId: string;
  readonly releaseDir: string;
  state: GenerationState = 'ready';
  readonly pools = new Map<string, Pool>();

  constructor(opts: { id: string; app: string; releaseId: string; releaseDir?: string }) {
    this.id = opts.id;
    this.app = opts.app;
    this.releaseId = opts.releaseId;
    this.releaseDir = opts.releaseDir ?? '/nonexistent';
  }

  get inFlight(): number {
    let n = 0;
    for (const p of this.pools.values()) for (const i of p.instances) n += i.inFlight + i.tunnels;
    return n;
  }

  /** Adds a pool whose instances point at `addresses` (null: an instance with no live process). */
  addPool(process: string, concurrency: number, addresses: (UpstreamAddress | null)[]): TestUpstream[] {
    const pool = new Pool(process, concurrency);
    const instances = addresses.map(
      (address, index) => new TestUpstream({ app: this.app, process, index, releaseId: this.releaseId, address, concurrency }),
    );
    pool.setInstances(instances);
    this.pools.set(process, pool);
    return instances;
  }

  instances(process = 'web'): TestUpstream[] {
    return this.pools.get(process)!.instances as TestUpstream[];
  }
}

export function entry(config: AppConfig, generation: GenerationView | null, mode: Partial<ModeState> = {}): AppEntry {
  return { name: config.name, config, generation, mode: { mode: 'normal', message: null, retryAfter: null, ...mode } };
}

// ---- real backends -------------------------------------------------------------------------------

export interface Backend {
  server: Server;
  port: number;
  address: UpstreamAddress;
  /** TCP connections the backend accepted. */
  connections: number;
  /** Requests it received, in arrival order. */
  requests: IncomingMessage[];
  close(): Promise<void>;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

/** A real HTTP server on 127.0.0.1:0, closed after the test. */
export async function backend(t: TestContext, handler: Handler): Promise<Backend> {
  const server = createServer();
  const b: Backend = {
    server,
    port: 0,
    address: { kind: 'tcp', host: '127.0.0.1', port: 0 },
    connections: 0,
    requests: [],
    close: () =>
      new Promise<void>((resolve) => {
        if (!server.listening) return resolve();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  server.on('connection', () => b.connections++);
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    b.requests.push(req);
    handler(req, res);
  });
  t.after(() => b.close());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  b.port = (server.address() as AddressInfo).port;
  b.address = { kind: 'tcp', host: '127.0.0.1', port: b.port };
  return b;
}

/** A backend that answers `ok <index>` after reading the whole request. */
export function okHandler(label: string): Handler {
  return (req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(label);
    });
  };
}

/** A port that refuses connections: bound, then closed. */
export async function refusedAddress(): Promise<UpstreamAddress> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return { kind: 'tcp', host: '127.0.0.1', port };
}

// ---- the proxy -------------------------------------------------------------------------------------

export interface Running {
  proxy: Proxy;
  url: string;
  port: number;
}

/** Starts a real Proxy on 127.0.0.1:0 with `apps` in its table; destroyed after the test. */
export async function startProxy(
  t: TestContext,
  apps: AppEntry[],
  opts: { config?: BerthConfig; logger?: Logger } = {},
): Promise<Running> {
  const config = opts.config ?? berthConfig(apps.map((a) => a.config));
  const proxy = new Proxy({ config, logger: opts.logger ?? silentLogger() });
  proxy.setTable(new RoutingTable(apps));
  t.after(() => proxy.destroy());
  await proxy.start();
  const addr = proxy.addresses()[0];
  const port = addr.kind === 'tcp' ? addr.port : 0;
  return { proxy, url: `http://127.0.0.1:${port}`, port };
}

// ---- buffering -------------------------------------------------------------------------------------

/** Buffering on both sides with a 64k memory threshold, so test bodies spill to disk soon. */
export function buffering(over: Partial<BufferingConfig> = {}): BufferingConfig {
  return { requests: true, responses: true, memoryBytes: 64 * 1024, bodyTimeoutMs: 60_000, sendTimeoutMs: 60_000, ...over };
}

/** A state dir of its own (spilled bodies go to `<dir>/tmp`), removed after the test. */
export async function spillDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'berth-buf-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The sha256 (hex) and length of what a request body carries, once it ends (never, if it does not). */
export function bodyDigest(body: Readable): Promise<{ hash: string; length: number }> {
  return new Promise((resolve) => {
    const hash = createHash('sha256');
    let length = 0;
    body.on('data', (c: Buffer) => {
      hash.update(c);
      length += c.length;
    });
    body.on('end', () => resolve({ hash: hash.digest('hex'), length }));
  });
}

/** File descriptors of this process open on a temp file under `<dir>/tmp` (unlinked ones included). */
export function spillFds(dir: string): number[] {
  const prefix = join(dir, 'tmp') + '/';
  const fds: number[] = [];
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${name}`).startsWith(prefix)) fds.push(Number(name));
    } catch {
      // closed meanwhile
    }
  }
  return fds;
}

/** One app `shop` on one instance of `concurrency`, behind a real proxy with state dir `dir` (else a new one). */
export async function bufferingProxy(t: TestContext, be: Backend, over: Partial<AppConfig> = {}, concurrency = 4, dir?: string) {
  dir ??= await spillDir(t);
  const gen = new TestGeneration({ id: 'shop#1', app: 'shop', releaseId: 'r1' });
  const [inst] = gen.addPool('web', concurrency, [be.address]);
  const app = appConfig('shop', { buffering: buffering(), ...over });
  const running = await startProxy(t, [entry(app, gen)], { config: berthConfig([app], { stateDir: dir }) });
  return { ...running, dir, inst, gen };
}

/** A logger that keeps parsed lines in memory. */
export function captureLogger(level = 'info'): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: pino({ level }, stream), lines };
}

// ---- client --------------------------------------------------------------------------------------

export interface Reply {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
  text: string;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string | string[]>;
  body?: Buffer | string | AsyncIterable<Buffer> | null;
  agent?: Agent | false;
  socketPath?: string;
}

/** One HTTP request with a fresh connection (unless an agent is given); resolves with the whole body. */
export function fetchRaw(url: string, opts: RequestOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false, socketPath: opts.socketPath }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString() });
      });
    });
    req.on('error', reject);
    const body = opts.body;
    if (body === undefined || body === null) req.end();
    else if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
    else
      void (async () => {
        try {
          for await (const chunk of body) if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
          req.end();
        } catch (err) {
          req.destroy(err as Error);
        }
      })();
  });
}

/** Starts a request and returns it with its socket, for tests that abort mid-way. */
export function openRequest(url: string, opts: RequestOptions = {}): { done: Promise<Reply>; abort: () => void } {
  let abort = () => {};
  const done = new Promise<Reply>((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const b = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b, text: b.toString() });
      });
    });
    req.on('error', reject);
    abort = () => req.destroy();
    req.end();
  });
  return { done, abort };
}

/** Polls `cond` until it holds or `timeoutMs` passes (then throws with `what`). */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A promise and its resolver, for backends that answer when the test says so. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open = () => {};
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

export type { Socket };
