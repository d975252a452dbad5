/**
 * What a proxied request (forward.ts) and a WebSocket tunnel (tunnel.ts) share: one client exchange,
 * pinned on arrival to a pool of the app's active generation (resolver.ts), that waits for an instance,
 * holds it for one attempt or a retry, and ends with one access-log line and one `requestChannel` message.
 *
 * - Waiting: a request waits in its pool's admission queue (admission.ts), a tunnel in the proxy's list
 *   of waiting tunnels; both until `deadline`, and both are turned away the same way (`reject`).
 * - Tickets: an attempt holds the instance (`beginAttempt`) until `endAttempt`, exactly once per attempt;
 *   a request holds one of its request tickets, a tunnel one of its tunnel counts (`claim`/`release`).
 * - Affinity (affinity.ts): an exchange its route's affinity sends to one instance waits for that one;
 *   when that instance cannot take it, it leaves its affinity (`repinAffinity`) for any instance of the
 *   active generation. With cookie affinity, an answer from an instance other than the one its cookie
 *   names sets a cookie naming the one that answered (`affinityCookie`).
 */
import type { IncomingMessage } from 'node:http';
import type { RouteConfig } from '../config/schema.ts';
import type { AffinityOutcome } from './affinity.ts';
import type { Logger } from '../lib/logger.ts';
import type { GenerationView, PoolView, Upstream } from '../supervisor/types.ts';
import { accessLog, elapsedMs, requestChannel } from './access-log.ts';
import { rejectionRetryAfter, type AdmissionRejection } from './admission.ts';
import type { ErrorPages, ErrorReason } from './error-pages.ts';
import { instanceName, upstreamRequestHeaders } from './request-headers.ts';
import type { Resolution, ResolverShared } from './resolver.ts';
import type { AppEntry, RoutingTable } from './router.ts';
import type { UpstreamClients } from './upstream-clients.ts';

/** State shared by every exchange of one proxy; one object, updated in place by `setConfig`/`stop`. */
export interface ExchangeShared extends ResolverShared {
  readonly clients: UpstreamClients;
  readonly pages: ErrorPages;
  readonly log: Logger;
  /** `underscores_in_headers`: keep request header names with `_` (default: dropped). */
  underscoresInHeaders: boolean;
  /** `public_details`: responses carry `X-Berth-Release`. */
  publicDetails: boolean;
  /** `state_dir`: request bodies and responses spill to `<state_dir>/tmp`. */
  stateDir: string;
  /** The routing table new requests see: a request whose body took a while is pinned again from it. */
  table: RoutingTable;
  /** Called once per exchange, when its client side is closed and no attempt is running. */
  done(x: Exchange): void;
}

export abstract class Exchange {
  readonly req: IncomingMessage;
  readonly app: AppEntry;
  readonly route: RouteConfig;
  /** Pinned on arrival; a request with a buffered body is pinned again once its body is whole. */
  generation: GenerationView;
  pool: PoolView;
  /** Origin-form request target, query included. */
  readonly path: string;
  /** The Host routed by (absolute-form authority or Host header); '' when absent. */
  readonly host: string;
  readonly socketAddress: string;
  readonly clientIp: string;
  readonly requestId: string;
  /** performance.now() at arrival. */
  readonly start: number;
  /** Epoch ms at arrival, for `X-Request-Start`. */
  readonly arrivedAt: number;
  /** It arrived on a TLS listener (`X-Forwarded-Proto: https`). */
  readonly tls: boolean;
  /** It arrived over HTTP/2: no connection-level headers in what the client gets. */
  readonly h2: boolean;
  /** Status sent to the client (0 until one is; 499 when the client left first). */
  status = 0;
  /** The instance of the current (or last) attempt. */
  upstream: Upstream | null = null;
  /** performance.now() after which a waiting exchange gives up. */
  deadline = 0;
  /** How session affinity placed it: hit, miss, or repin (also when it had to leave its instance later); null: its route has none. */
  affinity: AffinityOutcome | null;
  /** The instance its affinity sends it to, which it waits for; null: any instance of its pool. */
  affine: Upstream | null;

  protected readonly shared: ExchangeShared;
  protected attempts = 0;
  /** An attempt holds `upstream` (beginAttempt ran, endAttempt not yet). */
  protected attemptOpen = false;
  #ticket = 0;
  /** Cookie affinity: the instance its cookie names; null: none (or another kind of affinity). */
  readonly #cookieNamed: Upstream | null;
  /** Its route has cookie affinity: each attempt's end marks the instance (Upstream.markAffine). */
  readonly #marks: boolean;

  /** `r` is a `pinned` resolution, read now: it is overwritten by the next request. */
  constructor(shared: ExchangeShared, r: Resolution, req: IncomingMessage) {
    this.shared = shared;
    this.req = req;
    this.app = r.app!;
    this.route = r.route!;
    this.generation = r.generation!;
    this.pool = r.pool!;
    this.path = r.path;
    this.host = r.host;
    this.socketAddress = r.socketAddress;
    this.clientIp = r.clientIp;
    this.requestId = r.requestId;
    this.start = r.start;
    this.arrivedAt = Date.now();
    this.tls = r.tls;
    this.h2 = r.h2;
    this.affinity = r.affinity;
    this.affine = r.affine;
    this.#cookieNamed = r.cookieNamed;
    this.#marks = r.affinity !== null && this.route.affinity?.by === 'cookie';
  }

  /** Turns the exchange away with a gateway answer (when nothing has gone to the client yet). */
  abstract refuse(status: number, reason: ErrorReason, retryAfter: number | null): void;

  /** Takes `upstream` for one attempt; returns what `release` needs to give it back. */
  protected abstract claim(upstream: Upstream): number;

  protected abstract release(upstream: Upstream, ticket: number): void;

  /** How long a waiter may wait; a queue timeout's Retry-After is derived from it. */
  protected get queueTimeoutMs(): number {
    return this.app.config.queue.timeoutMs;
  }

  /** Admission (or the tunnel's own wait) gives up on it: 503 with the reason's Retry-After. */
  reject(reason: AdmissionRejection): void {
    this.refuse(503, reason, rejectionRetryAfter(reason, this.queueTimeoutMs));
  }

  protected beginAttempt(upstream: Upstream): void {
    this.upstream = upstream;
    this.#ticket = this.claim(upstream);
    this.attempts++;
    this.attemptOpen = true;
  }

  /** The current attempt is over (once per attempt; later calls do nothing). */
  protected endAttempt(): void {
    if (!this.attemptOpen) return;
    this.attemptOpen = false;
    // Before the release, which may be what a drain waits for: the drain then sees the client may return.
    if (this.#marks) this.upstream!.markAffine();
    this.release(this.upstream!, this.#ticket);
  }

  /**
   * Whether its generation still takes its requests: the active one, or one whose drain is not over
   * (where affinity cookies still lead). A request that waited may find its generation gone.
   */
  protected generationServes(): boolean {
    const entry = this.shared.table.app(this.app.name);
    return entry !== undefined && (entry.generation === this.generation || entry.draining?.includes(this.generation) === true);
  }

  /**
   * Its affine instance cannot take it (not ready, gone while it waited, or its connection failed): it
   * goes to any instance, of the active generation when it was pinned to a draining one. For the app,
   * that is a new session; with cookie affinity its answer names the new instance.
   */
  protected repinAffinity(): void {
    this.affine = null;
    this.affinity = 'repin';
    const active = this.shared.table.app(this.app.name)?.generation ?? null;
    if (active === null || active === this.generation) return;
    const pool = active.pools.get(this.route.to!);
    if (pool === undefined || pool.instances.length === 0) return;
    this.generation = active;
    this.pool = pool;
  }

  /**
   * The Set-Cookie an answer from the current attempt's instance carries: null unless the route has
   * cookie affinity and the request's cookie named another instance (or none).
   */
  protected affinityCookie(): string | null {
    const upstream = this.upstream;
    if (this.affinity === null || upstream === null || upstream === this.#cookieNamed || this.route.affinity?.by !== 'cookie') return null;
    return this.shared.affinity.cookie(this.generation, this.pool, upstream, this.route.path, this.tls);
  }

  /** The request headers for the instance (request-headers.ts), the same for requests and upgrades. */
  protected requestHeaders(): string[] {
    const shared = this.shared;
    return upstreamRequestHeaders(
      this.req.rawHeaders,
      this.socketAddress,
      this.clientIp,
      shared.trustedProxyCount,
      shared.underscoresInHeaders,
      this.requestId,
      this.arrivedAt,
      this.generation.releaseId,
      this.host,
      this.app.mode.mode === 'read-only',
      this.tls,
      this.h2,
    );
  }

  /** The exchange is over: its access-log line, then its `requestChannel` message (this object). */
  protected report(): void {
    const log = this.shared.log;
    if (log.isLevelEnabled('info')) {
      accessLog(log, {
        app: this.app.name,
        method: this.req.method ?? '',
        path: this.path,
        status: this.status,
        durationMs: elapsedMs(this.start),
        requestId: this.requestId,
        release: this.generation.releaseId,
        instance: instanceName(this.upstream),
        clientIp: this.clientIp,
        affinity: this.affinity,
      });
    }
    if (requestChannel.hasSubscribers) requestChannel.publish(this);
  }
}
