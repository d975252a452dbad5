/**
 * One proxied WebSocket (websocket.ts has the module's story): the upgrade request to an instance, the
 * instance's answer (a 101 starts the byte tunnel; anything else is relayed as a plain response and both
 * connections close), then bytes both ways until either side closes, the idle timeout passes, or the
 * gateway closes it with 1001 at a frame boundary (frame-boundary.ts).
 *
 * What it shares with a proxied request (pinning, waiting, the instance ticket, the access-log line) is
 * exchange.ts's.
 */
import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Upstream } from '../supervisor/types.ts';
import type { ErrorReason } from './error-pages.ts';
import { Exchange, type ExchangeShared } from './exchange.ts';
import { FrameBoundary } from './frame-boundary.ts';
import { instanceName } from './request-headers.ts';
import type { Resolution } from './resolver.ts';

/**
 * waiting: no ready instance yet (it waits up to `queue.timeout`). connecting: upgrade request sent,
 * waiting for the instance's answer. open: 101 received, bytes flow. responding: the instance refused
 * the upgrade with a plain response, which is being relayed. closing: the gateway is closing it (1001,
 * or an error answer). closed: both sockets are gone.
 */
export type TunnelPhase = 'waiting' | 'connecting' | 'open' | 'responding' | 'closing' | 'closed';

/** How long a closing socket may take to flush and close before it is destroyed. */
const CLOSE_GRACE_MS = 2_000;
const EMPTY = Buffer.alloc(0);
const CRLF = Buffer.from('\r\n');
const LAST_CHUNK = Buffer.from('0\r\n\r\n');

/** Connection errors after which an upgrade that got no answer yet is tried once on another instance. */
const RETRY_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ECONNABORTED', 'ENOENT']);

/** Response headers not relayed with a refused upgrade's answer; the relay frames the body itself. */
const HOP_BY_HOP_RESPONSE = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length']);

/** The tunnels' registry (WebSockets in websocket.ts), as a tunnel reports to it. */
export interface TunnelOwner {
  /** The tunnel starts or stops waiting for a ready instance. */
  setWaiting(t: Tunnel, waiting: boolean): void;
  /** The tunnel is over: both of its sockets are closed. */
  ended(t: Tunnel): void;
}

/** One proxied WebSocket: both sockets' event target. */
export class Tunnel extends Exchange {
  // `status`: the instance's answer (101 when open); a gateway error status; 499 when the client left first.
  phase: TunnelPhase = 'waiting';
  /** The pool whose WebSocket count this tunnel holds; null when it holds none (refused at the limit). */
  poolKey: string | null = null;
  /** Where that count is: the pool's shared slot (proxy threads), or -1 for the registry's own map. */
  poolSlot = -1;

  #owner: TunnelOwner;
  #client: Socket;
  /** Client bytes read with the upgrade request's head; held until the 101. */
  #head: Buffer;
  /** The upgrade request while the instance has not answered (or its refusal is being relayed). */
  #req: ClientRequest | null = null;
  /** The instance's refusal being relayed. */
  #res: IncomingMessage | null = null;
  /** The refusal is relayed with chunked framing (its length was not known). */
  #chunked = false;
  #resEnded = false;
  /** The instance's socket once it answered 101. */
  #up: Socket | null = null;
  #clientClosed = false;
  #upError: string | null = null;
  #timedOut = false;
  #frames = new FrameBoundary();
  #closeFrame: Buffer | null = null;
  #timer: NodeJS.Timeout | null = null;
  #requestHeaders: string[] | null = null;

  /**
   * `r`: a `pinned` resolution of the upgrade request (resolver.ts), read now. `head`: the bytes the
   * client sent after the request's headers.
   */
  constructor(shared: ExchangeShared, r: Resolution, req: IncomingMessage, client: Socket, head: Buffer, owner: TunnelOwner) {
    super(shared, r, req);
    this.#owner = owner;
    this.#head = head;
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

  /**
   * Starts on its affine instance (affinity.ts) or the least-tunnelled ready one, or waits for one until
   * `queue.timeout`.
   */
  run(now: number): void {
    const upstream = this.#pick();
    if (upstream !== null) {
      this.#attempt(upstream);
      return;
    }
    if (!this.pool.serviceable()) {
      this.reject('no-healthy-instance');
      return;
    }
    this.deadline = now + this.queueTimeoutMs;
    this.#owner.setWaiting(this, true);
  }

  /** A waiting tunnel: tries again to find a ready instance; gives up with 503 past its deadline. */
  retry(now: number): void {
    if (this.phase !== 'waiting' || this.#clientClosed) {
      this.#owner.setWaiting(this, false);
      return;
    }
    const upstream = this.#pick();
    if (upstream !== null) {
      this.#owner.setWaiting(this, false);
      this.#attempt(upstream);
    } else if (!this.pool.serviceable()) {
      // The last instance that could take it went into backoff or crashed: no point waiting.
      this.#owner.setWaiting(this, false);
      this.reject('no-healthy-instance');
    } else if (now >= this.deadline) {
      this.#owner.setWaiting(this, false);
      this.reject('queue-timeout');
    }
  }

  /**
   * The instance for it now: its affine one while that one is ready (a tunnel takes no request slot, so
   * it never waits for it), else the least-tunnelled ready one (leaving its affinity); null: none ready.
   */
  #pick(exclude?: Upstream): Upstream | null {
    const target = this.affine;
    if (target !== null) {
      if (target !== exclude && target.state === 'ready' && target.address !== null) return target;
      this.repinAffinity();
    }
    return this.pool.pickTunnel(exclude);
  }

  /** Turned away before the instance answered (over the WebSocket limit, no instance, its wait over). */
  refuse(status: number, reason: ErrorReason, retryAfter: number | null): void {
    this.#fail(status, reason, retryAfter);
  }

  /** A tunnel holds one of the instance's tunnel counts per attempt, not a request ticket. */
  protected claim(upstream: Upstream): number {
    upstream.beginTunnel();
    return 0;
  }

  protected release(upstream: Upstream): void {
    upstream.endTunnel();
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
    this.beginAttempt(upstream);
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
      this.endAttempt();
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
    const cookie = this.affinityCookie();
    if (cookie !== null) head += `set-cookie: ${cookie}\r\n`;
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
      this.shared.log.warn({ app: this.app.name, instance: instanceName(this.upstream), status, requestId: this.requestId }, 'websocket upstream invalid 101');
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
    this.endAttempt();
    if (this.#clientClosed) {
      this.#maybeDone();
      return;
    }
    if (!waiting) return;
    this.#disarm();
    const code = this.#upError ?? 'closed';
    // Not answered yet: a bodiless GET, so a refused or broken connection is tried once elsewhere.
    if (this.attempts === 1 && !this.#timedOut && RETRY_ERRORS.has(code)) {
      const other = this.#pick(failed ?? undefined);
      if (other !== null) {
        this.shared.log.warn({ app: this.app.name, instance: instanceName(failed), retry: instanceName(other), code, requestId: this.requestId }, 'websocket upstream retry');
        this.#attempt(other);
        return;
      }
    }
    this.shared.log.warn({ app: this.app.name, instance: instanceName(failed), code, requestId: this.requestId }, this.#timedOut ? 'websocket upstream timeout' : 'websocket upstream error');
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
    this.endAttempt();
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
    this.endAttempt();
    this.#maybeDone();
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
    this.shared.pages.sendRaw(this.req, this.#client, {
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
    if (!this.#clientClosed || this.attemptOpen || this.phase === 'closed') return;
    this.#disarm();
    this.#transition('closed');
    this.report();
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
    const headers = this.requestHeaders();
    headers.push('connection', 'Upgrade', 'upgrade', this.req.headers.upgrade ?? 'websocket');
    return headers;
  }

  #transition(next: TunnelPhase): void {
    const was = this.phase;
    if (was === next) return;
    this.phase = next;
    const log = this.shared.log;
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
