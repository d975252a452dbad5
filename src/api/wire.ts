/**
 * The wire types of the control API: the JSON shapes it answers with (status, deploys, releases, history,
 * config reloads), which the gateway builds and the CLI reads. In their own file so the CLI never imports
 * the gateway, and the API never imports the gateway to name what it sends.
 */
import type { Mode } from '../config/schema.ts';
import type { DeployRecord, ReleaseRecord } from '../store/store.ts';
import type { Generation } from '../supervisor/supervisor.ts';
import type { CertificateRow } from '../tls/types.ts';

/** A deploy, rollback or reload as `GET /v1/apps/:app/deploys` and `GET /v1/deploys/:id` return it. */
export type { DeployRecord, ReleaseRecord };

/** One row of `GET /v1/certificates` and `berth certs`: a name and the certificate a handshake for it gets. */
export type { CertificateRow };

/** What a config reload did. */
export interface ConfigReloadResult {
  config: string;
  environment: string | null;
  added: string[];
  removed: string[];
  /** Apps whose processes changed, with the reload's deploy id (null: it starts once the app is free). */
  reloaded: { app: string; deploy: string | null }[];
  /** Apps whose routing, limits or other live settings changed, with no reload. */
  updated: string[];
  unchanged: string[];
  /** One line for logs, the audit log and the CLI. */
  summary: string;
}

export type GatewayState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped';

/** Where one app stands in the gateway: booting, serving, or failed with a reason. */
export type AppPhase = 'booting' | 'serving' | 'failed' | 'stopped';

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
  /** Each process type: the instances its active generation runs, the config's count, and a `berth scale` override. */
  processes: ProcessCount[];
  queue: number;
  generations: (ReturnType<Generation['snapshot']> & { active: boolean })[];
}

/** A process type's instance count as `berth status` shows it. */
export interface ProcessCount {
  name: string;
  http: boolean;
  /** What the active generation runs now; null without one. */
  instances: number | null;
  /** What the config (or the Procfile and `scale`) asks for; null when the config no longer names the type. */
  configured: number | null;
  /** Set with `berth scale`: every generation runs this many, whatever the config says; null: none. */
  override: { instances: number; user: string | null; setAt: string; node: string | null } | null;
}

/** One process type changed by `berth scale` (`POST /v1/apps/:app/scale`). */
export interface ScaleChange {
  process: string;
  from: number;
  to: number;
  /** The config's count (what `<type>=config` goes back to); null when the config no longer names the type. */
  configured: number | null;
  /** False: the change went back to the config's count and dropped the override. */
  override: boolean;
  /** Instances started (`web.2`), and those draining to a stop. */
  added: string[];
  removed: string[];
}

/** What `berth scale` did: the changes, and whether every instance it started got ready. */
export interface ScaleResult {
  app: string;
  /** The active generation it changed. */
  generation: string;
  changes: ScaleChange[];
  /** Every instance started is ready (true also when none was started). */
  ready: boolean;
  /** Why not: the instances that exited or were not ready in time, with their last output lines. */
  error: string | null;
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
  /** The fleet node where it happened (null: a row from before rows named their node). */
  node: string | null;
}

export interface GatewayStatus {
  version: string;
  /** This gateway's name in a fleet (`node_id`, else host name and state dir). */
  node: string;
  pid: number;
  state: GatewayState;
  startedAt: string;
  uptimeMs: number;
  config: string;
  environment: string | null;
  stateDir: string;
  listen: string[];
  control: string;
  /** The bound `control.listen` address, or null when the control API is on the socket only. */
  controlListen: string | null;
  /** Certificates that failed to load, renew or be obtained (the previous one, if any, is served). */
  certificateProblems: { host: string; source: string; error: string }[];
  /** The front door's threads (`proxy.workers`): how many the config asks for, and how many serve now. */
  proxyThreads: { configured: number; running: number };
  apps: AppStatus[];
}

/** A fleet node as `GET /v1/fleet` and `berth status --fleet` show it. */
export interface FleetNode {
  node: string;
  hostname: string;
  pid: number;
  version: string;
  /** lost: running, but silent for longer than `node_timeout`. */
  state: 'running' | 'stopped' | 'lost';
  startedAt: string;
  heartbeatAt: string;
  /** How long ago its last heartbeat was, by this node's clock. */
  heartbeatAgeMs: number;
  /** The node answering. */
  self: boolean;
  /** Every app it serves is at the fleet's desired release, mode and reload count. */
  converged: boolean;
  apps: { app: string; release: string | null; mode: Mode; converged: boolean; error: string | null }[];
}

/** `GET /v1/fleet`: the nodes on this gateway's database, and what the fleet asks of each app. */
export interface FleetStatus {
  /** False on SQLite: one gateway, listed alone. */
  fleet: boolean;
  node: string;
  nodeTimeoutMs: number;
  desired: { app: string; release: string | null; mode: Mode; reloads: number }[];
  nodes: FleetNode[];
}

/** An app's releases for `berth releases` (`GET /v1/apps/:app/releases`), newest first. */
export interface ReleaseList {
  app: string;
  active: string | null;
  releases: ReleaseRecord[];
}
