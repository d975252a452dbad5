/**
 * Runs a bench script (bench/*.ts) as its own process, as a user would, and returns its exit status and
 * output. Past `timeoutMs` it gets SIGINT, so it can stop what it started; SIGKILL only if that hangs too.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './gateway.ts';

export interface BenchRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runBench(script: string, args: string[], timeoutMs = 90_000): Promise<BenchRun> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [join(ROOT, 'bench', script), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c));
    proc.stderr.on('data', (c: Buffer) => (stderr += c));
    const timer = setTimeout(() => {
      proc.kill('SIGINT');
      setTimeout(() => proc.kill('SIGKILL'), 20_000).unref();
    }, timeoutMs);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
