/**
 * The control API's endpoints. Each handler returns `{status, body}` (sent as JSON) or writes a stream
 * itself and returns undefined. Errors are thrown as BerthError; the server maps them to statuses.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BerthError } from '../lib/errors.ts';
import type { Gateway } from '../gateway.ts';

export interface ApiResult {
  status: number;
  body: unknown;
}

type Handler = (params: Record<string, string>, url: URL, body: unknown, req: IncomingMessage, res: ServerResponse) => Promise<ApiResult | undefined> | ApiResult | undefined;

interface Route {
  method: string;
  pattern: RegExp;
  keys: string[];
  handler: Handler;
}

export class ApiRoutes {
  #gateway: Gateway;
  #routes: Route[] = [];

  constructor(gateway: Gateway) {
    this.#gateway = gateway;
    this.#add('GET', '/v1/status', () => ({ status: 200, body: this.#gateway.status() }));
    this.#add('GET', '/v1/apps', () => ({ status: 200, body: { apps: this.#gateway.status().apps } }));
    this.#add('GET', '/v1/apps/:app', (p) => ({ status: 200, body: this.#app(p.app) }));
    this.#add('GET', '/v1/routes', () => ({ status: 200, body: { routes: this.#gateway.routes() } }));
    this.#add('POST', '/v1/stop', (_p, _u, _b, _req, res) => {
      // Answer first, then stop: the CLI gets its reply before the socket goes away.
      res.once('finish', () => void this.#gateway.stop());
      return { status: 202, body: { stopping: true, pid: process.pid } };
    });
  }

  #app(name: string) {
    const app = this.#gateway.appStatus(name);
    if (!app) throw new BerthError('BERTH_E_NOT_FOUND', `no app named "${name}"`);
    return app;
  }

  #add(method: string, path: string, handler: Handler): void {
    const keys: string[] = [];
    const source = path.replace(/:([a-z]+)/g, (_m, key: string) => {
      keys.push(key);
      return '([^/]+)';
    });
    this.#routes.push({ method, pattern: new RegExp(`^${source}/?$`), keys, handler });
  }

  async handle(method: string, url: URL, body: unknown, req: IncomingMessage, res: ServerResponse): Promise<ApiResult | undefined> {
    let pathMatched = false;
    for (const route of this.#routes) {
      const m = route.pattern.exec(url.pathname);
      if (!m) continue;
      pathMatched = true;
      if (route.method !== method) continue;
      const params: Record<string, string> = {};
      route.keys.forEach((k, i) => (params[k] = decodeURIComponent(m[i + 1])));
      return route.handler(params, url, body, req, res);
    }
    if (pathMatched) throw new BerthError('BERTH_E_BAD_REQUEST', `method ${method} is not allowed on ${url.pathname}`);
    throw new BerthError('BERTH_E_NOT_FOUND', `no such endpoint: ${method} ${url.pathname}`);
  }
}
