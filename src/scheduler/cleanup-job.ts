import type { Store } from '../store/store.ts';
import type { SchedulerHost } from './task-target.ts';

export interface CleanupJobOptions {
  store: Store;
  host: SchedulerHost;
  /** Rows older than this are deleted. */
  retentionMs: number;
  /** Apps whose releases are pruned. */
  apps: string[];
}

/**
 * The built-in cleanup job (SPEC § Scheduler): deletes deploys (with their events), task runs and audit
 * rows older than `history_retention`, and prunes each app's releases beyond `keep_releases` by the
 * deployer's rules (the active and the previous release are never pruned). It runs inside the gateway
 * and is recorded like any task run; every line it writes is a line of that run's output.
 */
export class CleanupJob {
  #store: Store;
  #host: SchedulerHost;
  #retentionMs: number;
  #apps: string[];

  constructor(opts: CleanupJobOptions) {
    this.#store = opts.store;
    this.#host = opts.host;
    this.#retentionMs = opts.retentionMs;
    this.#apps = opts.apps;
  }

  /** Runs once; throws (after doing what it could) when any part failed. */
  async run(out: (line: string) => void, signal: AbortSignal): Promise<void> {
    const cut = new Date(Date.now() - this.#retentionMs).toISOString();
    const deploys = await this.#store.deleteDeploysBefore(cut);
    const runs = await this.#store.deleteTaskRunsBefore(cut);
    const audit = await this.#store.deleteAuditBefore(cut);
    out(`deleted ${deploys} deploy(s), ${runs} task run(s) and ${audit} audit row(s) from before ${cut}`);
    const flushes = await this.#store.deleteFlushesBefore(cut);
    if (flushes > 0) out(`deleted ${flushes} finished cache flush(es)`);
    // A fleet's claims of scheduled times are only needed while their time is due.
    const claims = await this.#store.deleteClaimsBefore(cut);
    if (claims > 0) out(`deleted ${claims} fleet claim(s) of scheduled runs`);
    // A node silent for the whole retention is gone for good: it leaves `berth status --fleet`.
    const nodes = await this.#store.deleteNodesBefore(cut);
    if (nodes > 0) out(`deleted ${nodes} fleet node(s) silent since before ${cut}`);
    const failures: string[] = [];
    for (const app of this.#apps) {
      if (signal.aborted) throw new Error('cleanup stopped before it was done');
      try {
        const pruned = await this.#prune(app);
        if (pruned === null) out(`${app}: no active release, nothing pruned`);
        else out(`${app}: ${pruned.length > 0 ? `pruned ${pruned.join(', ')}` : 'nothing to prune'}`);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        out(`${app}: cannot prune releases: ${message}`);
        failures.push(app);
      }
    }
    if (failures.length > 0) throw new Error(`pruning failed for ${failures.join(', ')}`);
  }

  /** Prunes one app; null when it has no active release to protect (then nothing is touched). */
  async #prune(app: string): Promise<string[] | null> {
    const target = this.#host.taskTarget(app);
    if (!target) return null;
    const active = target.active?.id ?? (await this.#store.getAppState(app))?.activeRelease ?? null;
    if (!active) return null;
    return target.releases.prune(active, await this.#previousGood(app, active));
  }

  /** The newest release before the active one that did not fail and still exists: what a rollback picks. */
  async #previousGood(app: string, active: string): Promise<string | null> {
    for (const r of await this.#store.listReleases(app)) {
      if (r.id === active || r.state === 'failed' || r.state === 'pruned' || r.state === 'building') continue;
      if (r.id > active) continue;
      return r.id;
    }
    return null;
  }
}
