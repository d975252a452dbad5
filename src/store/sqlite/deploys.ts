/** Deploys, their step events and the app process groups the gateway started, in SQLite (migration 002). */
import type { DeployEvent, DeployRecord, DeployState, DeployStore, ProcessRecord } from '../store.ts';
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
import type { SqliteDatabase } from './database.ts';

const RECORD_PROCESS_SQL = `INSERT INTO process_groups (${PROCESS_GROUPS.columns.join(', ')}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
  ON CONFLICT (pgid) DO UPDATE SET app = excluded.app, generation = excluded.generation, process = excluded.process,
    instance_index = excluded.instance_index, gateway_pid = excluded.gateway_pid, started_at = excluded.started_at`;

export class SqliteDeploys implements DeployStore {
  #db: SqliteDatabase;

  constructor(db: SqliteDatabase) {
    this.#db = db;
  }

  /** Throws BERTH_E_CONFLICT when a deploy with this id is already recorded. */
  async createDeploy(deploy: DeployRecord): Promise<void> {
    this.#db.insert('create deploy', DEPLOYS, deployValues(deploy), { duplicate: `deploy ${deploy.id} is already recorded` });
  }

  /**
   * Changes only the fields present (an `undefined` value counts as absent; `null` clears a nullable
   * field). Throws BERTH_E_BAD_REQUEST for a field that cannot change or a bad value, and
   * BERTH_E_NOT_FOUND when the deploy was never recorded.
   */
  async updateDeploy(id: string, fields: DeployUpdate): Promise<void> {
    this.#db.updateById('update deploy', DEPLOYS, id, deployChanges(fields), () => deployNotFound(id));
  }

  async getDeploy(id: string): Promise<DeployRecord | null> {
    return this.#db.get('read deploy', `${DEPLOYS.select} WHERE id = ?`, [id], DEPLOYS.fromRow);
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
    this.#db.insert('add deploy event', DEPLOY_EVENTS, deployEventValues(event), {
      missingParent: `deploy ${event.deployId} is not recorded`,
      duplicate: `deploy ${event.deployId} already has event ${event.seq}`,
    });
  }

  /** In seq order; empty for an unknown deploy. */
  async listDeployEvents(deployId: string): Promise<DeployEvent[]> {
    const sql = `${DEPLOY_EVENTS.select} WHERE deploy_id = ? ORDER BY seq`;
    return this.#db.all('list deploy events', sql, [deployId], DEPLOY_EVENTS.fromRow);
  }

  /** Deletes finished deploys created before `before`; their events go with them (ON DELETE CASCADE). */
  async deleteDeploysBefore(before: string): Promise<number> {
    return this.#db.run('delete deploys', (q) => Number(q(`DELETE FROM deploys WHERE created_at < ? AND state <> 'running'`).run(before).changes));
  }

  /** Inserts or replaces the row for `p.pgid`. Throws BERTH_E_BAD_REQUEST for a pgid below 2 or a bad pid/index. */
  async recordProcess(p: ProcessRecord): Promise<void> {
    const values = processValues(p);
    this.#db.run('record process', (q) => q(RECORD_PROCESS_SQL).run(...values));
  }

  /** Forgetting a pgid that is not recorded is not an error: the exit and the orphan sweep may both try. */
  async removeProcess(pgid: number): Promise<void> {
    this.#db.run('remove process', (q) => q('DELETE FROM process_groups WHERE pgid = ?').run(pgid));
  }

  /** Oldest first (started_at, then pgid). */
  async listProcesses(): Promise<ProcessRecord[]> {
    const sql = `${PROCESS_GROUPS.select} ORDER BY started_at, pgid`;
    return this.#db.all('list processes', sql, [], PROCESS_GROUPS.fromRow);
  }
}
