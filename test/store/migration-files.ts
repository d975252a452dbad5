/** Directories of migration files for the tests that run a store on other migrations than the shipped ones. */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MIGRATIONS_DIR, loadMigrations } from '../../src/store/migrations.ts';

/** The versions this build ships, in order: written out, so a file that goes missing fails the tests. */
export const SHIPPED_VERSIONS = [1, 2, 3, 4, 5, 6, 7, 8, 9];

/**
 * `<dir>/<name>`, holding the shipped files of `shipped` (SQLite's by default) up to version `upTo` (all
 * of them by default) plus `extra` (file name -> SQL).
 */
export async function migrationsDir(dir: string, name: string, extra: Record<string, string> = {}, upTo = Infinity, shipped = MIGRATIONS_DIR): Promise<string> {
  const out = join(dir, name);
  await mkdir(out, { recursive: true });
  for (const m of await loadMigrations(shipped)) if (m.version <= upTo) await copyFile(join(shipped, m.file), join(out, m.file));
  for (const [f, sql] of Object.entries(extra)) await writeFile(join(out, f), sql);
  return out;
}
