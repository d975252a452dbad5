/**
 * The front door: listeners and the request pipeline.
 *
 * Listeners outlive everything else: `setTable` and `setConfig` swap what requests see and never touch a
 * socket. Every request reads the table pointer once, on arrival, and runs the SPEC's steps in order:
 *   1. gateway endpoints under `internal_prefix` (the health lane), before anything that could wait;
 *   2. the client IP;
 *   3. the route (no match: 404);
 *   4. rate limits (rate-limit.ts), 5. the mode (modes.ts), then static routes (static.ts), which take
 *      no admission slot;
 *   6. pinning to the app's active generation (none: 503);
 *   7. admission, 8. forwarding, 9. errors: a `Forward` per request (forward.ts).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { acceptsConnections } from '../lib/unix-socket.ts';
import { lstat, unlink } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { BerthConfig, ListenAddress, RouteConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import type { MetricsExporter } from '../metrics/metrics.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { Admission, type AdmissionLimits } from './admission.ts';
import { accessLog, elapsedMs, requestChannel, type CompletedRequest } from './access-log.ts';
import { clientIp, socketAddress } from './client-ip.ts';
import { ErrorPages, type AppPage, type ErrorReason } from './error-pages.ts';
import { Forward, ProxyResponse, type ForwardShared } from './forward.ts';
import { HealthLane } from './health-lane.ts';
import { requestId } from './request-id.ts';
import { RoutingTable, type AppEntry } from './router.ts';
import { hasDuplicateHost, isValidHost } from './request-headers.ts';
import { UpstreamClients } from './upstream-clients.ts';
import { Modes } from './modes.ts';
import { Static } from './static.ts';
import { RateLimit, SWEEP_INTERVAL_MS } from './rate-limit.ts';
import { WebSockets, type Tunnel } from './websocket.ts';
import type { GenerationView } from '../supervisor/types.ts';

export type ProxyState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/** How often queued requests are expired and queues re-pumped (instances that became ready). */
const TICK_MS = 50;
/** Upstream pools unused for one to two of these periods are closed (instances that went away). */
const CLIENT_SWEEP_MS = 30_000;
/** Retry-After (seconds) while an app has no active generation: it is booting or failed. */
const NO_GENERATION_RETRY_AFTER_S = 5;

/**
 * Server limits, so a slow client cannot hold a connection forever: the whole header block within 30s,
 * the whole request within 5 min, idle keep-alive 5s. Header size stays Node's default (16 KiB). A body
 * no longer holds an admission slot while it arrives (it is read whole first, with its own idle timeout,
 * `buffering.body_timeout`: forward.ts, request-buffer.ts).
 */
const SERVER_OPTIONS = {
  ServerResponse: ProxyResponse,
  headersTimeout: 30_000,
  requestTimeout: 300_000,
  keepAliveTimeout: 5_000,
  // Node checks those timeouts on this interval (default 30s, so a slow-header client could last 60s).
  connectionsCheckingInterval: 2_000,
  // Only WebSocket upgrades leave the request path, and only with GET (RFC 6455 § 4.1). Others (`curl
  // --http2` sends `Upgrade: h2c`) are served as plain HTTP/1.1 requests, their Upgrade header stripped
  // as hop-by-hop, their body framed by node's parser as for any request.
  shouldUpgradeCallback: isWebSocketUpgrade,
};

function isWebSocketUpgrade(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade;
  return req.method === 'GET' && upgrade !== undefined && upgrade.toLowerCase().includes('websocket');
}

type ProxyServer = Server<typeof IncomingMessage, typeof ProxyResponse>;


export interface ProxyOptions {
  config: BerthConfig;
  /** The 'proxy' logger. */
  logger: Logger;
}

export class Proxy {
  #state: ProxyState = 'new';
  #config: BerthConfig;
  #log: Logger;
  #table: RoutingTable = new RoutingTable([]);
  #prefix: string;
  #servers: { server: ProxyServer; address: ListenAddress }[] = [];
  /** `app/process` -> admission; kept across table swaps so limits hold across generations. */
  #admissions = new Map<string, Admission>();
  /** Route -> its pool's admission, rebuilt with each table, so a request finds it without a string key. */
  #admissionByRoute = new Map<RouteConfig, Admission>();
  #clients = new UpstreamClients();
  #pages = new ErrorPages();
  #modes = new Modes(this.#pages);
  #static = new Static(this.#pages);
  #websockets: WebSockets;
  /** App name -> its rate limiter; kept across table swaps so buckets survive a deploy or mode switch. */
  #rateLimits = new Map<string, RateLimit>();
  /** App entry -> its limiter, rebuilt with each table, so a request finds it without a string key. */
  #rateLimitByApp = new Map<AppEntry, RateLimit>();
  #sweepTicks = 0;
  #lane: HealthLane;
  #metrics: MetricsExporter | null = null;
  #shared: ForwardShared;
  #inFlight = 0;
  #tick: NodeJS.Timeout | null = null;
  #ticks = 0;
  #stopping: Promise<void> | null = null;
  /** Resolves the graceful stop's wait once in-flight reaches zero. */
  #drained: (() => void) | null = null;

  constructor(opts: ProxyOptions) {
    this.#config = opts.config;
    this.#log = opts.logger;
    this.#prefix = opts.config.internalPrefix;
    this.#lane = new HealthLane(this);
    this.#shared = {
      clients: this.#clients,
      pages: this.#pages,
      log: opts.logger,
      trustedProxyCount: opts.config.trustedProxyCount,
      underscoresInHeaders: opts.config.underscoresInHeaders === true,
      stopping: false,
      publicDetails: opts.config.publicDetails === true,
      stateDir: opts.config.stateDir,
      table: this.#table,
      done: (fw) => this.#forwardDone(fw),
    };
    this.#websockets = new WebSockets(this.#shared, (t) => this.#tunnelDone(t));
  }

  get state(): ProxyState {
    return this.#state;
  }

  get table(): RoutingTable {
    return this.#table;
  }

  /** False once a stop has begun; the health lane reports it. */
  get accepting(): boolean {
    return this.#state === 'new' || this.#state === 'starting' || this.#state === 'running';
  }

  /** Requests being handled: queued or forwarding (gateway endpoints and instant errors not counted). */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Requests waiting in the admission queues of the app's pools. */
  queueDepth(app: string): number {
    let n = 0;
    for (const a of this.#admissions.values()) if (a.app === app) n += a.depth;
    return n;
  }

  /** Every pool's admission (`app/process`), for the metrics read at scrape time. */
  admissions(): IterableIterator<Admission> {
    return this.#admissions.values();
  }

  /** The metrics `<internal_prefix>/metrics` serves while the config says `metrics_public: true`. */
  setMetrics(metrics: MetricsExporter | null): void {
    this.#metrics = metrics;
  }

  /** Read by the health lane: null keeps the path a 404. */
  get publicMetrics(): MetricsExporter | null {
    return this.#config.metricsPublic ? this.#metrics : null;
  }

  /** Read by the health lane: `/ready` and `/apps/<app>/health` give details only with `public_details: true`. */
  get publicDetails(): boolean {
    return this.#config.publicDetails === true;
  }

  /**
   * Makes `table` the one new requests see. Requests already running keep the generation they pinned.
   * Admission limits are brought in line with the table's apps (bounded by config size, not traffic).
   */
  setTable(table: RoutingTable): void {
    this.#table = table;
    this.#shared.table = table;
    this.#syncAdmissions();
    this.#syncRateLimits();
  }

  /** Applies a reloaded config: trusted_proxy_count, internal_prefix and per-app limits. Listeners stay. */
  setConfig(config: BerthConfig): void {
    this.#config = config;
    this.#prefix = config.internalPrefix;
    this.#shared.trustedProxyCount = config.trustedProxyCount;
    this.#shared.publicDetails = config.publicDetails === true;
    this.#shared.stateDir = config.stateDir;
    this.#shared.underscoresInHeaders = config.underscoresInHeaders === true;
    this.#syncAdmissions();
    this.#syncRateLimits();
  }

  /** Open WebSocket tunnels (ones waiting for an instance included). */
  get upgrades(): number {
    return this.#websockets.size;
  }

  /**
   * Closes the WebSockets pinned to `gen`: each client gets a close frame with code 1001 (going away) at a
   * frame boundary, then both sockets end. The deployer calls this when a drain deadline passes with
   * connections left. Returns how many were closed.
   */
  closeUpgrades(gen: GenerationView): number {
    const n = this.#websockets.closeGeneration(gen);
    if (n > 0) this.#log.info({ generation: gen.id, websockets: n }, 'websockets closed');
    return n;
  }

  /**
   * Binds every `config.listen` address (tcp host:port incl. port 0, or a unix path). On any failure it
   * closes what it opened and rejects with BERTH_E_LISTEN naming the address.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new BerthError(ErrorCodes.internal, `proxy already ${this.#state}`);
    this.#transition('starting');
    try {
      for (const address of this.#config.listen) this.#servers.push({ server: await this.#listen(address), address });
    } catch (err) {
      await Promise.all(this.#servers.map(({ server }) => closeServer(server)));
      this.#servers = [];
      this.#transition('stopped');
      throw err;
    }
    this.#tick = setInterval(() => this.#onTick(), TICK_MS);
    this.#tick.unref();
    this.#transition('running');
    this.#log.info({ listen: this.addresses().map((a) => a.text) }, 'proxy listening');
  }

  /** The bound addresses, with port 0 resolved to the real port. */
  addresses(): ListenAddress[] {
    return this.#servers.map(({ server, address }) => {
      if (address.kind === 'unix') return address;
      const port = (server.address() as AddressInfo | null)?.port ?? address.port;
      const host = address.host.includes(':') ? `[${address.host}]` : address.host;
      return { kind: 'tcp', host: address.host, port, text: `${host}:${port}` };
    });
  }

  /**
   * Graceful: close the listeners and idle keep-alive connections, answer in-flight requests with
   * `Connection: close`, wait until in-flight (queued included) reaches zero or `deadlineMs` passes, then
   * close every connection. Idempotent.
   */
  stop(deadlineMs: number): Promise<void> {
    this.#stopping ??= this.#stop(deadlineMs);
    return this.#stopping;
  }

  async #stop(deadlineMs: number): Promise<void> {
    if (this.#state === 'new' || this.#state === 'stopped') {
      this.#transition('stopped');
      return;
    }
    this.#transition('stopping');
    this.#shared.stopping = true;
    const closed = this.#servers.map(({ server }) => closeServer(server));
    // A WebSocket never ends by itself: every one is told the gateway goes away, and counts as in flight
    // until its sockets are closed.
    const upgrades = this.#websockets.closeAll();
    if (upgrades > 0) this.#log.info({ websockets: upgrades }, 'websockets closed');
    if (this.#inFlight > 0) {
      let timer: NodeJS.Timeout | null = null;
      await new Promise<void>((resolve) => {
        this.#drained = resolve;
        timer = setTimeout(resolve, deadlineMs);
      });
      clearTimeout(timer!);
      this.#drained = null;
      if (this.#inFlight > 0) this.#log.warn({ inFlight: this.#inFlight, deadlineMs }, 'proxy stop deadline passed');
    }
    for (const { server } of this.#servers) server.closeAllConnections();
    // Upgraded sockets have left the HTTP servers, so closeAllConnections does not reach them.
    this.#websockets.destroyAll();
    this.#clearTick();
    await this.#clients.destroy();
    await Promise.all(closed);
    this.#transition('stopped');
  }

  /** Forced: drop every connection and upstream request now. */
  destroy(err?: Error): void {
    if (this.#state === 'stopped') return;
    if (err) this.#log.error({ err: err.message }, 'proxy destroyed');
    this.#shared.stopping = true;
    this.#clearTick();
    for (const { server } of this.#servers) {
      server.close();
      server.closeAllConnections();
    }
    this.#websockets.destroyAll();
    void this.#clients.destroy(err);
    this.#drained?.();
    this.#transition('stopped');
  }

  // ---- request pipeline ----------------------------------------------------------------------------

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    this.#handle(req, res as ProxyResponse);
  };

  #handle(req: IncomingMessage, res: ProxyResponse): void {
    const start = performance.now();
    // A request that asked for an upgrade it does not get (h2c, a non-GET WebSocket): node's parser stops
    // at it and drops the rest of that packet, so a pipelined request behind it would go unanswered.
    // The connection closes after the response instead of hanging.
    if (this.#shared.stopping || req.headers.upgrade !== undefined) res.shouldKeepAlive = false;
    let path = req.url ?? '/';
    let host = req.headers.host ?? '';
    if (path.charCodeAt(0) !== 0x2f /* / */) {
      // Absolute form (`GET http://host/path`): its authority replaces the Host header (RFC 9112 3.2.2),
      // for routing and in the request the app gets (request-headers.ts).
      const target = absoluteTarget(path);
      if (target === null) {
        res.shouldKeepAlive = false;
        this.#direct(req, res, start, 400, 'bad-request', null, null, '', requestId(undefined));
        return;
      }
      path = target.path;
      host = target.host;
    }
    // Two Host headers: node keeps the first, an app's framework might read the other (RFC 9112 3.2).
    // A Host that is no authority (`evil.example/.shop.test` matches `*.shop.test`): a 400, as nginx.
    // A Transfer-Encoding that does not end in chunked (or comes with a Content-Length): node's parser
    // refuses it, but only after emitting the request, and with buffering off it would already be on
    // its way to the app (RFC 9112 6.3: a 400, and the connection closes).
    if (hasDuplicateHost(req.rawHeaders) || !isValidHost(host) || (req.headers['transfer-encoding'] !== undefined && badTransferEncoding(req.headers))) {
      // A client this confused (or hostile) gets no further requests parsed on this connection.
      res.shouldKeepAlive = false;
      this.#direct(req, res, start, 400, 'bad-request', null, null, '', requestId(undefined));
      return;
    }

    // 1. Gateway endpoints, before anything that could queue.
    const prefix = this.#prefix;
    if (path.startsWith(prefix)) {
      const c = path.charCodeAt(prefix.length);
      if (path.length === prefix.length || c === 0x2f /* / */ || c === 0x3f /* ? */) {
        this.#lane.handle(req, res, path.slice(prefix.length));
        return;
      }
    }

    // 2. Client IP.
    const headers = req.headers;
    const peer = socketAddress(req.socket);
    const ip = clientIp(headers['x-forwarded-for'] as string | undefined, peer, this.#shared.trustedProxyCount);
    const rid = requestId(headers['x-request-id'] as string | undefined);

    // 3. Route.
    const match = this.#table.lookup(host, path);
    if (match === null) {
      this.#direct(req, res, start, 404, 'no-route', null, null, ip, rid);
      return;
    }
    const app = match.app;
    const route = match.route;

    // 4. Rate limits.
    const limiter = this.#rateLimitByApp.size === 0 ? undefined : this.#rateLimitByApp.get(app);
    if (limiter !== undefined && limiter.applies(path)) {
      const waitMs = limiter.take(ip, start);
      if (waitMs > 0) {
        this.#direct(req, res, start, 429, 'rate-limited', app, Math.ceil(waitMs / 1000), ip, rid);
        return;
      }
    }

    // 5. Mode, as of arrival (the table entry read once above). Static routes are still served in
    //    maintenance, so the static branch comes after it.
    if (app.mode.mode !== 'normal' && this.#modes.refuses(app.mode, req.method, route.to === null)) {
      this.#modes.send(req, res, app, rid, this.#shared.stopping);
      this.#logDirect(req, start, this.#modes.status, app, ip, rid);
      return;
    }
    if (route.to === null) {
      this.#serveStatic(req, res, start, app, route, path, ip, rid);
      return;
    }

    // 6. Pin: the active generation as of arrival, read once; the request finishes there.
    const generation = app.generation;
    if (generation === null) {
      this.#noGeneration(req, res, start, app, ip, rid);
      return;
    }
    const pool = generation.pools.get(route.to);
    // A pool scaled to zero would only let requests sit out the queue timeout.
    if (pool === undefined || pool.instances.length === 0) {
      this.#direct(req, res, start, 503, 'no-pool', app, NO_GENERATION_RETRY_AFTER_S, ip, rid);
      return;
    }

    // 7-9. Admission, forwarding, errors.
    const admission = this.#admissionByRoute.get(route) ?? this.#admission(app, route.to);
    const fw = new Forward(this.#shared, {
      req,
      res,
      app,
      route,
      generation,
      pool,
      admission,
      path,
      host,
      socketAddress: peer,
      clientIp: ip,
      requestId: rid,
      start,
    });
    this.#inFlight++;
    fw.run(start);
  }

  /** A response the gateway makes without forwarding (no route, no generation, ...), with its log line. */
  #direct(
    req: IncomingMessage,
    res: ServerResponse,
    start: number,
    status: number,
    reason: ErrorReason,
    app: AppEntry | null,
    retryAfter: number | null,
    ip: string,
    rid: string,
  ): void {
    this.#pages.send(req, res, { status, reason, retryAfter, requestId: rid, page: errorPage(app, status), close: this.#shared.stopping });
    this.#logDirect(req, start, status, app, ip, rid);
  }

  /**
   * 503 for an app with no active generation: still starting (`Retry-After`), or its start failed, which
   * waiting does not fix (no `Retry-After`). The reason was worked out when the table was built.
   */
  #noGeneration(req: IncomingMessage, res: ServerResponse, start: number, app: AppEntry, ip: string, rid: string): void {
    const reason = app.noGeneration ?? 'no-active-generation';
    this.#direct(req, res, start, 503, reason, app, reason === 'start-failed' ? null : NO_GENERATION_RETRY_AFTER_S, ip, rid);
  }

  #logDirect(req: IncomingMessage, start: number, status: number, app: AppEntry | null, ip: string, rid: string): void {
    if (this.#log.isLevelEnabled('info')) {
      accessLog(this.#log, {
        app: app?.name ?? null,
        method: req.method ?? '',
        path: req.url ?? '',
        status,
        durationMs: elapsedMs(start),
        requestId: rid,
        release: app?.generation?.releaseId ?? null,
        instance: null,
        clientIp: ip,
      });
    }
  }

  /**
   * Static files: from the pinned generation's release, without an admission slot (no instance is
   * involved), but counted in flight so a graceful stop lets the download finish.
   */
  #serveStatic(req: IncomingMessage, res: ProxyResponse, start: number, app: AppEntry, route: RouteConfig, path: string, ip: string, rid: string): void {
    const generation = app.generation;
    if (generation === null) {
      this.#noGeneration(req, res, start, app, ip, rid);
      return;
    }
    this.#inFlight++;
    const served = this.#static.serve({ req, res, route, generation, path, requestId: rid, mode: app.mode.mode, close: this.#shared.stopping });
    void served.then((status) => {
      if (this.#log.isLevelEnabled('info')) {
        accessLog(this.#log, {
          app: app.name,
          method: req.method ?? '',
          path,
          status,
          durationMs: elapsedMs(start),
          requestId: rid,
          release: generation.releaseId,
          instance: null,
          clientIp: ip,
        });
      }
      if (requestChannel.hasSubscribers) requestChannel.publish({ app, route, status, start } satisfies CompletedRequest);
      this.#requestDone();
    });
  }

  #forwardDone(_fw: Forward): void {
    this.#requestDone();
  }

  #tunnelDone(_t: Tunnel): void {
    this.#requestDone();
  }

  /** One request (forwarded, static, or a WebSocket) is over. */
  #requestDone(): void {
    this.#inFlight--;
    if (this.#shared.stopping) {
      // Connections whose last response just ended would otherwise idle until keepAliveTimeout.
      for (const { server } of this.#servers) server.closeIdleConnections();
      if (this.#inFlight === 0) this.#drained?.();
    }
  }

  /**
   * A WebSocket upgrade (SPEC step 10): the same steps as a request (client IP, route, rate limit, mode,
   * pin), then a tunnel (websocket.ts), held to the pool's WebSocket limit rather than to request
   * admission. Refusals are raw HTTP/1.1 responses on the socket, which has left the HTTP server, and
   * which is then closed.
   */
  #onUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    const start = performance.now();
    // The socket is ours now: without a listener, a client reset would be an uncaught error.
    socket.on('error', ignoreError);
    const headers = req.headers;
    const peer = socketAddress(socket);
    const ip = clientIp(headers['x-forwarded-for'] as string | undefined, peer, this.#shared.trustedProxyCount);
    const rid = requestId(headers['x-request-id'] as string | undefined);
    if (this.#shared.stopping) {
      this.#directRaw(req, socket, start, 503, 'stopping', null, NO_GENERATION_RETRY_AFTER_S, ip, rid);
      return;
    }
    let path = req.url ?? '/';
    let host = headers.host ?? '';
    if (path.charCodeAt(0) !== 0x2f /* / */) {
      const target = absoluteTarget(path);
      if (target === null) {
        this.#directRaw(req, socket, start, 400, 'bad-request', null, null, ip, rid);
        return;
      }
      path = target.path;
      host = target.host;
    }
    // Two Host headers, a Host that is no authority, or a body: node hands an upgrade's body to us unparsed (in `head`), and after a
    // 101 it would reach the app as tunnel bytes. An upgrade has no body (RFC 6455 § 4.1).
    const length = headers['content-length'];
    if (hasDuplicateHost(req.rawHeaders) || !isValidHost(host) || headers['transfer-encoding'] !== undefined || (length !== undefined && Number(length) !== 0)) {
      this.#directRaw(req, socket, start, 400, 'bad-request', null, null, ip, rid);
      return;
    }
    // Gateway endpoints speak plain HTTP only.
    const prefix = this.#prefix;
    if (path.startsWith(prefix)) {
      const c = path.charCodeAt(prefix.length);
      if (path.length === prefix.length || c === 0x2f /* / */ || c === 0x3f /* ? */) {
        this.#directRaw(req, socket, start, 400, 'bad-request', null, null, ip, rid);
        return;
      }
    }
    const match = this.#table.lookup(host, path);
    if (match === null) {
      this.#directRaw(req, socket, start, 404, 'no-route', null, null, ip, rid);
      return;
    }
    const app = match.app;
    const route = match.route;
    const limiter = this.#rateLimitByApp.get(app);
    if (limiter !== undefined && limiter.applies(path)) {
      const waitMs = limiter.take(ip, start);
      if (waitMs > 0) {
        this.#directRaw(req, socket, start, 429, 'rate-limited', app, Math.ceil(waitMs / 1000), ip, rid);
        return;
      }
    }
    if (app.mode.mode !== 'normal' && this.#modes.refuses(app.mode, req.method, false)) {
      this.#modes.sendRaw(req, socket, app, rid);
      this.#logDirect(req, start, this.#modes.status, app, ip, rid);
      return;
    }
    // A static route has no process to take a WebSocket.
    if (route.to === null) {
      this.#directRaw(req, socket, start, 400, 'bad-request', app, null, ip, rid);
      return;
    }
    const generation = app.generation;
    if (generation === null) {
      const reason = app.noGeneration ?? 'no-active-generation';
      this.#directRaw(req, socket, start, 503, reason, app, reason === 'start-failed' ? null : NO_GENERATION_RETRY_AFTER_S, ip, rid);
      return;
    }
    const pool = generation.pools.get(route.to);
    if (pool === undefined || pool.instances.length === 0) {
      this.#directRaw(req, socket, start, 503, 'no-pool', app, NO_GENERATION_RETRY_AFTER_S, ip, rid);
      return;
    }
    this.#inFlight++;
    this.#websockets.open({ req, socket, head, app, route, generation, pool, path, host, socketAddress: peer, clientIp: ip, requestId: rid, start });
  };

  /** #direct for an upgrade: a raw response on the socket, which is then closed. */
  #directRaw(req: IncomingMessage, socket: Socket, start: number, status: number, reason: ErrorReason, app: AppEntry | null, retryAfter: number | null, ip: string, rid: string): void {
    this.#pages.sendRaw(req, socket, { status, reason, retryAfter, requestId: rid, page: errorPage(app, status), close: true });
    this.#logDirect(req, start, status, app, ip, rid);
  }

  // ---- rate limits --------------------------------------------------------------------------------

  /** One limiter per app with a `rate_limit`, kept (with its buckets) while the app keeps one. */
  #syncRateLimits(): void {
    const byApp = new Map<AppEntry, RateLimit>();
    const keep = new Set<string>();
    for (const app of this.#table.apps) {
      const config = (this.#config.apps[app.name] ?? app.config).rateLimit;
      if (config === null) continue;
      let limiter = this.#rateLimits.get(app.name);
      if (limiter === undefined) {
        limiter = new RateLimit(app.name, config);
        this.#rateLimits.set(app.name, limiter);
      } else if (!limiter.matches(config)) limiter.configure(config);
      byApp.set(app, limiter);
      keep.add(app.name);
    }
    for (const name of this.#rateLimits.keys()) if (!keep.has(name)) this.#rateLimits.delete(name);
    this.#rateLimitByApp = byApp;
  }

  // ---- admission ----------------------------------------------------------------------------------

  #syncAdmissions(): void {
    const byRoute = new Map<RouteConfig, Admission>();
    for (const app of this.#table.apps) {
      for (const route of app.config.routes) {
        if (route.to !== null) byRoute.set(route, this.#admission(app, route.to));
      }
    }
    this.#admissionByRoute = byRoute;
  }

  /** The admission of `app/process`, created on first use, its limits brought up to date. */
  #admission(app: AppEntry, process: string): Admission {
    const key = `${app.name}/${process}`;
    const existing = this.#admissions.get(key);
    const limits = this.#limits(app, process, existing);
    if (existing !== undefined) {
      if (existing.limit !== limits.limit || existing.queueMax !== limits.queueMax || existing.queueTimeoutMs !== limits.queueTimeoutMs) {
        existing.configure(limits);
      }
      return existing;
    }
    const created = new Admission(app.name, process, limits);
    this.#admissions.set(key, created);
    return created;
  }

  /**
   * instances x concurrency of the configured process type. An app whose process types come from a
   * Procfile has no configured count, so the active generation's pool gives it; with neither, the last
   * known limit stays (or none, leaving the per-instance concurrency as the only bound).
   */
  #limits(app: AppEntry, process: string, existing: Admission | undefined): AdmissionLimits {
    const config = this.#config.apps[app.name] ?? app.config;
    const proc = config.processes?.[process];
    let limit: number;
    if (proc !== undefined) limit = proc.instances * proc.concurrency;
    else {
      const pool = app.generation?.pools.get(process);
      if (pool !== undefined && pool.instances.length > 0) limit = pool.instances.length * pool.concurrency;
      else limit = existing?.limit ?? Number.POSITIVE_INFINITY;
    }
    return { limit, queueMax: config.queue.max, queueTimeoutMs: config.queue.timeoutMs };
  }

  #onTick(): void {
    const now = performance.now();
    for (const a of this.#admissions.values()) if (a.depth > 0) a.sweep(now);
    if (this.#websockets.waiting > 0) this.#websockets.sweep(now);
    if (++this.#ticks * TICK_MS >= CLIENT_SWEEP_MS) {
      this.#ticks = 0;
      this.#clients.sweep();
    }
    if (++this.#sweepTicks * TICK_MS >= SWEEP_INTERVAL_MS) {
      this.#sweepTicks = 0;
      for (const limiter of this.#rateLimits.values()) limiter.sweep(now);
    }
  }

  #clearTick(): void {
    if (this.#tick !== null) clearInterval(this.#tick);
    this.#tick = null;
  }

  // ---- listeners ----------------------------------------------------------------------------------

  async #listen(address: ListenAddress): Promise<ProxyServer> {
    const server = createServer(SERVER_OPTIONS, this.#onRequest);
    server.on('upgrade', this.#onUpgrade);
    // `Expect: 100-continue` comes to us unanswered: the Forward sends 100 only once it wants the body,
    // so a body refused unread (413 from Content-Length, 404, 429...) is never sent. A final answer
    // without 100 closes the connection (node does that), as the client may still send the body.
    server.on('checkContinue', this.#onRequest);
    try {
      await listen(server, address, this.#log);
    } catch (err) {
      // A unix socket file left by a process that died is in the way but dead: nobody accepts on it.
      // Anything else at that path (a live socket, a regular file) is left alone and reported.
      if (address.kind === 'unix' && (err as NodeJS.ErrnoException).code === 'EADDRINUSE' && (await isDeadSocket(address.path))) {
        await unlink(address.path).catch(() => {});
        try {
          await listen(server, address, this.#log);
          return server;
        } catch (again) {
          err = again;
        }
      }
      throw new BerthError(ErrorCodes.listen, `cannot listen on ${address.text}: ${listenProblem(err)}`, { cause: err });
    }
    return server;
  }

  #transition(next: ProxyState): void {
    const was = this.#state;
    if (was === next) return;
    this.#state = next;
    this.#log.info({ state: next, was }, 'proxy state');
  }
}

function listen(server: ProxyServer, address: ListenAddress, log: Logger): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    const done = () => {
      server.off('error', onError);
      // Once bound, an accept error (EMFILE...) must not crash the gateway: it is reported, and Node
      // keeps accepting when it can.
      server.on('error', (err: Error) => log.error({ listen: address.text, err: err.message }, 'listener error'));
      resolve();
    };
    if (address.kind === 'unix') server.listen(address.path, done);
    else server.listen(address.port, address.host, done);
  });
}

function closeServer(server: ProxyServer): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
  });
}

async function isDeadSocket(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => null);
  return st !== null && st.isSocket() && !(await acceptsConnections(path));
}

function listenProblem(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'EADDRINUSE':
      return 'address in use';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EADDRNOTAVAIL':
      return 'address not available';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return 'unknown host';
    case 'ENOENT':
      return 'no such directory';
    default:
      return err instanceof Error ? err.message : String(err);
  }
}

function ignoreError(): void {}

/** The app's `pages.error` (a 5xx template in the release now serving), when the answer is a 5xx. */
function errorPage(app: AppEntry | null, status: number): AppPage | null {
  const file = app?.config.pages.error ?? null;
  const gen = app?.generation ?? null;
  return status >= 500 && file !== null && gen !== null ? { releaseDir: gen.releaseDir, file } : null;
}

/**
 * A request Transfer-Encoding whose last coding is not exactly `chunked`, or one sent with a
 * Content-Length: the body length cannot be known (RFC 9112 6.1, 6.3). Called only when the header is
 * there. Node joins repeated Transfer-Encoding headers with ", ", so the last token is the last coding.
 */
function badTransferEncoding(headers: IncomingMessage['headers']): boolean {
  if (headers['content-length'] !== undefined) return true;
  const te = headers['transfer-encoding']!;
  const comma = te.lastIndexOf(',');
  let last = comma < 0 ? te : te.slice(comma + 1);
  // Optional whitespace is spaces and tabs (RFC 9110 5.6.3): `gzip,\tchunked` is chunked to node too.
  while (last.charCodeAt(0) === 0x20 || last.charCodeAt(0) === 0x09) last = last.slice(1);
  while (last.charCodeAt(last.length - 1) === 0x20 || last.charCodeAt(last.length - 1) === 0x09) last = last.slice(0, -1);
  return last.length !== 7 || last.toLowerCase() !== 'chunked';
}

/** Host and origin-form path of an absolute-form request target; null when it is not one. */
function absoluteTarget(url: string): { host: string; path: string } | null {
  const scheme = url.startsWith('http://') ? 7 : url.startsWith('https://') ? 8 : -1;
  if (scheme < 0) return null;
  const slash = url.indexOf('/', scheme);
  const q = url.indexOf('?', scheme);
  const end = slash < 0 ? (q < 0 ? url.length : q) : q < 0 ? slash : Math.min(slash, q);
  const host = url.slice(scheme, end);
  // No userinfo (RFC 9110 4.2.4: a recipient treats it as an error) and no empty authority: either
  // would reach the app as a Host it cannot trust.
  if (host === '' || host.indexOf('@') >= 0) return null;
  const rest = url.slice(end);
  return { host, path: rest === '' ? '/' : rest.charCodeAt(0) === 0x3f ? `/${rest}` : rest };
}
