import { spawn, type ChildProcess } from 'node:child_process';
import { channel } from 'node:diagnostics_channel';
import { constants } from 'node:fs';
import { chmod, mkdir, open, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import type { AppConfig, ProcessConfig } from '../config/schema.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import { appEnv, instanceVars } from './app-env.ts';
import { gatewayUser, spawnIdentity, type AppUser } from './app-user.ts';
import { Backoff, type RestartTiming } from './backoff.ts';
import { execCommand } from './exec-command.ts';
import { Health } from './health.ts';
import { Heartbeat } from './heartbeat.ts';
import { LineSplitter } from './line-splitter.ts';
import type { LogWriter } from './log-writer.ts';
import type { Ports } from './ports.ts';
import { ProcessGroup } from './process-group.ts';
import { probe } from './probe.ts';
import type { InstanceState, Upstream, UpstreamAddress } from './types.ts';

/** Lines of output kept in memory per instance, for error messages. */
export const LOG_TAIL_LINES = 20;
/** Pause between readiness probes of a starting instance. */
export const READY_POLL_MS = 100;
/** After SIGKILL, how long to wait for the group to disappear before giving up on it (and saying so). */
const KILL_WAIT_MS = 5_000;
/** How often a stop looks whether the process group is gone. */
const GONE_POLL_MS = 20;

/**
 * One `InstanceEvent` when an instance restarts after its process exited, and when it is marked
 * unhealthy; published only while someone subscribes. State changes are not events: metrics read
 * states when scraped.
 */
export const instanceChannel = channel('berth:supervisor:instance');

export interface InstanceEvent {
  readonly instance: Instance;
  readonly event: 'restart' | 'unhealthy';
}

/** One instance as `berth status` shows it. */
export interface InstanceSnapshot {
  process: string;
  index: number;
  http: boolean;
  pid: number | null;
  state: InstanceState;
  /** "127.0.0.1:41234" or "unix:/path"; null while no process runs. */
  address: string | null;
  inFlight: number;
  served: number;
  /** In flight, with no request older than busy_grace: slow, not dead (SPEC § Health). */
  busy: boolean;
  /** VmRSS summed over every process of the instance's process group (Linux); null when unknown. */
  rssBytes: number | null;
  uptimeMs: number | null;
  restarts: number;
  lastExit: { code: number | null; signal: string | null; at: string } | null;
  /** Why the process last ended without being asked to: it exited, went silent, or never got ready. */
  lastRestartReason: RestartReason | null;
}

/** exit: the process ended by itself. heartbeat: it stopped touching its heartbeat file and was killed.
 * startup-timeout: it never answered within startup_timeout and was killed. */
export type RestartReason = 'exit' | 'heartbeat' | 'startup-timeout';

/** An instance's process ended without a stop() and is restarted after `delayMs` (null: crashed, not restarted). */
export interface RestartInfo {
  app: string;
  process: string;
  index: number;
  releaseId: string;
  reason: RestartReason;
  /** For people: "heartbeat: silent for 12s", "exited with code 1"... */
  detail: string;
  delayMs: number | null;
}

export type RestartHook = (info: RestartInfo) => void;

/** What an instance tells its generation. Methods, so no closure is kept per instance. */
export interface InstanceListener {
  /** After every state change. */
  instanceChanged(inst: Instance): void;
  /** Its health probes failed `unhealthy_after` times in a row; its state is now 'unhealthy'. */
  instanceUnhealthy(inst: Instance): void;
  /** Its in-flight count has just dropped to 0. */
  instanceIdle(inst: Instance): void;
}

export interface InstanceOptions {
  app: AppConfig;
  process: ProcessConfig;
  index: number;
  releaseId: string;
  /** The release's real path: the working directory. */
  releaseDir: string;
  /** The whole environment (Instance.baseEnv) but the per-start address (PORT or BERTH_SOCKET). */
  env: Record<string, string>;
  /** Who the process runs as (app-user.ts); default: the gateway's own user. */
  user?: AppUser | null;
  /** Non-http types: the heartbeat file (created empty at each start). */
  heartbeatFile: string | null;
  ports: Ports;
  logWriter: LogWriter;
  timing?: Partial<RestartTiming>;
  logger: Logger;
  listener?: InstanceListener | null;
  /** Told when a process group starts and when its leader exits (the gateway records them in the store). */
  onProcess?: ProcessHook | null;
  /** Told when the process ended without a stop() and why (the gateway records it in the audit log). */
  onRestart?: RestartHook | null;
}

/** A process group started (`spawn`) or its leader exited (`exit`). */
export type ProcessHook = (event: 'spawn' | 'exit', info: { pgid: number; app: string; process: string; index: number; releaseId: string }) => void;

/**
 * One OS process of one process type of one release, and the slot it fills: when the process exits it
 * is restarted (with backoff) in the same Instance, with a new pid and a new address. The process runs
 * `/bin/sh -c <command>` in a process group of its own, in the release's real path.
 *
 * States: stopped (new) -> starting -> ready -> (unhealthy) ; an unexpected exit -> backoff -> starting
 * ... or -> crashed when the failure budget is spent ; stop() -> stopping -> stopped.
 */
export class Instance implements Upstream {
  readonly app: string;
  readonly process: string;
  readonly index: number;
  readonly releaseId: string;
  readonly releaseDir: string;
  readonly concurrency: number;
  readonly http: boolean;
  /** `<process>.<index>`, as logs and status name it. */
  readonly label: string;
  readonly heartbeatFile: string | null;
  readonly config: AppConfig;
  readonly processConfig: ProcessConfig;

  #state: InstanceState = 'stopped';
  #address: UpstreamAddress | null = null;
  /** The socket path the app binds, once `#address` has moved to its pinned link (Ports.pin). */
  #bound: string | null = null;
  /** In-flight tickets -> start time. A Map keeps insertion order, so its first entry is the oldest. */
  #tickets = new Map<number, number>();
  #lastTicket = 0;
  /** WebSockets open to this instance; they hold no ticket (no request slot). */
  #tunnels = 0;
  #served = 0;

  #env: Record<string, string>;
  #user: AppUser;
  /** What `/bin/sh -c` runs: the command, with `exec` when it is a simple one. */
  #script: string;
  #ports: Ports;
  #writer: LogWriter;
  #log: Logger;
  #listener: InstanceListener | null;
  #onProcess: ProcessHook | null;
  #onRestart: RestartHook | null;
  #backoff: Backoff;
  #health: Health | null = null;
  #heartbeat: Heartbeat | null = null;

  #child: ChildProcess | null = null;
  #group: ProcessGroup | null = null;
  #pid: number | null = null;
  #startedAt = 0;
  #restarts = 0;
  #lastExit: InstanceSnapshot['lastExit'] = null;
  #lastRestartReason: RestartReason | null = null;
  /** Set when the gateway itself kills the process (heartbeat, startup timeout), so the exit says why. */
  #killReason: { reason: RestartReason; detail: string } | null = null;
  /** Bumped at every start and stop: async work of an earlier start checks it and gives up. */
  #run = 0;
  /** stop() or destroy() was called: the process is never started again. */
  #ended = false;
  #stopping: Promise<void> | null = null;
  #restartTimer: NodeJS.Timeout | null = null;
  #readyTimer: NodeJS.Timeout | null = null;
  #startupTimer: NodeJS.Timeout | null = null;
  #killTimer: NodeJS.Timeout | null = null;
  #tail: string[] = [];
  /** stdout and stderr pipes not yet closed, of every process this slot ran. */
  #openPipes = 0;
  /** Called once no pipe is open (see outputEnded). */
  #pipeWaiters: (() => void)[] = [];

  constructor(opts: InstanceOptions) {
    this.config = opts.app;
    this.processConfig = opts.process;
    this.app = opts.app.name;
    this.process = opts.process.name;
    this.index = opts.index;
    this.releaseId = opts.releaseId;
    this.releaseDir = opts.releaseDir;
    this.http = opts.process.http;
    this.concurrency = opts.process.http ? opts.process.concurrency : 1;
    this.label = `${this.process}.${this.index}`;
    this.heartbeatFile = opts.heartbeatFile;
    this.#env = opts.env;
    this.#user = opts.user ?? gatewayUser();
    this.#script = execCommand(opts.process.command);
    this.#ports = opts.ports;
    this.#writer = opts.logWriter;
    this.#log = opts.logger;
    this.#listener = opts.listener ?? null;
    this.#onProcess = opts.onProcess ?? null;
    this.#onRestart = opts.onRestart ?? null;
    this.#backoff = new Backoff(opts.timing);
    if (this.http && opts.app.health.path !== null) {
      this.#health = new Health(this, opts.app.health, opts.logger, this.#unhealthy.bind(this));
    }
    if (!this.http && opts.heartbeatFile !== null && opts.process.heartbeatTimeoutMs !== null) {
      this.#heartbeat = new Heartbeat(opts.heartbeatFile, opts.process.heartbeatTimeoutMs, this.#heartbeatMissed.bind(this));
    }
  }

  /**
   * Builds the environment shared by every start of one instance slot (SPEC § Environment), with the
   * one builder of app environments (app-env.ts): the pass-through part of `inherited`, the user's
   * HOME/USER/LOGNAME, the app's `env`, the process type's `env`, then the BERTH_* variables.
   */
  static baseEnv(
    inherited: Record<string, string | undefined>,
    app: AppConfig,
    releaseId: string,
    proc: ProcessConfig,
    index: number,
    heartbeatFile: string | null,
    user: AppUser = gatewayUser(),
  ): Record<string, string> {
    return appEnv(inherited, { app, user, process: proc, vars: instanceVars(app, releaseId, proc, index, heartbeatFile) });
  }

  get state(): InstanceState {
    return this.#state;
  }

  /** The OS user the process runs as. */
  get user(): AppUser {
    return this.#user;
  }

  get address(): UpstreamAddress | null {
    return this.#address;
  }

  get inFlight(): number {
    return this.#tickets.size;
  }

  get served(): number {
    return this.#served;
  }

  get tunnels(): number {
    return this.#tunnels;
  }

  get pid(): number | null {
    return this.#pid;
  }

  get restarts(): number {
    return this.#restarts;
  }

  get lastExit(): InstanceSnapshot['lastExit'] {
    return this.#lastExit;
  }

  /** In flight, and none of its requests has been running longer than `health.busy_grace`. */
  get busy(): boolean {
    if (this.#tickets.size === 0) return false;
    const oldest = this.#tickets.values().next().value as number;
    return Date.now() - oldest <= this.config.health.busyGraceMs;
  }

  begin(): number {
    const ticket = ++this.#lastTicket;
    this.#tickets.set(ticket, Date.now());
    return ticket;
  }

  end(ticket: number): void {
    if (!this.#tickets.delete(ticket)) return;
    this.#served++;
    if (this.#tickets.size === 0 && this.#tunnels === 0 && this.#listener !== null) this.#listener.instanceIdle(this);
  }

  beginTunnel(): void {
    this.#tunnels++;
  }

  endTunnel(): void {
    if (this.#tunnels === 0) return;
    this.#tunnels--;
    if (this.#tunnels === 0 && this.#tickets.size === 0 && this.#listener !== null) this.#listener.instanceIdle(this);
  }

  /** The last lines of output (stdout and stderr, as written to the log file), oldest first. */
  logTail(): string[] {
    return this.#tail.slice();
  }

  /**
   * Resolves once the output of the processes that ran is read to its end (their pipes closed), or
   * after `maxWaitMs`. 'exit' can come before the last lines are read, and a failure that quotes the
   * log tail must not miss the lines that say why.
   */
  outputEnded(maxWaitMs: number): Promise<void> {
    if (this.#openPipes === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, maxWaitMs);
      this.#pipeWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Starts the process. Its state goes to 'starting', then to 'ready' once it answers. */
  start(): void {
    if (this.#ended || this.#run !== 0) return;
    this.#launch();
  }

  /**
   * Graceful stop: SIGTERM to the process group, SIGKILL to it after `timeouts.stop`; resolves when no
   * process of the group runs any more. Cancels a pending restart. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** Forced stop: SIGKILL to the process group now, synchronously. */
  destroy(err?: Error): void {
    this.#ended = true;
    this.#run++;
    this.#clearTimers();
    if (this.#group !== null && this.#child !== null) {
      this.#log.warn({ pid: this.#pid, err: err ? errorMessage(err) : undefined }, 'instance killed');
      this.#group.signal('SIGKILL');
    }
    this.#address = null;
    if (this.#state !== 'stopped') this.#transition('stopped');
    this.#stopping ??= Promise.resolve();
  }

  snapshot(): InstanceSnapshot {
    const a = this.#address;
    return {
      process: this.process,
      index: this.index,
      http: this.http,
      pid: this.#pid,
      state: this.#state,
      address: a === null ? null : a.kind === 'tcp' ? `${a.host}:${a.port}` : `unix:${a.path}`,
      inFlight: this.#tickets.size,
      served: this.#served,
      busy: this.busy,
      rssBytes: this.#group === null ? null : this.#group.rssBytes(),
      uptimeMs: this.#startedAt === 0 ? null : Date.now() - this.#startedAt,
      restarts: this.#restarts,
      lastExit: this.#lastExit,
      lastRestartReason: this.#lastRestartReason,
    };
  }

  #transition(next: InstanceState): void {
    const was = this.#state;
    if (was === next) return;
    this.#state = next;
    this.#log.info({ state: next, was }, 'instance state');
    this.#listener?.instanceChanged(this);
  }

  #launch(): void {
    const run = ++this.#run;
    this.#transition('starting');
    this.#prepare().then(
      (address) => {
        if (run === this.#run) this.#spawn(run, address);
        else if (address?.kind === 'unix') void this.#ports.release(address.path).catch(() => {});
      },
      (err) => {
        if (run !== this.#run) return;
        this.#log.error({ err: errorMessage(err) }, 'instance cannot start');
        this.#line('berth', `cannot start: ${errorMessage(err)}`);
        this.#exited(null, null, 0);
      },
    );
  }

  /** Everything a start needs before the spawn: an address (http types), an empty heartbeat file. */
  async #prepare(): Promise<UpstreamAddress | null> {
    if (this.heartbeatFile !== null) await this.#heartbeatFile(this.heartbeatFile);
    if (!this.http) return null;
    if (this.config.listen === 'socket') return { kind: 'unix', path: await this.#ports.socket(this.app, this.process, this.index, this.#user) };
    return { kind: 'tcp', host: '127.0.0.1', port: await this.#ports.port() };
  }

  /**
   * An empty heartbeat file the app's user can touch. Its directory belongs to root (when berth is
   * root) so the app can neither swap the file for a symlink nor make berth write through one; the
   * file itself is opened without following symlinks.
   */
  async #heartbeatFile(file: string): Promise<void> {
    const dir = dirname(file);
    await mkdir(dir, { recursive: true });
    if (this.#user.switches) await chmod(dir, 0o711);
    const handle = await open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o644);
    try {
      if (this.#user.switches) await handle.chown(this.#user.uid, this.#user.gid);
    } finally {
      await handle.close();
    }
  }

  #spawn(run: number, address: UpstreamAddress | null): void {
    const env: Record<string, string> = { ...this.#env };
    if (address?.kind === 'tcp') env.PORT = String(address.port);
    else if (address?.kind === 'unix') env.BERTH_SOCKET = address.path;
    let child: ChildProcess;
    try {
      child = spawn('/bin/sh', ['-c', this.#script], {
        cwd: this.releaseDir,
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
        env,
        ...spawnIdentity(this.#user),
      });
    } catch (err) {
      this.#log.error({ err: errorMessage(err) }, 'instance cannot start');
      this.#line('berth', `cannot start: ${errorMessage(err)}`);
      this.#exited(null, null, 0);
      return;
    }
    this.#child = child;
    this.#pipe(child.stdout!, 'out');
    this.#pipe(child.stderr!, 'err');
    // 'exit', not 'close': a grandchild holding stdout open must not look like a running instance.
    child.once('exit', (code, signal) => this.#onExit(child, code, signal));
    child.on('error', (err) => this.#onError(child, err));
    if (child.pid === undefined) return; // spawn failed; 'error' follows
    this.#pid = child.pid;
    this.#group = new ProcessGroup(child.pid);
    this.#startedAt = Date.now();
    this.#address = address;
    this.#log.info({ pid: child.pid, address: address === null ? undefined : describe(address) }, 'instance spawned');
    this.#onProcess?.('spawn', { pgid: child.pid, app: this.app, process: this.process, index: this.index, releaseId: this.releaseId });
    if (address !== null) {
      this.#startupTimer = setTimeout(() => this.#startupTimedOut(run), this.config.health.startupTimeoutMs);
      this.#pollReady(run);
    } else {
      // A background worker has nothing to answer: it is up once its command runs.
      child.once('spawn', () => {
        if (run === this.#run && this.#state === 'starting') this.#ready();
      });
    }
  }

  #pipe(stream: Readable, kind: 'out' | 'err'): void {
    const splitter = new LineSplitter((line) => this.#line(kind, line));
    stream.on('data', (chunk: Buffer) => splitter.push(chunk));
    stream.once('end', () => splitter.end());
    stream.on('error', () => splitter.end());
    this.#openPipes++;
    stream.once('close', () => {
      splitter.end();
      if (--this.#openPipes > 0) return;
      const waiters = this.#pipeWaiters;
      this.#pipeWaiters = [];
      for (const fn of waiters) fn();
    });
  }

  /** One line of output to the log file and the tail; `berth` marks lines about the process, not from it. */
  #line(kind: 'out' | 'err' | 'berth', text: string): void {
    const line = `${new Date().toISOString()} ${this.label} ${this.releaseId} ${kind} ${text}`;
    this.#writer.write(line + '\n');
    if (this.#tail.length >= LOG_TAIL_LINES) this.#tail.shift();
    this.#tail.push(line);
  }

  #pollReady(run: number): void {
    this.#readyTimer = null;
    const address = this.#address;
    if (run !== this.#run || this.#state !== 'starting' || address === null) return;
    // An app with a user of its own binds in a directory it owns: nothing is probed (or proxied) there
    // before its socket is pinned where the app cannot swap it (Ports.pin).
    if (address.kind === 'unix' && this.#user.switches && this.#bound === null) {
      this.#ports.pin(address.path, this.#user.uid).then(
        (pinned) => {
          if (run !== this.#run || this.#state !== 'starting') {
            if (pinned !== null) void this.#ports.release(pinned).catch(() => {});
            return;
          }
          if (pinned === null) {
            this.#readyTimer = setTimeout(() => this.#pollReady(run), READY_POLL_MS);
            return;
          }
          this.#bound = address.path;
          this.#address = { kind: 'unix', path: pinned };
          this.#pollReady(run);
        },
        (err) => {
          if (run !== this.#run) return;
          this.#log.warn({ err: errorMessage(err), socket: address.path }, 'cannot pin the instance socket');
          this.#readyTimer = setTimeout(() => this.#pollReady(run), READY_POLL_MS);
        },
      );
      return;
    }
    const h = this.config.health;
    probe(address, h.path, h.timeoutMs).then((ok) => {
      if (run !== this.#run || this.#state !== 'starting') return;
      if (ok) this.#ready();
      else this.#readyTimer = setTimeout(() => this.#pollReady(run), READY_POLL_MS);
    });
  }

  #ready(): void {
    if (this.#startupTimer) clearTimeout(this.#startupTimer);
    this.#startupTimer = null;
    this.#transition('ready');
    this.#health?.start();
    this.#heartbeat?.start(this.#startedAt);
  }

  /** A start that never answers counts as a failure, so the slot goes through backoff (or crashed). */
  #startupTimedOut(run: number): void {
    this.#startupTimer = null;
    if (run !== this.#run || this.#state !== 'starting') return;
    this.#log.warn({ pid: this.#pid, startupTimeoutMs: this.config.health.startupTimeoutMs }, 'instance not ready in time: killing it');
    this.#killReason = { reason: 'startup-timeout', detail: `startup-timeout: not ready within ${Math.round(this.config.health.startupTimeoutMs / 1000)}s` };
    this.#group?.signal('SIGKILL');
  }

  #unhealthy(failures: number): void {
    if (this.#state !== 'ready') return;
    this.#log.warn({ failures, pid: this.#pid }, 'instance unhealthy');
    if (instanceChannel.hasSubscribers) instanceChannel.publish({ instance: this, event: 'unhealthy' } satisfies InstanceEvent);
    this.#transition('unhealthy');
    this.#listener?.instanceUnhealthy(this);
  }

  #heartbeatMissed(silentMs: number): void {
    if (this.#ended || this.#child === null || this.#group === null) return;
    this.#log.warn({ pid: this.#pid, silentMs, heartbeatTimeoutMs: this.processConfig.heartbeatTimeoutMs }, 'heartbeat missed: restarting instance');
    this.#killReason = { reason: 'heartbeat', detail: `heartbeat: silent for ${Math.round(silentMs / 1000)}s` };
    this.#line('berth', `heartbeat missed: silent for ${Math.round(silentMs / 1000)}s, restarting`);
    this.#terminate(this.#group);
  }

  /** SIGTERM now, SIGKILL after `timeouts.stop` if the leader has not exited by then. */
  #terminate(group: ProcessGroup): void {
    group.signal('SIGTERM');
    if (this.#killTimer) clearTimeout(this.#killTimer);
    this.#killTimer = setTimeout(() => {
      this.#killTimer = null;
      group.signal('SIGKILL');
    }, this.config.timeouts.stopMs);
  }

  #onError(child: ChildProcess, err: Error): void {
    if (child !== this.#child) return;
    if (child.pid === undefined) {
      this.#log.error({ err: errorMessage(err), command: this.processConfig.command, cwd: this.releaseDir }, 'instance cannot start');
      // Into the tail too, so a deploy that fails on it says why.
      this.#line('berth', `cannot start: ${errorMessage(err)} (cwd ${this.releaseDir})`);
      this.#child = null;
      this.#exited(null, null, 0);
    } else {
      this.#log.warn({ err: errorMessage(err), pid: child.pid }, 'instance process error');
    }
  }

  #onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.#child) return;
    this.#child = null;
    const upMs = this.#startedAt === 0 ? 0 : Date.now() - this.#startedAt;
    const pid = this.#pid;
    if (pid !== null) this.#onProcess?.('exit', { pgid: pid, app: this.app, process: this.process, index: this.index, releaseId: this.releaseId });
    if (this.#ended) this.#log.info({ pid, code, signal, upMs }, 'instance exited');
    else this.#log.warn({ pid, code, signal, upMs }, 'instance exited');
    // Leftovers of the group would hold the old port or socket and outlive their instance.
    if (!this.#ended) this.#group?.signal('SIGKILL');
    this.#exited(code, signal, upMs);
  }

  /** The process is gone (or never came): clean up, then restart with backoff unless stopping. */
  #exited(code: number | null, signal: string | null, upMs: number): void {
    const address = this.#address;
    this.#address = null;
    this.#pid = null;
    this.#group = null;
    this.#startedAt = 0;
    this.#lastExit = { code, signal, at: new Date().toISOString() };
    this.#run++;
    this.#clearProcessTimers();
    if (address?.kind === 'unix') void this.#ports.release(address.path).catch(() => {});
    if (this.#bound !== null) void this.#ports.release(this.#bound).catch(() => {});
    this.#bound = null;
    const killed = this.#killReason;
    this.#killReason = null;
    if (this.#ended) return; // stop() is waiting for the group and sets the state
    const delay = this.#backoff.failure(Date.now(), upMs);
    const reason = killed?.reason ?? 'exit';
    this.#lastRestartReason = reason;
    const detail = killed?.detail ?? (signal !== null ? `exited: killed by ${signal}` : code !== null ? `exited with code ${code}` : 'could not start');
    this.#onRestart?.({ app: this.app, process: this.process, index: this.index, releaseId: this.releaseId, reason, detail, delayMs: delay });
    if (delay === null) {
      this.#log.error({ restarts: this.#restarts, failures: this.#backoff.recentFailures }, 'instance crashed: not restarting');
      this.#transition('crashed');
      return;
    }
    this.#transition('backoff');
    this.#log.info({ delayMs: delay, failures: this.#backoff.recentFailures }, 'instance restart scheduled');
    this.#restartTimer = setTimeout(() => this.#restart(), delay);
  }

  #restart(): void {
    this.#restartTimer = null;
    if (this.#ended) return;
    this.#restarts++;
    if (instanceChannel.hasSubscribers) instanceChannel.publish({ instance: this, event: 'restart' } satisfies InstanceEvent);
    this.#launch();
  }

  async #stop(): Promise<void> {
    this.#ended = true;
    this.#run++;
    this.#clearTimers();
    const group = this.#group;
    if (this.#child === null || group === null) {
      this.#transition('stopped');
      await this.#cleanup();
      return;
    }
    this.#transition('stopping');
    const pid = this.#pid;
    group.signal('SIGTERM');
    if (!(await this.#waitGone(group, this.config.timeouts.stopMs))) {
      this.#log.warn({ pid, stopMs: this.config.timeouts.stopMs }, 'instance did not stop in time: killing its process group');
      group.signal('SIGKILL');
      if (!(await this.#waitGone(group, KILL_WAIT_MS))) {
        this.#log.error({ pid, pgid: group.pgid }, 'process group still running after SIGKILL');
      }
    }
    this.#transition('stopped');
    await this.#cleanup();
  }

  /** Polls until the leader has exited and no member of its group runs; false after `ms`. */
  async #waitGone(group: ProcessGroup, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    for (;;) {
      if (this.#child === null && !(await group.running())) return true;
      if (Date.now() >= deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, GONE_POLL_MS));
    }
  }

  async #cleanup(): Promise<void> {
    if (this.heartbeatFile !== null) await rm(this.heartbeatFile, { force: true }).catch(() => {});
  }

  #clearProcessTimers(): void {
    if (this.#readyTimer) clearTimeout(this.#readyTimer);
    if (this.#startupTimer) clearTimeout(this.#startupTimer);
    if (this.#killTimer) clearTimeout(this.#killTimer);
    this.#readyTimer = this.#startupTimer = this.#killTimer = null;
    this.#health?.stop();
    this.#heartbeat?.stop();
  }

  #clearTimers(): void {
    this.#clearProcessTimers();
    if (this.#restartTimer) clearTimeout(this.#restartTimer);
    this.#restartTimer = null;
  }
}

function describe(a: UpstreamAddress): string {
  return a.kind === 'tcp' ? `${a.host}:${a.port}` : `unix:${a.path}`;
}
