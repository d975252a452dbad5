/**
 * The control API: JSON over HTTP on the control unix socket, and on `control.listen` (TCP) with auth.
 * The socket is trusted through its file permissions: it is created 0600 (umask during bind, so there
 * is no window in which it is wider), or 0660 owned by `control.socket_group`. Its directory must not be
 * world-writable. TCP callers authenticate (src/api/auth.ts). Both serve the dashboard (src/api/ui).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createConnection, type AddressInfo } from 'node:net';
import { lstat, mkdir, unlink, chmod, chown, readFile, stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { dirname } from 'node:path';
import type { BerthConfig, ListenAddress } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, errorMessage, httpStatusFor } from '../lib/errors.ts';
import type { Gateway } from '../gateway.ts';
import { ApiRoutes, type RequestContext } from './routes.ts';
import { Auth } from './auth.ts';
import { UiAssets } from './ui/ui-assets.ts';

const MAX_BODY_BYTES = 1024 * 1024;

export interface ApiServerOptions {
  gateway: Gateway;
  config: BerthConfig;
  logger: Logger;
}

/** Says whether something is accepting connections on a unix socket path. */
function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection(path);
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

export class ApiServer {
  #config: BerthConfig;
  #log: Logger;
  #routes: ApiRoutes;
  #server: Server | null = null;
  #auth: Auth;
  #tcp: Server | null = null;
  #ui = new UiAssets();

  constructor(opts: ApiServerOptions) {
    this.#config = opts.config;
    this.#log = opts.logger;
    this.#routes = new ApiRoutes(opts.gateway);
    this.#auth = new Auth(opts.config.control, opts.config.environment);
  }

  /** Config reload: new tokens, call-context header and permissions apply to the next request. */
  setConfig(config: BerthConfig): void {
    this.#config = config;
    this.#auth = new Auth(config.control, config.environment);
  }

  /** The bound TCP control address (port 0 resolved), or null when `control.listen` is not set. */
  tcpAddress(): { host: string; port: number; text: string } | null {
    const a = this.#tcp?.address() as AddressInfo | null | undefined;
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
    if (((await stat(dir)).mode & 0o002) !== 0) throw new BerthError('BERTH_E_LISTEN', `the control socket's directory ${dir} is world-writable; refusing to use it (chmod o-w ${dir}, or set control.socket elsewhere)`);
    const existing = await lstat(path).catch(() => null);
    if (existing) {
      if (existing.isSymbolicLink()) throw new BerthError('BERTH_E_LISTEN', `control socket ${path} is a symlink; refusing to use it`);
      if (!existing.isSocket()) throw new BerthError('BERTH_E_LISTEN', `control socket path ${path} exists and is not a socket`);
      if (existing.uid !== process.getuid!()) throw new BerthError('BERTH_E_LISTEN', `control socket ${path} is owned by another user (uid ${existing.uid}); refusing to use it`);
      if (await socketIsLive(path)) throw new BerthError('BERTH_E_LISTEN', `another gateway is already running on control socket ${path}`);
      await unlink(path);
    }
    const server = createServer({ requestTimeout: 0, headersTimeout: 30_000, keepAliveTimeout: 5_000 }, (req, res) => {
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
      throw new BerthError('BERTH_E_LISTEN', `cannot listen on control socket ${path}: ${errorMessage(err)}`, { cause: err });
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
        throw new BerthError('BERTH_E_LISTEN', `cannot give control socket ${path} to group ${group}: ${errorMessage(err)}`, { cause: err });
      }
      await chmod(path, 0o660);
    } else await chmod(path, 0o600);
    this.#log.info({ socket: path, group }, 'control api listening');
    const listen = this.#config.control.listen;
    if (listen?.kind === 'tcp') this.#tcp = await this.#listenTcp(listen);
  }

  /** The TCP control listener: the same API, every caller authenticated. */
  async #listenTcp(address: ListenAddress & { kind: 'tcp' }): Promise<Server> {
    const server = createServer({ requestTimeout: 0, headersTimeout: 30_000, keepAliveTimeout: 5_000 }, (req, res) => {
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
      throw new BerthError('BERTH_E_LISTEN', `cannot listen on control.listen ${address.text}: ${errorMessage(err)}`, { cause: err });
    }
    this.#tcp = server;
    this.#log.info({ listen: this.tcpAddress()?.text }, 'control api listening on tcp');
    return server;
  }

  async #handle(req: IncomingMessage, res: ServerResponse, tcp: boolean): Promise<void> {
    const started = performance.now();
    try {
      const url = new URL(req.url ?? '/', 'http://berth');
      // The dashboard's page and assets are public: they hold no data, and its API calls authenticate.
      if (this.#ui.serve(req, res, url.pathname, !tcp ? 'none' : this.#auth.callContextHeader ? 'token-or-proxy' : 'token')) return;
      const ctx = tcp ? this.#authenticate(req) : socketContext(req);
      const body = req.method === 'GET' || req.method === 'HEAD' ? undefined : await readJsonBody(req);
      const result = await this.#routes.handle(req.method ?? 'GET', url, body, req, res, ctx);
      if (result !== undefined && !res.headersSent) sendJson(res, result.status, result.body);
    } catch (err) {
      const status = httpStatusFor(err);
      const code = err instanceof BerthError ? err.code : 'BERTH_E_INTERNAL';
      if (status >= 500) this.#log.error({ err: errorMessage(err), url: req.url }, 'api request failed');
      if (!res.headersSent) {
        const details = err instanceof BerthError ? err.details : undefined;
        if (status === 401) res.setHeader('www-authenticate', 'Bearer realm="berth"');
        sendJson(res, status, { error: { code, message: errorMessage(err), ...(details ? { details } : {}) } });
      } else res.destroy();
    } finally {
      this.#log.debug({ method: req.method, url: req.url, status: res.statusCode, durationMs: Math.round(performance.now() - started) }, 'api request');
    }
  }

  #authenticate(req: IncomingMessage): RequestContext {
    try {
      return this.#auth.authenticate(req.headers);
    } catch (err) {
      this.#log.warn({ remote: req.socket.remoteAddress, method: req.method, url: req.url, reason: errorMessage(err) }, 'api auth refused');
      throw err;
    }
  }

  /** Stops accepting, lets in-flight API requests finish briefly, removes the socket file. */
  async stop(): Promise<void> {
    const tcp = this.#tcp;
    this.#tcp = null;
    if (tcp) {
      await new Promise<void>((resolve) => {
        tcp.close(() => resolve());
        tcp.closeIdleConnections();
        setTimeout(() => tcp.closeAllConnections(), 1000).unref();
      });
    }
    const server = this.#server;
    if (!server) return;
    this.#server = null;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
      setTimeout(() => server.closeAllConnections(), 1000).unref();
    });
    await unlink(this.#config.control.socket).catch(() => {});
  }
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
  if (!Number.isInteger(gid)) throw new BerthError('BERTH_E_LISTEN', `control.socket_group ${JSON.stringify(group)} is not a known group`);
  return gid;
}

/**
 * The unix socket is trusted through its file permissions: its callers are admins. The CLI names the
 * person at the keyboard in `X-Berth-User` so the audit log says who; without it the user is `socket`.
 */
function socketContext(req: IncomingMessage): RequestContext {
  const named = req.headers['x-berth-user'];
  const user = typeof named === 'string' && /^[A-Za-z0-9._@-]{1,64}$/.test(named) ? named : 'socket';
  return { user, channel: 'socket', roles: ['admin'] };
}

/** Reads a JSON request body (at most 1 MiB). An empty body is `{}`. */
async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new BerthError('BERTH_E_BAD_REQUEST', `request body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new BerthError('BERTH_E_BAD_REQUEST', `request body is not valid JSON: ${errorMessage(err)}`, { cause: err });
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
