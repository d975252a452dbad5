import type { GatewayStatus, AppStatus, FleetStatus } from '../api/wire.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';
import { formatBytes, formatTable, formatUptime } from './table.ts';

export const STATUS_USAGE = 'berth status [app] [--check] [--json] [--fleet] [--watch [--interval S]] [--socket PATH | --config F]';

/**
 * `berth status [app]`: apps, modes, releases and every instance. With `--check` it is also a probe for
 * scripts and cron: exit 1 when the app (or any app) is unhealthy, naming each one and why on stderr.
 * Health is the gateway's own verdict (`healthy` and `reasons` in the status), the rule `/v1/ready` uses.
 */
export async function status(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    { ...CLIENT_OPTIONS, check: { type: 'boolean', default: false }, fleet: { type: 'boolean', default: false }, watch: { type: 'boolean', default: false }, interval: { type: 'string', default: '1' } },
    true,
  );
  if (positionals.length > 1) throw new UsageError(`expected at most one app name, got ${positionals.length}`);
  if (values.fleet && positionals.length > 0) throw new UsageError('--fleet lists every node; it takes no app name');
  const client = await clientFor(values);
  if (values.watch) {
    if (values.check || values.json) throw new UsageError('--watch shows a live table: it takes neither --check nor --json');
    const seconds = Number(values.interval);
    if (!(seconds >= 0.2 && seconds <= 3600)) throw new UsageError(`--interval expects seconds from 0.2 to 3600, got "${values.interval}"`);
    return watch(seconds * 1000, () => status(args.filter((a) => a !== '--watch')));
  }
  if (values.fleet) {
    const f = await client.call<FleetStatus>('GET', '/v1/fleet');
    process.stdout.write(values.json ? JSON.stringify(f, null, 2) + '\n' : formatFleet(f) + '\n');
    // --check: every node that should serve (not stopped) is up and converged.
    return values.check && f.nodes.some((n) => n.state === 'lost' || (n.state === 'running' && !n.converged)) ? 1 : 0;
  }
  if (positionals.length === 1) {
    const app = await client.call<AppStatus>('GET', `/v1/apps/${encodeURIComponent(positionals[0])}`);
    process.stdout.write(values.json ? JSON.stringify(app, null, 2) + '\n' : formatApp(app) + '\n');
    return values.check ? checkHealth([app]) : 0;
  }
  const s = await client.call<GatewayStatus>('GET', '/v1/status');
  if (values.json) {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n');
    return values.check ? checkHealth(s.apps) : 0;
  }
  const threads = s.proxyThreads && s.proxyThreads.configured > 1 ? `  proxy threads ${s.proxyThreads.running}/${s.proxyThreads.configured}` : '';
  const head = `berth ${s.version}  pid ${s.pid}  ${s.state}  up ${formatUptime(s.uptimeMs)}  listen ${s.listen.join(', ')}${threads}${s.environment ? `  env ${s.environment}` : ''}`;
  const lines = [head, ''];
  for (const p of s.certificateProblems ?? []) lines.push(`! certificate for ${p.host} (${p.source}): ${p.error}`);
  if (s.certificateProblems?.length) lines.push('');
  if (s.apps.length === 0) lines.push('no apps configured');
  for (const app of s.apps) lines.push(formatApp(app), '');
  process.stdout.write(lines.join('\n').trimEnd() + '\n');
  return values.check ? checkHealth(s.apps) : 0;
}

/**
 * `--watch`: the same view again every `intervalMs` until Ctrl-C. On a terminal the screen is redrawn in
 * place, with health in colour (unless NO_COLOR is set); otherwise each frame follows the last under a
 * time line, so a log of it reads. A gateway that does not answer is said in the frame, and the watch
 * goes on.
 */
async function watch(intervalMs: number, frame: () => Promise<number>): Promise<number> {
  const tty = process.stdout.isTTY === true;
  const colour = tty && !process.env.NO_COLOR;
  let stopped = false;
  let wake: () => void = () => {};
  let interrupt: () => void = () => {};
  const stop = () => {
    stopped = true;
    wake();
    interrupt();
  };
  // A frame the gateway does not answer within this is said as such (a hung gateway, a dropped link).
  const frameTimeoutMs = Math.max(5_000, intervalMs);
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const write = process.stdout.write.bind(process.stdout);
  try {
    while (!stopped) {
      let text = '';
      // One frame's output is gathered, then written whole: no half-drawn table.
      process.stdout.write = ((chunk: string | Uint8Array) => {
        text += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
        return true;
      }) as typeof process.stdout.write;
      try {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the gateway did not answer within ${frameTimeoutMs / 1000}s`)), frameTimeoutMs);
          interrupt = () => reject(new Error('stopped'));
        });
        await Promise.race([frame(), late]).finally(() => clearTimeout(timer));
      } catch (err) {
        text += `berth status: ${err instanceof Error ? err.message : String(err)}\n`;
      } finally {
        process.stdout.write = write;
        interrupt = () => {};
      }
      if (stopped) break;
      if (colour) text = text.replace(/\bUNHEALTHY\b/g, '\x1b[31mUNHEALTHY\x1b[0m').replace(/\bhealthy\b/g, '\x1b[32mhealthy\x1b[0m');
      const stamp = `${new Date().toISOString()}  (every ${intervalMs / 1000}s; Ctrl-C ends)\n`;
      write(tty ? `\x1b[H\x1b[2J${stamp}${text}` : `${stamp}${text}\n`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, intervalMs);
      });
    }
    return 0;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/** `--check`: 0 when every app is healthy; else 1, with one stderr line per unhealthy app and its reasons. */
function checkHealth(apps: readonly AppStatus[]): number {
  const unhealthy = apps.filter((a) => !a.healthy);
  for (const a of unhealthy) {
    // A boot error carries the deploy's log tail: its first line says why; `berth status` shows the rest.
    const why = a.reasons.map((r) => r.split('\n')[0]).join('; ');
    process.stderr.write(`berth status: ${a.name} is unhealthy: ${why || 'no reason given'}\n`);
  }
  return unhealthy.length === 0 ? 0 : 1;
}

/** `berth status --fleet`: one line per node, then what each serves of each app. */
export function formatFleet(f: FleetStatus): string {
  const lines: string[] = [];
  lines.push(f.fleet ? `fleet of ${f.nodes.length} node${f.nodes.length === 1 ? '' : 's'}  (this node: ${f.node}, node_timeout ${Math.round(f.nodeTimeoutMs / 1000)}s)` : `not a fleet: the state store is SQLite (this node: ${f.node})`);
  if (f.desired.length > 0) {
    lines.push('', 'desired:');
    lines.push(formatTable(['app', 'release', 'mode', 'reloads'], f.desired.map((d) => [d.app, d.release ?? '-', d.mode, d.reloads]), '  '));
  }
  lines.push('');
  const rows = f.nodes.map((n) => [
    n.node + (n.self ? ' *' : ''),
    n.state,
    `${formatUptime(n.heartbeatAgeMs)} ago`,
    n.state === 'running' ? (n.converged ? 'yes' : 'NO') : '-',
    n.version,
    n.pid,
  ]);
  lines.push(formatTable(['node', 'state', 'heartbeat', 'converged', 'version', 'pid'], rows));
  for (const n of f.nodes) {
    if (n.apps.length === 0) continue;
    lines.push('', `${n.node}:`);
    lines.push(formatTable(['app', 'release', 'mode', 'converged', 'error'], n.apps.map((a) => [a.app, a.release ?? '-', a.mode, a.converged ? 'yes' : 'NO', a.error ?? '']), '  '));
  }
  return lines.join('\n');
}

function formatApp(app: AppStatus): string {
  const budget = app.db.budget === null ? `${app.db.inUse} in use (no budget)` : `${app.db.inUse} in use, ${app.db.demand} of ${app.db.budget} allotted`;
  const lines = [
    `${app.name}  ${app.healthy ? 'healthy' : 'UNHEALTHY'}  mode ${app.mode}${app.modeMessage ? ` ("${app.modeMessage}")` : ''}  release ${app.activeRelease ?? '-'}  queue ${app.queue}  db ${budget}`,
  ];
  if (!app.healthy) for (const r of app.reasons) lines.push(`  ! ${r}`);
  const counts = (app.processes ?? []).map((p) => {
    const runs = p.instances === null ? '-' : String(p.instances);
    if (p.override === null) return `${p.name} ${runs}`;
    const by = `${p.override.user ?? 'someone'} at ${p.override.setAt}`;
    const wants = p.instances === p.override.instances ? '' : `, ${p.override.instances} asked`;
    return `${p.name} ${runs} (berth scale by ${by}${wants}; the config says ${p.configured ?? 'nothing'})`;
  });
  if (counts.length > 0) lines.push(`  processes: ${counts.join(', ')}`);
  const rows: (string | number | null)[][] = [];
  for (const g of app.generations) {
    for (const i of g.instances) {
      rows.push([
        `${i.process}.${i.index}`,
        g.releaseId + (g.active ? '' : ` (${g.state})`),
        i.pid,
        i.state === 'ready' && i.busy ? 'busy' : i.state,
        i.address,
        i.http ? i.inFlight : '',
        i.http ? i.served : '',
        formatBytes(i.rssBytes),
        formatUptime(i.uptimeMs),
        i.restarts > 0 && i.lastRestartReason ? `${i.restarts} (${i.lastRestartReason})` : i.restarts,
      ]);
    }
  }
  if (rows.length > 0) lines.push(formatTable(['instance', 'release', 'pid', 'state', 'address', 'in-flight', 'served', 'rss', 'uptime', 'restarts'], rows, '  '));
  return lines.join('\n');
}
