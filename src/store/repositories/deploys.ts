/** Deploys, their step events and the app process groups the gateway started (migration 002), for every backend. */
import type { DeployEvent, DeployRecord, DeployState, DeployStore, ProcessRecord, TaskStore } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import {
  DEPLOY_EVENTS,
  DEPLOYS,
  PROCESS_GROUPS,
  deployChanges,
  deployEventValues,
  deployFilter,
  deployNotFound,
  deployValues,
  processValues,
  type DeployUpdate,
} from '../records.ts';
import { upsert } from '../statements.ts';

const RECORD_PROCESS_SQL = upsert(PROCESS_GROUPS.name, PROCESS_GROUPS.columns, ['pgid']);

/** Deploys, with the retention delete of deploys that the TaskStore part of the interface names. */
export class Deploys implements DeployStore, Pick<TaskStore, 'deleteDeploysBefore'> {
  #db: StoreDatabase;

  constructor(db: StoreDatabase) {
    this.#db = db;
  }

  /** Throws BERTH_E_CONFLICT when a deploy with this id is already recorded. */
  async createDeploy(deploy: DeployRecord): Promise<void> {
    await this.#db.insert('create deploy', DEPLOYS, deployValues(deploy), { duplicate: `deploy ${deploy.id} is already recorded` });
  }

  /**
   * Changes only the fields present (an `undefined` value counts as absent; `null` clears a nullable
   * field). Throws BERTH_E_BAD_REQUEST for a field that cannot change or a bad value, and
   * BERTH_E_NOT_FOUND when the deploy was never recorded.
   */
  async updateDeploy(id: string, fields: DeployUpdate): Promise<void> {
    await this.#db.updateById('update deploy', DEPLOYS, id, deployChanges(fields), () => deployNotFound(id));
  }

  async getDeploy(id: string): Promise<DeployRecord | null> {
    return this.#db.get('read deploy', `${DEPLOYS.select} WHERE id = $1`, [id], DEPLOYS.fromRow);
  }

  /** Newest first (created_at, then id). Throws BERTH_E_BAD_REQUEST for an unknown state or a limit below 1. */
  async listDeploys(filter: { app?: string; state?: DeployState; limit?: number } = {}): Promise<DeployRecord[]> {
    // Each filter shape is served by an index of migration 002 (deploys_created, _app_created, _state_created).
    return this.#db.list('list deploys', DEPLOYS, deployFilter(filter), 'ORDER BY created_at DESC, id DESC');
  }

  /**
   * Appends one event. Throws BERTH_E_BAD_REQUEST for a bad status, seq, duration or lines,
   * BERTH_E_NOT_FOUND when the deploy was never recorded, and BERTH_E_CONFLICT when the seq is taken.
   */
  async addDeployEvent(event: DeployEvent): Promise<void> {
    await this.#db.insert('add deploy event', DEPLOY_EVENTS, deployEventValues(event), {
      missingParent: `deploy ${event.deployId} is not recorded`,
      duplicate: `deploy ${event.deployId} already has event ${event.seq}`,
    });
  }

  /** In seq order; empty for an unknown deploy. */
  async listDeployEvents(deployId: string): Promise<DeployEvent[]> {
    return this.#db.all('list deploy events', `${DEPLOY_EVENTS.select} WHERE deploy_id = $1 ORDER BY seq`, [deployId], DEPLOY_EVENTS.fromRow);
  }

  /** Deletes finished deploys created before `before`; their events go with them (ON DELETE CASCADE). */
  async deleteDeploysBefore(before: string): Promise<number> {
    return this.#db.changes('delete deploys', `DELETE FROM deploys WHERE created_at < $1 AND state <> 'running'`, [before]);
  }

  /** Inserts or replaces the row for `p.pgid`. Throws BERTH_E_BAD_REQUEST for a pgid below 2 or a bad pid/index. */
  async recordProcess(p: ProcessRecord): Promise<void> {
    await this.#db.changes('record process', RECORD_PROCESS_SQL, processValues(p));
  }

  /** Forgetting a pgid that is not recorded is not an error: the exit and the orphan sweep may both try. */
  async removeProcess(pgid: number): Promise<void> {
    await this.#db.changes('remove process', 'DELETE FROM process_groups WHERE pgid = $1', [pgid]);
  }

  /** Oldest first (started_at, then pgid). */
  async listProcesses(): Promise<ProcessRecord[]> {
    return this.#db.all('list processes', `${PROCESS_GROUPS.select} ORDER BY started_at, pgid`, [], PROCESS_GROUPS.fromRow);
  }
}
