/**
 * Process groups a previous gateway started and never stopped because it was killed (kill -9, a crash,
 * a power cut). The gateway records every group in the store when it spawns it and removes it when it
 * exits (`recordProcessGroup`), so what is left at the next start belongs to a dead gateway. Run only under the
 * state lock (state-lock.ts): a live gateway's groups would look just the same.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from '../lib/logger.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Store } from '../store/store.ts';

/**
 * Kills the groups that a previous gateway left behind and forgets every recorded group. A pid can be
 * reused, so a group is only killed when its leader still carries the app's BERTH_APP in its environment.
 */
export async function reapOrphans(store: Pick<Store, 'listProcesses' | 'removeProcess'>, log: Logger): Promise<void> {
  // The store lists this node's groups only (and, on SQLite, those an older gateway recorded): another
  // fleet node's groups, on this machine or another, are never touched.
  for (const p of await store.listProcesses()) {
    if (p.gatewayPid !== process.pid && isBerthProcess(p.pgid, p.app)) {
      try {
        process.kill(-p.pgid, 'SIGKILL');
        log.warn({ pgid: p.pgid, app: p.app, process: `${p.process}.${p.index}` }, 'killed orphan process group');
      } catch {
        // Already gone.
      }
    }
    await store.removeProcess(p.pgid);
  }
}

/** Whether `pid` is alive and is an instance of `app` (its environment names the app). */
export function isBerthProcess(pid: number, app: string): boolean {
  try {
    const env = readFileSync(`/proc/${pid}/environ`, 'latin1');
    return env.split('\0').includes(`BERTH_APP=${app}`);
  } catch {
    return false;
  }
}

/** A process group spawned or exited, as the supervisor and the scheduler report it. */
export interface ProcessGroupEvent {
  pgid: number;
  app: string;
  process: string;
  index: number;
  releaseId: string;
}

/**
 * Remembers a spawned group in the store (and forgets it at its exit), so that the next start can reap
 * it if this gateway dies. A store error is logged: it must not fail the spawn.
 */
export function recordProcessGroup(store: Pick<Store, 'recordProcess' | 'removeProcess'>, event: 'spawn' | 'exit', info: ProcessGroupEvent, log: Logger): void {
  const write =
    event === 'spawn'
      ? store.recordProcess({ pgid: info.pgid, app: info.app, generation: info.releaseId, process: info.process, index: info.index, gatewayPid: process.pid, startedAt: new Date().toISOString() })
      : store.removeProcess(info.pgid);
  write.catch((err) => log.warn({ pgid: info.pgid, err: errorMessage(err) }, 'cannot record process group'));
}
