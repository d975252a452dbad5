import { join } from 'node:path';
import type { BerthConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { Store } from './store.ts';
import { SqliteStore } from './sqlite.ts';

/** The SQLite file inside the state dir when `database` is null. */
export const SQLITE_FILE = 'berth.db';

/**
 * Opens the state store the config names, with its migrations applied: SQLite at
 * `<stateDir>/berth.db` when `database` is null. Throws BERTH_E_STORE when the store cannot be opened,
 * and for a PostgreSQL URL, which this build cannot serve yet.
 */
export async function openStore(config: BerthConfig, logger: Logger): Promise<Store> {
  if (config.database !== null) {
    throw new BerthError(
      ErrorCodes.store,
      `database is set to ${redactUrl(config.database)}, but the PostgreSQL store is not available in this build; set database: null to use SQLite at <state_dir>/${SQLITE_FILE}`,
    );
  }
  const store = new SqliteStore({
    path: join(config.stateDir, SQLITE_FILE),
    migrations: config.migrations,
    resetState: config.resetState,
    logger,
  });
  await store.open();
  return store;
}

/** A database URL without its password, fit for an error message. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '"<unparseable URL>"';
  }
}
