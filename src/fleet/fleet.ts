/**
 * Fleet mode: several gateways (nodes) on one PostgreSQL database serve the same apps. The database's
 * `apps` rows are the fleet's desired state (active release, mode, reload count), and its
 * `scale_overrides` rows the instance counts `berth scale` set; a deploy, rollback, reload, mode switch
 * or scale on any node writes them, and every node converges on them by running its own
 * zero-downtime flow (convergence.ts, deployer.ts' FollowTarget).
 *
 * A node hears of changes through LISTEN/NOTIFY (the store's `watch`) and looks again every 5s in case
 * it missed one (the channel was down). It writes a heartbeat row every 2s with what it serves, which
 * `GET /v1/fleet` reads back for every node. When the database is unreachable the node goes on serving
 * what it serves, and every change is refused by the store; it catches up once the database is back.
 * A follow that fails is retried with backoff, the node serving its last good release meanwhile.
 */
import { hostname } from 'node:os';
import type { BerthConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import { VERSION } from '../lib/version.ts';
import { processAlive } from '../lib/process-alive.ts';
import type { Deploy, Deployer, DeployRequest } from '../deploy/deployer.ts';
import type { AppState, NodeRecord, NodeServing, Store } from '../store/store.ts';
import type { AppConfig } from '../config/schema.ts';
import type { ReleaseStore } from '../deploy/release-store.ts';
import type { ModeState } from '../proxy/router.ts';
import type { FleetNode, FleetStatus } from '../api/wire.ts';
import { audited, deployEnd, type AuditWriter } from '../api/audit.ts';
import type { FleetDeployLocks } from './deploy-locks.ts';
import { desiredMode, FLEET_USER, followRequest, sameMode } from './convergence.ts';

export const HEARTBEAT_MS = 2_000;
export const POLL_MS = 5_000;
/** A follow that failed is tried again after this, doubling up to RETRY_MAX_MS while it keeps failing. */
const RETRY_MIN_MS = 5_000;
const RETRY_MAX_MS = 5 * 60_000;

/** What the fleet reads of one app (gateway/apps.ts' AppRuntime). */
export interface FleetApp {
  readonly config: AppConfig;
  readonly releases: ReleaseStore;
  readonly active: { readonly releaseId: string } | null;
  readonly mode: ModeState;
  /** The fleet's reload count this node has applied. */
  readonly reloads: number;
  readonly booting: boolean;
}

/** What the fleet reads and changes of the gateway's apps. */
export interface FleetHost {
  appNames(): string[];
  app(name: string): FleetApp | undefined;
  /**
   * Shows the mode `read` gives (the store's) for the app from the next request on, without writing the
   * store (it is the fleet's already); read in turn after local switches, so never an older one.
   */
  applyMode(app: string, read: () => Promise<ModeState | null>): void;
  /**
   * Reads the `berth scale` overrides of `app` (null: of every app) from the store and brings the
   * instance counts this node runs in line with them, live (gateway/scaling.ts).
   */
  applyScale?(app: string | null): void;
  deployer(): Deployer | null;
}

export interface FleetOptions {
  store: Store;
  config: () => BerthConfig;
  host: FleetHost;
  locks: FleetDeployLocks;
  audit: AuditWriter;
  logger: Logger;
  /** A certificate changed in the store (another node issued or renewed it). */
  onCertificate?: (host: string) => void;
  /** An ACME challenge answer was shared or withdrawn (key: `http-01:<token>` or `tls-alpn-01:<host>`). */
  onChallenge?: (key: string) => void;
  /** The store's announcements are heard again after a while out of reach: what was missed must be read. */
  onReconnect?: () => void;
}

/** Where one app stands in following the fleet. */
interface Progress {
  /** What was last tried: `<release>#<reloads>`. */
  key: string | null;
  error: string | null;
  failures: number;
  retryAt: number;
}

export class Fleet {
  readonly node: string;
  #opts: FleetOptions;
  #log: Logger;
  #startedAt = new Date().toISOString();
  #desired = new Map<string, AppState>();
  #progress = new Map<string, Progress>();
  /** Apps being looked at now, and those to look at again once that ends. */
  #busy = new Set<string>();
  #again = new Set<string>();
  #timers: NodeJS.Timeout[] = [];
  /** Retries of follows that failed (#failed), cleared at stop. */
  #retries = new Set<NodeJS.Timeout>();
  /** The heartbeat being written, so that `stop` writes `stopped` after it, never before. */
  #beating: Promise<void> | null = null;
  #unwatch: (() => void) | null = null;
  #reachable = true;
  #started = false;
  #stopped = false;

  constructor(opts: FleetOptions) {
    this.#opts = opts;
    this.node = opts.store.node;
    this.#log = opts.logger.child({ node: this.node });
  }

  /** Whether the last heartbeat reached the state store. */
  get storeReachable(): boolean {
    return this.#reachable;
  }

  /**
   * Lets go of locks an earlier life of this node held, writes the first heartbeat, and starts
   * listening, heartbeating and polling. Throws BERTH_E_STORE when the store cannot be written.
   */
  /**
   * `predecessor`: the pid of the gateway this one takes over from at an upgrade; its heartbeat on the
   * node's row is no twin.
   */
  async start(opts: { predecessor?: number } = {}): Promise<void> {
    await this.#refuseTwin(opts.predecessor ?? null);
    const released = await this.#opts.store.releaseAllLocks();
    if (released > 0) this.#log.warn({ locks: released }, 'let go of locks an earlier run of this node held');
    for (const state of await this.#opts.store.listAppStates()) this.#desired.set(state.app, state);
    await this.#opts.store.saveNode(this.#record('running'));
    this.#unwatch = this.#opts.store.watch(
      (topic) => this.#heard(topic),
      (connected) => {
        if (!connected) return;
        this.kickAll();
        this.#opts.host.applyScale?.(null);
        this.#opts.onReconnect?.();
      },
    );
    const every = (ms: number, fn: () => Promise<void>) => {
      const timer = setInterval(() => void fn(), ms);
      timer.unref();
      this.#timers.push(timer);
    };
    every(HEARTBEAT_MS, () => {
      this.#beating ??= this.#heartbeat().finally(() => (this.#beating = null));
      return this.#beating;
    });
    every(POLL_MS, () => this.#poll());
    this.#started = true;
    this.#log.info({ heartbeatMs: HEARTBEAT_MS, pollMs: POLL_MS }, 'fleet node started');
  }

  /**
   * Two live gateways with one name would share their locks and history: a start is refused while the
   * node's row says another live process (another machine, or another pid alive here) heartbeats.
   */
  async #refuseTwin(predecessor: number | null): Promise<void> {
    const row = (await this.#opts.store.listNodes()).find((n) => n.node === this.node);
    if (!row || row.state !== 'running' || Date.now() - Date.parse(row.heartbeatAt) > this.#opts.config().nodeTimeoutMs) return;
    const elsewhere = row.hostname !== hostname();
    if (!elsewhere && (row.pid === process.pid || row.pid === predecessor || !processAlive(row.pid))) return;
    throw new BerthError(
      ErrorCodes.conflict,
      `node ${this.node} is already running (pid ${row.pid} on ${row.hostname}, last heartbeat ${row.heartbeatAt}): give each gateway its own node_id`,
    );
  }

  /**
   * Stops listening and heartbeating, and marks the node stopped (so it is not shown as lost).
   * `handedOver`: an upgrade's new gateway is the node now, and its row stays as that one writes it.
   */
  async stop(opts: { handedOver?: boolean } = {}): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (!this.#started) return;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    for (const t of this.#retries) clearTimeout(t);
    this.#retries.clear();
    this.#unwatch?.();
    this.#unwatch = null;
    await this.#beating;
    if (opts.handedOver) return;
    await this.#opts.store.saveNode(this.#record('stopped')).catch((err) => this.#log.warn({ err: errorMessage(err) }, 'cannot mark the node stopped'));
  }

  /** Looks at every app again. */
  kickAll(): void {
    for (const app of this.#opts.host.appNames()) this.kick(app);
  }

  /** Looks at an app's desired state and converges on it (in the background). */
  kick(app: string): void {
    if (this.#stopped) return;
    if (this.#busy.has(app)) {
      this.#again.add(app);
      return;
    }
    this.#busy.add(app);
    void this.#converge(app)
      .catch((err) => this.#log.error({ app, err: errorMessage(err) }, 'cannot converge'))
      .finally(() => {
        this.#busy.delete(app);
        if (this.#again.delete(app)) this.kick(app);
      });
  }

  /** What this node serves of each app, and whether it is what the fleet asks. */
  serving(): NodeServing[] {
    const out: NodeServing[] = [];
    for (const name of this.#opts.host.appNames()) {
      const rt = this.#opts.host.app(name);
      if (!rt) continue;
      const release = rt.active?.releaseId ?? null;
      const desired = this.#desired.get(name);
      out.push({ app: name, release, mode: rt.mode.mode, reloads: rt.reloads, converged: desired ? isConverged(rt, desired) : true, error: this.#progress.get(name)?.error ?? null });
    }
    return out;
  }

  /**
   * `GET /v1/fleet`: every node's row, and what the fleet asks. A gateway that is not a fleet node (one
   * on SQLite) lists itself alone. Throws BERTH_E_STORE when the store is unreachable.
   */
  async status(): Promise<FleetStatus> {
    const store = this.#opts.store;
    const [listed, desired] = await Promise.all([this.#started ? store.listNodes() : Promise.resolve([]), store.listAppStates()]);
    const rows = listed.some((n) => n.node === this.node) ? listed : [this.#record('running'), ...listed];
    const timeout = this.#opts.config().nodeTimeoutMs;
    const want = new Map(desired.map((d) => [d.app, d]));
    const now = Date.now();
    const nodes: FleetNode[] = rows.map((n) => {
      const self = n.node === this.node;
      const serving = self ? this.serving() : n.serving;
      const heartbeatAt = self ? new Date().toISOString() : n.heartbeatAt;
      const age = Math.max(0, now - Date.parse(heartbeatAt));
      const state = n.state === 'stopped' ? 'stopped' : age > timeout ? 'lost' : 'running';
      const apps = serving.map((s) => {
        const d = want.get(s.app);
        const converged = d === undefined || (s.release === d.activeRelease && s.mode === d.mode && s.reloads >= d.reloads);
        return { app: s.app, release: s.release, mode: s.mode, converged, error: s.error };
      });
      return { node: n.node, hostname: n.hostname, pid: n.pid, version: n.version, state, startedAt: n.startedAt, heartbeatAt, heartbeatAgeMs: age, self, converged: apps.every((a) => a.converged), apps };
    });
    return {
      fleet: this.#started,
      node: this.node,
      nodeTimeoutMs: timeout,
      desired: desired.map((d) => ({ app: d.app, release: d.activeRelease, mode: d.mode, reloads: d.reloads })),
      nodes,
    };
  }

  #record(state: NodeRecord['state']): NodeRecord {
    return { node: this.node, hostname: hostname(), pid: process.pid, version: VERSION, state, startedAt: this.#startedAt, heartbeatAt: new Date().toISOString(), serving: this.serving() };
  }

  #heard(topic: string): void {
    const colon = topic.indexOf(':');
    const kind = topic.slice(0, colon);
    const name = topic.slice(colon + 1);
    if (kind === 'app' && this.#opts.host.app(name)) this.kick(name);
    else if (kind === 'scale' && this.#opts.host.app(name)) this.#opts.host.applyScale?.(name);
    else if (kind === 'certificate') this.#opts.onCertificate?.(name);
    else if (kind === 'challenge') this.#opts.onChallenge?.(name);
  }

  async #heartbeat(): Promise<void> {
    try {
      await this.#opts.store.saveNode(this.#record('running'));
      await this.#opts.locks.retry();
      this.#setReachable(true, null);
    } catch (err) {
      this.#setReachable(false, err);
    }
  }

  async #poll(): Promise<void> {
    let states: AppState[];
    try {
      states = await this.#opts.store.listAppStates();
    } catch (err) {
      this.#setReachable(false, err);
      return;
    }
    for (const state of states) this.#desired.set(state.app, state);
    // An announcement missed while the channel was down: the overrides are read again too.
    this.#opts.host.applyScale?.(null);
    for (const app of this.#opts.host.appNames()) {
      const rt = this.#opts.host.app(app);
      const desired = this.#desired.get(app);
      if (rt && desired && !isConverged(rt, desired)) this.kick(app);
    }
  }

  #setReachable(reachable: boolean, err: unknown): void {
    if (reachable === this.#reachable) return;
    this.#reachable = reachable;
    if (reachable) {
      this.#log.info('state store reachable again; catching up with the fleet');
      this.kickAll();
    } else {
      this.#log.error({ err: errorMessage(err) }, 'state store unreachable: serving the current releases, refusing changes until it is back');
    }
  }

  async #converge(app: string): Promise<void> {
    const host = this.#opts.host;
    const rt = host.app(app);
    if (!rt || this.#stopped) return;
    let desired: AppState | null;
    try {
      desired = await this.#opts.store.getAppState(app);
    } catch (err) {
      this.#setReachable(false, err);
      return;
    }
    if (!desired) return;
    this.#desired.set(app, desired);
    if (!sameMode(rt.mode, desiredMode(desired))) {
      host.applyMode(app, async () => {
        const now = await this.#opts.store.getAppState(app);
        return now ? desiredMode(now) : null;
      });
    }
    // A boot follows the fleet by itself (apps.ts); a deploy running here is looked at again when it ends.
    const deployer = host.deployer();
    const running = deployer?.running(app);
    if (!deployer || rt.booting || running) {
      void running?.done.then(() => this.kick(app));
      return;
    }
    const release = desired.activeRelease;
    if (release === null) return;
    const progress = this.#progressOf(app);
    const key = `${release}#${desired.reloads}`;
    if ((rt.active?.releaseId ?? null) === release && rt.reloads >= desired.reloads) {
      progress.key = null;
      progress.error = null;
      progress.failures = 0;
      return;
    }
    if (progress.key === key && Date.now() < progress.retryAt) return;
    let req: DeployRequest;
    try {
      req =
        (rt.active?.releaseId ?? null) === release
          ? { kind: 'reload', user: FLEET_USER, follow: { reloads: desired.reloads } }
          : await followRequest(rt.config, rt.releases, await this.#opts.store.getRelease(app, release), release, desired.reloads);
    } catch (err) {
      this.#failed(app, progress, key, errorMessage(err));
      return;
    }
    let deploy: Deploy;
    try {
      deploy = deployer.begin(app, req);
    } catch (err) {
      if (err instanceof BerthError && err.code === ErrorCodes.conflict) return; // started meanwhile: looked at when it ends
      this.#failed(app, progress, key, errorMessage(err));
      return;
    }
    progress.key = key;
    this.#log.info({ app, release, reloads: desired.reloads, kind: deploy.kind, deploy: deploy.id }, 'following the fleet');
    void audited(this.#opts.audit, { user: FLEET_USER, channel: 'internal', action: deploy.kind, app, target: deploy.id, detail: `following the fleet to ${release}` }, () => deploy.done, () => deployEnd(deploy));
    await deploy.done;
    if (deploy.state === 'succeeded') {
      progress.error = null;
      progress.failures = 0;
    } else {
      this.#failed(app, progress, key, `${deploy.id} failed at ${deploy.failedStep ?? '?'}: ${deploy.error ?? deploy.state}`);
    }
    this.#again.add(app);
  }

  #progressOf(app: string): Progress {
    let p = this.#progress.get(app);
    if (!p) this.#progress.set(app, (p = { key: null, error: null, failures: 0, retryAt: 0 }));
    return p;
  }

  /** A follow that cannot be made: said in status, tried again after a backoff; the node serves what it served. */
  #failed(app: string, progress: Progress, key: string, error: string): void {
    if (progress.key !== key) progress.failures = 0;
    progress.key = key;
    progress.error = error;
    progress.failures++;
    const wait = Math.min(RETRY_MIN_MS * 2 ** (progress.failures - 1), RETRY_MAX_MS);
    progress.retryAt = Date.now() + wait;
    this.#log.error({ app, err: error, retryInMs: wait }, 'cannot follow the fleet; serving the last good release');
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      this.kick(app);
    }, wait);
    timer.unref();
    this.#retries.add(timer);
  }
}

/** The node serves the fleet's release (when it names one), mode and reload count for the app. */
function isConverged(rt: FleetApp, desired: AppState): boolean {
  const releaseOk = desired.activeRelease === null || rt.active?.releaseId === desired.activeRelease;
  return releaseOk && sameMode(rt.mode, desiredMode(desired)) && rt.reloads >= desired.reloads;
}
