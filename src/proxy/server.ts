/**
 * The front door: listeners and the request pipeline.
 *
 * Listeners outlive everything else: `setTable` and `setConfig` swap what requests see and never touch a
 * socket. Every request, plain or a WebSocket upgrade, is resolved once on arrival (resolver.ts: the
 * health lane, client IP, route, rate limit, mode, static, pinning), which reads the table pointer once.
 * Then this file only acts on the answer: the health lane (health-lane.ts), a refusal or a mode page, a
 * static file (static.ts), or, for a pinned target, admission, forwarding and errors in a `Forward`
 * (forward.ts), or a WebSocket tunnel (websocket.ts).
 *
 * A TLS listener (secure-listener.ts) serves h2 and http/1.1 by ALPN through the same handlers: node's
 * h2 compatibility API gives them a request and response shaped like node:http's, and the few places
 * where HTTP/2 differs read `Resolution.h2`. Each listener has its own handler functions, made once, so
 * whether a request came over TLS is an argument, never a lookup.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { unlink } from 'node:fs/promises';
import { Server as NetServer, type AddressInfo } from 'node:net';
import type { BerthConfig, ListenAddress } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import type { MetricsExporter } from '../metrics/metrics.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { Admission } from './admission.ts';
import { accessLog, elapsedMs, requestChannel, type CompletedRequest } from './access-log.ts';
import { Affinity } from './affinity.ts';
import { ErrorPages, errorPage, type ErrorResponse } from './error-pages.ts';
import type { ExchangeShared } from './exchange.ts';
import { Forward, ProxyResponse } from './forward.ts';
import { isDeadSocket, listen, listenProblem } from './bind.ts';
import { closeKeepingPath } from '../lib/unix-socket.ts';
import { hstsHeader, sendChallengeAnswer, sendRedirect, sendRedirectRaw } from './https-policy.ts';
import { onDemandFor, SecureListener, type ProxyHandlers } from './secure-listener.ts';
import { AdoptedListener, PlainListener, type FrontListener } from './front-listener.ts';
import type { FrontDoorTls } from '../tls/front-door.ts';
import { HealthLane } from './health-lane.ts';
import { Resolver, type Resolution } from './resolver.ts';
import { RoutingTable } from './router.ts';
import { UpstreamClients } from './upstream-clients.ts';
import { Modes } from './modes.ts';
import { Static } from './static.ts';
import { SWEEP_INTERVAL_MS } from './rate-limit.ts';
import { WebSockets } from './websocket.ts';
import type { GenerationView } from '../supervisor/types.ts';
import type { SharedCells } from '../lib/shared-cells.ts';

export type ProxyState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/** How often queued requests are expired and queues re-pumped (instances that became ready). */
const TICK_MS = 50;
/** Upstream pools unused for one to two of these periods are closed (instances that went away). */
const CLIENT_SWEEP_MS = 30_000;
/** How often an upgrade's old gateway looks whether its connections are gone. */
const DRAIN_POLL_MS = 50;

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
  /** The gateway's shared cells (admission counts global across proxy threads); default: counts of its own. */
  cells?: SharedCells | null;
  /** Bind TCP listeners with SO_REUSEPORT, so proxy worker threads can bind them too (`proxy.workers`). */
  reusePort?: boolean;
  /**
   * Called before each request and upgrade is resolved, and as each TLS connection arrives: a proxy worker
   * thread applies a table, config or certificate the main thread has posted but it has not read yet, so
   * a change applies from the next request (or handshake) on.
   */
  catchUp?: (() => void) | null;
}

export class Proxy {
  #state: ProxyState = 'new';
  #config: BerthConfig;
  #log: Logger;
  #reusePort: boolean;
  #catchUp: (() => void) | null;
  #servers: { listener: FrontListener; address: ListenAddress }[] = [];
  #tls: FrontDoorTls | null = null;
  #clients = new UpstreamClients();
  #pages = new ErrorPages();
  #modes = new Modes(this.#pages);
  #static = new Static(this.#pages);
  #resolver: Resolver;
  #websockets: WebSockets;
  #sweepTicks = 0;
  #lane: HealthLane;
  #metrics: MetricsExporter | null = null;
  #shared: ExchangeShared;
  #inFlight = 0;
  #tick: NodeJS.Timeout | null = null;
  #ticks = 0;
  #stopping: Promise<void> | null = null;
  /** Stopping after an upgrade handed the listeners over: idle connections end by their keep-alive timeout. */
  #handedOver = false;
  /** Every open client connection, of every listener (what an upgrade's old gateway drains). */
  #connections = new Set<Socket>();
  /** Resolves the graceful stop's wait once in-flight reaches zero. */
  #drained: (() => void) | null = null;

  constructor(opts: ProxyOptions) {
    this.#config = opts.config;
    this.#log = opts.logger;
    this.#reusePort = opts.reusePort === true;
    this.#catchUp = opts.catchUp ?? null;
    this.#shared = {
      clients: this.#clients,
      pages: this.#pages,
      log: opts.logger,
      trustedProxyCount: opts.config.trustedProxyCount,
      underscoresInHeaders: opts.config.underscoresInHeaders === true,
      stopping: false,
      publicDetails: opts.config.publicDetails === true,
      stateDir: opts.config.stateDir,
      table: new RoutingTable([]),
      affinity: new Affinity(opts.config.stateDir, opts.logger),
      done: () => this.#requestDone(),
    };
    this.#resolver = new Resolver(opts.config, this.#shared, this.#modes, opts.cells ?? null);
    this.#websockets = new WebSockets(this.#shared, opts.cells ?? null);
    this.#lane = new HealthLane(this);
  }

  get state(): ProxyState {
    return this.#state;
  }

  get table(): RoutingTable {
    return this.#resolver.table;
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
    return this.#resolver.queueDepth(app);
  }

  /** Every pool's admission (`app/process`), for the metrics read at scrape time. */
  admissions(): IterableIterator<Admission> {
    return this.#resolver.admissions();
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
    this.#shared.table = table;
    this.#resolver.setTable(table);
  }

  /** Applies a reloaded config: trusted_proxy_count, internal_prefix and per-app limits. Listeners stay. */
  setConfig(config: BerthConfig): void {
    this.#config = config;
    this.#shared.trustedProxyCount = config.trustedProxyCount;
    this.#shared.publicDetails = config.publicDetails === true;
    this.#shared.stateDir = config.stateDir;
    this.#shared.underscoresInHeaders = config.underscoresInHeaders === true;
    this.#resolver.setConfig(config);
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
   * closes what it opened and rejects with BERTH_E_LISTEN naming the address. `tls`: the certificates
   * (and ACME manager) TLS listeners serve; required when any listener is TLS. The store may change its
   * certificates at any time: listeners are never closed for it.
   */
  async start(tls?: FrontDoorTls | null, opts: { addresses?: ListenAddress[] } = {}): Promise<void> {
    if (this.#state !== 'new') throw new BerthError(ErrorCodes.internal, `proxy already ${this.#state}`);
    this.#transition('starting');
    this.#tls = tls ?? null;
    try {
      for (const address of opts.addresses ?? this.#config.listen) {
        const listener = address.tls ? await this.#listenSecure(address) : new PlainListener(await this.#listen(address));
        this.#servers.push({ listener, address });
      }
    } catch (err) {
      await Promise.all(this.#servers.map(({ listener }) => listener.close()));
      this.#servers = [];
      this.#transition('stopped');
      throw err;
    }
    const https = this.addresses().find((a) => a.tls);
    this.#resolver.setHttps(this.#tls?.acme ?? null, https?.kind === 'tcp' ? https.port : null);
    this.#tick = setInterval(() => this.#onTick(), TICK_MS);
    this.#tick.unref();
    this.#transition('running');
    this.#log.info({ listen: this.addresses().map((a) => a.text) }, 'proxy listening');
  }

  // ---- upgrade ---------------------------------------------------------------------------------------

  /**
   * The new gateway's side of an upgrade (upgrade/successor.ts): serves every `config.listen` address
   * on the listening socket the old gateway handed over for it (by listenerKey), binding any it
   * did not hand over, then closes the listeners start() bound (the private probe socket).
   */
  async adoptListeners(handed: ReadonlyMap<string, NetServer>): Promise<void> {
    const probes = this.#servers;
    const servers: { listener: FrontListener; address: ListenAddress }[] = [];
    try {
      for (const [i, address] of this.#config.listen.entries()) {
        const socket = handed.get(listenerKey(i, address));
        let listener: FrontListener;
        if (socket === undefined) listener = address.tls ? await this.#listenSecure(address) : new PlainListener(await this.#listen(address));
        else listener = new AdoptedListener(address.tls ? this.#secureListener(address) : new PlainListener(this.#plainServer()), socket, this.#log, address.text);
        servers.push({ listener, address });
      }
    } catch (err) {
      await Promise.all(servers.map(({ listener }) => listener.close()));
      throw err;
    }
    this.#servers = servers;
    // The HTTPS port redirects name is the one of the listeners served now, not of the probe.
    const https = this.addresses().find((a) => a.tls);
    this.#resolver.setHttps(this.#tls?.acme ?? null, https?.kind === 'tcp' ? https.port : null);
    await Promise.all(probes.map(({ listener }) => listener.close()));
    this.#log.info({ listen: this.addresses().map((a) => a.text), adopted: handed.size }, 'proxy listening on the sockets handed over');
  }

  /** The old gateway's side of an upgrade: each listening socket, by listenerKey. */
  listeningSockets(): Map<string, NetServer> {
    return new Map(this.#servers.map(({ listener, address }, i) => [listenerKey(i, address), listener.accepting]));
  }

  /**
   * The old gateway's side, once the new one serves the sockets it was handed: this one stops accepting
   * (the sockets stay open in the new gateway) and serves what it has until stop().
   */
  stopAccepting(): void {
    for (const { listener, address } of this.#servers) {
      const server = listener.accepting;
      if (!server.listening) continue;
      // A unix listener's socket file stays: the new gateway listens on that socket. close() stops the
      // accepting at once (its callback, not waited for, would wait for every connection to end).
      if (address.kind === 'unix') closeKeepingPath(server, address.path);
      // net.Server's own close: http.Server's would also close the idle keep-alive connections, racing
      // a client's next request on one of them.
      else NetServer.prototype.close.call(server);
    }
  }

  /** The bound addresses, with port 0 resolved to the real port. */
  addresses(): ListenAddress[] {
    return this.#servers.map(({ listener, address }) => {
      if (address.kind === 'unix') return address;
      const port = (listener.accepting.address() as AddressInfo | null)?.port ?? address.port;
      const host = address.host.includes(':') ? `[${address.host}]` : address.host;
      return { kind: 'tcp', host: address.host, port, text: `${host}:${port}`, tls: address.tls };
    });
  }

  /**
   * Graceful: close the listeners and idle keep-alive connections, answer in-flight requests with
   * `Connection: close`, wait until in-flight (queued included) reaches zero or `deadlineMs` passes, then
   * close every connection. Idempotent.
   */
  stop(deadlineMs: number, opts: { drainWebSockets?: boolean } = {}): Promise<void> {
    this.#stopping ??= this.#stop(deadlineMs, opts.drainWebSockets === true);
    return this.#stopping;
  }

  /**
   * `drainWebSockets` (the old gateway after an upgrade): WebSockets may go on until the deadline, as a
   * deploy's drain lets them; only then are they told the gateway goes away.
   */
  async #stop(deadlineMs: number, drainWebSockets: boolean): Promise<void> {
    if (this.#state === 'new' || this.#state === 'stopped') {
      this.#transition('stopped');
      return;
    }
    this.#transition('stopping');
    this.#shared.stopping = true;
    // After an upgrade the listening sockets are the new gateway's already: each connection here ends
    // after its next answer (Connection: close) or its keep-alive timeout, never cut while a client may
    // be sending on it (closing an idle keep-alive connection races the client's next request).
    this.#handedOver = drainWebSockets;
    if (drainWebSockets) deadlineMs = await this.#drain(deadlineMs);
    const closed = this.#servers.map(({ listener }) => listener.close());
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
    for (const { listener } of this.#servers) listener.closeAllConnections();
    // Upgraded sockets have left the HTTP servers, so closeAllConnections does not reach them.
    this.#websockets.destroyAll();
    this.#clearTick();
    await this.#clients.destroy();
    await Promise.all(closed);
    this.#transition('stopped');
  }

  /**
   * Waits until no connection is left (so nothing is in flight) or `deadlineMs` passes; resolves with
   * what is left of the deadline, at least a moment for the WebSockets still open to take their close.
   */
  async #drain(deadlineMs: number): Promise<number> {
    const started = Date.now();
    while (this.#connections.size > 0 || this.#inFlight > 0) {
      if (Date.now() - started >= deadlineMs) break;
      await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
    }
    return Math.max(1_000, deadlineMs - (Date.now() - started));
  }

  /** Forced: drop every connection and upstream request now. */
  destroy(err?: Error): void {
    if (this.#state === 'stopped') return;
    if (err) this.#log.error({ err: err.message }, 'proxy destroyed');
    this.#shared.stopping = true;
    this.#clearTick();
    for (const { listener } of this.#servers) {
      void listener.close();
      listener.closeAllConnections();
    }
    this.#websockets.destroyAll();
    void this.#clients.destroy(err);
    this.#drained?.();
    this.#transition('stopped');
  }

  // ---- request pipeline ----------------------------------------------------------------------------

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    this.#handle(req, res as ProxyResponse, false);
  };

  /** A TLS listener's requests, h1 or h2 (an h2 response is an H2ProxyResponse: see forward.ts). */
  #onSecureRequest = (req: IncomingMessage, res: ServerResponse): void => {
    this.#handle(req, res as ProxyResponse, true);
  };

  #handle(req: IncomingMessage, res: ProxyResponse, tls: boolean): void {
    const start = performance.now();
    if (this.#catchUp !== null) this.#catchUp();
    // A request that asked for an upgrade it does not get (h2c, a non-GET WebSocket): node's parser stops
    // at it and drops the rest of that packet, so a pipelined request behind it would go unanswered.
    // The connection closes after the response instead of hanging.
    if (this.#shared.stopping || req.headers.upgrade !== undefined) res.shouldKeepAlive = false;
    const r = this.#resolver.resolve(req, start, false, tls);
    // HTTP/2 has no Connection header (node throws on one): a stream ends, the session stays.
    const close = this.#shared.stopping && !r.h2;
    if (tls && r.as !== 'lane' && r.app !== null) {
      // RFC 6797 § 7.2: only over TLS, where the client knows it talks to the real host.
      const hsts = hstsHeader(r.app.config);
      if (hsts !== null) res.setHeader('strict-transport-security', hsts);
    }
    switch (r.as) {
      case 'pinned': {
        // 7-9. Admission, forwarding, errors.
        const fw = new Forward(this.#shared, r, req, res);
        this.#inFlight++;
        fw.run(start);
        return;
      }
      case 'lane':
        this.#lane.handle(req, res, r.path);
        return;
      case 'static':
        this.#serveStatic(req, res, r, close);
        return;
      case 'mode':
        this.#modes.send(req, res, r.app!, r.requestId, close);
        break;
      case 'redirect':
        sendRedirect(req, res, r.location, r.requestId, close);
        break;
      case 'challenge':
        sendChallengeAnswer(req, res, r.location);
        break;
      default:
        // A client this confused (or hostile) gets no further requests parsed on this connection.
        if (r.close) res.shouldKeepAlive = false;
        this.#pages.send(req, res, refusal(r, close));
    }
    this.#logDirect(req, r);
  }

  /**
   * A WebSocket upgrade (SPEC step 10): resolved as a request is, then a tunnel (websocket.ts), held to
   * the pool's WebSocket limit rather than to request admission. Refusals are raw HTTP/1.1 responses on
   * the socket, which has left the HTTP server, and which is then closed.
   */
  #onUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    this.#upgrade(req, socket, head, false);
  };

  /** An HTTP/1.1 upgrade on a TLS listener (HTTP/2 has none: extended CONNECT is not offered). */
  #onSecureUpgrade = (req: IncomingMessage, socket: Socket, head: Buffer): void => {
    this.#upgrade(req, socket, head, true);
  };

  #upgrade(req: IncomingMessage, socket: Socket, head: Buffer, tls: boolean): void {
    const start = performance.now();
    if (this.#catchUp !== null) this.#catchUp();
    // The socket is ours now: without a listener, a client reset would be an uncaught error.
    socket.on('error', ignoreError);
    const r = this.#resolver.resolve(req, start, true, tls);
    if (r.as === 'pinned') {
      this.#inFlight++;
      this.#websockets.open(r, req, socket, head);
      return;
    }
    if (r.as === 'mode') this.#modes.sendRaw(req, socket, r.app!, r.requestId);
    else if (r.as === 'redirect') sendRedirectRaw(socket, r.location, r.requestId);
    else this.#pages.sendRaw(req, socket, refusal(r, true));
    this.#logDirect(req, r);
  }

  /** The access-log line of an answer the gateway made itself (a refusal or a mode page). */
  #logDirect(req: IncomingMessage, r: Resolution): void {
    if (this.#log.isLevelEnabled('info')) {
      const app = r.app;
      accessLog(this.#log, {
        app: app?.name ?? null,
        method: req.method ?? '',
        path: req.url ?? '',
        status: r.status,
        durationMs: elapsedMs(r.start),
        requestId: r.requestId,
        release: app?.generation?.releaseId ?? null,
        instance: null,
        clientIp: r.clientIp,
        affinity: null,
      });
    }
  }

  /**
   * Static files: from the pinned generation's release, without an admission slot (no instance is
   * involved), but counted in flight so a graceful stop lets the download finish.
   */
  #serveStatic(req: IncomingMessage, res: ProxyResponse, r: Resolution, close: boolean): void {
    // `r` is overwritten by the next request: what the answer's log line needs is kept here.
    const app = r.app!;
    const route = r.route!;
    const generation = r.generation!;
    const path = r.path;
    const start = r.start;
    const ip = r.clientIp;
    const rid = r.requestId;
    this.#inFlight++;
    const served = this.#static.serve({ req, res, route, generation, path, requestId: rid, mode: app.mode.mode, close });
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
          affinity: null,
        });
      }
      if (requestChannel.hasSubscribers) requestChannel.publish({ app, route, status, start } satisfies CompletedRequest);
      this.#requestDone();
    });
  }

  /** One request (forwarded, static, or a WebSocket) is over. */
  #requestDone(): void {
    this.#inFlight--;
    if (this.#shared.stopping) {
      // Connections whose last response just ended would otherwise idle until keepAliveTimeout. Not
      // after an upgrade: closing an idle keep-alive connection races its client's next request, and
      // the old gateway has time to let each one end by itself.
      if (!this.#handedOver) for (const { listener } of this.#servers) listener.closeIdleConnections();
      if (this.#inFlight === 0) this.#drained?.();
    }
  }

  #onTick(): void {
    const now = performance.now();
    this.#resolver.sweepAdmissions(now);
    if (this.#websockets.waiting > 0) this.#websockets.sweep(now);
    if (++this.#ticks * TICK_MS >= CLIENT_SWEEP_MS) {
      this.#ticks = 0;
      this.#clients.sweep();
    }
    if (++this.#sweepTicks * TICK_MS >= SWEEP_INTERVAL_MS) {
      this.#sweepTicks = 0;
      this.#resolver.sweepRateLimits(now);
    }
  }

  #clearTick(): void {
    if (this.#tick !== null) clearInterval(this.#tick);
    this.#tick = null;
  }

  // ---- listeners ----------------------------------------------------------------------------------

  /** A cleartext HTTP/1.1 server with the proxy's handlers, not listening yet. */
  #plainServer(): ProxyServer {
    const server = createServer(SERVER_OPTIONS, this.#onRequest);
    server.on('connection', this.#track);
    server.on('upgrade', this.#onUpgrade);
    // `Expect: 100-continue` comes to us unanswered: the Forward sends 100 only once it wants the body,
    // so a body refused unread (413 from Content-Length, 404, 429...) is never sent. A final answer
    // without 100 closes the connection (node does that), as the client may still send the body.
    server.on('checkContinue', this.#onRequest);
    return server;
  }

  async #listen(address: ListenAddress): Promise<ProxyServer> {
    const server = this.#plainServer();
    try {
      await listen(server, address, this.#log, this.#reusePort);
    } catch (err) {
      // A unix socket file left by a process that died is in the way but dead: nobody accepts on it.
      // Anything else at that path (a live socket, a regular file) is left alone and reported.
      if (address.kind === 'unix' && (err as NodeJS.ErrnoException).code === 'EADDRINUSE' && (await isDeadSocket(address.path))) {
        await unlink(address.path).catch(() => {});
        try {
          await listen(server, address, this.#log, this.#reusePort);
          return server;
        } catch (again) {
          err = again;
        }
      }
      throw new BerthError(ErrorCodes.listen, `cannot listen on ${address.text}: ${listenProblem(err)}`, { cause: err });
    }
    return server;
  }

  /** A TLS listener: h2 and http/1.1 by ALPN, certificates by SNI (secure-listener.ts). */
  async #listenSecure(address: ListenAddress): Promise<SecureListener> {
    const secure = this.#secureListener(address);
    try {
      await listen(secure.server, address, this.#log, this.#reusePort);
    } catch (err) {
      await secure.close();
      throw new BerthError(ErrorCodes.listen, `cannot listen on ${address.text}: ${listenProblem(err)}`, { cause: err });
    }
    return secure;
  }

  #track = (socket: Socket): void => {
    this.#connections.add(socket);
    socket.once('close', () => this.#connections.delete(socket));
  };

  /** A TLS listener's server with the proxy's handlers, not listening yet. */
  #secureListener(address: ListenAddress): SecureListener {
    const tls = this.#tls;
    if (tls === null) throw new BerthError(ErrorCodes.listen, `cannot listen on ${address.text}: a TLS listener needs certificates, and none were given`);
    if (address.kind !== 'tcp') throw new BerthError(ErrorCodes.listen, `cannot listen on ${address.text}: TLS listeners are TCP only`);
    const handlers: ProxyHandlers = { request: this.#onSecureRequest, upgrade: this.#onSecureUpgrade, shouldUpgrade: isWebSocketUpgrade };
    const secure = new SecureListener(tls, handlers, SERVER_OPTIONS, this.#onDemandFor, this.#log);
    secure.server.on('connection', this.#track);
    // A worker thread brings its certificates and challenge answers up to date before each handshake.
    if (this.#catchUp !== null) secure.server.on('connection', this.#catchUp);
    return secure;
  }

  /** On-demand certificates are for names the current table sends to a wildcard or catch-all ACME app. */
  #onDemandFor = (servername: string): boolean => onDemandFor(this.#resolver.table, servername);

  #transition(next: ProxyState): void {
    const was = this.#state;
    if (was === next) return;
    this.#state = next;
    this.#log.info({ state: next, was }, 'proxy state');
  }
}

function ignoreError(): void {}

/**
 * A listener's name in an upgrade's handover: its place in `listen` and its text. The text alone is not
 * enough: two `:0` listeners read the same. Both gateways run the same config (the upgrade checks it).
 */
function listenerKey(index: number, address: ListenAddress): string {
  return `${index} ${address.text}`;
}

/** The answer to a refused request; a 5xx may use the app's `pages.error` from the release now serving. */
function refusal(r: Resolution, close: boolean): ErrorResponse {
  const app = r.app;
  const page = app === null ? null : errorPage(r.status, app.config.pages.error, app.generation?.releaseDir ?? null);
  return { status: r.status, reason: r.reason, retryAfter: r.retryAfter, requestId: r.requestId, page, close };
}
