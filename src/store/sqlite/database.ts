/**
 * One SQLite connection (node:sqlite's DatabaseSync) as the repositories use it: statements prepared on
 * first use and kept until close, and `run`, the one place where a failed statement becomes a BerthError.
 */
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BerthError, ErrorCodes, errorMessage } from '../../lib/errors.ts';
import { failure, type Fault, type FaultMessages } from '../failure.ts';
import type { RowFilter } from '../records.ts';
import type { Row, SqlValue, Table } from '../table.ts';

/** How long a writer waits for another connection's lock (a second gateway, the CLI) before failing. */
const BUSY_TIMEOUT_MS = 5_000;

// SQLite extended result codes (sqlite3.h) for the constraint failures callers can cause.
const SQLITE_CONSTRAINT_FOREIGNKEY = 787;
const SQLITE_CONSTRAINT_PRIMARYKEY = 1555;
const SQLITE_CONSTRAINT_UNIQUE = 2067;

/** A prepared statement for `sql`, from the connection's cache. */
export type Prepare = (sql: string) => StatementSync;

export class SqliteDatabase {
  readonly path: string;
  #db: DatabaseSync | null = null;
  #statements = new Map<string, StatementSync>();
  #prepare: Prepare = (sql) => {
    let st = this.#statements.get(sql);
    if (!st) {
      st = this.#connection().prepare(sql);
      this.#statements.set(sql, st);
    }
    return st;
  };

  constructor(path: string) {
    this.path = path;
  }

  get isOpen(): boolean {
    return this.#db !== null;
  }

  /**
   * Opens the file (creating its directory) with WAL, a busy timeout and foreign keys, lets `prepare`
   * bring the schema in line on the bare connection, and only then serves `run`. Throws BERTH_E_STORE,
   * and stays closed, when the file cannot be opened or `prepare` fails.
   */
  async open(prepare: (db: DatabaseSync) => Promise<void>): Promise<void> {
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
      await prepare(db);
    } catch (err) {
      db.close();
      if (err instanceof BerthError) throw err;
      throw new BerthError(ErrorCodes.store, `cannot prepare SQLite database ${this.path}: ${errorMessage(err)}`, { cause: err });
    }
    this.#db = db;
  }

  /** Returns whether it was open. */
  close(): boolean {
    const db = this.#db;
    if (!db) return false;
    this.#db = null;
    this.#statements.clear();
    db.close();
    return true;
  }

  /**
   * Runs `fn` with the statement cache. Throws BERTH_E_STORE when the store is not open; a statement
   * that fails becomes BERTH_E_CONFLICT / BERTH_E_NOT_FOUND for the faults `messages` expects, else
   * BERTH_E_STORE naming `action`.
   */
  run<T>(action: string, fn: (q: Prepare) => T, messages?: FaultMessages): T {
    this.#connection();
    try {
      return fn(this.#prepare);
    } catch (err) {
      throw failure(action, err, sqliteFault(err), messages);
    }
  }

  /** The first row `sql` selects, read into a record, or null. */
  get<T>(action: string, sql: string, args: SqlValue[], fromRow: (row: Row) => T): T | null {
    return this.run(action, (q) => {
      const row = q(sql).get(...args) as Row | undefined;
      return row ? fromRow(row) : null;
    });
  }

  /** Every row `sql` selects, read into records. */
  all<T>(action: string, sql: string, args: SqlValue[], fromRow: (row: Row) => T): T[] {
    return this.run(action, (q) => (q(sql).all(...args) as Row[]).map(fromRow));
  }

  /** Inserts one row of `table`; returns the row id SQLite gave it. */
  insert(action: string, table: Table<object>, values: SqlValue[], messages?: FaultMessages): number {
    const sql = `INSERT INTO ${table.name} (${table.columns.join(', ')}) VALUES (${table.columns.map(() => '?').join(', ')})`;
    return this.run(action, (q) => Number(q(sql).run(...values).lastInsertRowid), messages);
  }

  /**
   * The rows of `table` that `filter` selects, in `orderBy` order, read into records. An empty `oneOf`
   * matches nothing and asks the database nothing.
   */
  list<R extends object>(action: string, table: Table<R>, filter: RowFilter, orderBy: string): R[] {
    const query = listQuery(table.select, filter, orderBy);
    return query ? this.all(action, query.sql, query.args, table.fromRow) : [];
  }

  /** Sets `changes` on the row of `table` whose `id` column is `id`; throws `notFound` when there is none. */
  updateById(action: string, table: Table<object>, id: string, changes: [column: string, value: SqlValue][], notFound: () => BerthError): void {
    // With no changes the id is set to itself, so an unknown id still finds no row.
    const set = changes.length ? changes.map(([column]) => `${column} = ?`).join(', ') : 'id = id';
    this.change(action, `UPDATE ${table.name} SET ${set} WHERE id = ?`, [...changes.map(([, value]) => value), id], notFound);
  }

  /** `run` for a write that must touch a row: throws `notFound` when it changed none. */
  change(action: string, sql: string, args: SqlValue[], notFound: () => BerthError): void {
    const changes = this.run(action, (q) => q(sql).run(...args).changes);
    if (Number(changes) === 0) throw notFound();
  }

  #connection(): DatabaseSync {
    if (!this.#db) throw new BerthError(ErrorCodes.store, `store ${this.path} is not open`);
    return this.#db;
  }
}

/** Runs `fn` inside BEGIN IMMEDIATE … COMMIT, rolling back when it throws. */
export function inTransaction<T>(db: DatabaseSync, fn: () => T): T {
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

/**
 * The WHERE clause (possibly empty) and its arguments for a list filter, followed by `orderBy` and the
 * limit. One `column = ?` per condition that is set: `(? IS NULL OR app = ?)` would keep SQLite off the
 * indexes. Null when the filter can match nothing (an empty `oneOf`).
 */
function listQuery(select: string, filter: RowFilter, orderBy: string): { sql: string; args: SqlValue[] } | null {
  const where: string[] = [];
  const args: SqlValue[] = [];
  for (const [column, value] of filter.equal) {
    where.push(`${column} = ?`);
    args.push(value);
  }
  if (filter.oneOf) {
    const [column, values] = filter.oneOf;
    if (values.length === 0) return null;
    where.push(`${column} IN (${values.map(() => '?').join(', ')})`);
    args.push(...values);
  }
  if (filter.atLeast) {
    where.push(`${filter.atLeast[0]} >= ?`);
    args.push(filter.atLeast[1]);
  }
  args.push(filter.limit);
  return { sql: `${select} ${where.length ? `WHERE ${where.join(' AND ')} ` : ''}${orderBy} LIMIT ?`, args };
}

function sqliteFault(err: unknown): Fault {
  const code = (err as { errcode?: unknown } | null)?.errcode;
  if (code === SQLITE_CONSTRAINT_PRIMARYKEY || code === SQLITE_CONSTRAINT_UNIQUE) return 'duplicate';
  if (code === SQLITE_CONSTRAINT_FOREIGNKEY) return 'missing-parent';
  return 'other';
}
