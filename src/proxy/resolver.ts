/**
 * What a request arriving now gets: SPEC § Request handling steps 1 to 6, once, for plain requests and
 * WebSocket upgrades alike (server.ts calls `resolve` from both).
 *   1. gateway endpoints under `internal_prefix` (the health lane), before anything that could wait;
 *   2. the client IP and request id;
 *   3. the route (no match: 404), then the app's redirects (https-policy.ts: `https_redirect`, `canonical_host`);
 *   4. rate limits (rate-limit.ts);
 *   5. the mode (modes.ts), then static routes (static.ts), which take no admission slot;
 *   6. pinning to the app's active generation and the route's pool (none: 503), with the pool's admission;
 *      on a route with `affinity`, the instance its affinity names (affinity.ts), which may be one of a
 *      generation still draining after a deploy.
 * The answer is a refusal (status, reason, Retry-After) or a target. The request framing checks that
 * must come before any of it (absolute-form target, Host, Transfer-Encoding) are made here too, and on
 * cleartext listeners the ACME HTTP-01 answer comes right after the health lane.
 *
 * The Resolver also owns what those steps read besides the table: the rate limiters (per app) and the
 * admissions (per `app/process`), both kept across table swaps so buckets and limits hold across deploys.
 */
import type { IncomingMessage } from 'node:http';
import type { BerthConfig, RouteConfig } from '../config/schema.ts';
import type { GenerationView, PoolView, Upstream } from '../supervisor/types.ts';
import { Admission, type AdmissionLimits } from './admission.ts';
import type { Affinity, AffinityOutcome } from './affinity.ts';
import type { SharedCells } from '../lib/shared-cells.ts';
import { clientIp, socketAddress } from './client-ip.ts';
import type { ErrorReason } from './error-pages.ts';
import type { Modes } from './modes.ts';
import { RateLimit } from './rate-limit.ts';
import { newBucketTable } from './shared-buckets.ts';
import { ACME_CHALLENGE_PATH, redirectTarget, type HttpChallengeAnswerer } from './https-policy.ts';
import { hasDuplicateHost, isValidHost } from './request-headers.ts';
import { requestId } from './request-id.ts';
import { RoutingTable, type AppEntry } from './router.ts';

/** Retry-After (seconds) while an app has no active generation or pool, and for upgrades while stopping. */
const NO_GENERATION_RETRY_AFTER_S = 5;

/**
 * pinned: to a pool of the active generation (forward it, or open a tunnel). static: a static route of the
 * active generation (plain requests only). lane: a gateway endpoint (plain requests only). mode: the
 * app's mode turns it away (modes.ts answers). refused: the gateway answers `status`. redirect: a 308 to
 * `location`. challenge: an ACME HTTP-01 answer, `location` holding the key authorization.
 */
export type ResolvedAs = 'pinned' | 'static' | 'lane' | 'mode' | 'refused' | 'redirect' | 'challenge';

/**
 * The answer of `Resolver.resolve`. There is one per Resolver, overwritten by each call, so the hot path
 * allocates nothing for it: read it before anything else can resolve (Forward and Tunnel copy what they
 * keep in their constructors). Which fields mean something depends on `as`.
 */
export class Resolution {
  as: ResolvedAs = 'refused';
  /** Origin-form request target, query included; for `lane`, the part after `internal_prefix`. */
  path = '/';
  /** The Host routed by: the absolute-form target's authority, else the Host header; '' when absent. */
  host = '';
  socketAddress = '';
  clientIp = '';
  requestId = '';
  /** performance.now() at arrival. */
  start = 0;
  /** The matched app (refusals before a route matched: null). */
  app: AppEntry | null = null;
  route: RouteConfig | null = null;
  /** The generation pinned on arrival (`pinned`, `static`). */
  generation: GenerationView | null = null;
  pool: PoolView | null = null;
  /** The pool's request admission (`pinned` plain requests; null for upgrades, held to `websockets.max`). */
  admission: Admission | null = null;
  /** `pinned`: how session affinity placed it (affinity.ts); null when its route has none. */
  affinity: AffinityOutcome | null = null;
  /** `pinned`: the instance its affinity sends it to (it waits for that one); null: any of its pool. */
  affine: Upstream | null = null;
  /** `pinned`, cookie affinity: the instance its cookie names (a response from another sets a new cookie). */
  cookieNamed: Upstream | null = null;
  /** The answer's status (`refused`, `mode`). */
  status = 0;
  reason: ErrorReason = 'bad-request';
  /** Seconds, for `Retry-After`; null: none. */
  retryAfter: number | null = null;
  /** The request is too malformed to read another on its connection: it closes after the answer. */
  close = false;
  /** It arrived on a TLS listener. */
  tls = false;
  /** It arrived over HTTP/2 (TLS listeners only): no connection-level headers in the answer. */
  h2 = false;
  /** `redirect`: the Location; `challenge`: the answer's body. */
  location = '';
}

/** The proxy state the resolver reads (a part of exchange.ts's ExchangeShared). */
export interface ResolverShared {
  trustedProxyCount: number;
  /** The proxy is stopping: new upgrades are refused (plain requests are still answered). */
  stopping: boolean;
  /** Session affinity: places requests of routes with `affinity`, and names instances in cookies. */
  readonly affinity: Affinity;
}

export class Resolver {
  #config: BerthConfig;
  #shared: ResolverShared;
  #modes: Modes;
  #table: RoutingTable = new RoutingTable([]);
  #prefix: string;
  #r = new Resolution();
  /** Answers HTTP-01 challenges on cleartext listeners; null: no app uses ACME. */
  #acme: HttpChallengeAnswerer | null = null;
  /** The first TLS listener's port, for redirects to https; null: no TLS listener. */
  #httpsPort: number | null = null;
  /** `app/process` -> admission; kept across table swaps so limits hold across generations. */
  #admissions = new Map<string, Admission>();
  /** Route -> its pool's admission, rebuilt with each table, so a request finds it without a string key. */
  #admissionByRoute = new Map<RouteConfig, Admission>();
  /** App name -> its rate limiter; kept across table swaps so buckets survive a deploy or mode switch. */
  #rateLimits = new Map<string, RateLimit>();
  /** App entry -> its limiter, rebuilt with each table, so a request finds it without a string key. */
  #rateLimitByApp = new Map<AppEntry, RateLimit>();

  /** The gateway's shared cells: admission counts are then global across proxy threads. */
  #cells: SharedCells | null;

  constructor(config: BerthConfig, shared: ResolverShared, modes: Modes, cells: SharedCells | null = null) {
    this.#cells = cells;
    this.#config = config;
    this.#prefix = config.internalPrefix;
    this.#shared = shared;
    this.#modes = modes;
  }

  get table(): RoutingTable {
    return this.#table;
  }

  /** Makes `table` the one new requests see; admissions and limiters are brought in line with its apps. */
  setTable(table: RoutingTable): void {
    this.#table = table;
    this.#shared.affinity.prepare(table);
    this.#sync();
  }

  /** A reloaded config: internal_prefix and per-app limits. */
  setConfig(config: BerthConfig): void {
    this.#config = config;
    this.#prefix = config.internalPrefix;
    this.#sync();
  }

  /** The HTTPS side: who answers ACME challenges, and the port `https_redirect` sends clients to. */
  setHttps(acme: HttpChallengeAnswerer | null, httpsPort: number | null): void {
    this.#acme = acme;
    this.#httpsPort = httpsPort;
  }

  /** Requests waiting in the admission queues of the app's pools. */
  queueDepth(app: string): number {
    let n = 0;
    for (const a of this.#admissions.values()) if (a.app === app) n += a.depth;
    return n;
  }

  /** Every pool's admission (`app/process`). */
  admissions(): IterableIterator<Admission> {
    return this.#admissions.values();
  }

  /** Expires queued requests and admits what can start now (instances that became ready). */
  sweepAdmissions(now: number): void {
    for (const a of this.#admissions.values()) if (a.depth > 0) a.sweep(now);
  }

  /** Drops idle rate-limit buckets. */
  sweepRateLimits(now: number): void {
    for (const limiter of this.#rateLimits.values()) limiter.sweep(now);
  }

  /**
   * Steps 1 to 6 for one request, plain (`upgrade` false) or a WebSocket upgrade. The table is read once,
   * here, so the request keeps the generation (and mode) it arrived under. Synchronous, and allocates
   * nothing on the way to a target beyond what the steps themselves need.
   */
  resolve(req: IncomingMessage, start: number, upgrade: boolean, tls: boolean): Resolution {
    const r = this.#r;
    r.start = start;
    r.tls = tls;
    const h2 = tls && req.httpVersionMajor === 2;
    r.h2 = h2;
    const headers = req.headers;
    // An upgrade would be a connection the stop then has to close; a plain request is still answered.
    if (upgrade && this.#shared.stopping) return this.#refuseEarly(req, 503, 'stopping', NO_GENERATION_RETRY_AFTER_S);
    let path = req.url ?? '/';
    let host = headers.host ?? '';
    if (h2) {
      // CONNECT (RFC 9113 § 8.5) asks for a tunnel, which the front door does not offer (nor, for h1, does node).
      if (req.method === 'CONNECT') return this.#refuseEarly(req, 400, 'bad-request', null);
      // HTTP/2 names the authority in `:authority` (a client may send Host instead); both, differing, is
      // a malformed request (RFC 9113 § 8.3.1) that would route by one and reach the app with the other.
      const authority = headers[':authority'] as string | undefined;
      if (authority !== undefined) {
        if (host !== '' && host !== authority) return this.#refuseEarly(req, 400, 'bad-request', null);
        host = authority;
      }
    } else if (path.charCodeAt(0) !== 0x2f /* / */) {
      // Absolute form (`GET http://host/path`): its authority replaces the Host header (RFC 9112 3.2.2),
      // for routing and in the request the app gets (request-headers.ts).
      const target = absoluteTarget(path);
      if (target === null) return this.#refuseEarly(req, 400, 'bad-request', null);
      path = target.path;
      host = target.host;
    }
    // Two Host headers: node keeps the first, an app's framework might read the other (RFC 9112 3.2).
    // A Host that is no authority (`evil.example/.shop.test` matches `*.shop.test`): a 400, as nginx.
    // A plain request's Transfer-Encoding that does not end in chunked (or comes with a Content-Length):
    // node's parser refuses it, but only after emitting the request, and with buffering off it would
    // already be on its way to the app (RFC 9112 6.3). An upgrade with any body: node hands it to us
    // unparsed (in `head`), and after a 101 it would reach the app as tunnel bytes (RFC 6455 § 4.1).
    // A client this confused (or hostile) gets no further requests parsed on this connection.
    if (
      hasDuplicateHost(req.rawHeaders) ||
      !isValidHost(host) ||
      (upgrade ? upgradeHasBody(headers) : headers['transfer-encoding'] !== undefined && badTransferEncoding(headers))
    ) {
      return this.#refuseEarly(req, 400, 'bad-request', null);
    }

    // 1. Gateway endpoints, before anything that could queue. They speak plain HTTP only.
    const prefix = this.#prefix;
    if (path.startsWith(prefix)) {
      const c = path.charCodeAt(prefix.length);
      if (path.length === prefix.length || c === 0x2f /* / */ || c === 0x3f /* ? */) {
        if (upgrade) return this.#refuseEarly(req, 400, 'bad-request', null);
        r.as = 'lane';
        r.path = path.slice(prefix.length);
        return r;
      }
    }

    // 1a. ACME HTTP-01, on cleartext listeners, before routing, modes and redirects: the CA asks for any
    //     host an app will serve, whatever the app's state. Null: not a pending challenge, routed as usual.
    const acme = this.#acme;
    if (acme !== null && !tls && !upgrade && path.startsWith(ACME_CHALLENGE_PATH)) {
      const answer = acme.answerHttp(path);
      if (answer !== null) {
        this.#identify(req);
        r.as = 'challenge';
        r.path = path;
        r.app = null;
        r.status = 200;
        r.location = answer;
        return r;
      }
    }

    // 2. Client IP.
    this.#identify(req);
    r.path = path;
    r.host = host;

    // 3. Route.
    const match = this.#table.lookup(host, path);
    if (match === null) return this.#refuse(404, 'no-route', null, null);
    const app = match.app;
    const route = match.route;

    // 3a. Redirects (`canonical_host`, `https_redirect`): before rate limits, which the redirected request
    //     meets where it lands (counting the 308 too would charge one page load twice); before the mode,
    //     so a maintenance page is shown at the right address; before static files and pinning, which
    //     they do not need (a redirect works while the app starts or has failed).
    const config = app.config;
    if (config.canonicalHost !== null || (config.httpsRedirect && !tls)) {
      const location = redirectTarget(config, tls, host, path, this.#httpsPort);
      if (location !== null) {
        r.as = 'redirect';
        r.app = app;
        r.status = 308;
        r.location = location;
        return r;
      }
    }

    // 4. Rate limits.
    const limiter = this.#rateLimitByApp.size === 0 ? undefined : this.#rateLimitByApp.get(app);
    if (limiter !== undefined && limiter.applies(path)) {
      const waitMs = limiter.take(r.clientIp, start);
      if (waitMs > 0) return this.#refuse(429, 'rate-limited', app, Math.ceil(waitMs / 1000));
    }

    // 5. Mode, as of arrival (the table entry read once above). Static routes are still served in
    //    maintenance, so the static branch comes after it; an upgrade is never static.
    if (app.mode.mode !== 'normal' && this.#modes.refuses(app.mode, req.method, !upgrade && route.to === null)) {
      r.as = 'mode';
      r.app = app;
      r.status = this.#modes.status;
      return r;
    }

    // 6. Pin: the active generation as of arrival, read once; the request finishes there.
    const generation = app.generation;
    if (route.to === null) {
      // A static route has no process to take a WebSocket.
      if (upgrade) return this.#refuse(400, 'bad-request', app, null);
      if (generation === null) return this.#noGeneration(app);
      r.as = 'static';
      r.app = app;
      r.route = route;
      r.generation = generation;
      return r;
    }
    if (generation === null) return this.#noGeneration(app);
    const pool = generation.pools.get(route.to);
    // A pool scaled to zero would only let requests sit out the queue timeout.
    if (pool === undefined || pool.instances.length === 0) return this.#refuse(503, 'no-pool', app, NO_GENERATION_RETRY_AFTER_S);
    r.as = 'pinned';
    r.app = app;
    r.route = route;
    r.generation = generation;
    r.pool = pool;
    if (route.affinity === null) {
      r.affinity = null;
      r.affine = null;
      r.cookieNamed = null;
    } else this.#shared.affinity.place(r, req, app, route.affinity, route.to, r.clientIp, path);
    r.admission = upgrade ? null : (this.#admissionByRoute.get(route) ?? this.#admission(app, route.to));
    return r;
  }

  #identify(req: IncomingMessage): void {
    const r = this.#r;
    const headers = req.headers;
    const peer = socketAddress(req.socket);
    r.socketAddress = peer;
    r.clientIp = clientIp(headers['x-forwarded-for'] as string | undefined, peer, this.#shared.trustedProxyCount);
    r.requestId = requestId(headers['x-request-id'] as string | undefined);
  }

  #refuse(status: number, reason: ErrorReason, app: AppEntry | null, retryAfter: number | null): Resolution {
    const r = this.#r;
    r.as = 'refused';
    r.status = status;
    r.reason = reason;
    r.app = app;
    r.retryAfter = retryAfter;
    r.close = false;
    return r;
  }

  /** A refusal before the route: the request is not read further, so its connection closes after it. */
  #refuseEarly(req: IncomingMessage, status: number, reason: ErrorReason, retryAfter: number | null): Resolution {
    this.#identify(req);
    this.#refuse(status, reason, null, retryAfter);
    this.#r.close = true;
    return this.#r;
  }

  /**
   * 503 for an app with no active generation: still starting (`Retry-After`), or its start failed, which
   * waiting does not fix (no `Retry-After`). The reason was worked out when the table was built.
   */
  #noGeneration(app: AppEntry): Resolution {
    const reason = app.noGeneration ?? 'no-active-generation';
    return this.#refuse(503, reason, app, reason === 'start-failed' ? null : NO_GENERATION_RETRY_AFTER_S);
  }

  // ---- what the steps read besides the table (bounded by config size, not traffic) ----------------

  #sync(): void {
    this.#syncAdmissions();
    this.#syncRateLimits();
  }

  /** One limiter per app with a `rate_limit`, kept (with its buckets) while the app keeps one. */
  #syncRateLimits(): void {
    const byApp = new Map<AppEntry, RateLimit>();
    const keep = new Set<string>();
    for (const app of this.#table.apps) {
      const config = (this.#config.apps[app.name] ?? app.config).rateLimit;
      if (config === null) continue;
      let limiter = this.#rateLimits.get(app.name);
      if (limiter === undefined) {
        // With proxy worker threads, the buckets are in memory they all share.
        const shared = this.#cells !== null && this.#config.proxy.workers > 1 ? this.#cells.rateBuckets(app.name, newBucketTable) : null;
        limiter = new RateLimit(app.name, config, { shared });
        this.#rateLimits.set(app.name, limiter);
      } else if (!limiter.matches(config)) limiter.configure(config);
      byApp.set(app, limiter);
      keep.add(app.name);
    }
    for (const name of this.#rateLimits.keys()) if (!keep.has(name)) this.#rateLimits.delete(name);
    this.#rateLimitByApp = byApp;
  }

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
    const created = new Admission(app.name, process, limits, this.#cells);
    this.#admissions.set(key, created);
    return created;
  }

  /**
   * instances x concurrency of the pool: as the active generation runs it (a Procfile's types, and counts
   * `berth scale` changed live), else as configured; with neither, the last known limit stays (or none,
   * leaving the per-instance concurrency as the only bound).
   */
  #limits(app: AppEntry, process: string, existing: Admission | undefined): AdmissionLimits {
    const config = this.#config.apps[app.name] ?? app.config;
    const proc = config.processes?.[process];
    const pool = app.generation?.pools.get(process);
    let limit: number;
    if (pool !== undefined && pool.instances.length > 0) limit = pool.instances.length * pool.concurrency;
    else if (proc !== undefined) limit = proc.instances * proc.concurrency;
    else limit = existing?.limit ?? Number.POSITIVE_INFINITY;
    return { limit, queueMax: config.queue.max, queueTimeoutMs: config.queue.timeoutMs };
  }
}

/** An upgrade carrying a body (it has none, RFC 6455 § 4.1). */
function upgradeHasBody(headers: IncomingMessage['headers']): boolean {
  const length = headers['content-length'];
  return headers['transfer-encoding'] !== undefined || (length !== undefined && Number(length) !== 0);
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
