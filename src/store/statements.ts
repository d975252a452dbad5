/**
 * SQL that every backend writes alike: a list filter (records.ts' RowFilter) as a query, an insert and an
 * upsert, with PostgreSQL's numbered placeholders (`$n`), which the SQLite connection reads as its own
 * `?n`. Generating the inserts and upserts from the column lists keeps the backends writing the same
 * columns, and a column a table gains is updated on conflict as well as inserted.
 */
import type { RowFilter } from './records.ts';
import type { SqlValue, Table } from './table.ts';

/** The placeholder for the `n`-th argument, 1-based. */
function placeholder(n: number): string {
  return `$${n}`;
}

/**
 * The WHERE clause (possibly empty) and its arguments for a list filter, followed by `orderBy` and the
 * limit. One `column = ?` per condition that is set: `(? IS NULL OR app = ?)` would keep the database
 * off the indexes. Null when the filter can match nothing (an empty `oneOf`).
 */
export function listQuery(select: string, filter: RowFilter, orderBy: string): { sql: string; args: SqlValue[] } | null {
  const where: string[] = [];
  const args: SqlValue[] = [];
  const next = (value: SqlValue): string => {
    args.push(value);
    return placeholder(args.length);
  };
  for (const [column, value] of filter.equal) where.push(`${column} = ${next(value)}`);
  if (filter.oneOf) {
    const [column, values] = filter.oneOf;
    if (values.length === 0) return null;
    where.push(`${column} IN (${values.map(next).join(', ')})`);
  }
  if (filter.atLeast) where.push(`${filter.atLeast[0]} >= ${next(filter.atLeast[1])}`);
  const limit = next(filter.limit);
  return { sql: `${select} ${where.length ? `WHERE ${where.join(' AND ')} ` : ''}${orderBy} LIMIT ${limit}`, args };
}

/** `INSERT INTO <table> (<written columns>) VALUES (...)`, in `table.values` order. */
export function insertRow(table: Table<object>): string {
  return insertInto(table.name, table.columns);
}

/** `INSERT INTO <table> (<columns>) VALUES ($1, $2, ...)`. */
function insertInto(table: string, columns: readonly string[]): string {
  return `INSERT INTO ${table} (${columns.join(', ')}) VALUES (${columns.map((_, i) => placeholder(i + 1)).join(', ')})`;
}

/**
 * `INSERT INTO <table> (<columns>) VALUES (...) ON CONFLICT (<key>) DO UPDATE SET` every other column but
 * those in `keep` (left as the first write made them) to the new row's value. An upsert rather than a
 * delete and insert: the row stays, and so does whatever later migrations hang off it. Both SQLite and
 * PostgreSQL read it alike, one statement, so it is atomic on either.
 */
export function upsert(table: string, columns: readonly string[], key: readonly string[], keep: readonly string[] = []): string {
  const set = columns.filter((c) => !key.includes(c) && !keep.includes(c)).map((c) => `${c} = excluded.${c}`);
  return `${insertInto(table, columns)}
  ON CONFLICT (${key.join(', ')}) DO UPDATE SET ${set.join(', ')}`;
}
