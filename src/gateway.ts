/**
 * The composition root: builds every component from the config and owns the start/stop order.
 *
 * Start: store, then the front-door listeners (so the health lane answers at once), then the control
 * API, then every app in parallel. An app that fails to boot is reported in status and /ready and never
 * holds up the others. Stop: stop accepting and drain the front door, stop every app's processes, then
 * close the control API and the store.
 */
import { utimes, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import type { BerthConfig, AppConfig, Mode } from './config/schema.ts';
import { dbDemand, HEALTH_FILE_INTERVAL_MS } from './config/schema.ts';
import type { LoggerFactory, Logger } from './lib/logger.ts';
import { BerthError, ConfigError, errorMessage, type ConfigProblem, ErrorCodes } from './lib/errors.ts';
import { redactText } from './lib/redact.ts';
import type { AuditChannel, AppState, DeployRecord, Store } from './store/store.ts';
import { loadConfig, type LoadOptions } from './config/load.ts';
import { openStore } from './store/open-store.ts';
import { ReleaseStore } from './deploy/release-store.ts';
import { resolveProcesses } from './deploy/procfile.ts';
import { Supervisor } from './supervisor/supervisor.ts';
import type { Generation, InstanceSnapshot } from './supervisor/supervisor.ts';
import { Proxy } from './proxy/server.ts';
import { RoutingTable, type AppEntry, type ModeState } from './proxy/router.ts';
import { ApiServer } from './api/server.ts';
import { Deployer, type Deploy, type DeployHost, type DeployableApp } from './deploy/deployer.ts';
import { ReloadTrigger } from './deploy/reload-trigger.ts';
import { Audit } from './api/audit.ts';
import { Scheduler, type TaskTarget } from './scheduler/scheduler.ts';
import type { RestartInfo } from './supervisor/supervisor.ts';
import { Metrics } from './metrics/metrics.ts';
import { isRoot, resolveAppUser, type AppUser } from './supervisor/app-user.ts';
import { DEFAULT_PERMISSIONS_ENVIRONMENT } from './api/auth.ts';
import { prepareAppDirs, secureStateDir } from './supervisor/state-access.ts';
import { StateLock } from './supervisor/state-lock.ts';
import { finishInterruptedAudit } from './api/interrupted-audit.ts';
import type { Control, HistoryFilter } from './api/control.ts';
import type { AppPhase, AppStatus, ConfigReloadResult, GatewayState, GatewayStatus, HistoryEntry, ReleaseList } from './api/wire.ts';

export const VERSION = '0.1.0';

export type { AppPhase, AppStatus, ConfigReloadResult, GatewayState, GatewayStatus, HistoryEntry } from './api/wire.ts';

/**
 * At shutdown, how long a running deploy gets to end once its build or release command was told to
 * stop (the command runner sends SIGKILL 5s after SIGTERM) and its generations were stopped.
 */
const DEPLOY_END_WAIT_MS = 10_000;

/**
 * App keys that define its processes: a change to any of them reloads the app (zero downtime). Other
 * keys (hosts, routes, queue, rate limits, pages, timeouts, schedule...) apply with the routing table.
 */
const PROCESS_KEYS = ['processes', 'scale', 'env', 'listen', 'health', 'user', 'group'] as const satisfies readonly (keyof AppConfig)[];

/** Settings that only a restart can change: listeners stay open and the store stays the same. */
const RESTART_ONLY_KEYS: readonly { path: string; of: (c: BerthConfig) => unknown }[] = [
  { path: 'listen', of: (c) => c.listen.map((a) => a.text) },
  { path: 'state_dir', of: (c) => c.stateDir },
  { path: 'database', of: (c) => c.database },
  { path: 'control.socket', of: (c) => c.control.socket },
  { path: 'control.socket_group', of: (c) => c.control.socketGroup },
  { path: 'control.listen', of: (c) => c.control.listen?.text ?? null },
];

function restartOnlyChanges(was: BerthConfig, next: BerthConfig): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const key of RESTART_ONLY_KEYS) {
    const a = JSON.stringify(key.of(was));
    const b = JSON.stringify(key.of(next));
    if (a !== b) problems.push({ path: key.path, message: `changing it needs a restart of the gateway (running with ${a}, the file now says ${b})` });
  }
  return problems;
}

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

export interface GatewayOptions {
  config: BerthConfig;
  loggers: LoggerFactory;
  /** Test hook: shrink restart backoff. Passed to the supervisor. */
  supervisorTiming?: ConstructorParameters<typeof Supervisor>[0]['timing'];
  /** How the config was found, so a config reload reads it the same way (default: its file and environment). */
  loadOptions?: LoadOptions;
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

export class Gateway implements DeployHost, Control {
  #config: BerthConfig;
  #loadOptions: LoadOptions;
  #loggers: LoggerFactory;
  #log: Logger;
  #state: GatewayState = 'new';
  #startedAt = new Date();
  #store: Store | null = null;
  #proxy: Proxy;
  #api: ApiServer;
  #supervisor: Supervisor;
  #deployer: Deployer | null = null;
  /** Scheduled tasks, one-off runs and the cleanup job; made once the store is open. */
  #scheduler: Scheduler | null = null;
  /** The audit log: every change with who, how and the outcome. */
  readonly audit: Audit;
  /** Prometheus metrics: `GET /metrics` on the control API, and on the front door when public. */
  readonly metrics: Metrics;
  /** App name -> its reload trigger watcher. */
  #triggers = new Map<string, ReloadTrigger>();
  #apps = new Map<string, AppRuntime>();
  #boots: Promise<void>[] = [];
  #readies: Promise<void>[] = [];
  #healthTimer: NodeJS.Timeout | null = null;
  #stopping: Promise<void> | null = null;
  #onStopped: (() => void)[] = [];
  /** One gateway per state dir: held from the first step of start() to the last of stop(). */
  #lock: StateLock | null = null;

  constructor(opts: GatewayOptions) {
    this.#config = opts.config;
    this.#loadOptions = opts.loadOptions ?? { configPath: opts.config.file, env: opts.config.environment ?? undefined };
    this.#loggers = opts.loggers;
    this.#log = opts.loggers.get('root');
    this.#proxy = new Proxy({ config: opts.config, logger: opts.loggers.get('proxy') });
    this.#supervisor = new Supervisor({
      stateDir: opts.config.stateDir,
      logger: opts.loggers.get('supervisor'),
      timing: opts.supervisorTiming,
      appUser: this.#appUser,
      onProcess: (event, info) => this.#recordProcess(event, info),
      onRestart: (info) => this.#recordRestart(info),
    });
    this.audit = new Audit(() => this.#store, opts.loggers.get('api'));
    this.metrics = new Metrics(
      { pools: () => this.#proxy.admissions(), instances: () => this.#supervisor.generations().flatMap((g) => g.instances) },
      opts.loggers.get('root'),
    );
    this.#proxy.setMetrics(this.metrics);
    this.#api = new ApiServer({ gateway: this, config: opts.config, logger: opts.loggers.get('api') });
  }

  get state(): GatewayState {
    return this.#state;
  }

  /** The config in effect: the one started with, or the last one a config reload applied. */
  get config(): BerthConfig {
    return this.#config;
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
    if (this.#state !== 'new') throw new BerthError(ErrorCodes.internal, `gateway already ${this.#state}`);
    this.#transition('starting');
    // Before anything is touched: another live gateway's processes would look like orphans to reap.
    // Refused, this start undoes nothing, so the live gateway never notices.
    try {
      this.#lock = await StateLock.acquire(this.config.stateDir, this.config.control.socket);
    } catch (err) {
      this.#transition('stopped');
      throw err;
    }
    try {
      await secureStateDir(this.config.stateDir, { root: isRoot(), socketGroup: this.config.control.socketGroup });
      this.#warnSharedUser();
      const store = await openStore(this.config, this.#loggers.get('store'));
      this.#store = store;
      const saved = new Map((await store.listAppStates()).map((s) => [s.app, s]));
      for (const app of Object.values(this.config.apps)) this.#apps.set(app.name, this.#newRuntime(app, store, saved.get(app.name)));
      this.#deployer = new Deployer({ host: this, store, supervisor: this.#supervisor, logger: this.#loggers.get('deploy'), stateDir: this.config.stateDir, appUser: this.#appUser });
      await this.#deployer.recoverInterrupted();
      this.#scheduler = new Scheduler({
        config: this.config,
        store,
        host: this,
        audit: this.audit,
        logger: this.#loggers.get('scheduler'),
        appUser: this.#appUser,
        onProcess: (event, info) => this.#recordProcess(event, info),
      });
      await this.#scheduler.recoverInterrupted();
      // After both, so that the rows can name the deploys and runs just marked interrupted.
      await finishInterruptedAudit(store, this.#loggers.get('api'));
      await this.#reapOrphans(store);
      this.#rebuildTable();
      this.metrics.start();
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
    for (const rt of this.#apps.values()) this.#watchTrigger(rt);
    // Scheduled runs need the apps' active releases: the scheduler starts once every app has booted.
    void Promise.allSettled(this.#boots).then(() => {
      if (this.#state === 'running') this.#scheduler?.start();
    });
  }

  /**
   * Who every process of an app runs as (app-user.ts), with the config in effect: read at each spawn,
   * so a config reload's `default_user` applies to the next one. Throws for an unknown user or group.
   */
  #appUser = (app: AppConfig): AppUser => resolveAppUser(app, this.#config.defaultUser);

  /**
   * berth not root: apps share its user, so `user` and `group` cannot apply. berth root: an app with
   * `user: root` can use the control socket, which matters when permissions restrict someone. Said once, at start.
   */
  #warnSharedUser(): void {
    if (isRoot()) {
      const limited = Object.keys(this.config.control.permissions[this.config.environment ?? DEFAULT_PERMISSIONS_ENVIRONMENT] ?? {});
      const asRoot = Object.values(this.config.apps).filter((a) => a.user === 'root' || a.user === '0').map((a) => a.name);
      if (limited.length > 0 && asRoot.length > 0) this.#log.warn({ apps: asRoot, restricted: limited }, 'apps run as root: their code can use the control socket, whatever control.permissions says');
      return;
    }
    const named = Object.values(this.config.apps).filter((a) => a.user !== null || a.group !== null).map((a) => a.name);
    if (named.length > 0) this.#log.warn({ apps: named, uid: process.getuid?.() }, 'berth is not root: apps run as its own user, and their user and group settings are not used');
  }

  /** An app as the gateway holds it, before it boots; its mode comes from the store. */
  #newRuntime(app: AppConfig, store: Store, saved: AppState | null | undefined): AppRuntime {
    return {
      config: app,
      get booting() {
        return this.phase === 'booting';
      },
      phase: 'booting',
      error: null,
      releases: new ReleaseStore({ stateDir: this.config.stateDir, app, store, logger: this.#loggers.get('deploy') }),
      active: null,
      mode: { mode: saved?.mode ?? 'normal', message: saved?.modeMessage ?? null, retryAfter: saved?.modeRetryAfter ?? null },
    };
  }

  /** Starts watching the app's reload trigger file, when it has one. */
  #watchTrigger(rt: AppRuntime): void {
    if (!rt.config.reloadTrigger) return;
    const trigger = new ReloadTrigger({
      file: `${rt.releases.appDir}/${rt.config.reloadTrigger}`,
      logger: this.#loggers.get('deploy').child({ app: rt.config.name }),
      onTrigger: () => this.#triggeredReload(rt.config.name),
    });
    trigger.start();
    this.#triggers.set(rt.config.name, trigger);
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
    if (!this.#deployer) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return this.#deployer;
  }

  // ---- scheduler (tasks, one-off runs, cleanup) ----------------------------------------------------

  /** The scheduler: scheduled tasks, one-off runs and the cleanup job. Throws before start(). */
  get scheduler(): Scheduler {
    if (!this.#scheduler) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return this.#scheduler;
  }

  /** SchedulerHost: where an app's tasks run (its active generation's release), or undefined for no such app. */
  taskTarget(app: string): TaskTarget | undefined {
    const rt = this.#apps.get(app);
    if (!rt) return undefined;
    const gen = rt.active;
    return { config: rt.config, releases: rt.releases, active: gen ? { id: gen.releaseId, dir: gen.releaseDir, processes: gen.processes } : null };
  }

  /** An instance ended on its own (or went silent) and is restarted: into the audit log, so history shows why. */
  #recordRestart(info: RestartInfo): void {
    const detail = info.delayMs === null ? `${info.detail}; crashed, not restarted` : info.detail;
    void this.audit.record({ user: 'supervisor', channel: 'internal', action: 'restart', app: info.app, target: `${info.process}.${info.index}`, outcome: info.delayMs === null ? 'failed' : 'ok', detail });
  }

  /** DeployHost: the app as the deployer sees it. */
  deployable(app: string): DeployableApp | undefined {
    return this.#apps.get(app);
  }

  /** DeployHost: one pointer swap. Requests that arrived earlier keep the generation they pinned. */
  switchTo(app: string, gen: Generation): void {
    const rt = this.#apps.get(app);
    if (!rt) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
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
      if (err instanceof BerthError && err.code === ErrorCodes.conflict) return false;
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
      // An unknown user or group fails the boot here, naming it; the app's directories get their owners.
      const user = this.#appUser(app);
      await prepareAppDirs(rt.releases.appDir, user, app.shared);
      log.info({ user: user.name, uid: user.uid, gid: user.gid, from: user.from }, 'app user');
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
        // The first start of an app is a real deploy (prepare, link, build, release command...), recorded
        // like any other, except that it switches as soon as its generation starts.
        if (!app.source) throw new BerthError(ErrorCodes.release, `app ${app.name} has no release yet and no source to make one from`);
        log.info({ source: redactText(app.source) }, 'first deploy of the app');
        const d = this.deployer.begin(app.name, { kind: 'deploy', source: app.source, user: 'berth-start', boot: true });
        const auditId = await this.audit.begin({ user: 'berth-start', channel: 'internal', action: 'deploy', app: app.name, target: d.id });
        await d.done;
        await this.audit.finish(auditId, d.state === 'succeeded' ? 'ok' : 'failed', d.state === 'succeeded' ? `${d.id}: release ${d.releaseId}` : `${d.id}: ${d.error ?? d.state}`);
        if (d.state !== 'succeeded' || !rt.active) {
          const tail = d.logTail.length ? `\n${d.logTail.join('\n')}` : '';
          throw new BerthError(ErrorCodes.release, `first deploy ${d.id} failed at step ${d.failedStep ?? '?'}: ${d.error ?? d.state}${tail}`);
        }
        const gen = rt.active;
        this.#readies.push(
          gen.waitReady().then(
            () => log.info({ release: gen.releaseId, generation: gen.id }, 'app ready'),
            (err) => log.error({ release: gen.releaseId, err: errorMessage(err) }, 'app not ready'),
          ),
        );
        return;
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
      // The 503 reason while there is no generation is settled here, so a request only reads it.
      const noGeneration = rt.phase === 'failed' ? 'start-failed' : 'no-active-generation';
      entries.push({ name: rt.config.name, config: rt.config, generation: rt.active, mode: rt.mode, noGeneration });
    }
    this.#proxy.setTable(new RoutingTable(entries));
  }

  #restartHealthFile(): void {
    if (this.#healthTimer) clearInterval(this.#healthTimer);
    this.#healthTimer = null;
    this.#startHealthFile();
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
      controlListen: this.#api.tcpAddress()?.text ?? null,
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
  async releases(name: string): Promise<ReleaseList> {
    const rt = this.#apps.get(name);
    if (!rt || !this.#store) throw new BerthError(ErrorCodes.notFound, `no app named "${name}"`);
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
  async history(filter: HistoryFilter): Promise<HistoryEntry[]> {
    const rows = await this.audit.list({ app: filter.app, user: filter.user, action: filter.action, since: filter.since, limit: filter.limit ?? 50 });
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

  /** The names of the apps the gateway holds, in config order. */
  appNames(): string[] {
    return [...this.#apps.keys()];
  }

  // ---- modes and WebSockets (SPEC § Modes, § Request handling 10) ----------------------------------

  /** Mode switches, one after another, so the store and the routing table always agree on the last. */
  #modeSwitches: Promise<unknown> = Promise.resolve();

  /**
   * Switches an app's mode live. It is saved in the store first (so it survives a restart), then the
   * routing table is rebuilt: it applies from the next request on, and requests in flight keep the mode
   * they arrived under (their table entry holds the old mode object). `normal` clears message and
   * retryAfter. 404 for an unknown app; the store refuses a bad mode or retryAfter (400).
   */
  setMode(app: string, mode: Mode, opts: { message?: string | null; retryAfter?: number | null } = {}, ctx?: { user: string }): Promise<ModeState> {
    const run = this.#modeSwitches.then(async () => {
      const rt = this.#apps.get(app);
      if (!rt) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
      const store = this.#store;
      if (!store || (this.#state !== 'running' && this.#state !== 'starting')) throw new BerthError(ErrorCodes.unavailable, `the gateway is ${this.#state}`);
      const next: ModeState = mode === 'normal' ? { mode, message: null, retryAfter: null } : { mode, message: opts.message ?? null, retryAfter: opts.retryAfter ?? null };
      await store.setMode(app, mode, next.message, next.retryAfter);
      const was = rt.mode.mode;
      rt.mode = next;
      this.#rebuildTable();
      this.#log.info({ app, mode, was, user: ctx?.user ?? null }, 'mode switched');
      return next;
    });
    this.#modeSwitches = run.catch(() => {});
    return run;
  }

  /** DeployHost: the drain deadline passed with WebSockets open on `gen`; they get close 1001. */
  closeUpgrades(gen: Generation): number {
    return this.#proxy.closeUpgrades(gen);
  }

  // ---- config reload (SIGHUP, `berth reload-config`) ---------------------------------------------

  /**
   * Re-reads the config the way the gateway first read it and applies it live: routing, limits, modes'
   * pages, auth, log levels and schedules at once; apps whose process definitions changed get a
   * zero-downtime reload; new apps boot; removed apps leave the routing table, drain and stop.
   * Listeners stay open. An invalid config, or one that changes what only a restart can
   * (RESTART_ONLY_KEYS), throws ConfigError listing every problem, and nothing changes.
   */
  async reloadConfig(by: { user: string; channel: AuditChannel }): Promise<ConfigReloadResult> {
    if (this.#state !== 'running') throw new BerthError(ErrorCodes.unavailable, `the gateway is ${this.#state}`);
    if (this.#reloadingConfig) throw new BerthError(ErrorCodes.conflict, 'a config reload is already running');
    this.#reloadingConfig = true;
    try {
      const next = await loadConfig(this.#loadOptions);
      const problems = restartOnlyChanges(this.#config, next);
      if (problems.length > 0) throw new ConfigError(problems);
      return this.#applyConfig(next, by);
    } finally {
      this.#reloadingConfig = false;
    }
  }

  #reloadingConfig = false;

  #applyConfig(next: BerthConfig, by: { user: string; channel: AuditChannel }): ConfigReloadResult {
    const store = this.#store!;
    const result: ConfigReloadResult = { config: next.file, environment: next.environment, added: [], removed: [], reloaded: [], updated: [], unchanged: [], summary: '' };
    this.#config = next;
    this.#loggers.setLevels(next.logLevels);
    this.#api.setConfig(next);
    const reload: string[] = [];
    /** Apps whose reload trigger watcher must be replaced: removed, added, or its file renamed. */
    const retrigger = new Set<string>();
    for (const name of [...this.#apps.keys()]) {
      if (next.apps[name]) continue;
      this.#apps.delete(name);
      result.removed.push(name);
      retrigger.add(name);
    }
    for (const app of Object.values(next.apps)) {
      const rt = this.#apps.get(app.name);
      if (!rt) {
        const fresh = this.#newRuntime(app, store, null);
        this.#apps.set(app.name, fresh);
        result.added.push(app.name);
        retrigger.add(app.name);
        continue;
      }
      if (JSON.stringify(rt.config) === JSON.stringify(app)) {
        result.unchanged.push(app.name);
        continue;
      }
      const processesChanged = PROCESS_KEYS.some((k) => JSON.stringify(rt.config[k]) !== JSON.stringify(app[k]));
      if (rt.config.reloadTrigger !== app.reloadTrigger) retrigger.add(app.name);
      // The deployer reads the app's config when a reload starts: it must be the new one by then.
      rt.config = app;
      rt.releases = new ReleaseStore({ stateDir: next.stateDir, app, store, logger: this.#loggers.get('deploy') });
      if (processesChanged) reload.push(app.name);
      else result.updated.push(app.name);
    }
    this.#rebuildTable();
    this.#proxy.setConfig(next);
    for (const name of result.removed) void this.#retireApp(name);
    for (const name of result.added) {
      const rt = this.#apps.get(name)!;
      this.#boots.push(this.#restoreMode(rt).then(() => this.#bootApp(rt)));
    }
    for (const name of retrigger) {
      this.#triggers.get(name)?.stop();
      this.#triggers.delete(name);
      const rt = this.#apps.get(name);
      if (rt) this.#watchTrigger(rt);
    }
    for (const name of reload) result.reloaded.push({ app: name, deploy: this.#reloadForConfig(name, by) });
    this.#restartHealthFile();
    this.#scheduler?.setConfig(next);
    const parts = [
      result.reloaded.length ? `reloaded ${result.reloaded.map((r) => (r.deploy ? `${r.app} (${r.deploy})` : r.app)).join(', ')}` : '',
      result.added.length ? `added ${result.added.join(', ')}` : '',
      result.removed.length ? `removed ${result.removed.join(', ')}` : '',
      result.updated.length ? `updated ${result.updated.join(', ')}` : '',
    ].filter(Boolean);
    result.summary = parts.length ? parts.join('; ') : 'no app changed';
    this.#log.info({ added: result.added, removed: result.removed, reloaded: result.reloaded, updated: result.updated }, 'config reloaded');
    return result;
  }

  async #restoreMode(rt: AppRuntime): Promise<void> {
    const saved = await this.#store?.getAppState(rt.config.name).catch(() => null);
    if (saved) {
      rt.mode = { mode: saved.mode, message: saved.modeMessage, retryAfter: saved.modeRetryAfter };
      this.#rebuildTable();
    }
  }

  /**
   * Starts the zero-downtime reload of an app whose process definition changed, audited as a reload by
   * whoever reloaded the config. Returns the deploy id, or null when it waits for a running deploy (or
   * the app's boot) to end first; an app that failed to boot boots again instead.
   */
  #reloadForConfig(name: string, by: { user: string; channel: AuditChannel }): string | null {
    const rt = this.#apps.get(name)!;
    if (rt.phase === 'failed' || (!rt.active && !rt.booting)) {
      rt.phase = 'booting';
      rt.error = null;
      // The front door says "starting" again, not "failed to start", while it boots.
      this.#rebuildTable();
      this.#boots.push(this.#bootApp(rt));
      return null;
    }
    const config = rt.config;
    const attempt = (): Deploy | null => {
      if (this.#state !== 'running' || this.#apps.get(name)?.config !== config) return null;
      try {
        return this.deployer.begin(name, { kind: 'reload', user: by.user });
      } catch (err) {
        if (err instanceof BerthError && err.code === ErrorCodes.conflict) return null;
        throw err;
      }
    };
    const audited = (d: Deploy) => {
      void this.audit.begin({ user: by.user, channel: by.channel, action: 'reload', app: name, target: d.id, detail: 'config reload' }).then(async (id) => {
        await d.done;
        await this.audit.finish(id, d.state === 'succeeded' ? 'ok' : 'failed', d.state === 'succeeded' ? `${d.id}: release ${d.releaseId}` : `${d.id}: ${d.error ?? d.state}`);
      });
      return d.id;
    };
    const now = attempt();
    if (now) return audited(now);
    // Busy (a deploy runs, or the app still boots): reload once it is free, with the config of this reload.
    void (async () => {
      while (this.#state === 'running' && this.#apps.get(name)?.config === config) {
        await Promise.race([this.#deployer?.running(name)?.done, new Promise((r) => setTimeout(r, 200))]);
        const d = attempt();
        if (d) {
          audited(d);
          this.#log.info({ app: name, deploy: d.id }, 'config reload: app reload started');
          return;
        }
      }
    })().catch((err) => this.#log.error({ app: name, err: errorMessage(err) }, 'config reload: app reload failed to start'));
    return null;
  }

  /** A removed app: out of the routing table already; its generations drain, then stop. */
  async #retireApp(name: string): Promise<void> {
    const log = this.#loggers.get('deploy').child({ app: name });
    await this.#deployer?.running(name)?.done;
    const gens = this.#supervisor.generations(name);
    await Promise.all(
      gens.map(async (gen) => {
        const deadline = Date.now() + gen.config.timeouts.drainMs;
        while (gen.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
        await this.#supervisor.stopGeneration(gen);
      }),
    ).catch((err) => log.error({ err: errorMessage(err) }, 'removed app did not stop cleanly'));
    log.info({ generations: gens.length }, 'removed app stopped');
  }

  /** SIGHUP: reload the config; problems are logged (and audited), never thrown. */
  async reloadConfigOnSignal(): Promise<void> {
    const id = await this.audit.begin({ user: 'SIGHUP', channel: 'internal', action: 'config-reload', app: null });
    try {
      const result = await this.reloadConfig({ user: 'SIGHUP', channel: 'internal' });
      await this.audit.finish(id, 'ok', result.summary);
    } catch (err) {
      const problems = err instanceof ConfigError ? err.problems : undefined;
      this.#log.error({ err: errorMessage(err), problems }, 'config reload refused; nothing changed');
      await this.audit.finish(id, err instanceof BerthError && err.code === ErrorCodes.conflict ? 'refused' : 'failed', errorMessage(err));
    }
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
    // First: no task may start, and running ones end, before the apps they run beside stop.
    let stopMs = 0;
    for (const app of Object.values(this.config.apps)) stopMs = Math.max(stopMs, app.timeouts.stopMs);
    await this.#scheduler?.stop(stopMs || 10_000).catch((err) => this.#log.error({ err: errorMessage(err) }, 'scheduler stop failed'));
    if (this.#healthTimer) clearInterval(this.#healthTimer);
    this.#healthTimer = null;
    for (const t of this.#triggers.values()) t.stop();
    this.#triggers.clear();
    await this.#deployer?.stop(0);
    await this.#proxy.stop(drainMs).catch((err) => this.#log.error({ err: errorMessage(err) }, 'proxy stop failed'));
    // Boots end quickly once the deployer is stopping (their commands are killed); never wait forever.
    await Promise.race([Promise.allSettled(this.#boots), new Promise((r) => setTimeout(r, 10_000).unref())]);
    await this.#supervisor.stop().catch((err) => this.#log.error({ err: errorMessage(err) }, 'supervisor stop failed'));
    // A deploy still running ends now (its command was killed, its generation stopped): it must record
    // its end, and its audit row its outcome, before the store closes; and no command may outlive us.
    await this.#deployer?.stop(DEPLOY_END_WAIT_MS);
    for (const rt of this.#apps.values()) {
      rt.active = null;
      if (rt.phase !== 'failed') rt.phase = 'stopped';
    }
    await this.#api.stop().catch((err) => this.#log.error({ err: errorMessage(err) }, 'api stop failed'));
    await this.#store?.close().catch((err) => this.#log.error({ err: errorMessage(err) }, 'store close failed'));
    await this.#lock?.release();
    this.#lock = null;
    this.metrics.stop();
  }

  /** Last resort: kill every app process group synchronously. */
  destroy(err?: Error): void {
    this.#scheduler?.destroy(err);
    this.#supervisor.destroy(err);
    this.#proxy.destroy(err);
    this.metrics.destroy(err);
  }
}

export type { InstanceSnapshot };
