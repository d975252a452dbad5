/**
 * One SQLite connection (node:sqlite's DatabaseSync) as the shared repositories use it (../database.ts):
 * statements prepared on first use and kept until close, and `#run`, the one place where a failed
 * statement becomes a BerthError. node:sqlite answers synchronously; each call is still a promise, so
 * the repositories await one interface for every backend, and a statement runs whole before the next.
 */
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BerthError, ErrorCodes, errorMessage } from '../../lib/errors.ts';
import { StoreDatabase } from '../database.ts';
import { failure, type Fault, type FaultMessages } from '../failure.ts';
import { MIGRATIONS_DIR, type SchemaDriver } from '../migrations.ts';
import { insertRow } from '../statements.ts';
import type { Row, SqlValue, Table } from '../table.ts';
import { SqliteSchema } from './schema.ts';

/** How long a writer waits for another connection's lock (a second gateway, the CLI) before failing. */
const BUSY_TIMEOUT_MS = 5_000;

// SQLite extended result codes (sqlite3.h) for the constraint failures callers can cause.
const SQLITE_CONSTRAINT_FOREIGNKEY = 787;
const SQLITE_CONSTRAINT_PRIMARYKEY = 1555;
const SQLITE_CONSTRAINT_UNIQUE = 2067;

/** A prepared statement for `sql`, from the connection's cache. */
type Prepare = (sql: string) => StatementSync;

export class SqliteDatabase extends StoreDatabase {
  readonly path: string;
  readonly logged: Readonly<Record<string, string>>;
  readonly migrationsDir = MIGRATIONS_DIR;
  readonly shared = false;
  #db: DatabaseSync | null = null;
  #statements = new Map<string, StatementSync>();
  #prepare: Prepare = (sql) => {
    let st = this.#statements.get(sql);
    if (!st) {
      st = this.#connection().prepare(sqliteDialect(sql));
      this.#statements.set(sql, st);
    }
    return st;
  };

  constructor(path: string) {
    super();
    this.path = path;
    this.logged = { path };
  }

  /**
   * Opens the file (creating its directory) with WAL, a busy timeout and foreign keys, lets `migrate`
   * bring the schema in line on the bare connection, and only then serves the repositories.
   */
  async open(migrate: (schema: SchemaDriver) => Promise<void>): Promise<void> {
    if (this.#db) throw new BerthError(ErrorCodes.store, `store ${this.path} is already open`);
    let db: DatabaseSync;
    try {
      await mkdir(dirname(this.path), { recursive: true });
      db = new DatabaseSync(this.path, { enableForeignKeyConstraints: true, timeout: BUSY_TIMEOUT_MS });
      db.exec(`PRAGMA journal_mode = WAL; PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;`);
    } catch (err) {
      throw new BerthError(ErrorCodes.store, `cannot open SQLite database ${this.path}: ${errorMessage(err)}`, { cause: err });
    }
    try {
      await migrate(new SqliteSchema(db, this.path));
    } catch (err) {
      db.close();
      if (err instanceof BerthError) throw err;
      throw new BerthError(ErrorCodes.store, `cannot prepare SQLite database ${this.path}: ${errorMessage(err)}`, { cause: err });
    }
    this.#db = db;
  }

  async close(): Promise<boolean> {
    const db = this.#db;
    if (!db) return false;
    this.#db = null;
    this.#statements.clear();
    db.close();
    return true;
  }

  async rows(action: string, sql: string, args: SqlValue[], messages?: FaultMessages): Promise<Row[]> {
    return this.#run(action, () => this.#prepare(sql).all(...args) as Row[], messages);
  }

  async changes(action: string, sql: string, args: SqlValue[], messages?: FaultMessages): Promise<number> {
    return this.#run(action, () => Number(this.#prepare(sql).run(...args).changes), messages);
  }

  /** SQLite hands back the row id of the insert, which an INTEGER PRIMARY KEY (the generated id) is. */
  async insert(action: string, table: Table<object>, values: SqlValue[], messages?: FaultMessages): Promise<number> {
    return this.#run(action, () => {
      const rowid = Number(this.#prepare(insertRow(table)).run(...values).lastInsertRowid);
      return table.generated ? rowid : 0;
    }, messages);
  }

  /** Runs `fn`, throwing BERTH_E_STORE when the store is not open and mapping a failed statement to a BerthError. */
  #run<T>(action: string, fn: () => T, messages?: FaultMessages): T {
    this.#connection();
    try {
      return fn();
    } catch (err) {
      throw failure(action, err, sqliteFault(err), messages);
    }
  }

  #connection(): DatabaseSync {
    if (!this.#db) throw new BerthError(ErrorCodes.store, `store ${this.path} is not open`);
    return this.#db;
  }
}

/**
 * The statement with SQLite's `?n` for each `$n`: SQLite would take `$1` for a named parameter, numbered
 * by where it first appears rather than by its digits. The statements bind values, never quote them,
 * so no `$` stands inside a literal.
 */
function sqliteDialect(sql: string): string {
  return sql.replace(/\$(\d+)/g, '?$1');
}

function sqliteFault(err: unknown): Fault {
  const code = (err as { errcode?: unknown } | null)?.errcode;
  if (code === SQLITE_CONSTRAINT_PRIMARYKEY || code === SQLITE_CONSTRAINT_UNIQUE) return 'duplicate';
  if (code === SQLITE_CONSTRAINT_FOREIGNKEY) return 'missing-parent';
  return 'other';
}
