/**
 * A deploy, rollback or reload (the `Deploy` a client follows), what a deploy is asked to do
 * (`DeployRequest`, a fleet's `FollowTarget`), and what it needs of the gateway (`DeployHost`,
 * `DeployLocks`). The step machine that runs one is deployer.ts.
 */
import { timeSortedId } from '../lib/ids.ts';
import type { AppConfig, CacheFlushConfig } from '../config/schema.ts';
import type { FlushRequest } from '../flush/flusher.ts';
import { redactNullable } from '../lib/redact.ts';
import type { DeployEvent, DeployKind, DeployRecord, DeployState } from '../store/store.ts';
import type { Generation } from '../supervisor/supervisor.ts';
import type { ReleaseStore } from './release-store.ts';
import type { ScaleCounts } from './scale.ts';

export const DEPLOY_STEPS = ['prepare', 'link', 'build', 'release', 'start', 'wait_healthy', 'switch', 'current', 'drain', 'stop_old', 'flush', 'prune', 'record'] as const;
export type DeployStep = (typeof DEPLOY_STEPS)[number];

/** Build and release commands are killed after this long. */
export const COMMAND_TIMEOUT_MS = 15 * 60_000;

/** What the deployer needs of an app, owned by the gateway. */
export interface DeployableApp {
  readonly config: AppConfig;
  readonly releases: ReleaseStore;
  readonly active: Generation | null;
  /** True while the gateway boots the app; deploys wait for that to end. */
  readonly booting: boolean;
  /** Instance counts set with `berth scale`, by process type: every generation starts these (scale.ts). */
  readonly scale?: ScaleCounts;
}

/** The gateway side of a deploy: app lookup and the routing pointer swap. */
export interface DeployHost {
  deployable(app: string): DeployableApp | undefined;
  /** Makes `gen` the app's active generation: one pointer swap in the routing snapshot. */
  switchTo(app: string, gen: Generation): void;
  /**
   * The drain deadline passed: closes the WebSockets still open on `gen` (close frame 1001, then both
   * sockets end) and returns how many. Optional: a host without a front door has none.
   */
  closeUpgrades?(gen: Generation): number;
  /**
   * The drain of `gen`, switched away from, is over (it went idle, or its deadline passed): requests
   * whose affinity cookie names one of its instances no longer go there. Optional, as closeUpgrades.
   */
  drained?(app: string, gen: Generation): void;
  /** A reload was applied here: the app's generation now counts `reloads` (the fleet's reload count). */
  reloaded?(app: string, reloads: number): void;
  /** Queues a cache flush of `urls` (flush/flusher.ts), returning its id; it runs in the background. */
  flush?(req: FlushRequest, config: CacheFlushConfig): Promise<string>;
  /** Why no deploy, rollback or reload may start now (an upgrade hands the gateway over), or null. */
  held?(): string | null;
}

/**
 * Where a fleet's deploy locks live (fleet/deploy-locks.ts): one deploy, rollback or reload per app in
 * the whole fleet. Without it (one gateway) the deployer's own map is the only lock.
 */
export interface DeployLocks {
  /**
   * Takes the app's lock and returns the token of this taking; throws BERTH_E_CONFLICT naming the node
   * that holds it, or BERTH_E_UNAVAILABLE when the store cannot answer.
   */
  acquire(app: string): Promise<string>;
  /** Lets go of the taking `token` names; never throws (a failure is retried later). */
  release(app: string, token: string): void;
}

/** Who the deploys, rollbacks and reloads a node makes to follow the fleet are recorded as. */
export const FLEET_USER = 'fleet';

/**
 * A fleet node converging on what another node deployed (fleet/convergence.ts): the release is the
 * fleet's, so this deploy writes nothing of it (states, the active release, the reload count) and
 * takes no lock; it only makes this node serve it.
 */
export interface FollowTarget {
  /** The fleet's reload count this deploy brings the node to. */
  reloads: number;
  /** deploy: the release id to make, and the revision its source must give. */
  releaseId?: string;
  revision?: string | null;
}

export interface DeployRequest {
  kind: DeployKind;
  /** deploy: the source (default: the app's `source`). */
  source?: string | null;
  /** rollback: the release to go back to (default: the previous good one). */
  release?: string | null;
  /** Who asked, for the record. */
  user?: string | null;
  /**
   * The first deploy of an app at gateway start: there is no older generation to protect, so the new
   * one is switched to as soon as it is started (requests queue until its instances are ready) instead
   * of after wait_healthy.
   */
  boot?: boolean;
  /** Converging on the fleet's desired state (see FollowTarget). */
  follow?: FollowTarget;
  /** Set by `start`: the fleet lock is held (this token names it), and the outcome is the fleet's. */
  fleet?: boolean;
  lockToken?: string;
  /**
   * A fleet's first release of the app: once the lock is taken, refused (409) when the fleet has an
   * active release by then (another node made it meanwhile).
   */
  firstRelease?: boolean;
}

type Listener = (event: DeployEvent | null) => void;

/**
 * The source a deploy fetches from, as asked: it may carry credentials (`https://user:token@host/...`),
 * so it lives only here, out of every record. `Deploy.source` is the redacted form that is logged,
 * stored and returned.
 */
const fetchSources = new WeakMap<Deploy, string>();

/** The source to fetch, credentials and all (deploys only); never logged or stored. */
export function fetchSourceOf(deploy: Deploy): string | undefined {
  return fetchSources.get(deploy);
}

/** One deploy, rollback or reload while it runs (and a while after). */
export class Deploy {
  readonly id: string;
  readonly app: string;
  readonly kind: DeployKind;
  readonly user: string | null;
  readonly createdAt: string;
  source: string | null;
  /** rollback: the release asked for, if any. */
  readonly requested: string | null;
  /** The first deploy at gateway start (see DeployRequest.boot). */
  readonly boot: boolean;
  readonly follow: FollowTarget | null;
  readonly fleet: boolean;
  readonly lockToken: string | null;
  /** The node it runs on (the store's), so a live deploy reads the same as its row. */
  node: string | null = null;
  /** Aborted when the gateway shuts down: kills a running build or release command. */
  readonly abort = new AbortController();
  releaseId: string | null = null;
  previousRelease: string | null = null;
  state: DeployState = 'running';
  failedStep: DeployStep | null = null;
  error: string | null = null;
  logTail: string[] = [];
  finishedAt: string | null = null;
  readonly events: DeployEvent[] = [];
  #listeners = new Set<Listener>();
  readonly done: Promise<void>;
  #resolveDone!: () => void;

  constructor(app: string, req: DeployRequest) {
    this.id = newDeployId();
    this.app = app;
    this.kind = req.kind;
    this.user = req.user ?? null;
    this.source = req.kind === 'deploy' ? redactNullable(req.source ?? null) : null;
    if (req.kind === 'deploy' && req.source) fetchSources.set(this, req.source);
    this.requested = req.release ?? null;
    this.boot = req.boot === true;
    this.follow = req.follow ?? null;
    this.fleet = req.fleet === true;
    this.lockToken = req.lockToken ?? null;
    this.createdAt = new Date().toISOString();
    this.done = new Promise((r) => (this.#resolveDone = r));
  }

  /** Follows events: existing ones are replayed, then live ones; `null` marks the end. */
  subscribe(fn: Listener): () => void {
    for (const e of this.events) fn(e);
    if (this.state !== 'running') {
      fn(null);
      return () => {};
    }
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  emit(event: DeployEvent): void {
    this.events.push(event);
    for (const fn of this.#listeners) fn(event);
  }

  finish(state: DeployState): void {
    this.state = state;
    this.finishedAt = new Date().toISOString();
    for (const fn of this.#listeners) fn(null);
    this.#listeners.clear();
    this.#resolveDone();
  }

  record(): DeployRecord {
    return {
      id: this.id,
      app: this.app,
      kind: this.kind,
      state: this.state,
      releaseId: this.releaseId,
      previousRelease: this.previousRelease,
      source: this.source,
      user: this.user,
      failedStep: this.failedStep,
      error: this.error,
      logTail: this.logTail,
      createdAt: this.createdAt,
      finishedAt: this.finishedAt,
      node: this.node,
    };
  }
}

/** Deploy ids sort by time like release ids, with a `d` in front so the two are never confused. */
export function newDeployId(now = new Date()): string {
  return timeSortedId('d', now);
}

