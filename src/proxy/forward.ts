/**
 * One request's trip to an instance: from admission, through undici, back to the client.
 *
 * A `Forward` is the only object made per proxied request. It is at once the admission queue node (a
 * `Waiter`), the undici dispatch handler, and the target of the client response's events (through
 * `ProxyResponse.forward` and module-level listeners), so the hot path creates no closures.
 *
 * Accounting rules:
 * - `upstream.begin()` is called when an instance is chosen and `upstream.end(ticket)` exactly once when
 *   undici reports the attempt over (response end or error, including an abort after the client left).
 * - The admission slot is held from admission until the last attempt is over; a retry keeps it.
 * - The proxy is told `done` once both sides are over: the client response has closed and no upstream
 *   attempt is running. That is what `Proxy.inFlight` and a graceful stop wait for.
 */
import { ServerResponse, type IncomingMessage, type IncomingHttpHeaders } from 'node:http';
import type { Dispatcher } from 'undici';
import type { Logger } from '../lib/logger.ts';
import type { RouteConfig } from '../config/schema.ts';
import type { GenerationView, PoolView, Upstream } from '../supervisor/types.ts';
import type { Admission, AdmissionRejection, Waiter } from './admission.ts';
import type { AppEntry } from './router.ts';
import type { ErrorPages, ErrorReason } from './error-pages.ts';
import type { UpstreamClients } from './upstream-clients.ts';
import { instanceName, upstreamRequestHeaders } from './request-headers.ts';
import { accessLog, elapsedMs, requestChannel } from './access-log.ts';

/** State shared by every Forward of one proxy; one object, updated in place by `setConfig`/`stop`. */
export interface ForwardShared {
  readonly clients: UpstreamClients;
  readonly pages: ErrorPages;
  readonly log: Logger;
  trustedProxyCount: number;
  /** The proxy is stopping: responses carry `Connection: close`. */
  stopping: boolean;
  /** Called once per Forward, when the client response has closed and no upstream attempt is running. */
  done(fw: Forward): void;
}

/** The client response, with a back reference so module-level listeners find their Forward. */
export class ProxyResponse extends ServerResponse {
  forward: Forward | null = null;
}

/** new -> queued? -> upstream -> responding -> done. Not logged per transition: this is the hot path. */
export type ForwardPhase = 'new' | 'queued' | 'upstream' | 'responding' | 'done';

const HOP_BY_HOP_RESPONSE = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade'];

/** Idempotent methods: sent again on another instance (when bodiless) after a connection failure. */
const RETRYABLE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);

/** The connection broke (as opposed to a timeout or a protocol error): the instance died or closed it. */
const CONNECTION_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET']);

/** Why an attempt is aborted when the client leaves. */
const CLIENT_GONE = new Error('client disconnected');

/** Retry-After (seconds) for a full queue: capacity frees up as soon as any request ends. */
const QUEUE_FULL_RETRY_AFTER_S = 1;

export interface ForwardInit {
  req: IncomingMessage;
  res: ProxyResponse;
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

export class Forward implements Waiter {
  // Waiter links: this object is the admission queue node.
  prev: Waiter | null = null;
  next: Waiter | null = null;
  deadline = 0;
  queued = false;

  readonly req: IncomingMessage;
  readonly res: ProxyResponse;
  readonly app: AppEntry;
  readonly route: RouteConfig;
  readonly generation: GenerationView;
  readonly pool: PoolView;
  readonly admission: Admission;
  readonly path: string;
  readonly host: string;
  readonly socketAddress: string;
  readonly clientIp: string;
  readonly requestId: string;
  readonly start: number;
  /** Epoch ms at arrival, for `X-Request-Start`. */
  readonly arrivedAt: number;
  readonly hasBody: boolean;
  phase: ForwardPhase = 'new';
  /** Status sent to the client (0 until one is). */
  status = 0;
  /** The instance of the current (or last) attempt. */
  upstream: Upstream | null = null;

  #shared: ForwardShared;
  #ticket = 0;
  #attempts = 0;
  #controller: Dispatcher.DispatchController | null = null;
  /** undici has connected and is about to write the request: a failure from here on is not retried. */
  #connected = false;
  #admitted = false;
  #attemptOpen = false;
  #clientOpen = true;
  /** Built on the first attempt and reused by a retry. */
  #headers: string[] | null = null;

  constructor(shared: ForwardShared, init: ForwardInit) {
    this.#shared = shared;
    this.req = init.req;
    this.res = init.res;
    this.app = init.app;
    this.route = init.route;
    this.generation = init.generation;
    this.pool = init.pool;
    this.admission = init.admission;
    this.path = init.path;
    this.host = init.host;
    this.socketAddress = init.socketAddress;
    this.clientIp = init.clientIp;
    this.requestId = init.requestId;
    this.start = init.start;
    this.arrivedAt = Date.now();
    const h = init.req.headers;
    const cl = h['content-length'];
    this.hasBody = h['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
    init.res.forward = this;
    init.res.on('close', onClientClose);
  }

  /** Hands the request to admission: it starts now, waits in the queue, or is turned away. */
  run(now: number): void {
    this.admission.enter(this, now);
    if (this.queued) this.phase = 'queued';
  }

  // ---- Waiter ----------------------------------------------------------------------------------

  admit(upstream: Upstream): void {
    this.#admitted = true;
    this.#attempt(upstream);
  }

  reject(reason: AdmissionRejection): void {
    const retryAfter =
      reason === 'queue-full' ? QUEUE_FULL_RETRY_AFTER_S : Math.max(1, Math.ceil(this.admission.queueTimeoutMs / 1000));
    this.#fail(503, reason, retryAfter);
    this.#maybeDone();
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
    stripResponseHopByHop(headers);
    headers['x-request-id'] = this.requestId;
    // Which release answered: lets a client (and the deploy bench) see the switch.
    headers['x-berth-release'] = this.generation.releaseId;
    if (this.app.mode.mode === 'read-only') headers['x-berth-mode'] = 'read-only';
    const res = this.res;
    if (this.#shared.stopping) res.shouldKeepAlive = false;
    this.phase = 'responding';
    this.status = statusCode;
    res.on('drain', onClientDrain);
    if (statusMessage) res.writeHead(statusCode, statusMessage, headers);
    else res.writeHead(statusCode, headers);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.res.write(chunk)) controller.pause();
  }

  onResponseEnd(): void {
    this.res.end();
    this.#endAttempt();
    this.#finishUpstream();
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, err: Error): void {
    const connected = this.#connected;
    const failed = this.upstream;
    this.#endAttempt();
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
    // Retry once elsewhere when the attempt failed before the instance could answer: not connected
    // (refused: not a byte was written), or the connection broke before any response byte. The second
    // case goes beyond "refused before sending": the instance may have seen the request, which is safe
    // for an idempotent bodiless one, and it is what keeps a killed instance (or an idle keep-alive
    // connection it closed as we reused it) from failing requests. A headers timeout is not retried:
    // the instance is alive and slow, and a second try would double its load.
    if (
      this.#attempts === 1 &&
      (!connected || CONNECTION_ERRORS.has(code)) &&
      !this.hasBody &&
      RETRYABLE_METHODS.has(this.req.method ?? '')
    ) {
      const other = this.pool.pick(failed ?? undefined);
      if (other !== null) {
        this.#shared.log.warn(
          { app: this.app.name, instance: instanceName(failed), retry: instanceName(other), code, requestId: this.requestId },
          'upstream retry',
        );
        this.#attempt(other);
        return;
      }
    }
    const timeout = code === 'UND_ERR_HEADERS_TIMEOUT';
    this.#shared.log.warn(
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
    if (!this.res.writableFinished) {
      if (this.status === 0) this.status = 499;
      if (this.queued) this.admission.cancel(this);
      // Before onRequestStart there is no controller; onRequestStart aborts on seeing the client gone.
      else if (this.#attemptOpen && this.#controller !== null) this.#controller.abort(CLIENT_GONE);
    }
    this.#maybeDone();
  }

  /** The client drained its buffer: let undici read from the instance again. */
  clientDrained(): void {
    this.#controller?.resume();
  }

  // ---- internals ----------------------------------------------------------------------------------

  #attempt(upstream: Upstream): void {
    this.upstream = upstream;
    this.#ticket = upstream.begin();
    this.#attempts++;
    this.#attemptOpen = true;
    this.#connected = false;
    this.#controller = null;
    this.phase = 'upstream';
    this.#headers ??= this.#buildHeaders();
    // pick() only returns instances with an address, and nothing ran in between.
    const dispatcher = this.#shared.clients.get(upstream.address!);
    // Errors, even synchronous ones, come back through onResponseError.
    dispatcher.dispatch(
      {
        path: this.path,
        method: this.req.method as Dispatcher.HttpMethod,
        headers: this.#headers,
        body: this.hasBody ? this.req : null,
        headersTimeout: this.app.config.timeouts.headersMs,
      },
      this,
    );
  }

  #endAttempt(): void {
    if (!this.#attemptOpen) return;
    this.#attemptOpen = false;
    this.#controller = null;
    this.upstream!.end(this.#ticket);
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
    if (this.#clientOpen || this.#attemptOpen || this.#admitted || this.phase === 'done') return;
    this.phase = 'done';
    const log = this.#shared.log;
    if (log.isLevelEnabled('info')) {
      const up = this.upstream;
      accessLog(log, {
        app: this.app.name,
        method: this.req.method ?? '',
        path: this.path,
        status: this.status,
        durationMs: elapsedMs(this.start),
        requestId: this.requestId,
        release: this.generation.releaseId,
        instance: up === null ? null : instanceName(up),
        clientIp: this.clientIp,
      });
    }
    if (requestChannel.hasSubscribers) requestChannel.publish(this);
    this.res.forward = null;
    this.#shared.done(this);
  }

  #fail(status: number, reason: ErrorReason, retryAfter: number | null): void {
    if (!this.#clientOpen || this.res.headersSent) return;
    this.status = status;
    // Every 5xx of an app (502, 504, and 503 from its queue) may use its `pages.error` template.
    const pageFile = status >= 500 ? this.app.config.pages.error : null;
    this.#shared.pages.send(this.req, this.res, {
      status,
      reason,
      retryAfter,
      requestId: this.requestId,
      page: pageFile === null ? null : { releaseDir: this.generation.releaseDir, file: pageFile },
      close: this.#shared.stopping,
    });
  }

  /** The request headers for the instance (see request-headers.ts). */
  #buildHeaders(): string[] {
    return upstreamRequestHeaders(
      this.req.rawHeaders,
      this.socketAddress,
      this.#shared.trustedProxyCount,
      this.requestId,
      this.arrivedAt,
      this.generation.releaseId,
      this.host,
      this.app.mode.mode === 'read-only',
    );
  }
}

/** `res.on('close')`: a module-level function, so no closure is made per request. */
function onClientClose(this: ProxyResponse): void {
  this.forward?.clientClosed();
}

function onClientDrain(this: ProxyResponse): void {
  this.forward?.clientDrained();
}

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
