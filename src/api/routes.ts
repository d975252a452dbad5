/**
 * The control API's endpoints. Each handler returns `{status, body}` (sent as JSON) or writes a stream
 * itself and returns undefined. Errors are thrown as BerthError; the server maps them to statuses.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BerthError, errorMessage, ErrorCodes } from '../lib/errors.ts';
import type { Role } from '../config/schema.ts';
import type { Control } from './control.ts';
import type { ApiResult, Handler, RequestContext, RouteOptions, RouteTable } from './request.ts';
import { registerMetricsRoutes } from './metrics-routes.ts';
import { authorize, assertPermitted, permits, requiredRole } from './auth.ts';
import { registerControlRoutes } from './control-routes.ts';
import { registerTaskRoutes } from './task-routes.ts';
import { registerLogRoutes } from './log-routes.ts';
import { registerModeRoutes } from './mode-routes.ts';
import { registerScaleRoutes } from './scale-routes.ts';
import { appHealth, readiness } from '../proxy/health-lane.ts';
import { redactText } from '../lib/redact.ts';
import { audited, deployEnd } from './audit.ts';

export type { ApiResult, Handler, RequestContext, RouteOptions } from './request.ts';

function optionalString(body: unknown, key: string): string | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BerthError(ErrorCodes.badRequest, 'request body must be a JSON object');
  const v = (body as Record<string, unknown>)[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string' || v.trim() === '') throw new BerthError(ErrorCodes.badRequest, `"${key}" must be a non-empty string`);
  return v;
}

/** A number of seconds in the body (absent or null: none), from 0 to a day. */
function optionalSeconds(body: unknown, key: string): number | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BerthError(ErrorCodes.badRequest, 'request body must be a JSON object');
  const v = (body as Record<string, unknown>)[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 86_400) throw new BerthError(ErrorCodes.badRequest, `"${key}" must be a number of seconds from 0 to 86400`);
  return v;
}

/** Most paths one `berth flush` may name. */
const MAX_FLUSH_PATHS = 10_000;

/** `paths` of a flush request: absent or null for every path, else a list of `/...` paths. */
function optionalPaths(body: unknown): string[] | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BerthError(ErrorCodes.badRequest, 'request body must be a JSON object');
  const v = (body as Record<string, unknown>).paths;
  if (v === undefined || v === null) return null;
  if (!Array.isArray(v) || v.length === 0 || v.length > MAX_FLUSH_PATHS) throw new BerthError(ErrorCodes.badRequest, `"paths" must be a list of 1 to ${MAX_FLUSH_PATHS} paths`);
  for (const p of v) {
    // No `.` or `..` segment: a CDN resolves them, which would purge past the rules' includes and excludes.
    if (typeof p !== 'string' || !p.startsWith('/') || p.length > 2048 || /[\s\0]/.test(p) || /(^|\/)\.{1,2}(\/|$)/.test(p)) throw new BerthError(ErrorCodes.badRequest, `each path must start with "/" and hold no spaces and no "." or ".." segment, got ${JSON.stringify(p).slice(0, 100)}`);
  }
  return [...new Set(v as string[])];
}

interface Route {
  method: string;
  path: string;
  pattern: RegExp;
  keys: string[];
  handler: Handler;
  action: string | null;
  role: Role;
  auditTarget: RouteOptions['auditTarget'] | null;
}

/** Longest request body kept in an audit row's target: the row says what was asked, not archives it. */
export const MAX_AUDIT_TARGET_CHARS = 1000;

/** The user an audit row names for a caller that could not be identified (a 401). */
export const UNAUTHENTICATED_USER = 'unauthenticated';

/**
 * The request body as an audit row's target. Redacted before it is cut: a cut through a URL's userinfo
 * (`https://user:tok` with its `@host` cut off) no longer reads as a URL with credentials, and would keep
 * the start of the secret. The audit log redacts again, which changes nothing here.
 */
function auditTarget(body: unknown): string | null {
  if (typeof body !== 'object' || body === null) return null;
  const text = redactText(JSON.stringify(body));
  if (text === '{}') return null;
  return text.length > MAX_AUDIT_TARGET_CHARS ? `${text.slice(0, MAX_AUDIT_TARGET_CHARS)}... (${text.length} characters)` : text;
}

/**
 * How the server identifies a caller and reads its body. The routes call these in order, so that every
 * refusal of a change (401 from `identify`, 400/408/413 from `body`, 403, then the handler's own) is
 * audited in one place.
 */
export interface RequestAccess {
  /** The caller, or throws 401. */
  identify(): RequestContext;
  /** The parsed JSON body of a change (never called for GET or HEAD), or throws 400, 408 or 413. */
  body(): Promise<unknown>;
  /** Where the request came from, for the audit row of a refused one. */
  remote: string;
}

export class ApiRoutes implements RouteTable {
  #gateway: Control;
  #routes: Route[] = [];

  constructor(gateway: Control) {
    this.#gateway = gateway;
    // Lists show a caller limited by control.permissions only the apps it may touch.
    this.add('GET', '/v1/status', (_p, _u, _b, _req, _res, ctx) => {
      const status = this.#gateway.status();
      return { status: 200, body: ctx.apps ? { ...status, apps: status.apps.filter((a) => permits(ctx, a.name)) } : status };
    });
    // The fleet's nodes; a caller limited to some apps sees only those apps of each node.
    this.add('GET', '/v1/fleet', async (_p, _u, _b, _req, _res, ctx) => {
      const fleet = await this.#gateway.fleet();
      if (!ctx.apps) return { status: 200, body: fleet };
      const nodes = fleet.nodes.map((n) => ({ ...n, apps: n.apps.filter((a) => permits(ctx, a.app)) }));
      return { status: 200, body: { ...fleet, desired: fleet.desired.filter((d) => permits(ctx, d.app)), nodes } };
    });
    this.add('GET', '/v1/apps', (_p, _u, _b, _req, _res, ctx) => ({ status: 200, body: { apps: this.#gateway.status().apps.filter((a) => permits(ctx, a.name)) } }));
    this.add('GET', '/v1/apps/:app', (p) => ({ status: 200, body: this.#app(p.app) }));
    // The details the front door's /_berth/ready and /_berth/apps/<app>/health give only with
    // public_details: true. Answered 200 with the status inside: the call worked, the app may not.
    this.add('GET', '/v1/ready', (_p, _u, _b, _req, _res, ctx) => {
      const proxy = this.#gateway.proxy;
      return { status: 200, body: readiness(proxy, ctx.apps ? (a) => permits(ctx, a) : undefined, this.#bootError) };
    });
    this.add('GET', '/v1/apps/:app/health', (p) => {
      const proxy = this.#gateway.proxy;
      const entry = proxy.table.app(p.app);
      if (!entry) throw new BerthError(ErrorCodes.notFound, `no app named "${p.app}"`);
      const health = appHealth(entry, proxy.queueDepth(entry.name), entry.noGeneration === 'start-failed' ? this.#bootError(entry.name) : null);
      return { status: 200, body: { status: health.healthy ? 'ok' : 'unavailable', ...health } };
    });
    this.add('GET', '/v1/routes', (_p, _u, _b, _req, _res, ctx) => ({ status: 200, body: { routes: this.#gateway.routes().filter((r) => permits(ctx, r.app)) } }));
    // Names and dates, never keys. A token limited to some apps sees only the certificates those apps configure.
    this.add('GET', '/v1/certificates', (_p, _u, _b, _req, _res, ctx) => {
      const rows = this.#gateway.certificates();
      return { status: 200, body: { certificates: ctx.apps ? rows.filter((r) => /^apps\.[^.]+\./.test(r.source + '.') && permits(ctx, r.source.split('.')[1])) : rows } };
    });
    this.add('POST', '/v1/apps/:app/deploys', async (p, _u, body, _req, _res, ctx) => {
      const source = optionalString(body, 'source');
      return this.#deployResult(await this.#gateway.deployer.start(p.app, { kind: 'deploy', source, user: ctx.user }));
    }, { action: 'deploy' });
    this.add('POST', '/v1/apps/:app/rollback', async (p, _u, body, _req, _res, ctx) => {
      const release = optionalString(body, 'release');
      return this.#deployResult(await this.#gateway.deployer.start(p.app, { kind: 'rollback', release, user: ctx.user }));
    }, { action: 'rollback' });
    this.add('POST', '/v1/apps/:app/reload', async (p, _u, _b, _req, _res, ctx) => {
      return this.#deployResult(await this.#gateway.deployer.start(p.app, { kind: 'reload', user: ctx.user }));
    }, { action: 'reload' });
    this.add('POST', '/v1/apps/:app/flush', async (p, _u, body, _req, _res, ctx) => {
      const paths = optionalPaths(body);
      const queued = await this.#gateway.flushApp(p.app, paths, ctx.user);
      return { status: 202, body: queued, audit: { target: queued.id } };
    }, { action: 'flush' });
    this.add('GET', '/v1/apps/:app/releases', async (p) => ({ status: 200, body: await this.#gateway.releases(p.app) }));
    this.add('GET', '/v1/apps/:app/deploys', async (p) => {
      this.#app(p.app);
      return { status: 200, body: { deploys: await this.#gateway.deploys(p.app) } };
    });
    this.add('GET', '/v1/deploys/:id', async (p, url, _b, req, res, ctx) => {
      const found = await this.#gateway.deployer.get(p.id);
      if (!found) throw new BerthError(ErrorCodes.notFound, `no deploy with id "${p.id}"`);
      assertPermitted(ctx, found.deploy.app, 'read');
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
    this.add('GET', '/v1/history', async (_p, url, _b, _req, _res, ctx) => {
      const app = url.searchParams.get('app') || undefined;
      const user = url.searchParams.get('user') || undefined;
      const action = url.searchParams.get('action') || undefined;
      const since = url.searchParams.get('since') || undefined;
      if (since !== undefined && Number.isNaN(Date.parse(since))) throw new BerthError(ErrorCodes.badRequest, `"since" must be an ISO 8601 time, got "${since}"`);
      const limit = url.searchParams.get('limit');
      const n = limit === null ? 50 : Number(limit);
      if (!Number.isInteger(n) || n < 1 || n > 1000) throw new BerthError(ErrorCodes.badRequest, `"limit" must be an integer from 1 to 1000, got "${limit}"`);
      // A caller limited to some apps reads a wider page and keeps its apps' rows (and gateway-wide ones).
      const wide = ctx.apps && app === undefined ? 1000 : n;
      const rows = await this.#gateway.history({ app, user, action, since: since === undefined ? undefined : new Date(since).toISOString(), limit: wide });
      const history = wide === n ? rows : rows.filter((h) => h.app === null || permits(ctx, h.app)).slice(0, n);
      return { status: 200, body: { history } };
    });
    this.add('POST', '/v1/stop', (_p, _u, _b, _req, res) => {
      // Answer first, then stop: the CLI gets its reply before the socket goes away.
      // 'close' fires whether or not the reply reached the client, so a stop is never lost.
      res.once('close', () => void this.#gateway.stop());
      return { status: 202, body: { stopping: true, pid: process.pid } };
    }, { action: 'stop' });
    // Answered once the new gateway serves (by this one, which then drains and exits), or with the error
    // that left this one serving on (502 BERTH_E_UPGRADE; 409 or 408 when it would not start one).
    this.add('POST', '/v1/upgrade', async (_p, _u, body, _req, res) => {
      const wait = optionalSeconds(body, 'wait_seconds');
      const result = await this.#gateway.upgrade({ waitMs: wait === null ? undefined : wait * 1000 });
      // The client's next request must reach the new gateway, on a new connection.
      res.setHeader('connection', 'close');
      return { status: 200, body: result, audit: { target: `pid ${result.from.pid} (${result.from.version}) -> pid ${result.to.pid} (${result.to.version})` } };
    }, { action: 'upgrade', role: 'admin' });
    registerMetricsRoutes(this, gateway);
    registerControlRoutes(this, gateway);
    registerTaskRoutes(this, gateway);
    registerLogRoutes(this, gateway);
    registerModeRoutes(this, gateway);
    registerScaleRoutes(this, gateway);
  }

  /** A started deploy answers 202 at once; its audit row is finished when the deploy ends. */
  #deployResult(d: Parameters<typeof deployEnd>[0] & { app: string; kind: string; done: Promise<void> }): ApiResult {
    return { status: 202, body: { id: d.id, app: d.app, kind: d.kind }, audit: { target: d.id, settle: d.done.then(() => deployEnd(d)) } };
  }

  /** Why an app failed to boot: the control API gives it where the front door says only that it failed. */
  #bootError = (app: string): string | null => this.#gateway.appStatus(app)?.error ?? null;

  #app(name: string) {
    const app = this.#gateway.appStatus(name);
    if (!app) throw new BerthError(ErrorCodes.notFound, `no app named "${name}"`);
    return app;
  }

  /** Registers an endpoint; `:name` segments become params. Domain files call this (see register* below). */
  add(method: string, path: string, handler: Handler, opts: RouteOptions = {}): void {
    const keys: string[] = [];
    const source = path.replace(/:([a-z]+)/g, (_m, key: string) => {
      keys.push(key);
      return '([^/]+)';
    });
    const action = opts.action ?? null;
    // A change nobody would see in the audit log is a bug: every mutating endpoint names its action.
    if (action === null && method !== 'GET' && method !== 'HEAD') throw new Error(`${method} ${path} changes something and must name an audit action`);
    this.#routes.push({ method, path, pattern: new RegExp(`^${source}/?$`), keys, handler, action, role: requiredRole(method, action, opts.role), auditTarget: opts.auditTarget ?? null });
  }

  /** The endpoints that change something, with their audit action (every one has one: see `add`). */
  changes(): { method: string; path: string; action: string }[] {
    return this.#routes.filter((r) => r.action !== null).map((r) => ({ method: r.method, path: r.path, action: r.action! }));
  }

  /** Runs a change with its audit row: pending before it acts, then its outcome (a deploy's when it ends). */
  #audited(route: Route, params: Record<string, string>, url: URL, body: unknown, req: IncomingMessage, res: ServerResponse, ctx: RequestContext): Promise<ApiResult | undefined> {
    const start = { user: ctx.user, channel: ctx.channel, action: route.action!, app: params.app ?? null, target: route.auditTarget?.(body) ?? auditTarget(body) };
    const run = () => {
      // While an upgrade hands the gateway over, no change starts (a stop may: it ends the upgrade too).
      const held = route.action === 'upgrade' || route.action === 'stop' ? null : this.#gateway.held();
      if (held !== null) throw new BerthError(ErrorCodes.conflict, held);
      return route.handler(params, url, body, req, res, ctx);
    };
    return audited(this.#gateway.audit, start, run, (result) => result?.audit?.settle ?? { outcome: 'ok', detail: result?.audit?.target ?? null });
  }

  /** Role and app permission, in one place for every endpoint. The app is the `:app` param, else the `?app=` filter of a read. */
  #authorize(route: Route, params: Record<string, string>, url: URL, ctx: RequestContext): void {
    const app = params.app ?? (route.action === null ? url.searchParams.get('app') : null) ?? null;
    authorize(ctx, route.role, app, route.action ?? (route.role === 'viewer' ? 'read' : `${route.method} ${url.pathname}`));
  }

  /**
   * The route for a request, with its params. When there is none, `refused` says which change the
   * request would have been, so that its refusal is audited like any other: a bad percent-encoding on a
   * change's path is that change, and so is another method than its own on that path (`POST .../mode`).
   * Throws nothing: a 400 for a path of another method or a bad encoding is in `error`.
   */
  #find(method: string, url: URL): { route: Route; params: Record<string, string> } | { error: BerthError | null; refused: { action: string; app: string | null } | null } {
    let other: BerthError | null = null;
    let refused: { action: string; app: string | null } | null = null;
    const change = method !== 'GET' && method !== 'HEAD';
    for (const route of this.#routes) {
      const m = route.pattern.exec(url.pathname);
      if (!m) continue;
      const raw: Record<string, string> = {};
      route.keys.forEach((k, i) => (raw[k] = m[i + 1]));
      if (route.method !== method) {
        other ??= new BerthError(ErrorCodes.badRequest, `method ${method} is not allowed on ${url.pathname}`);
        if (change && route.action !== null) refused ??= { action: route.action, app: decodedOr(raw.app) };
        continue;
      }
      const params: Record<string, string> = {};
      try {
        for (const [k, v] of Object.entries(raw)) params[k] = decodeURIComponent(v);
      } catch {
        return { error: new BerthError(ErrorCodes.badRequest, `bad percent-encoding in ${url.pathname}`), refused: route.action !== null ? { action: route.action, app: raw.app ?? null } : null };
      }
      return { route, params };
    }
    return { error: other, refused };
  }

  /**
   * Runs one request: identify the caller, read the body of a change, authorise, act. A change refused
   * at any of these steps (401, 400, 408, 413, 403) is audited as `refused` before the error goes out;
   * one refused by its handler (404, 409, 422...) is finished as `refused` by the audit row it began.
   */
  async handle(method: string, url: URL, req: IncomingMessage, res: ServerResponse, access: RequestAccess): Promise<ApiResult | undefined> {
    // Every unidentified caller gets 401, whatever the path; the route is looked up first only so that
    // a refused change can be audited under its action.
    const lookup = this.#find(method, url);
    const found = 'route' in lookup ? lookup : null;
    const missed = 'route' in lookup ? null : lookup;
    const refused = found ? (found.route.action !== null ? { action: found.route.action, app: found.params.app ?? null } : null) : missed!.refused;
    let ctx: RequestContext | null = null;
    let body: unknown;
    try {
      ctx = access.identify();
      if (!found) throw missed!.error ?? new BerthError(ErrorCodes.notFound, `no such endpoint: ${method} ${url.pathname}`);
      if (method !== 'GET' && method !== 'HEAD') body = await access.body();
      this.#authorize(found.route, found.params, url, ctx);
    } catch (err) {
      if (refused) {
        const who = ctx ?? { user: UNAUTHENTICATED_USER, channel: 'tcp' as const };
        const detail = ctx ? errorMessage(err) : `${errorMessage(err)} (from ${access.remote})`;
        await this.#gateway.audit.record({ user: who.user, channel: who.channel, action: refused.action, app: refused.app, target: auditTarget(body), outcome: 'refused', detail });
      }
      throw err;
    }
    const { route, params } = found;
    if (!route.action) return route.handler(params, url, body, req, res, ctx);
    return this.#audited(route, params, url, body, req, res, ctx);
  }
}

/** A path segment decoded, or as it came when its percent-encoding is bad; undefined is null. */
function decodedOr(raw: string | undefined): string | null {
  if (raw === undefined) return null;
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}
