/** CDN cache flushes (migration 008), for every backend. */
import type { FlushRecord, FlushStore } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import { FLUSHES, flushChanges, flushFilter, flushNotFound, flushValues, type FlushUpdate } from '../records.ts';

// Served by cache_flushes_state_created (state, created_at, id): in order, the node a residual filter.
const PENDING_SQL = `${FLUSHES.select} WHERE state = 'pending' AND (node = $1 OR node IS NULL) ORDER BY created_at, id`;

export class Flushes implements FlushStore {
  #db: StoreDatabase;
  #node: string;

  /** `node`: what the flushes it records name when they name no node themselves, and whose pending ones it lists. */
  constructor(db: StoreDatabase, node: string) {
    this.#db = db;
    this.#node = node;
  }

  /** Throws BERTH_E_BAD_REQUEST for a bad record, BERTH_E_CONFLICT when a flush with this id is already recorded. */
  async createFlush(flush: FlushRecord): Promise<void> {
    await this.#db.insert('create flush', FLUSHES, flushValues({ ...flush, node: flush.node ?? this.#node }), { duplicate: `flush ${flush.id} is already recorded` });
  }

  /**
   * Changes only the fields present (an `undefined` value counts as absent; `null` clears error or
   * finishedAt). Throws BERTH_E_BAD_REQUEST for a field that cannot change or a bad value, and
   * BERTH_E_NOT_FOUND when the flush was never recorded.
   */
  async updateFlush(id: string, fields: FlushUpdate): Promise<void> {
    await this.#db.updateById('update flush', FLUSHES, id, flushChanges(fields), () => flushNotFound(id));
  }

  async getFlush(id: string): Promise<FlushRecord | null> {
    return this.#db.get('read flush', `${FLUSHES.select} WHERE id = $1`, [id], FLUSHES.fromRow);
  }

  async listPendingFlushes(): Promise<FlushRecord[]> {
    return this.#db.all('list pending flushes', PENDING_SQL, [this.#node], FLUSHES.fromRow);
  }

  /** Newest first (created_at, then id). Throws BERTH_E_BAD_REQUEST for a limit below 1. */
  async listFlushes(filter: { app?: string; deployId?: string; limit?: number } = {}): Promise<FlushRecord[]> {
    // Unfiltered and by app, served by cache_flushes_created and cache_flushes_app_created.
    return this.#db.list('list flushes', FLUSHES, flushFilter(filter), 'ORDER BY created_at DESC, id DESC');
  }

  async deleteFlushesBefore(before: string): Promise<number> {
    return this.#db.changes('delete flushes', `DELETE FROM cache_flushes WHERE created_at < $1 AND state <> 'pending'`, [before]);
  }
}
