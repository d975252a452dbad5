/**
 * The gateway endpoints on the front door, under `internal_prefix`. They are answered before routing,
 * rate limits, modes and queues, from in-memory state only (the routing table and the instances' fields),
 * so a saturated app can never delay a health check. Nothing here is ever forwarded to an app.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Mode } from '../config/schema.ts';
import type { MetricsExporter } from '../lib/metrics.ts';
import type { InstanceState } from '../supervisor/types.ts';
import type { AppEntry, RoutingTable } from './router.ts';

/** What the lane reads: the current table and the admission queues. Implemented by `Proxy`. */
export interface HealthSource {
  readonly table: RoutingTable;
  queueDepth(app: string): number;
  /** False while the proxy is stopping: `/health` then says so, letting load balancers move away first. */
  readonly accepting: boolean;
  /** Served at `/metrics` when set (`metrics_public: true`); absent or null: that path is a 404. */
  readonly publicMetrics?: MetricsExporter | null;
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
    if (path === '/ready') {
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

  /** Readiness of the whole gateway: every app in the table is healthy. */
  ready(): { ready: boolean; body: { status: 'ready' | 'unavailable'; reasons: string[]; apps: Record<string, AppHealth> } } {
    const reasons: string[] = [];
    const apps: Record<string, AppHealth> = {};
    for (const entry of this.#source.table.apps) {
      const h = appHealth(entry, this.#source.queueDepth(entry.name));
      apps[entry.name] = h;
      for (const r of h.reasons) reasons.push(`${entry.name}: ${r}`);
    }
    const ready = reasons.length === 0;
    return { ready, body: { status: ready ? 'ready' : 'unavailable', reasons, apps } };
  }
}

/**
 * An app is healthy when it has an active generation in which every http pool that should have
 * instances has at least one ready. Busy instances count as ready: slow is not dead.
 */
export function appHealth(entry: AppEntry, queue: number): AppHealth {
  const gen = entry.generation;
  const reasons: string[] = [];
  const instances: AppHealth['instances'] = [];
  if (gen === null) reasons.push('no active generation');
  else {
    for (const pool of gen.pools.values()) {
      let ready = 0;
      for (const inst of pool.instances) {
        if (inst.state === 'ready') ready++;
        instances.push({ process: inst.process, index: inst.index, state: inst.state, inFlight: inst.inFlight });
      }
      if (pool.instances.length > 0 && ready === 0) reasons.push(`pool ${pool.process} has no ready instance`);
    }
  }
  return {
    healthy: reasons.length === 0,
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
