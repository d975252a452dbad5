/**
 * `berth tasks <app>`: each schedule entry with its cron, next run, last run, last status and duration;
 * `--runs` lists the recorded runs instead (scheduled, one-off and cleanup), with the ids that
 * `berth logs <app> --task <id>` takes.
 */
import type { TaskEntryStatus } from '../scheduler/scheduler.ts';
import type { TaskRunRecord } from '../store/store.ts';
import { humanDuration } from '../lib/durations.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';
import { formatTable } from './table.ts';

export const TASKS_USAGE = 'berth tasks <app> [--runs [-n N]] [--json]';

function took(ms: number | null): string | null {
  return ms === null ? null : humanDuration(ms);
}

export async function tasks(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { ...CLIENT_OPTIONS, runs: { type: 'boolean', default: false }, lines: { type: 'string', short: 'n', default: '20' } }, true);
  if (positionals.length !== 1) throw new UsageError('expected one app name');
  const n = Number(values.lines);
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new UsageError(`-n expects an integer from 1 to 1000, got "${values.lines}"`);
  const app = encodeURIComponent(positionals[0]);
  const client = await clientFor(values);
  const out = (s: string) => process.stdout.write(s + '\n');

  if (values.runs) {
    const { runs } = await client.call<{ runs: TaskRunRecord[] }>('GET', `/v1/apps/${app}/task-runs?limit=${n}`);
    if (values.json) out(JSON.stringify({ runs }, null, 2));
    else if (runs.length === 0) out('no task runs yet');
    else out(formatTable(['id', 'task', 'trigger', 'state', 'started', 'duration', 'exit', 'user', 'error'], runs.map((r) => [r.id, r.task, r.trigger, r.state, r.startedAt, took(r.durationMs), r.exitCode, r.user, r.error])));
    return 0;
  }

  const body = await client.call<{ app: string; firstRunAt: string | null; tasks: TaskEntryStatus[] }>('GET', `/v1/apps/${app}/tasks`);
  if (values.json) {
    out(JSON.stringify(body, null, 2));
    return 0;
  }
  if (body.tasks.length === 0) {
    out(`${body.app} has no schedule entries`);
    return 0;
  }
  out(
    formatTable(
      ['task', 'cron', 'next run', 'last run', 'status', 'duration', 'command'],
      body.tasks.map((t) => [
        t.name,
        t.timezone ? `${t.cron} (${t.timezone})` : t.cron,
        t.nextRun,
        t.lastRun?.startedAt,
        t.lastRun ? t.lastRun.state + (t.lastRun.exitCode !== null && t.lastRun.exitCode !== 0 ? ` (${t.lastRun.exitCode})` : '') : null,
        took(t.lastRun?.durationMs ?? null),
        t.command,
      ]),
    ),
  );
  if (body.firstRunAt && Date.parse(body.firstRunAt) > Date.now()) out(`\nscheduled runs start at ${body.firstRunAt} (scheduler_delay after the gateway started)`);
  return 0;
}
