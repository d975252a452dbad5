import { spawn } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { spawnIdentity, type AppUser } from '../supervisor/app-user.ts';

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
  onLine?: (line: string, stream: 'out' | 'err') => void;
  /** Lines kept for the error message. */
  tailLines?: number;
  /** Aborting kills the command's process group. */
  signal?: AbortSignal;
}

/**
 * Runs a shell command in its own process group (build and release commands, one-off tasks), with a
 * timeout that kills the whole group: SIGTERM, then SIGKILL 5s later. Output is split into lines, kept
 * as a tail, and appended to a log file.
 */
export async function runCommand(opts: RunCommandOptions): Promise<CommandResult> {
  const tailMax = opts.tailLines ?? 20;
  const tail: string[] = [];
  let log: WriteStream | null = null;
  if (opts.logFile) {
    await mkdir(dirname(opts.logFile), { recursive: true });
    log = createWriteStream(opts.logFile, { flags: 'a' });
  }
  const identity = opts.user ? spawnIdentity(opts.user) : {};
  const child = spawn('/bin/sh', ['-c', opts.command], { cwd: opts.cwd, env: opts.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...identity });
  const killGroup = (sig: NodeJS.Signals) => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, sig);
    } catch {
      // ESRCH: already gone.
    }
  };
  const partials = { out: '', err: '' };
  const onData = (stream: 'out' | 'err') => {
    return (chunk: Buffer) => {
      let partial = partials[stream] + chunk.toString('utf8');
      let i;
      while ((i = partial.indexOf('\n')) >= 0) {
        emit(partial.slice(0, i), stream);
        partial = partial.slice(i + 1);
      }
      if (partial.length > 64 * 1024) {
        emit(partial, stream);
        partial = '';
      }
      partials[stream] = partial;
    };
  };
  /** A last line without a newline is still output. */
  const flushPartials = () => {
    for (const stream of ['out', 'err'] as const) {
      if (partials[stream] !== '') emit(partials[stream], stream);
      partials[stream] = '';
    }
  };
  const emit = (line: string, stream: 'out' | 'err') => {
    tail.push(line);
    if (tail.length > tailMax) tail.shift();
    log?.write(`${new Date().toISOString()} ${stream} ${line}\n`);
    opts.onLine?.(line, stream);
  };
  child.stdout!.on('data', onData('out'));
  child.stderr!.on('data', onData('err'));
  let timedOut = false;
  let killTimer: NodeJS.Timeout | null = null;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup('SIGTERM');
    killTimer = setTimeout(() => killGroup('SIGKILL'), 5_000);
  }, opts.timeoutMs);
  const onAbort = () => {
    killGroup('SIGTERM');
    killTimer ??= setTimeout(() => killGroup('SIGKILL'), 5_000);
  };
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', (err) => reject(new BerthError(ErrorCodes.spawn, `cannot run "${opts.command}": ${err.message}`, { cause: err })));
      child.once('exit', (c, s) => {
        // The shell is gone; nothing it started may linger in its group (and hold its pipes open).
        killGroup('SIGKILL');
        resolve([c, s]);
      });
    });
    if (child.stdout!.readable || child.stderr!.readable) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 2_000);
        child.once('close', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    flushPartials();
    return { code, signal, timedOut, tail };
  } finally {
    clearTimeout(timer);
    if (killTimer) clearTimeout(killTimer);
    opts.signal?.removeEventListener('abort', onAbort);
    if (log) await new Promise<void>((r) => log!.end(r));
  }
}
