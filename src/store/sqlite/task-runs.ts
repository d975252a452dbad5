/** Runs of scheduled and one-off tasks and the cleanup job, in SQLite (migration 004). */
import type { TaskRunFilter, TaskRunRecord, TaskStore } from '../store.ts';
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
import type { SqliteDatabase } from './database.ts';

/** Task runs; the retention delete of deploys lives with the deploys (SqliteDeploys). */
export class SqliteTaskRuns implements Omit<TaskStore, 'deleteDeploysBefore'> {
  #db: SqliteDatabase;

  constructor(db: SqliteDatabase) {
    this.#db = db;
  }

  /** Throws BERTH_E_CONFLICT when a run with this id is already recorded. */
  async createTaskRun(run: TaskRunRecord): Promise<void> {
    this.#db.insert('create task run', TASK_RUNS, taskRunValues(run), { duplicate: `task run ${run.id} is already recorded` });
  }

  /** Throws BERTH_E_NOT_FOUND for an unknown id. */
  async finishTaskRun(id: string, fields: TaskRunFinish): Promise<void> {
    this.#db.updateById('finish task run', TASK_RUNS, id, taskRunFinishChanges(fields), () => taskRunNotFound(id));
  }

  async getTaskRun(id: string): Promise<TaskRunRecord | null> {
    return this.#db.get('read task run', `${TASK_RUNS.select} WHERE id = ?`, [id], TASK_RUNS.fromRow);
  }

  /** Newest first (started_at, then id). */
  async listTaskRuns(filter: TaskRunFilter = {}): Promise<TaskRunRecord[]> {
    return this.#db.list('list task runs', TASK_RUNS, taskRunFilter(filter), 'ORDER BY started_at DESC, id DESC');
  }

  async interruptTaskRuns(finishedAt: string): Promise<string[]> {
    return this.#db.run('interrupt task runs', (q) => {
      const ids = (q(`SELECT id FROM task_runs WHERE state = 'running' ORDER BY started_at, id`).all() as Row[]).map((r) => String(r.id));
      if (ids.length > 0) {
        q(`UPDATE task_runs SET state = 'interrupted', finished_at = ?, error = COALESCE(error, ?) WHERE state = 'running'`).run(finishedAt, INTERRUPTED_TASK_ERROR);
      }
      return ids;
    });
  }

  async deleteTaskRunsBefore(before: string): Promise<number> {
    return this.#db.run('delete task runs', (q) => Number(q(`DELETE FROM task_runs WHERE started_at < ? AND state <> 'running'`).run(before).changes));
  }
}
