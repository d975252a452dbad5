/**
 * The store backends every contract suite in this folder runs against: one factory per backend, SQLite
 * and PostgreSQL, and every suite runs on both (`forEachBackend`). A test that only one backend could
 * pass (it opens the database file, reads SQLite's catalogue, or matches SQLite's own error text) does
 * not belong in a contract suite: see sqlite-only.test.ts.
 *
 * PostgreSQL runs on a throwaway server per test file (../helpers/postgres.ts) with a database per test.
 * Where the server is not installed its suites are skipped with the reason shown, except under CI=true.
 */
import { describe } from 'node:test';
import type { TestContext } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import pg from 'pg';
import { silentLogger } from '../../src/lib/logger.ts';
import { MIGRATIONS_DIR, POSTGRES_MIGRATIONS_DIR, type MigrationPolicy } from '../../src/store/migrations.ts';
import { PostgresStore } from '../../src/store/postgres.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import type { Store } from '../../src/store/store.ts';
import { freshDatabase, POSTGRES_SKIP } from '../helpers/postgres.ts';

/** How a test may vary a store from the defaults (migrations: upgrade, no reset, the shipped files). */
export interface StoreOptions {
  migrations?: MigrationPolicy;
  resetState?: boolean;
  /** A directory of NNN-name.sql files in place of the shipped ones. */
  migrationsDir?: string;
  /** The fleet node the store writes as (FleetStore.node); `local` when left out. */
  node?: string;
}

/** One empty database of a backend, dropped after the test. */
export interface Database {
  /**
   * A store on this database, not opened yet; closed after the test. Several may share the database
   * (for SQLite, the same file opened again), as the nodes of a fleet do.
   */
  store(opts?: StoreOptions): Store;
  /**
   * Runs `sql` on a connection of its own, behind the stores' backs: rows another (or an older) gateway
   * wrote. Plain SQL that both dialects read alike, values written in it (no placeholders).
   */
  exec(sql: string): Promise<void>;
}

export interface Backend {
  name: string;
  /** Why this backend's suites are skipped here, or undefined. */
  skip?: string;
  /** The migration files this build ships in the backend's dialect. */
  shippedMigrations: string;
  /** A fresh, empty database, removed when `t` ends. */
  database(t: TestContext): Promise<Database>;
}

const sqlite: Backend = {
  name: 'sqlite',
  shippedMigrations: MIGRATIONS_DIR,
  async database(t) {
    const dir = await mkdtemp(join(tmpdir(), 'berth-store-'));
    const path = join(dir, 'state', 'berth.db');
    const stores: Store[] = [];
    t.after(async () => {
      for (const store of stores) await store.close();
      await rm(dir, { recursive: true, force: true });
    });
    return {
      store(opts = {}) {
        // A parent that does not exist yet: open() creates it.
        const store = new SqliteStore({ path, migrations: 'upgrade', resetState: false, logger: silentLogger(), ...opts });
        stores.push(store);
        return store;
      },
      async exec(sql) {
        const db = new DatabaseSync(path);
        try {
          db.exec(sql);
        } finally {
          db.close();
        }
      },
    };
  },
};

const postgres: Backend = {
  name: 'postgres',
  skip: POSTGRES_SKIP,
  shippedMigrations: POSTGRES_MIGRATIONS_DIR,
  async database(t) {
    const stores: Store[] = [];
    // The stores close before the database is dropped.
    const url = await freshDatabase(t, async () => {
      for (const store of stores) await store.close();
    });
    return {
      store(opts = {}) {
        const store = new PostgresStore({ url, migrations: 'upgrade', resetState: false, logger: silentLogger(), ...opts });
        stores.push(store);
        return store;
      },
      async exec(sql) {
        const client = new pg.Client({ connectionString: url });
        await client.connect();
        try {
          await client.query(sql);
        } finally {
          await client.end();
        }
      },
    };
  },
};

export const BACKENDS: readonly Backend[] = [sqlite, postgres];

/** Declares `suite`'s tests once per backend, each backend's under its own name, skipped with the reason where it cannot run. */
export function forEachBackend(suite: (backend: Backend) => void): void {
  for (const backend of BACKENDS) describe(backend.name, { skip: backend.skip }, () => suite(backend));
}

/** `backend`'s store with the shipped migrations, opened on a fresh database; both go when `t` ends. */
export async function openFresh(backend: Backend, t: TestContext): Promise<Store> {
  const store = (await backend.database(t)).store();
  await store.open();
  return store;
}
