/** Runs of scheduled and one-off tasks and the cleanup job (migration 004), for every backend. */
import type { TaskRunFilter, TaskRunRecord, TaskStore } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import {
  INTERRUPTED_TASK_ERROR,
  TASK_RUNS,
  taskRunFilter,
  taskRunFinishChanges,
  taskRunNotFound,
  taskRunValues,
  type TaskRunFinish,
} from '../records.ts';
import type { Row } from '../table.ts';

// One statement, so the runs it reports are exactly the ones it finished, even with another node writing.
// RETURNING comes back in no set order (and SQLite takes no CTE around an UPDATE), so the caller sorts.
const INTERRUPT_SQL = `UPDATE task_runs SET state = 'interrupted', finished_at = $1, error = COALESCE(error, $2) WHERE state = 'running' AND (node = $3 OR node IS NULL) RETURNING id, started_at`;

/** Task runs; the retention delete of deploys lives with the deploys (deploys.ts). */
export class TaskRuns implements Omit<TaskStore, 'deleteDeploysBefore'> {
  #db: StoreDatabase;
  #node: string;

  /** `node`: what the runs it records name, and whose runs a start interrupts. */
  constructor(db: StoreDatabase, node: string) {
    this.#db = db;
    this.#node = node;
  }

  /** Throws BERTH_E_CONFLICT when a run with this id is already recorded. */
  async createTaskRun(run: TaskRunRecord): Promise<void> {
    await this.#db.insert('create task run', TASK_RUNS, taskRunValues({ ...run, node: run.node ?? this.#node }), { duplicate: `task run ${run.id} is already recorded` });
  }

  /** Throws BERTH_E_NOT_FOUND for an unknown id. */
  async finishTaskRun(id: string, fields: TaskRunFinish): Promise<void> {
    await this.#db.updateById('finish task run', TASK_RUNS, id, taskRunFinishChanges(fields), () => taskRunNotFound(id));
  }

  async getTaskRun(id: string): Promise<TaskRunRecord | null> {
    return this.#db.get('read task run', `${TASK_RUNS.select} WHERE id = $1`, [id], TASK_RUNS.fromRow);
  }

  /** Newest first (started_at, then id). */
  async listTaskRuns(filter: TaskRunFilter = {}): Promise<TaskRunRecord[]> {
    return this.#db.list('list task runs', TASK_RUNS, taskRunFilter(filter), 'ORDER BY started_at DESC, id DESC');
  }

  /** The ids it finished, oldest first (started_at, then id). */
  async interruptTaskRuns(finishedAt: string): Promise<string[]> {
    const rows = await this.#db.rows('interrupt task runs', INTERRUPT_SQL, [finishedAt, INTERRUPTED_TASK_ERROR, this.#node]);
    return rows.sort(byStartThenId).map((row) => String(row.id));
  }

  async deleteTaskRunsBefore(before: string): Promise<number> {
    return this.#db.changes('delete task runs', `DELETE FROM task_runs WHERE started_at < $1 AND state <> 'running'`, [before]);
  }
}

/** started_at, then id, compared as the database's ORDER BY does (byte order: ISO times and ASCII ids). */
function byStartThenId(a: Row, b: Row): number {
  return compare(String(a.started_at), String(b.started_at)) || compare(String(a.id), String(b.id));
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
