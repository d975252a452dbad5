/**
 * `berth dashboard` as a real child process on a gateway's control socket, for the tests of its local
 * proxy and of the dashboard in a browser.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';
import { MAIN, waitFor } from './gateway.ts';

export interface DashboardProcess {
  proc: ChildProcess;
  /** What it printed on stdout so far. */
  output(): string;
  /** Its first line of output (the URL, as text or JSON), once printed. */
  firstLine(): Promise<string>;
  /** Stops it with SIGINT (as Ctrl-C would) and resolves with its exit code. */
  stop(): Promise<number | null>;
}

/** Runs `berth dashboard --socket <socket> ...args` as user `dash-user` (BERTH_USER); killed after the test if still running. */
export function spawnDashboard(t: TestContext, socket: string, args: string[] = []): DashboardProcess {
  const proc = spawn(process.execPath, [MAIN, 'dashboard', '--socket', socket, ...args], { env: { ...process.env, BERTH_USER: 'dash-user' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  t.after(async () => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
    await exited;
  });
  let out = '';
  proc.stdout.on('data', (c) => (out += c));
  return {
    proc,
    output: () => out,
    firstLine: () => waitFor(() => (out.includes('\n') ? out.split('\n')[0] : null), { message: 'the dashboard URL' }),
    stop: async () => {
      proc.kill('SIGINT');
      return exited;
    },
  };
}
