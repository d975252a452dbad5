/** Apps' state (active release, mode) and their releases (migrations 001 and 005), for every backend. */
import type { Mode } from '../../config/schema.ts';
import type { AppState, AppStore, ReleaseInput, ReleaseRecord, ReleaseState } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import { APPS, RELEASES, checkMode, checkReleaseState, releaseNotFound, releaseValues } from '../records.ts';
import { upsert } from '../statements.ts';

const SET_ACTIVE_SQL = upsert('apps', ['app', 'active_release', 'updated_at'], ['app']);
const SET_MODE_SQL = upsert('apps', ['app', 'mode', 'mode_message', 'mode_retry_after', 'updated_at'], ['app']);
const REQUEST_RELOAD_SQL = `INSERT INTO apps (app, reloads, updated_at) VALUES ($1, 1, $2)
  ON CONFLICT (app) DO UPDATE SET reloads = apps.reloads + 1, updated_at = excluded.updated_at RETURNING reloads`;
const PUT_RELEASE_SQL = upsert(RELEASES.name, RELEASES.columns, ['app', 'id']);

export class Apps implements AppStore {
  #db: StoreDatabase;

  constructor(db: StoreDatabase) {
    this.#db = db;
  }

  async getAppState(app: string): Promise<AppState | null> {
    return this.#db.get('read app state', `${APPS.select} WHERE app = $1`, [app], APPS.fromRow);
  }

  async listAppStates(): Promise<AppState[]> {
    return this.#db.all('list app states', `${APPS.select} ORDER BY app`, [], APPS.fromRow);
  }

  async setActiveRelease(app: string, releaseId: string): Promise<void> {
    await this.#db.changes('set active release', SET_ACTIVE_SQL, [app, releaseId, new Date().toISOString()]);
  }

  async setMode(app: string, mode: Mode, message: string | null, retryAfter: number | null): Promise<void> {
    checkMode(mode, retryAfter);
    await this.#db.changes('set mode', SET_MODE_SQL, [app, mode, message, retryAfter, new Date().toISOString()]);
  }

  async requestReload(app: string): Promise<number> {
    const rows = await this.#db.rows('count a reload', REQUEST_RELOAD_SQL, [app, new Date().toISOString()]);
    return Number(rows[0]?.reloads ?? 0);
  }

  async putRelease(release: ReleaseInput): Promise<void> {
    await this.#db.changes('put release', PUT_RELEASE_SQL, releaseValues(release));
  }

  async getRelease(app: string, id: string): Promise<ReleaseRecord | null> {
    return this.#db.get('read release', `${RELEASES.select} WHERE app = $1 AND id = $2`, [app, id], RELEASES.fromRow);
  }

  /** Newest first (created_at, then id). */
  async listReleases(app: string): Promise<ReleaseRecord[]> {
    return this.#db.all('list releases', `${RELEASES.select} WHERE app = $1 ORDER BY created_at DESC, id DESC`, [app], RELEASES.fromRow);
  }

  /** Throws BERTH_E_NOT_FOUND when the release was never recorded. */
  async setReleaseState(app: string, id: string, state: ReleaseState): Promise<void> {
    checkReleaseState(state);
    await this.#db.change('set release state', 'UPDATE releases SET state = $1 WHERE app = $2 AND id = $3', [state, app, id], () => releaseNotFound(app, id));
  }

  /** Throws BERTH_E_NOT_FOUND when the release was never recorded. */
  async setReleasePrunedAt(app: string, id: string, prunedAt: string): Promise<void> {
    await this.#db.change('set release pruned time', 'UPDATE releases SET pruned_at = $1 WHERE app = $2 AND id = $3', [prunedAt, app, id], () => releaseNotFound(app, id));
  }
}
