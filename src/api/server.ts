/**
 * The control API: JSON over HTTP on the control unix socket, and on `control.listen` (TCP) with auth.
 * The socket is trusted through its file permissions: it is created 0600 (umask during bind, so there
 * is no window in which it is wider), or 0660 owned by `control.socket_group`. Its directory must not be
 * world-writable. TCP callers authenticate (src/api/auth.ts). Both serve the dashboard (src/api/ui).
 *
 * A TCP connection whose request is refused with 401 is closed after the answer (`Connection: close`):
 * an unauthenticated client gets one answer per connection, not a session to keep trying on. Request
 * bodies are JSON with a size limit (413), a time limit (408) and a nesting limit (400), all checked
 * before anything parses or stores them; the connection is closed after a 408 or 413, whose body was
 * not read to its end, and after any answer that left a body unread (a GET's, a 404's): berth never
 * drains a body it does not want, which a client could trickle for ever. Headers must arrive within
 * HEADERS_TIMEOUT_MS.
 *
 * The call-context header is trusted by address, and any local user can connect from loopback. So when
 * apps run as their own users, a connection that belongs to one of them (src/api/local-peer.ts) may not
 * carry a call context from any address: app code cannot claim to be a caller of its choosing.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Server as NetServer, Socket } from 'node:net';
import { acceptsConnections, closeKeepingPath } from '../lib/unix-socket.ts';
import { lstat, mkdir, unlink, chmod, chown, readFile, stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { dirname } from 'node:path';
import type { BerthConfig, ListenAddress } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, errorMessage, httpStatusFor, ErrorCodes } from '../lib/errors.ts';
import type { Control } from './control.ts';
import { ApiRoutes } from './routes.ts';
import type { RequestContext } from './request.ts';
import { Auth, berthActorName, USER_NAME_RE } from './auth.ts';
import { UiAssets } from './ui/ui-assets.ts';
import { localPeer, type LocalPeer } from './local-peer.ts';
import { isRoot, resolveAppUser } from '../supervisor/app-user.ts';

/** Largest control API request body (413 above). Control bodies are small JSON: a source, a mode, a command. */
export const MAX_BODY_BYTES = 1024 * 1024;
/** A request body must arrive whole within this long from its headers (408 after). */
export const BODY_TIMEOUT_MS = 10_000;
/** Deepest nesting of arrays and objects in a JSON body (400 deeper); no endpoint needs more than 3. */
export const MAX_JSON_DEPTH = 32;
/**
 * A request's headers must arrive whole within this long (408 and closed after). Control clients send
 * them at once; a client that holds connections open by trickling them (slowloris) is cut off early.
 */
export const HEADERS_TIMEOUT_MS = 10_000;
/**
 * Options of both control listeners. Node checks the headers timeout only every
 * `connectionsCheckingInterval` (30 s by default, so a slow client lasted up to twice the timeout).
 * `requestTimeout` is 0: streamed answers (logs, events, runs) last, and a body is timed by readJsonBody.
 */
/** At a stop, how long the answers under way get to finish. */
const STOP_GRACE_MS = 1_000;
const SERVER_OPTIONS = { requestTimeout: 0, headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 1_000, keepAliveTimeout: 5_000 };
/** Statuses after which the connection is closed: the caller is not identified (only TCP has 401s), or its body is unread. */
const CLOSE_AFTER = new Set([401, 408, 413]);

export interface ApiServerOptions {
  gateway: Control;
  config: BerthConfig;
  logger: Logger;
}

export class ApiServer {
  #config: BerthConfig;
  #log: Logger;
  #routes: ApiRoutes;
  #server: Server | null = null;
  #auth: Auth;
  #tcp: Server | null = null;
  /** After an upgrade: the listening sockets the old gateway handed over, whose connections the servers above serve. */
  #handed: { socket: NetServer | null; tcp: NetServer | null } = { socket: null, tcp: null };
  /** The next gateway serves the control socket now: stop() leaves its file in place. */
  #handedOver = false;
  /** Requests being answered: a stop lets them finish (up to STOP_GRACE_MS), an upgrade's answer included. */
  #active = 0;
  #idle: (() => void) | null = null;
  #ui = new UiAssets();
  /** uid -> the apps that run as it, for the users apps run as that are not berth's own. */
  #appUids = new Map<number, string[]>();
  /** Per connection: who owns its client end (judged against the app users of the moment). */
  #peers = new WeakMap<Socket, Promise<LocalPeer>>();

  constructor(opts: ApiServerOptions) {
    this.#config = opts.config;
    this.#log = opts.logger;
    this.#routes = new ApiRoutes(opts.gateway);
    this.#auth = new Auth(opts.config.control, opts.config.environment);
    this.#appUids = appUids(opts.config);
  }

  /** Config reload: new tokens, call-context header and permissions apply to the next request. */
  setConfig(config: BerthConfig): void {
    this.#config = config;
    this.#auth = new Auth(config.control, config.environment);
    this.#appUids = appUids(config);
  }

  /**
   * Why this TCP request may not carry a call context though its address is trusted: apps run as their
   * own users, and this connection belongs to one of them (or was closed before its owner could be told).
   * Looked up once per connection, only for requests that send the header from a trusted address.
   */
  #peerRefusal(req: IncomingMessage): Promise<string | null> {
    const header = this.#auth.callContextHeader;
    const sock = req.socket;
    if (this.#appUids.size === 0 || header === null || req.headers[header] === undefined || !this.#auth.trustsCallContextFrom(sock.remoteAddress)) return Promise.resolve(null);
    let known = this.#peers.get(sock);
    if (!known) {
      known = localPeer({ address: sock.remoteAddress, port: sock.remotePort }, { address: sock.localAddress, port: sock.localPort });
      this.#peers.set(sock, known);
    }
    return known.then((peer) => {
      if (peer.kind === 'orphan') return 'its client end was closed before its owner could be told';
      if (peer.kind !== 'local') return null;
      const apps = this.#appUids.get(peer.uid);
      return apps ? `it belongs to uid ${peer.uid}, which runs app ${apps.join(', ')}, and an app may not claim a caller's identity` : null;
    });
  }

  /** The bound TCP control address (port 0 resolved), or null when `control.listen` is not set. */
  tcpAddress(): { host: string; port: number; text: string } | null {
    const a = (this.#handed.tcp ?? this.#tcp)?.address() as AddressInfo | null | undefined;
    if (!a) return null;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return { host: a.address, port: a.port, text: `${host}:${a.port}` };
  }

  /** Binds the control socket. Refuses a path that is a live socket of another gateway or not a socket. */
  async start(): Promise<void> {
    const path = this.#config.control.socket;
    await mkdir(dirname(path), { recursive: true });
    // Anyone could swap the socket for their own in a world-writable directory (even with the sticky bit,
    // a name we have not bound yet is theirs to take).
    const dir = dirname(path);
    if (((await stat(dir)).mode & 0o002) !== 0) throw new BerthError(ErrorCodes.listen, `the control socket's directory ${dir} is world-writable; refusing to use it (chmod o-w ${dir}, or set control.socket elsewhere)`);
    const existing = await lstat(path).catch(() => null);
    if (existing) {
      if (existing.isSymbolicLink()) throw new BerthError(ErrorCodes.listen, `control socket ${path} is a symlink; refusing to use it`);
      if (!existing.isSocket()) throw new BerthError(ErrorCodes.listen, `control socket path ${path} exists and is not a socket`);
      if (existing.uid !== process.getuid!()) throw new BerthError(ErrorCodes.listen, `control socket ${path} is owned by another user (uid ${existing.uid}); refusing to use it`);
      if (await acceptsConnections(path)) throw new BerthError(ErrorCodes.listen, `another gateway is already running on control socket ${path}`);
      await unlink(path);
    }
    const server = createServer(SERVER_OPTIONS, (req, res) => {
      void this.#handle(req, res, false);
    });
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, () => {
          server.off('error', reject);
          // Once bound, an accept error (EMFILE...) is logged; without a listener it would crash the gateway.
          server.on('error', (err) => this.#log.error({ err: errorMessage(err) }, 'control socket error'));
          resolve();
        });
      });
    } catch (err) {
      throw new BerthError(ErrorCodes.listen, `cannot listen on control socket ${path}: ${errorMessage(err)}`, { cause: err });
    } finally {
      process.umask(oldMask);
    }
    this.#server = server;
    const group = this.#config.control.socketGroup;
    if (group !== null) {
      const gid = await groupId(group);
      try {
        await chown(path, process.getuid!(), gid);
      } catch (err) {
        throw new BerthError(ErrorCodes.listen, `cannot give control socket ${path} to group ${group}: ${errorMessage(err)}`, { cause: err });
      }
      await chmod(path, 0o660);
    } else await chmod(path, 0o600);
    this.#log.info({ socket: path, group }, 'control api listening');
    const listen = this.#config.control.listen;
    if (listen?.kind === 'tcp') this.#tcp = await this.#listenTcp(listen);
  }

  // ---- upgrade ---------------------------------------------------------------------------------------

  /** The old gateway's side of an upgrade: the listening sockets of the control socket and of `control.listen`. */
  listeningSockets(): { socket: NetServer | null; tcp: NetServer | null } {
    return { socket: this.#handed.socket ?? this.#server, tcp: this.#handed.tcp ?? this.#tcp };
  }

  /**
   * The new gateway's side: serves the control API on the sockets the old gateway handed over (the
   * socket file stays as it is, with its mode and group), binding what it did not hand over.
   */
  async adopt(handed: { socket: NetServer | null; tcp: NetServer | null }): Promise<void> {
    if (handed.socket === null) return this.start();
    this.#handed = handed;
    this.#server = this.#serveHanded(handed.socket, false);
    const listen = this.#config.control.listen;
    if (handed.tcp !== null) this.#tcp = this.#serveHanded(handed.tcp, true);
    else if (listen?.kind === 'tcp') this.#tcp = await this.#listenTcp(listen);
    this.#log.info({ socket: this.#config.control.socket, tcp: this.tcpAddress()?.text }, 'control api listening on the sockets handed over');
  }

  #serveHanded(handed: NetServer, tcp: boolean): Server {
    const server = createServer(SERVER_OPTIONS, (req, res) => {
      void this.#handle(req, res, tcp);
    });
    handed.on('connection', (socket: Socket) => server.emit('connection', socket));
    handed.on('error', (err) => this.#log.error({ err: errorMessage(err) }, 'control listener error'));
    return server;
  }

  /** The old gateway's side, once the new one serves the sockets: no new connection comes here. */
  stopAccepting(): void {
    this.#handedOver = true;
    // close() stops the accepting at once; its callback would wait for the connections, which finish here.
    // The control socket's file stays: the new gateway listens on that socket.
    const { socket, tcp } = this.listeningSockets();
    if (socket?.listening) closeKeepingPath(socket, this.#config.control.socket);
    if (tcp?.listening) tcp.close();
    // A kept-alive connection would bring its client's next request here: each one ends after its answer.
    this.#server?.closeIdleConnections();
    this.#tcp?.closeIdleConnections();
  }

  /** Closes the listening sockets handed over at an upgrade (the servers above close their connections). */
  async #closeHanded(): Promise<void> {
    const { socket, tcp } = this.#handed;
    await Promise.all([socket, tcp].map((s) => (s?.listening ? new Promise<void>((resolve) => s.close(() => resolve())) : undefined)));
  }

  /** The TCP control listener: the same API, every caller authenticated. */
  async #listenTcp(address: ListenAddress & { kind: 'tcp' }): Promise<Server> {
    const server = createServer(SERVER_OPTIONS, (req, res) => {
      void this.#handle(req, res, true);
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(address.port, address.host, () => {
          server.off('error', reject);
          server.on('error', (err) => this.#log.error({ err: errorMessage(err) }, 'control listener error'));
          resolve();
        });
      });
    } catch (err) {
      throw new BerthError(ErrorCodes.listen, `cannot listen on control.listen ${address.text}: ${errorMessage(err)}`, { cause: err });
    }
    this.#tcp = server;
    this.#log.info({ listen: this.tcpAddress()?.text }, 'control api listening on tcp');
    return server;
  }

  async #handle(req: IncomingMessage, res: ServerResponse, tcp: boolean): Promise<void> {
    const started = performance.now();
    this.#active++;
    res.once('close', () => {
      if (--this.#active === 0) this.#idle?.();
    });
    try {
      const url = new URL(req.url ?? '/', 'http://berth');
      // Handed over to an upgrade's new gateway: the client's next request goes to that one.
      if (this.#handedOver) res.setHeader('connection', 'close');
      // Nothing reads the body of a read (nor the page's): it would be drained after the answer for as
      // long as the client cares to trickle it, holding the connection with no timeout (requestTimeout is
      // 0 so that streamed answers may last). So the answer closes the connection instead.
      if ((req.method === 'GET' || req.method === 'HEAD') && carriesBody(req)) res.setHeader('connection', 'close');
      // The dashboard's page and assets are public: they hold no data, and its API calls authenticate.
      if (this.#ui.serve(req, res, url.pathname, !tcp ? 'none' : this.#auth.callContextHeader ? 'token-or-proxy' : 'token')) return;
      const peerRefusal = tcp ? await this.#peerRefusal(req) : null;
      const result = await this.#routes.handle(req.method ?? 'GET', url, req, res, {
        identify: () => (tcp ? this.#authenticate(req, peerRefusal) : socketContext(req)),
        body: () => readJsonBody(req),
        remote: tcp ? (req.socket.remoteAddress ?? 'unknown') : 'control socket',
      });
      if (result !== undefined && !res.headersSent) sendJson(res, result.status, result.body);
    } catch (err) {
      const status = httpStatusFor(err);
      const code = err instanceof BerthError ? err.code : ErrorCodes.internal;
      if (status >= 500) this.#log.error({ err: errorMessage(err), url: req.url }, 'api request failed');
      if (!res.headersSent) {
        const details = err instanceof BerthError ? err.details : undefined;
        if (status === 401) res.setHeader('www-authenticate', 'Bearer realm="berth"');
        // Node ends the socket once this answer is written (and reads no further request on it). The same
        // for a body left unread by a refusal before it (404, a wrong method): it is not drained.
        if (CLOSE_AFTER.has(status) || (carriesBody(req) && !req.complete)) res.setHeader('connection', 'close');
        sendJson(res, status, { error: { code, message: errorMessage(err), ...(details ? { details } : {}) } });
      } else res.destroy();
    } finally {
      this.#log.debug({ method: req.method, url: req.url, status: res.statusCode, durationMs: Math.round(performance.now() - started) }, 'api request');
    }
  }

  #authenticate(req: IncomingMessage, peerRefusal: string | null): RequestContext {
    try {
      return this.#auth.authenticate(req.headers, req.socket.remoteAddress, peerRefusal);
    } catch (err) {
      const header = this.#auth.callContextHeader;
      const context = header !== null && req.headers[header] !== undefined ? { callContextFrom: this.#auth.callContextFrom } : {};
      this.#log.warn({ remote: req.socket.remoteAddress, method: req.method, url: req.url, reason: errorMessage(err), ...context }, 'api auth refused');
      throw err;
    }
  }

  /** Stops accepting, lets in-flight API requests finish briefly, removes the socket file (unless handed over). */
  async stop(): Promise<void> {
    await this.#closeHanded();
    const servers = [this.#tcp, this.#server].filter((s): s is Server => s !== null);
    this.#tcp = this.#server = null;
    for (const server of servers) {
      if (server.listening) server.close();
      server.closeIdleConnections();
    }
    // Answers under way finish (briefly: a log follow or an event stream would go on for ever).
    if (this.#active > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, STOP_GRACE_MS);
        this.#idle = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#idle = null;
    }
    for (const server of servers) server.closeAllConnections();
    if (!this.#handedOver) await unlink(this.#config.control.socket).catch(() => {});
  }
}

/**
 * The users apps run as, other than berth's own (so only when berth is root): uid -> app names. An app
 * whose user cannot be resolved is left out; its deploy fails with that error anyway.
 */
function appUids(config: BerthConfig): Map<number, string[]> {
  const uids = new Map<number, string[]>();
  if (!isRoot()) return uids;
  for (const app of Object.values(config.apps)) {
    try {
      const user = resolveAppUser(app, config.defaultUser);
      if (!user.switches || user.uid === process.getuid!()) continue;
      uids.set(user.uid, [...(uids.get(user.uid) ?? []), app.name]);
    } catch {
      // Unresolvable user: reported by berth check and by the app's deploy.
    }
  }
  return uids;
}

/**
 * The gid of `control.socket_group`: a number, else the name looked up with `getent group` (which sees
 * NSS groups too), else in /etc/group when getent is missing.
 */
async function groupId(group: string): Promise<number> {
  if (/^\d+$/.test(group)) return Number(group);
  const line = await new Promise<string | null>((resolve) => {
    execFile('getent', ['group', group], { timeout: 5_000 }, (err, stdout) => {
      if (!err) resolve(stdout.trim());
      else if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        readFile('/etc/group', 'utf8').then(
          (text) => resolve(text.split('\n').find((l) => l.split(':')[0] === group) ?? ''),
          () => resolve(''),
        );
      } else resolve('');
    });
  });
  const gid = line ? Number(line.split(':')[2]) : NaN;
  if (!Number.isInteger(gid)) throw new BerthError(ErrorCodes.listen, `control.socket_group ${JSON.stringify(group)} is not a known group`);
  return gid;
}

/**
 * The unix socket is trusted through its file permissions: its callers are admins. The CLI names the
 * person at the keyboard in `X-Berth-User` so the audit log says who; without a plain name the user is
 * `socket`. The OS account running the CLI is kept as it is (`root` included), but a name berth writes
 * for its own actions (`berth-start`, `scheduler`...) is recorded as `<name>@socket`, so no row made
 * through the socket reads as one of berth's own.
 */
function socketContext(req: IncomingMessage): RequestContext {
  const named = req.headers['x-berth-user'];
  let user = typeof named === 'string' && USER_NAME_RE.test(named) ? named : 'socket';
  if (user !== 'socket' && berthActorName(user)) user = `${user}@socket`;
  return { user, channel: 'socket', roles: ['admin'] };
}

/** Whether a request says it has a body (chunked, or a non-zero Content-Length). */
function carriesBody(req: IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
}

/** The nesting depth of a parsed JSON value passes `max`; walked without recursion. */
function deeperThan(value: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (depth > max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v as object)) {
      if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
    }
  }
  return false;
}

/**
 * Reads a JSON request body: at most MAX_BODY_BYTES (413, told by Content-Length before reading when it
 * can be), whole within BODY_TIMEOUT_MS (408), nested at most MAX_JSON_DEPTH deep (400: a deeper one
 * would overflow the stack of whatever walks it later, like JSON.stringify). An empty body is `{}`.
 */
export function readJsonBody(req: IncomingMessage, limits: { maxBytes?: number; timeoutMs?: number } = {}): Promise<unknown> {
  const maxBytes = limits.maxBytes ?? MAX_BODY_BYTES;
  const timeoutMs = limits.timeoutMs ?? BODY_TIMEOUT_MS;
  const tooLarge = () => new BerthError(ErrorCodes.tooLarge, `request body is larger than ${maxBytes} bytes`, { details: { limit: maxBytes } });
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > maxBytes) return Promise.reject(tooLarge());
  // The client left while the request waited (on a peer lookup, say): node has already destroyed the
  // request and dropped what it held, and no event will come, so say so now rather than time out.
  if (req.destroyed) return Promise.reject(new BerthError(ErrorCodes.badRequest, 'the request body was cut short'));
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (err: BerthError | null) => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      req.off('error', onClose);
      if (err === null) resolve(Buffer.concat(chunks));
      else {
        // Nothing more is read: the answer goes out and the connection is closed.
        req.pause();
        reject(err);
      }
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) finish(tooLarge());
      else chunks.push(chunk);
    };
    const onEnd = () => finish(null);
    const onClose = () => finish(new BerthError(ErrorCodes.badRequest, 'the request body was cut short'));
    const timer = setTimeout(() => finish(new BerthError(ErrorCodes.timeout, `the request body did not arrive within ${timeoutMs / 1000}s`, { details: { timeoutMs } })), timeoutMs);
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
    req.on('error', onClose);
  }).then((raw) => {
    if (raw.length === 0) return {};
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new BerthError(ErrorCodes.badRequest, `request body is not valid JSON: ${errorMessage(err)}`, { cause: err });
    }
    if (parsed !== null && typeof parsed === 'object' && deeperThan(parsed, MAX_JSON_DEPTH)) {
      throw new BerthError(ErrorCodes.badRequest, `request body is nested more than ${MAX_JSON_DEPTH} levels deep`);
    }
    return parsed;
  });
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
