/**
 * `berth scale <app> <type>=N`: an app's instance counts, changed live and kept. The config file may be
 * hand-written YAML with comments, so berth never rewrites it: a count is kept as an override in the
 * store (`scale_overrides`, migration 009), which every later generation of the app starts with
 * (deploys, reloads, rollbacks, config reloads and restarts: procfile.ts' resolveProcesses), until
 * `<type>=config` drops it.
 *
 * A change is checked whole before anything moves (the app serves, no deploy runs, the types exist, the
 * counts are in range, the http pools fit `db_connections`), written to the store, then applied to the
 * active generation: new instances start and join their pool as they get ready, removed ones (the
 * highest indexes) drain and stop, and no other instance restarts (Generation.scale). In a fleet the
 * store announces it (`scale:<app>`), and every other node applies it the same way (`follow`).
 */
import type { Logger } from '../lib/logger.ts';
import { BerthError, errorMessage, ErrorCodes } from '../lib/errors.ts';
import type { ScaleOverride } from '../store/store.ts';
import type { Generation, Instance } from '../supervisor/supervisor.ts';
import { budgetProblem, configuredInstances, maxInstances, minInstances, withScale } from '../deploy/scale.ts';
import type { ScaleChange, ScaleResult } from '../api/wire.ts';
import type { AppRuntime, Apps, GatewayLive } from './apps.ts';

/** Process type -> the count asked for; null: back to the config's count (the override is dropped). */
export type ScaleRequest = Readonly<Record<string, number | null>>;

export interface ScalingOptions {
  live: GatewayLive;
  apps: Apps;
  logger: Logger;
}

/** One type's change, as it was applied. */
interface Applied extends ScaleChange {
  instances: Instance[];
}

export class Scaling {
  #opts: ScalingOptions;
  #log: Logger;
  /** Changes, local and the fleet's, one after another: the store and the generations agree on the last. */
  #queue: Promise<unknown> = Promise.resolve();
  /** Apps whose counts (of these types) are brought in line once the deploy running for them ends. */
  #afterDeploy = new Map<string, Set<string>>();

  constructor(opts: ScalingOptions) {
    this.#opts = opts;
    this.#log = opts.logger;
  }

  /**
   * Applies `request` to the app and keeps it, then waits (up to `health.startup_timeout`) until every
   * instance it started is ready, or one failed: `ready` and `error` say which; the change stays either
   * way (failed instances restart with backoff, as any instance does). Throws, having changed nothing:
   * 404 for an unknown app or process type, 409 while a deploy runs or the app has no active generation,
   * 422 for a count out of range or over the database budget, 503 when the store cannot answer.
   */
  async scale(app: string, request: ScaleRequest, user: string): Promise<ScaleResult> {
    const run = this.#queue.then(() => this.#apply(app, request, user));
    this.#queue = run.catch(() => {});
    const { gen, changes } = await run;
    const started = changes.flatMap((c) => c.instances);
    let error: string | null = null;
    if (started.length > 0) {
      try {
        await gen.whenUp(started, gen.config.health.startupTimeoutMs);
      } catch (err) {
        error = errorMessage(err);
      }
    }
    return { app, generation: gen.id, changes: changes.map(({ instances: _, ...c }) => c), ready: error === null, error };
  }

  /**
   * A fleet node hears that the overrides of `app` (null: of any app) changed on another node, or looks
   * every few seconds: it reads them and brings the counts of its active generations in line, without
   * writing the store (the fleet's rows say it already). An app with a deploy running here is brought
   * in line once the deploy ends, on the generation it switched to.
   */
  follow(app: string | null): void {
    const run = this.#queue.then(() => this.#follow(app));
    this.#queue = run.catch((err) => this.#log.error({ app, err: errorMessage(err) }, 'cannot apply the fleet\'s instance counts'));
  }

  async #apply(name: string, request: ScaleRequest, user: string): Promise<{ gen: Generation; changes: Applied[] }> {
    const { live, apps } = this.#opts;
    const rt = apps.get(name);
    if (!rt) throw new BerthError(ErrorCodes.notFound, `no app named "${name}"`);
    const store = live.store();
    const state = live.state();
    if (!store || state !== 'running') throw new BerthError(ErrorCodes.unavailable, `the gateway is ${state}`);
    const running = live.deployer()?.running(name);
    if (running) throw new BerthError(ErrorCodes.conflict, `a ${running.kind} of ${name} is running: ${running.id}; scale once it ends`, { details: { running: running.id } });
    if (rt.booting) throw new BerthError(ErrorCodes.conflict, `app ${name} is still starting; scale it once it serves`);
    const gen = rt.active;
    if (!gen) throw new BerthError(ErrorCodes.conflict, `app ${name} has no active generation${rt.error ? ` (it failed to start: ${rt.error.split('\n')[0]})` : ''}; deploy it first`);
    const types = Object.keys(request);
    if (types.length === 0) throw new BerthError(ErrorCodes.badRequest, 'name at least one process type: <type>=N');
    const counts: Record<string, number> = {};
    for (const type of types) counts[type] = this.#check(rt, gen, type, request[type]);
    // The database budget is a promise: the http pools after the change must fit it, whole.
    const problem = budgetProblem(rt.config, withScale(gen.processes, counts));
    if (problem !== null) {
      const asked = types.map((t) => `${t}=${counts[t]}`).join(' ');
      throw new BerthError(ErrorCodes.unprocessable, `app ${name}: ${asked}: ${problem} (db_connections)`, { details: { budget: rt.config.dbConnections } });
    }
    const before = rt.overrides;
    rt.overrides = await this.#keep(rt, counts, request, user);
    const changes: Applied[] = [];
    try {
      for (const type of types) {
        const from = gen.processes[type].instances;
        const { added, removed } = gen.scale(type, counts[type]);
        changes.push({ process: type, from, to: counts[type], configured: configuredInstances(rt.config, type), override: request[type] !== null, added: added.map((i) => i.label), removed: removed.map((i) => i.label), instances: added });
      }
    } catch (err) {
      // The generation refused before changing anything (it is stopping, or being handed over): so does the store.
      await this.#restore(rt, before, types);
      rt.overrides = before;
      throw err;
    }
    // Admission limits (instances x concurrency) and the proxy threads' view follow the pools.
    apps.rebuildTable();
    // A deploy begun while the store was written may have read the counts before them: it is looked at again.
    this.#reconcile(name, new Set(types));
    this.#log.info({ app: name, user, changes: changes.map((c) => `${c.process} ${c.from} -> ${c.to}${c.override ? '' : ' (config)'}`), was: before.map((o) => `${o.process}=${o.instances}`) }, 'app scaled');
    return { gen, changes };
  }

  /** The count asked for `type`, checked: 404 for a type the app does not run, 422 out of range. */
  #check(rt: AppRuntime, gen: Generation, type: string, asked: number | null): number {
    const app = rt.config;
    if (!Object.hasOwn(gen.processes, type)) {
      throw new BerthError(ErrorCodes.notFound, `app ${app.name} has no process type "${type}" (it runs ${Object.keys(gen.processes).join(', ') || 'none'})`);
    }
    // Back to the config's count; a type the config no longer names keeps what it runs until the next reload.
    const n = asked ?? configuredInstances(app, type) ?? gen.processes[type].instances;
    const min = minInstances(app, type);
    const max = maxInstances(app, type);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      const why = min === 1 ? ' (a route sends traffic to it)' : '';
      throw new BerthError(ErrorCodes.unprocessable, `${type} of ${app.name} takes ${min} to ${max} instances${why}, got ${n}`);
    }
    return n;
  }

  /**
   * Writes the change to the store: an override per count, a deletion per `config`. When a write fails
   * the ones before it are undone (as far as the store lets), so the store says what runs; the error
   * (BERTH_E_STORE, 503) goes to the caller, and nothing was applied.
   */
  async #keep(rt: AppRuntime, counts: Record<string, number>, request: ScaleRequest, user: string): Promise<ScaleOverride[]> {
    const store = this.#opts.live.store()!;
    const app = rt.config.name;
    const setAt = new Date().toISOString();
    const done: string[] = [];
    try {
      for (const type of Object.keys(request)) {
        if (request[type] === null) await store.deleteScale(app, type);
        else await store.setScale({ app, process: type, instances: counts[type], user, setAt });
        done.push(type);
      }
    } catch (err) {
      await this.#restore(rt, rt.overrides, done);
      throw err;
    }
    const kept = rt.overrides.filter((o) => !Object.hasOwn(request, o.process));
    for (const type of Object.keys(request)) {
      if (request[type] !== null) kept.push({ app, process: type, instances: counts[type], user, setAt, node: store.node });
    }
    return kept.sort((a, b) => (a.process < b.process ? -1 : a.process > b.process ? 1 : 0));
  }

  /** Puts the store's overrides of `types` back as `was` has them; best effort (the store may be down). */
  async #restore(rt: AppRuntime, was: readonly ScaleOverride[], types: readonly string[]): Promise<void> {
    const store = this.#opts.live.store();
    if (!store) return;
    for (const type of types) {
      const old = was.find((o) => o.process === type);
      await (old ? store.setScale(old) : store.deleteScale(rt.config.name, type)).catch(() => {});
    }
  }

  async #follow(only: string | null): Promise<void> {
    const { live, apps } = this.#opts;
    const store = live.store();
    if (!store || live.state() !== 'running') return;
    const rows = await store.listScales(only ?? undefined);
    for (const name of only === null ? apps.names() : [only]) {
      const rt = apps.get(name);
      if (!rt) continue;
      const next = rows.filter((r) => r.app === name);
      const types = new Set([...rt.overrides, ...next].map((o) => o.process));
      if (!sameOverrides(rt.overrides, next)) {
        this.#log.info({ app: name, overrides: next.map((o) => `${o.process}=${o.instances}`) }, 'instance counts follow the fleet');
        rt.overrides = next;
      }
      this.#reconcile(name, types);
    }
  }

  /**
   * Brings the active generation's counts of `types` to the overrides (else the config's counts). A
   * deploy running here starts its generation with the overrides it read: this looks again once it ends.
   */
  #reconcile(name: string, types: ReadonlySet<string>): void {
    const rt = this.#opts.apps.get(name);
    const gen = rt?.active;
    if (!rt || !gen || types.size === 0) return;
    const running = this.#opts.live.deployer()?.running(name);
    if (running) {
      const waiting = this.#afterDeploy.get(name);
      if (waiting) {
        for (const t of types) waiting.add(t);
        return;
      }
      this.#afterDeploy.set(name, new Set(types));
      void running.done.then(() => {
        const later = this.#afterDeploy.get(name)!;
        this.#afterDeploy.delete(name);
        this.#queue = this.#queue.then(() => this.#reconcile(name, later)).catch((err) => this.#log.error({ app: name, err: errorMessage(err) }, 'cannot apply the instance counts after a deploy'));
      });
      return;
    }
    let changed = false;
    for (const type of types) {
      if (!Object.hasOwn(gen.processes, type)) continue;
      const want = rt.scale[type] ?? configuredInstances(rt.config, type);
      if (want === null || gen.processes[type].instances === want) continue;
      try {
        gen.scale(type, want);
        changed = true;
      } catch (err) {
        this.#log.error({ app: name, process: type, instances: want, err: errorMessage(err) }, 'cannot apply an instance count');
      }
    }
    if (changed) this.#opts.apps.rebuildTable();
  }
}

function sameOverrides(a: readonly ScaleOverride[], b: readonly ScaleOverride[]): boolean {
  return a.length === b.length && a.every((o) => b.some((p) => p.process === o.process && p.instances === o.instances));
}
