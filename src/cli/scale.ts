/**
 * `berth scale <app> <type>=N [<type>=N...]`: sets how many instances of each process type the app runs,
 * live (new instances start and take traffic once ready; removed ones drain, then stop; no other
 * instance restarts). The count is kept in the state store, over the config's, for every later deploy,
 * reload, rollback, config reload and restart; `<type>=config` goes back to the config's count. Waits
 * until the instances it started are ready: exit 0, or 1 naming the ones that failed (the change stays).
 */
import type { ScaleResult } from '../api/wire.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const SCALE_USAGE = 'berth scale <app> <type>=N|config [<type>=N|config...] [--json] [--socket PATH | --url URL | --config F]';

const PAIR_RE = /^([A-Za-z0-9_-]+)=(\d{1,9}|config)$/;

export async function scale(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, CLIENT_OPTIONS, true);
  if (positionals.length < 2) throw new UsageError('expected an app name, then <type>=N (or <type>=config) for each process type to scale');
  const [app, ...pairs] = positionals;
  const processes: Record<string, number | 'config'> = {};
  for (const pair of pairs) {
    const m = PAIR_RE.exec(pair);
    if (!m) throw new UsageError(`expected <type>=N (a whole number) or <type>=config, got "${pair}"`);
    if (Object.hasOwn(processes, m[1])) throw new UsageError(`process type ${m[1]} is named twice`);
    processes[m[1]] = m[2] === 'config' ? 'config' : Number(m[2]);
  }
  const client = await clientFor(values);
  const result = await client.call<ScaleResult>('POST', `/v1/apps/${encodeURIComponent(app!)}/scale`, { processes });
  if (values.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  else process.stdout.write(describe(result));
  if (result.ready) return 0;
  process.stderr.write(`berth scale: ${app}: the new instances are not ready: ${result.error ?? 'no reason given'}\n`);
  process.stderr.write(`berth scale: the new counts stay (the instances restart with backoff); \`berth status ${app}\` shows them\n`);
  return 1;
}

/** What changed, one line per process type, then what started and what drains. */
function describe(r: ScaleResult): string {
  const lines: string[] = [];
  for (const c of r.changes) {
    const config = c.configured === null ? 'the config does not name it' : `the config says ${c.configured}`;
    const kept = c.override ? `kept over the config (${config})` : 'the config\'s count (override dropped)';
    lines.push(`${r.app} ${c.process}: ${c.from} -> ${c.to}, ${kept}`);
  }
  const added = r.changes.flatMap((c) => c.added);
  const removed = r.changes.flatMap((c) => c.removed);
  if (removed.length > 0) lines.push(`stopping ${removed.join(', ')} once ${removed.length === 1 ? 'its' : 'their'} requests end (at most timeouts.drain)`);
  if (added.length > 0) lines.push(`started ${added.join(', ')}: ${r.ready ? 'ready' : 'NOT READY'}`);
  return lines.join('\n') + '\n';
}
