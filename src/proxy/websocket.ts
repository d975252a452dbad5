/**
 * WebSocket upgrades, proxied as byte tunnels.
 *
 * An upgrade is routed, rate limited, put through its mode and pinned like any request (resolver.ts),
 * then becomes a `Tunnel` (tunnel.ts). Tunnels do not take request admission slots or an instance's
 * request tickets: an idle WebSocket must not make an app answer 503 to ordinary requests. Instead each pool (`app/process`,
 * across generations) has its own limit, `websockets.max` (over it: 503 `websocket-limit`), and each
 * instance counts its tunnels (`beginTunnel()`/`endTunnel()`), which the generation's `inFlight` includes,
 * so the deployer's drain still waits for them. WebSockets are not counted against `db_connections`.
 *
 * The upgrade request goes to the instance through node:http's client, so the instance's answer is
 * parsed by a real HTTP parser: only a `101` with `Upgrade` and `Connection: upgrade` (node's 'upgrade'
 * event) starts the tunnel, and only then does a byte of the client's go to the instance. Any other
 * answer is relayed as an ordinary, re-framed response with `Connection: close`; then both connections
 * are closed (the instance's is never reused). From the 101 on, bytes are piped both ways with
 * backpressure until either side closes, or until `websockets.idle_timeout` passes with no byte either
 * way.
 *
 * The proxy does not parse client frames. It does follow the frame boundaries the instance sends (headers
 * only, payloads are skipped in bulk), so that when the gateway must close a tunnel (the drain deadline of
 * a deploy, a gateway stop, the idle timeout) it can put a close frame with code 1001 (going away) between
 * two frames rather than inside one, and then end both sockets.
 *
 * Upgrades are not retried once the instance has answered, and the 101 response passes through as the
 * instance wrote it (plus `X-Berth-Mode` in read-only mode).
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { GenerationView } from '../supervisor/types.ts';
import type { ExchangeShared } from './exchange.ts';
import type { SharedCells } from '../lib/shared-cells.ts';
import type { Resolution } from './resolver.ts';
import { Tunnel, type TunnelOwner } from './tunnel.ts';

/** Retry-After (seconds) over the WebSocket limit: a slot frees as soon as any WebSocket closes. */
const LIMIT_RETRY_AFTER_S = 1;

/** Every tunnel of one proxy, and the per-pool WebSocket counts. */
export class WebSockets implements TunnelOwner {
  #shared: ExchangeShared;
  #tunnels = new Set<Tunnel>();
  /** Tunnels waiting for a ready instance, retried by `sweep()`. */
  #waiting = new Set<Tunnel>();
  /** `app/process` -> tunnels counted against `websockets.max` (waiting and relaying ones included). */
  #perPool = new Map<string, number>();
  /** The gateway's shared cells: the count is then across proxy threads (a pool's admission slot). */
  #cells: SharedCells | null;

  /** `shared.done` is called once per tunnel, when both of its sockets are closed. */
  constructor(shared: ExchangeShared, cells: SharedCells | null = null) {
    this.#shared = shared;
    this.#cells = cells;
  }

  /** Tunnels not yet closed (waiting ones included). */
  get size(): number {
    return this.#tunnels.size;
  }

  /** Tunnels waiting for a ready instance. */
  get waiting(): number {
    return this.#waiting.size;
  }

  /**
   * Starts a tunnel for an upgrade `r` pinned (resolver.ts): the pool's WebSocket limit, then the upgrade
   * request to an instance. `head`: the bytes the client sent after the request's headers.
   */
  open(r: Resolution, req: IncomingMessage, socket: Socket, head: Buffer): Tunnel {
    const t = new Tunnel(this.#shared, r, req, socket, head, this);
    this.#tunnels.add(t);
    const key = `${t.app.name}/${t.route.to}`;
    const slot = this.#cells === null ? -1 : this.#cells.admissionSlot(key);
    if (!this.#take(key, slot, t.app.config.websockets.max)) {
      t.refuse(503, 'websocket-limit', LIMIT_RETRY_AFTER_S);
      return t;
    }
    t.poolKey = key;
    t.poolSlot = slot;
    t.run(t.start);
    return t;
  }

  /** Retries the waiting tunnels' picks and expires those past `queue.timeout`. Called by the proxy's tick. */
  sweep(now: number): void {
    for (const t of this.#waiting) t.retry(now);
  }

  /**
   * Closes every tunnel pinned to `gen` (the drain deadline of a deploy has passed): a close frame with
   * 1001 to each client, then both sockets end. Returns how many were closed.
   */
  closeGeneration(gen: GenerationView, reason = 'release replaced'): number {
    let n = 0;
    for (const t of this.#tunnels) if (t.generation === gen && t.goAway(reason)) n++;
    return n;
  }

  /** Closes every tunnel with 1001 (the gateway is stopping). Returns how many were closed. */
  closeAll(reason = 'gateway stopping'): number {
    let n = 0;
    for (const t of this.#tunnels) if (t.goAway(reason)) n++;
    return n;
  }

  /** Forced: drops every tunnel's sockets now. */
  destroyAll(): void {
    for (const t of this.#tunnels) t.destroy();
  }

  /** Called by a tunnel that starts or stops waiting for an instance. */
  setWaiting(t: Tunnel, waiting: boolean): void {
    if (waiting) this.#waiting.add(t);
    else this.#waiting.delete(t);
  }

  /** Called by a tunnel once it is over. */
  ended(t: Tunnel): void {
    this.#waiting.delete(t);
    if (t.poolKey !== null) {
      this.#give(t.poolKey, t.poolSlot);
      t.poolKey = null;
    }
    if (this.#tunnels.delete(t)) this.#shared.done(t);
  }

  /** One more WebSocket on the pool `key` if it has fewer than `max`: in its shared `slot` (across threads), else here. */
  #take(key: string, slot: number, max: number): boolean {
    if (slot >= 0) return this.#cells!.tryOpenWebSocket(slot, max);
    const n = this.#perPool.get(key) ?? 0;
    if (n >= max) return false;
    this.#perPool.set(key, n + 1);
    return true;
  }

  /** Gives back what #take counted, where it counted it. */
  #give(key: string, slot: number): void {
    if (slot >= 0) {
      this.#cells!.closeWebSocket(slot);
      return;
    }
    const n = (this.#perPool.get(key) ?? 1) - 1;
    if (n > 0) this.#perPool.set(key, n);
    else this.#perPool.delete(key);
  }
}
