/**
 * Shared pieces of the scheduler tests: a real config (through the loader), a real SQLite store and
 * audit log in a temp dir, and a host that says where the app's active release is. Runs are real
 * processes. Set BERTH_TEST_LOG=1 to see the scheduler's log lines on stderr.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import YAML from 'yaml';
import { pino } from 'pino';
import { loadConfig } from '../../src/config/load.ts';
import type { BerthConfig } from '../../src/config/schema.ts';
import { silentLogger, type Logger } from '../../src/lib/logger.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { Audit } from '../../src/api/audit.ts';
import { ReleaseStore } from '../../src/deploy/release-store.ts';
import { Scheduler, type SchedulerHost, type TaskTarget } from '../../src/scheduler/scheduler.ts';

export const RELEASE_ID = '20260101000000-abcdef';

export function testLogger(): Logger {
  return process.env.BERTH_TEST_LOG ? pino({ level: 'debug' }, pino.destination(2)) : silentLogger();
}

export interface Fixture {
  dir: string;
  config: BerthConfig;
  store: SqliteStore;
  audit: Audit;
  /** The app's active release directory (its real path). */
  releaseDir: string;
  /** Set to null to make the app serve nothing. */
  host: SchedulerHost & { active: TaskTarget['active'] };
  scheduler: Scheduler;
}

export interface FixtureOptions {
  /** `apps.shop.schedule` as written in berth.yaml. */
  schedule?: Record<string, Record<string, unknown>>;
  /** Extra top-level keys (scheduler_delay, cleanup_cron, history_retention...). */
  top?: Record<string, unknown>;
  env?: Record<string, string>;
  /** Extra process types of shop, as written in berth.yaml. */
  processes?: Record<string, Record<string, unknown>>;
  killGraceMs?: number;
}

/**
 * A scheduler for app `shop` whose active release is a real directory. Everything is stopped, closed
 * and removed after the test, in that order.
 */
export async function fixture(t: TestContext, opts: FixtureOptions = {}): Promise<Fixture> {
  const dir = await mkdtemp(join(tmpdir(), 'bsch-'));
  let store: SqliteStore | null = null;
  let scheduler: Scheduler | null = null;
  t.after(async () => {
    await scheduler?.stop(2_000);
    await store?.close();
    await rm(dir, { recursive: true, force: true });
  });
  const src = join(dir, 'src');
  await mkdir(src, { recursive: true });
  await writeFile(join(src, 'server.mjs'), '');
  const file = join(dir, 'berth.yaml');
  await writeFile(
    file,
    YAML.stringify({
      state_dir: 'state',
      listen: ['127.0.0.1:0'],
      scheduler_delay: '100ms',
      ...opts.top,
      apps: {
        shop: {
          source: src,
          env: opts.env ?? {},
          processes: { web: { command: 'node server.mjs' }, ...opts.processes },
          ...(opts.schedule ? { schedule: opts.schedule } : {}),
        },
      },
    }),
  );
  const config = await loadConfig({ configPath: file, environ: {} });
  store = new SqliteStore({ path: join(config.stateDir, 'berth.db'), migrations: 'upgrade', resetState: false, logger: silentLogger() });
  await store.open();
  const audit = new Audit(() => store, silentLogger());
  const app = config.apps.shop;
  const releases = new ReleaseStore({ stateDir: config.stateDir, app, store, logger: silentLogger() });
  const releaseDir = join(config.stateDir, 'apps', 'shop', 'releases', RELEASE_ID);
  await mkdir(releaseDir, { recursive: true });
  const host = {
    active: { id: RELEASE_ID, dir: releaseDir, processes: app.processes! } as TaskTarget['active'],
    taskTarget(name: string): TaskTarget | undefined {
      return name === 'shop' ? { config: app, releases, active: host.active } : undefined;
    },
  };
  scheduler = new Scheduler({ config, store, host, audit, logger: testLogger(), killGraceMs: opts.killGraceMs ?? 1_000 });
  return { dir, config, store, audit, releaseDir, host, scheduler };
}

/** Polls `fn` until it returns something truthy, or fails after `timeoutMs` naming what it waited for. */
export async function waitFor<T>(fn: () => T | Promise<T>, message: string, timeoutMs = 15_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${message}${last ? `: ${String(last)}` : ''}`);
}

/** Whether a process runs (a zombie has exited: it does not count). */
export async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}
