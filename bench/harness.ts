/**
 * What the proxy benches (bench/proxy.ts, bench/proxy-tls.ts) share: child processes tracked so that every
 * exit path stops them, polling with deadlines, loopback ports, and a `main` wrapper that owns the temp
 * directory, Ctrl-C and an overall deadline. Everything listens on 127.0.0.1.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const STOP_TIMEOUT_MS = 15_000;

export function note(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

export function onPath(command: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, command))) return join(dir, command);
  }
  return null;
}

/** Environment for children without BERTH_* overrides from the caller's shell, which would change the config. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('BERTH_')) env[k] = v;
  return { ...env, ...extra };
}

// ---- children: tracked so every exit path stops them --------------------------------------------

export interface Child {
  name: string;
  proc: ChildProcess;
  /** Signal for a graceful stop (berth drains; nginx's QUIT waits for requests in flight). */
  stopSignal: NodeJS.Signals;
  exited: Promise<void>;
  log: string | null;
}

const children: Child[] = [];
/** Set once cleanup begins: nothing new may start after that (a load run ending early must not start the next). */
let stopping = false;

export class Stopped extends Error {}

export function isStopping(): boolean {
  return stopping;
}

export function running(child: Child): boolean {
  return child.proc.exitCode === null && child.proc.signalCode === null;
}

/** Spawns in its own process group, with output to a log file (a pipe nobody reads would stall it). */
export function spawnChild(name: string, command: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; log: string | null; stopSignal: NodeJS.Signals }): Child {
  if (stopping) throw new Stopped('stopping');
  const fd = opts.log === null ? 'ignore' : openSync(opts.log, 'a');
  const proc = spawn(command, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: ['ignore', fd, fd], detached: true });
  if (typeof fd === 'number') closeSync(fd);
  const exited = new Promise<void>((r) => {
    proc.once('exit', () => r());
    proc.once('error', () => r());
  });
  const child: Child = { name, proc, stopSignal: opts.stopSignal, exited, log: opts.log };
  children.push(child);
  return child;
}

export function signalGroup(child: Child, signal: NodeJS.Signals): void {
  if (!running(child) || child.proc.pid === undefined) return;
  try {
    process.kill(-child.proc.pid, signal);
  } catch {
    // Gone already.
  }
}

/** Graceful stop with a deadline, then SIGKILL to the group; whatever of the group is left goes too. */
export async function stopChild(child: Child): Promise<void> {
  if (running(child)) {
    // berth must get the signal itself (not its group) so it can stop its apps in order.
    try {
      child.proc.kill(child.stopSignal);
    } catch {
      // Gone already.
    }
    const timer = setTimeout(() => signalGroup(child, 'SIGKILL'), STOP_TIMEOUT_MS);
    await child.exited;
    clearTimeout(timer);
  }
  // A group leader's exit can leave members behind (gunicorn's workers): none may outlive the bench.
  if (child.proc.pid !== undefined) {
    try {
      process.kill(-child.proc.pid, 'SIGKILL');
    } catch {
      // The group is gone.
    }
  }
  const i = children.indexOf(child);
  if (i !== -1) children.splice(i, 1);
}

/** Stops every child started so far and forgets them (a failed start before a fallback). */
export async function stopStarted(): Promise<void> {
  for (const child of [...children].reverse()) await stopChild(child);
}

async function stopAll(): Promise<void> {
  // Reverse start order: nginx and the load tool before berth, which owns the upstream.
  for (const child of [...children].reverse()) await stopChild(child);
}

export function tail(file: string | null, lines = 20): string {
  if (file === null || !existsSync(file)) return '';
  return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * Runs a load tool to its end with a deadline (`timeoutMs`, then SIGKILL) and returns what it printed.
 * Throws Stopped when the bench is stopping, and an error naming the tool when it fails.
 */
export async function runTool(command: string, args: string[], timeoutMs: number): Promise<string> {
  if (stopping) throw new Stopped('stopping');
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const child: Child = { name: command, proc, stopSignal: 'SIGINT', exited: new Promise((r) => proc.once('exit', () => r())), log: null };
  children.push(child);
  let out = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c));
  proc.stderr!.on('data', (c: Buffer) => (out += c));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  await child.exited;
  clearTimeout(timer);
  children.splice(children.indexOf(child), 1);
  if (stopping) throw new Stopped('stopping');
  if (proc.exitCode !== 0) throw new Error(`${command} failed (${proc.exitCode ?? proc.signalCode}):\n${out}`);
  return out;
}

// ---- CPU time -------------------------------------------------------------------------------------

/** Linux's USER_HZ: /proc reports CPU time in these ticks. */
const TICKS_PER_SECOND = 100;

/** CPU time (user + system) the processes have used so far, in milliseconds; a process gone counts 0. */
export function cpuMs(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      // After the command name, which may hold spaces and parentheses: field 3 (state) onwards.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // Not Linux, or gone.
    }
  }
  return (ticks * 1000) / TICKS_PER_SECOND;
}

/** `pid` and its direct children (nginx's master and workers). */
export function withChildren(pid: number): number[] {
  const pids = [pid];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return pids;
  }
  for (const entry of entries) {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) pids.push(Number(entry));
    } catch {
      // Gone since readdir.
    }
  }
  return pids;
}

// ---- ports and polling ------------------------------------------------------------------------------

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

export function getStatus(port: number, path: string): Promise<number> {
  return new Promise((resolveStatus) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false, timeout: 2_000 }, (res) => {
      res.resume();
      resolveStatus(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolveStatus(0));
    req.end();
  });
}

/** Polls until `check` is true (a check that throws is a no); fails early when `child` exits or the bench stops, and at the deadline. */
export async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>, child?: Child): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (stopping) throw new Stopped('stopping');
    if (child && !running(child)) throw new Error(`${child.name} exited (${child.proc.exitCode ?? child.proc.signalCode}) before ${what}\n${tail(child.log)}`);
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}${child ? `\n${tail(child.log)}` : ''}`);
}

/** Rows as aligned text: the first and last columns to the left, numbers to the right, a rule under the header. */
export function table(rows: string[][]): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const lines = rows.map((row) => row.map((cell, i) => (i === 0 || i === row.length - 1 ? cell.padEnd(widths[i]) : cell.padStart(widths[i]))).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  return lines;
}

// ---- main ---------------------------------------------------------------------------------------------

/**
 * Parses the options (a UsageError exits 2 with `usage`), then runs the bench in a fresh temp directory
 * with everything it starts stopped on every exit path: the end, an error, Ctrl-C, SIGTERM, and the
 * overall deadline `budgetMs(options)`. Exits with `run`'s status (0 when it returns none), 1 when it throws.
 */
export async function benchMain<T>(usage: string, parse: (argv: string[]) => T, budgetMs: (opts: T) => number, run: (opts: T, dir: string) => Promise<number | void>): Promise<number> {
  let opts: T;
  try {
    opts = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${usage}\n`);
    return 2;
  }
  const dir = await mkdtemp(join(tmpdir(), 'berth-bench-'));
  let cleaning: Promise<void> | null = null;
  let exitCode: number | null = null;
  /** The first caller's status wins: a signal's 130 is not turned into a failure by the run it interrupted. */
  const cleanup = async (code: number): Promise<never> => {
    stopping = true;
    exitCode ??= code;
    cleaning ??= stopAll().then(() => rm(dir, { recursive: true, force: true }));
    await cleaning;
    process.exit(exitCode);
  };
  const onSignal = (code: number): void => {
    // A second Ctrl-C while cleaning up means "now": kill everything outright.
    if (cleaning) {
      for (const child of children) signalGroup(child, 'SIGKILL');
      process.exit(code);
    }
    void cleanup(code);
  };
  process.on('SIGINT', () => onSignal(130));
  process.on('SIGTERM', () => onSignal(143));
  // Last resort if we die without cleaning up (an uncaught error): no child may outlive the bench.
  process.once('exit', () => {
    for (const child of children) signalGroup(child, 'SIGKILL');
  });
  const budget = budgetMs(opts);
  setTimeout(() => {
    note(`overall deadline of ${Math.round(budget / 1000)}s passed, stopping`);
    void cleanup(1);
  }, budget).unref();
  try {
    // A bench that judges its own run (deploy-under-load: 0 failures) resolves to its exit status.
    const status = await run(opts, dir);
    await cleanup(status ?? 0);
  } catch (err) {
    // Stopped: a signal handler is already cleaning up and will exit with its own status.
    if (!(err instanceof Stopped) && !stopping) note((err as Error).message);
    await cleanup(1);
  }
  return 0;
}
