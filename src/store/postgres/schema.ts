/**
 * The PostgreSQL side of the migration rules (src/store/migrations.ts), on the one client `open` holds.
 * Several gateways of a fleet may start at once on one database: `underMigrationLock` makes them take
 * their turn, so each file is applied exactly once and a `model` or `reset_state` drop never races another
 * node's migration.
 */
import type pg from 'pg';
import { quoteIdent, type Migration, type SchemaDriver } from '../migrations.ts';

/** The advisory lock key of berth's migrations (any fixed 64-bit number that other software is unlikely to take). */
const MIGRATION_LOCK_KEY = '7311299454302512423';

/** Runs `fn` holding the session-level advisory lock of berth's migrations on `client`. */
export async function underMigrationLock<T>(client: pg.ClientBase, fn: () => Promise<T>): Promise<T> {
  await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
  try {
    return await fn();
  } finally {
    // A client whose connection broke has lost the lock with its session; that is not a second error.
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]).catch(() => {});
  }
}

export class PostgresSchema implements SchemaDriver {
  readonly name: string;
  #client: pg.ClientBase;

  constructor(client: pg.ClientBase, name: string) {
    this.#client = client;
    this.name = name;
  }

  /**
   * Drops every table and view in the schema berth's tables live in (the first of the search path): a
   * database (or schema) given to berth belongs to berth alone, as berth.db does, so that includes tables
   * a newer version added. CASCADE takes the foreign keys and identity sequences with them.
   */
  async dropAll(): Promise<string[]> {
    return this.#transaction(async (c) => {
      const views = (await c.query(`SELECT viewname AS name FROM pg_views WHERE schemaname = current_schema() ORDER BY viewname`)).rows;
      const tables = (await c.query(`SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename`)).rows;
      for (const v of views) await c.query(`DROP VIEW IF EXISTS ${quoteIdent(String(v.name))} CASCADE`);
      for (const t of tables) await c.query(`DROP TABLE IF EXISTS ${quoteIdent(String(t.name))} CASCADE`);
      return tables.map((t) => String(t.name));
    });
  }

  async hasMigrationsTable(): Promise<boolean> {
    const row = (await this.#client.query(`SELECT to_regclass('schema_migrations') IS NOT NULL AS present`)).rows[0];
    return row?.present === true;
  }

  async createMigrationsTable(): Promise<void> {
    await this.#client.query(MIGRATIONS_TABLE_SQL);
  }

  async appliedVersions(): Promise<Set<number>> {
    return new Set((await this.#client.query('SELECT version FROM schema_migrations')).rows.map((r) => Number(r.version)));
  }

  /** The check and the file share one transaction; the migration lock the caller holds keeps a second node out meanwhile. */
  async applyOnce(m: Migration): Promise<boolean> {
    return this.#transaction(async (c) => {
      if ((await c.query('SELECT 1 AS one FROM schema_migrations WHERE version = $1', [m.version])).rows.length > 0) return false;
      await apply(c, m);
      return true;
    });
  }

  async applyAll(migrations: Migration[]): Promise<void> {
    await this.#transaction(async (c) => {
      await c.query(MIGRATIONS_TABLE_SQL);
      for (const m of migrations) await apply(c, m);
    });
  }

  /** Runs `fn` inside BEGIN … COMMIT on the client, rolling back when it throws: PostgreSQL's DDL is transactional too. */
  async #transaction<T>(fn: (c: pg.ClientBase) => Promise<T>): Promise<T> {
    const c = this.#client;
    await c.query('BEGIN');
    try {
      const result = await fn(c);
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    }
  }
}

/** Runs a file (the simple query protocol: several statements in one text) and records it. */
async function apply(c: pg.ClientBase, m: Migration): Promise<void> {
  await c.query(m.sql);
  await c.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, new Date().toISOString()]);
}

const MIGRATIONS_TABLE_SQL =
  'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT COLLATE "C" NOT NULL)';
