/**
 * Shared pieces of the supervisor tests: normalised configs, temp dirs, real HTTP to instances,
 * polling with a deadline. Set BERTH_TEST_LOG=1 to see the supervisor's log lines on stderr.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'node:http';
import type { TestContext } from 'node:test';
import { pino } from 'pino';
import type { AppConfig, HealthConfig, ProcessConfig } from '../../src/config/schema.ts';
import { silentLogger, type Logger } from '../../src/lib/logger.ts';
import { Supervisor, type SupervisorOptions } from '../../src/supervisor/supervisor.ts';
import type { Instance } from '../../src/supervisor/instance.ts';
import { appConfig as baseAppConfig } from '../proxy/fixtures.ts';
import { removeAfter } from '../helpers/cleanup.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
export const APP_FIXTURE = join(HERE, 'fixtures', 'app.mjs');
export const WORKER_FIXTURE = join(HERE, 'fixtures', 'worker.mjs');
/** Commands that run the fixtures with this very Node. */
export const APP_COMMAND = `"${process.execPath}" "${APP_FIXTURE}"`;
export const WORKER_COMMAND = `"${process.execPath}" "${WORKER_FIXTURE}"`;

export function testLogger(): Logger {
  return process.env.BERTH_TEST_LOG ? pino({ level: 'debug' }, pino.destination(2)) : silentLogger();
}

/** A temp dir removed after the test. Short, so socket paths fit. */
export async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'bs-'));
  removeAfter(t, dir);
  return dir;
}

export function proc(name: string, command: string, over: Partial<ProcessConfig> = {}): ProcessConfig {
  const http = over.http ?? name === 'web';
  return { name, command, instances: 1, concurrency: http ? 4 : 1, http, heartbeatTimeoutMs: null, env: {}, ...over };
}

export interface AppOverrides extends Partial<Omit<AppConfig, 'health' | 'timeouts'>> {
  health?: Partial<HealthConfig>;
  timeouts?: Partial<AppConfig['timeouts']>;
}

/** A normalised app config with test-friendly timings. */
export function appConfig(name: string, over: AppOverrides = {}): AppConfig {
  const { health, timeouts, ...rest } = over;
  return {
    ...baseAppConfig(name, { processes: null, routes: [] }),
    ...rest,
    health: { path: null, intervalMs: 50, timeoutMs: 1_000, unhealthyAfter: 2, startupTimeoutMs: 15_000, busyGraceMs: 30_000, ...health },
    timeouts: { headersMs: 30_000, drainMs: 1_000, stopMs: 3_000, ...timeouts },
  };
}

/** A supervisor in `stateDir`, stopped after the test (which also kills anything left). */
export function supervisor(t: TestContext, stateDir: string, opts: Partial<SupervisorOptions> = {}): Supervisor {
  const sup = new Supervisor({ stateDir, logger: testLogger(), ...opts });
  t.after(() => sup.stop());
  return sup;
}

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

/** GET `path` straight from an instance (its current address), parsed as JSON. */
export function get<T = any>(inst: Instance, path: string): Promise<{ status: number; body: T }> {
  const a = inst.address;
  if (a === null) return Promise.reject(new Error(`${inst.label} has no address (state ${inst.state})`));
  return new Promise((resolve, reject) => {
    const req = request(
      a.kind === 'tcp' ? { host: a.host, port: a.port, path, agent: false } : { socketPath: a.path, path, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
          } catch (err) {
            reject(err);
          }
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Whether any process of the group exists (zombies included), as `kill(-pgid, 0)` sees it. */
export function groupExists(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

export function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

/**
 * Waits until a group is gone. Members orphaned by a SIGKILL are reaped by PID 1, which in a container
 * may take a moment after they have died, so this polls rather than asserting at once.
 */
export async function waitGroupGone(pgid: number, message = `process group ${pgid} to be gone`): Promise<void> {
  await waitFor(() => !groupExists(pgid), message, 10_000);
}
