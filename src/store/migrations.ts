/**
 * Schema migrations, the same rules for every backend: numbered, additive SQL files (`NNN-name.sql` in
 * ./migrations for SQLite, ./migrations-postgres for PostgreSQL: one file per version in each, the same
 * numbers and names, each in its own dialect), recorded in `schema_migrations(version, name,
 * applied_at)`, and applied according to the config's `migrations` (upgrade | none | model) and
 * `reset_state`. A backend supplies a `SchemaDriver`: how to run a file in a transaction, and what is
 * recorded already.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';

/** The migrations that ship with this build, SQLite's dialect. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('./migrations/', import.meta.url));
/** The same versions in PostgreSQL's dialect (types, identity columns, COLLATE "C" for SQLite's byte order). */
export const POSTGRES_MIGRATIONS_DIR = fileURLToPath(new URL('./migrations-postgres/', import.meta.url));

/** The schema version after migrations: the highest recorded, 0 for none. Plain SQL for every backend. */
export const SCHEMA_VERSION_SQL = 'SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations';

const MIGRATION_FILE_RE = /^(\d+)-([A-Za-z0-9_-]+)\.sql$/;

export interface Migration {
  version: number;
  /** File name without the number and extension, e.g. `apps-and-releases`. */
  name: string;
  file: string;
  sql: string;
}

/** upgrade: apply missing migrations. none: apply nothing and fail when behind. model: recreate from scratch (dev only). */
export type MigrationPolicy = 'upgrade' | 'none' | 'model';

/** What the migration rules need from a backend's connection, before the store serves any call. */
export interface SchemaDriver {
  /** Names the database in messages and logs: a file path, or a URL without its password. */
  readonly name: string;
  /** Drops every table and view in the database, berth's alone; returns the table names. */
  dropAll(): Promise<string[]>;
  hasMigrationsTable(): Promise<boolean>;
  createMigrationsTable(): Promise<void>;
  appliedVersions(): Promise<Set<number>>;
  /**
   * Runs `m` and records it in one transaction, unless it is recorded already. The check is inside the
   * transaction, under the write lock, so two gateways starting together apply each file once. Returns
   * whether it ran.
   */
  applyOnce(m: Migration): Promise<boolean>;
  /** Creates schema_migrations, then runs and records every file, all in one transaction. */
  applyAll(migrations: Migration[]): Promise<void>;
}

export interface MigrateOptions {
  policy: MigrationPolicy;
  /** Drop every table before migrating (development only). */
  resetState: boolean;
  logger: Logger;
}

/** Reads `NNN-name.sql` files from a directory, sorted by number. Throws BERTH_E_STORE on a bad or duplicate file. */
export async function loadMigrations(dir: string): Promise<Migration[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new BerthError(ErrorCodes.store, `cannot read migrations from ${dir}: ${errorMessage(err)}`, { cause: err });
  }
  const byVersion = new Map<number, Migration>();
  for (const file of names) {
    if (!file.endsWith('.sql')) continue;
    const m = MIGRATION_FILE_RE.exec(file);
    if (!m) throw new BerthError(ErrorCodes.store, `migration file ${file} is not named NNN-name.sql`);
    const version = Number(m[1]);
    const other = byVersion.get(version);
    if (other) throw new BerthError(ErrorCodes.store, `migrations ${other.file} and ${file} have the same version ${version}`);
    byVersion.set(version, { version, name: m[2], file, sql: await readFile(join(dir, file), 'utf8') });
  }
  return [...byVersion.values()].sort((a, b) => a.version - b.version);
}

/**
 * Brings the schema in line with `policy`, after dropping everything when `resetState`. Throws
 * BERTH_E_STORE when a migration fails (it is rolled back) or `none` finds the schema missing or behind.
 */
export async function migrate(driver: SchemaDriver, migrations: Migration[], opts: MigrateOptions): Promise<void> {
  const log = opts.logger;
  if (opts.resetState) await dropAll(driver, log, 'reset_state');
  if (opts.policy === 'model') {
    await dropAll(driver, log, 'migrations: model');
    try {
      await driver.applyAll(migrations);
    } catch (err) {
      throw new BerthError(ErrorCodes.store, `creating the schema from the model failed: ${errorMessage(err)}`, { cause: err });
    }
    log.warn({ versions: migrations.map((m) => m.version) }, 'schema created from model');
  } else if (opts.policy === 'upgrade') {
    // Newer versions already recorded (a newer gateway ran here) are left alone: migrations are additive.
    await driver.createMigrationsTable();
    for (const m of migrations) {
      let applied: boolean;
      try {
        applied = await driver.applyOnce(m);
      } catch (err) {
        throw new BerthError(ErrorCodes.store, `migration ${m.file} failed: ${errorMessage(err)}`, { cause: err, details: { version: m.version } });
      }
      if (applied) log.info({ version: m.version, name: m.name }, 'migration applied');
    }
  } else {
    await checkCurrent(driver, migrations);
  }
}

/** `migrations: none`: the operator migrates out of band, so a missing or older schema is a start-up error. */
async function checkCurrent(driver: SchemaDriver, migrations: Migration[]): Promise<void> {
  const names = (ms: Migration[]) => ms.map((m) => m.file.replace(/\.sql$/, '')).join(', ');
  if (!(await driver.hasMigrationsTable())) {
    throw new BerthError(
      ErrorCodes.store,
      `database ${driver.name} has no berth schema and migrations is "none": expected migrations ${names(migrations)}; run once with migrations: upgrade`,
      { details: { missing: migrations.map((m) => m.version) } },
    );
  }
  const applied = await driver.appliedVersions();
  const missing = migrations.filter((m) => !applied.has(m.version));
  if (missing.length > 0) {
    throw new BerthError(
      ErrorCodes.store,
      `database ${driver.name} schema is behind and migrations is "none": missing migrations ${names(missing)}; run once with migrations: upgrade`,
      { details: { missing: missing.map((m) => m.version) } },
    );
  }
}

async function dropAll(driver: SchemaDriver, log: Logger, reason: string): Promise<void> {
  const tables = await driver.dropAll();
  log.warn({ path: driver.name, reason, tables }, 'store state dropped');
}

/** A table or view name, quoted for a DROP (SQLite and PostgreSQL quote identifiers alike). */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
