/**
 * The composition root: builds every component from the config and owns the start/stop order.
 *
 * Start: store, then the front-door listeners (so the health lane answers at once), then the control
 * API, then every app in parallel. An app that fails to boot is reported in status and /ready and never
 * holds up the others. Stop: stop accepting and drain the front door, stop every app's processes, then
 * close the control API and the store.
 *
 * The parts live beside it: the apps and their boot (gateway/apps.ts), config reload
 * (gateway/config-reload.ts, planned by gateway/reload-plan.ts), status and history
 * (gateway/status.ts), the health file (gateway/health-file.ts) and orphan reaping
 * (supervisor/orphans.ts).
 */
import type { BerthConfig, AppConfig, ListenAddress, Mode } from './config/schema.ts';
import type { LoggerFactory, Logger } from './lib/logger.ts';
import { BerthError, errorMessage, ErrorCodes } from './lib/errors.ts';
import type { AuditChannel, DeployRecord, Store } from './store/store.ts';
import type { LoadOptions } from './config/load.ts';
import { GatewayCertificates } from './gateway/certificates.ts';
import type { CertificateRow } from './tls/types.ts';
import { openStore } from './store/open-store.ts';
import { Supervisor } from './supervisor/supervisor.ts';
import type { Generation, InstanceSnapshot, RestartInfo } from './supervisor/supervisor.ts';
import { SharedCells } from './lib/shared-cells.ts';
import { ProxyWorkers } from './proxy/proxy-workers.ts';
import { Proxy } from './proxy/server.ts';
import type { ModeState, RoutingTable } from './proxy/router.ts';
import { ApiServer } from './api/server.ts';
import { Deployer, type DeployHost, type DeployableApp } from './deploy/deployer.ts';
import { Audit, audited } from './api/audit.ts';
import { Scheduler, type TaskTarget } from './scheduler/scheduler.ts';
import { Metrics } from './metrics/metrics.ts';
import { isRoot, resolveAppUser, type AppUser } from './supervisor/app-user.ts';
import { secureStateDir } from './supervisor/state-access.ts';
import { StateLock } from './supervisor/state-lock.ts';
import { reapOrphans, recordProcessGroup, type ProcessGroupEvent } from './supervisor/orphans.ts';
import { finishInterruptedAudit } from './api/interrupted-audit.ts';
import type { Control, HistoryFilter } from './api/control.ts';
import type { AppStatus, ConfigReloadResult, FleetStatus, GatewayState, GatewayStatus, HistoryEntry, ReleaseList, ScaleResult } from './api/wire.ts';
import { Apps, warnSharedUser } from './gateway/apps.ts';
import { Scaling, type ScaleRequest } from './gateway/scaling.ts';
import { ConfigReload } from './gateway/config-reload.ts';
import { StatusReport } from './gateway/status.ts';
import { HealthFile } from './gateway/health-file.ts';
import { Fleet } from './fleet/fleet.ts';
import { FleetDeployLocks } from './fleet/deploy-locks.ts';
import { nodeName } from './fleet/node-name.ts';
import { AcmeSharing } from './fleet/acme-sharing.ts';
import { Flusher, type FlushRequest } from './flush/flusher.ts';
import { flushUrls } from './flush/flush-plan.ts';
import { manifestOf } from './flush/manifest.ts';
import type { CacheFlushConfig } from './config/schema.ts';
import { resolveProcesses } from './deploy/procfile.ts';
import { Predecessor, type UpgradeResult } from './upgrade/predecessor.ts';
import type { Successor } from './upgrade/successor.ts';
import { writePidFile } from './upgrade/pid-file.ts';

export { VERSION } from './lib/version.ts';
export type { AppPhase, AppStatus, ConfigReloadResult, GatewayState, GatewayStatus, HistoryEntry } from './api/wire.ts';
export type { InstanceSnapshot };

/**
 * At shutdown, how long a running deploy gets to end once its build or release command was told to
 * stop (the command runner sends SIGKILL 5s after SIGTERM) and its generations were stopped.
 */
const DEPLOY_END_WAIT_MS = 10_000;

export interface GatewayOptions {
  config: BerthConfig;
  loggers: LoggerFactory;
  /** Test hook: shrink restart backoff. Passed to the supervisor. */
  supervisorTiming?: ConstructorParameters<typeof Supervisor>[0]['timing'];
  /** How the config was found, so a config reload reads it the same way (default: its file and environment). */
  loadOptions?: LoadOptions;
  /** `berth start` was run by an upgrade: the gateway takes over from the old one (upgrade/successor.ts). */
  successor?: Successor | null;
  /** `berth start --pid-file`: written once the gateway serves (before an upgrade's old gateway exits). */
  pidFile?: string | null;
}

export class Gateway implements DeployHost, Control {
  #config: BerthConfig;
  #loggers: LoggerFactory;
  #log: Logger;
  #state: GatewayState = 'new';
  #store: Store | null = null;
  #proxy: Proxy;
  /** `proxy.workers` > 1: the worker threads beside the main thread's proxy. */
  #workers: ProxyWorkers | null = null;
  #table: RoutingTable | null = null;
  #api: ApiServer;
  #supervisor: Supervisor;
  #deployer: Deployer | null = null;
  /** Scheduled tasks, one-off runs and the cleanup job; made once the store is open. */
  #scheduler: Scheduler | null = null;
  /** The audit log: every change with who, how and the outcome. */
  readonly audit: Audit;
  /** Prometheus metrics: `GET /metrics` on the control API, and on the front door when public. */
  readonly metrics: Metrics;
  #apps: Apps;
  /** `berth scale`: instance counts changed live and kept in the store. */
  #scaling: Scaling;
  #report: StatusReport;
  #reload: ConfigReload;
  #healthFile: HealthFile;
  #stopping: Promise<void> | null = null;
  #onStopped: (() => void)[] = [];
  /** One gateway per state dir: held from the first step of start() to the last of stop(). */
  #lock: StateLock | null = null;
  /** Certificates and ACME, when a listener is TLS. */
  #certificates: GatewayCertificates | null = null;
  /** The fleet this gateway is a node of (PostgreSQL); on SQLite it only answers `GET /v1/fleet` for itself. */
  #fleet: Fleet | null = null;
  /** Cache flushes after deploys and by hand (flush/flusher.ts); made once the store is open. */
  #flusher: Flusher | null = null;
  /** `berth upgrade`, this gateway's side: hands everything to a new gateway (upgrade/predecessor.ts). */
  #predecessor: Predecessor;
  /** Set when this gateway was started by an upgrade, until it has taken over. */
  #successor: Successor | null;
  /**
   * Whether the app instances are this gateway's to kill at a forced exit: not before an upgrade's new
   * gateway has taken them over, nor after this one handed them over.
   */
  #ownsInstances: boolean;
  #pidFile: string | null;

  constructor(opts: GatewayOptions) {
    this.#config = opts.config;
    this.#loggers = opts.loggers;
    this.#log = opts.loggers.get('root');
    // One set of counters for instances and pools, which every proxy thread reads and counts into.
    const cells = new SharedCells();
    const threads = opts.config.proxy.workers > 1;
    this.#proxy = new Proxy({ config: opts.config, logger: opts.loggers.get('proxy'), cells, reusePort: threads });
    this.#supervisor = new Supervisor({
      cells,
      stateDir: opts.config.stateDir,
      logger: opts.loggers.get('supervisor'),
      timing: opts.supervisorTiming,
      appUser: this.#appUser,
      onProcess: this.#recordProcess,
      onRestart: (info) => this.#recordRestart(info),
    });
    this.audit = new Audit(() => this.#store, opts.loggers.get('api'));
    this.metrics = new Metrics(
      {
        pools: () => this.#proxy.admissions(),
        instances: () => this.#supervisor.generations().flatMap((g) => g.instances),
        certificates: () => this.#certificates?.expiry() ?? [],
      },
      opts.loggers.get('root'),
    );
    this.#proxy.setMetrics(this.metrics);
    if (threads) {
      this.#workers = new ProxyWorkers({ main: this.#proxy, config: opts.config, cells, logger: opts.loggers.get('proxy'), logs: opts.loggers, metrics: this.metrics });
    }
    this.#api = new ApiServer({ gateway: this, config: opts.config, logger: opts.loggers.get('api') });
    this.#healthFile = new HealthFile(this.#log);
    const live = { state: () => this.#state, config: () => this.#config, store: () => this.#store, deployer: () => this.#deployer, held: () => this.held() };
    const setTable = (table: RoutingTable) => {
      this.#table = table;
      this.#proxy.setTable(table);
      this.#workers?.setTable(table);
    };
    const loggers = opts.loggers;
    const audit = this.audit;
    const supervisor = this.#supervisor;
    this.#apps = new Apps({ live, loggers, supervisor, setTable, audit, appUser: this.#appUser });
    this.#scaling = new Scaling({ live, apps: this.#apps, logger: loggers.get('supervisor') });
    const controlListen = () => this.#api.tcpAddress()?.text ?? null;
    const certificates = () => this.certificates();
    const proxyThreads = () => this.#workers?.running ?? 1;
    this.#report = new StatusReport({ live, apps: this.#apps, supervisor, proxy: this.#proxy, audit, controlListen, certificates, proxyThreads });
    const loadOptions = opts.loadOptions ?? { configPath: opts.config.file, env: opts.config.environment ?? undefined };
    const prepare = async (next: BerthConfig) => this.#certificates?.configure(next);
    this.#reload = new ConfigReload({ live, loadOptions, apps: this.#apps, supervisor, audit, loggers, prepare, useConfig: (next) => this.#useConfig(next) });
    this.#successor = opts.successor ?? null;
    this.#ownsInstances = this.#successor === null;
    this.#pidFile = opts.pidFile ?? null;
    this.#predecessor = new Predecessor({
      state: () => this.#state,
      config: () => this.#config,
      loadOptions,
      busy: () => this.#busy(),
      activeGenerations: () => this.#activeGenerations(),
      supervisor,
      listeningSockets: () => {
        const control = this.#api.listeningSockets();
        return { front: this.#proxy.listeningSockets(), control: control.socket, controlTcp: control.tcp };
      },
      releaseLock: async () => {
        await this.#lock?.release();
        this.#lock = null;
      },
      retakeLock: async () => {
        this.#lock = await StateLock.acquire(this.config.stateDir, this.config.control.socket, { successor: true });
      },
      catchUp: (since) => this.#scheduler?.catchUp(since),
      retire: () => void this.#retire(),
      logger: loggers.get('root').child({ component: 'upgrade' }),
    });
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

  /** The proxy's worker threads (`proxy.workers` > 1); null with the main thread alone. */
  get proxyWorkers(): ProxyWorkers | null {
    return this.#workers;
  }

  get supervisor(): Supervisor {
    return this.#supervisor;
  }

  /** The deployer: deploys, rollbacks and reloads. Throws before start(). */
  get deployer(): Deployer {
    if (!this.#deployer) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return this.#deployer;
  }

  /** The scheduler: scheduled tasks, one-off runs and the cleanup job. Throws before start(). */
  get scheduler(): Scheduler {
    if (!this.#scheduler) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return this.#scheduler;
  }

  #transition(next: GatewayState): void {
    this.#log.info({ state: next, was: this.#state }, 'gateway state');
    this.#state = next;
  }

  /**
   * Binds listeners and the control socket, then boots every app in the background. Resolves once the
   * gateway answers on its listeners; `whenAppsBooted()` waits for the apps. Rejects (after undoing what
   * it did) when the store cannot open or a listener cannot bind.
   */
  async start(): Promise<void> {
    if (this.#state !== 'new') throw new BerthError(ErrorCodes.internal, `gateway already ${this.#state}`);
    this.#transition('starting');
    const successor = this.#successor;
    // Before anything is touched: another live gateway's processes would look like orphans to reap.
    // Refused, this start undoes nothing, so the live gateway never notices. (An upgrade's new gateway
    // takes the lock from the old one once it has taken over.)
    if (successor === null) {
      this.#lock = await StateLock.acquire(this.config.stateDir, this.config.control.socket).catch((err) => {
        this.#transition('stopped');
        throw err;
      });
    }
    try {
      await secureStateDir(this.config.stateDir, { root: isRoot(), socketGroup: this.config.control.socketGroup });
      warnSharedUser(this.config, this.#log);
      const store = await openStore(this.config, this.#loggers.get('store'), nodeName(this.config));
      this.#store = store;
      const saved = new Map((await store.listAppStates()).map((s) => [s.app, s]));
      for (const app of Object.values(this.config.apps)) this.#apps.set(this.#apps.create(app, saved.get(app.name)));
      // On PostgreSQL this gateway is a fleet node: its deploys take fleet-wide locks, and it follows the fleet.
      const inFleet = this.config.database !== null;
      const fleetLog = this.#loggers.get('fleet');
      const locks = inFleet ? new FleetDeployLocks(store, () => this.#config.nodeTimeoutMs, fleetLog) : undefined;
      this.#deployer = new Deployer({ host: this, store, supervisor: this.#supervisor, logger: this.#loggers.get('deploy'), stateDir: this.config.stateDir, appUser: this.#appUser, locks });
      const fleetHost = { appNames: () => this.#apps.names(), app: (name: string) => this.#apps.get(name), applyMode: this.#apps.applyMode.bind(this.#apps), applyScale: (app: string | null) => this.#scaling.follow(app), deployer: () => this.#deployer };
      // Other nodes' certificates and challenge answers reach this node's ACME manager (made below).
      const acme = () => this.#certificates?.frontDoor.acme ?? null;
      const onCertificate = (host: string) => void acme()?.certificateChanged(host);
      const onChallenge = (key: string) => void acme()?.challengeChanged(key);
      const onReconnect = () => void acme()?.loadShared();
      const fleetLocks = locks ?? new FleetDeployLocks(store, () => this.#config.nodeTimeoutMs, fleetLog);
      this.#fleet = new Fleet({ store, config: () => this.#config, host: fleetHost, locks: fleetLocks, audit: this.audit, logger: fleetLog, onCertificate, onChallenge, onReconnect });
      // Heartbeating before this node takes any fleet lock (first deploys, ACME orders): a lock whose node
      // has no heartbeat counts as free.
      if (inFleet && successor === null) await this.#fleet.start();
      await this.#deployer.recoverInterrupted();
      const scheduling = { audit: this.audit, logger: this.#loggers.get('scheduler'), appUser: this.#appUser, onProcess: this.#recordProcess };
      this.#flusher = new Flusher({ store, config: () => this.#config, audit: this.audit, logger: this.#loggers.get('deploy').child({ component: 'cache-flush' }), onUrls: (app, outcome, n) => this.metrics.cacheFlushed(app, outcome, n) });
      const claim = inFleet ? (key: string) => store.claimOnce(key) : undefined;
      this.#scheduler = new Scheduler({ config: this.config, store, host: this, ...scheduling, claim });
      await this.#scheduler.recoverInterrupted();
      // After both, so that the rows can name the deploys and runs just marked interrupted. Not at an
      // upgrade: the old gateway is alive, its audit rows and process groups are its own or handed over.
      if (successor === null) {
        await finishInterruptedAudit(store, this.#loggers.get('api'));
        await reapOrphans(store, this.#log);
      }
      this.#apps.rebuildTable();
      // Proxy worker threads serve ACME certificates and answer its challenges too: they get every change.
      const workers = this.#workers;
      const threadHooks = workers === null ? {} : { onHttpTokens: workers.setChallenges, onManaged: workers.setManaged, onAlpnChallenge: workers.setAlpnChallenge };
      const hooks = { ...threadHooks, fleet: inFleet ? new AcmeSharing(store, () => this.#config.nodeTimeoutMs) : null };
      this.#certificates = await GatewayCertificates.open(this.config, store, this.#loggers.get('tls'), hooks);
      await this.#certificates?.frontDoor.acme?.loadShared();
      this.metrics.start();
      if (successor !== null) await this.#takeOver(successor, inFleet);
      else {
        await this.#proxy.start(this.#certificates?.frontDoor ?? null);
        await this.#workers?.start(this.#table ?? this.#proxy.table, this.#certificates?.frontDoor ?? null);
        await this.#api.start();
      }
      if (this.#pidFile !== null) await writePidFile(this.#pidFile);
    } catch (err) {
      if (successor !== null && !this.#ownsInstances) {
        // The old gateway keeps every instance: none of them is stopped here.
        this.#supervisor.release();
        await successor.failed(errorMessage(err));
      }
      await this.#teardown();
      this.#transition('stopped');
      throw err;
    }
    this.#transition('running');
    if (successor !== null) {
      this.#successor = null;
      await successor.committed().catch((err) => this.#log.warn({ err: errorMessage(err) }, 'upgrade: cannot tell the old gateway; it stops once it sees this one serve'));
      this.#log.info({ from: successor.from }, 'upgrade: took over from the old gateway');
    }
    void this.#flusher?.start();
    this.#log.info({ listen: this.#proxy.addresses().map((a) => a.text), control: this.config.control.socket }, 'gateway listening');
    this.#healthFile.start(this.config.healthFile);
    for (const name of this.#apps.names()) {
      // An app whose generation an upgrade handed over serves already.
      const rt = this.#apps.get(name)!;
      if (rt.active === null) this.#apps.boot(rt);
      this.#apps.watchTrigger(name);
    }
    // Scheduled runs need the apps' active releases: the scheduler starts once every app has booted.
    // After an upgrade, the runs that came due while the old gateway held them back run at once.
    const since = successor?.heldSince;
    void this.#apps.bootsSettled().then(() => {
      if (this.#state === 'running') this.#scheduler?.start({ since });
    });
  }

  // ---- upgrade -------------------------------------------------------------------------------------

  /**
   * The new gateway's side of an upgrade, in place of binding listeners: adopts the generations the old
   * gateway hands over, answers `ready` through a private probe listener, then serves the listening
   * sockets it is handed at the commit and takes the state lock (upgrade/successor.ts).
   */
  async #takeOver(successor: Successor, inFleet: boolean): Promise<void> {
    const state = await successor.receiveState();
    for (const g of state.generations) {
      const rt = this.#apps.get(g.app);
      if (!rt) throw new BerthError(ErrorCodes.upgrade, `the old gateway runs app ${g.app}, which this config does not have`);
      const { processes } = await resolveProcesses(rt.config, g.releaseDir);
      const counted = Object.fromEntries(Object.entries(processes).map(([name, p]) => [name, { ...p, instances: g.counts[name] ?? p.instances }]));
      rt.active = this.#supervisor.adoptGeneration(rt.config, g, counted, successor.instancesOf(g));
      rt.phase = 'serving';
    }
    this.#apps.rebuildTable();
    const tls = this.#certificates?.frontDoor ?? null;
    await this.#proxy.start(tls, { addresses: [{ kind: 'tcp', host: '127.0.0.1', port: 0, text: '127.0.0.1:0', tls: false }] });
    const probe = this.#proxy.addresses()[0] as ListenAddress & { kind: 'tcp' };
    const handed = await successor.ready({ host: probe.host, port: probe.port });
    this.#lock = await StateLock.acquire(this.config.stateDir, this.config.control.socket, { successor: true });
    this.#ownsInstances = true;
    await this.#proxy.adoptListeners(handed.front);
    await this.#workers?.start(this.#table ?? this.#proxy.table, tls);
    await this.#api.adopt({ socket: handed.control, tcp: handed.controlTcp });
    successor.serve();
    if (inFleet) await this.#fleet?.start({ predecessor: successor.from });
  }

  /** What runs that an upgrade cannot hand over, in words: it waits for these to end. */
  #busy(): string[] {
    const out: string[] = [];
    const active = this.#activeGenerations();
    for (const name of this.#apps.names()) {
      if (this.#apps.get(name)?.booting) out.push(`the boot of ${name}`);
      const d = this.#deployer?.running(name);
      if (d) out.push(`${d.kind} ${d.id} of ${name}`);
    }
    for (const gen of this.#supervisor.generations()) if (!active.includes(gen)) out.push(`generation ${gen.id} (${gen.state})`);
    for (const run of this.#scheduler?.running() ?? []) out.push(`task run ${run.id} (${run.app ?? 'cleanup'} ${run.task})`);
    return out;
  }

  #activeGenerations(): Generation[] {
    return this.#apps.names().flatMap((name) => this.#apps.get(name)?.active ?? []);
  }

  /** The new gateway of an upgrade serves now: this one stops accepting, leaves the instances to it, drains and exits. */
  async #retire(): Promise<void> {
    this.#ownsInstances = false;
    this.#supervisor.release();
    this.#api.stopAccepting();
    this.#proxy.stopAccepting();
    this.#stopping ??= (async () => {
      this.#transition('stopping');
      let drainMs = 0;
      for (const app of Object.values(this.config.apps)) drainMs = Math.max(drainMs, app.timeouts.drainMs);
      await this.#teardown(drainMs || 30_000, true);
      this.#transition('stopped');
      for (const fn of this.#onStopped) fn();
    })();
  }

  /** Why no change may start now (an upgrade is under way), or null: the API, deployer, scheduler and config reload ask. */
  held = (): string | null => this.#predecessor.held;

  /**
   * `berth upgrade`: starts a new gateway from the installed code and hands it the listeners and the
   * apps (upgrade/predecessor.ts). Resolves once the new one serves; this one then drains and exits.
   * Throws, with this gateway serving on, when it cannot.
   */
  upgrade = (opts: { waitMs?: number } = {}): Promise<UpgradeResult> => this.#predecessor.run(opts);

  /** SIGUSR2: an upgrade, audited; its outcome is logged, never thrown. */
  upgradeOnSignal = async (): Promise<void> => {
    const started = { user: 'SIGUSR2', channel: 'internal' as const, action: 'upgrade', app: null };
    await audited(this.audit, started, () => this.upgrade(), (r) => ({ outcome: 'ok', detail: `pid ${r.from.pid} (${r.from.version}) -> pid ${r.to.pid} (${r.to.version})` })).catch((err) => {
      this.#log.error({ err: errorMessage(err) }, 'upgrade failed; this gateway serves on');
    });
  };

  /**
   * Who every process of an app runs as (app-user.ts), with the config in effect: read at each spawn,
   * so a config reload's `default_user` applies to the next one. Throws for an unknown user or group.
   */
  #appUser = (app: AppConfig): AppUser => resolveAppUser(app, this.#config.defaultUser);

  /** Every app and task process group goes into the store, so the next start can reap it if this gateway dies. */
  #recordProcess = (event: 'spawn' | 'exit', info: ProcessGroupEvent): void => {
    if (this.#store) recordProcessGroup(this.#store, event, info, this.#log);
  };

  /** An instance ended on its own (or went silent) and is restarted: into the audit log, so history shows why. */
  #recordRestart(info: RestartInfo): void {
    const detail = info.delayMs === null ? `${info.detail}; crashed, not restarted` : info.detail;
    void this.audit.record({ user: 'supervisor', channel: 'internal', action: 'restart', app: info.app, target: `${info.process}.${info.index}`, outcome: info.delayMs === null ? 'failed' : 'ok', detail });
  }

  /** A config reload's new config, to every component that reads it live. */
  #useConfig(next: BerthConfig): void {
    this.#config = next;
    this.#loggers.setLevels(next.logLevels);
    this.#api.setConfig(next);
    this.#proxy.setConfig(next);
    this.#workers?.setConfig(next);
    this.#healthFile.start(next.healthFile);
    this.#scheduler?.setConfig(next);
    this.#certificates?.ensure(next);
  }

  // ---- DeployHost, SchedulerHost and Control: the apps, status and config reload answer ----------

  deployable = (app: string): DeployableApp | undefined => this.#apps.get(app);
  switchTo = (app: string, gen: Generation): void => this.#apps.switchTo(app, gen);
  drained = (app: string, gen: Generation): void => this.#apps.drained(app, gen);
  reloaded = (app: string, reloads: number): void => this.#apps.reloaded(app, reloads);
  /** DeployHost: a deploy's `flush` step queues its flush here. */
  flush = async (req: FlushRequest, config: CacheFlushConfig): Promise<string> => {
    if (!this.#flusher) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return (await this.#flusher.enqueue(req, config)).id;
  };

  flushApp = async (name: string, paths: string[] | null, user: string): Promise<{ id: string; urls: number }> => {
    const rt = this.#apps.get(name);
    if (!rt) throw new BerthError(ErrorCodes.notFound, `no app named "${name}"`);
    const config = rt.config.cacheFlush;
    if (!config) throw new BerthError(ErrorCodes.conflict, `app ${name} has no cache_flush config`);
    let all = paths;
    if (all === null) {
      const gen = rt.active;
      if (!gen) throw new BerthError(ErrorCodes.conflict, `app ${name} serves no release: name the paths to flush`);
      all = [...Object.keys(await manifestOf(rt.config, rt.releases.appDir, gen.releaseId, gen.releaseDir)), ...config.paths];
    }
    const urls = flushUrls(rt.config, config, [...new Set(all)]);
    if (urls.length === 0) throw new BerthError(ErrorCodes.conflict, `no URL comes of those paths: no enabled rule of ${name} takes them (enabled: ${config.enable.join(', ') || 'none'})`);
    return { id: await this.flush({ app: name, deployId: null, urls, user }, config), urls: urls.length };
  };
  /** The drain deadline passed with WebSockets open on `gen`; they get close 1001. */
  closeUpgrades = (gen: Generation): number => this.#workers?.closeUpgrades(gen) ?? this.#proxy.closeUpgrades(gen);
  taskTarget = (app: string): TaskTarget | undefined => this.#apps.taskTarget(app);
  /** Resolves when every app has either become ready, failed to boot, or failed to get ready. */
  whenAppsBooted = (): Promise<void> => this.#apps.whenBooted();
  status = (): GatewayStatus => ({ ...this.#report.status(), node: this.#fleet?.node ?? nodeName(this.#config) });
  appStatus = (name: string): AppStatus | null => this.#report.appStatus(name);
  appNames = (): string[] => this.#apps.names();
  releases = (name: string): Promise<ReleaseList> => this.#report.releases(name);
  deploys = (name: string): Promise<DeployRecord[]> => this.#report.deploys(name);
  history = (filter: HistoryFilter): Promise<HistoryEntry[]> => this.#report.history(filter);
  routes = (): ReturnType<RoutingTable['describe']> => this.#report.routes();
  /** `GET /v1/fleet` (fleet/fleet.ts). */
  fleet = (): Promise<FleetStatus> => {
    if (!this.#fleet) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return this.#fleet.status();
  };
  /** Every certificate the TLS listeners serve (empty without one): `berth certs`. */
  certificates = (): CertificateRow[] => this.#certificates?.describe() ?? [];
  /** Re-reads and applies the config (gateway/config-reload.ts); throws ConfigError and changes nothing when refused. */
  reloadConfig = (by: { user: string; channel: AuditChannel }): Promise<ConfigReloadResult> => this.#reload.reload(by);
  /** SIGHUP: reload the config; problems are logged (and audited), never thrown. */
  reloadConfigOnSignal = (): Promise<void> => this.#reload.onSignal();

  /** Switches an app's mode live (SPEC § Modes; gateway/apps.ts). */
  setMode = (app: string, mode: Mode, opts: { message?: string | null; retryAfter?: number | null } = {}, ctx?: { user: string }): Promise<ModeState> => this.#apps.setMode(app, mode, opts, ctx?.user ?? null);
  /** `berth scale`: changes an app's instance counts live and keeps them (gateway/scaling.ts). */
  scaleApp = (app: string, request: ScaleRequest, user: string): Promise<ScaleResult> => this.#scaling.scale(app, request, user);

  // ---- stop --------------------------------------------------------------------------------------

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

  /** `handedOver`: an upgrade's new gateway has taken over; what is its own now is left to it. */
  async #teardown(drainMs = 0, handedOver = false): Promise<void> {
    const fail = (what: string) => (err: unknown) => this.#log.error({ err: errorMessage(err) }, `${what} failed`);
    // First: no task may start, and running ones end, before the apps they run beside stop.
    let stopMs = 0;
    for (const app of Object.values(this.config.apps)) stopMs = Math.max(stopMs, app.timeouts.stopMs);
    await this.#scheduler?.stop(stopMs || 10_000).catch(fail('scheduler stop'));
    this.#healthFile.stop();
    this.#apps.stopTriggers();
    await this.#deployer?.stop(0);
    await this.#flusher?.stop().catch(fail('cache flush stop'));
    await Promise.all([this.#proxy.stop(drainMs, { drainWebSockets: handedOver }).catch(fail('proxy stop')), this.#workers?.stop(drainMs).catch(fail('proxy workers stop'))]);
    await this.#certificates?.stop().catch(fail('certificates stop'));
    // Boots end quickly once the deployer is stopping (their commands are killed); never wait forever.
    await Promise.race([this.#apps.bootsSettled(), new Promise((r) => setTimeout(r, 10_000).unref())]);
    await this.#supervisor.stop().catch(fail('supervisor stop'));
    // A deploy still running ends now (its command was killed, its generation stopped): it must record
    // its end, and its audit row its outcome, before the store closes; and no command may outlive us.
    await this.#deployer?.stop(DEPLOY_END_WAIT_MS);
    // Only now is this node's row `stopped` (its locks free): no deploy of it writes the fleet's state any more.
    await this.#fleet?.stop({ handedOver }).catch(fail('fleet stop'));
    this.#apps.markStopped();
    await this.#api.stop().catch(fail('api stop'));
    await this.#store?.close().catch(fail('store close'));
    await this.#lock?.release();
    this.#lock = null;
    this.metrics.stop();
  }

  /** Last resort: kill every app process group synchronously. */
  destroy(err?: Error): void {
    this.#scheduler?.destroy(err);
    // Instances an upgrade hands over (either way) are not this gateway's to kill.
    if (this.#ownsInstances) this.#supervisor.destroy(err);
    else this.#supervisor.release();
    this.#proxy.destroy(err);
    this.#workers?.destroy();
    this.metrics.destroy(err);
  }
}
