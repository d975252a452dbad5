/**
 * How a record maps to a row of the shared schema and back: one field list per table, naming each
 * field's column and its codec, so the column list, the values to bind and the record read back all
 * come from one place that every backend uses.
 */

/** A row as a driver returns it: column name to value. */
export type Row = Record<string, unknown>;
/** A value a driver binds to a statement. */
export type SqlValue = string | number | null;

/** How a field's value is written to its column and read back from it. */
export interface Codec {
  write(value: unknown): SqlValue;
  read(value: unknown): unknown;
  /** The field is left out of the record (rather than set to null) when its column is null. */
  absentWhenNull?: boolean;
}

/** A field kept in `column`; `generated` columns (an autoincrement id) are read but never written. */
export type Field = [column: string, codec: Codec, generated?: 'generated'];

export class Table<R extends object> {
  readonly name: string;
  /** The columns written by an insert, in the order `values` gives them. */
  readonly columns: readonly string[];
  /** `SELECT <every column> FROM <table>`, to add a WHERE and an ORDER BY to. */
  readonly select: string;
  /** The generated column (an identity id) a backend hands back from an insert; null when there is none. */
  readonly generated: string | null;
  #fields: [key: string, field: Field][];

  constructor(name: string, fields: { [K in keyof R]-?: Field }) {
    this.name = name;
    this.#fields = Object.entries(fields) as [string, Field][];
    this.select = `SELECT ${this.#fields.map(([, [column]]) => column).join(', ')} FROM ${name}`;
    this.columns = this.#fields.filter(([, [, , generated]]) => !generated).map(([, [column]]) => column);
    this.generated = this.#fields.find(([, [, , generated]]) => generated)?.[1][0] ?? null;
  }

  /** The values of a record's written columns, in `columns` order. */
  values(record: Partial<R>): SqlValue[] {
    const bag = record as Record<string, unknown>;
    return this.#fields.filter(([, [, , generated]]) => !generated).map(([key, [, codec]]) => write(codec, bag[key]));
  }

  /** The columns an update sets, with their values: one per field present and not undefined. */
  changes(fields: Partial<R>): [column: string, value: SqlValue][] {
    const bag = fields as Record<string, unknown>;
    return this.#fields.filter(([key]) => bag[key] !== undefined).map(([key, [column, codec]]) => [column, write(codec, bag[key])]);
  }

  /** The record a row holds; a bound function, so it can be handed to a driver's row mapping as it is. */
  readonly fromRow = (row: Row): R => {
    const record: Record<string, unknown> = {};
    for (const [key, [column, codec]] of this.#fields) {
      const value = row[column];
      if (codec.absentWhenNull && value == null) continue;
      record[key] = codec.read(value);
    }
    return record as R;
  };
}

/** A field left out of a record that may lack it is written as null. */
function write(codec: Codec, value: unknown): SqlValue {
  return value === undefined && codec.absentWhenNull ? null : codec.write(value);
}

/** Text that is always there. */
export const text: Codec = { write: (v) => v as string, read: (v) => String(v) };
/** Text or null. */
export const textOrNull: Codec = { write: (v) => (v ?? null) as string | null, read: (v) => (v == null ? null : String(v)) };
/** An integer that is always there (a driver may hand back a big one as a string or a bigint). */
export const integer: Codec = { write: (v) => v as number, read: (v) => Number(v) };
/** An integer or null. */
export const integerOrNull: Codec = { write: (v) => (v ?? null) as number | null, read: (v) => (v == null ? null : Number(v)) };
