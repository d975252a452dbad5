/**
 * Runs a system tool (tar, git) for a deploy source, without a shell, capturing its output. Not an app
 * process: no process group or app user (see the supervisor for those).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { LineSplitter } from '../supervisor/line-splitter.ts';

export function splitLines(text: string): string[] {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

export interface Output {
  stdout: string;
  stderr: string;
}

/**
 * Runs a command without a shell; resolves with its output, rejects naming the exit status and
 * stderr's tail. `onLine` sees each stdout line as it arrives; when it throws, the command is killed
 * and the call rejects with that error (a listing stopped at the first entry over a limit).
 */
export async function run(label: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, onLine?: (line: string) => void): Promise<Output> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  const out: Buffer[] = [];
  let stopped: unknown = null;
  // One splitter for all child output: a chunk may end inside a UTF-8 character (a file name's).
  const lines = onLine ? new LineSplitter(onLine) : null;
  child.stdout!.on('data', (c: Buffer) => {
    out.push(c);
    if (!lines || stopped !== null) return;
    try {
      lines.push(c);
    } catch (err) {
      stopped = err;
      child.kill('SIGKILL');
    }
  });
  try {
    const stderr = await exited(child, label);
    if (stopped !== null) throw stopped;
    lines?.end();
    return { stdout: Buffer.concat(out).toString('utf8'), stderr };
  } catch (err) {
    throw stopped ?? err;
  }
}

/** Waits for a child to exit and resolves with its stderr; rejects when it could not start or exited non-zero. */
export function exited(child: ChildProcess, label: string): Promise<string> {
  const err: Buffer[] = [];
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  return new Promise((resolvePromise, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      reject(e.code === 'ENOENT' ? new Error(`${label.split(' ')[0]} is not installed (not found on PATH)`, { cause: e }) : e);
    });
    child.once('close', (code, signal) => {
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) return resolvePromise(stderr);
      const tail = stderr.trim().split('\n').slice(-5).join('\n');
      reject(new Error(`${label} exited with ${signal ?? code}${tail ? `: ${tail}` : ''}`));
    });
  });
}
