/**
 * `POST /v1/apps/:app/scale` with `{"processes": {"<type>": N | "config", ...}}`: sets instance counts
 * live and keeps them (`berth scale`; gateway/scaling.ts). Answered once the instances it started are
 * ready, or one failed (`ready: false` with the reason: the change stays). Audited as `scale`, the
 * target the process types, the detail what changed (`web 2 -> 4`).
 *
 * A body that is not the right shape (not an object, an unknown key, no types, a count that is neither
 * a number nor "config") is a 400; a count that is no whole number from 0 is a 422, as is one the app
 * cannot take (its range, its database budget), which the gateway decides.
 */
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { PROCESS_NAME_RE } from '../config/schema.ts';
import type { Control } from './control.ts';
import type { RouteTable } from './request.ts';
import type { ScaleChange } from './wire.ts';

/** The word that drops an override: the config's count again. */
export const CONFIG_COUNT = 'config';
/** Most process types one request may name. */
const MAX_TYPES = 100;

const SHAPE = `{"processes": {"<type>": <instances> | "${CONFIG_COUNT}"}}`;

/** Validates a scale request body: process type -> count, null for "config". Throws 400 or 422. */
export function parseScaleRequest(body: unknown): Record<string, number | null> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BerthError(ErrorCodes.badRequest, `request body must be a JSON object: ${SHAPE}`);
  for (const key of Object.keys(body)) if (key !== 'processes') throw new BerthError(ErrorCodes.badRequest, `unknown key "${key.slice(0, 100)}": expected processes`);
  const processes = (body as { processes?: unknown }).processes;
  if (processes === null || typeof processes !== 'object' || Array.isArray(processes)) throw new BerthError(ErrorCodes.badRequest, `"processes" is required: ${SHAPE}`);
  const entries = Object.entries(processes);
  if (entries.length === 0 || entries.length > MAX_TYPES) throw new BerthError(ErrorCodes.badRequest, `"processes" must name 1 to ${MAX_TYPES} process types`);
  const out: Record<string, number | null> = {};
  for (const [type, value] of entries) {
    if (!PROCESS_NAME_RE.test(type) || type.length > 100) throw new BerthError(ErrorCodes.badRequest, `process type names match ${PROCESS_NAME_RE.source}, got ${JSON.stringify(type.slice(0, 100))}`);
    if (value === CONFIG_COUNT) out[type] = null;
    else if (typeof value !== 'number') throw new BerthError(ErrorCodes.badRequest, `the count of ${type} must be a number or "${CONFIG_COUNT}", got ${JSON.stringify(value)?.slice(0, 100)}`);
    else if (!Number.isSafeInteger(value) || value < 0) throw new BerthError(ErrorCodes.unprocessable, `the count of ${type} must be a whole number from 0, got ${value}`);
    else out[type] = value;
  }
  return out;
}

/**
 * What the audit row's detail says: `web 2 -> 4`, `web 2 -> 4, worker 1 -> 0 (config)`. The type is
 * named though the target names it too: `berth history` shows the detail alone.
 */
export function describeChanges(changes: readonly ScaleChange[]): string {
  return changes.map((c) => `${c.process} ${c.from} -> ${c.to}${c.override ? '' : ' (config)'}`).join(', ');
}

/** The process types a body names, for the audit row's target; undefined when it is not the right shape. */
function auditTarget(body: unknown): string | undefined {
  const processes = typeof body === 'object' && body !== null ? (body as { processes?: unknown }).processes : undefined;
  if (processes === null || typeof processes !== 'object' || Array.isArray(processes)) return undefined;
  const types = Object.keys(processes);
  return types.length > 0 && types.length <= MAX_TYPES ? types.join(',').slice(0, 1000) : undefined;
}

/** Registers the scale endpoint. */
export function registerScaleRoutes(routes: RouteTable, gateway: Control): void {
  routes.add(
    'POST',
    '/v1/apps/:app/scale',
    async (p, _url, body, _req, _res, ctx) => {
      if (!gateway.appStatus(p.app)) throw new BerthError(ErrorCodes.notFound, `no app named "${p.app}"`);
      const result = await gateway.scaleApp(p.app, parseScaleRequest(body), ctx.user);
      const detail = describeChanges(result.changes);
      // The change is made either way: instances that do not get ready are the app's failure, said here.
      const settle = result.ready ? undefined : Promise.resolve({ outcome: 'failed' as const, detail: `${detail}: ${result.error ?? 'not ready'}` });
      return { status: 200, body: result, audit: { target: detail, settle } };
    },
    { action: 'scale', auditTarget },
  );
}
