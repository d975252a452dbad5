import type { HistoryEntry } from '../api/wire.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';
import { formatTable } from './table.ts';
import { parseDuration } from '../lib/durations.ts';

export const HISTORY_USAGE = 'berth history [app] [--action A] [--user U] [--since T] [-n N] [--json]';

/**
 * `berth history [app]`: every change (deploys, rollbacks, reloads, modes, runs...), newest first, with
 * who and the outcome. `--action deploy` keeps one kind (so cron rows do not drown the deploys),
 * `--user alice` one caller, `--since` a time: ISO 8601 (`2026-12-01T09:00Z`) or a duration ago (`2h`).
 */
export async function history(args: string[], now: () => number = Date.now): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...CLIENT_OPTIONS,
      lines: { type: 'string', short: 'n', default: '50' },
      action: { type: 'string' },
      user: { type: 'string' },
      since: { type: 'string' },
    },
    true,
  );
  if (positionals.length > 1) throw new UsageError('expected at most one app name');
  const n = Number(values.lines);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new UsageError(`-n expects an integer from 1 to 1000, got "${values.lines}"`);
  const query = new URLSearchParams({ limit: String(n) });
  if (positionals[0]) query.set('app', positionals[0]);
  if (values.action !== undefined) query.set('action', values.action);
  if (values.user !== undefined) query.set('user', values.user);
  if (values.since !== undefined) query.set('since', sinceTime(values.since, now()));
  const client = await clientFor(values);
  const { history } = await client.call<{ history: HistoryEntry[] }>('GET', `/v1/history?${query}`);
  if (values.json) {
    process.stdout.write(JSON.stringify({ history }, null, 2) + '\n');
    return 0;
  }
  if (history.length === 0) {
    process.stdout.write('no history yet\n');
    return 0;
  }
  // A fleet's history is every node's: a column says which, when more than one node wrote it.
  const nodes = new Set(history.map((h) => h.node ?? ''));
  if (nodes.size > 1) {
    process.stdout.write(formatTable(['at', 'node', 'app', 'action', 'user', 'via', 'outcome', 'detail'], history.map((h) => [h.at, h.node, h.app, h.action, h.user, h.channel, h.outcome, h.detail ?? h.target])) + '\n');
    return 0;
  }
  process.stdout.write(formatTable(['at', 'app', 'action', 'user', 'via', 'outcome', 'detail'], history.map((h) => [h.at, h.app, h.action, h.user, h.channel, h.outcome, h.detail ?? h.target])) + '\n');
  return 0;
}

/** `--since`: an ISO 8601 time, or a duration (`90m`, `2h`, `7d`) back from now; as an ISO time. */
function sinceTime(text: string, now: number): string {
  const ago = parseDuration(text);
  if (ago !== null && !/^\d+$/.test(text.trim())) return new Date(now - ago).toISOString();
  const at = Date.parse(text);
  if (Number.isNaN(at)) throw new UsageError(`--since expects an ISO 8601 time (2026-12-01T09:00:00Z) or a duration ago (2h, 7d), got "${text}"`);
  return new Date(at).toISOString();
}
