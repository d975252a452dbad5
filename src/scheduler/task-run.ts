import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { AppConfig } from '../config/schema.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import type { Store, TaskRunRecord, TaskRunState, TaskTrigger } from '../store/store.ts';
import { appEnv, taskVars } from '../supervisor/app-env.ts';
import { gatewayUser, spawnIdentity, type AppUser } from '../supervisor/app-user.ts';
import { execCommand } from '../supervisor/exec-command.ts';
import type { ProcessHook } from '../supervisor/instance.ts';
import { LineSplitter } from '../supervisor/line-splitter.ts';
import { ProcessGroup } from '../supervisor/process-group.ts';
import { OutputTail } from './output-tail.ts';

/** Between SIGTERM and SIGKILL when a run is killed (timeout, cancel, gateway stop). */
export const TASK_KILL_GRACE_MS = 5_000;
/** After the leader exits, how long to wait for the last output (a grandchild may hold the pipes). */
const OUTPUT_WAIT_MS = 2_000;

/** What a run executes: a process in the release, or a job inside the gateway (the built-in cleanup). */
export type TaskRunExec =
  | {
      kind: 'process';
      /** A shell command line, or an argv that runs as given (no shell parsing of its words). */
      command: string | readonly string[];
      cwd: string;
      env: Record<string, string>;
      /** Who the process runs as (app-user.ts); default: the gateway's own user. */
      user?: AppUser | null;
      /** Null: no limit. */
      timeoutMs: number | null;
    }
  | {
      kind: 'job';
      /** Human-readable lines go to `out`; `signal` aborts at timeout or stop. */
      run: (out: (line: string) => void, signal: AbortSignal) => Promise<void>;
      timeoutMs: number | null;
    };

export interface TaskRunOptions {
  app: string | null;
  task: string;
  trigger: TaskTrigger;
  user: string | null;
  releaseId: string | null;
  exec: TaskRunExec;
  store: Store;
  logger: Logger;
  /** Each output line as it arrives, in arrival order (one-off runs stream these). */
  onLine?: ((stream: 'out' | 'err', line: string) => void) | null;
  /** Told about the run's process group, so a gateway that dies leaves no orphan behind. */
  onProcess?: ProcessHook | null;
  killGraceMs?: number;
}

/** `t<YYYYMMDDHHMMSS>-<6 hex>`: sorts by time like deploy and release ids, with its own letter. */
export function newTaskRunId(now = new Date()): string {
  const p = (n: number) => String(n).padStart(2, '0');
  const ts = `${now.getUTCFullYear()}${p(now.getUTCMonth() + 1)}${p(now.getUTCDate())}${p(now.getUTCHours())}${p(now.getUTCMinutes())}${p(now.getUTCSeconds())}`;
  return `t${ts}-${randomBytes(3).toString('hex')}`;
}

const PLAIN_WORD_RE = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** An argv as one shell command line, for the record and for people. */
export function quoteArgv(argv: readonly string[]): string {
  return argv.map((a) => (PLAIN_WORD_RE.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`)).join(' ');
}

/**
 * One run of a task: a scheduled entry, a one-off `berth run`, or the built-in cleanup job. A process
 * runs in a process group of its own in the release's real path, so a timeout or a cancel reaches
 * everything it started. The run is recorded in the store as `running` before it starts and finished
 * with its outcome, exit code, duration and the last 64 KiB of output.
 *
 * States: running -> succeeded | failed | timeout | interrupted.
 */
export class TaskRun {
  readonly id: string;
  readonly app: string | null;
  readonly task: string;
  readonly trigger: TaskTrigger;
  readonly user: string | null;
  readonly releaseId: string | null;
  readonly command: string | null;
  readonly startedAt: string;
  /** Resolves with the final record once the run has ended and is recorded. Never rejects. */
  readonly done: Promise<TaskRunRecord>;

  #state: TaskRunState = 'running';
  #exec: TaskRunExec;
  #store: Store;
  #log: Logger;
  #onLine: TaskRunOptions['onLine'];
  #onProcess: ProcessHook | null;
  #killGraceMs: number;
  #tail = new OutputTail();
  #started = 0;
  #finishedAt: string | null = null;
  #exitCode: number | null = null;
  #durationMs: number | null = null;
  #error: string | null = null;
  #child: ChildProcess | null = null;
  #group: ProcessGroup | null = null;
  #abort = new AbortController();
  #timer: NodeJS.Timeout | null = null;
  #killTimer: NodeJS.Timeout | null = null;
  /** Why the run was ended from outside, when it was. */
  #ended: { state: 'interrupted' | 'failed'; why: string } | null = null;
  #timedOut = false;
  #resolve!: (record: TaskRunRecord) => void;

  constructor(opts: TaskRunOptions) {
    this.id = newTaskRunId();
    this.app = opts.app;
    this.task = opts.task;
    this.trigger = opts.trigger;
    this.user = opts.user;
    this.releaseId = opts.releaseId;
    this.#exec = opts.exec;
    this.command = opts.exec.kind === 'job' ? null : typeof opts.exec.command === 'string' ? opts.exec.command : quoteArgv(opts.exec.command);
    this.#store = opts.store;
    this.#log = opts.logger.child({ run: this.id, app: opts.app ?? undefined, task: opts.task, trigger: opts.trigger });
    this.#onLine = opts.onLine ?? null;
    this.#onProcess = opts.onProcess ?? null;
    this.#killGraceMs = opts.killGraceMs ?? TASK_KILL_GRACE_MS;
    this.startedAt = new Date().toISOString();
    this.done = new Promise((resolve) => (this.#resolve = resolve));
  }

  /**
   * The environment of a task process, from the one builder of app environments (app-env.ts): the
   * pass-through part of `inherited`, the user's HOME/USER/LOGNAME, the app's `env`, then BERTH_APP,
   * BERTH_RELEASE, BERTH_TASK and BERTH_DB_POOL_SIZE=1 (no PORT, no instance variables).
   */
  static env(inherited: Record<string, string | undefined>, app: AppConfig, releaseId: string, task: string, user: AppUser = gatewayUser()): Record<string, string> {
    return appEnv(inherited, { app, user, vars: taskVars(app, releaseId, task) });
  }

  get state(): TaskRunState {
    return this.#state;
  }

  /** The pid of the run's process (its process group id) while it runs. */
  get pid(): number | null {
    return this.#group?.pgid ?? null;
  }

  /** Records the run and starts it. Call once. */
  start(): void {
    void this.#run();
  }

  /**
   * Ends the run from outside: SIGTERM to its process group (or an abort of a job), SIGKILL after the
   * grace. `interrupted`: the gateway stops. `failed`: a one-off whose client went away.
   */
  cancel(state: 'interrupted' | 'failed', why: string): void {
    if (this.#state !== 'running' || this.#ended) return;
    this.#ended = { state, why };
    this.#log.info({ why }, 'task run cancelled');
    this.#kill();
  }

  /** Forced end: SIGKILL to the process group now, synchronously. */
  destroy(err?: Error): void {
    if (this.#state !== 'running') return;
    this.#ended ??= { state: 'interrupted', why: err ? `killed: ${errorMessage(err)}` : 'killed' };
    this.#abort.abort();
    this.#group?.signal('SIGKILL');
  }

  record(): TaskRunRecord {
    return {
      id: this.id,
      app: this.app,
      task: this.task,
      trigger: this.trigger,
      state: this.#state,
      command: this.command,
      releaseId: this.releaseId,
      user: this.user,
      startedAt: this.startedAt,
      finishedAt: this.#finishedAt,
      exitCode: this.#exitCode,
      durationMs: this.#state === 'running' ? null : this.#durationMs,
      output: this.#tail.text(),
      error: this.#error,
    };
  }

  async #run(): Promise<void> {
    try {
      await this.#store.createTaskRun(this.record());
    } catch (err) {
      // The record is worth less than the run: a store hiccup must not stop a job from running.
      this.#log.error({ err: errorMessage(err) }, 'cannot record task run');
    }
    this.#started = performance.now();
    const timeoutMs = this.#exec.timeoutMs;
    if (timeoutMs !== null && timeoutMs > 0) this.#timer = setTimeout(() => this.#timeout(timeoutMs), timeoutMs);
    let outcome: { code: number | null; signal: string | null; error: string | null };
    if (this.#ended) outcome = { code: null, signal: null, error: null };
    else if (this.#exec.kind === 'job') outcome = await this.#job(this.#exec.run);
    else outcome = await this.#process(this.#exec);
    await this.#finish(outcome);
  }

  async #job(run: (out: (line: string) => void, signal: AbortSignal) => Promise<void>): Promise<{ code: number | null; signal: string | null; error: string | null }> {
    this.#log.info({}, 'task run started');
    try {
      await run((line) => this.#line('out', line), this.#abort.signal);
      return { code: 0, signal: null, error: null };
    } catch (err) {
      this.#line('err', errorMessage(err));
      return { code: 1, signal: null, error: errorMessage(err) };
    }
  }

  async #process(exec: Extract<TaskRunExec, { kind: 'process' }>): Promise<{ code: number | null; signal: string | null; error: string | null }> {
    // An argv runs through `exec "$@"`: PATH is searched in the task's own environment, and no word is parsed.
    const args = typeof exec.command === 'string' ? ['-c', execCommand(exec.command)] : ['-c', 'exec "$@"', 'berth-run', ...exec.command];
    let child: ChildProcess;
    try {
      const identity = exec.user ? spawnIdentity(exec.user) : {};
      child = spawn('/bin/sh', args, { cwd: exec.cwd, env: exec.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...identity });
    } catch (err) {
      return this.#cannotStart(err, exec.cwd);
    }
    this.#child = child;
    const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    this.#pipe(child.stdout!, 'out');
    this.#pipe(child.stderr!, 'err');
    const exited = new Promise<{ code: number | null; signal: string | null; error: unknown }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal, error: null }));
      // `on`, not `once`: a later error (a failed kill) must not go unhandled.
      child.on('error', (err) => {
        if (child.pid === undefined) resolve({ code: null, signal: null, error: err });
        else this.#log.warn({ err: errorMessage(err) }, 'task process error');
      });
    });
    if (child.pid !== undefined) {
      this.#group = new ProcessGroup(child.pid);
      this.#log.info({ pid: child.pid, command: this.command, cwd: exec.cwd }, 'task run started');
      this.#onProcess?.('spawn', { pgid: child.pid, app: this.app ?? '', process: `task:${this.task}`, index: 0, releaseId: this.releaseId ?? '' });
      // Cancelled between the record and the spawn.
      if (this.#ended) this.#kill();
    }
    const { code, signal, error } = await exited;
    if (error !== null) return this.#cannotStart(error, exec.cwd);
    // Whatever the leader left behind in its group goes with it, so nothing outlives the run.
    this.#group?.signal('SIGKILL');
    if (this.#group) this.#onProcess?.('exit', { pgid: this.#group.pgid, app: this.app ?? '', process: `task:${this.task}`, index: 0, releaseId: this.releaseId ?? '' });
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, OUTPUT_WAIT_MS).unref())]);
    return { code, signal, error: null };
  }

  #cannotStart(err: unknown, cwd: string): { code: null; signal: null; error: string } {
    const message = `cannot start: ${errorMessage(err)} (cwd ${cwd})`;
    this.#log.error({ err: errorMessage(err), cwd }, 'task run cannot start');
    this.#line('err', message);
    return { code: null, signal: null, error: message };
  }

  #pipe(stream: Readable, kind: 'out' | 'err'): void {
    const splitter = new LineSplitter((line) => this.#line(kind, line));
    stream.on('data', (chunk: Buffer) => splitter.push(chunk));
    stream.once('end', () => splitter.end());
    stream.on('error', () => splitter.end());
  }

  #line(kind: 'out' | 'err', line: string): void {
    this.#tail.push(line);
    this.#onLine?.(kind, line);
  }

  #timeout(timeoutMs: number): void {
    this.#timer = null;
    if (this.#state !== 'running' || this.#ended) return;
    this.#timedOut = true;
    this.#log.warn({ timeoutMs }, 'task run timed out: killing it');
    this.#kill();
  }

  #kill(): void {
    this.#abort.abort();
    const group = this.#group;
    if (!group) return;
    group.signal('SIGTERM');
    this.#killTimer ??= setTimeout(() => group.signal('SIGKILL'), this.#killGraceMs);
  }

  async #finish(o: { code: number | null; signal: string | null; error: string | null }): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    if (this.#killTimer) clearTimeout(this.#killTimer);
    this.#timer = this.#killTimer = null;
    this.#child = null;
    this.#durationMs = Math.round(performance.now() - this.#started);
    this.#finishedAt = new Date().toISOString();
    this.#exitCode = o.code;
    let state: TaskRunState;
    if (this.#timedOut) {
      state = 'timeout';
      this.#error = `timed out after ${formatSeconds(this.#exec.timeoutMs ?? 0)}: killed${o.signal ? ` by ${o.signal}` : ''}`;
    } else if (this.#ended) {
      state = this.#ended.state;
      this.#error = this.#ended.why;
    } else if (o.error !== null) {
      state = 'failed';
      this.#error = o.error;
    } else if (o.code === 0) {
      state = 'succeeded';
    } else {
      state = 'failed';
      this.#error = o.signal !== null ? `killed by ${o.signal}` : `exited with code ${o.code}`;
    }
    this.#transition(state);
    const record = this.record();
    this.#log.info({ state, code: o.code, signal: o.signal ?? undefined, durationMs: this.#durationMs }, 'task run finished');
    try {
      await this.#store.finishTaskRun(this.id, record);
    } catch (err) {
      this.#log.error({ err: errorMessage(err) }, 'cannot record task run outcome');
    }
    this.#resolve(record);
  }

  #transition(next: TaskRunState): void {
    const was = this.#state;
    if (was === next) return;
    this.#state = next;
    this.#log.info({ state: next, was }, 'task run state');
  }
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${(ms / 1000).toFixed(1)}s`;
}
