/**
 * The state store: what berth must remember across restarts. SQLite (node:sqlite, sqlite.ts) is the
 * embedded default; PostgreSQL (postgres.ts) serves a fleet of gateways on one database. Both implement
 * this narrow interface, every method async even though SQLite answers synchronously.
 */
import type { Mode } from '../config/schema.ts';

export interface AppState {
  app: string;
  /** Release id, or null before the first release. */
  activeRelease: string | null;
  mode: Mode;
  modeMessage: string | null;
  /** Seconds, for the Retry-After header in maintenance/read-only. */
  modeRetryAfter: number | null;
  /** How many reloads were asked for (migration 007): a fleet node that applied fewer reloads the app. */
  reloads: number;
  updatedAt: string;
}

export type ReleaseState = 'building' | 'ready' | 'active' | 'previous' | 'failed' | 'pruned';

export interface ReleaseRecord {
  app: string;
  id: string;
  /** ISO 8601. */
  createdAt: string;
  state: ReleaseState;
  /** What it was made from, e.g. an absolute directory path. */
  source: string;
  /** Git SHA or content hash. */
  revision: string | null;
  /**
   * ISO 8601 time its directory was pruned, else null (migration 005). Set whatever the state: a failed
   * release stays `failed` once pruned, so this is what says its directory is gone. Rows pruned by an
   * older gateway say `pruned` with a null time.
   */
  prunedAt: string | null;
}

/** A release as written by `putRelease`: `prunedAt` may be left out (it is then null). */
export type ReleaseInput = Omit<ReleaseRecord, 'prunedAt'> & { prunedAt?: string | null };

export interface Store extends AppStore, DeployStore, AuditStore, TaskStore, AcmeStore, FleetStore, FlushStore, ScaleStore {
  /** Opens the database and runs migrations according to `migrations`. */
  open(): Promise<void>;
  close(): Promise<void>;
  /** The schema version after migrations, for status output and tests. */
  schemaVersion(): Promise<number>;
}

// ---- apps and releases (migrations 001, 005) ----------------------------------------------------
export interface AppStore {
  getAppState(app: string): Promise<AppState | null>;
  listAppStates(): Promise<AppState[]>;
  /** Creates the app's row if missing. */
  setActiveRelease(app: string, releaseId: string): Promise<void>;
  setMode(app: string, mode: Mode, message: string | null, retryAfter: number | null): Promise<void>;
  /** Counts one more reload of the app (creating its row if missing) and returns the new count. */
  requestReload(app: string): Promise<number>;

  /** Inserts or replaces a release row (a left-out `prunedAt` is written as null). */
  putRelease(release: ReleaseInput): Promise<void>;
  getRelease(app: string, id: string): Promise<ReleaseRecord | null>;
  /** Newest first. */
  listReleases(app: string): Promise<ReleaseRecord[]>;
  setReleaseState(app: string, id: string, state: ReleaseState): Promise<void>;
  /**
   * Records when a release's directory was pruned, leaving its state as it is. Throws BERTH_E_NOT_FOUND
   * when the release was never recorded.
   */
  setReleasePrunedAt(app: string, id: string, prunedAt: string): Promise<void>;
}

// ---- deploys (migration 002) -------------------------------------------------------------------
export type DeployKind = 'deploy' | 'rollback' | 'reload';
export type DeployState = 'running' | 'succeeded' | 'failed' | 'interrupted';

export interface DeployRecord {
  /** `d<YYYYMMDDHHMMSS>-<6 hex>`. */
  id: string;
  app: string;
  kind: DeployKind;
  state: DeployState;
  /** The release it deploys (set once prepared, or at once for rollback/reload). */
  releaseId: string | null;
  /** The release that was active when it started. */
  previousRelease: string | null;
  source: string | null;
  /** Who asked (socket user or token user), or null. */
  user: string | null;
  failedStep: string | null;
  error: string | null;
  /** Last output lines of the failed step (build/release output, or instance logs). */
  logTail: string[];
  createdAt: string;
  finishedAt: string | null;
  /** The node that ran it (migration 007); written as the store's own node when left out. Null: an older row. */
  node?: string | null;
}

export interface DeployEvent {
  deployId: string;
  /** 1-based order within the deploy. */
  seq: number;
  step: string;
  status: 'started' | 'succeeded' | 'failed' | 'skipped';
  at: string;
  durationMs: number | null;
  message: string | null;
  /** Output lines attached to a failure. */
  lines?: string[];
}

/** An app process group the gateway started, remembered so a later start can kill orphans. */
export interface ProcessRecord {
  pgid: number;
  app: string;
  generation: string;
  process: string;
  index: number;
  /** pid of the gateway that started it. */
  gatewayPid: number;
  startedAt: string;
  /** The node whose gateway started it: always the store's own node when written; null for a row an older gateway wrote. */
  node?: string | null;
}

export interface DeployStore {
  createDeploy(deploy: DeployRecord): Promise<void>;
  /** Updates the given fields of a deploy. */
  updateDeploy(id: string, fields: Partial<Omit<DeployRecord, 'id' | 'app' | 'kind' | 'createdAt' | 'node'>>): Promise<void>;
  getDeploy(id: string): Promise<DeployRecord | null>;
  /** Newest first; filtered by app and/or state; at most `limit` (default 100). */
  listDeploys(filter?: { app?: string; state?: DeployState; limit?: number }): Promise<DeployRecord[]>;
  addDeployEvent(event: DeployEvent): Promise<void>;
  /** In seq order. */
  listDeployEvents(deployId: string): Promise<DeployEvent[]>;

  recordProcess(p: ProcessRecord): Promise<void>;
  removeProcess(pgid: number): Promise<void>;
  /** This node's groups (and on SQLite those an older gateway recorded, which name no node). */
  listProcesses(): Promise<ProcessRecord[]>;
}

// ---- audit (migration 003) ---------------------------------------------------------------------
/** interrupted: the gateway died before the change ended; the next start finishes its row so (api/interrupted-audit.ts). */
export type AuditOutcome = 'pending' | 'ok' | 'failed' | 'refused' | 'interrupted';
export type AuditChannel = 'socket' | 'tcp' | 'internal';

export interface AuditRecord {
  id: number;
  /** When the change was asked for. */
  at: string;
  user: string;
  channel: AuditChannel;
  /** deploy, rollback, reload, mode, run, config-reload, stop, task, restart... */
  action: string;
  app: string | null;
  /** What it acted on or produced: a deploy id, a mode, a command. */
  target: string | null;
  outcome: AuditOutcome;
  detail: string | null;
  finishedAt: string | null;
  /** The node where the change was asked for; written as the store's own node when left out. */
  node?: string | null;
}

export interface AuditFilter {
  app?: string;
  user?: string;
  /** Only rows of this action (`deploy`, `mode`, `task`...). */
  action?: string;
  /** Only rows with this outcome (`pending`: changes not finished yet). */
  outcome?: AuditOutcome;
  /** ISO time: rows at or after it. */
  since?: string;
  /** Default 100. */
  limit?: number;
}

export interface AuditStore {
  /** Inserts a row and returns its id. */
  addAudit(entry: Omit<AuditRecord, 'id'>): Promise<number>;
  /** Sets the outcome (and detail, finishedAt) of a row. */
  finishAudit(id: number, outcome: Exclude<AuditOutcome, 'pending'>, detail: string | null, finishedAt: string): Promise<void>;
  /** Newest first. */
  listAudit(filter?: AuditFilter): Promise<AuditRecord[]>;
  /** Deletes rows that happened before `before` (ISO); returns how many. */
  deleteAuditBefore(before: string): Promise<number>;
}

// ---- task runs (migration 004) -----------------------------------------------------------------
export type TaskRunState = 'running' | 'succeeded' | 'failed' | 'skipped' | 'timeout' | 'interrupted';
/** schedule: a `schedule` entry's cron time. manual: `berth run`. cleanup: the built-in cleanup job. */
export type TaskTrigger = 'schedule' | 'manual' | 'cleanup';

export interface TaskRunRecord {
  /** `t<YYYYMMDDHHMMSS>-<6 hex>`. */
  id: string;
  /** Null for gateway-wide jobs (cleanup). */
  app: string | null;
  /** The schedule entry name, `cleanup`, `run` (a one-off command) or the process type a one-off ran. */
  task: string;
  trigger: TaskTrigger;
  state: TaskRunState;
  /** What ran, as a shell command line; null for built-in jobs. */
  command: string | null;
  /** The active release it ran in. */
  releaseId: string | null;
  /** Who asked (one-off runs), else null. */
  user: string | null;
  startedAt: string;
  finishedAt: string | null;
  exitCode: number | null;
  durationMs: number | null;
  /** The last 64 KiB of combined stdout and stderr. */
  output: string;
  /** Why it failed, was skipped or was killed (timeout, signal, no active release...). */
  error: string | null;
  /** The node it ran on; written as the store's own node when left out. */
  node?: string | null;
}

export interface TaskRunFilter {
  app?: string;
  task?: string;
  trigger?: TaskTrigger;
  /** Only runs in one of these states. */
  states?: TaskRunState[];
  /** Default 100. */
  limit?: number;
}

export interface TaskStore {
  createTaskRun(run: TaskRunRecord): Promise<void>;
  /** Sets the final fields of a run. Throws BERTH_E_NOT_FOUND for an unknown id. */
  finishTaskRun(id: string, fields: Pick<TaskRunRecord, 'state' | 'finishedAt' | 'exitCode' | 'durationMs' | 'output' | 'error'>): Promise<void>;
  getTaskRun(id: string): Promise<TaskRunRecord | null>;
  /** Newest first. */
  listTaskRuns(filter?: TaskRunFilter): Promise<TaskRunRecord[]>;
  /**
   * This node's runs still `running` (left by a gateway that was killed), and such runs that name no
   * node, become `interrupted`; returns their ids.
   */
  interruptTaskRuns(finishedAt: string): Promise<string[]>;
  /** Deletes finished runs that started before `before` (ISO); returns how many. */
  deleteTaskRunsBefore(before: string): Promise<number>;
  /** Deletes finished deploys (and their events) created before `before` (ISO); returns how many. */
  deleteDeploysBefore(before: string): Promise<number>;
}

// ---- ACME accounts and certificates (migration 006) -------------------------------------------------
/** The account berth holds at one ACME directory. `keyPem` is private: never logged, never in an error. */
export interface AcmeAccountRecord {
  /** The directory URL: an account belongs to one CA. */
  directory: string;
  email: string | null;
  /** The account key, PEM (PKCS#8 or SEC1). */
  keyPem: string;
  /** The account URL the CA gave; null until it answered. */
  url: string | null;
  createdAt: string;
  updatedAt: string;
}

/** A certificate obtained by ACME for one host. `keyPem` is private: never logged, never in an error. */
export interface AcmeCertificateRecord {
  /** Lower-case host name, without a trailing dot. */
  host: string;
  /** The directory that issued it. */
  directory: string;
  /** The leaf followed by its chain, PEM. */
  certificatePem: string;
  keyPem: string;
  /** ISO 8601, from the certificate. */
  notBefore: string;
  notAfter: string;
  /** Obtained at a handshake (on-demand TLS) rather than for a configured host. */
  onDemand: boolean;
  issuedAt: string;
}

export interface AcmeStore {
  getAcmeAccount(directory: string): Promise<AcmeAccountRecord | null>;
  /** Inserts or replaces the account of `account.directory` (createdAt is kept from the first write). */
  saveAcmeAccount(account: AcmeAccountRecord): Promise<void>;
  getCertificate(host: string): Promise<AcmeCertificateRecord | null>;
  /** Inserts or replaces the certificate of `certificate.host`. */
  saveCertificate(certificate: AcmeCertificateRecord): Promise<void>;
  /** By host name. */
  listCertificates(): Promise<AcmeCertificateRecord[]>;
  /** Returns whether there was one. */
  deleteCertificate(host: string): Promise<boolean>;
}

// ---- fleet (migration 007) ---------------------------------------------------------------------------
/** running: heartbeats go on. stopped: the node stopped cleanly. (`lost` is read from an old heartbeat, never written.) */
export type NodeState = 'running' | 'stopped';

/** What a node serves of one app, and whether that is what the fleet asked for. */
export interface NodeServing {
  app: string;
  /** The release its active generation runs; null when it serves none. */
  release: string | null;
  mode: Mode;
  /** The reloads it has applied (AppState.reloads when converged). */
  reloads: number;
  /** It serves the desired release, mode and reload count. */
  converged: boolean;
  /** Why it has not converged (a failed build, a revision that differs...), else null. */
  error: string | null;
}

export interface NodeRecord {
  node: string;
  hostname: string;
  pid: number;
  version: string;
  state: NodeState;
  startedAt: string;
  /** ISO 8601, the node's clock: nodes of a fleet keep their clocks in time (NTP). */
  heartbeatAt: string;
  serving: NodeServing[];
}

export interface FleetStore {
  /** The node this store writes as: rows it adds name it, and locks it takes are held by it. */
  readonly node: string;
  /** Inserts or replaces the node's row (its heartbeat). */
  saveNode(node: NodeRecord): Promise<void>;
  /** By node name. */
  listNodes(): Promise<NodeRecord[]>;
  /** Deletes the rows of nodes whose last heartbeat is before `before` (ISO): gone for good. Returns how many. */
  deleteNodesBefore(before: string): Promise<number>;
  /**
   * Takes the fleet-wide lock `name` for this node. It is free when nobody holds it, when this node
   * holds it, or when its holder stopped or has not written a heartbeat since `staleBefore` (ISO).
   * Returns null when taken, else the node that holds it. `token` names this taking of it (see releaseLock).
   */
  acquireLock(name: string, staleBefore: string, token?: string | null): Promise<string | null>;
  /**
   * Lets go of `name` if this node holds it; with a `token`, only when it holds it from the taking that
   * token names (a late letting-go never drops a later taking).
   */
  releaseLock(name: string, token?: string | null): Promise<void>;
  /** Lets go of every lock this node holds (a node's earlier life, at start). Returns how many. */
  releaseAllLocks(): Promise<number>;
  /** The first node to claim `claim` gets true; every later claim of it false. */
  claimOnce(claim: string): Promise<boolean>;
  /** Deletes claims made before `before` (ISO); returns how many. */
  deleteClaimsBefore(before: string): Promise<number>;
  /** Records an ACME HTTP-01 answer, so any node can give it. */
  putChallenge(token: string, keyAuthorization: string): Promise<void>;
  getChallenge(token: string): Promise<string | null>;
  /** Every shared answer (key, value), for a node that starts or reconnects while some are pending. */
  listChallenges(): Promise<[key: string, value: string][]>;
  deleteChallenge(token: string): Promise<void>;
  /**
   * Calls `onChange` with each change other nodes announce (`app:<name>`, `certificate:<host>`,
   * `challenge:<key>`), and
   * `onConnection` when the channel is lost or back. PostgreSQL LISTEN/NOTIFY; SQLite (one node) has
   * nothing to hear. Returns the function that stops listening.
   */
  watch(onChange: (topic: string) => void, onConnection?: (connected: boolean) => void): () => void;
}

// ---- cache flushes (migration 008) ----
/** pending: attempts go on. succeeded: every URL purged. failed: gave up (retry_for passed, or the CDN refused for good). skipped: nothing could be sent (no credentials). */
export type FlushState = 'pending' | 'succeeded' | 'failed' | 'skipped';
export interface FlushRecord {
  /** `f<YYYYMMDDHHMMSS>-<6 hex>`. */
  id: string;
  app: string;
  /** The deploy whose switch it follows; null for a flush asked by hand (`berth flush`). */
  deployId: string | null;
  provider: 'http' | 'akamai';
  /** Every URL (or Akamai ARL) to purge. */
  urls: string[];
  /** The ones purged so far (a resumed flush sends only the rest). */
  done: string[];
  state: FlushState;
  attempts: number;
  /** ISO: when the next attempt is due. */
  nextAt: string;
  /** ISO: after this, a flush still failing gives up (created + retry_for). */
  giveUpAt: string;
  /** The last attempt's failure, else null. */
  error: string | null;
  /** Who asked (a manual flush), else null. */
  user: string | null;
  createdAt: string;
  finishedAt: string | null;
  /** The node that runs it; written as the store's own node when left out. */
  node?: string | null;
}
export interface FlushStore {
  /** Throws BERTH_E_CONFLICT when the id is taken. */
  createFlush(flush: FlushRecord): Promise<void>;
  /** Sets the given fields; throws BERTH_E_NOT_FOUND for an unknown id. */
  updateFlush(id: string, fields: Partial<Pick<FlushRecord, 'done' | 'state' | 'attempts' | 'nextAt' | 'error' | 'finishedAt'>>): Promise<void>;
  getFlush(id: string): Promise<FlushRecord | null>;
  /** This node's pending flushes and pending ones that name no node, oldest first (created_at, then id). */
  listPendingFlushes(): Promise<FlushRecord[]>;
  /** Newest first; filtered by app and/or deploy; at most `limit` (default 100). */
  listFlushes(filter?: { app?: string; deployId?: string; limit?: number }): Promise<FlushRecord[]>;
  /** Deletes finished (not pending) flushes created before `before` (ISO); returns how many. */
  deleteFlushesBefore(before: string): Promise<number>;
}

// ---- instance-count overrides (migration 009) ----
/** `berth scale <app> <type>=N`: the instances of one process type of one app, whatever the config says. */
export interface ScaleOverride {
  app: string;
  /** The process type. */
  process: string;
  /** How many instances every generation of the app starts of the type (0 and up). */
  instances: number;
  /** Who set it, or null. */
  user: string | null;
  /** ISO 8601: when it was set. */
  setAt: string;
  /** The node it was set on; written as the store's own node when left out. */
  node?: string | null;
}
export interface ScaleStore {
  /** Every override, or one app's, by app then process type. */
  listScales(app?: string): Promise<ScaleOverride[]>;
  /** Inserts or replaces the override of (app, process). Throws BERTH_E_BAD_REQUEST for a bad record. */
  setScale(scale: ScaleOverride): Promise<void>;
  /** Deletes the override of (app, process); returns whether there was one. */
  deleteScale(app: string, process: string): Promise<boolean>;
}
