/**
 * The human summary of a loaded config that `berth check` prints: where it came from, what it listens
 * on, what routes where, and whether each app fits its database budget.
 */
import { httpProcesses, type AppConfig, type BerthConfig } from './schema.ts';

/**
 * The text `berth check` prints on success: file, environment, listeners, a routes table
 * (host, path, target = pool name or `static:<dir>`, app), and each app's DB budget line such as
 * `shop: web 2x8 + ws 1x500 = 516 connections, budget 600` (or `no db_connections budget set`).
 */
export function formatCheckReport(config: BerthConfig): string {
  const lines: string[] = [
    `config:      ${config.file}`,
    `environment: ${config.environment ?? '(none)'}`,
    `state dir:   ${config.stateDir}`,
    `store:       ${describeStore(config)}`,
    `listen:      ${config.listen.map((a) => (a.tls ? `${a.text} (tls)` : a.text)).join(', ')}`,
    `control:     ${config.control.socket}${config.control.listen ? `, tcp ${config.control.listen.text}` : ''}`,
  ];
  if (config.proxy.workers > 1) lines.push(`proxy:       ${config.proxy.workers} threads on the cleartext listeners${config.proxy.auto ? ' (auto: one per core)' : ''}`);
  const apps = Object.values(config.apps);
  lines.push('', 'routes:');
  const rows: string[][] = [];
  for (const app of apps) {
    const hosts = app.hosts.length === 0 ? ['(any host)'] : app.hosts;
    for (const host of hosts) {
      for (const route of app.routes) rows.push([host, route.path, route.to ?? `static:${route.static}`, app.name]);
    }
  }
  if (rows.length === 0) lines.push('  (none)');
  else lines.push(formatColumns(['HOST', 'PATH', 'TARGET', 'APP'], rows, '  '));
  lines.push('', 'db budget:');
  if (apps.length === 0) lines.push('  (no apps)');
  for (const app of apps) lines.push(`  ${app.name}: ${describeBudget(app)}`);
  return lines.join('\n');
}

/** One app's budget line: the demand of each http pool, the sum, and the budget it must fit. */
function describeBudget(app: AppConfig): string {
  const budget = app.dbConnections === null ? 'no db_connections budget set' : `budget ${app.dbConnections}`;
  if (app.processes === null) return `process types come from the Procfile (checked at deploy), ${budget}`;
  const pools = httpProcesses(app);
  if (pools.length === 0) return `no http pools = 0 connections, ${budget}`;
  const demand = pools.reduce((sum, p) => sum + p.instances * p.concurrency, 0);
  return `${pools.map((p) => `${p.name} ${p.instances}x${p.concurrency}`).join(' + ')} = ${demand} connections, ${budget}`;
}

function describeStore(config: BerthConfig): string {
  if (config.database === null) return `sqlite (${config.stateDir}/berth.db)`;
  // Never print the password that the URL may carry.
  try {
    const url = new URL(config.database);
    return `postgres (${url.host}${url.pathname})`;
  } catch {
    return 'postgres';
  }
}

/** Left-aligned columns two spaces apart. The CLI has its own table helper; config must not import cli/. */
function formatColumns(headers: string[], rows: string[][], indent: string): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => indent + cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  return [line(headers), ...rows.map(line)].join('\n');
}
