/** Instance-count overrides set with `berth scale` (migration 009), for every backend. */
import type { ScaleOverride, ScaleStore } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import { SCALES, scaleValues } from '../records.ts';
import { upsert } from '../statements.ts';

const SET_SCALE_SQL = upsert(SCALES.name, SCALES.columns, ['app', 'process']);

export class Scales implements ScaleStore {
  #db: StoreDatabase;
  #node: string;

  /** `node`: what an override names when it names no node itself. */
  constructor(db: StoreDatabase, node: string) {
    this.#db = db;
    this.#node = node;
  }

  async listScales(app?: string): Promise<ScaleOverride[]> {
    if (app === undefined) return this.#db.all('list scale overrides', `${SCALES.select} ORDER BY app, process`, [], SCALES.fromRow);
    return this.#db.all('list scale overrides', `${SCALES.select} WHERE app = $1 ORDER BY process`, [app], SCALES.fromRow);
  }

  /** Throws BERTH_E_BAD_REQUEST for a missing app or type, a bad count or a bad time. */
  async setScale(scale: ScaleOverride): Promise<void> {
    await this.#db.changes('set scale override', SET_SCALE_SQL, scaleValues({ ...scale, node: scale.node ?? this.#node }));
  }

  async deleteScale(app: string, process: string): Promise<boolean> {
    return (await this.#db.changes('delete scale override', 'DELETE FROM scale_overrides WHERE app = $1 AND process = $2', [app, process])) > 0;
  }
}
