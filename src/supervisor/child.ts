import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { within } from '../lib/deadline.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import { processAlive } from '../lib/process-alive.ts';
import { spawnIdentity, type AppUser } from './app-user.ts';
import { execCommand } from './exec-command.ts';
import { LineSplitter } from './line-splitter.ts';
import { ProcessGroup, statFields } from './process-group.ts';

/** After SIGKILL, how long a stop waits for the group to disappear before giving up on it (and saying so). */
export const KILL_WAIT_MS = 5_000;
/** Once the events say the group is gone but it still exists: pauses between looks at /proc (see #goneWithin). */
const SETTLE_PAUSES_MS = [10, 40, 160, 640];
/** While the events have not come: pauses between kill(-pgid, 0) checks, the last one repeated. */
const WATCH_PAUSES_MS = [10, 40, 160, 640, 2_560];
/** An adopted process is not our child, so no exit event comes: how often whether its leader lives is looked at. */
export const ADOPTED_WATCH_MS = 250;

export type OutputStream = 'out' | 'err';

/** Whose process group this is, as a ProcessHook is told. */
export interface ProcessInfo {
  pgid: number;
  app: string;
  process: string;
  index: number;
  releaseId: string;
}

/** A process group started (`spawn`) or its leader exited (`exit`): the gateway records them, to reap orphans after a crash. */
export type ProcessHook = (event: 'spawn' | 'exit', info: ProcessInfo) => void;

export interface ChildOptions {
  /**
   * A shell command line, run by `/bin/sh -c` (a simple one with `exec`, see exec-command.ts), or an
   * argv run as given: through `exec "$@"`, so PATH is searched in `env` and no word is parsed.
   */
  command: string | readonly string[];
  cwd: string;
  /** The whole environment, from the one builder of app environments (app-env.ts). */
  env: Record<string, string | undefined>;
  /** Who the process runs as (app-user.ts); default: the gateway's own user. */
  user?: AppUser | null;
  /** Every line of stdout and stderr as it arrives, whole: a UTF-8 character cut between chunks is never split. */
  onLine: (stream: OutputStream, line: string) => void;
  /** Where an error of a running process is told (the spawn's own failure is in `exited`). */
  logger?: Logger | null;
  /** Told when the group starts and when its leader exits, with `owner` (the pgid is added). */
  onProcess?: ProcessHook | null;
  owner?: Omit<ProcessInfo, 'pgid'>;
}

export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The process never started (no such directory, a bad user...): code and signal are null. */
  error: Error | null;
  /** An adopted process ended: it was not our child, so how (code, signal) is not known. */
  unknown?: boolean;
}

/**
 * A process another gateway started and handed over at an upgrade (upgrade/successor.ts): its leader's
 * pid (the group's id) and its output pipes, passed over the upgrade channel.
 */
export interface AdoptOptions {
  adopt: { pid: number; stdout: Readable; stderr: Readable };
  onLine: ChildOptions['onLine'];
  logger?: Logger | null;
  onProcess?: ProcessHook | null;
  owner?: Omit<ProcessInfo, 'pgid'>;
}

/** How a stop ended: the group went after SIGTERM, only after SIGKILL, or is still there after both. */
export type StopOutcome = 'exited' | 'killed' | 'stuck';

/**
 * One process that berth runs for an app (an instance, a task run, a build or release command):
 * `/bin/sh` spawned `detached`, so it leads a process group of its own (pgid = its pid) that
 * everything it starts joins, and a signal to the group reaches them all. Its output is read as whole
 * lines, and `stop()` ends the group: SIGTERM, then SIGKILL after a grace.
 *
 * Whether the group is gone is known from events, not by polling /proc: the leader's exit, then the
 * close of its stdout and stderr pipes, which every member inherits and holds until it ends. Only a
 * member that closed its pipes, one still on its way out, or zombies nobody has reaped yet (PID 1 in
 * a container may take its time, or never) can outlive both: /proc tells those apart, read a few
 * times after the events (SETTLE_PAUSES_MS) and once at the deadline. Until the events come, a
 * kill(-pgid, 0) now and then (one syscall) catches a group that emptied while a process that left it
 * still holds the pipes.
 */
export class Child {
  /** The leader's pid, which is the group's id; null when the spawn failed. */
  readonly pid: number | null;
  /** Null when the spawn failed. */
  readonly group: ProcessGroup | null;
  /** Resolves when the leader exits, or with `error` when it never started. Never rejects. */
  readonly exited: Promise<ChildExit>;
  /** Resolves once both output pipes are read to their end (at once when the spawn failed). */
  readonly closed: Promise<void>;
  /** Resolves when the process has started ('spawn'); never, when it could not. */
  readonly spawned: Promise<void>;
  /** Its output pipes, as read here: an upgrade hands them to the next gateway (handOver). */
  readonly output: { stdout: Readable; stderr: Readable };

  #stopping: Promise<StopOutcome> | null = null;

  /**
   * Spawns at once. Throws when Node refuses the spawn outright; most failures come in `exited`. With
   * `adopt`, takes over a running process instead (see AdoptOptions and #watchAdopted).
   */
  constructor(opts: ChildOptions | AdoptOptions) {
    if ('adopt' in opts) {
      const { pid, stdout, stderr } = opts.adopt;
      this.pid = pid;
      this.group = new ProcessGroup(pid);
      this.spawned = Promise.resolve();
      this.output = { stdout, stderr };
      this.closed = Promise.all([read(stdout, 'out', opts.onLine), read(stderr, 'err', opts.onLine)]).then(() => {});
      const info = opts.onProcess && opts.owner ? { ...opts.owner, pgid: pid } : null;
      this.exited = watchAdopted(pid, this.closed).then((exit) => {
        if (info !== null) opts.onProcess!('exit', info);
        return exit;
      });
      return;
    }
    const args = typeof opts.command === 'string' ? ['-c', execCommand(opts.command)] : ['-c', 'exec "$@"', 'berth-run', ...opts.command];
    const identity = opts.user ? spawnIdentity(opts.user) : {};
    const child = spawn('/bin/sh', args, { cwd: opts.cwd, env: opts.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...identity });
    this.pid = child.pid ?? null;
    this.group = this.pid === null ? null : new ProcessGroup(this.pid);
    this.spawned = new Promise((resolve) => child.once('spawn', () => resolve()));
    this.output = { stdout: child.stdout!, stderr: child.stderr! };
    this.closed = Promise.all([read(child.stdout!, 'out', opts.onLine), read(child.stderr!, 'err', opts.onLine)]).then(() => {});
    const info = this.pid !== null && opts.onProcess && opts.owner ? { ...opts.owner, pgid: this.pid } : null;
    if (info !== null) opts.onProcess!('spawn', info);
    this.exited = new Promise((resolve) => {
      // 'exit', not 'close': a grandchild holding stdout open must not look like a running leader.
      child.once('exit', (code, signal) => {
        if (info !== null) opts.onProcess!('exit', info);
        resolve({ code, signal, error: null });
      });
      // `on`, not `once`: a later error must not go unhandled.
      child.on('error', (err) => {
        if (child.pid === undefined) resolve({ code: null, signal: null, error: err });
        else opts.logger?.warn({ err: errorMessage(err), pid: child.pid }, 'child process error');
      });
    });
  }

  /** Sends `sig` to every process of the group; false when none is left. */
  signal(sig: NodeJS.Signals): boolean {
    return this.group !== null && this.group.signal(sig);
  }

  /** SIGKILL to the whole group, now. */
  kill(): void {
    this.signal('SIGKILL');
  }

  /**
   * TERM, then KILL after the deadline: SIGTERM to the group now; if it is not gone within `graceMs`,
   * SIGKILL, and up to KILL_WAIT_MS more for it to go. Resolves when no process of the group runs
   * (or with 'stuck'). Idempotent: a second call gets the first one's answer.
   */
  stop(graceMs: number): Promise<StopOutcome> {
    this.#stopping ??= this.#stop(graceMs);
    return this.#stopping;
  }

  async #stop(graceMs: number): Promise<StopOutcome> {
    if (this.group === null) return 'exited';
    this.group.signal('SIGTERM');
    if (await this.#goneWithin(graceMs)) return 'exited';
    this.group.signal('SIGKILL');
    return (await this.#goneWithin(KILL_WAIT_MS)) ? 'killed' : 'stuck';
  }

  /** Whether the group is gone within `ms` (see the class comment). */
  async #goneWithin(ms: number): Promise<boolean> {
    const group = this.group!;
    const deadline = Date.now() + ms;
    // Until the events come, kill(-pgid, 0) now and then (one syscall, no /proc) sees a group that is
    // empty while a process that left it (setsid) still holds the pipes.
    let heard = false;
    for (let i = 0; !heard && Date.now() < deadline; i++) {
      heard = await within(Promise.all([this.exited, this.closed]), Math.min(deadline - Date.now(), WATCH_PAUSES_MS[Math.min(i, WATCH_PAUSES_MS.length - 1)]));
      if (!heard && !group.exists()) return true;
    }
    if (heard) {
      // running() reads /proc only when the group still exists. A member closes its pipes on its way
      // out, a moment before it is a zombie: look again a few times before taking what is left for a
      // member that closed its pipes and runs on.
      if (!group.running()) return true;
      for (const pause of SETTLE_PAUSES_MS) {
        if (deadline - Date.now() <= pause) break;
        await sleep(pause);
        if (!group.running()) return true;
      }
    }
    await sleep(deadline - Date.now());
    return !group.running();
  }
}

/**
 * When an adopted process's leader has ended. It is not our child: no 'exit' event, and no exit status
 * (its parent was the gateway before us, and once that one exits, init reaps it). kill(pid, 0) every
 * ADOPTED_WATCH_MS says when it is gone (one syscall); once its pipes close, /proc also tells a zombie
 * that nobody has reaped yet from a live process.
 */
function watchAdopted(pid: number, closed: Promise<void>): Promise<ChildExit> {
  return new Promise((resolve) => {
    let pipesClosed = false;
    const look = () => {
      if (processAlive(pid) && !(pipesClosed && zombie(pid))) return;
      clearInterval(timer);
      resolve({ code: null, signal: null, error: null, unknown: true });
    };
    const timer = setInterval(look, ADOPTED_WATCH_MS);
    timer.unref();
    void closed.then(() => {
      pipesClosed = true;
      look();
    });
  });
}

function zombie(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state === 'Z' || state === 'X';
}

function sleep(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}

/** Reads one output pipe as lines; resolves when it is closed. */
function read(stream: Readable, kind: OutputStream, onLine: ChildOptions['onLine']): Promise<void> {
  const splitter = new LineSplitter((line) => onLine(kind, line));
  stream.on('data', (chunk: Buffer) => splitter.push(chunk));
  stream.once('end', () => splitter.end());
  stream.on('error', () => splitter.end());
  return new Promise((resolve) =>
    stream.once('close', () => {
      splitter.end();
      resolve();
    }),
  );
}
