import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { within } from '../lib/deadline.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { AppUser } from '../supervisor/app-user.ts';
import { Child, type OutputStream } from '../supervisor/child.ts';
import { OutputTail } from '../supervisor/output-tail.ts';

/** Between SIGTERM and SIGKILL when a command is stopped (timeout, gateway stop). */
const KILL_GRACE_MS = 5_000;
/** After the shell exits, how long to wait for the last output (a member that left the group may hold the pipes). */
const OUTPUT_WAIT_MS = 2_000;

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** The last lines of combined output. */
  tail: string[];
}

export interface RunCommandOptions {
  command: string;
  cwd: string;
  env: Record<string, string | undefined>;
  /** Who the command runs as (app-user.ts); default: the gateway's own user. */
  user?: AppUser | null;
  timeoutMs: number;
  /** Appends every output line here (the deploy log). */
  logFile?: string;
  /** Called with each output line as it arrives. */
  onLine?: (line: string, stream: OutputStream) => void;
  /** Lines kept for the error message. */
  tailLines?: number;
  /** Aborting kills the command's process group. */
  signal?: AbortSignal;
}

/**
 * Runs a shell command as a Child (supervisor/child.ts: build and release commands), with a timeout
 * that stops the whole group: SIGTERM, then SIGKILL KILL_GRACE_MS later; aborting `signal` does the
 * same. Output is read as lines, kept as a tail, and appended to a log file.
 */
export async function runCommand(opts: RunCommandOptions): Promise<CommandResult> {
  const tail = new OutputTail({ lines: opts.tailLines ?? 20 });
  let log: WriteStream | null = null;
  if (opts.logFile) {
    await mkdir(dirname(opts.logFile), { recursive: true });
    log = createWriteStream(opts.logFile, { flags: 'a' });
  }
  const onLine = (stream: OutputStream, line: string): void => {
    tail.push(line);
    log?.write(`${new Date().toISOString()} ${stream} ${line}\n`);
    opts.onLine?.(line, stream);
  };
  let timedOut = false;
  let timer: NodeJS.Timeout | null = null;
  let onAbort: (() => void) | null = null;
  try {
    let child: Child;
    try {
      child = new Child({ command: opts.command, cwd: opts.cwd, env: opts.env, user: opts.user, onLine });
    } catch (err) {
      throw cannotRun(opts.command, err as Error);
    }
    timer = setTimeout(() => {
      timedOut = true;
      void child.stop(KILL_GRACE_MS);
    }, opts.timeoutMs);
    onAbort = () => void child.stop(KILL_GRACE_MS);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const exit = await child.exited;
    if (exit.error !== null) throw cannotRun(opts.command, exit.error);
    // The shell is gone; nothing it started may linger in its group (and hold its pipes open).
    child.kill();
    await within(child.closed, OUTPUT_WAIT_MS);
    return { code: exit.code, signal: exit.signal, timedOut, tail: tail.lines() };
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) opts.signal?.removeEventListener('abort', onAbort);
    if (log) await new Promise<void>((r) => log!.end(r));
  }
}

function cannotRun(command: string, err: Error): BerthError {
  return new BerthError(ErrorCodes.spawn, `cannot run "${command}": ${err.message}`, { cause: err });
}
