/**
 * The control API's view of the gateway: exactly the state and operations its endpoints use. The API
 * depends on this interface and the Gateway implements it, so the API never imports gateway.ts (which
 * imports the API to start it) and a test or another host can stand behind the same endpoints.
 */
import type { UpgradeResult } from '../upgrade/predecessor.ts';
import type { BerthConfig, Mode } from '../config/schema.ts';
import type { AuditChannel } from '../store/store.ts';
import type { Deployer } from '../deploy/deployer.ts';
import type { Scheduler, TaskTarget } from '../scheduler/scheduler.ts';
import type { Supervisor } from '../supervisor/supervisor.ts';
import type { HealthSource } from '../proxy/health-lane.ts';
import type { ModeState, RoutingTable } from '../proxy/router.ts';
import type { Metrics } from '../metrics/metrics.ts';
import type { Audit } from './audit.ts';
import type { AppStatus, CertificateRow, ConfigReloadResult, DeployRecord, FleetStatus, GatewayState, GatewayStatus, HistoryEntry, ReleaseList, ScaleResult } from './wire.ts';

/** The filters of `GET /v1/history` (`berth history`). */
export interface HistoryFilter {
  app?: string;
  user?: string;
  action?: string;
  since?: string;
  limit?: number;
}

export interface Control {
  readonly state: GatewayState;
  readonly config: BerthConfig;
  /** Routing table and queue depths, for the readiness and app health endpoints. */
  readonly proxy: Pick<HealthSource, 'table' | 'queueDepth'>;
  readonly supervisor: Pick<Supervisor, 'generations'>;
  /** Throws while the gateway has not started (no store yet). */
  readonly deployer: Pick<Deployer, 'start' | 'get' | 'running'>;
  readonly scheduler: Pick<Scheduler, 'get' | 'runOnce' | 'runs' | 'tasks' | 'firstRunAt'>;
  readonly audit: Pick<Audit, 'begin' | 'finish' | 'record'>;
  readonly metrics: Pick<Metrics, 'text' | 'contentType'>;
  status(): GatewayStatus;
  /** Null when no app has that name. */
  appStatus(name: string): AppStatus | null;
  appNames(): string[];
  releases(name: string): Promise<ReleaseList>;
  deploys(name: string): Promise<DeployRecord[]>;
  history(filter: HistoryFilter): Promise<HistoryEntry[]>;
  routes(): ReturnType<RoutingTable['describe']>;
  /** Every certificate the TLS listeners serve, by name; empty without a TLS listener. */
  certificates(): CertificateRow[];
  taskTarget(app: string): TaskTarget | undefined;
  setMode(app: string, mode: Mode, opts?: { message?: string | null; retryAfter?: number | null }, ctx?: { user: string }): Promise<ModeState>;
  /**
   * `berth scale`: sets the instance count of each process type named (null: back to the config's
   * count), live and kept in the store; resolves once the instances it started are ready or failed.
   * 404 for an unknown app or type, 409 while a deploy runs, 422 out of range or over `db_connections`.
   */
  scaleApp(app: string, request: Readonly<Record<string, number | null>>, user: string): Promise<ScaleResult>;
  /**
   * `berth flush`: queues a flush of `paths` (null: every static path of the active release and
   * `cache_flush.paths`). 404 for no such app; 409 when it has no `cache_flush` or no URL comes of the paths.
   */
  flushApp(app: string, paths: string[] | null, user: string): Promise<{ id: string; urls: number }>;
  /** `GET /v1/fleet`: the nodes on this gateway's database (this one alone on SQLite). Throws BERTH_E_STORE when it is unreachable. */
  fleet(): Promise<FleetStatus>;
  reloadConfig(by: { user: string; channel: AuditChannel }): Promise<ConfigReloadResult>;
  stop(): Promise<void>;
  /** `POST /v1/upgrade` (upgrade/predecessor.ts): resolves once the new gateway serves. */
  upgrade(opts: { waitMs?: number }): Promise<UpgradeResult>;
  /** Why no change may start now (an upgrade is under way), or null. */
  held(): string | null;
}
