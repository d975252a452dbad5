/**
 * WebSocket upgrades, proxied as byte tunnels.
 *
 * An upgrade is routed, rate limited, put through its mode and pinned like any request (server.ts), then
 * becomes a `Tunnel`: it waits for admission like a request, holds its admission slot and one of its
 * instance's in-flight tickets (`begin()`/`end()`) for as long as the socket is open, so an instance's
 * `concurrency` bounds its WebSockets too and the generation's `inFlight` counts them (which is what the
 * deployer's drain waits for). The upgrade request goes to the instance with the forwarding headers; from
 * then on bytes are piped both ways, with backpressure, until either side closes.
 *
 * The proxy does not parse client frames. It does follow the frame boundaries the instance sends (headers
 * only, payloads are skipped in bulk), so that when the gateway must close a tunnel (the drain deadline of
 * a deploy, or a gateway stop) it can put a close frame with code 1001 (going away) between two frames
 * rather than inside one, and then end both sockets.
 *
 * Upgrades are not retried once the instance has answered, and the 101 response passes through as the
 * instance wrote it (plus `X-Berth-Mode` in read-only mode).
 */
import { connect, type Socket } from 'node:net';
import type { IncomingMessage } from 'node:http';
import type { RouteConfig } from '../config/schema.ts';
import type { GenerationView, PoolView, Upstream } from '../supervisor/types.ts';
import type { Admission, AdmissionRejection, Waiter } from './admission.ts';
import type { ErrorReason } from './error-pages.ts';
import type { ForwardShared } from './forward.ts';
import type { AppEntry } from './router.ts';
import { instanceName, upstreamRequestHeaders } from './request-headers.ts';
import { accessLog, elapsedMs, requestChannel } from './access-log.ts';

/**
 * queued: waiting for admission. connecting: TCP connect to the instance. handshake: upgrade request
 * sent, waiting for the instance's answer. open: 101 received, bytes flow. responding: the instance
 * refused the upgrade with a plain response, which is passing through. closing: the gateway is closing
 * it with 1001. closed: both sockets are gone.
 */
export type TunnelPhase = 'queued' | 'connecting' | 'handshake' | 'open' | 'responding' | 'closing' | 'closed';

/** How long a closing socket may take to flush and close before it is destroyed. */
const CLOSE_GRACE_MS = 2_000;
/** The instance's answer to the upgrade request must fit in this many bytes. */
const MAX_RESPONSE_HEAD = 64 * 1024;
/** Retry-After (seconds) for a full queue, as for requests. */
const QUEUE_FULL_RETRY_AFTER_S = 1;
const CRLF2 = Buffer.from('\r\n\r\n');

/** Connection errors after which an upgrade that got no answer yet is tried once on another instance. */
const RETRY_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ENOENT']);

export interface TunnelInit {
  req: IncomingMessage;
  socket: Socket;
  /** Bytes the client sent after the upgrade request's headers. */
  head: Buffer;
  app: AppEntry;
  route: RouteConfig;
  generation: GenerationView;
  pool: PoolView;
  admission: Admission;
  /** Origin-form request target, query included. */
  path: string;
  /** The Host header as received; '' when absent. */
  host: string;
  socketAddress: string;
  clientIp: string;
  requestId: string;
  /** performance.now() at arrival. */
  start: number;
}

/** Every tunnel of one proxy. */
export class WebSockets {
  #shared: ForwardShared;
  #done: (t: Tunnel) => void;
  #tunnels = new Set<Tunnel>();

  /** `done` is called once per tunnel, when both of its sockets are closed and its slot is freed. */
  constructor(shared: ForwardShared, done: (t: Tunnel) => void) {
    this.#shared = shared;
    this.#done = done;
  }

  /** Tunnels not yet closed (queued ones included). */
  get size(): number {
    return this.#tunnels.size;
  }

  /** Starts a tunnel: admission, then the upgrade request to an instance. */
  open(init: TunnelInit): Tunnel {
    const t = new Tunnel(this.#shared, init, this);
    this.#tunnels.add(t);
    t.run(init.start);
    return t;
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

  /** Called by a tunnel once it is over. */
  ended(t: Tunnel): void {
    if (this.#tunnels.delete(t)) this.#done(t);
  }
}

/** One proxied WebSocket: the admission queue node, and both sockets' event target. */
export class Tunnel implements Waiter {
  // Waiter links: this object is the admission queue node.
  prev: Waiter | null = null;
  next: Waiter | null = null;
  deadline = 0;
  queued = false;

  readonly req: IncomingMessage;
  readonly app: AppEntry;
  readonly route: RouteConfig;
  readonly generation: GenerationView;
  readonly pool: PoolView;
  readonly admission: Admission;
  readonly path: string;
  readonly host: string;
  readonly clientIp: string;
  readonly requestId: string;
  readonly start: number;
  phase: TunnelPhase = 'queued';
  /** Status of the instance's answer (101 when open); a gateway error status; 499 when the client left first. */
  status = 0;
  upstream: Upstream | null = null;

  #shared: ForwardShared;
  #owner: WebSockets;
  #client: Socket;
  #head: Buffer;
  #socketAddress: string;
  #arrivedAt = Date.now();
  #up: Socket | null = null;
  #ticket = 0;
  #attempts = 0;
  #admitted = false;
  #attemptOpen = false;
  #clientClosed = false;
  #upError: string | null = null;
  #timedOut = false;
  /** The instance's answer while its head is incomplete. */
  #responseHead: Buffer | null = null;
  #frames = new FrameBoundary();
  #closeFrame: Buffer | null = null;
  #timer: NodeJS.Timeout | null = null;
  #requestHead: Buffer | null = null;

  constructor(shared: ForwardShared, init: TunnelInit, owner: WebSockets) {
    this.#shared = shared;
    this.#owner = owner;
    this.req = init.req;
    this.app = init.app;
    this.route = init.route;
    this.generation = init.generation;
    this.pool = init.pool;
    this.admission = init.admission;
    this.path = init.path;
    this.host = init.host;
    this.clientIp = init.clientIp;
    this.requestId = init.requestId;
    this.start = init.start;
    this.#head = init.head;
    this.#socketAddress = init.socketAddress;
    const client = init.socket;
    this.#client = client;
    // Nothing is read from the client until there is an instance to give it to.
    client.pause();
    client.setNoDelay(true);
    client.on('data', this.#onClientData);
    client.on('end', this.#onClientEnd);
    client.on('drain', this.#onClientDrain);
    client.on('error', this.#onClientError);
    client.on('close', this.#onClientClose);
  }

  /** Hands the tunnel to admission: it starts now, waits in the queue, or is turned away. */
  run(now: number): void {
    this.admission.enter(this, now);
  }

  // ---- Waiter ----------------------------------------------------------------------------------

  admit(upstream: Upstream): void {
    this.#admitted = true;
    this.#attempt(upstream);
  }

  reject(reason: AdmissionRejection): void {
    const retryAfter = reason === 'queue-full' ? QUEUE_FULL_RETRY_AFTER_S : Math.max(1, Math.ceil(this.admission.queueTimeoutMs / 1000));
    this.#fail(503, reason, retryAfter);
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
        const text = Buffer.from(reason.slice(0, 120));
        // Server-to-client frames are unmasked (RFC 6455 § 5.1): FIN + close opcode, length, code, reason.
        this.#closeFrame = Buffer.concat([Buffer.from([0x88, 2 + text.length, 0x03, 0xe9]), text]);
        // Nothing more goes to the instance; the client's answer to the close frame is read and dropped.
        this.#client.resume();
        if (this.#frames.atBoundary) this.#sendClose();
        this.#arm(CLOSE_GRACE_MS);
        return true;
      }
      case 'queued':
      case 'connecting':
      case 'handshake':
        if (this.queued) this.admission.cancel(this);
        this.#transition('closing');
        this.#client.destroy();
        this.#up?.destroy();
        return true;
      default:
        return false;
    }
  }

  /** Forced: both sockets go now. */
  destroy(): void {
    this.#client.destroy();
    this.#up?.destroy();
  }

  // ---- the instance side ---------------------------------------------------------------------------

  #attempt(upstream: Upstream): void {
    this.upstream = upstream;
    this.#ticket = upstream.begin();
    this.#attempts++;
    this.#attemptOpen = true;
    this.#upError = null;
    this.#transition('connecting');
    // pick() only returns instances with an address, and nothing ran in between.
    const address = upstream.address!;
    const up = address.kind === 'tcp' ? connect({ host: address.host, port: address.port }) : connect({ path: address.path });
    this.#up = up;
    up.setNoDelay(true);
    up.on('connect', this.#onUpConnect);
    up.on('data', this.#onUpData);
    up.on('drain', this.#onUpDrain);
    up.on('error', this.#onUpError);
    up.on('close', this.#onUpClose);
    this.#arm(this.app.config.timeouts.headersMs);
  }

  #onUpConnect = (): void => {
    this.#transition('handshake');
    this.#requestHead ??= this.#buildRequestHead();
    const up = this.#up!;
    up.write(this.#requestHead);
    if (this.#head.length > 0) up.write(this.#head);
    this.#client.resume();
  };

  #onUpData = (chunk: Buffer): void => {
    const client = this.#client;
    switch (this.phase) {
      case 'open':
        this.#frames.consume(chunk, false);
        if (!client.write(chunk)) this.#up!.pause();
        return;
      case 'responding':
        if (!client.write(chunk)) this.#up!.pause();
        return;
      case 'handshake':
        this.#onResponseHead(chunk);
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

  /** Collects the instance's answer until its head is complete, then lets everything through. */
  #onResponseHead(chunk: Buffer): void {
    const buf = this.#responseHead === null ? chunk : Buffer.concat([this.#responseHead, chunk]);
    const end = buf.indexOf(CRLF2);
    if (end < 0) {
      if (buf.length > MAX_RESPONSE_HEAD) {
        this.#upError = 'response head too large';
        this.#up!.destroy();
        return;
      }
      this.#responseHead = buf;
      return;
    }
    this.#responseHead = null;
    this.#disarm();
    const status = Number(buf.toString('latin1', 9, 12));
    this.status = Number.isInteger(status) ? status : 502;
    let out = buf;
    if (this.app.mode.mode === 'read-only') {
      out = Buffer.concat([buf.subarray(0, end + 2), READ_ONLY_HEADER, buf.subarray(end + 2)]);
    }
    if (this.status === 101) {
      this.#transition('open');
      this.#frames.consume(buf.subarray(end + 4), false);
    } else {
      // The instance refused the upgrade (404, 400, ...): its answer passes through, then the connection ends.
      this.#transition('responding');
    }
    if (!this.#client.write(out)) this.#up!.pause();
  }

  #onUpDrain = (): void => {
    if (this.phase !== 'closing') this.#client.resume();
  };

  #onUpError = (err: NodeJS.ErrnoException): void => {
    this.#upError ??= err.code ?? err.message;
  };

  #onUpClose = (): void => {
    const waiting = this.phase === 'connecting' || this.phase === 'handshake';
    const failed = this.upstream;
    this.#up = null;
    this.#endAttempt();
    if (this.#clientClosed) {
      this.#maybeDone();
      return;
    }
    if (waiting) {
      const code = this.#upError ?? 'closed';
      // Not answered yet: an idempotent GET, so a refused or broken connection is tried once elsewhere.
      if (this.#attempts === 1 && !this.#timedOut && RETRY_ERRORS.has(code)) {
        const other = this.pool.pick(failed ?? undefined);
        if (other !== null) {
          this.#shared.log.warn({ app: this.app.name, instance: instanceName(failed), retry: instanceName(other), code, requestId: this.requestId }, 'websocket upstream retry');
          this.#attempt(other);
          return;
        }
      }
      this.#shared.log.warn({ app: this.app.name, instance: instanceName(failed), code, requestId: this.requestId }, this.#timedOut ? 'websocket upstream timeout' : 'websocket upstream error');
      if (this.#timedOut) this.#fail(504, 'upstream-timeout', null);
      else this.#fail(502, 'upstream-unreachable', null);
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

  #endAttempt(): void {
    if (!this.#attemptOpen) return;
    this.#attemptOpen = false;
    this.upstream!.end(this.#ticket);
  }

  // ---- the client side ----------------------------------------------------------------------------

  #onClientData = (chunk: Buffer): void => {
    const up = this.#up;
    if (up === null || this.phase === 'closing') return;
    if (!up.write(chunk)) this.#client.pause();
  };

  #onClientDrain = (): void => {
    this.#up?.resume();
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
    if (this.queued) this.admission.cancel(this);
    this.#up?.destroy();
    this.#maybeDone();
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
    if (this.#admitted) {
      this.#admitted = false;
      this.admission.leave();
    }
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
    if (this.phase === 'connecting' || this.phase === 'handshake') {
      this.#timedOut = true;
      this.#up?.destroy();
      return;
    }
    // Closing took too long (a client that does not read, or a frame that never ends).
    this.#client.destroy();
    this.#up?.destroy();
  };

  /** The upgrade request for the instance: the shared request headers (request-headers.ts), then Upgrade. */
  #buildRequestHead(): Buffer {
    const headers = upstreamRequestHeaders(
      this.req.rawHeaders,
      this.#socketAddress,
      this.#shared.trustedProxyCount,
      this.requestId,
      this.#arrivedAt,
      this.generation.releaseId,
      this.host,
      this.app.mode.mode === 'read-only',
    );
    let head = `${this.req.method ?? 'GET'} ${this.path} HTTP/1.1\r\n`;
    for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    head += `connection: Upgrade\r\nupgrade: ${this.req.headers.upgrade ?? 'websocket'}\r\n`;
    return Buffer.from(head + '\r\n', 'latin1');
  }

  #transition(next: TunnelPhase): void {
    const was = this.phase;
    if (was === next) return;
    this.phase = next;
    const log = this.#shared.log;
    if (log.isLevelEnabled('debug')) log.debug({ state: next, was, app: this.app.name, requestId: this.requestId }, 'websocket state');
  }
}

const READ_ONLY_HEADER = Buffer.from('x-berth-mode: read-only\r\n', 'latin1');


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
