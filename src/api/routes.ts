/**
 * The control API's endpoints. Each handler returns `{status, body}` (sent as JSON) or writes a stream
 * itself and returns undefined. Errors are thrown as BerthError; the server maps them to statuses.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BerthError } from '../lib/errors.ts';
import type { Gateway } from '../gateway.ts';

function optionalString(body: unknown, key: string): string | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BerthError('BERTH_E_BAD_REQUEST', 'request body must be a JSON object');
  const v = (body as Record<string, unknown>)[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string' || v.trim() === '') throw new BerthError('BERTH_E_BAD_REQUEST', `"${key}" must be a non-empty string`);
  return v;
}

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
    this.#add('POST', '/v1/apps/:app/deploys', (p, _u, body) => {
      const source = optionalString(body, 'source');
      const d = this.#gateway.deployer.begin(p.app, { kind: 'deploy', source, user: 'socket' });
      return { status: 202, body: { id: d.id, app: d.app, kind: d.kind } };
    });
    this.#add('POST', '/v1/apps/:app/rollback', (p, _u, body) => {
      const release = optionalString(body, 'release');
      const d = this.#gateway.deployer.begin(p.app, { kind: 'rollback', release, user: 'socket' });
      return { status: 202, body: { id: d.id, app: d.app, kind: d.kind } };
    });
    this.#add('POST', '/v1/apps/:app/reload', (p) => {
      const d = this.#gateway.deployer.begin(p.app, { kind: 'reload', user: 'socket' });
      return { status: 202, body: { id: d.id, app: d.app, kind: d.kind } };
    });
    this.#add('GET', '/v1/apps/:app/releases', async (p) => ({ status: 200, body: await this.#gateway.releases(p.app) }));
    this.#add('GET', '/v1/apps/:app/deploys', async (p) => {
      this.#app(p.app);
      return { status: 200, body: { deploys: await this.#gateway.deploys(p.app) } };
    });
    this.#add('GET', '/v1/deploys/:id', async (p, url, _b, req, res) => {
      const found = await this.#gateway.deployer.get(p.id);
      if (!found) throw new BerthError('BERTH_E_NOT_FOUND', `no deploy with id "${p.id}"`);
      const follow = url.searchParams.get('follow');
      if (follow !== '1' && follow !== 'true') return { status: 200, body: { ...found.deploy, events: found.events } };
      // NDJSON: every event so far, then live ones, then an `end` line with the final record.
      res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store' });
      const live = found.live;
      if (!live) {
        for (const e of found.events) res.write(JSON.stringify({ type: 'event', ...e }) + '\n');
        res.end(JSON.stringify({ type: 'end', deploy: found.deploy }) + '\n');
        return undefined;
      }
      await new Promise<void>((resolve) => {
        const unsubscribe = live.subscribe((e) => {
          if (e) res.write(JSON.stringify({ type: 'event', ...e }) + '\n');
          else {
            res.end(JSON.stringify({ type: 'end', deploy: live.record() }) + '\n');
            resolve();
          }
        });
        // The deploy goes on when the client leaves: it belongs to the gateway.
        req.socket.once('close', () => {
          unsubscribe();
          resolve();
        });
      });
      return undefined;
    });
    this.#add('GET', '/v1/history', async (_p, url) => {
      const app = url.searchParams.get('app');
      if (app) this.#app(app);
      const limit = url.searchParams.get('limit');
      const n = limit === null ? 50 : Number(limit);
      if (!Number.isInteger(n) || n < 1 || n > 1000) throw new BerthError('BERTH_E_BAD_REQUEST', `"limit" must be an integer from 1 to 1000, got "${limit}"`);
      return { status: 200, body: { history: await this.#gateway.history({ app: app ?? undefined, limit: n }) } };
    });
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
