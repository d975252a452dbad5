/** Deploys, their step events and the app process groups the gateway started (migration 002), for every backend. */
import type { DeployEvent, DeployRecord, DeployState, DeployStore, ProcessRecord, TaskStore } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import {
  DEPLOY_EVENTS,
  DEPLOYS,
  LEGACY_PROCESS_GROUPS,
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

const RECORD_PROCESS_SQL = upsert(PROCESS_GROUPS.name, PROCESS_GROUPS.columns, ['node', 'pgid']);

/** Deploys, with the retention delete of deploys that the TaskStore part of the interface names. */
export class Deploys implements DeployStore, Pick<TaskStore, 'deleteDeploysBefore'> {
  #db: StoreDatabase;
  #node: string;

  /** `node`: what the deploys it records name when they name no node themselves, and whose process groups it keeps. */
  constructor(db: StoreDatabase, node: string) {
    this.#db = db;
    this.#node = node;
  }

  /** Throws BERTH_E_CONFLICT when a deploy with this id is already recorded. */
  async createDeploy(deploy: DeployRecord): Promise<void> {
    await this.#db.insert('create deploy', DEPLOYS, deployValues({ ...deploy, node: deploy.node ?? this.#node }), { duplicate: `deploy ${deploy.id} is already recorded` });
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

  /** Inserts or replaces this node's row for `p.pgid`. Throws BERTH_E_BAD_REQUEST for a pgid below 2 or a bad pid/index. */
  async recordProcess(p: ProcessRecord): Promise<void> {
    await this.#db.changes('record process', RECORD_PROCESS_SQL, processValues({ ...p, node: this.#node }));
  }

  /** Forgetting a pgid that is not recorded is not an error: the exit and the orphan sweep may both try. */
  async removeProcess(pgid: number): Promise<void> {
    await this.#db.changes('remove process', 'DELETE FROM node_process_groups WHERE node = $1 AND pgid = $2', [this.#node, pgid]);
    if (!this.#db.shared) await this.#db.changes('remove process', 'DELETE FROM process_groups WHERE pgid = $1', [pgid]);
  }

  /**
   * This node's groups, oldest first (started_at, then pgid). On a database only this gateway uses
   * (SQLite), also the groups an older gateway recorded by pgid alone (they name no node); on a shared
   * one those may be another machine's, and are left alone.
   */
  async listProcesses(): Promise<ProcessRecord[]> {
    const mine = await this.#db.all('list processes', `${PROCESS_GROUPS.select} WHERE node = $1`, [this.#node], PROCESS_GROUPS.fromRow);
    if (this.#db.shared) return mine.sort(byStart);
    const legacy = await this.#db.all('list processes', LEGACY_PROCESS_GROUPS.select, [], LEGACY_PROCESS_GROUPS.fromRow);
    return [...mine, ...legacy.map((p) => ({ ...p, node: null }))].sort(byStart);
  }
}

/** started_at, then pgid, in byte order (ISO times). */
function byStart(a: ProcessRecord, b: ProcessRecord): number {
  return a.startedAt < b.startedAt ? -1 : a.startedAt > b.startedAt ? 1 : a.pgid - b.pgid;
}
