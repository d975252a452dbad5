/**
 * The apps a gateway holds: each one's config, phase, active generation and mode, the routing table
 * they make together, their boot, their reload trigger watchers and their mode switches. The gateway
 * composes this with the proxy, supervisor and deployer; a config reload adds, changes and removes apps
 * through it.
 */
import type { AppConfig, BerthConfig, Mode } from '../config/schema.ts';
import type { Logger, LoggerFactory } from '../lib/logger.ts';
import { BerthError, errorMessage, ErrorCodes } from '../lib/errors.ts';
import { redactText } from '../lib/redact.ts';
import type { AppState, ScaleOverride, Store } from '../store/store.ts';
import type { ScaleCounts } from '../deploy/scale.ts';
import { ReleaseStore } from '../deploy/release-store.ts';
import { resolveProcesses } from '../deploy/procfile.ts';
import { ReloadTrigger } from '../deploy/reload-trigger.ts';
import type { Deploy, Deployer, DeployableApp } from '../deploy/deployer.ts';
import { FLEET_USER, followRequest } from '../fleet/convergence.ts';
import type { Generation, Supervisor } from '../supervisor/supervisor.ts';
import { isRoot, type AppUser } from '../supervisor/app-user.ts';
import { DEFAULT_PERMISSIONS_ENVIRONMENT } from '../api/auth.ts';
import { prepareAppDirs } from '../supervisor/state-access.ts';
import { RoutingTable, type AppEntry, type ModeState } from '../proxy/router.ts';
import type { TaskTarget } from '../scheduler/scheduler.ts';
import { audited, deployEnd, type AuditWriter } from '../api/audit.ts';
import type { AppPhase, GatewayState } from '../api/wire.ts';

/** How long a node waits between looks while another node of the fleet makes an app's first release. */
const FIRST_DEPLOY_WAIT_MS = 1_000;

export interface AppRuntime extends DeployableApp {
  config: AppConfig;
  phase: AppPhase;
  /** Why the app is not serving, when it failed to boot. */
  error: string | null;
  releases: ReleaseStore;
  active: Generation | null;
  /** Generations switched away from whose drain is not over: affinity cookies may still lead there. */
  draining: Generation[];
  mode: ModeState;
  /** The fleet's reload count this node has applied (fleet/fleet.ts). */
  reloads: number;
  readonly booting: boolean;
  /** `berth scale` overrides of the app, by process type (from the store at boot; gateway/scaling.ts). */
  overrides: readonly ScaleOverride[];
  /** The overrides' counts, by process type: what every generation of the app starts. */
  readonly scale: ScaleCounts;
}

/** What the gateway's parts read of it as it changes: its state, the config in effect, and what start() made. */
export interface GatewayLive {
  state(): GatewayState;
  config(): BerthConfig;
  /** Null before start() opened it. */
  store(): Store | null;
  /** Null before start() made it. */
  deployer(): Deployer | null;
  /** Why no change may start now (an upgrade hands the gateway over), or null. */
  held?(): string | null;
}

export interface AppsOptions {
  live: GatewayLive;
  loggers: LoggerFactory;
  supervisor: Supervisor;
  /** Where the routing table goes: the proxy. */
  setTable(table: RoutingTable): void;
  audit: AuditWriter;
  /** Who an app's processes run as, with the config in effect (throws for an unknown user or group). */
  appUser(app: AppConfig): AppUser;
}

export class Apps {
  #opts: AppsOptions;
  #log: Logger;
  #apps = new Map<string, AppRuntime>();
  /** App name -> its reload trigger watcher. */
  #triggers = new Map<string, ReloadTrigger>();
  #boots: Promise<void>[] = [];
  #readies: Promise<void>[] = [];
  /** Mode switches, one after another, so the store and the routing table always agree on the last. */
  #modeSwitches: Promise<unknown> = Promise.resolve();

  constructor(opts: AppsOptions) {
    this.#opts = opts;
    this.#log = opts.loggers.get('root');
  }

  get(name: string): AppRuntime | undefined {
    return this.#apps.get(name);
  }

  /** The names of the apps, in config order. */
  names(): string[] {
    return [...this.#apps.keys()];
  }

  /** An app as the gateway holds it, before it boots; its mode comes from the store. */
  create(app: AppConfig, saved: AppState | null | undefined): AppRuntime {
    return {
      config: app,
      get booting() {
        return this.phase === 'booting';
      },
      phase: 'booting',
      error: null,
      releases: this.releasesOf(app),
      active: null,
      draining: [],
      mode: { mode: saved?.mode ?? 'normal', message: saved?.modeMessage ?? null, retryAfter: saved?.modeRetryAfter ?? null },
      reloads: saved?.reloads ?? 0,
      overrides: [],
      get scale() {
        return Object.fromEntries(this.overrides.map((o) => [o.process, o.instances]));
      },
    };
  }

  releasesOf(app: AppConfig): ReleaseStore {
    return new ReleaseStore({ stateDir: this.#opts.live.config().stateDir, app, store: this.#store(), logger: this.#opts.loggers.get('deploy') });
  }

  #store(): Store {
    const store = this.#opts.live.store();
    if (!store) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return store;
  }

  #deployer(): Deployer {
    const deployer = this.#opts.live.deployer();
    if (!deployer) throw new BerthError(ErrorCodes.unavailable, 'the gateway is not started');
    return deployer;
  }

  set(rt: AppRuntime): void {
    this.#apps.set(rt.config.name, rt);
  }

  delete(name: string): void {
    this.#apps.delete(name);
  }

  rebuildTable(): void {
    const entries: AppEntry[] = [];
    for (const rt of this.#apps.values()) {
      // The 503 reason while there is no generation is settled here, so a request only reads it. The
      // health rule reads it too (proxy/health-lane.ts): an app that failed to boot is marked so.
      const noGeneration = rt.phase === 'failed' ? 'start-failed' : 'no-active-generation';
      const entry: AppEntry = { name: rt.config.name, config: rt.config, generation: rt.active, mode: rt.mode, noGeneration };
      entries.push(rt.draining.length === 0 ? entry : { ...entry, draining: rt.draining.slice() });
    }
    this.#opts.setTable(new RoutingTable(entries));
  }

  /**
   * DeployHost: one pointer swap. Requests that arrived earlier keep the generation they pinned; the
   * one switched away from drains, and requests whose affinity cookie names one of its instances still
   * go there until `drained` says its drain is over.
   */
  switchTo(app: string, gen: Generation): void {
    const rt = this.#apps.get(app);
    if (!rt) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
    if (rt.active !== null && rt.active !== gen && !rt.draining.includes(rt.active)) rt.draining.push(rt.active);
    rt.draining = rt.draining.filter((g) => g !== gen);
    rt.active = gen;
    rt.phase = 'serving';
    rt.error = null;
    this.rebuildTable();
  }

  /** DeployHost: the drain of `gen` is over (idle, or its deadline passed): no request goes there any more. */
  drained(app: string, gen: Generation): void {
    const rt = this.#apps.get(app);
    if (!rt || !rt.draining.includes(gen)) return;
    rt.draining = rt.draining.filter((g) => g !== gen);
    this.rebuildTable();
  }

  /** SchedulerHost: where an app's tasks run (its active generation's release), or undefined for no such app. */
  taskTarget(app: string): TaskTarget | undefined {
    const rt = this.#apps.get(app);
    if (!rt) return undefined;
    const gen = rt.active;
    return { config: rt.config, releases: rt.releases, active: gen ? { id: gen.releaseId, dir: gen.releaseDir, processes: gen.processes } : null };
  }

  /**
   * Switches an app's mode live. It is saved in the store first (so it survives a restart), then the
   * routing table is rebuilt: it applies from the next request on, and requests in flight keep the mode
   * they arrived under (their table entry holds the old mode object). `normal` clears message and
   * retryAfter. 404 for an unknown app; the store refuses a bad mode or retryAfter (400).
   */
  setMode(app: string, mode: Mode, opts: { message?: string | null; retryAfter?: number | null }, user: string | null): Promise<ModeState> {
    const run = this.#modeSwitches.then(async () => {
      const rt = this.#apps.get(app);
      if (!rt) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
      const state = this.#opts.live.state();
      const store = this.#opts.live.store();
      if (!store || (state !== 'running' && state !== 'starting')) throw new BerthError(ErrorCodes.unavailable, `the gateway is ${state}`);
      const next: ModeState = mode === 'normal' ? { mode, message: null, retryAfter: null } : { mode, message: opts.message ?? null, retryAfter: opts.retryAfter ?? null };
      await store.setMode(app, mode, next.message, next.retryAfter);
      const was = rt.mode.mode;
      rt.mode = next;
      this.rebuildTable();
      this.#log.info({ app, mode, was, user }, 'mode switched');
      return next;
    });
    this.#modeSwitches = run.catch(() => {});
    return run;
  }

  /**
   * Shows a mode the fleet switched to on another node: from the next request on, as `setMode` does,
   * without writing the store (the fleet's row says it already). Queued behind local switches.
   */
  applyMode(app: string, read: () => Promise<ModeState | null>): void {
    // Read in turn, after any local switch queued before: the store's latest, never an older one.
    this.#modeSwitches = this.#modeSwitches.then(async () => {
      const mode = await read().catch(() => null);
      const rt = this.#apps.get(app);
      if (!rt || mode === null) return;
      if (rt.mode.mode === mode.mode && rt.mode.message === mode.message && rt.mode.retryAfter === mode.retryAfter) return;
      rt.mode = mode;
      this.rebuildTable();
      this.#log.info({ app, mode: mode.mode }, 'mode follows the fleet');
    });
  }

  /** DeployHost: a reload (or a follow of the fleet) brought the app to the fleet's reload count. */
  reloaded(app: string, reloads: number): void {
    const rt = this.#apps.get(app);
    if (rt) rt.reloads = Math.max(rt.reloads, reloads);
  }

  /** A new app's mode, as the store remembers it from an earlier life of the app. */
  async restoreMode(rt: AppRuntime): Promise<void> {
    const saved = await this.#store().getAppState(rt.config.name).catch(() => null);
    if (saved) {
      rt.mode = { mode: saved.mode, message: saved.modeMessage, retryAfter: saved.modeRetryAfter };
      rt.reloads = saved.reloads;
      this.rebuildTable();
    }
  }

  // ---- boot ------------------------------------------------------------------------------------

  /** Boots the app in the background (see #boot); `whenBooted` waits for it. */
  boot(rt: AppRuntime, after?: Promise<void>): void {
    this.#boots.push(after ? after.then(() => this.#boot(rt)) : this.#boot(rt));
  }

  /** Resolves when every app has either become ready, failed to boot, or failed to get ready. */
  async whenBooted(): Promise<void> {
    await Promise.all(this.#boots);
    await Promise.all(this.#readies);
  }

  /** Resolves when every boot started so far has ended, successfully or not (readiness not awaited). */
  bootsSettled(): Promise<unknown> {
    return Promise.allSettled(this.#boots);
  }

  /**
   * Boots one app on its last active release, else on the release `current` names, else on a first
   * release made from its `source`. The generation is made active at once: there is nothing older to
   * protect, and requests that arrive while it starts wait in the admission queue.
   */
  async #boot(rt: AppRuntime): Promise<void> {
    const app = rt.config;
    const log = this.#opts.loggers.get('deploy').child({ app: app.name });
    try {
      // An unknown user or group fails the boot here, naming it; the app's directories get their owners.
      const user = this.#opts.appUser(app);
      await prepareAppDirs(rt.releases.appDir, user, app.shared);
      log.info({ user: user.name, uid: user.uid, gid: user.gid, from: user.from }, 'app user');
      const store = this.#store();
      const fleet = this.#opts.live.config().database !== null;
      // Before any generation starts (a first deploy's included): they start the counts `berth scale` set.
      rt.overrides = await store.listScales(app.name);
      let saved = await store.getAppState(app.name);
      let release: { id: string; dir: string } | null = null;
      if (saved?.activeRelease) {
        const dir = await rt.releases.dirOf(saved.activeRelease);
        if (dir) release = { id: saved.activeRelease, dir };
        else if (fleet && (await this.#follow(rt, saved, log))) return;
        else log.warn({ release: saved.activeRelease }, 'active release missing on disk');
      }
      release ??= await rt.releases.current();
      // A fleet node never makes a release of its own while the fleet has one: it fails to boot, says why,
      // and the fleet tries again (fleet/fleet.ts).
      if (!release && fleet && saved?.activeRelease) throw new BerthError(ErrorCodes.release, `app ${app.name} cannot make the fleet's release ${saved.activeRelease} on this node; the fleet tries again`);
      if (!release) {
        // The first start of an app is a real deploy (prepare, link, build, release command...), recorded
        // like any other, except that it switches as soon as its generation starts.
        if (!app.source) throw new BerthError(ErrorCodes.release, `app ${app.name} has no release yet and no source to make one from`);
        log.info({ source: redactText(app.source) }, 'first deploy of the app');
        const d = await this.#firstDeploy(app, log);
        if (d === null) {
          // Another node of the fleet made the first release meanwhile: this one follows it.
          saved = await store.getAppState(app.name);
          if (saved && (await this.#follow(rt, saved, log))) return;
          throw new BerthError(ErrorCodes.release, `app ${app.name} cannot follow the fleet's first release`);
        }
        await audited(this.#opts.audit, { user: 'berth-start', channel: 'internal', action: 'deploy', app: app.name, target: d.id }, () => d.done, () => deployEnd(d));
        if (d.state !== 'succeeded' || !rt.active) {
          const tail = d.logTail.length ? `\n${d.logTail.join('\n')}` : '';
          throw new BerthError(ErrorCodes.release, `first deploy ${d.id} failed at step ${d.failedStep ?? '?'}: ${d.error ?? d.state}${tail}`);
        }
        this.#awaitReady(rt.active, log);
        return;
      }
      const { processes } = await resolveProcesses(app, release.dir, rt.scale);
      if (this.#opts.live.state() !== 'running') return;
      // In a fleet the store's active release is the fleet's: a node starting on an older one of its own
      // (it could not make the fleet's) serves it without making it everyone's.
      if (!fleet || !saved?.activeRelease || saved.activeRelease === release.id) {
        await store.setActiveRelease(app.name, release.id);
        await store.setReleaseState(app.name, release.id, 'active').catch(() => {});
      }
      const gen = this.#opts.supervisor.startGeneration(app, release, processes);
      rt.active = gen;
      rt.phase = 'serving';
      this.rebuildTable();
      log.info({ release: release.id, generation: gen.id }, 'app generation started');
      this.#awaitReady(gen, log);
    } catch (err) {
      rt.phase = 'failed';
      rt.error = errorMessage(err);
      log.error({ err: rt.error }, 'app failed to boot');
      this.rebuildTable();
    }
  }

  /**
   * The first deploy of an app, through the deployer's `start`: in a fleet it takes the app's fleet lock,
   * so nodes starting together make one first release. Null when another node made it meanwhile (this
   * one waited for its lock, and the store now names an active release).
   */
  async #firstDeploy(app: AppConfig, log: Logger): Promise<Deploy | null> {
    let said = false;
    for (;;) {
      try {
        return await this.#deployer().start(app.name, { kind: 'deploy', source: app.source, user: 'berth-start', boot: true, firstRelease: true });
      } catch (err) {
        if (!(err instanceof BerthError && err.code === ErrorCodes.conflict) || this.#opts.live.state() !== 'running') throw err;
        if (!said) log.info({ err: errorMessage(err) }, 'another node makes the first release; waiting for it');
        said = true;
      }
      await new Promise((r) => setTimeout(r, FIRST_DEPLOY_WAIT_MS));
      if ((await this.#store().getAppState(app.name))?.activeRelease) return null;
    }
  }

  /**
   * Boots a fleet node's app on the fleet's active release, which this node does not have yet: it is
   * made from its source like a first deploy (fleet/convergence.ts). Returns whether the app serves it;
   * when it cannot be made, the boot goes on with what this node has, and the fleet tries again later.
   */
  async #follow(rt: AppRuntime, saved: AppState, log: Logger): Promise<boolean> {
    const release = saved.activeRelease!;
    try {
      const record = await this.#store().getRelease(rt.config.name, release);
      const d = this.#deployer().begin(rt.config.name, await followRequest(rt.config, rt.releases, record, release, saved.reloads, true));
      log.info({ release, deploy: d.id }, 'making the fleet\'s active release');
      await audited(this.#opts.audit, { user: FLEET_USER, channel: 'internal', action: d.kind, app: rt.config.name, target: d.id, detail: `following the fleet to ${release}` }, () => d.done, () => deployEnd(d));
      if (d.state === 'succeeded' && rt.active) {
        this.#awaitReady(rt.active, log);
        return true;
      }
      log.error({ release, deploy: d.id, err: d.error }, 'cannot make the fleet\'s active release; starting on what this node has');
    } catch (err) {
      log.error({ release, err: errorMessage(err) }, 'cannot make the fleet\'s active release; starting on what this node has');
    }
    return false;
  }

  /**
   * Readiness is awaited outside the boot promise, so a shutdown never waits on a startup timeout. A
   * generation that does not get ready stays: its instances keep restarting (or show as crashed) in
   * status and /ready.
   */
  #awaitReady(gen: Generation, log: Logger): void {
    this.#readies.push(
      gen.waitReady().then(
        () => log.info({ release: gen.releaseId, generation: gen.id }, 'app ready'),
        (err) => log.error({ release: gen.releaseId, err: errorMessage(err) }, 'app not ready'),
      ),
    );
  }

  // ---- reload triggers -------------------------------------------------------------------------

  /** Starts watching the app's reload trigger file, when it has one (replacing any watcher it had). */
  watchTrigger(name: string): void {
    this.#triggers.get(name)?.stop();
    this.#triggers.delete(name);
    const rt = this.#apps.get(name);
    if (!rt?.config.reloadTrigger) return;
    const trigger = new ReloadTrigger({
      file: `${rt.releases.appDir}/${rt.config.reloadTrigger}`,
      logger: this.#opts.loggers.get('deploy').child({ app: name }),
      onTrigger: () => this.#triggeredReload(name),
    });
    trigger.start();
    this.#triggers.set(name, trigger);
  }

  stopTriggers(): void {
    for (const t of this.#triggers.values()) t.stop();
    this.#triggers.clear();
  }

  /**
   * A touch of the reload trigger file. When a deploy is already running the touch is not lost: the
   * trigger retries until the reload can start.
   */
  #triggeredReload(app: string): boolean {
    try {
      const d = this.#deployer().begin(app, { kind: 'reload', user: 'reload-trigger' });
      this.#log.info({ app, deploy: d.id }, 'reload triggered by file');
      void audited(this.#opts.audit, { user: 'reload-trigger', channel: 'internal', action: 'reload', app, target: d.id }, () => d, () => d.done.then(() => deployEnd(d)));
      return true;
    } catch (err) {
      if (err instanceof BerthError && err.code === ErrorCodes.conflict) return false;
      this.#log.error({ app, err: errorMessage(err) }, 'triggered reload failed to start');
      return true;
    }
  }

  /** After the supervisor stopped every process: nothing is active, and apps that were serving are stopped. */
  markStopped(): void {
    for (const rt of this.#apps.values()) {
      rt.active = null;
      rt.draining = [];
      if (rt.phase !== 'failed') rt.phase = 'stopped';
    }
  }
}

/**
 * berth not root: apps share its user, so `user` and `group` cannot apply. berth root: an app with
 * `user: root` can use the control socket, which matters when permissions restrict someone. Said once, at start.
 */
export function warnSharedUser(config: BerthConfig, log: Logger): void {
  if (isRoot()) {
    const limited = Object.keys(config.control.permissions[config.environment ?? DEFAULT_PERMISSIONS_ENVIRONMENT] ?? {});
    const asRoot = Object.values(config.apps).filter((a) => a.user === 'root' || a.user === '0').map((a) => a.name);
    if (limited.length > 0 && asRoot.length > 0) log.warn({ apps: asRoot, restricted: limited }, 'apps run as root: their code can use the control socket, whatever control.permissions says');
    return;
  }
  const named = Object.values(config.apps).filter((a) => a.user !== null || a.group !== null).map((a) => a.name);
  if (named.length > 0) log.warn({ apps: named, uid: process.getuid?.() }, 'berth is not root: apps run as its own user, and their user and group settings are not used');
}
