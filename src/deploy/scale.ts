/**
 * Instance counts: what the config (or a release's Procfile) asks of each process type, the overrides
 * `berth scale` keeps in the store over them, and the database budget (`db_connections`) that the result
 * must fit. Pure functions: a deploy or a boot applies the overrides to a release's process types here
 * (procfile.ts' resolveProcesses), and `berth scale` checks a request here before it changes anything.
 */
import { DEFAULT_INSTANCES, type AppConfig, type ProcessConfig } from '../config/schema.ts';

/**
 * The most instances `berth scale` gives one process type, unless the config itself asks for more. Each
 * instance is a process group with a port of its own; a hundred of one type is past what one machine
 * runs sensibly.
 */
export const MAX_SCALE_INSTANCES = 100;

/** Process type -> instance count, as `berth scale` set it. */
export type ScaleCounts = Readonly<Record<string, number>>;

/**
 * How many instances the config asks of `type`: `processes.<type>.instances`, or for an app whose
 * process types come from a Procfile, `scale.<type>` (default 1). Null when the config's `processes`
 * have no such type.
 */
export function configuredInstances(app: AppConfig, type: string): number | null {
  if (app.processes) return Object.hasOwn(app.processes, type) ? app.processes[type].instances : null;
  return Object.hasOwn(app.scale, type) ? app.scale[type] : DEFAULT_INSTANCES;
}

/**
 * `processes` with the counts of `scale` (a new object when one differs). An override of a type that
 * `processes` lacks is left out: it waits, in the store, for a release or config that has the type.
 */
export function withScale(processes: Readonly<Record<string, ProcessConfig>>, scale: ScaleCounts): Record<string, ProcessConfig> {
  let out = processes as Record<string, ProcessConfig>;
  for (const [type, n] of Object.entries(scale)) {
    if (!Object.hasOwn(processes, type) || processes[type].instances === n) continue;
    if (out === processes) out = { ...processes };
    out[type] = { ...processes[type], instances: n };
  }
  return out;
}

/** `instances × concurrency` summed over the http types of `processes`: what `db_connections` must cover. */
export function demandOf(processes: Readonly<Record<string, ProcessConfig>>): number {
  let n = 0;
  for (const p of Object.values(processes)) if (p.http) n += p.instances * p.concurrency;
  return n;
}

/**
 * Null when the http pools of `processes` fit the app's `db_connections` budget (or it has none); else
 * the problem, worded as the config check words it: the demand, its terms and the budget.
 */
export function budgetProblem(app: AppConfig, processes: Readonly<Record<string, ProcessConfig>>): string | null {
  const demand = demandOf(processes);
  if (app.dbConnections === null || demand <= app.dbConnections) return null;
  const parts = Object.values(processes)
    .filter((p) => p.http)
    .map((p) => `${p.name} ${p.instances}x${p.concurrency}`)
    .join(' + ');
  return `the http pools need ${demand} connections (${parts}), more than the budget of ${app.dbConnections}`;
}

/**
 * The least count of `type`: 1 for a type a route sends traffic to (0 would leave its routes with no
 * instance at all), else 0.
 */
export function minInstances(app: AppConfig, type: string): number {
  return app.routes.some((r) => r.to === type) ? 1 : 0;
}

/** The most `berth scale` gives `type`: MAX_SCALE_INSTANCES, or the config's own count when that is more. */
export function maxInstances(app: AppConfig, type: string): number {
  return Math.max(MAX_SCALE_INSTANCES, configuredInstances(app, type) ?? 0);
}
