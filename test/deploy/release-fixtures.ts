/**
 * The release store's test bench, shared by its suites: a temp dir with a state dir, an open SQLite
 * store and a ReleaseStore for app "shop"; file trees; a git runner with no outside config.
 */
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, mkdtemp, readdir, realpath, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../src/lib/errors.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { ReleaseStore } from '../../src/deploy/release-store.ts';
import type { AppConfig } from '../../src/config/schema.ts';
import { appConfig as baseAppConfig } from '../proxy/fixtures.ts';
import { removeAfter } from '../helpers/cleanup.ts';

const exec = promisify(execFile);

export async function tempDir(t: TestContext): Promise<string> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'berth-rel-')));
  removeAfter(t, dir);
  return dir;
}

/** The shared test config of an app, as a Procfile app without routes. */
export function appConfig(over: Partial<AppConfig> = {}): AppConfig {
  return baseAppConfig('shop', { processes: null, routes: [], ...over });
}

export interface Setup {
  dir: string;
  stateDir: string;
  store: SqliteStore;
  releases: ReleaseStore;
}

/** A temp dir with a state dir, an open SQLite store, and a ReleaseStore for app "shop". */
export async function setup(t: TestContext, app: Partial<AppConfig> = {}, stateDirName = 'state'): Promise<Setup> {
  const dir = await tempDir(t);
  const stateDir = join(dir, stateDirName);
  await mkdir(stateDir, { recursive: true });
  const store = new SqliteStore({ path: join(dir, 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  t.after(() => store.close());
  await store.open();
  const releases = new ReleaseStore({ stateDir, app: appConfig(app), store, logger: silentLogger() });
  return { dir, stateDir, store, releases };
}

/** Writes files (path -> content) under `root`. */
export async function tree(root: string, files: Record<string, string>): Promise<string> {
  for (const [p, content] of Object.entries(files)) {
    await mkdir(join(root, p, '..'), { recursive: true });
    await writeFile(join(root, p), content);
  }
  return root;
}

export function releaseError(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof BerthError, `expected a BerthError, got ${String(err)}`);
    assert.equal(err.code, 'BERTH_E_RELEASE', err.message);
    assert.match(err.message, pattern);
    return true;
  };
}

/** What a failed prepare must leave: no release dirs (finished or half-made) and no release rows. */
export async function assertNothingLeft(s: Setup): Promise<void> {
  const left = await readdir(s.releases.releasesDir).catch(() => []);
  assert.deepEqual(left, [], `releases dir holds ${left.join(', ')}`);
  assert.deepEqual(await s.store.listReleases('shop'), []);
}

export const git = (cwd: string, ...args: string[]) =>
  exec('git', ['-c', 'user.name=Test', '-c', 'user.email=test@example.com', '-c', 'init.defaultBranch=main', ...args], {
    cwd,
    env: { ...process.env, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' },
  });
