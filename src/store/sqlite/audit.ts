/** The audit log in SQLite (migration 003). */
import type { AuditFilter, AuditOutcome, AuditRecord, AuditStore } from '../store.ts';
import { AUDIT, auditFilter, auditFinishDetail, auditNotFound, auditValues } from '../records.ts';
import type { SqliteDatabase } from './database.ts';

// A finish without detail keeps the detail written at the start.
const FINISH_SQL = 'UPDATE audit SET outcome = ?, detail = COALESCE(?, detail), finished_at = ? WHERE id = ?';

export class SqliteAudit implements AuditStore {
  #db: SqliteDatabase;

  constructor(db: SqliteDatabase) {
    this.#db = db;
  }

  /** Returns the new row's id. */
  async addAudit(entry: Omit<AuditRecord, 'id'>): Promise<number> {
    return this.#db.insert('add audit row', AUDIT, auditValues(entry));
  }

  async finishAudit(id: number, outcome: Exclude<AuditOutcome, 'pending'>, detail: string | null, finishedAt: string): Promise<void> {
    const finalDetail = auditFinishDetail(outcome, detail);
    this.#db.change('finish audit row', FINISH_SQL, [outcome, finalDetail, finishedAt, id], () => auditNotFound(id));
  }

  /** Newest first (occurred_at, then id). */
  async listAudit(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    return this.#db.list('list audit rows', AUDIT, auditFilter(filter), 'ORDER BY occurred_at DESC, id DESC');
  }

  async deleteAuditBefore(before: string): Promise<number> {
    return this.#db.run('delete audit rows', (q) => Number(q('DELETE FROM audit WHERE occurred_at < ?').run(before).changes));
  }
}
