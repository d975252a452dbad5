/**
 * `berth dashboard`: opens the web dashboard of a gateway reached through its control socket, by
 * serving a local HTTP proxy to the socket on 127.0.0.1 and printing its URL. With `--url` the gateway
 * serves the dashboard itself on `control.listen`, so the URL is only printed.
 *
 * The socket is admin, so the local port must not become a way in for other web pages the browser
 * visits: requests must name this proxy in their Host header (no DNS rebinding), and changes must come
 * from this origin (no cross-site form posts).
 */
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { errorMessage } from '../lib/errors.ts';
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

/** What the browser may not set: the proxy says who is at the keyboard, and the socket needs no token. */
const REQUEST_DROP = new Set(['x-berth-user', 'authorization', 'host']);
const NO_DROP = new Set<string>();

/** A local HTTP proxy from 127.0.0.1 to the control socket, for the dashboard. */
export class DashboardProxy {
  readonly socket: string;
  #server: Server | null = null;
  #port = 0;
  #user = cliUser();

  constructor(socket: string) {
    this.socket = socket;
  }

  get url(): string {
    return `http://127.0.0.1:${this.#port}/`;
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

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const host = req.headers.host ?? '';
    if (host !== `127.0.0.1:${this.#port}` && host !== `localhost:${this.#port}`) return refuse(res, 403, `this proxy answers only for 127.0.0.1:${this.#port}`);
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

function refuse(res: ServerResponse, status: number, message: string): void {
  const body = JSON.stringify({ error: { code: status === 403 ? 'BERTH_E_FORBIDDEN' : 'BERTH_E_UNAVAILABLE', message } });
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
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
  process.stdout.write(values.json ? JSON.stringify({ url: proxy.url, socket: client.socket }) + '\n' : `dashboard: ${proxy.url}  (the gateway on ${client.socket}; Ctrl-C to stop)\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await proxy.stop();
  return 0;
}
