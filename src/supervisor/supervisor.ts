import { realpathSync } from 'node:fs';
import { join } from 'node:path';
import type { AppConfig, ProcessConfig } from '../config/schema.ts';
import { BerthError, errorMessage, ErrorCodes } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import type { RestartTiming } from './backoff.ts';
import { Generation, type HandedInstance, type InstanceFactory } from './generation.ts';
import type { ProcessHook } from './child.ts';
import { Instance, type RestartHook } from './instance.ts';
import { LogWriter } from '../lib/log-writer.ts';
import { appEnv, instanceVars } from './app-env.ts';
import { gatewayUser, type AppUser } from './app-user.ts';
import { Ports } from './ports.ts';
import { SharedCells } from '../lib/shared-cells.ts';

export { Generation, Instance };
export type { GenerationSnapshot, HandedInstance } from './generation.ts';
export type { InstanceSnapshot, RestartInfo, RestartReason } from './instance.ts';
export type { RestartTiming } from './backoff.ts';

/** One app's generation as an upgrade hands it over: which release, and its running instances. */
export interface GenerationHandover {
  app: string;
  /** `${app}#${n}`: the next gateway keeps the id, and numbers later generations after it. */
  id: string;
  releaseId: string;
  releaseDir: string;
  instances: HandedInstance[];
}

export interface SupervisorOptions {
  /** Absolute. Logs go to `<stateDir>/apps/<app>/logs/<process>.log`. */
  stateDir: string;
  /** The 'supervisor' logger. */
  logger: Logger;
  /** The gateway's environment; only its pass-through list reaches instances (app-env.ts). Default process.env. */
  baseEnv?: Record<string, string | undefined>;
  /** Who an app's instances run as (app-user.ts); throws for an unknown user. Default: the gateway's user. */
  appUser?: (app: AppConfig) => AppUser;
  /** Restart policy; defaults are the RESTART_* constants. Tests shrink them. */
  timing?: Partial<RestartTiming>;
  /** Log rotation; defaults DEFAULT_LOG_MAX_BYTES and DEFAULT_LOG_KEEP_FILES. */
  logs?: { maxBytes?: number; keepFiles?: number };
  /** Told about every process group started and ended, so orphans can be found after a crash. */
  onProcess?: ProcessHook;
  /** Told when an instance's process ended without a stop() and why (exit, heartbeat, startup timeout). */
  onRestart?: RestartHook;
  /** Where instances keep their counters, shared with the proxy's threads; default: cells of its own. */
  cells?: SharedCells;
}

type SupervisorState = 'running' | 'stopping' | 'stopped';

/**
 * Owns every app process of the gateway, grouped in generations. The deployer asks it for a
 * generation, waits for it, and tells the proxy to switch; the proxy only ever reads the generation's
 * pools. Nothing here is on the request path.
 */
export class Supervisor implements InstanceFactory {
  readonly stateDir: string;
  #log: Logger;
  #baseEnv: Record<string, string | undefined>;
  #appUser: (app: AppConfig) => AppUser;
  #timing: Partial<RestartTiming>;
  #logOptions: { maxBytes?: number; keepFiles?: number };
  #ports: Ports;
  readonly cells: SharedCells;
  #state: SupervisorState = 'running';
  /** Live generations, oldest first. */
  #generations: Generation[] = [];
  /** Last generation number per app, for ids like `shop#3`. */
  #seq = new Map<string, number>();
  /** One writer per log file, shared by every instance (of every generation) of a process type. */
  #writers = new Map<string, LogWriter>();
  #stopping: Promise<void> | null = null;

  #onProcess: ProcessHook | null;
  #onRestart: RestartHook | null;

  constructor(opts: SupervisorOptions) {
    this.stateDir = opts.stateDir;
    this.#log = opts.logger;
    this.#baseEnv = opts.baseEnv ?? process.env;
    this.cells = opts.cells ?? new SharedCells();
    this.#appUser = opts.appUser ?? gatewayUser;
    this.#timing = opts.timing ?? {};
    this.#logOptions = opts.logs ?? {};
    this.#onProcess = opts.onProcess ?? null;
    this.#onRestart = opts.onRestart ?? null;
    this.#ports = new Ports(opts.stateDir);
  }

  /**
   * Spawns every instance of every process type of this release at once and returns the new
   * generation (state 'starting'; see `Generation.waitReady`). `processes` is the resolved set of
   * process types (from config or Procfile). The working directory is the release's real path, even
   * when `release.dir` goes through a symlink. Throws BERTH_E_SPAWN when the directory is missing, and
   * BERTH_E_UNAVAILABLE once the supervisor is stopping. `failOnExit`: see GenerationOptions.
   */
  startGeneration(app: AppConfig, release: { id: string; dir: string }, processes: Record<string, ProcessConfig>, opts: { failOnExit?: boolean } = {}): Generation {
    if (this.#state !== 'running') throw new BerthError(ErrorCodes.unavailable, `the supervisor is ${this.#state}: not starting ${app.name}`);
    let releaseDir: string;
    try {
      releaseDir = realpathSync(release.dir);
    } catch (err) {
      throw new BerthError(ErrorCodes.spawn, `release directory ${release.dir} of ${app.name} cannot be resolved: ${errorMessage(err)}`, { cause: err });
    }
    // An unknown user fails here, before any generation exists (createInstance resolves it per instance).
    this.#appUser(app);
    const n = (this.#seq.get(app.name) ?? 0) + 1;
    this.#seq.set(app.name, n);
    const id = `${app.name}#${n}`;
    const gen = new Generation({
      id,
      app,
      releaseId: release.id,
      releaseDir,
      processes,
      factory: this,
      logger: this.#log.child({ app: app.name, generation: id, release: release.id }),
      failOnExit: opts.failOnExit === true,
    });
    this.#generations.push(gen);
    gen.start();
    this.#log.info({ app: app.name, generation: id, release: release.id, instances: gen.instances.length }, 'generation started');
    return gen;
  }

  /**
   * The new gateway's side of an upgrade: the generation the old one ran, with the same id, its
   * handed-over instances adopted where they run (any other instance slot starts). `processes` is the
   * resolved set of process types, as startGeneration takes it.
   */
  adoptGeneration(app: AppConfig, handed: Omit<GenerationHandover, 'instances'>, processes: Record<string, ProcessConfig>, instances: HandedInstance[]): Generation {
    if (this.#state !== 'running') throw new BerthError(ErrorCodes.unavailable, `the supervisor is ${this.#state}: not adopting ${app.name}`);
    const n = Number(handed.id.slice(handed.id.lastIndexOf('#') + 1));
    if (!handed.id.startsWith(`${app.name}#`) || !Number.isInteger(n) || n < 1) throw new BerthError(ErrorCodes.internal, `cannot adopt generation "${handed.id}" of ${app.name}`);
    this.#seq.set(app.name, Math.max(this.#seq.get(app.name) ?? 0, n));
    const gen = new Generation({
      id: handed.id,
      app,
      releaseId: handed.releaseId,
      releaseDir: handed.releaseDir,
      processes,
      factory: this,
      logger: this.#log.child({ app: app.name, generation: handed.id, release: handed.releaseId }),
    });
    this.#generations.push(gen);
    gen.start(new Map(instances.map((h) => [`${h.info.process}.${h.info.index}`, h])));
    this.#log.info({ app: app.name, generation: handed.id, release: handed.releaseId, adopted: instances.length }, 'generation adopted');
    return gen;
  }

  /**
   * The old gateway's side of an upgrade: every generation is frozen (no restart, no replacement) and
   * `gens` are described with their running instances and output pipes for the next gateway.
   */
  handOver(gens: Generation[]): GenerationHandover[] {
    for (const gen of this.#generations) if (!gens.includes(gen)) gen.handOver();
    return gens.map((gen) => ({ app: gen.app, id: gen.id, releaseId: gen.releaseId, releaseDir: gen.releaseDir, instances: gen.handOver() }));
  }

  /** The upgrade failed: every generation goes on here. */
  thaw(): void {
    for (const gen of this.#generations) gen.thaw();
  }

  /**
   * The next gateway owns the instances now (after a handover, or when the new gateway gives back what
   * it adopted): stop() and destroy() leave them running from here on.
   */
  release(): void {
    for (const gen of this.#generations) gen.release();
  }

  /**
   * Graceful stop of one generation: SIGTERM to every instance's process group, SIGKILL after
   * `timeouts.stop`; resolves when every process has exited.
   */
  async stopGeneration(gen: Generation): Promise<void> {
    try {
      await gen.stop();
    } finally {
      const i = this.#generations.indexOf(gen);
      if (i !== -1) this.#generations.splice(i, 1);
    }
  }

  /** Live generations (not yet stopped), optionally of one app, oldest first. */
  generations(app?: string): Generation[] {
    return app === undefined ? this.#generations.slice() : this.#generations.filter((g) => g.app === app);
  }

  /** Stops every generation in parallel and closes the log files; resolves when all processes are gone. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** Synchronously SIGKILLs every process group (last resort on gateway crash or exit). */
  destroy(err?: Error): void {
    this.#transition('stopped');
    for (const gen of this.#generations) gen.destroy(err);
    this.#generations = [];
  }

  /** InstanceFactory: one instance slot of `gen`, with its env, address source, log file and timings. */
  createInstance(gen: Generation, proc: ProcessConfig, index: number): Instance {
    const app = gen.config;
    const appDir = join(this.stateDir, 'apps', app.name);
    const genNumber = gen.id.slice(gen.id.lastIndexOf('#') + 1);
    // Numbered by generation: the old and new generations of a deploy run side by side.
    const heartbeatFile = proc.http ? null : join(appDir, 'run', `${proc.name}.${index}.${genNumber}.heartbeat`);
    const user = this.#appUser(app);
    return new Instance({
      app,
      process: proc,
      index,
      releaseId: gen.releaseId,
      releaseDir: gen.releaseDir,
      // SPEC § Environment: pass-through, the user's HOME/USER/LOGNAME, app env, process env, BERTH_*.
      env: appEnv(this.#baseEnv, { app, user, process: proc, vars: instanceVars(app, gen.releaseId, proc, index, heartbeatFile) }),
      user,
      heartbeatFile,
      ports: this.#ports,
      cells: this.cells,
      logWriter: this.#writer(join(appDir, 'logs', `${proc.name}.log`)),
      timing: this.#timing,
      logger: this.#log.child({ app: app.name, generation: gen.id, instance: `${proc.name}.${index}` }),
      listener: gen,
      onProcess: this.#onProcess,
      onRestart: this.#onRestart,
    });
  }

  #writer(file: string): LogWriter {
    let writer = this.#writers.get(file);
    if (!writer) {
      writer = new LogWriter({ file, maxBytes: this.#logOptions.maxBytes, keepFiles: this.#logOptions.keepFiles, logger: this.#log });
      this.#writers.set(file, writer);
    }
    return writer;
  }

  async #stop(): Promise<void> {
    if (this.#state === 'stopped') return;
    this.#transition('stopping');
    await Promise.allSettled(this.#generations.slice().map((g) => this.stopGeneration(g)));
    await Promise.allSettled([...this.#writers.values()].map((w) => w.close()));
    this.#transition('stopped');
  }

  #transition(next: SupervisorState): void {
    const was = this.#state;
    if (was === next) return;
    this.#state = next;
    this.#log.info({ state: next, was, generations: this.#generations.length }, 'supervisor state');
  }
}
