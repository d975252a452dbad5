import { timeSortedId } from '../lib/ids.ts';
import type { AppConfig } from '../config/schema.ts';
import { within } from '../lib/deadline.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import type { Store, TaskRunRecord, TaskRunState, TaskTrigger } from '../store/store.ts';
import { appEnv, taskVars } from '../supervisor/app-env.ts';
import { gatewayUser, type AppUser } from '../supervisor/app-user.ts';
import { Child, type ProcessHook } from '../supervisor/child.ts';
import { OutputTail } from '../supervisor/output-tail.ts';

/** What a task run keeps of its output for the record: the last 64 KiB. */
export const OUTPUT_TAIL_BYTES = 64 * 1024;

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
  return timeSortedId('t', now);
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
  #tail = new OutputTail({ bytes: OUTPUT_TAIL_BYTES });
  #started = 0;
  #finishedAt: string | null = null;
  #exitCode: number | null = null;
  #durationMs: number | null = null;
  #error: string | null = null;
  #child: Child | null = null;
  #abort = new AbortController();
  #timer: NodeJS.Timeout | null = null;
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
    return this.#child?.pid ?? null;
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
    this.#child?.kill();
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
      // The node it runs on, as the store records it: a live run reads the same as its row.
      node: this.#store.node,
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
    let child: Child;
    try {
      child = new Child({
        command: exec.command,
        cwd: exec.cwd,
        env: exec.env,
        user: exec.user,
        onLine: (kind, line) => this.#line(kind, line),
        logger: this.#log,
        onProcess: this.#onProcess,
        owner: { app: this.app ?? '', process: `task:${this.task}`, index: 0, releaseId: this.releaseId ?? '' },
      });
    } catch (err) {
      return this.#cannotStart(err, exec.cwd);
    }
    this.#child = child;
    if (child.pid !== null) {
      this.#log.info({ pid: child.pid, command: this.command, cwd: exec.cwd }, 'task run started');
      // Cancelled between the record and the spawn.
      if (this.#ended) this.#kill();
    }
    const { code, signal, error } = await child.exited;
    if (error !== null) return this.#cannotStart(error, exec.cwd);
    // Whatever the leader left behind in its group goes with it, so nothing outlives the run.
    child.kill();
    await within(child.closed, OUTPUT_WAIT_MS);
    return { code, signal, error: null };
  }

  #cannotStart(err: unknown, cwd: string): { code: null; signal: null; error: string } {
    const message = `cannot start: ${errorMessage(err)} (cwd ${cwd})`;
    this.#log.error({ err: errorMessage(err), cwd }, 'task run cannot start');
    this.#line('err', message);
    return { code: null, signal: null, error: message };
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
    void this.#child?.stop(this.#killGraceMs);
  }

  async #finish(o: { code: number | null; signal: string | null; error: string | null }): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
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
