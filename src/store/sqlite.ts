/**
 * The embedded state store: SQLite through node:sqlite, one file in the state dir. It serves the same
 * Store interface as the PostgreSQL store (postgres.ts), with the same repositories over it
 * (composed-store.ts, ./repositories/); what is SQLite's own lives in ./sqlite/: the connection
 * (database.ts) and the schema driver (schema.ts). Its migrations are ./migrations/.
 */
import { ComposedStore, type MigrationOptions } from './composed-store.ts';
import { SqliteDatabase } from './sqlite/database.ts';

export interface SqliteStoreOptions extends MigrationOptions {
  /** The database file; its parent directory is created. */
  path: string;
}

export class SqliteStore extends ComposedStore {
  readonly path: string;

  /** Nothing is opened until `open`, which sets WAL, a busy timeout and foreign keys. */
  constructor(opts: SqliteStoreOptions) {
    super(new SqliteDatabase(opts.path), opts);
    this.path = opts.path;
  }
}
