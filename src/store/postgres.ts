/**
 * The shared state store: PostgreSQL through the `pg` driver, for a fleet of gateways on one database.
 * It serves the same Store interface as the SQLite store (sqlite.ts), with the same repositories over it
 * (composed-store.ts, ./repositories/); what is PostgreSQL's own lives in ./postgres/: the pool
 * (database.ts) and the schema driver (schema.ts). Its migrations are ./migrations-postgres/, the same
 * versions as SQLite's in PostgreSQL's dialect.
 */
import { ComposedStore, type MigrationOptions } from './composed-store.ts';
import { PostgresDatabase } from './postgres/database.ts';

/** Connections the gateway's own pool opens when the config does not say. */
export const DEFAULT_POOL_SIZE = 4;

export interface PostgresStoreOptions extends MigrationOptions {
  /** `postgres://user:password@host:port/database`; the password never reaches a log or an error. */
  url: string;
  /** Most connections the gateway's pool opens (its own, apart from the apps' `db_connections`). */
  poolSize?: number;
}

export class PostgresStore extends ComposedStore {
  /** The URL without its password. */
  readonly name: string;

  /** Nothing is connected until `open`. */
  constructor(opts: PostgresStoreOptions) {
    const db = new PostgresDatabase({ url: opts.url, poolSize: opts.poolSize ?? DEFAULT_POOL_SIZE, logger: opts.logger });
    super(db, opts);
    this.name = db.name;
  }
}
