/**
 * The gateway endpoints on the front door, under `internal_prefix`. They are answered before routing,
 * rate limits, modes and queues, from in-memory state only (the routing table and the instances' fields),
 * so a saturated app can never delay a health check. Nothing here is ever forwarded to an app.
 *
 * The front door is public, so by default `/ready` and `/apps/<app>/health` say only `{"status":...}`
 * with 200 or 503: app names, releases, instance states and reasons are on the control API
 * (`GET /v1/ready`, `GET /v1/apps/:app/health`), or here too when `public_details: true`. Without
 * public details an unknown app answers exactly as an unhealthy one (503 `{"status":"unavailable"}`),
 * so the endpoint cannot be used to find which app names exist; with them it is a 404.
 *
 * Whether an app is healthy is the one rule of supervisor/app-health.ts, which `berth status` uses too.
 * The front door says an app "failed to boot" without the error: that text (paths, a deploy's output)
 * is for the control API and status.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Mode } from '../config/schema.ts';
import type { MetricsExporter } from '../metrics/metrics.ts';
import type { InstanceState } from '../supervisor/types.ts';
import { everyInstance, judgeApp, type AppHealthInput } from '../supervisor/app-health.ts';
import type { AppEntry, RoutingTable } from './router.ts';

/** What the lane reads: the current table and the admission queues. Implemented by `Proxy`. */
export interface HealthSource {
  readonly table: RoutingTable;
  queueDepth(app: string): number;
  /** False while the proxy is stopping: `/health` then says so, letting load balancers move away first. */
  readonly accepting: boolean;
  /** Served at `/metrics` when set (`metrics_public: true`); absent or null: that path is a 404. */
  readonly publicMetrics?: MetricsExporter | null;
  /** `public_details: true`: `/ready` and `/apps/<app>/health` give reasons and app details. Absent: false. */
  readonly publicDetails?: boolean;
}

/** What `/ready` returns with details (front door with `public_details: true`, and the control API). */
export interface Readiness {
  status: 'ready' | 'unavailable';
  reasons: string[];
  apps: Record<string, AppHealth>;
}

/** One app's health, as `/ready` and `/apps/<app>/health` report it. */
export interface AppHealth {
  healthy: boolean;
  reasons: string[];
  generation: string | null;
  release: string | null;
  mode: Mode;
  queue: number;
  instances: { process: string; index: number; state: InstanceState; inFlight: number }[];
}

const HEALTH_OK = Buffer.from('{"status":"ok"}');
const HEALTH_STOPPING = Buffer.from('{"status":"stopping"}');
const READY = Buffer.from('{"status":"ready"}');
const APP_OK = Buffer.from('{"status":"ok"}');
const UNAVAILABLE = Buffer.from('{"status":"unavailable"}');
const NOT_FOUND = Buffer.from('{"error":{"status":404,"reason":"not-found"}}');
const METHOD_NOT_ALLOWED = Buffer.from('{"error":{"status":405,"reason":"method-not-allowed"}}');
const METRICS_FAILED = Buffer.from('{"error":{"status":500,"reason":"metrics-failed"}}');
const APPS_PREFIX = '/apps/';
const APP_HEALTH_SUFFIX = '/health';

export class HealthLane {
  #source: HealthSource;

  constructor(source: HealthSource) {
    this.#source = source;
  }

  /**
   * Answers one request. `rest` is the request target after the prefix: `/health`, `/ready`,
   * `/apps/<app>/health`, `/metrics` (when public), possibly with a query (ignored).
   */
  handle(req: IncomingMessage, res: ServerResponse, rest: string): void {
    const method = req.method;
    if (method !== 'GET' && method !== 'HEAD') {
      send(req, res, 405, METHOD_NOT_ALLOWED, { allow: 'GET, HEAD' });
      return;
    }
    const q = rest.indexOf('?');
    const path = q < 0 ? rest : rest.slice(0, q);
    if (path === '/health') {
      const ok = this.#source.accepting;
      send(req, res, ok ? 200 : 503, ok ? HEALTH_OK : HEALTH_STOPPING, null);
      return;
    }
    const details = this.#source.publicDetails === true;
    if (path === '/ready') {
      if (!details) {
        const ready = isReady(this.#source.table);
        send(req, res, ready ? 200 : 503, ready ? READY : UNAVAILABLE, null);
        return;
      }
      const { ready, body } = this.ready();
      send(req, res, ready ? 200 : 503, Buffer.from(JSON.stringify(body)), null);
      return;
    }
    if (path.startsWith(APPS_PREFIX) && path.endsWith(APP_HEALTH_SUFFIX)) {
      const raw = path.slice(APPS_PREFIX.length, path.length - APP_HEALTH_SUFFIX.length);
      let name: string | null = null;
      try {
        name = decodeURIComponent(raw);
      } catch {
        name = null;
      }
      const entry = name === null || name.includes('/') ? undefined : this.#source.table.app(name);
      if (!details) {
        // An unknown app looks exactly like an unhealthy one: app names are not the front door's to tell.
        const healthy = entry !== undefined && entryHealthy(entry);
        send(req, res, healthy ? 200 : 503, healthy ? APP_OK : UNAVAILABLE, null);
        return;
      }
      if (entry !== undefined) {
        const health = appHealth(entry, this.#source.queueDepth(entry.name));
        send(req, res, health.healthy ? 200 : 503, Buffer.from(JSON.stringify(health)), null);
        return;
      }
    }
    if (path === '/metrics') {
      const metrics = this.#source.publicMetrics;
      if (metrics != null) {
        void sendMetrics(req, res, metrics);
        return;
      }
    }
    send(req, res, 404, NOT_FOUND, null);
  }

  /** Readiness of the whole gateway, with details: every app in the table is healthy. */
  ready(): { ready: boolean; body: Readiness } {
    const body = readiness(this.#source);
    return { ready: body.status === 'ready', body };
  }
}

/**
 * Readiness with reasons and each app's health, for the apps `include` accepts (all by default; the
 * control API passes a caller's permissions). The gateway is ready when every included app is healthy.
 * `errorOf` gives why an app failed to boot, for readers allowed to see it (the control API).
 */
export function readiness(source: Pick<HealthSource, 'table' | 'queueDepth'>, include?: (app: string) => boolean, errorOf?: (app: string) => string | null): Readiness {
  const reasons: string[] = [];
  const apps: Record<string, AppHealth> = {};
  for (const entry of source.table.apps) {
    if (include && !include(entry.name)) continue;
    const failed = entry.noGeneration === 'start-failed';
    const h = appHealth(entry, source.queueDepth(entry.name), failed && errorOf ? errorOf(entry.name) : null);
    apps[entry.name] = h;
    for (const r of h.reasons) reasons.push(`${entry.name}: ${r}`);
  }
  return { status: reasons.length === 0 ? 'ready' : 'unavailable', reasons, apps };
}

/** Whether every app in the table is healthy (the public `/ready`). */
function isReady(table: RoutingTable): boolean {
  for (const entry of table.apps) if (!entryHealthy(entry)) return false;
  return true;
}

function entryHealthy(entry: AppEntry): boolean {
  return judgeApp(healthInput(entry, null)).healthy;
}

/**
 * What the health rule (supervisor/app-health.ts) reads of a table entry. The gateway builds the entry
 * from the app's state, and marks an app that failed to boot with `noGeneration: 'start-failed'` whether
 * or not a generation is left. `error` is why it failed, for readers allowed to see it; the public front
 * door passes null and says only that it failed.
 */
export function healthInput(entry: AppEntry, error: string | null): AppHealthInput {
  return { failed: entry.noGeneration === 'start-failed', error, generation: entry.generation };
}

/**
 * One app's health with its details. The verdict is the one rule's (`judgeApp`): status and the control
 * API read the same. `error`: why the app failed to boot, when the reader may see it.
 */
export function appHealth(entry: AppEntry, queue: number, error: string | null = null): AppHealth {
  const gen = entry.generation;
  const { healthy, reasons } = judgeApp(healthInput(entry, error));
  const instances: AppHealth['instances'] = [];
  if (gen !== null) for (const inst of everyInstance(gen)) instances.push({ process: inst.process, index: inst.index, state: inst.state, inFlight: inst.inFlight });
  return {
    healthy,
    reasons,
    generation: gen?.id ?? null,
    release: gen?.releaseId ?? null,
    mode: entry.mode.mode,
    queue,
    instances,
  };
}

/** Prometheus text; the levels in it are read now, from memory, like the rest of the lane. */
async function sendMetrics(req: IncomingMessage, res: ServerResponse, metrics: MetricsExporter): Promise<void> {
  let body: Buffer;
  try {
    body = Buffer.from(await metrics.text());
  } catch {
    if (!res.headersSent && !res.destroyed) send(req, res, 500, METRICS_FAILED, null);
    return;
  }
  if (res.destroyed) return;
  send(req, res, 200, body, { 'content-type': metrics.contentType });
}

function send(req: IncomingMessage, res: ServerResponse, status: number, body: Buffer, extra: Record<string, string> | null): void {
  const headers: Record<string, string | number> = {
    'content-type': 'application/json',
    'content-length': body.length,
    'cache-control': 'no-store',
    ...extra,
  };
  res.writeHead(status, headers);
  if (req.method === 'HEAD') res.end();
  else res.end(body);
}
