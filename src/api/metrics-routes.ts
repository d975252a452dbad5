/**
 * `GET /metrics` on the control API: the gateway's Prometheus metrics, always on (SPEC § Control API),
 * whatever `metrics_public` says about the front door.
 */
import type { Control } from './control.ts';
import type { RouteTable } from './request.ts';

/** Registers `GET /metrics`, answered in the Prometheus text format rather than JSON. */
export function registerMetricsRoutes(routes: RouteTable, gateway: Control): void {
  routes.add('GET', '/metrics', async (_params, _url, _body, _req, res) => {
    const metrics = gateway.metrics;
    const body = await metrics.text();
    res.writeHead(200, { 'content-type': metrics.contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
    res.end(body);
    return undefined;
  });
}
