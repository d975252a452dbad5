import { chmod, mkdir, open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { BerthConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import type { Store } from './store.ts';
import { SqliteStore } from './sqlite.ts';

/** The SQLite file inside the state dir when `database` is null. */
export const SQLITE_FILE = 'berth.db';

/** Mode of berth.db and its -wal and -shm files: the store holds deploy history and audit rows. */
export const STORE_FILE_MODE = 0o600;

/**
 * Opens the state store the config names, with its migrations applied: SQLite at
 * `<stateDir>/berth.db` when `database` is null, else PostgreSQL at the `postgres://` URL. Throws
 * BERTH_E_STORE when the store cannot be opened; for PostgreSQL the message names the URL without its
 * password and says why (unreachable, login refused...). `node`: the fleet node it writes as
 * (FleetStore.node).
 */
export async function openStore(config: BerthConfig, logger: Logger, node?: string): Promise<Store> {
  if (config.database !== null) {
    // Loaded only for PostgreSQL: the driver is not needed (nor kept in memory) by a SQLite gateway.
    const { PostgresStore } = await import('./postgres.ts');
    const store = new PostgresStore({ url: config.database, poolSize: config.databasePool, migrations: config.migrations, resetState: config.resetState, logger, node });
    await store.open();
    return store;
  }
  const path = join(config.stateDir, SQLITE_FILE);
  try {
    await privateFiles(path);
  } catch (err) {
    throw new BerthError(ErrorCodes.store, `cannot open SQLite database ${path}: ${errorMessage(err)}`, { cause: err });
  }
  const store = new SqliteStore({
    path,
    migrations: config.migrations,
    resetState: config.resetState,
    logger,
    node,
  });
  await store.open();
  // SQLite makes -wal and -shm with the database's own mode; this also closes files an older berth made 0644.
  await privateFiles(path);
  return store;
}

/**
 * Creates the database file 0600 before SQLite opens it (SQLite would make it 0644 under the usual
 * umask), and makes an existing one and its -wal and -shm files 0600. Its directory is made 0700 when
 * it does not exist; the gateway sets the state dir's final mode (state-access.ts).
 */
async function privateFiles(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const handle = await open(path, 'a', STORE_FILE_MODE);
  try {
    await handle.chmod(STORE_FILE_MODE);
  } finally {
    await handle.close();
  }
  for (const suffix of ['-wal', '-shm']) {
    await chmod(path + suffix, STORE_FILE_MODE).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}
