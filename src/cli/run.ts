/**
 * `berth run <app> -- <cmd...>` and `berth run <app> <proctype>`: a one-off process in the app's active
 * release, with its output streamed here as it comes and its exit code as ours. The run belongs to this
 * CLI: Ctrl-C, SIGTERM or losing the connection kills the task's process group on the gateway.
 */
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const RUN_USAGE = 'berth run <app> [--json] -- <cmd...> | berth run <app> <proctype>';

/** Exit statuses when this CLI is told to stop, as a shell reports a process killed by the signal. */
const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

interface RunMessage {
  type: 'start' | 'out' | 'err' | 'exit';
  line?: string;
  id?: string;
  code?: number | null;
  state?: string;
  error?: string | null;
}

export async function run(args: string[]): Promise<number> {
  const dd = args.indexOf('--');
  const { values, positionals } = parse(dd === -1 ? args : args.slice(0, dd), CLIENT_OPTIONS, true);
  let body: { command: string[] } | { process: string };
  if (dd !== -1) {
    if (positionals.length !== 1) throw new UsageError('expected the app name before --');
    const command = args.slice(dd + 1);
    if (command.length === 0 || command[0] === '') throw new UsageError('expected a command after --');
    body = { command };
  } else {
    if (positionals.length !== 2) throw new UsageError('expected an app and a process type, or an app, -- and a command');
    body = { process: positionals[1] };
  }
  const app = positionals[0];
  const client = await clientFor(values);
  const payload = JSON.stringify(body);
  const json = values.json;

  let exit: RunMessage | null = null;
  const stream = client.stream(
    'POST',
    `/v1/apps/${encodeURIComponent(app)}/run`,
    (line) => {
      if (!line) return;
      const msg = JSON.parse(line) as RunMessage;
      if (msg.type === 'exit') exit = msg;
      if (json) process.stdout.write(line + '\n');
      else if (msg.type === 'out') process.stdout.write(msg.line + '\n');
      else if (msg.type === 'err') process.stderr.write(msg.line + '\n');
    },
    { body: payload },
  );
  // Closing the connection is what kills the task on the gateway.
  let signalled: number | null = null;
  const handlers = Object.keys(SIGNAL_EXIT).map((sig) => {
    const handler = () => {
      signalled = SIGNAL_EXIT[sig];
      process.stderr.write(`berth run: ${sig}: the task on the gateway is killed\n`);
      stream.abort();
    };
    process.on(sig, handler);
    return [sig, handler] as const;
  });
  try {
    await stream.done;
  } finally {
    for (const [sig, handler] of handlers) process.off(sig, handler);
  }
  if (signalled !== null) return signalled;
  const e = exit as RunMessage | null;
  if (!e) throw new BerthError(ErrorCodes.unavailable, 'the gateway closed the stream before the task ended');
  if (!json && e.state !== 'succeeded' && e.error) process.stderr.write(`berth run: ${e.id}: ${e.state}: ${e.error}\n`);
  return typeof e.code === 'number' ? e.code : 1;
}
