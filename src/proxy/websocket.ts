/**
 * WebSocket upgrades, proxied as byte tunnels.
 *
 * An upgrade is routed, rate limited, put through its mode and pinned like any request (server.ts), then
 * becomes a `Tunnel`. Tunnels do not take request admission slots or an instance's request tickets: an
 * idle WebSocket must not make an app answer 503 to ordinary requests. Instead each pool (`app/process`,
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
import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { RouteConfig } from '../config/schema.ts';
import type { GenerationView, PoolView, Upstream } from '../supervisor/types.ts';
import { rejectionRetryAfter } from './admission.ts';
import type { ErrorReason } from './error-pages.ts';
import type { ForwardShared } from './forward.ts';
import type { AppEntry } from './router.ts';
import { instanceName, upstreamRequestHeaders } from './request-headers.ts';
import { accessLog, elapsedMs, requestChannel } from './access-log.ts';

/**
 * waiting: no ready instance yet (it waits up to `queue.timeout`). connecting: upgrade request sent,
 * waiting for the instance's answer. open: 101 received, bytes flow. responding: the instance refused
 * the upgrade with a plain response, which is being relayed. closing: the gateway is closing it (1001,
 * or an error answer). closed: both sockets are gone.
 */
export type TunnelPhase = 'waiting' | 'connecting' | 'open' | 'responding' | 'closing' | 'closed';

/** How long a closing socket may take to flush and close before it is destroyed. */
const CLOSE_GRACE_MS = 2_000;
/** Retry-After (seconds) over the WebSocket limit: a slot frees as soon as any WebSocket closes. */
const LIMIT_RETRY_AFTER_S = 1;
const EMPTY = Buffer.alloc(0);
const CRLF = Buffer.from('\r\n');
const LAST_CHUNK = Buffer.from('0\r\n\r\n');

/** Connection errors after which an upgrade that got no answer yet is tried once on another instance. */
const RETRY_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ENOENT']);

/** Response headers not relayed with a refused upgrade's answer; the relay frames the body itself. */
const HOP_BY_HOP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length']);

export interface TunnelInit {
  req: IncomingMessage;
  socket: Socket;
  /** Bytes the client sent after the upgrade request's headers. */
  head: Buffer;
  app: AppEntry;
  route: RouteConfig;
  generation: GenerationView;
  pool: PoolView;
  /** Origin-form request target, query included. */
  path: string;
  /** The Host the request was routed by (absolute-form authority or Host header); '' when absent. */
  host: string;
  socketAddress: string;
  clientIp: string;
  requestId: string;
  /** performance.now() at arrival. */
  start: number;
}

/** Every tunnel of one proxy, and the per-pool WebSocket counts. */
export class WebSockets {
  #shared: ForwardShared;
  #done: (t: Tunnel) => void;
  #tunnels = new Set<Tunnel>();
  /** Tunnels waiting for a ready instance, retried by `sweep()`. */
  #waiting = new Set<Tunnel>();
  /** `app/process` -> tunnels counted against `websockets.max` (waiting and relaying ones included). */
  #perPool = new Map<string, number>();

  /** `done` is called once per tunnel, when both of its sockets are closed. */
  constructor(shared: ForwardShared, done: (t: Tunnel) => void) {
    this.#shared = shared;
    this.#done = done;
  }

  /** Tunnels not yet closed (waiting ones included). */
  get size(): number {
    return this.#tunnels.size;
  }

  /** Tunnels waiting for a ready instance. */
  get waiting(): number {
    return this.#waiting.size;
  }

  /** Starts a tunnel: the pool's WebSocket limit, then the upgrade request to an instance. */
  open(init: TunnelInit): Tunnel {
    const t = new Tunnel(this.#shared, init, this);
    this.#tunnels.add(t);
    const key = `${init.app.name}/${init.route.to}`;
    const n = this.#perPool.get(key) ?? 0;
    const max = init.app.config.websockets.max;
    if (n >= max) {
      t.refuse(503, 'websocket-limit', LIMIT_RETRY_AFTER_S);
      return t;
    }
    this.#perPool.set(key, n + 1);
    t.poolKey = key;
    t.run(init.start);
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
      const n = (this.#perPool.get(t.poolKey) ?? 1) - 1;
      if (n > 0) this.#perPool.set(t.poolKey, n);
      else this.#perPool.delete(t.poolKey);
      t.poolKey = null;
    }
    if (this.#tunnels.delete(t)) this.#done(t);
  }
}

/** One proxied WebSocket: both sockets' event target. */
export class Tunnel {
  readonly req: IncomingMessage;
  readonly app: AppEntry;
  readonly route: RouteConfig;
  readonly generation: GenerationView;
  readonly pool: PoolView;
  readonly path: string;
  readonly host: string;
  readonly clientIp: string;
  readonly requestId: string;
  readonly start: number;
  phase: TunnelPhase = 'waiting';
  /** Status of the instance's answer (101 when open); a gateway error status; 499 when the client left first. */
  status = 0;
  upstream: Upstream | null = null;
  /** The pool whose WebSocket count this tunnel holds; null when it holds none (refused at the limit). */
  poolKey: string | null = null;

  #shared: ForwardShared;
  #owner: WebSockets;
  #client: Socket;
  /** Client bytes read with the upgrade request's head; held until the 101. */
  #head: Buffer;
  #socketAddress: string;
  #arrivedAt = Date.now();
  /** The upgrade request while the instance has not answered (or its refusal is being relayed). */
  #req: ClientRequest | null = null;
  /** The instance's refusal being relayed. */
  #res: IncomingMessage | null = null;
  /** The refusal is relayed with chunked framing (its length was not known). */
  #chunked = false;
  #resEnded = false;
  /** The instance's socket once it answered 101. */
  #up: Socket | null = null;
  #attempts = 0;
  #attemptOpen = false;
  #clientClosed = false;
  #upError: string | null = null;
  #timedOut = false;
  #deadline = 0;
  #frames = new FrameBoundary();
  #closeFrame: Buffer | null = null;
  #timer: NodeJS.Timeout | null = null;
  #requestHeaders: string[] | null = null;

  constructor(shared: ForwardShared, init: TunnelInit, owner: WebSockets) {
    this.#shared = shared;
    this.#owner = owner;
    this.req = init.req;
    this.app = init.app;
    this.route = init.route;
    this.generation = init.generation;
    this.pool = init.pool;
    this.path = init.path;
    this.host = init.host;
    this.clientIp = init.clientIp;
    this.requestId = init.requestId;
    this.start = init.start;
    this.#head = init.head;
    this.#socketAddress = init.socketAddress;
    const client = init.socket;
    this.#client = client;
    // Nothing is read from the client until the instance has accepted the upgrade: before the 101, the
    // client's bytes are not WebSocket frames for the instance, whatever they are.
    client.pause();
    client.setNoDelay(true);
    client.on('data', this.#onClientData);
    client.on('end', this.#onClientEnd);
    client.on('drain', this.#onClientDrain);
    client.on('error', this.#onClientError);
    client.on('close', this.#onClientClose);
    client.on('timeout', this.#onIdle);
  }

  /** Starts on the least-tunnelled ready instance, or waits for one until `queue.timeout`. */
  run(now: number): void {
    const upstream = this.pool.pickTunnel();
    if (upstream !== null) {
      this.#attempt(upstream);
      return;
    }
    if (!this.pool.serviceable()) {
      this.#fail(503, 'no-healthy-instance', rejectionRetryAfter('no-healthy-instance', 0));
      return;
    }
    this.#deadline = now + this.app.config.queue.timeoutMs;
    this.#owner.setWaiting(this, true);
  }

  /** A waiting tunnel: tries again to find a ready instance; gives up with 503 past its deadline. */
  retry(now: number): void {
    if (this.phase !== 'waiting' || this.#clientClosed) {
      this.#owner.setWaiting(this, false);
      return;
    }
    const upstream = this.pool.pickTunnel();
    if (upstream !== null) {
      this.#owner.setWaiting(this, false);
      this.#attempt(upstream);
    } else if (!this.pool.serviceable()) {
      // The last instance that could take it went into backoff or crashed: no point waiting.
      this.#owner.setWaiting(this, false);
      this.#fail(503, 'no-healthy-instance', rejectionRetryAfter('no-healthy-instance', 0));
    } else if (now >= this.#deadline) {
      this.#owner.setWaiting(this, false);
      this.#fail(503, 'queue-timeout', rejectionRetryAfter('queue-timeout', this.app.config.queue.timeoutMs));
    }
  }

  /** Turned away before any instance is involved (over the WebSocket limit). */
  refuse(status: number, reason: ErrorReason, retryAfter: number | null): void {
    this.#fail(status, reason, retryAfter);
  }

  // ---- closing ------------------------------------------------------------------------------------

  /**
   * The gateway closes this tunnel: an open one gets a 1001 close frame at the next frame boundary, then
   * both sockets end; one not yet open is dropped. False when there was nothing to do.
   */
  goAway(reason: string): boolean {
    switch (this.phase) {
      case 'open': {
        this.#transition('closing');
        this.#client.setTimeout(0);
        const text = Buffer.from(reason.slice(0, 120));
        // Server-to-client frames are unmasked (RFC 6455 § 5.1): FIN + close opcode, length, code, reason.
        this.#closeFrame = Buffer.concat([Buffer.from([0x88, 2 + text.length, 0x03, 0xe9]), text]);
        // Nothing more goes to the instance; the client's answer to the close frame is read and dropped.
        this.#client.resume();
        if (this.#frames.atBoundary) this.#sendClose();
        this.#arm(CLOSE_GRACE_MS);
        return true;
      }
      case 'waiting':
      case 'connecting':
      case 'responding':
        this.#owner.setWaiting(this, false);
        this.#transition('closing');
        this.#client.destroy();
        this.#req?.destroy();
        return true;
      default:
        return false;
    }
  }

  /** Forced: both sockets go now. */
  destroy(): void {
    this.#client.destroy();
    this.#req?.destroy();
    this.#up?.destroy();
  }

  // ---- the upgrade request -------------------------------------------------------------------------

  #attempt(upstream: Upstream): void {
    this.upstream = upstream;
    upstream.beginTunnel();
    this.#attempts++;
    this.#attemptOpen = true;
    this.#upError = null;
    this.#transition('connecting');
    this.#requestHeaders ??= this.#buildHeaders();
    // pick() only returns instances with an address, and nothing ran in between.
    const address = upstream.address!;
    let req: ClientRequest;
    try {
      // node:http's client, not a raw socket: its parser tells a real 101 ('upgrade') from any other
      // answer ('response'), frames that answer's body, and handles 1xx interim responses. No agent:
      // the connection is this tunnel's alone and is never reused.
      req = request({
        host: address.kind === 'tcp' ? address.host : undefined,
        port: address.kind === 'tcp' ? address.port : undefined,
        socketPath: address.kind === 'unix' ? address.path : undefined,
        method: 'GET',
        path: this.path,
        headers: this.#requestHeaders,
        agent: false,
        setHost: false,
      });
    } catch {
      // A header node:http will not write (the server's parser let it through): refuse the request.
      this.#endAttempt();
      this.#fail(400, 'bad-request', null);
      return;
    }
    this.#req = req;
    req.on('upgrade', this.#onUpgrade);
    req.on('response', this.#onResponse);
    req.on('error', this.#onReqError);
    req.on('close', this.#onReqClose);
    req.end();
    this.#arm(this.app.config.timeouts.headersMs);
  }

  /** The instance accepted: a 101 with Upgrade and Connection: upgrade. From here bytes flow both ways. */
  #onUpgrade = (res: IncomingMessage, up: Socket, upHead: Buffer): void => {
    this.#disarm();
    if (this.#clientClosed || this.phase !== 'connecting' || res.headers.upgrade === undefined) {
      // The client left (or the gateway dropped the tunnel) meanwhile.
      up.destroy();
      this.#attemptClosed();
      return;
    }
    this.#up = up;
    this.status = 101;
    up.setNoDelay(true);
    up.on('data', this.#onUpData);
    up.on('drain', this.#onUpDrain);
    up.on('error', this.#onUpError);
    up.on('close', this.#onUpClose);
    this.#transition('open');
    let head = `HTTP/1.1 101 ${res.statusMessage || 'Switching Protocols'}\r\n`;
    const raw = res.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    if (this.app.mode.mode === 'read-only') head += 'x-berth-mode: read-only\r\n';
    const client = this.#client;
    client.write(head + '\r\n', 'latin1');
    if (upHead.length > 0) {
      this.#frames.consume(upHead, false);
      client.write(upHead);
    }
    // Only now may the client's bytes reach the instance.
    if (this.#head.length > 0) up.write(this.#head);
    this.#head = EMPTY;
    const idle = this.app.config.websockets.idleTimeoutMs;
    // Every byte either way passes through the client socket, so its inactivity timeout is exactly
    // "no byte either way".
    if (idle !== null && idle > 0) client.setTimeout(idle);
    client.resume();
  };

  /**
   * The instance answered with anything but a valid 101 (a 404, a 403, a 200 ignoring the Upgrade, a
   * 101 without Upgrade): its answer goes to the client as a plain response, re-framed, with
   * `Connection: close`.
   */
  #onResponse = (res: IncomingMessage): void => {
    this.#disarm();
    const status = res.statusCode ?? 0;
    if (this.#clientClosed || this.phase !== 'connecting') {
      this.#req?.destroy();
      return;
    }
    if (status < 200) {
      // A 101 that node's parser did not take for an upgrade (no Upgrade or Connection: upgrade): not a
      // valid switch, and not an answer that can be relayed either.
      this.#shared.log.warn({ app: this.app.name, instance: instanceName(this.upstream), status, requestId: this.requestId }, 'websocket upstream invalid 101');
      this.#fail(502, 'bad-upstream-response', null);
      this.#req?.destroy();
      return;
    }
    this.#res = res;
    this.status = status;
    this.#transition('responding');
    const raw = res.rawHeaders;
    const named = connectionNames(res.headers.connection);
    let head = `HTTP/1.1 ${status} ${res.statusMessage ?? ''}\r\n`;
    for (let i = 0; i < raw.length; i += 2) {
      const lower = raw[i].toLowerCase();
      if (HOP_BY_HOP_RESPONSE.has(lower) || (named !== null && named.has(lower))) continue;
      head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    }
    if (this.app.mode.mode === 'read-only') head += 'x-berth-mode: read-only\r\n';
    const length = res.headers['content-length'];
    if (status === 204 || status === 304) {
      // No body, whatever the headers say.
    } else if (length !== undefined && res.headers['transfer-encoding'] === undefined) {
      head += `content-length: ${length}\r\n`;
    } else {
      this.#chunked = true;
      head += 'transfer-encoding: chunked\r\n';
    }
    head += 'connection: close\r\n\r\n';
    this.#client.write(head, 'latin1');
    res.on('data', this.#onResData);
    res.on('end', this.#onResEnd);
    res.on('error', this.#onReqError);
  };

  #onResData = (chunk: Buffer): void => {
    const client = this.#client;
    let ok: boolean;
    if (this.#chunked) {
      client.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
      client.write(chunk);
      ok = client.write(CRLF);
    } else ok = client.write(chunk);
    if (!ok) {
      this.#res!.pause();
      // A client that stops reading the answer (nginx's send_timeout): without this, a large page
      // answering an upgrade would hold the pool's WebSocket count and an app connection for as long
      // as the client likes. The next drain disarms it.
      const ms = this.app.config.buffering.sendTimeoutMs;
      if (ms > 0) this.#arm(ms);
    }
  };

  #onResEnd = (): void => {
    this.#resEnded = true;
    if (this.#chunked) this.#client.write(LAST_CHUNK);
    // The client connection has left node's HTTP server (it was handed over for the upgrade), so berth
    // cannot go on parsing it as HTTP; whatever it sent after the upgrade request is unread. Closing it
    // is the safe end: no later byte of it can reach the instance. The instance's connection is
    // destroyed, never reused: its state after a refused upgrade is unknown.
    this.#client.destroySoon();
    this.#arm(CLOSE_GRACE_MS);
    this.#req?.destroy();
  };

  #onReqError = (err: NodeJS.ErrnoException): void => {
    this.#upError ??= err.code ?? err.message;
  };

  /** The upgrade request is over: upgraded (the socket took over), relayed, or failed without an answer. */
  #onReqClose = (): void => {
    this.#req = null;
    if (this.#up !== null) return;
    if (this.#res !== null) {
      // A complete answer may still be buffered (a slow client): #onResEnd finishes the relay. One that
      // broke off leaves only one honest signal: cutting the connection.
      if (!this.#resEnded && !this.#res.complete) this.#client.destroy();
      this.#attemptClosed();
      return;
    }
    const failed = this.upstream;
    const waiting = this.phase === 'connecting';
    this.#endAttempt();
    if (this.#clientClosed) {
      this.#maybeDone();
      return;
    }
    if (!waiting) return;
    this.#disarm();
    const code = this.#upError ?? 'closed';
    // Not answered yet: a bodiless GET, so a refused or broken connection is tried once elsewhere.
    if (this.#attempts === 1 && !this.#timedOut && RETRY_ERRORS.has(code)) {
      const other = this.pool.pickTunnel(failed ?? undefined);
      if (other !== null) {
        this.#shared.log.warn({ app: this.app.name, instance: instanceName(failed), retry: instanceName(other), code, requestId: this.requestId }, 'websocket upstream retry');
        this.#attempt(other);
        return;
      }
    }
    this.#shared.log.warn({ app: this.app.name, instance: instanceName(failed), code, requestId: this.requestId }, this.#timedOut ? 'websocket upstream timeout' : 'websocket upstream error');
    if (this.#timedOut) this.#fail(504, 'upstream-timeout', null);
    else this.#fail(502, 'upstream-unreachable', null);
  };

  // ---- the open tunnel -----------------------------------------------------------------------------

  #onUpData = (chunk: Buffer): void => {
    const client = this.#client;
    switch (this.phase) {
      case 'open':
        this.#frames.consume(chunk, false);
        if (!client.write(chunk)) this.#up!.pause();
        return;
      case 'closing': {
        if (this.#closeFrame === null) return;
        // Finish the frame under way, then the close frame; the rest is dropped.
        const n = this.#frames.consume(chunk, true);
        if (n > 0) client.write(n === chunk.length ? chunk : chunk.subarray(0, n));
        if (this.#frames.atBoundary) this.#sendClose();
        return;
      }
      default:
        return;
    }
  };

  #onUpDrain = (): void => {
    if (this.phase !== 'closing') this.#client.resume();
  };

  #onUpError = (err: NodeJS.ErrnoException): void => {
    this.#upError ??= err.code ?? err.message;
  };

  #onUpClose = (): void => {
    this.#up = null;
    this.#endAttempt();
    if (this.#clientClosed) {
      this.#maybeDone();
      return;
    }
    if (this.phase === 'closing' && this.#closeFrame !== null) {
      // The instance went away mid-frame while we waited for a boundary: the close frame cannot be sent.
      this.#client.destroy();
      return;
    }
    // Flush what the instance sent, then close.
    this.#client.destroySoon();
    this.#arm(CLOSE_GRACE_MS);
  };

  /** The instance's side of the current attempt is gone; the tunnel ends once the client's is too. */
  #attemptClosed(): void {
    this.#endAttempt();
    this.#maybeDone();
  }

  #endAttempt(): void {
    if (!this.#attemptOpen) return;
    this.#attemptOpen = false;
    this.upstream!.endTunnel();
  }

  // ---- the client side ----------------------------------------------------------------------------

  #onClientData = (chunk: Buffer): void => {
    const up = this.#up;
    if (up === null || this.phase !== 'open') return;
    if (!up.write(chunk)) this.#client.pause();
  };

  #onClientDrain = (): void => {
    if (this.phase === 'responding' && !this.#resEnded) this.#disarm();
    this.#up?.resume();
    this.#res?.resume();
  };

  #onClientEnd = (): void => {
    // The client half-closed: pass it on, and close our side once what is pending is written.
    this.#up?.end();
    this.#client.destroySoon();
  };

  #onClientError = (): void => {
    // 'close' follows and does the work.
  };

  #onClientClose = (): void => {
    this.#clientClosed = true;
    if (this.status === 0) this.status = 499;
    this.#owner.setWaiting(this, false);
    this.#req?.destroy();
    this.#up?.destroy();
    this.#maybeDone();
  };

  /** `websockets.idle_timeout` passed with no byte either way: the tunnel goes away as at a drain. */
  #onIdle = (): void => {
    if (this.phase === 'open') this.goAway('idle timeout');
  };

  // ---- internals ----------------------------------------------------------------------------------

  #sendClose(): void {
    const frame = this.#closeFrame!;
    this.#closeFrame = null;
    this.#up?.destroy();
    this.#client.write(frame);
    this.#client.destroySoon();
  }

  /** An error answer before anything of the instance's reached the client; then the client socket closes. */
  #fail(status: number, reason: ErrorReason, retryAfter: number | null): void {
    if (this.#clientClosed) return;
    this.status = status;
    this.#transition('closing');
    this.#shared.pages.sendRaw(this.req, this.#client, {
      status,
      reason,
      retryAfter,
      requestId: this.requestId,
      page: null,
      close: true,
      mode: null,
      allow: null,
      message: null,
    });
    this.#client.destroySoon();
    this.#arm(CLOSE_GRACE_MS);
    this.#maybeDone();
  }

  #maybeDone(): void {
    if (!this.#clientClosed || this.#attemptOpen || this.phase === 'closed') return;
    this.#disarm();
    this.#transition('closed');
    const log = this.#shared.log;
    if (log.isLevelEnabled('info')) {
      accessLog(log, {
        app: this.app.name,
        method: this.req.method ?? 'GET',
        path: this.path,
        status: this.status,
        durationMs: elapsedMs(this.start),
        requestId: this.requestId,
        release: this.generation.releaseId,
        instance: instanceName(this.upstream),
        clientIp: this.clientIp,
      });
    }
    if (requestChannel.hasSubscribers) requestChannel.publish(this);
    this.#owner.ended(this);
  }

  /** One timer per tunnel: the instance's answer deadline, then the closing grace. */
  #arm(ms: number): void {
    this.#disarm();
    this.#timer = setTimeout(this.#onTimer, ms);
    this.#timer.unref();
  }

  #disarm(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #onTimer = (): void => {
    this.#timer = null;
    if (this.phase === 'connecting') {
      this.#timedOut = true;
      this.#req?.destroy();
      return;
    }
    // Closing took too long (a client that does not read, or a frame that never ends), or a client
    // stopped reading a relayed answer for the send timeout.
    this.#client.destroy();
    this.#req?.destroy();
    this.#up?.destroy();
  };

  /** The upgrade request's headers: the shared request headers (request-headers.ts), then Upgrade. */
  #buildHeaders(): string[] {
    const headers = upstreamRequestHeaders(
      this.req.rawHeaders,
      this.#socketAddress,
      this.clientIp,
      this.#shared.trustedProxyCount,
      this.#shared.underscoresInHeaders,
      this.requestId,
      this.#arrivedAt,
      this.generation.releaseId,
      this.host,
      this.app.mode.mode === 'read-only',
    );
    headers.push('connection', 'Upgrade', 'upgrade', this.req.headers.upgrade ?? 'websocket');
    return headers;
  }

  #transition(next: TunnelPhase): void {
    const was = this.phase;
    if (was === next) return;
    this.phase = next;
    const log = this.#shared.log;
    if (log.isLevelEnabled('debug')) log.debug({ state: next, was, app: this.app.name, requestId: this.requestId }, 'websocket state');
  }
}

/** The lower-cased names a response's `Connection` header lists (they are hop-by-hop too); null: none. */
function connectionNames(connection: string | undefined): Set<string> | null {
  if (connection === undefined) return null;
  const names = new Set<string>();
  for (const token of connection.split(',')) {
    const t = token.trim().toLowerCase();
    if (t !== '' && t !== 'close' && t !== 'keep-alive') names.add(t);
  }
  return names.size === 0 ? null : names;
}

/**
 * Follows WebSocket frame boundaries in a byte stream (RFC 6455 § 5.2): it reads each frame's header
 * (2 to 14 bytes) and skips its payload without looking at it.
 */
export class FrameBoundary {
  /** Payload (and mask key) bytes left in the current frame. */
  #need = 0;
  #header = Buffer.alloc(14);
  #have = 0;
  /** The header's full length once its second byte is known; 0 before. */
  #headerLength = 0;

  /** True between frames: a frame of our own can go in here. */
  get atBoundary(): boolean {
    return this.#need === 0 && this.#have === 0;
  }

  /**
   * Moves past `chunk`. With `stop`, it stops at the first boundary it reaches (the start counts) and
   * returns how many bytes it consumed; else it consumes the whole chunk.
   */
  consume(chunk: Buffer, stop: boolean): number {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (stop && this.#need === 0 && this.#have === 0) return i;
      if (this.#need > 0) {
        const take = Math.min(this.#need, n - i);
        this.#need -= take;
        i += take;
        continue;
      }
      const h = this.#header;
      h[this.#have++] = chunk[i++];
      if (this.#have === 2) {
        const len7 = h[1] & 0x7f;
        this.#headerLength = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0);
      }
      if (this.#have >= 2 && this.#have === this.#headerLength) {
        const len7 = h[1] & 0x7f;
        const payload = len7 === 126 ? h.readUInt16BE(2) : len7 === 127 ? h.readUInt32BE(2) * 0x1_0000_0000 + h.readUInt32BE(6) : len7;
        const mask = (h[1] & 0x80) !== 0 ? 4 : 0;
        this.#need = payload + mask;
        this.#have = 0;
        this.#headerLength = 0;
      }
    }
    return i;
  }
}
