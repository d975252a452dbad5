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
import type { AppState, Store } from '../store/store.ts';
import { ReleaseStore } from '../deploy/release-store.ts';
import { resolveProcesses } from '../deploy/procfile.ts';
import { ReloadTrigger } from '../deploy/reload-trigger.ts';
import type { Deployer, DeployableApp } from '../deploy/deployer.ts';
import type { Generation, Supervisor } from '../supervisor/supervisor.ts';
import { isRoot, type AppUser } from '../supervisor/app-user.ts';
import { DEFAULT_PERMISSIONS_ENVIRONMENT } from '../api/auth.ts';
import { prepareAppDirs } from '../supervisor/state-access.ts';
import { RoutingTable, type AppEntry, type ModeState } from '../proxy/router.ts';
import type { TaskTarget } from '../scheduler/scheduler.ts';
import { audited, deployEnd, type AuditWriter } from '../api/audit.ts';
import type { AppPhase, GatewayState } from '../api/wire.ts';

export interface AppRuntime extends DeployableApp {
  config: AppConfig;
  phase: AppPhase;
  /** Why the app is not serving, when it failed to boot. */
  error: string | null;
  releases: ReleaseStore;
  active: Generation | null;
  mode: ModeState;
  readonly booting: boolean;
}

/** What the gateway's parts read of it as it changes: its state, the config in effect, and what start() made. */
export interface GatewayLive {
  state(): GatewayState;
  config(): BerthConfig;
  /** Null before start() opened it. */
  store(): Store | null;
  /** Null before start() made it. */
  deployer(): Deployer | null;
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
      mode: { mode: saved?.mode ?? 'normal', message: saved?.modeMessage ?? null, retryAfter: saved?.modeRetryAfter ?? null },
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
      entries.push({ name: rt.config.name, config: rt.config, generation: rt.active, mode: rt.mode, noGeneration });
    }
    this.#opts.setTable(new RoutingTable(entries));
  }

  /** DeployHost: one pointer swap. Requests that arrived earlier keep the generation they pinned. */
  switchTo(app: string, gen: Generation): void {
    const rt = this.#apps.get(app);
    if (!rt) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
    rt.active = gen;
    rt.phase = 'serving';
    rt.error = null;
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

  /** A new app's mode, as the store remembers it from an earlier life of the app. */
  async restoreMode(rt: AppRuntime): Promise<void> {
    const saved = await this.#store().getAppState(rt.config.name).catch(() => null);
    if (saved) {
      rt.mode = { mode: saved.mode, message: saved.modeMessage, retryAfter: saved.modeRetryAfter };
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
        const d = this.#deployer().begin(app.name, { kind: 'deploy', source: app.source, user: 'berth-start', boot: true });
        await audited(this.#opts.audit, { user: 'berth-start', channel: 'internal', action: 'deploy', app: app.name, target: d.id }, () => d.done, () => deployEnd(d));
        if (d.state !== 'succeeded' || !rt.active) {
          const tail = d.logTail.length ? `\n${d.logTail.join('\n')}` : '';
          throw new BerthError(ErrorCodes.release, `first deploy ${d.id} failed at step ${d.failedStep ?? '?'}: ${d.error ?? d.state}${tail}`);
        }
        this.#awaitReady(rt.active, log);
        return;
      }
      const { processes } = await resolveProcesses(app, release.dir);
      if (this.#opts.live.state() !== 'running') return;
      await store.setActiveRelease(app.name, release.id);
      await store.setReleaseState(app.name, release.id, 'active').catch(() => {});
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
