/**
 * The control API: JSON over HTTP on the control unix socket (TCP with auth comes with `control.listen`).
 * The socket is trusted through its file permissions: it is created 0600 (umask during bind, so there
 * is no window in which it is wider).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createConnection } from 'node:net';
import { lstat, mkdir, unlink, chmod } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { BerthConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, errorMessage, httpStatusFor } from '../lib/errors.ts';
import type { Gateway } from '../gateway.ts';
import { ApiRoutes, type RequestContext } from './routes.ts';

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

  constructor(opts: ApiServerOptions) {
    this.#config = opts.config;
    this.#log = opts.logger;
    this.#routes = new ApiRoutes(opts.gateway);
  }

  /** Binds the control socket. Refuses a path that is a live socket of another gateway or not a socket. */
  async start(): Promise<void> {
    const path = this.#config.control.socket;
    await mkdir(dirname(path), { recursive: true });
    const existing = await lstat(path).catch(() => null);
    if (existing) {
      if (existing.isSymbolicLink()) throw new BerthError('BERTH_E_LISTEN', `control socket ${path} is a symlink; refusing to use it`);
      if (!existing.isSocket()) throw new BerthError('BERTH_E_LISTEN', `control socket path ${path} exists and is not a socket`);
      if (await socketIsLive(path)) throw new BerthError('BERTH_E_LISTEN', `another gateway is already running on control socket ${path}`);
      await unlink(path);
    }
    const server = createServer({ requestTimeout: 0, headersTimeout: 30_000, keepAliveTimeout: 5_000 }, (req, res) => {
      void this.#handle(req, res);
    });
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      throw new BerthError('BERTH_E_LISTEN', `cannot listen on control socket ${path}: ${errorMessage(err)}`, { cause: err });
    } finally {
      process.umask(oldMask);
    }
    await chmod(path, 0o600);
    this.#server = server;
    this.#log.info({ socket: path }, 'control api listening');
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    try {
      const url = new URL(req.url ?? '/', 'http://berth');
      const body = req.method === 'GET' || req.method === 'HEAD' ? undefined : await readJsonBody(req);
      const result = await this.#routes.handle(req.method ?? 'GET', url, body, req, res, socketContext(req));
      if (result !== undefined && !res.headersSent) sendJson(res, result.status, result.body);
    } catch (err) {
      const status = httpStatusFor(err);
      const code = err instanceof BerthError ? err.code : 'BERTH_E_INTERNAL';
      if (status >= 500) this.#log.error({ err: errorMessage(err), url: req.url }, 'api request failed');
      if (!res.headersSent) {
        const details = err instanceof BerthError ? err.details : undefined;
        sendJson(res, status, { error: { code, message: errorMessage(err), ...(details ? { details } : {}) } });
      } else res.destroy();
    } finally {
      this.#log.debug({ method: req.method, url: req.url, status: res.statusCode, durationMs: Math.round(performance.now() - started) }, 'api request');
    }
  }

  /** Stops accepting, lets in-flight API requests finish briefly, removes the socket file. */
  async stop(): Promise<void> {
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
