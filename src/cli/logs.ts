/**
 * `berth logs [app]`: the app's process logs (with no app: every app's, each instance named `<app>/<process>.<index>`) merged by time, each line already prefixed in the file
 * with `<process>.<instance>` and the release; `-f` follows across deploys and rotations. `--deploy ID`
 * shows a deploy's command output, `--task ID` a task run's recorded output.
 */
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const LOGS_USAGE = 'berth logs [app] [--process P] [-n N] [-f] [--deploy ID | --task ID] [--json]';

const LINE_RE = /^(\S+) (\S+) (\S+) (out|err|berth) (.*)$/;

/** A process log line as JSON (`--json`), or just `{line}` when it is not in the process log format. */
function asJson(line: string): string {
  const m = LINE_RE.exec(line);
  if (!m) return JSON.stringify({ line });
  return JSON.stringify({ time: m[1], instance: m[2], release: m[3], stream: m[4], text: m[5] });
}

export async function logs(args: string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    {
      ...CLIENT_OPTIONS,
      process: { type: 'string', short: 'p' },
      lines: { type: 'string', short: 'n', default: '100' },
      follow: { type: 'boolean', short: 'f', default: false },
      deploy: { type: 'string' },
      task: { type: 'string' },
    },
    true,
  );
  if (positionals.length > 1) throw new UsageError('expected at most one app name');
  // No app: every app's logs, merged by time, each instance named <app>/<process>.<index>.
  const all = positionals.length === 0;
  if (all && [values.process, values.deploy, values.task].some((v) => v !== undefined)) throw new UsageError('--process, --deploy and --task need an app name');
  const n = Number(values.lines);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`-n expects a whole number, got "${values.lines}"`);
  if ([values.process, values.deploy, values.task].filter((v) => v !== undefined).length > 1) throw new UsageError('give at most one of --process, --deploy and --task');
  if (values.task !== undefined && values.follow) throw new UsageError('--task cannot be followed: `berth run` streams a run live');
  const query = new URLSearchParams({ lines: String(n) });
  if (values.process !== undefined) query.set('process', values.process);
  if (values.deploy !== undefined) query.set('deploy', values.deploy);
  if (values.task !== undefined) query.set('task', values.task);
  if (values.follow) query.set('follow', '1');
  const client = await clientFor(values);
  const json = values.json;

  // Ctrl-C is how a follow ends.
  const path = all ? `/v1/logs?${query}` : `/v1/apps/${encodeURIComponent(positionals[0]!)}/logs?${query}`;
  const stream = client.stream('GET', path, (line) => {
    process.stdout.write((json ? asJson(line) : line) + '\n');
  });
  process.on('SIGINT', stream.abort);
  process.on('SIGTERM', stream.abort);
  try {
    await stream.done;
    return 0;
  } finally {
    process.off('SIGINT', stream.abort);
    process.off('SIGTERM', stream.abort);
  }
}
