/** Apps' state (active release, mode) and their releases, in SQLite (migrations 001 and 005). */
import type { Mode } from '../../config/schema.ts';
import type { AppState, AppStore, ReleaseInput, ReleaseRecord, ReleaseState } from '../store.ts';
import { APPS, RELEASES, checkMode, checkReleaseState, releaseNotFound, releaseValues } from '../records.ts';
import type { SqliteDatabase } from './database.ts';

const SET_ACTIVE_SQL = `INSERT INTO apps (app, active_release, updated_at) VALUES (?1, ?2, ?3)
  ON CONFLICT (app) DO UPDATE SET active_release = excluded.active_release, updated_at = excluded.updated_at`;
const SET_MODE_SQL = `INSERT INTO apps (app, mode, mode_message, mode_retry_after, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
  ON CONFLICT (app) DO UPDATE SET mode = excluded.mode, mode_message = excluded.mode_message,
    mode_retry_after = excluded.mode_retry_after, updated_at = excluded.updated_at`;
// An upsert rather than INSERT OR REPLACE: REPLACE deletes the row first, which would cascade into rows
// that later migrations hang off a release.
const PUT_RELEASE_SQL = `INSERT INTO releases (${RELEASES.columns.join(', ')}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
  ON CONFLICT (app, id) DO UPDATE SET created_at = excluded.created_at, state = excluded.state,
    source = excluded.source, revision = excluded.revision, pruned_at = excluded.pruned_at`;

export class SqliteApps implements AppStore {
  #db: SqliteDatabase;

  constructor(db: SqliteDatabase) {
    this.#db = db;
  }

  async getAppState(app: string): Promise<AppState | null> {
    return this.#db.get('read app state', `${APPS.select} WHERE app = ?`, [app], APPS.fromRow);
  }

  async listAppStates(): Promise<AppState[]> {
    return this.#db.all('list app states', `${APPS.select} ORDER BY app`, [], APPS.fromRow);
  }

  async setActiveRelease(app: string, releaseId: string): Promise<void> {
    this.#db.run('set active release', (q) => q(SET_ACTIVE_SQL).run(app, releaseId, new Date().toISOString()));
  }

  async setMode(app: string, mode: Mode, message: string | null, retryAfter: number | null): Promise<void> {
    checkMode(mode, retryAfter);
    this.#db.run('set mode', (q) => q(SET_MODE_SQL).run(app, mode, message, retryAfter, new Date().toISOString()));
  }

  async putRelease(release: ReleaseInput): Promise<void> {
    const values = releaseValues(release);
    this.#db.run('put release', (q) => q(PUT_RELEASE_SQL).run(...values));
  }

  async getRelease(app: string, id: string): Promise<ReleaseRecord | null> {
    return this.#db.get('read release', `${RELEASES.select} WHERE app = ? AND id = ?`, [app, id], RELEASES.fromRow);
  }

  /** Newest first (created_at, then id). */
  async listReleases(app: string): Promise<ReleaseRecord[]> {
    return this.#db.all('list releases', `${RELEASES.select} WHERE app = ? ORDER BY created_at DESC, id DESC`, [app], RELEASES.fromRow);
  }

  /** Throws BERTH_E_NOT_FOUND when the release was never recorded. */
  async setReleaseState(app: string, id: string, state: ReleaseState): Promise<void> {
    checkReleaseState(state);
    this.#db.change('set release state', 'UPDATE releases SET state = ? WHERE app = ? AND id = ?', [state, app, id], () => releaseNotFound(app, id));
  }

  /** Throws BERTH_E_NOT_FOUND when the release was never recorded. */
  async setReleasePrunedAt(app: string, id: string, prunedAt: string): Promise<void> {
    this.#db.change('set release pruned time', 'UPDATE releases SET pruned_at = ? WHERE app = ? AND id = ?', [prunedAt, app, id], () => releaseNotFound(app, id));
  }
}
