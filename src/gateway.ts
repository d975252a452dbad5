/**
 * The composition root: builds every component from the config and owns the start/stop order.
 *
 * Start: store, then the front-door listeners (so the health lane answers at once), then the control
 * API, then every app in parallel. An app that fails to boot is reported in status and /ready and never
 * holds up the others. Stop: stop accepting and drain the front door, stop every app's processes, then
 * close the control API and the store.
 */
import { mkdir, utimes, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import type { BerthConfig, AppConfig, Mode } from './config/schema.ts';
import { dbDemand, HEALTH_FILE_INTERVAL_MS } from './config/schema.ts';
import type { LoggerFactory, Logger } from './lib/logger.ts';
import { BerthError, errorMessage } from './lib/errors.ts';
import type { DeployRecord, ReleaseRecord, Store } from './store/store.ts';
import { openStore } from './store/open-store.ts';
import { ReleaseStore } from './deploy/release-store.ts';
import { resolveProcesses } from './deploy/procfile.ts';
import { Supervisor } from './supervisor/supervisor.ts';
import type { Generation, InstanceSnapshot } from './supervisor/supervisor.ts';
import { Proxy } from './proxy/server.ts';
import { RoutingTable, type AppEntry, type ModeState } from './proxy/router.ts';
import { ApiServer } from './api/server.ts';
import { Deployer, type DeployHost, type DeployableApp } from './deploy/deployer.ts';
import { ReloadTrigger } from './deploy/reload-trigger.ts';
import { Audit } from './api/audit.ts';

export const VERSION = '0.1.0';

export type GatewayState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/** Where one app stands in the gateway: booting, serving, or failed with a reason. */
export type AppPhase = 'booting' | 'serving' | 'failed' | 'stopped';

interface AppRuntime extends DeployableApp {
  config: AppConfig;
  phase: AppPhase;
  /** Why the app is not serving, when it failed to boot. */
  error: string | null;
  releases: ReleaseStore;
  active: Generation | null;
  mode: ModeState;
  readonly booting: boolean;
}

export interface AppStatus {
  name: string;
  hosts: string[];
  phase: AppPhase;
  error: string | null;
  mode: Mode;
  modeMessage: string | null;
  activeRelease: string | null;
  healthy: boolean;
  reasons: string[];
  db: { budget: number | null; demand: number; inUse: number };
  queue: number;
  generations: (ReturnType<Generation['snapshot']> & { active: boolean })[];
}

export interface HistoryEntry {
  at: string;
  finishedAt: string | null;
  app: string | null;
  action: string;
  user: string;
  channel: string;
  target: string | null;
  outcome: string;
  detail: string | null;
}

export interface GatewayStatus {
  version: string;
  pid: number;
  state: GatewayState;
  startedAt: string;
  uptimeMs: number;
  config: string;
  environment: string | null;
  stateDir: string;
  listen: string[];
  control: string;
  apps: AppStatus[];
}

export interface GatewayOptions {
  config: BerthConfig;
  loggers: LoggerFactory;
  /** Test hook: shrink restart backoff. Passed to the supervisor. */
  supervisorTiming?: ConstructorParameters<typeof Supervisor>[0]['timing'];
}

/** Whether `pid` is alive and is an instance of `app` (its environment names the app). */
function isBerthProcess(pid: number, app: string): boolean {
  try {
    const env = readFileSync(`/proc/${pid}/environ`, 'latin1');
    return env.split('\0').includes(`BERTH_APP=${app}`);
  } catch {
    return false;
  }
}

export class Gateway implements DeployHost {
  readonly config: BerthConfig;
  #loggers: LoggerFactory;
  #log: Logger;
  #state: GatewayState = 'new';
  #startedAt = new Date();
  #store: Store | null = null;
  #proxy: Proxy;
  #api: ApiServer;
  #supervisor: Supervisor;
  #deployer: Deployer | null = null;
  /** The audit log: every change with who, how and the outcome. */
  readonly audit: Audit;
  #triggers: ReloadTrigger[] = [];
  #apps = new Map<string, AppRuntime>();
  #boots: Promise<void>[] = [];
  #readies: Promise<void>[] = [];
  #healthTimer: NodeJS.Timeout | null = null;
  #stopping: Promise<void> | null = null;
  #onStopped: (() => void)[] = [];

  constructor(opts: GatewayOptions) {
    this.config = opts.config;
    this.#loggers = opts.loggers;
    this.#log = opts.loggers.get('root');
    this.#proxy = new Proxy({ config: opts.config, logger: opts.loggers.get('proxy') });
    this.#supervisor = new Supervisor({
      stateDir: opts.config.stateDir,
      logger: opts.loggers.get('supervisor'),
      timing: opts.supervisorTiming,
      onProcess: (event, info) => this.#recordProcess(event, info),
    });
    this.audit = new Audit(() => this.#store, opts.loggers.get('api'));
    this.#api = new ApiServer({ gateway: this, config: opts.config, logger: opts.loggers.get('api') });
  }

  get state(): GatewayState {
    return this.#state;
  }

  get proxy(): Proxy {
    return this.#proxy;
  }

  get supervisor(): Supervisor {
    return this.#supervisor;
  }

  #transition(next: GatewayState): void {
    const was = this.#state;
    this.#state = next;
    this.#log.info({ state: next, was }, 'gateway state');
  }

  /**
   * Binds listeners and the control socket, then boots every app in the background. Resolves once the
   * gateway answers on its listeners; `whenAppsBooted()` waits for the apps. Rejects (after undoing what
   * it did) when the store cannot open or a listener cannot bind.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new BerthError('BERTH_E_INTERNAL', `gateway already ${this.#state}`);
    this.#transition('starting');
    try {
      await mkdir(this.config.stateDir, { recursive: true });
      const store = await openStore(this.config, this.#loggers.get('store'));
      this.#store = store;
      const saved = new Map((await store.listAppStates()).map((s) => [s.app, s]));
      for (const app of Object.values(this.config.apps)) {
        const s = saved.get(app.name);
        this.#apps.set(app.name, {
          config: app,
          get booting() {
            return this.phase === 'booting';
          },
          phase: 'booting',
          error: null,
          releases: new ReleaseStore({ stateDir: this.config.stateDir, app, store, logger: this.#loggers.get('deploy') }),
          active: null,
          mode: { mode: s?.mode ?? 'normal', message: s?.modeMessage ?? null, retryAfter: s?.modeRetryAfter ?? null },
        });
      }
      this.#deployer = new Deployer({ host: this, store, supervisor: this.#supervisor, logger: this.#loggers.get('deploy'), stateDir: this.config.stateDir });
      await this.#deployer.recoverInterrupted();
      await this.#reapOrphans(store);
      this.#rebuildTable();
      await this.#proxy.start();
      await this.#api.start();
    } catch (err) {
      await this.#teardown();
      this.#transition('stopped');
      throw err;
    }
    this.#transition('running');
    this.#log.info({ listen: this.#proxy.addresses().map((a) => a.text), control: this.config.control.socket }, 'gateway listening');
    this.#startHealthFile();
    for (const rt of this.#apps.values()) this.#boots.push(this.#bootApp(rt));
    for (const rt of this.#apps.values()) {
      if (!rt.config.reloadTrigger) continue;
      const trigger = new ReloadTrigger({
        file: `${rt.releases.appDir}/${rt.config.reloadTrigger}`,
        logger: this.#loggers.get('deploy').child({ app: rt.config.name }),
        onTrigger: () => this.#triggeredReload(rt.config.name),
      });
      trigger.start();
      this.#triggers.push(trigger);
    }
  }

  /** Remembers app process groups in the store, so the next start can kill them if this gateway dies. */
  #recordProcess(event: 'spawn' | 'exit', info: { pgid: number; app: string; process: string; index: number; releaseId: string }): void {
    const store = this.#store;
    if (!store) return;
    const write =
      event === 'spawn'
        ? store.recordProcess({ pgid: info.pgid, app: info.app, generation: info.releaseId, process: info.process, index: info.index, gatewayPid: process.pid, startedAt: new Date().toISOString() })
        : store.removeProcess(info.pgid);
    write.catch((err) => this.#log.warn({ pgid: info.pgid, err: errorMessage(err) }, 'cannot record process group'));
  }

  /**
   * Kills process groups that a previous gateway started and never stopped (it was killed). A pid can
   * be reused, so a group is only killed when its leader still carries the app's BERTH_APP in its
   * environment.
   */
  async #reapOrphans(store: Store): Promise<void> {
    for (const p of await store.listProcesses()) {
      if (p.gatewayPid !== process.pid && isBerthProcess(p.pgid, p.app)) {
        try {
          process.kill(-p.pgid, 'SIGKILL');
          this.#log.warn({ pgid: p.pgid, app: p.app, process: `${p.process}.${p.index}` }, 'killed orphan process group');
        } catch {
          // Already gone.
        }
      }
      await store.removeProcess(p.pgid);
    }
  }

  /** The deployer: deploys, rollbacks and reloads. Null before start(). */
  get deployer(): Deployer {
    if (!this.#deployer) throw new BerthError('BERTH_E_UNAVAILABLE', 'the gateway is not started');
    return this.#deployer;
  }

  /** DeployHost: the app as the deployer sees it. */
  deployable(app: string): DeployableApp | undefined {
    return this.#apps.get(app);
  }

  /** DeployHost: one pointer swap. Requests that arrived earlier keep the generation they pinned. */
  switchTo(app: string, gen: Generation): void {
    const rt = this.#apps.get(app);
    if (!rt) throw new BerthError('BERTH_E_NOT_FOUND', `no app named "${app}"`);
    rt.active = gen;
    rt.phase = 'serving';
    rt.error = null;
    this.#rebuildTable();
  }

  /**
   * A touch of the reload trigger file. When a deploy is already running the touch is not lost: the
   * trigger retries until the reload can start.
   */
  #triggeredReload(app: string): boolean {
    try {
      const d = this.deployer.begin(app, { kind: 'reload', user: 'reload-trigger' });
      this.#log.info({ app, deploy: d.id }, 'reload triggered by file');
      void this.audit.begin({ user: 'reload-trigger', channel: 'internal', action: 'reload', app, target: d.id }).then(async (id) => {
        await d.done;
        await this.audit.finish(id, d.state === 'succeeded' ? 'ok' : 'failed', d.state === 'succeeded' ? `${d.id}: release ${d.releaseId}` : `${d.id}: ${d.error ?? d.state}`);
      });
      return true;
    } catch (err) {
      if (err instanceof BerthError && err.code === 'BERTH_E_CONFLICT') return false;
      this.#log.error({ app, err: errorMessage(err) }, 'triggered reload failed to start');
      return true;
    }
  }

  /** Resolves when every app has either become ready, failed to boot, or failed to get ready. */
  async whenAppsBooted(): Promise<void> {
    await Promise.all(this.#boots);
    await Promise.all(this.#readies);
  }

  /**
   * Boots one app on its last active release, else on the release `current` names, else on a first
   * release made from its `source`. The generation is made active at once: there is nothing older to
   * protect, and requests that arrive while it starts wait in the admission queue.
   */
  async #bootApp(rt: AppRuntime): Promise<void> {
    const app = rt.config;
    const log = this.#loggers.get('deploy').child({ app: app.name });
    try {
      const store = this.#store!;
      const saved = await store.getAppState(app.name);
      let release: { id: string; dir: string } | null = null;
      if (saved?.activeRelease) {
        const dir = await rt.releases.dirOf(saved.activeRelease);
        if (dir) release = { id: saved.activeRelease, dir };
        else log.warn({ release: saved.activeRelease }, 'active release missing on disk');
      }
      release ??= await rt.releases.current();
      if (!release) {
        if (!app.source) throw new BerthError('BERTH_E_RELEASE', `app ${app.name} has no release yet and no source to make one from`);
        log.info({ source: app.source }, 'making first release');
        const prepared = await rt.releases.prepare(app.source);
        try {
          await rt.releases.linkShared(prepared);
          await rt.releases.activate(prepared.id);
        } catch (err) {
          await rt.releases.markFailed(prepared.id).catch(() => {});
          throw err;
        }
        release = { id: prepared.id, dir: prepared.dir };
      }
      const { processes } = await resolveProcesses(app, release.dir);
      if (this.#state !== 'running') return;
      await store.setActiveRelease(app.name, release.id);
      await store.setReleaseState(app.name, release.id, 'active').catch(() => {});
      const gen = this.#supervisor.startGeneration(app, release, processes);
      rt.active = gen;
      rt.phase = 'serving';
      this.#rebuildTable();
      log.info({ release: release.id, generation: gen.id }, 'app generation started');
      // Readiness is awaited outside the boot promise, so a shutdown never waits on a startup timeout.
      this.#readies.push(
        gen.waitReady().then(
          () => log.info({ release: release.id, generation: gen.id }, 'app ready'),
          // The generation stays: its instances keep restarting (or show as crashed) in status and /ready.
          (err) => log.error({ release: release.id, err: errorMessage(err) }, 'app not ready'),
        ),
      );
    } catch (err) {
      rt.phase = 'failed';
      rt.error = errorMessage(err);
      log.error({ err: rt.error }, 'app failed to boot');
      this.#rebuildTable();
    }
  }

  #rebuildTable(): void {
    const entries: AppEntry[] = [];
    for (const rt of this.#apps.values()) {
      entries.push({ name: rt.config.name, config: rt.config, generation: rt.active, mode: rt.mode });
    }
    this.#proxy.setTable(new RoutingTable(entries));
  }

  /** Touches `health_file` every 5s while the gateway runs, so a container platform can probe a file. */
  #startHealthFile(): void {
    const file = this.config.healthFile;
    if (!file) return;
    const touch = async () => {
      try {
        const now = new Date();
        await utimes(file, now, now).catch(async () => writeFile(file, ''));
      } catch (err) {
        this.#log.warn({ file, err: errorMessage(err) }, 'cannot touch health file');
      }
    };
    void touch();
    this.#healthTimer = setInterval(touch, HEALTH_FILE_INTERVAL_MS);
    this.#healthTimer.unref();
  }

  /** The whole picture for `berth status` and `GET /v1/status`. */
  status(): GatewayStatus {
    return {
      version: VERSION,
      pid: process.pid,
      state: this.#state,
      startedAt: this.#startedAt.toISOString(),
      uptimeMs: Date.now() - this.#startedAt.getTime(),
      config: this.config.file,
      environment: this.config.environment,
      stateDir: this.config.stateDir,
      listen: this.#state === 'running' ? this.#proxy.addresses().map((a) => a.text) : this.config.listen.map((a) => a.text),
      control: this.config.control.socket,
      apps: [...this.#apps.keys()].map((name) => this.appStatus(name)!),
    };
  }

  /** One app's status, or null when no app has that name. */
  appStatus(name: string): AppStatus | null {
    const rt = this.#apps.get(name);
    if (!rt) return null;
    const gens = this.#supervisor.generations(name);
    const { healthy, reasons } = this.#health(rt);
    let inUse = 0;
    for (const g of gens) inUse += g.inFlight;
    return {
      name,
      hosts: rt.config.hosts,
      phase: rt.phase,
      error: rt.error,
      mode: rt.mode.mode,
      modeMessage: rt.mode.message,
      activeRelease: rt.active?.releaseId ?? null,
      healthy,
      reasons,
      db: { budget: rt.config.dbConnections, demand: dbDemand(rt.config), inUse },
      queue: this.#proxy.queueDepth(name),
      generations: gens.map((g) => ({ ...g.snapshot(), active: g === rt.active })),
    };
  }

  #health(rt: AppRuntime): { healthy: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (rt.phase === 'failed') reasons.push(`failed to boot: ${rt.error}`);
    else if (!rt.active) reasons.push('no active generation');
    else {
      for (const pool of rt.active.pools.values()) {
        if (pool.instances.length === 0) continue;
        if (!pool.instances.some((i) => i.state === 'ready')) reasons.push(`pool ${pool.process} has no ready instance`);
      }
      for (const inst of rt.active.instances) {
        if (inst.state === 'crashed') reasons.push(`${inst.process}.${inst.index} crashed`);
      }
    }
    return { healthy: reasons.length === 0, reasons };
  }

  /** Releases of an app for `berth releases`, newest first, with the active and previous marked. */
  async releases(name: string): Promise<{ app: string; active: string | null; releases: ReleaseRecord[] }> {
    const rt = this.#apps.get(name);
    if (!rt || !this.#store) throw new BerthError('BERTH_E_NOT_FOUND', `no app named "${name}"`);
    const releases = await this.#store.listReleases(name);
    return { app: name, active: rt.active?.releaseId ?? null, releases };
  }

  /** Recent deploys, rollbacks and reloads of an app, newest first. */
  async deploys(name: string): Promise<DeployRecord[]> {
    if (!this.#store) return [];
    return this.#store.listDeploys({ app: name, limit: 50 });
  }

  /**
   * What happened, newest first: every audited change (deploys, rollbacks, reloads, mode switches, runs,
   * stops...) with who asked, through which channel, and the outcome.
   */
  async history(filter: { app?: string; user?: string; since?: string; limit?: number }): Promise<HistoryEntry[]> {
    const rows = await this.audit.list({ app: filter.app, user: filter.user, since: filter.since, limit: filter.limit ?? 50 });
    return rows.map((r) => ({
      at: r.at,
      finishedAt: r.finishedAt,
      app: r.app,
      action: r.action,
      user: r.user,
      channel: r.channel,
      target: r.target,
      outcome: r.outcome,
      detail: r.detail,
    }));
  }

  /** Routes for `berth routes`. */
  routes(): ReturnType<RoutingTable['describe']> {
    return this.#proxy.table.describe();
  }

  /**
   * Graceful shutdown: stop accepting, let in-flight requests finish (up to the longest drain timeout),
   * stop every app's processes, close the control API and the store. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    if (this.#state === 'stopped') return;
    this.#transition('stopping');
    let drainMs = 0;
    for (const app of Object.values(this.config.apps)) drainMs = Math.max(drainMs, app.timeouts.drainMs);
    await this.#teardown(drainMs || 30_000);
    this.#transition('stopped');
    for (const fn of this.#onStopped) fn();
  }

  /** Called once the gateway has fully stopped (used by `berth start` to exit). */
  onStopped(fn: () => void): void {
    this.#onStopped.push(fn);
  }

  async #teardown(drainMs = 0): Promise<void> {
    if (this.#healthTimer) clearInterval(this.#healthTimer);
    this.#healthTimer = null;
    for (const t of this.#triggers) t.stop();
    this.#triggers = [];
    await this.#deployer?.stop(0);
    await this.#proxy.stop(drainMs).catch((err) => this.#log.error({ err: errorMessage(err) }, 'proxy stop failed'));
    await Promise.allSettled(this.#boots);
    await this.#supervisor.stop().catch((err) => this.#log.error({ err: errorMessage(err) }, 'supervisor stop failed'));
    for (const rt of this.#apps.values()) {
      rt.active = null;
      if (rt.phase !== 'failed') rt.phase = 'stopped';
    }
    await this.#api.stop().catch((err) => this.#log.error({ err: errorMessage(err) }, 'api stop failed'));
    await this.#store?.close().catch((err) => this.#log.error({ err: errorMessage(err) }, 'store close failed'));
  }

  /** Last resort: kill every app process group synchronously. */
  destroy(err?: Error): void {
    this.#supervisor.destroy(err);
    this.#proxy.destroy(err);
  }
}

export type { InstanceSnapshot };
