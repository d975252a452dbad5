/**
 * The one rule for an app's health. `berth status` (and `--check`), `/_berth/ready`,
 * `/_berth/apps/<app>/health`, their control API twins and the dashboard all take their verdict from
 * `judgeApp`, so no two of them can disagree about the same app.
 *
 * An app is healthy when it did not fail to boot, it has an active generation, every http pool that
 * should have instances has one `ready` (busy counts as ready: slow is not dead), and no instance of any
 * process type, http or background, is `crashed`. Crashed means the supervisor gave up restarting it
 * (SPEC § Health): unlike an instance in backoff or being replaced, it never comes back without a
 * deploy or reload, so the generation is not the healthy one SPEC's `/ready` asks for. The supervisor
 * itself judges a starting generation the same way: one crashed instance fails it.
 */
import type { InstanceState } from './types.ts';

/** What the rule reads of one instance. */
export interface HealthInstance {
  readonly process: string;
  readonly index: number;
  readonly state: InstanceState;
  readonly inFlight: number;
}

/** What the rule reads of a generation: its http pools, and every instance when it lists them. */
export interface HealthGeneration {
  readonly pools: ReadonlyMap<string, { readonly process: string; readonly instances: readonly HealthInstance[] }>;
}

export interface AppHealthInput {
  /** The app failed to boot (its phase is `failed`). */
  readonly failed: boolean;
  /** Why, when the reader may see it (status, the control API); null on the public front door. */
  readonly error: string | null;
  readonly generation: HealthGeneration | null;
}

export interface AppVerdict {
  healthy: boolean;
  reasons: string[];
}

export function judgeApp(app: AppHealthInput): AppVerdict {
  const reasons: string[] = [];
  const gen = app.generation;
  if (app.failed) reasons.push(app.error === null ? 'failed to boot' : `failed to boot: ${app.error}`);
  else if (gen === null) reasons.push('no active generation');
  else {
    for (const pool of gen.pools.values()) {
      if (pool.instances.length === 0) continue;
      if (!pool.instances.some((i) => i.state === 'ready')) reasons.push(`pool ${pool.process} has no ready instance`);
    }
    for (const inst of everyInstance(gen)) if (inst.state === 'crashed') reasons.push(`${inst.process}.${inst.index} crashed`);
  }
  return { healthy: reasons.length === 0, reasons };
}

/**
 * Every instance of a generation, background ones included. The supervisor's Generation lists them in
 * `instances`; a generation seen only through the proxy's view (GenerationView names its http pools)
 * may not, and then its pools' instances are all there is to read.
 */
export function everyInstance(gen: HealthGeneration): readonly HealthInstance[] {
  const all = (gen as { readonly instances?: unknown }).instances;
  if (Array.isArray(all)) return all as readonly HealthInstance[];
  const fromPools: HealthInstance[] = [];
  for (const pool of gen.pools.values()) fromPools.push(...pool.instances);
  return fromPools;
}
