/**
 * One request's trip to an instance: from admission, through undici, back to the client.
 *
 * A `Forward` is the only object made per proxied request. It is at once the admission queue node (a
 * `Waiter`), the undici dispatch handler, and the target of the client response's events (through
 * `ProxyResponse.forward` and module-level listeners), so the hot path creates no closures. Only a
 * request with a body adds a RequestBuffer, and only a client that pushes back adds a ResponseBuffer.
 * What it shares with a WebSocket tunnel (pinning, the instance ticket, the access-log line) is an
 * `Exchange` (exchange.ts).
 *
 * Accounting rules:
 * - `upstream.begin(true)` is called when an instance is chosen (its slot reserved by `acquire`) and `upstream.end(ticket)` exactly once when
 *   undici reports the attempt over (response end or error, including an abort after the client left).
 * - The admission slot is held from admission until the last attempt is over; a retry keeps it.
 * - The proxy is told `done` once both sides are over: the client response has closed and no upstream
 *   attempt is running. That is what `Proxy.inFlight` and a graceful stop wait for.
 *
 * Buffering (nginx's proxy_request_buffering / proxy_buffering; see request-buffer.ts and
 * response-buffer.ts), so that a slow client holds a connection of the gateway, never a slot of the app:
 * - A request with a body is read whole before it enters admission (phase `buffering`). It holds no
 *   ticket meanwhile, so a deploy's drain does not wait for it: once whole, it is pinned again to the
 *   generation active then (#repin). A client waiting on `Expect: 100-continue` is told to send only now.
 * - The response is written straight to the client while the client keeps up; once the client pushes
 *   back, the rest is held in a ResponseBuffer and the app is read on at its own pace, so the slot and
 *   the instance ticket are freed when the app is done. Not buffered (the app is paused instead, as
 *   before): SSE, `X-Accel-Buffering: no`, HEAD, routes with `buffering: false`, apps with
 *   `buffering.responses: false`, and responses without a length past `buffering.memory`.
 * - A client that takes no response bytes for `buffering.send_timeout` is closed (nginx's send_timeout),
 *   buffered or not.
 */
import { ServerResponse, type IncomingMessage, type IncomingHttpHeaders } from 'node:http';
import { Http2ServerResponse, type Http2ServerRequest } from 'node:http2';
import type { Dispatcher } from 'undici';
import type { Upstream } from '../supervisor/types.ts';
import type { Admission, Waiter } from './admission.ts';
import { errorPage, type ErrorReason } from './error-pages.ts';
import { Exchange, type ExchangeShared } from './exchange.ts';
import { RequestBuffer, type RequestBufferOwner } from './request-buffer.ts';
import { ResponseBuffer, type ResponseBufferOwner } from './response-buffer.ts';
import { instanceName } from './request-headers.ts';
import { addSetCookie } from './affinity.ts';
import type { Resolution } from './resolver.ts';

/** The client response, with a back reference so module-level listeners find their Forward. */
export class ProxyResponse extends ServerResponse {
  forward: Forward | null = null;
}

/**
 * The same for a request over HTTP/2 (node's compatibility API). The handlers drive it through the
 * `ServerResponse` methods both share; what differs is handled where it matters, on `Resolution.h2`:
 * no `Connection` header or status message (node throws or warns on them), and a reset stream.
 */
export class H2ProxyResponse extends Http2ServerResponse {
  forward: Forward | null = null;
  /** Written by code shared with HTTP/1.1; an h2 stream has no connection of its own to keep or close. */
  shouldKeepAlive = true;
}
// What `ServerResponse#destroyed` says: the stream is gone (code that waits for 'close' checks it first).
// node's h2 response has no such property, though its typings declare one, so it is defined here.
Object.defineProperty(H2ProxyResponse.prototype, 'destroyed', {
  get(this: H2ProxyResponse): boolean {
    return this.stream.destroyed;
  },
});

/**
 * The response went out whole. node's h2 compatibility response says `writableFinished` also when the
 * client reset the stream (RST_STREAM CANCEL) before the end: the stream's reset code tells them apart.
 */
export function responseFinished(res: ServerResponse, h2: boolean): boolean {
  if (!res.writableFinished) return false;
  if (!h2) return true;
  const code = (res as unknown as H2ProxyResponse).stream.rstCode;
  return code === undefined || code === 0;
}

/**
 * new -> buffering? -> queued? -> upstream -> responding -> done. Not logged per transition: this is the
 * hot path.
 */
export type ForwardPhase = 'new' | 'buffering' | 'queued' | 'upstream' | 'responding' | 'done';

const HOP_BY_HOP_RESPONSE = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

/** Idempotent methods: sent again on another instance (when bodiless) after a connection failure. */
const RETRYABLE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/** The connection broke (as opposed to a timeout or a protocol error): the instance died or closed it. */
const CONNECTION_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET']);

/** Why an attempt is aborted when the client leaves. */
const CLIENT_GONE = new Error('client disconnected');


/**
 * A response with a Content-Length above this is not spilled to disk: past `buffering.memory` it streams
 * at the client's pace. nginx's proxy_max_temp_file_size default.
 */
export const MAX_SPILLED_RESPONSE_BYTES = 1024 * 1024 * 1024;

/** What undici reports when an app answers 101 to a request that asked for no upgrade. */
const BAD_UPGRADE = 'bad upgrade';

export class Forward extends Exchange implements Waiter, RequestBufferOwner, ResponseBufferOwner {
  // Waiter links: this object is the admission queue node (its `deadline` is the exchange's).
  prev: Waiter | null = null;
  next: Waiter | null = null;
  queued = false;

  readonly res: ProxyResponse;
  readonly admission: Admission;
  readonly hasBody: boolean;
  phase: ForwardPhase = 'new';

  #controller: Dispatcher.DispatchController | null = null;
  /** undici has connected and is about to write the request: a failure from here on is not retried. */
  #connected = false;
  #admitted = false;
  #clientOpen = true;
  /** Built on the first attempt and reused by a retry. */
  #headers: string[] | null = null;
  /** The request body, read whole before admission; null: bodiless, or streamed (buffering off). */
  #body: RequestBuffer | null = null;
  /** Whether this response may be held for a slow client (decided per response in onResponseStart). */
  #bufferResponse = false;
  /** The app's Content-Length, when it sent one. */
  #responseLength: string | undefined = undefined;
  /** What the client has not taken yet; made the first time a buffered response meets back-pressure. */
  #spool: ResponseBuffer | null = null;
  /** The client pushed back (res.write returned false) and has not drained since. */
  #needDrain = false;
  /** We paused undici's reading from the instance. */
  #paused = false;
  /** The instance's response is complete; the client may still be fed from the spool. */
  #upstreamEnded = false;
  #ended = false;
  /** An informational or 101 answer that must become a 502. */
  #badResponse = false;
  /** send_timeout: armed (or refreshed) whenever the client pushes back. */
  #sendTimer: NodeJS.Timeout | null = null;

  /** `r`: a `pinned` resolution of this request (resolver.ts), read now. */
  constructor(shared: ExchangeShared, r: Resolution, req: IncomingMessage, res: ProxyResponse) {
    super(shared, r, req);
    this.res = res;
    this.admission = r.admission!;
    const h = req.headers;
    const cl = h['content-length'];
    // An h2 body needs no length header: DATA frames follow unless the HEADERS frame ended the stream.
    this.hasBody = r.h2
      ? !(req as unknown as Http2ServerRequest).stream.endAfterHeaders && cl !== '0'
      : h['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
    res.forward = this;
    res.on('close', onClientClose);
  }

  /**
   * Hands the request to admission: it starts now, waits in the queue, or is turned away. A request with
   * a body first reads it whole (unless buffering is off for it), and only then enters admission.
   */
  run(now: number): void {
    if (this.hasBody) {
      const config = this.app.config;
      if (RequestBuffer.declaredTooLarge(this.req, config.maxBodyBytes)) {
        this.bodyRefused(413, null);
        return;
      }
      if (config.buffering.requests && this.route.buffering !== false) {
        this.phase = 'buffering';
        const b = new RequestBuffer(
          this.req,
          { maxBytes: config.maxBodyBytes, memoryBytes: config.buffering.memoryBytes, timeoutMs: config.buffering.bodyTimeoutMs, stateDir: this.shared.stateDir },
          this,
        );
        this.#body = b;
        this.#sendContinue();
        b.start();
        return;
      }
    }
    this.#enter(now);
  }

  /**
   * Tells a client waiting on `Expect: 100-continue` to send its body, now that the body is wanted. Node
   * leaves that answer to us (server.ts listens for `checkContinue`), so a request refused unread never
   * makes its client send a body only to be cut off; node closes the connection after such a refusal.
   * Node hands over only HTTP/1.1 and HTTP/2 expectations of 100-continue (it answers 417 to others).
   */
  #sendContinue(): void {
    const req = this.req;
    if (req.headers.expect !== undefined && (this.h2 || (req.httpVersionMinor === 1 && req.httpVersionMajor === 1))) this.res.writeContinue();
  }

  #enter(now: number): void {
    this.admission.enter(this, now);
    if (this.queued) this.phase = 'queued';
  }

  // ---- RequestBufferOwner ------------------------------------------------------------------------------

  bodyReady(): void {
    if (!this.#clientOpen) return;
    this.phase = 'new';
    this.#repin();
    this.#enter(performance.now());
  }

  /**
   * A body can take minutes, and a deploy may have switched the app meanwhile. Until now this request has
   * reached no instance and holds no ticket, so the old generation's drain did not wait for it and that
   * generation may be stopped already: it takes the generation active now, as a request arriving now
   * would. Nothing has been sent anywhere yet, so this keeps the pinning promise (one generation per
   * request) while keeping the deploy from dropping uploads.
   */
  #repin(): void {
    const active = this.shared.table.app(this.app.name)?.generation ?? null;
    if (active === null || active === this.generation) return;
    // Its affinity names an instance of a draining generation: it stays while that one takes such requests.
    if (this.affine !== null) {
      if (!this.generationServes()) this.repinAffinity();
      return;
    }
    const pool = active.pools.get(this.route.to!);
    if (pool === undefined || pool.instances.length === 0) return;
    this.generation = active;
    this.pool = pool;
  }

  bodyRefused(status: 408 | 413 | 500, err: Error | null): void {
    if (status === 500) {
      this.shared.log.error({ app: this.app.name, err: err?.message, requestId: this.requestId }, 'request body spill failed');
    }
    // The rest of the body is not wanted: the connection closes after the answer (nginx does the same).
    this.res.shouldKeepAlive = false;
    this.#fail(status, status === 413 ? 'body-too-large' : status === 408 ? 'body-timeout' : 'buffer-failed', null, true);
    this.#maybeDone();
  }

  // ---- Waiter ----------------------------------------------------------------------------------

  admit(upstream: Upstream): void {
    this.#admitted = true;
    this.#attempt(upstream);
  }

  acquire(): Upstream | null {
    const target = this.affine;
    if (target !== null) {
      // Its own instance while that one serves (and its generation, for one that waited): it waits for it.
      if (target.state === 'ready' && target.address !== null && (!this.queued || this.generationServes())) return target.tryReserve() ? target : null;
      this.repinAffinity();
    }
    return this.pool.acquire();
  }

  /** `reject` (Exchange's) takes a queue timeout's Retry-After from the admission's current limits. */
  protected override get queueTimeoutMs(): number {
    return this.admission.queueTimeoutMs;
  }

  refuse(status: number, reason: ErrorReason, retryAfter: number | null): void {
    this.#fail(status, reason, retryAfter);
    this.#maybeDone();
  }

  /** A request holds one of the instance's request tickets per attempt; admission (or the retry's acquire) reserved its slot. */
  protected claim(upstream: Upstream): number {
    return upstream.begin(true);
  }

  protected release(upstream: Upstream, ticket: number): void {
    this.#controller = null;
    upstream.end(ticket);
  }

  // ---- undici DispatchHandler ----------------------------------------------------------------------

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    this.#connected = true;
    // The client left while undici was still connecting: there was nothing to abort until now.
    if (!this.#clientOpen) controller.abort(CLIENT_GONE);
  }

  onResponseStart(
    controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
    statusMessage?: string,
  ): void {
    if (!this.#clientOpen) {
      controller.abort(CLIENT_GONE);
      return;
    }
    if (statusCode < 200) {
      // A 101 is only ever valid in answer to an upgrade, which never comes through here (websocket.ts):
      // relaying it would start a tunnel the gateway does not watch. Other 1xx (103 Early Hints) are
      // dropped: the final answer follows on the same attempt.
      if (statusCode === 101) {
        this.#badResponse = true;
        controller.abort(new Error('101 in answer to a request without upgrade'));
      }
      return;
    }
    stripResponseHopByHop(headers);
    headers['x-request-id'] = this.requestId;
    // Which release answered: lets a client (and the deploy bench) see the switch. Off by default
    // (`public_details`): it tells anyone which build runs.
    if (this.shared.publicDetails) headers['x-berth-release'] = this.generation.releaseId;
    if (this.app.mode.mode === 'read-only') headers['x-berth-mode'] = 'read-only';
    const cookie = this.affinityCookie();
    if (cookie !== null) addSetCookie(headers, cookie);
    this.#bufferResponse = this.#mayBuffer(headers);
    this.#responseLength = headers['content-length'];
    const res = this.res;
    if (this.shared.stopping) res.shouldKeepAlive = false;
    this.phase = 'responding';
    this.status = statusCode;
    res.on('drain', onClientDrain);
    // HTTP/2 has no reason phrase (node warns when given one).
    if (statusMessage && !this.h2) res.writeHead(statusCode, statusMessage, headers);
    else res.writeHead(statusCode, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    const spool = this.#spool;
    if (spool !== null && (this.#needDrain || !spool.empty)) {
      // The client is behind: keep reading the app, hold the bytes.
      if (!spool.push(chunk) && !this.#paused) {
        this.#paused = true;
        controller.pause();
      }
      return;
    }
    if (this.res.write(chunk)) return;
    this.#needDrain = true;
    this.#armSendTimer();
    if (this.#bufferResponse) {
      this.#spool ??= new ResponseBuffer(this.shared.stateDir, this.app.config.buffering.memoryBytes, this.#spillable(), this);
    } else if (!this.#paused) {
      this.#paused = true;
      controller.pause();
    }
  }

  onResponseEnd(): void {
    this.#upstreamEnded = true;
    const spool = this.#spool;
    if (spool === null || spool.empty) this.#endResponse();
    this.endAttempt();
    this.#finishUpstream();
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, err: Error): void {
    const connected = this.#connected;
    const failed = this.upstream;
    this.endAttempt();
    if (!this.#clientOpen) {
      this.#finishUpstream();
      return;
    }
    if (this.res.headersSent) {
      // Part of the response is out; the only honest signal left is to cut the connection.
      this.res.destroy();
      this.#finishUpstream();
      return;
    }
    const code = (err as { code?: string }).code ?? 'unknown';
    if (this.#badResponse || err.message === BAD_UPGRADE) {
      // The instance answered, wrongly: not a connection failure, so not retried.
      this.shared.log.warn({ app: this.app.name, instance: instanceName(failed), err: err.message, requestId: this.requestId }, 'upstream bad response');
      this.#fail(502, 'bad-upstream-response', null);
      this.#finishUpstream();
      return;
    }
    // Retry once elsewhere when the attempt failed before the instance could answer: not connected
    // (refused: not a byte was written), or the connection broke before any response byte. The second
    // case goes beyond "refused before sending": the instance may have seen the request, which is safe
    // for an idempotent bodiless one, and it is what keeps a killed instance (or an idle keep-alive
    // connection it closed as we reused it) from failing requests. A headers timeout is not retried:
    // the instance is alive and slow, and a second try would double its load.
    if (
      this.attempts === 1 &&
      (!connected || CONNECTION_ERRORS.has(code)) &&
      !this.hasBody &&
      RETRYABLE_METHODS.has(this.req.method ?? '')
    ) {
      // Its affine instance is the one that failed: what it held of the session is gone with it.
      if (this.affine !== null) this.repinAffinity();
      const other = this.pool.acquire(failed ?? undefined);
      if (other !== null) {
        this.shared.log.warn(
          { app: this.app.name, instance: instanceName(failed), retry: instanceName(other), code, requestId: this.requestId },
          'upstream retry',
        );
        this.#attempt(other);
        return;
      }
    }
    const timeout = code === 'UND_ERR_HEADERS_TIMEOUT';
    this.shared.log.warn(
      { app: this.app.name, instance: instanceName(failed), code, err: err.message, requestId: this.requestId },
      timeout ? 'upstream timeout' : 'upstream error',
    );
    this.#fail(timeout ? 504 : 502, timeout ? 'upstream-timeout' : 'upstream-unreachable', null);
    this.#finishUpstream();
  }

  // ---- client events (called by the module-level listeners) -------------------------------------

  /** The client response closed: finished normally, or the client went away. */
  clientClosed(): void {
    this.#clientOpen = false;
    this.#spool?.destroy();
    if (!responseFinished(this.res, this.h2)) {
      if (this.status === 0) this.status = 499;
      if (this.phase === 'buffering') this.#body?.destroy();
      else if (this.queued) this.admission.cancel(this);
      // Before onRequestStart there is no controller; onRequestStart aborts on seeing the client gone.
      else if (this.attemptOpen && this.#controller !== null) this.#controller.abort(CLIENT_GONE);
    }
    this.#maybeDone();
  }

  /** The client drained its buffer: feed it from the spool, and let undici read from the instance again. */
  clientDrained(): void {
    this.#needDrain = false;
    this.#feed();
  }

  /** send_timeout passed since the client last pushed back. */
  sendTimedOut(): void {
    const res = this.res;
    if (!this.#clientOpen || responseFinished(res, this.h2) || !this.#needDrain) return;
    this.shared.log.info({ app: this.app.name, requestId: this.requestId, timeoutMs: this.app.config.buffering.sendTimeoutMs }, 'client send timeout');
    // 'close' follows, and clientClosed() releases the rest.
    res.destroy();
  }

  // ---- ResponseBufferOwner -------------------------------------------------------------------------

  bufferReadable(): void {
    this.#feed();
  }

  bufferFailed(err: Error): void {
    this.shared.log.error({ app: this.app.name, err: err.message, requestId: this.requestId }, 'response spill failed');
    if (this.#clientOpen) this.res.destroy();
  }

  // ---- internals ----------------------------------------------------------------------------------

  #attempt(upstream: Upstream): void {
    this.beginAttempt(upstream);
    this.#connected = false;
    this.#controller = null;
    this.phase = 'upstream';
    if (this.#headers === null) {
      this.#headers = this.requestHeaders();
      // A chunked body, now held whole, goes on with a length (Transfer-Encoding is hop-by-hop).
      if (this.#body !== null && this.req.headers['content-length'] === undefined) this.#headers.push('content-length', String(this.#body.length));
    }
    // pick() only returns instances with an address, and nothing ran in between.
    const dispatcher = this.shared.clients.get(upstream.address!);
    const buffered = this.#body;
    // A streamed body (buffering off) is wanted from now on; a body is never retried, so this runs once.
    if (buffered === null && this.hasBody) this.#sendContinue();
    // Errors, even synchronous ones, come back through onResponseError.
    dispatcher.dispatch(
      {
        path: this.path,
        method: this.req.method as Dispatcher.HttpMethod,
        headers: this.#headers,
        body: buffered !== null ? buffered.body() : this.hasBody ? this.req : null,
        headersTimeout: this.app.config.timeouts.headersMs,
      },
      this,
    );
  }

  /** Whether the response just started may be held for a slow client; strips X-Accel-Buffering. */
  #mayBuffer(headers: IncomingHttpHeaders): boolean {
    let buffer = this.app.config.buffering.responses && this.route.buffering !== false && this.req.method !== 'HEAD';
    const accel = headers['x-accel-buffering'];
    if (accel !== undefined) {
      // nginx reads and removes it: the app's own switch for one response.
      delete headers['x-accel-buffering'];
      if (String(accel).trim().toLowerCase() === 'no') buffer = false;
    }
    const type = headers['content-type'];
    // Server-sent events are a stream by definition: each event must reach the client when sent.
    if (buffer && type !== undefined && EVENT_STREAM.test(type)) buffer = false;
    return buffer;
  }

  /** A response may go to disk when its length is known and within the disk budget. */
  #spillable(): boolean {
    const cl = this.#responseLength;
    if (cl === undefined) return false;
    const n = Number(cl);
    return Number.isFinite(n) && n <= MAX_SPILLED_RESPONSE_BYTES;
  }

  /** Feeds the client from the spool while it takes bytes; ends the response once all is sent. */
  #feed(): void {
    if (!this.#clientOpen) return;
    const spool = this.#spool;
    if (spool !== null) {
      const res = this.res;
      while (!this.#needDrain) {
        const chunk = spool.shift();
        if (chunk === null) break;
        if (!res.write(chunk)) {
          this.#needDrain = true;
          this.#armSendTimer();
        }
      }
      if (this.#upstreamEnded && spool.empty) this.#endResponse();
    }
    if (this.#paused && (spool === null ? !this.#needDrain : !spool.full)) {
      this.#paused = false;
      this.#controller?.resume();
    }
  }

  #endResponse(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.res.end();
  }

  #armSendTimer(): void {
    if (this.#sendTimer === null) {
      this.#sendTimer = setTimeout(onSendTimeout, this.app.config.buffering.sendTimeoutMs, this);
      this.#sendTimer.unref();
    } else this.#sendTimer.refresh();
  }

  /** The last attempt is over: free the admission slot (admitting the next waiter). */
  #finishUpstream(): void {
    if (this.#admitted) {
      this.#admitted = false;
      this.admission.leave();
    }
    this.#maybeDone();
  }

  #maybeDone(): void {
    if (this.#clientOpen || this.attemptOpen || this.#admitted || this.phase === 'done') return;
    this.phase = 'done';
    if (this.#sendTimer !== null) clearTimeout(this.#sendTimer);
    this.#spool?.destroy();
    this.#body?.destroy();
    this.report();
    this.res.forward = null;
    this.shared.done(this);
  }

  #fail(status: number, reason: ErrorReason, retryAfter: number | null, close = false): void {
    if (!this.#clientOpen || this.res.headersSent) return;
    this.status = status;
    this.shared.pages.send(this.req, this.res, {
      status,
      reason,
      retryAfter,
      requestId: this.requestId,
      page: errorPage(status, this.app.config.pages.error, this.generation.releaseDir),
      close: (close || this.shared.stopping) && !this.h2,
    });
  }
}

/** `res.on('close')`: a module-level function, so no closure is made per request. */
function onClientClose(this: ProxyResponse): void {
  this.forward?.clientClosed();
}

function onClientDrain(this: ProxyResponse): void {
  this.forward?.clientDrained();
}

function onSendTimeout(fw: Forward): void {
  fw.sendTimedOut();
}

const EVENT_STREAM = /^\s*text\/event-stream/i;

/** Strips hop-by-hop headers (and those `Connection` names) from a parsed response header object. */
function stripResponseHopByHop(headers: IncomingHttpHeaders): void {
  const connection = headers.connection;
  if (connection !== undefined) {
    const value = Array.isArray(connection) ? connection.join(',') : connection;
    if (value !== 'keep-alive' && value !== 'close') {
      for (const token of value.split(',')) {
        const t = token.trim().toLowerCase();
        if (t !== '') delete headers[t];
      }
    }
  }
  for (let i = 0; i < HOP_BY_HOP_RESPONSE.length; i++) {
    const name = HOP_BY_HOP_RESPONSE[i];
    if (headers[name] !== undefined) delete headers[name];
  }
}
