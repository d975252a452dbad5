/**
 * The embedded state store: SQLite through node:sqlite. Every call is synchronous under the hood and
 * answers through the async Store interface, which a PostgreSQL store implements the same way.
 *
 * The pieces any backend shares live beside this file: the migration rules (migrations.ts), what a
 * valid record is and how it maps to a row (records.ts, table.ts), how a failed call becomes a
 * BerthError (failure.ts), and the Store methods over a backend's repositories (composed-store.ts).
 * What is SQLite's own lives in ./sqlite/: the connection (database.ts), the schema driver (schema.ts)
 * and one repository per part of the Store interface.
 */
import type { Logger } from '../lib/logger.ts';
import { ComposedStore } from './composed-store.ts';
import { loadMigrations, migrate, MIGRATIONS_DIR, type MigrationPolicy } from './migrations.ts';
import { SqliteDatabase } from './sqlite/database.ts';
import { SCHEMA_VERSION_SQL, SqliteSchema } from './sqlite/schema.ts';
import { SqliteApps } from './sqlite/apps.ts';
import { SqliteDeploys } from './sqlite/deploys.ts';
import { SqliteAudit } from './sqlite/audit.ts';
import { SqliteTaskRuns } from './sqlite/task-runs.ts';

export interface SqliteStoreOptions {
  /** The database file; its parent directory is created. */
  path: string;
  migrations: MigrationPolicy;
  /** Drop every table before migrating (development only). */
  resetState: boolean;
  logger: Logger;
  /** Where the NNN-name.sql files are; defaults to the ones that ship with this build (tests point elsewhere). */
  migrationsDir?: string;
}

export class SqliteStore extends ComposedStore {
  readonly path: string;
  #opts: SqliteStoreOptions;
  #db: SqliteDatabase;

  constructor(opts: SqliteStoreOptions) {
    const db = new SqliteDatabase(opts.path);
    super({ apps: new SqliteApps(db), deploys: new SqliteDeploys(db), audit: new SqliteAudit(db), taskRuns: new SqliteTaskRuns(db) });
    this.path = opts.path;
    this.#opts = opts;
    this.#db = db;
  }

  /**
   * Opens the database (WAL, busy timeout, foreign keys), optionally drops every table (`resetState`),
   * then brings the schema in line with `migrations`. Throws BERTH_E_STORE, and leaves the store closed,
   * when the database cannot be opened, a migration fails, or `none` finds the schema missing or behind.
   */
  async open(): Promise<void> {
    const { migrations: policy, resetState, logger } = this.#opts;
    const migrations = await loadMigrations(this.#opts.migrationsDir ?? MIGRATIONS_DIR);
    await this.#db.open((db) => migrate(new SqliteSchema(db, this.path), migrations, { policy, resetState, logger }));
    logger.info({ path: this.path, migrations: policy, schemaVersion: await this.schemaVersion() }, 'store opened');
  }

  async close(): Promise<void> {
    if (this.#db.close()) this.#opts.logger.info({ path: this.path }, 'store closed');
  }

  async schemaVersion(): Promise<number> {
    return this.#db.run('read schema version', (q) => Number((q(SCHEMA_VERSION_SQL).get() as { version: number }).version));
  }
}
