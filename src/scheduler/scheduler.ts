/**
 * The scheduler (SPEC § Scheduler and one-off tasks): runs each app's `schedule` entries at their cron
 * times (croner: 5 or 6 fields, optional time zone), the built-in cleanup job on `cleanup_cron`, and
 * one-off runs (`berth run`). Every run is a TaskRun, recorded in the store; scheduled and cleanup runs
 * are also written to the audit log (user `scheduler`, action `task`), one-off runs are audited by the
 * control API route that started them.
 *
 * Missed runs are not made up: cron times that passed while the gateway was down (or during
 * `scheduler_delay` after a start) are skipped, so a restart never runs an entry twice for one time.
 */
import { Cron } from 'croner';
import type { AppConfig, BerthConfig, ScheduleConfig } from '../config/schema.ts';
import { BerthError, errorMessage, ErrorCodes } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import type { AuditOutcome, Store, TaskRunFilter, TaskRunRecord, TaskRunState } from '../store/store.ts';
import type { ProcessHook } from '../supervisor/instance.ts';
import { gatewayUser, type AppUser } from '../supervisor/app-user.ts';
import { audited, type AuditStart } from '../api/audit.ts';
import { CleanupJob } from './cleanup-job.ts';
import type { SchedulerHost, TaskTarget } from './task-target.ts';
import { TaskRun, newTaskRunId, type TaskRunExec } from './task-run.ts';

/** The task name of the built-in cleanup job. */
export const CLEANUP_TASK = 'cleanup';
/** The task name of a one-off command (a one-off process type run is named after the type). */
export const RUN_TASK = 'run';
/** A manual run of the cleanup job is never needed; its own timeout keeps a stuck store from piling up runs. */
const CLEANUP_TIMEOUT_MS = 30 * 60_000;

export type { SchedulerHost, TaskTarget } from './task-target.ts';

/** The audit log, as the scheduler writes to it (the gateway's Audit). */
export interface TaskAudit {
  begin(e: AuditStart): Promise<number>;
  finish(id: number, outcome: Exclude<AuditOutcome, 'pending'>, detail?: string | null): Promise<void>;
  record(e: AuditStart & { outcome: Exclude<AuditOutcome, 'pending'> }): Promise<number>;
}

export interface SchedulerOptions {
  config: BerthConfig;
  store: Store;
  host: SchedulerHost;
  audit: TaskAudit;
  /** The 'scheduler' logger. */
  logger: Logger;
  /** The gateway's environment; only its pass-through list reaches tasks (app-env.ts). Default process.env. */
  baseEnv?: Record<string, string | undefined>;
  /** Who an app's tasks run as (app-user.ts); throws for an unknown user. Default: the gateway's user. */
  appUser?: (app: AppConfig) => AppUser;
  /** Told about every task process group, so orphans can be found after a crash. */
  onProcess?: ProcessHook;
  /** Between SIGTERM and SIGKILL when a run is killed; default TASK_KILL_GRACE_MS. */
  killGraceMs?: number;
  /**
   * A fleet (FleetStore.claimOnce): a scheduled time runs on the one node that claims it first, so a
   * fleet of N nodes runs each entry once, not N times. Without it every time runs here.
   */
  claim?: (key: string) => Promise<boolean>;
}

/** A one-off run request (`POST /v1/apps/:app/run`): a command, or the command of a process type. */
export interface OneOffRequest {
  app: string;
  command?: string | readonly string[];
  process?: string;
  user: string;
  onLine?: (stream: 'out' | 'err', line: string) => void;
}

/** One schedule entry as `berth tasks` shows it. */
export interface TaskEntryStatus {
  name: string;
  cron: string;
  timezone: string | null;
  command: string;
  timeoutMs: number;
  overlap: 'skip' | 'allow';
  /** ISO; null when the expression has no next time or the scheduler is stopped. */
  nextRun: string | null;
  /** Runs going on now. */
  running: { id: string; startedAt: string }[];
  /** The last run that was not skipped (it may still be running). */
  lastRun: Pick<TaskRunRecord, 'id' | 'state' | 'startedAt' | 'finishedAt' | 'durationMs' | 'exitCode' | 'error'> | null;
  /** When the last skipped run was due, if any was skipped since. */
  lastSkippedAt: string | null;
}

type SchedulerState = 'new' | 'running' | 'stopping' | 'stopped';

const RAN: TaskRunState[] = ['running', 'succeeded', 'failed', 'timeout', 'interrupted'];

/** One planned cron job: an app's entry, or the cleanup job (app null). */
interface Planned {
  app: string | null;
  entry: ScheduleConfig;
  job: Cron;
}

export class Scheduler {
  #config: BerthConfig;
  #store: Store;
  #host: SchedulerHost;
  #audit: TaskAudit;
  #log: Logger;
  #baseEnv: Record<string, string | undefined>;
  #appUser: (app: AppConfig) => AppUser;
  #onProcess: ProcessHook | null;
  #killGraceMs: number | undefined;
  #state: SchedulerState = 'new';
  /** Nothing scheduled runs before this (start + scheduler_delay). */
  #firstRunAt: Date | null = null;
  #planned = new Map<string, Planned>();
  /** Runs going on, by `app\0task` key (`\0cleanup` for the cleanup job). */
  #running = new Map<string, Set<TaskRun>>();
  #stopping: Promise<void> | null = null;

  #claim: ((key: string) => Promise<boolean>) | null;

  constructor(opts: SchedulerOptions) {
    this.#config = opts.config;
    this.#store = opts.store;
    this.#host = opts.host;
    this.#audit = opts.audit;
    this.#log = opts.logger;
    this.#baseEnv = opts.baseEnv ?? process.env;
    this.#appUser = opts.appUser ?? gatewayUser;
    this.#onProcess = opts.onProcess ?? null;
    this.#killGraceMs = opts.killGraceMs;
    this.#claim = opts.claim ?? null;
  }

  get state(): SchedulerState {
    return this.#state;
  }

  /** When the first scheduled run may happen (ISO), once started. */
  get firstRunAt(): string | null {
    return this.#firstRunAt?.toISOString() ?? null;
  }

  /** On start: runs a killed gateway left `running` are marked `interrupted`. Call before start(). */
  async recoverInterrupted(): Promise<string[]> {
    const ids = await this.#store.interruptTaskRuns(new Date().toISOString());
    if (ids.length > 0) this.#log.warn({ runs: ids }, 'task runs interrupted by a gateway stop');
    return ids;
  }

  /**
   * Plans every schedule entry and the cleanup job; nothing runs before `scheduler_delay` has passed.
   * `since` (the new gateway of an upgrade): no delay, and each entry that was due since then (while the
   * old gateway held its runs back) runs once now.
   */
  start(opts: { since?: Date } = {}): void {
    if (this.#state !== 'new') return;
    this.#firstRunAt = opts.since ? new Date() : new Date(Date.now() + this.#config.schedulerDelayMs);
    this.#transition('running');
    this.#plan();
    this.#log.info({ firstRunAt: this.#firstRunAt.toISOString(), jobs: this.#planned.size }, 'scheduler started');
    if (opts.since) this.catchUp(opts.since);
  }

  /**
   * Runs once now each schedule entry that was due between `since` and now: the times an upgrade held
   * back (see SchedulerHost.held). The cleanup job waits for its next time.
   */
  catchUp(since: Date): void {
    const now = new Date();
    for (const { app, entry } of this.#planned.values()) {
      if (app === null) continue;
      try {
        const probe = new Cron(entry.cron, { timezone: entry.timezone ?? undefined, paused: true });
        const due = probe.nextRun(since);
        probe.stop();
        if (due !== null && due <= now) {
          this.#log.info({ app, task: entry.name, due: due.toISOString() }, 'scheduled run held back by an upgrade: running it now');
          this.#claimed(app, entry, due);
        }
      } catch (err) {
        this.#log.error({ app, task: entry.name, err: errorMessage(err) }, 'cannot catch up a scheduled run');
      }
    }
  }

  /**
   * Takes a new config (a config reload) and re-plans: entries added, changed or removed take effect at
   * once; runs going on are left to finish. Before start() it only replaces the config.
   */
  setConfig(config: BerthConfig): void {
    this.#config = config;
    if (this.#state === 'running') this.#plan();
  }

  /**
   * Starts a one-off run in the app's active release, with the app's env and BERTH_TASK. Throws
   * BERTH_E_NOT_FOUND for an unknown app or process type, BERTH_E_CONFLICT when the app serves no
   * release, BERTH_E_BAD_REQUEST for a bad request and BERTH_E_UNAVAILABLE once stopping.
   */
  runOnce(req: OneOffRequest): TaskRun {
    if (this.#state === 'stopping' || this.#state === 'stopped') throw new BerthError(ErrorCodes.unavailable, 'the gateway is shutting down');
    const held = this.#host.held?.() ?? null;
    if (held !== null) throw new BerthError(ErrorCodes.conflict, held);
    const target = this.#host.taskTarget(req.app);
    if (!target) throw new BerthError(ErrorCodes.notFound, `no app named "${req.app}"`);
    if (!target.active) throw new BerthError(ErrorCodes.conflict, `app ${req.app} has no active release to run in`);
    if ((req.command === undefined) === (req.process === undefined)) throw new BerthError(ErrorCodes.badRequest, 'give exactly one of a command and a process type');
    let command: string | readonly string[];
    let task = RUN_TASK;
    if (req.process !== undefined) {
      const proc = target.active.processes[req.process];
      if (!proc) {
        const known = Object.keys(target.active.processes).join(', ') || 'none';
        throw new BerthError(ErrorCodes.notFound, `app ${req.app} has no process type "${req.process}" (it has: ${known})`);
      }
      command = proc.command;
      task = proc.name;
    } else {
      command = req.command!;
    }
    const run = this.#newRun(target, task, 'manual', req.user, command, null, req.onLine ?? null);
    this.#track(`${req.app}\0${task}`, run);
    run.start();
    return run;
  }

  /** Every schedule entry of an app with its next and last run. Throws BERTH_E_NOT_FOUND for an unknown app. */
  async tasks(app: string): Promise<TaskEntryStatus[]> {
    const config = this.#config.apps[app] ?? this.#host.taskTarget(app)?.config;
    if (!config) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
    const out: TaskEntryStatus[] = [];
    for (const entry of Object.values(config.schedule)) {
      const [last] = await this.#store.listTaskRuns({ app, task: entry.name, trigger: 'schedule', states: RAN, limit: 1 });
      const [skipped] = await this.#store.listTaskRuns({ app, task: entry.name, trigger: 'schedule', states: ['skipped'], limit: 1 });
      const running = [...(this.#running.get(`${app}\0${entry.name}`) ?? [])].filter((r) => r.trigger === 'schedule');
      out.push({
        name: entry.name,
        cron: entry.cron,
        timezone: entry.timezone,
        command: entry.command,
        timeoutMs: entry.timeoutMs,
        overlap: entry.overlap,
        nextRun: this.#nextRun(app, entry),
        running: running.map((r) => ({ id: r.id, startedAt: r.startedAt })),
        lastRun: last ? { id: last.id, state: last.state, startedAt: last.startedAt, finishedAt: last.finishedAt, durationMs: last.durationMs, exitCode: last.exitCode, error: last.error } : null,
        lastSkippedAt: skipped && (!last || skipped.startedAt > last.startedAt) ? skipped.startedAt : null,
      });
    }
    return out;
  }

  /** A run by id: live while it runs, else from the store. */
  async get(id: string): Promise<TaskRunRecord | null> {
    for (const set of this.#running.values()) for (const run of set) if (run.id === id) return run.record();
    return this.#store.getTaskRun(id);
  }

  /** Recorded runs, newest first (`GET /v1/apps/:app/task-runs`). */
  async runs(filter: TaskRunFilter): Promise<TaskRunRecord[]> {
    return this.#store.listTaskRuns(filter);
  }

  /** Runs going on now, oldest first. */
  running(): TaskRun[] {
    const all: TaskRun[] = [];
    for (const set of this.#running.values()) all.push(...set);
    return all.sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  }

  /**
   * Graceful stop: no new runs; runs going on get SIGTERM (recorded `interrupted`), SIGKILL when they
   * are still there at the deadline. Resolves when every run is recorded. Idempotent.
   */
  stop(deadlineMs = 10_000): Promise<void> {
    this.#stopping ??= this.#stop(deadlineMs);
    return this.#stopping;
  }

  /** Forced stop: SIGKILL to every run's process group now. */
  destroy(err?: Error): void {
    this.#unplan();
    for (const run of this.running()) run.destroy(err);
    this.#transition('stopped');
  }

  async #stop(deadlineMs: number): Promise<void> {
    if (this.#state === 'stopped') return;
    this.#transition('stopping');
    this.#unplan();
    const runs = this.running();
    for (const run of runs) run.cancel('interrupted', 'the gateway stopped while this ran');
    let timer: NodeJS.Timeout | null = null;
    const deadline = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), deadlineMs)));
    const all = Promise.all(runs.map((r) => r.done));
    if ((await Promise.race([all, deadline])) === 'late') {
      this.#log.warn({ runs: this.running().map((r) => r.id) }, 'task runs still going at the stop deadline: killing them');
      for (const run of this.running()) run.destroy();
      await all;
    }
    if (timer) clearTimeout(timer);
    this.#transition('stopped');
  }

  #plan(): void {
    this.#unplan();
    const startAt = this.#firstRunAt ?? new Date();
    const cleanup: ScheduleConfig = { name: CLEANUP_TASK, cron: this.#config.cleanupCron, command: '', timeoutMs: CLEANUP_TIMEOUT_MS, timezone: null, overlap: 'skip' };
    this.#add(null, cleanup, startAt);
    for (const app of Object.values(this.#config.apps)) {
      for (const entry of Object.values(app.schedule)) this.#add(app.name, entry, startAt);
    }
  }

  #add(app: string | null, entry: ScheduleConfig, startAt: Date): void {
    const key = `${app ?? ''}\0${entry.name}`;
    try {
      // The time each run is due, as scheduled: a run that fires late (a busy event loop) still claims
      // the time it was due, so every node of a fleet claims the same one.
      let due: Date | null = null;
      const job: Cron = new Cron(entry.cron, { timezone: entry.timezone ?? undefined, startAt, unref: true, catch: (err) => this.#log.error({ app, task: entry.name, err: errorMessage(err) }, 'scheduled run failed to start') }, () => {
        const at = due ?? job.currentRun() ?? new Date();
        due = job.nextRun();
        this.#claimed(app, entry, at);
      });
      due = job.nextRun();
      this.#planned.set(key, { app, entry, job });
    } catch (err) {
      // The config loader checks every expression; this only happens on a config it did not see.
      this.#log.error({ app, task: entry.name, cron: entry.cron, err: errorMessage(err) }, 'cannot schedule task');
    }
  }

  #unplan(): void {
    for (const p of this.#planned.values()) p.job.stop();
    this.#planned.clear();
  }

  #nextRun(app: string, entry: ScheduleConfig): string | null {
    if (this.#state === 'stopping' || this.#state === 'stopped') return null;
    const planned = this.#planned.get(`${app}\0${entry.name}`);
    if (planned && planned.entry.cron === entry.cron && planned.entry.timezone === entry.timezone) return planned.job.nextRun()?.toISOString() ?? null;
    // Not started yet: when it would run if the scheduler started now.
    try {
      const probe = new Cron(entry.cron, { timezone: entry.timezone ?? undefined, paused: true, startAt: this.#firstRunAt ?? new Date(Date.now() + this.#config.schedulerDelayMs) });
      const next = probe.nextRun();
      probe.stop();
      return next?.toISOString() ?? null;
    } catch {
      return null;
    }
  }

  /**
   * A cron time came. In a fleet only the node that claims this entry's time runs it (the others log
   * nothing more); a claim the store cannot answer runs nothing rather than maybe twice.
   */
  #claimed(app: string | null, entry: ScheduleConfig, at: Date): void {
    const claim = this.#claim;
    if (claim === null) return this.#fire(app, entry);
    // The time it was due, to the second: every node's cron gives the same one (clocks kept in time).
    const due = new Date(Math.floor(at.getTime() / 1000) * 1000).toISOString();
    claim(`schedule:${app ?? ''}:${entry.name}:${due}`).then(
      (mine) => {
        if (mine) this.#fire(app, entry);
        else this.#log.debug({ app, task: entry.name, due }, 'scheduled run claimed by another node');
      },
      (err: unknown) => this.#log.error({ app, task: entry.name, due, err: errorMessage(err) }, 'scheduled run not started: the fleet could not agree which node runs it'),
    );
  }

  /** A cron time came: run the entry, or record a skipped run while the previous one still goes. */
  #fire(app: string | null, entry: ScheduleConfig): void {
    if (this.#state !== 'running') return;
    const held = this.#host.held?.() ?? null;
    if (held !== null) {
      // Run by catchUp(): here if the upgrade fails, else by the gateway it hands over to.
      this.#log.info({ app, task: entry.name, reason: held }, 'scheduled run held back');
      return;
    }
    const key = `${app ?? ''}\0${entry.name}`;
    const trigger = app === null ? 'cleanup' : 'schedule';
    const going = [...(this.#running.get(key) ?? [])].filter((r) => r.trigger === trigger);
    if (entry.overlap === 'skip' && going.length > 0) {
      void this.#skipped(app, entry, going[0]);
      return;
    }
    if (app === null) {
      this.#startCleanup(entry);
      return;
    }
    const target = this.#host.taskTarget(app);
    if (!target) return; // removed by a config reload a moment ago
    if (!target.active) {
      void this.#failedToStart(app, entry, `app ${app} has no active release to run in`);
      return;
    }
    const run = this.#newRun(target, entry.name, 'schedule', null, entry.command, entry.timeoutMs, null);
    this.#track(key, run);
    this.#audited(run);
    run.start();
  }

  #startCleanup(entry: ScheduleConfig): void {
    const job = new CleanupJob({ store: this.#store, host: this.#host, retentionMs: this.#config.historyRetentionMs, apps: Object.keys(this.#config.apps) });
    const exec: TaskRunExec = { kind: 'job', run: (out, signal) => job.run(out, signal), timeoutMs: entry.timeoutMs };
    const run = new TaskRun({ app: null, task: CLEANUP_TASK, trigger: 'cleanup', user: null, releaseId: null, exec, store: this.#store, logger: this.#log, killGraceMs: this.#killGraceMs });
    this.#track(`\0${CLEANUP_TASK}`, run);
    this.#audited(run);
    run.start();
  }

  #newRun(target: TaskTarget, task: string, trigger: 'schedule' | 'manual', user: string | null, command: string | readonly string[], timeoutMs: number | null, onLine: OneOffRequest['onLine'] | null): TaskRun {
    const active = target.active!;
    const runAs = this.#appUser(target.config);
    const exec: TaskRunExec = { kind: 'process', command, cwd: active.dir, env: TaskRun.env(this.#baseEnv, target.config, active.id, task, runAs), user: runAs, timeoutMs };
    return new TaskRun({
      app: target.config.name,
      task,
      trigger,
      user,
      releaseId: active.id,
      exec,
      store: this.#store,
      logger: this.#log,
      onLine,
      onProcess: this.#onProcess,
      killGraceMs: this.#killGraceMs,
    });
  }

  #track(key: string, run: TaskRun): void {
    let set = this.#running.get(key);
    if (!set) this.#running.set(key, (set = new Set()));
    set.add(run);
    void run.done.then(() => {
      set.delete(run);
      if (set.size === 0 && this.#running.get(key) === set) this.#running.delete(key);
    });
  }

  /** Scheduled and cleanup runs go to the audit log: pending when they start, finished with the outcome. */
  #audited(run: TaskRun): void {
    const start: AuditStart = { user: 'scheduler', channel: 'internal', action: 'task', app: run.app, target: `${run.task} ${run.id}`, detail: run.command };
    void audited(this.#audit, start, () => run.done, (record) => ({ outcome: record.state === 'succeeded' ? 'ok' : 'failed', detail: describeOutcome(record) }));
  }

  async #skipped(app: string | null, entry: ScheduleConfig, going: TaskRun): Promise<void> {
    const why = `skipped: the previous run ${going.id} is still running`;
    this.#log.info({ app, task: entry.name, running: going.id }, 'scheduled run skipped');
    await this.#recordUnstarted(app, entry, 'skipped', why);
  }

  async #failedToStart(app: string, entry: ScheduleConfig, why: string): Promise<void> {
    this.#log.warn({ app, task: entry.name, why }, 'scheduled run not started');
    await this.#recordUnstarted(app, entry, 'failed', why);
  }

  async #recordUnstarted(app: string | null, entry: ScheduleConfig, state: 'skipped' | 'failed', why: string): Promise<void> {
    const now = new Date().toISOString();
    const id = newTaskRunId();
    const record: TaskRunRecord = {
      id,
      app,
      task: entry.name,
      trigger: app === null ? 'cleanup' : 'schedule',
      state,
      command: app === null ? null : entry.command,
      releaseId: null,
      user: null,
      startedAt: now,
      finishedAt: now,
      exitCode: null,
      durationMs: 0,
      output: '',
      error: why,
    };
    try {
      await this.#store.createTaskRun(record);
    } catch (err) {
      this.#log.error({ app, task: entry.name, err: errorMessage(err) }, 'cannot record task run');
    }
    await this.#audit.record({ user: 'scheduler', channel: 'internal', action: 'task', app, target: `${entry.name} ${id}`, outcome: state === 'skipped' ? 'refused' : 'failed', detail: why });
  }

  #transition(next: SchedulerState): void {
    const was = this.#state;
    if (was === next) return;
    this.#state = next;
    this.#log.info({ state: next, was }, 'scheduler state');
  }
}

/** One line for the audit log: how a run ended. */
export function describeOutcome(r: TaskRunRecord): string {
  const took = r.durationMs === null ? '' : ` in ${r.durationMs}ms`;
  if (r.state === 'succeeded') return `${r.id}: succeeded${took}`;
  return `${r.id}: ${r.state}${took}${r.error ? `: ${r.error}` : ''}`;
}
