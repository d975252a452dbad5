/**
 * The state store: what berth must remember across restarts. SQLite (node:sqlite) is the embedded
 * default; PostgreSQL comes later for fleets, so this interface stays narrow and every method is async
 * even though SQLite answers synchronously.
 */
import type { Mode } from '../config/schema.ts';

export interface AppState {
  app: string;
  /** Release id, or null before the first release. */
  activeRelease: string | null;
  mode: Mode;
  modeMessage: string | null;
  /** Seconds, for the Retry-After header in maintenance/read-only. */
  modeRetryAfter: number | null;
  updatedAt: string;
}

export type ReleaseState = 'building' | 'ready' | 'active' | 'previous' | 'failed' | 'pruned';

export interface ReleaseRecord {
  app: string;
  id: string;
  /** ISO 8601. */
  createdAt: string;
  state: ReleaseState;
  /** What it was made from, e.g. an absolute directory path. */
  source: string;
  /** Git SHA or content hash. */
  revision: string | null;
}

export interface Store {
  /** Opens the database and runs migrations according to `migrations`. */
  open(): Promise<void>;
  close(): Promise<void>;

  getAppState(app: string): Promise<AppState | null>;
  listAppStates(): Promise<AppState[]>;
  /** Creates the app's row if missing. */
  setActiveRelease(app: string, releaseId: string): Promise<void>;
  setMode(app: string, mode: Mode, message: string | null, retryAfter: number | null): Promise<void>;

  /** Inserts or replaces a release row. */
  putRelease(release: ReleaseRecord): Promise<void>;
  getRelease(app: string, id: string): Promise<ReleaseRecord | null>;
  /** Newest first. */
  listReleases(app: string): Promise<ReleaseRecord[]>;
  setReleaseState(app: string, id: string, state: ReleaseState): Promise<void>;

  /** The schema version after migrations, for status output and tests. */
  schemaVersion(): Promise<number>;
}
