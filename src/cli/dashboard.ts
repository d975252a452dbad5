/**
 * `berth dashboard`: opens the web dashboard of a gateway reached through its control socket, by
 * serving a local HTTP proxy to the socket on 127.0.0.1 and printing its URL. With `--url` the gateway
 * serves the dashboard itself on `control.listen`, so the URL is only printed.
 *
 * The socket is admin, so the local port must not become a way in, neither for other local users (any
 * of whom can connect to 127.0.0.1) nor for other web pages the browser visits. As Jupyter does, the
 * printed URL carries a one-time secret (`?token=...`): the first request with it gets a session cookie
 * (HttpOnly, SameSite=Strict, Path=/, named after the port since cookies do not tell ports apart) and a
 * redirect to the clean URL, and every request without that cookie is a 401. Then requests must name
 * this proxy in their Host header (no DNS rebinding), and changes must come from this origin (no
 * cross-site form posts).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { errorMessage, ErrorCodes } from '../lib/errors.ts';
import { cliUser, type ControlClient } from './client.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const DASHBOARD_USAGE = 'berth dashboard [--port N] [--socket PATH | --url URL | --config F]';

/** Headers that belong to one connection, not to the request; never passed on. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authorization', 'proxy-authenticate']);

function passHeaders(headers: IncomingHttpHeaders, drop: ReadonlySet<string>): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k) && !drop.has(k)) out[k] = v;
  return out;
}

/**
 * What the browser may not set: the proxy says who is at the keyboard, and the socket needs no token.
 * The session cookie is this proxy's own and is not passed on.
 */
const REQUEST_DROP = new Set(['x-berth-user', 'authorization', 'host', 'cookie']);
const NO_DROP = new Set<string>();
/** Random bytes in the one-time URL secret and in the session cookie (256 bits each). */
const SECRET_BYTES = 32;
/** The query parameter of the printed URL that carries the one-time secret. */
export const DASHBOARD_TOKEN_PARAM = 'token';

/** Compares two secrets in constant time (for equal lengths; a length differs only for a wrong one). */
function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The value of cookie `name` in a Cookie header, or null. */
function cookieValue(header: string | undefined, name: string): string | null {
  if (!header) return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

/** A local HTTP proxy from 127.0.0.1 to the control socket, for the dashboard, behind a one-time secret. */
export class DashboardProxy {
  readonly socket: string;
  #server: Server | null = null;
  #port = 0;
  #user = cliUser();
  /** The secret in the printed URL; null once used (it opens one browser session, then it is spent). */
  #token: string | null = randomBytes(SECRET_BYTES).toString('base64url');
  /** The session cookie's value, set by the one use of the token. */
  #session = randomBytes(SECRET_BYTES).toString('base64url');

  constructor(socket: string) {
    this.socket = socket;
  }

  /** The URL to open: with the one-time secret until it has been used. */
  get url(): string {
    const base = `http://127.0.0.1:${this.#port}/`;
    return this.#token === null ? base : `${base}?${DASHBOARD_TOKEN_PARAM}=${this.#token}`;
  }

  /** The session cookie's name: cookies are shared by every port of a host, so the port is in it. */
  get cookieName(): string {
    return `berth-dashboard-${this.#port}`;
  }

  /** Listens on 127.0.0.1:`port` (0: any free port). */
  async start(port: number): Promise<void> {
    const server = createServer((req, res) => this.#handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    this.#port = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      // Event streams never end on their own.
      server.closeAllConnections();
    });
  }

  /**
   * Whether the request carries the session, or else spends the one-time secret (on a GET only, so a
   * HEAD from a link preview does not use it up): then the browser gets its cookie and is sent to the
   * same address without the secret (out of its history and address bar).
   * Answers the request itself (redirect or 401) and returns false when it may go no further.
   */
  #admit(req: IncomingMessage, res: ServerResponse): boolean {
    const session = cookieValue(req.headers.cookie, this.cookieName);
    if (session !== null && sameSecret(session, this.#session)) return true;
    // Split by hand: `new URL('//x/y', base)` would read `x` as a host.
    const target = req.url ?? '/';
    const q = target.indexOf('?');
    const path = q < 0 ? target : target.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : target.slice(q + 1));
    const given = query.get(DASHBOARD_TOKEN_PARAM);
    if (given !== null && this.#token !== null && sameSecret(given, this.#token) && req.method === 'GET') {
      this.#token = null;
      query.delete(DASHBOARD_TOKEN_PARAM);
      const rest = query.toString();
      // A path, never `//host` (nor `/\host`, which browsers read the same): leading slashes are collapsed.
      const location = '/' + path.replace(/^[/\\]+/, '') + (rest ? `?${rest}` : '');
      res.writeHead(303, {
        location,
        'set-cookie': `${this.cookieName}=${this.#session}; HttpOnly; SameSite=Strict; Path=/`,
        'cache-control': 'no-store',
        'referrer-policy': 'no-referrer',
        'content-length': 0,
      });
      res.end();
      return false;
    }
    refuse(res, 401, given !== null ? 'this dashboard link was already used or is wrong: run `berth dashboard` again for a new one' : 'open the dashboard with the URL `berth dashboard` printed');
    return false;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const host = req.headers.host ?? '';
    if (host !== `127.0.0.1:${this.#port}` && host !== `localhost:${this.#port}`) return refuse(res, 403, `this proxy answers only for 127.0.0.1:${this.#port}`);
    if (!this.#admit(req, res)) return;
    const safe = req.method === 'GET' || req.method === 'HEAD';
    const origin = req.headers.origin;
    if (!safe && origin !== undefined && origin !== `http://${host}`) return refuse(res, 403, 'changes are accepted only from the dashboard itself');
    const upstream = request(
      { socketPath: this.socket, method: req.method, path: req.url, headers: { ...passHeaders(req.headers, REQUEST_DROP), 'x-berth-user': this.#user } },
      (up) => {
        res.writeHead(up.statusCode ?? 502, passHeaders(up.headers, NO_DROP));
        // Server-sent events must reach the browser as they come.
        res.flushHeaders();
        up.pipe(res);
      },
    );
    upstream.on('error', (err) => {
      if (!res.headersSent) refuse(res, 502, `cannot reach the gateway on ${this.socket}: ${errorMessage(err)}`);
      else res.destroy();
    });
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  }
}

const REFUSAL_CODES: Record<number, string> = { 401: ErrorCodes.unauthorized, 403: ErrorCodes.forbidden };

function refuse(res: ServerResponse, status: number, message: string): void {
  const body = JSON.stringify({ error: { code: REFUSAL_CODES[status] ?? ErrorCodes.unavailable, message } });
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

export async function dashboard(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { ...CLIENT_OPTIONS, port: { type: 'string', default: '0' } }, true);
  if (positionals.length > 0) throw new UsageError('expected no arguments');
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new UsageError(`--port expects a port from 0 to 65535, got "${values.port}"`);
  const client: ControlClient = await clientFor(values);
  if (client.url) {
    // The remote gateway serves its dashboard itself; it asks for a token in the page.
    process.stdout.write(`${client.where}/\n`);
    return 0;
  }
  const proxy = new DashboardProxy(client.socket);
  await proxy.start(port);
  // The URL holds a secret that makes its first user an admin: it goes to this terminal only.
  process.stdout.write(
    values.json
      ? JSON.stringify({ url: proxy.url, socket: client.socket }) + '\n'
      : `dashboard: ${proxy.url}\n  (the gateway on ${client.socket}; the link works once, in one browser; Ctrl-C to stop)\n`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await proxy.stop();
  return 0;
}
