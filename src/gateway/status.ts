/**
 * What the gateway tells about itself: `berth status` (`GET /v1/status`, `GET /v1/apps/:app`), releases,
 * deploys, history and routes, read from the apps, the supervisor, the proxy and the store. An app's
 * health comes from the one rule (supervisor/app-health.ts), applied to the same routing table entry the
 * front door's `/_berth/ready` and `/_berth/apps/<app>/health` read, so they never disagree.
 */
import type { CertificateRow } from '../tls/types.ts';
import { configuredInstances, demandOf, withScale } from '../deploy/scale.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { VERSION } from '../lib/version.ts';
import type { DeployRecord } from '../store/store.ts';
import type { Supervisor } from '../supervisor/supervisor.ts';
import { judgeApp } from '../supervisor/app-health.ts';
import type { Proxy } from '../proxy/server.ts';
import type { RoutingTable } from '../proxy/router.ts';
import { healthInput } from '../proxy/health-lane.ts';
import type { Audit } from '../api/audit.ts';
import type { HistoryFilter } from '../api/control.ts';
import type { AppStatus, GatewayStatus, HistoryEntry, ProcessCount, ReleaseList } from '../api/wire.ts';
import type { AppRuntime, Apps, GatewayLive } from './apps.ts';

export interface StatusSources {
  readonly live: GatewayLive;
  readonly apps: Apps;
  readonly supervisor: Pick<Supervisor, 'generations'>;
  readonly proxy: Pick<Proxy, 'addresses' | 'queueDepth' | 'table'>;
  readonly audit: Pick<Audit, 'list'>;
  /** The bound `control.listen` address, or null. */
  controlListen(): string | null;
  certificates(): CertificateRow[];
  /** Proxy threads serving now, the main thread's included. */
  proxyThreads(): number;
}

export class StatusReport {
  #src: StatusSources;
  #startedAt = new Date();

  constructor(sources: StatusSources) {
    this.#src = sources;
  }

  /** The whole picture for `berth status` and `GET /v1/status`. */
  status(): Omit<GatewayStatus, 'node'> {
    const { live, proxy, apps } = this.#src;
    const c = live.config();
    const s = live.state();
    return {
      version: VERSION,
      pid: process.pid,
      state: s,
      startedAt: this.#startedAt.toISOString(),
      uptimeMs: Date.now() - this.#startedAt.getTime(),
      config: c.file,
      environment: c.environment,
      stateDir: c.stateDir,
      listen: s === 'running' ? proxy.addresses().map((a) => a.text) : c.listen.map((a) => a.text),
      control: c.control.socket,
      controlListen: this.#src.controlListen(),
      certificateProblems: this.#src.certificates().flatMap((r) => (r.error === null ? [] : [{ host: r.host, source: r.source, error: r.error }])),
      proxyThreads: { configured: c.proxy.workers, running: s === 'running' ? this.#src.proxyThreads() : 0 },
      apps: apps.names().map((name) => this.appStatus(name)!),
    };
  }

  /** One app's status, or null when no app has that name. */
  appStatus(name: string): AppStatus | null {
    const rt = this.#src.apps.get(name);
    if (!rt) return null;
    const gens = this.#src.supervisor.generations(name);
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
      db: { budget: rt.config.dbConnections, demand: demandOf(rt.active?.processes ?? withScale(rt.config.processes ?? {}, rt.scale)), inUse },
      processes: this.#processes(rt),
      queue: this.#src.proxy.queueDepth(name),
      generations: gens.map((g) => ({ ...g.snapshot(), active: g === rt.active })),
    };
  }

  /**
   * Each process type with its counts: the active generation's types (a Procfile app's come from its
   * release), else the config's; an override of a type neither has is listed too (it waits for the type).
   */
  #processes(rt: AppRuntime): ProcessCount[] {
    const types = rt.active?.processes ?? rt.config.processes ?? {};
    const names = [...new Set([...Object.keys(types), ...rt.overrides.map((o) => o.process)])];
    return names.map((name) => {
      const o = rt.overrides.find((x) => x.process === name);
      return {
        name,
        http: types[name]?.http ?? false,
        instances: rt.active && Object.hasOwn(rt.active.processes, name) ? rt.active.processes[name].instances : null,
        configured: configuredInstances(rt.config, name),
        override: o ? { instances: o.instances, user: o.user, setAt: o.setAt, node: o.node ?? null } : null,
      };
    });
  }

  /** The verdict the front door gives, from the same table entry, with the boot error it withholds. */
  #health(rt: AppRuntime): { healthy: boolean; reasons: string[] } {
    const entry = this.#src.proxy.table.app(rt.config.name);
    if (entry) return judgeApp(healthInput(entry, rt.error));
    // Not in the table (never, once the gateway has built it): the runtime says the same.
    return judgeApp({ failed: rt.phase === 'failed', error: rt.error, generation: rt.active });
  }

  /** Releases of an app for `berth releases`, newest first, with the active and previous marked. */
  async releases(name: string): Promise<ReleaseList> {
    const rt = this.#src.apps.get(name);
    const store = this.#src.live.store();
    if (!rt || !store) throw new BerthError(ErrorCodes.notFound, `no app named "${name}"`);
    const releases = await store.listReleases(name);
    return { app: name, active: rt.active?.releaseId ?? null, releases };
  }

  /** Recent deploys, rollbacks and reloads of an app, newest first. */
  async deploys(name: string): Promise<DeployRecord[]> {
    const store = this.#src.live.store();
    if (!store) return [];
    return store.listDeploys({ app: name, limit: 50 });
  }

  /**
   * What happened, newest first: every audited change (deploys, rollbacks, reloads, mode switches, runs,
   * stops...) with who asked, through which channel, and the outcome.
   */
  async history(filter: HistoryFilter): Promise<HistoryEntry[]> {
    const rows = await this.#src.audit.list({ app: filter.app, user: filter.user, action: filter.action, since: filter.since, limit: filter.limit ?? 50 });
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
      node: r.node ?? null,
    }));
  }

  /** Routes for `berth routes`. */
  routes(): ReturnType<RoutingTable['describe']> {
    return this.#src.proxy.table.describe();
  }
}
