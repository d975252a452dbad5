/**
 * Audit rows a dead gateway left `pending`. A change's row is written before it acts and finished when
 * it ends; a gateway killed in between (kill -9, a crash, a power cut) never finishes it, so `berth
 * history` would show the change as still going forever. At start, once the state lock proves no
 * other gateway is alive (supervisor/state-lock.ts) and the deployer and scheduler have marked their
 * own records `interrupted`, every pending row is finished as `interrupted`, naming the deploy or task
 * run it was about when one can be found.
 *
 * Rows begun inside the gateway (first deploys, reload triggers, config reloads, scheduled tasks) name
 * their deploy or run in `target`. Rows begun by the control API hold the request body there, so their
 * deploy or run is found by app, kind and time: an app runs one deploy at a time, and its record is
 * made right after the row.
 */
import type { Logger } from '../lib/logger.ts';
import { errorMessage } from '../lib/errors.ts';
import type { AuditRecord, DeployKind, DeployRecord, Store, TaskRunRecord } from '../store/store.ts';

const DEPLOY_ID = /\bd\d{14}-[0-9a-f]{6}\b/;
const RUN_ID = /\bt\d{14}-[0-9a-f]{6}\b/;
const DEPLOY_ACTIONS: ReadonlySet<string> = new Set<DeployKind>(['deploy', 'rollback', 'reload']);
/** How many rows (and records to match them with) one start looks at: more than any crash leaves. */
const LIMIT = 1000;
const STOPPED = 'the gateway stopped while this ran';

/** Finishes every pending audit row as `interrupted`; returns how many. Never throws: a start must not fail on it. */
export async function finishInterruptedAudit(store: Store, log: Logger): Promise<number> {
  try {
    // This node's rows, and rows from before rows named their node: another node's pending change is its own.
    const pending = (await store.listAudit({ outcome: 'pending', limit: LIMIT })).reverse().filter((r) => r.node == null || r.node === store.node);
    if (pending.length === 0) return 0;
    const deploys = (await store.listDeploys({ state: 'interrupted', limit: LIMIT })).reverse();
    const runs = (await store.listTaskRuns({ states: ['interrupted'], limit: LIMIT })).reverse();
    const claimed = new Set<string>();
    const finishedAt = new Date().toISOString();
    for (const row of pending) {
      const detail = await describe(store, row, deploys, runs, claimed);
      await store.finishAudit(row.id, 'interrupted', detail, finishedAt);
      log.warn({ audit: row.id, action: row.action, app: row.app, detail }, 'change interrupted by a gateway stop');
    }
    return pending.length;
  } catch (err) {
    log.error({ err: errorMessage(err) }, 'cannot finish the audit rows of interrupted changes');
    return 0;
  }
}

async function describe(store: Store, row: AuditRecord, deploys: DeployRecord[], runs: TaskRunRecord[], claimed: Set<string>): Promise<string> {
  if (DEPLOY_ACTIONS.has(row.action)) {
    const named = DEPLOY_ID.exec(row.target ?? '')?.[0];
    const d = named ? (deploys.find((x) => x.id === named) ?? (await store.getDeploy(named))) : deploys.find((x) => !claimed.has(x.id) && x.app === row.app && x.kind === row.action && x.createdAt >= row.at);
    if (d) {
      claimed.add(d.id);
      return `${d.id}: ${d.kind} interrupted${await stepOf(store, d.id)}: ${STOPPED}`;
    }
  } else if (row.action === 'task' || row.action === 'run') {
    const named = RUN_ID.exec(row.target ?? '')?.[0];
    const r = named ? runs.find((x) => x.id === named) : runs.find((x) => !claimed.has(x.id) && x.app === row.app && x.trigger === 'manual' && x.user === row.user && x.startedAt >= row.at);
    if (r) {
      claimed.add(r.id);
      return `${r.id}: task ${r.task} interrupted: ${STOPPED}`;
    }
    if (named) return `${named}: ${STOPPED}`;
  }
  return `${row.action} interrupted: the gateway stopped before it finished`;
}

/** ` at <step>`: the deploy's last step that started, or nothing. */
async function stepOf(store: Store, deployId: string): Promise<string> {
  const events = await store.listDeployEvents(deployId).catch(() => []);
  const last = events.findLast((e) => e.status === 'started');
  return last ? ` at ${last.step}` : '';
}
