/** The audit log (migration 003), for every backend. */
import type { AuditFilter, AuditOutcome, AuditRecord, AuditStore } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import { AUDIT, auditFilter, auditFinishDetail, auditNotFound, auditValues } from '../records.ts';

// A finish without detail keeps the detail written at the start.
const FINISH_SQL = 'UPDATE audit SET outcome = $1, detail = COALESCE($2, detail), finished_at = $3 WHERE id = $4';

export class Audit implements AuditStore {
  #db: StoreDatabase;
  #node: string;

  /** `node`: what the rows it adds name when they name no node themselves. */
  constructor(db: StoreDatabase, node: string) {
    this.#db = db;
    this.#node = node;
  }

  /** Returns the new row's id. */
  async addAudit(entry: Omit<AuditRecord, 'id'>): Promise<number> {
    return this.#db.insert('add audit row', AUDIT, auditValues({ ...entry, node: entry.node ?? this.#node }));
  }

  async finishAudit(id: number, outcome: Exclude<AuditOutcome, 'pending'>, detail: string | null, finishedAt: string): Promise<void> {
    const finalDetail = auditFinishDetail(outcome, detail);
    await this.#db.change('finish audit row', FINISH_SQL, [outcome, finalDetail, finishedAt, id], () => auditNotFound(id));
  }

  /** Newest first (occurred_at, then id). */
  async listAudit(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    return this.#db.list('list audit rows', AUDIT, auditFilter(filter), 'ORDER BY occurred_at DESC, id DESC');
  }

  async deleteAuditBefore(before: string): Promise<number> {
    return this.#db.changes('delete audit rows', 'DELETE FROM audit WHERE occurred_at < $1', [before]);
  }
}
