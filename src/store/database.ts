/**
 * What the repositories (./repositories/) need from a backend's connection, so they are written once for
 * every backend. A backend supplies three primitives (rows, changes, insert), each the one place where a
 * failed call becomes a BerthError (failure.ts), plus how it opens, migrates and closes; the helpers
 * built on them (get, all, list, updateById, change) are shared here.
 *
 * Statements are written with PostgreSQL's numbered placeholders, `$1`, `$2`...; SQLite reads them as
 * its own `?1`, `?2`... (sqlite/database.ts). What else differs between the dialects (identity ids,
 * the NUL character) stays inside each backend's database.ts.
 */
import { BerthError } from '../lib/errors.ts';
import { failure, type FaultMessages } from './failure.ts';
import type { SchemaDriver } from './migrations.ts';
import type { RowFilter } from './records.ts';
import { listQuery } from './statements.ts';
import type { Row, SqlValue, Table } from './table.ts';

export abstract class StoreDatabase {
  /** How log lines name the database: `{ path }` for a file, `{ database }` for a URL without its password. */
  abstract readonly logged: Readonly<Record<string, string>>;
  /** Where the migrations of this backend's dialect ship. */
  abstract readonly migrationsDir: string;
  /** Several gateways (a fleet, maybe on several machines) may use this database: PostgreSQL. */
  abstract readonly shared: boolean;

  /**
   * Connects, lets `migrate` bring the schema in line through the backend's SchemaDriver before any other
   * call, and only then serves the repositories. Throws BERTH_E_STORE, and stays closed, when the
   * database cannot be reached or `migrate` fails.
   */
  abstract open(migrate: (schema: SchemaDriver) => Promise<void>): Promise<void>;
  /** Returns whether it was open. */
  abstract close(): Promise<boolean>;

  /**
   * Hears the changes other gateways on this database announce (FleetStore.watch). The default hears
   * nothing: a database only one gateway uses (SQLite) has nobody to hear from.
   */
  watch(_onChange: (topic: string) => void, _onConnection?: (connected: boolean) => void): () => void {
    return () => {};
  }

  /**
   * The rows a statement returns (a SELECT, or a write's RETURNING). Throws BERTH_E_STORE when the store
   * is not open; a statement that fails becomes BERTH_E_CONFLICT / BERTH_E_NOT_FOUND for the faults
   * `messages` expects, else BERTH_E_STORE naming `action`.
   */
  abstract rows(action: string, sql: string, args: SqlValue[], messages?: FaultMessages): Promise<Row[]>;
  /** Runs a write, failing as `rows` does; returns how many rows it changed. */
  abstract changes(action: string, sql: string, args: SqlValue[], messages?: FaultMessages): Promise<number>;
  /** Inserts one row of `table`, failing as `rows` does; returns the id its generated column got, else 0. */
  abstract insert(action: string, table: Table<object>, values: SqlValue[], messages?: FaultMessages): Promise<number>;

  /** The first row `sql` selects, read into a record, or null. */
  async get<T>(action: string, sql: string, args: SqlValue[], fromRow: (row: Row) => T): Promise<T | null> {
    const [row] = await this.rows(action, sql, args);
    return row ? readRows(action, [row], fromRow)[0] : null;
  }

  /** Every row `sql` selects, read into records. */
  async all<T>(action: string, sql: string, args: SqlValue[], fromRow: (row: Row) => T): Promise<T[]> {
    return readRows(action, await this.rows(action, sql, args), fromRow);
  }

  /**
   * The rows of `table` that `filter` selects, in `orderBy` order, read into records. An empty `oneOf`
   * matches nothing and asks the database nothing.
   */
  async list<R extends object>(action: string, table: Table<R>, filter: RowFilter, orderBy: string): Promise<R[]> {
    const query = listQuery(table.select, filter, orderBy);
    return query ? this.all(action, query.sql, query.args, table.fromRow) : [];
  }

  /** Sets `changes` on the row of `table` whose `id` column is `id`; throws `notFound` when there is none. */
  async updateById(action: string, table: Table<object>, id: string, changes: [column: string, value: SqlValue][], notFound: () => BerthError): Promise<void> {
    // With no changes the id is set to itself, so an unknown id still finds no row.
    const set = changes.length ? changes.map(([column], i) => `${column} = $${i + 1}`).join(', ') : 'id = id';
    await this.change(action, `UPDATE ${table.name} SET ${set} WHERE id = $${changes.length + 1}`, [...changes.map(([, value]) => value), id], notFound);
  }

  /** `changes` for a write that must touch a row: throws `notFound` when it changed none. */
  async change(action: string, sql: string, args: SqlValue[], notFound: () => BerthError): Promise<void> {
    if ((await this.changes(action, sql, args)) === 0) throw notFound();
  }
}

/**
 * The records `rows` hold. A row that cannot be read (a column holding what berth never wrote, say text
 * that is not JSON) fails the read with BERTH_E_STORE, as a failed statement does.
 */
function readRows<T>(action: string, rows: Row[], fromRow: (row: Row) => T): T[] {
  try {
    return rows.map(fromRow);
  } catch (err) {
    if (err instanceof BerthError) throw err;
    throw failure(action, err, 'other');
  }
}
