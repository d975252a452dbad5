/**
 * What a config reload will do, decided before anything changes: `planReload(current, next)` compares
 * the config in effect with the one just read and returns the problems that refuse the reload and the
 * action for every app. Pure: no processes, no I/O, so the whole decision is unit-tested on its own
 * (test/gateway/reload-plan.test.ts), and the gateway applies a plan only once it has no problems.
 */
import { redactUrl } from '../lib/redact.ts';
import type { AppConfig, BerthConfig } from '../config/schema.ts';
import type { ConfigProblem } from '../lib/errors.ts';

/**
 * App keys that define its processes: a change to any of them reloads the app (zero downtime). Other
 * keys (hosts, routes, queue, rate limits, pages, timeouts, schedule...) apply with the routing table.
 */
export const PROCESS_KEYS = ['processes', 'scale', 'env', 'listen', 'health', 'user', 'group'] as const satisfies readonly (keyof AppConfig)[];

/** Settings that only a restart can change: listeners stay open and the store stays the same. */
export const RESTART_ONLY_KEYS: readonly { path: string; of: (c: BerthConfig) => unknown }[] = [
  { path: 'listen', of: (c) => c.listen.map((a) => (a.tls ? `${a.text} (tls)` : a.text)) },
  // The ACME account and its CA: an account key is made for one directory.
  { path: 'acme', of: (c) => c.acme },
  { path: 'state_dir', of: (c) => c.stateDir },
  // Never the password: the message is logged, audited and answered to the caller.
  { path: 'database', of: (c) => (c.database === null ? null : redactUrl(c.database)) },
  { path: 'database_pool', of: (c) => c.databasePool },
  // A node's name is where its heartbeat, locks and history rows live.
  { path: 'node_id', of: (c) => c.nodeId },
  { path: 'control.socket', of: (c) => c.control.socket },
  { path: 'control.socket_group', of: (c) => c.control.socketGroup },
  { path: 'control.listen', of: (c) => c.control.listen?.text ?? null },
  // The proxy's threads are started with the listeners.
  { path: 'proxy.workers', of: (c) => (c.proxy.auto ? 'auto' : c.proxy.workers) },
];

export interface ReloadPlan {
  /** Why the reload is refused: every restart-only key it changes. Empty: it may be applied. */
  problems: ConfigProblem[];
  /** Apps new in `next`: they boot. */
  added: string[];
  /** Apps gone from `next`: they leave the routing table, drain and stop. */
  removed: string[];
  /** Apps whose process definition changed: a zero-downtime reload with the new config. */
  reloaded: string[];
  /** Apps with other changes (routing, limits, pages...): they apply with the routing table. */
  updated: string[];
  unchanged: string[];
  /** Apps whose reload trigger watcher is replaced: added, removed, or its file renamed. */
  retrigger: string[];
}

export function planReload(current: BerthConfig, next: BerthConfig): ReloadPlan {
  const plan: ReloadPlan = { problems: restartOnlyChanges(current, next), added: [], removed: [], reloaded: [], updated: [], unchanged: [], retrigger: [] };
  for (const name of Object.keys(current.apps)) {
    if (next.apps[name]) continue;
    plan.removed.push(name);
    plan.retrigger.push(name);
  }
  for (const app of Object.values(next.apps)) {
    const was = current.apps[app.name];
    if (!was) {
      plan.added.push(app.name);
      plan.retrigger.push(app.name);
    } else if (same(was, app)) {
      plan.unchanged.push(app.name);
    } else {
      if (was.reloadTrigger !== app.reloadTrigger) plan.retrigger.push(app.name);
      if (PROCESS_KEYS.some((k) => !same(was[k], app[k]))) plan.reloaded.push(app.name);
      else plan.updated.push(app.name);
    }
  }
  return plan;
}

function restartOnlyChanges(was: BerthConfig, next: BerthConfig): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const key of RESTART_ONLY_KEYS) {
    const a = JSON.stringify(key.of(was));
    const b = JSON.stringify(key.of(next));
    if (a !== b) problems.push({ path: key.path, message: `changing it needs a restart of the gateway (running with ${a}, the file now says ${b})` });
  }
  return problems;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The one line a reload's result gives for logs, the audit log and the CLI. */
export function reloadSummary(r: { added: string[]; removed: string[]; updated: string[]; reloaded: { app: string; deploy: string | null }[] }): string {
  const parts = [
    r.reloaded.length ? `reloaded ${r.reloaded.map((x) => (x.deploy ? `${x.app} (${x.deploy})` : x.app)).join(', ')}` : '',
    r.added.length ? `added ${r.added.join(', ')}` : '',
    r.removed.length ? `removed ${r.removed.join(', ')}` : '',
    r.updated.length ? `updated ${r.updated.join(', ')}` : '',
  ].filter(Boolean);
  return parts.length ? parts.join('; ') : 'no app changed';
}
