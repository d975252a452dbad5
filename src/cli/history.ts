import type { HistoryEntry } from '../gateway.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';
import { formatTable } from './table.ts';

export const HISTORY_USAGE = 'berth history [app] [-n N] [--json]';

/** `berth history [app]`: every change (deploys, rollbacks, reloads, modes, runs...), newest first, with who and the outcome. */
export async function history(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { ...CLIENT_OPTIONS, lines: { type: 'string', short: 'n', default: '50' } }, true);
  if (positionals.length > 1) throw new UsageError('expected at most one app name');
  const n = Number(values.lines);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`-n expects a positive integer, got "${values.lines}"`);
  const client = await clientFor(values);
  const query = new URLSearchParams({ limit: String(n) });
  if (positionals[0]) query.set('app', positionals[0]);
  const { history } = await client.call<{ history: HistoryEntry[] }>('GET', `/v1/history?${query}`);
  if (values.json) {
    process.stdout.write(JSON.stringify({ history }, null, 2) + '\n');
    return 0;
  }
  if (history.length === 0) {
    process.stdout.write('no history yet\n');
    return 0;
  }
  process.stdout.write(formatTable(['at', 'app', 'action', 'user', 'via', 'outcome', 'detail'], history.map((h) => [h.at, h.app, h.action, h.user, h.channel, h.outcome, h.detail ?? h.target])) + '\n');
  return 0;
}
