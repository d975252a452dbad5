/** The SQLite side of the migration rules (src/store/migrations.ts), on the bare connection `open` makes. */
import type { DatabaseSync } from 'node:sqlite';
import { quoteIdent, type Migration, type SchemaDriver } from '../migrations.ts';
import type { Row } from '../table.ts';

export class SqliteSchema implements SchemaDriver {
  readonly name: string;
  #db: DatabaseSync;

  constructor(db: DatabaseSync, path: string) {
    this.#db = db;
    this.name = path;
  }

  /** berth.db belongs to berth alone, so every table in it is a berth table, including ones a newer version added. */
  async dropAll(): Promise<string[]> {
    const db = this.#db;
    const tables = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).all() as Row[]).map((t) => String(t.name));
    const views = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'view'`).all() as Row[]).map((v) => String(v.name));
    // Foreign keys would make the drop order matter; the pragma is a no-op inside a transaction, so set it first.
    db.exec('PRAGMA foreign_keys = OFF');
    try {
      inTransaction(db, () => {
        for (const v of views) db.exec(`DROP VIEW ${quoteIdent(v)}`);
        for (const t of tables) db.exec(`DROP TABLE ${quoteIdent(t)}`);
      });
    } finally {
      db.exec('PRAGMA foreign_keys = ON');
    }
    return tables;
  }

  async hasMigrationsTable(): Promise<boolean> {
    return this.#db.prepare(`SELECT 1 AS one FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).get() !== undefined;
  }

  async createMigrationsTable(): Promise<void> {
    this.#db.exec(MIGRATIONS_TABLE_SQL);
  }

  async appliedVersions(): Promise<Set<number>> {
    return new Set((this.#db.prepare('SELECT version FROM schema_migrations').all() as Row[]).map((r) => Number(r.version)));
  }

  /** IMMEDIATE takes the write lock before the check, so a second gateway waits and then finds the file recorded. */
  async applyOnce(m: Migration): Promise<boolean> {
    const db = this.#db;
    return inTransaction(db, () => {
      if (db.prepare('SELECT 1 AS one FROM schema_migrations WHERE version = ?').get(m.version)) return false;
      this.#apply(m);
      return true;
    });
  }

  async applyAll(migrations: Migration[]): Promise<void> {
    inTransaction(this.#db, () => {
      this.#db.exec(MIGRATIONS_TABLE_SQL);
      for (const m of migrations) this.#apply(m);
    });
  }

  #apply(m: Migration): void {
    this.#db.exec(m.sql);
    this.#db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, new Date().toISOString());
  }
}

const MIGRATIONS_TABLE_SQL =
  'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)';

/** Runs `fn` inside BEGIN IMMEDIATE … COMMIT, rolling back when it throws. */
function inTransaction<T>(db: DatabaseSync, fn: () => T): T {
  db.exec('BEGIN IMMEDIATE');
  try {
    const result = fn();
    db.exec('COMMIT');
    return result;
  } catch (err) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw err;
  }
}
