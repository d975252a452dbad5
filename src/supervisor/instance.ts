import { channel } from 'node:diagnostics_channel';
import { constants } from 'node:fs';
import { chmod, mkdir, open, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Readable } from 'node:stream';
import type { AppConfig, ProcessConfig } from '../config/schema.ts';
import { within } from '../lib/deadline.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import { gatewayUser, type AppUser } from './app-user.ts';
import { Backoff, type RestartTiming } from './backoff.ts';
import { Child, type ChildExit, type ProcessHook } from './child.ts';
import { Health } from './health.ts';
import { Heartbeat } from './heartbeat.ts';
import type { LogWriter } from '../lib/log-writer.ts';
import { OutputTail } from './output-tail.ts';
import type { Ports } from './ports.ts';
import { probe } from './probe.ts';
import { I_ADDRESS, I_STATE, I_WATCHED, SlotCounted, STATE_CODES, type SharedCells } from '../lib/shared-cells.ts';
import type { InstanceHandover, InstanceSnapshot, InstanceState, RestartHook, RestartReason, Upstream, UpstreamAddress } from './types.ts';

/** Lines of output kept in memory per instance, for error messages. */
export const LOG_TAIL_LINES = 20;
/** Pause between readiness probes of a starting instance. */
export const READY_POLL_MS = 100;

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

export type { InstanceHandover, InstanceSnapshot, RestartHook, RestartInfo, RestartReason } from './types.ts';

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
  /** The whole environment (app-env.ts) but the per-start address (PORT or BERTH_SOCKET). */
  env: Record<string, string>;
  /** Who the process runs as (app-user.ts); default: the gateway's own user. */
  user?: AppUser | null;
  /** Non-http types: the heartbeat file (created empty at each start). */
  heartbeatFile: string | null;
  ports: Ports;
  /** Where its counters live, shared with the proxy's threads (one per gateway). */
  cells: SharedCells;
  logWriter: LogWriter;
  timing?: Partial<RestartTiming>;
  logger: Logger;
  listener?: InstanceListener | null;
  /** Told when a process group starts and when its leader exits (the gateway records them in the store). */
  onProcess?: ProcessHook | null;
  /** Told when the process ended without a stop() and why (the gateway records it in the audit log). */
  onRestart?: RestartHook | null;
}

export type { ProcessHook };

/**
 * One OS process of one process type of one release, and the slot it fills: when the process exits it
 * is restarted (with backoff) in the same Instance, with a new pid and a new address. The process is a
 * Child (child.ts): `/bin/sh -c <command>` in a process group of its own, in the release's real path.
 *
 * States: stopped (new) -> starting -> ready -> (unhealthy) ; an unexpected exit -> backoff -> starting
 * ... or -> crashed when the failure budget is spent ; stop() -> stopping -> stopped.
 */
export class Instance extends SlotCounted implements Upstream {
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
  #freed = false;

  #env: Record<string, string>;
  #user: AppUser;
  #ports: Ports;
  #writer: LogWriter;
  #log: Logger;
  #listener: InstanceListener | null;
  #onProcess: ProcessHook | null;
  #onRestart: RestartHook | null;
  #backoff: Backoff;
  #health: Health | null = null;
  #heartbeat: Heartbeat | null = null;

  /** The running process, from its spawn to its leader's exit. */
  #child: Child | null = null;
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
  #tail = new OutputTail({ lines: LOG_TAIL_LINES });
  /** Output of the processes this slot ran that is not read to its end yet (see outputEnded). */
  #reading = new Set<Promise<void>>();
  /** An upgrade is handing the instance over: an exit waits here instead of restarting (freeze/thaw). */
  #frozen = false;
  #deferredRestart: number | null = null;

  constructor(opts: InstanceOptions) {
    // Its cells (lib/shared-cells.ts): state, requests and WebSockets in flight and requests served, as
    // every proxy thread sees and counts them; `slot` names them in the snapshots worker threads get.
    super(opts.cells, opts.cells.allocInstance());
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
    this.#ports = opts.ports;
    this.#writer = opts.logWriter;
    this.#log = opts.logger;
    this.#listener = opts.listener ?? null;
    this.#onProcess = opts.onProcess ?? null;
    this.#onRestart = opts.onRestart ?? null;
    this.#backoff = new Backoff(opts.timing);
    opts.cells.owners.set(this.slot, this);
    if (this.http && opts.app.health.path !== null) {
      this.#health = new Health(this, opts.app.health, opts.logger, this.#unhealthy.bind(this));
    }
    if (!this.http && opts.heartbeatFile !== null && opts.process.heartbeatTimeoutMs !== null) {
      this.#heartbeat = new Heartbeat(opts.heartbeatFile, opts.process.heartbeatTimeoutMs, this.#heartbeatMissed.bind(this));
    }
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

  /** Bumped whenever the address changes: a worker thread whose snapshot has an older one does not use it. */
  get addressGeneration(): number {
    return Atomics.load(this.cells.i32, this.cells.instance(this.slot) + I_ADDRESS);
  }

  get pid(): number | null {
    return this.#child?.pid ?? null;
  }

  get restarts(): number {
    return this.#restarts;
  }

  get lastExit(): InstanceSnapshot['lastExit'] {
    return this.#lastExit;
  }

  /** A request in flight on it (in any proxy thread) started less than `health.busy_grace` ago. */
  get busy(): boolean {
    const oldest = this.oldestStart();
    return oldest !== 0 && Date.now() - oldest <= this.config.health.busyGraceMs;
  }

  /** Nothing is in flight on it any more (this thread's last request ended, or a worker thread said so). */
  idle(): void {
    if (this.#listener !== null) this.#listener.instanceIdle(this);
  }

  /** A drain waits for it to go idle: worker threads say when their last request on it ends. */
  watchIdle(): void {
    Atomics.store(this.cells.i32, this.cells.instance(this.slot) + I_WATCHED, 1);
  }

  /** The last lines of output (stdout and stderr, as written to the log file), oldest first. */
  logTail(): string[] {
    return this.#tail.lines();
  }

  /**
   * Resolves once the output of the processes that ran is read to its end (their pipes closed), or
   * after `maxWaitMs`. 'exit' can come before the last lines are read, and a failure that quotes the
   * log tail must not miss the lines that say why.
   */
  async outputEnded(maxWaitMs: number): Promise<void> {
    if (this.#reading.size > 0) await within(Promise.all(this.#reading), maxWaitMs);
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
    if (this.#child !== null && this.#child.pid !== null) {
      this.#log.warn({ pid: this.#child.pid, err: err ? errorMessage(err) : undefined }, 'instance killed');
      this.#child.kill();
    }
    this.#address = null;
    if (this.#state !== 'stopped') this.#transition('stopped');
    this.#free();
    this.#stopping ??= Promise.resolve();
  }

  // ---- upgrade: the old gateway hands the process over, the new one adopts it -------------------

  /**
   * The old gateway's side: what the next one needs to adopt the running process, and its output pipes,
   * which stop being read here (the next gateway reads them from now on; release() writes out what was
   * read already, thaw() resumes reading when the upgrade fails). Null when no process runs. Freezes the
   * instance: an exit from now on restarts nothing until thaw().
   */
  handOver(): { info: InstanceHandover; stdout: Readable; stderr: Readable } | null {
    const child = this.#child;
    this.#frozen = true;
    if (this.#ended || child === null || child.pid === null || this.#startedAt === 0) return null;
    child.output.stdout.pause();
    child.output.stderr.pause();
    const info: InstanceHandover = {
      process: this.process,
      index: this.index,
      pid: child.pid,
      state: this.#state,
      address: this.#address,
      bound: this.#bound,
      startedAt: this.#startedAt,
      restarts: this.#restarts,
      lastExit: this.#lastExit,
      lastRestartReason: this.#lastRestartReason,
    };
    return { info, ...child.output };
  }

  /** The upgrade failed: this gateway keeps the instance; reading and restarts resume. */
  thaw(): void {
    if (!this.#frozen) return;
    this.#frozen = false;
    this.#child?.output.stdout.resume();
    this.#child?.output.stderr.resume();
    const delay = this.#deferredRestart;
    this.#deferredRestart = null;
    if (delay !== null && !this.#ended) this.#restartTimer = setTimeout(() => this.#restart(), delay);
  }

  /**
   * The upgrade is done: the next gateway owns the process now. Nothing here signals, probes or
   * restarts it again; the output already read here is written out, and this gateway's ends of the
   * pipes are closed. Its address and state stay, so the requests this gateway still drains reach it.
   */
  release(): void {
    this.#ended = true;
    this.#run++;
    this.#clearTimers();
    const child = this.#child;
    this.#child = null;
    if (child !== null) {
      for (const stream of [child.output.stdout, child.output.stderr]) {
        // read() hands every buffered chunk to the 'data' listener (the line splitter) before the close.
        while (stream.read() !== null);
        stream.destroy();
      }
    }
    this.#stopping ??= Promise.resolve();
  }

  /**
   * The new gateway's side: takes over the process another gateway handed over, where it runs, with no
   * restart. A ready one is ready at once; one still starting is probed as a start would be. Its exit is
   * seen by watching its pid (child.ts): its code is not known, and it restarts as any exit does.
   */
  adopt(h: InstanceHandover, pipes: { stdout: Readable; stderr: Readable }): void {
    if (this.#ended || this.#run !== 0) return;
    const run = ++this.#run;
    this.#restarts = h.restarts;
    this.#lastExit = h.lastExit;
    this.#lastRestartReason = h.lastRestartReason;
    const child = new Child({
      adopt: { pid: h.pid, ...pipes },
      onLine: (kind, line) => this.#line(kind, line),
      logger: this.#log,
      onProcess: this.#onProcess,
      owner: { app: this.app, process: this.process, index: this.index, releaseId: this.releaseId },
    });
    this.#child = child;
    const closed = child.closed;
    this.#reading.add(closed);
    void closed.then(() => this.#reading.delete(closed));
    void child.exited.then((exit) => this.#onExit(child, exit));
    this.#startedAt = h.startedAt;
    this.#bound = h.bound;
    this.#setAddress(h.address);
    this.#log.info({ pid: h.pid, address: h.address === null ? undefined : describe(h.address), was: h.state }, 'instance adopted');
    if (h.state === 'ready' || h.address === null) {
      this.#ready();
      return;
    }
    this.#transition('starting');
    this.#startupTimer = setTimeout(() => this.#startupTimedOut(run), this.config.health.startupTimeoutMs);
    this.#pollReady(run);
  }

  snapshot(): InstanceSnapshot {
    const a = this.#address;
    return {
      process: this.process,
      index: this.index,
      http: this.http,
      pid: this.pid,
      state: this.#state,
      address: a === null ? null : describe(a),
      inFlight: this.inFlight,
      served: this.served,
      busy: this.busy,
      rssBytes: this.#child?.group?.rssBytes() ?? null,
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
    Atomics.store(this.cells.i32, this.cells.instance(this.slot) + I_STATE, STATE_CODES.indexOf(next));
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
    let child: Child;
    try {
      child = new Child({
        command: this.processConfig.command,
        cwd: this.releaseDir,
        env,
        user: this.#user,
        onLine: (kind, line) => this.#line(kind, line),
        logger: this.#log,
        onProcess: this.#onProcess,
        owner: { app: this.app, process: this.process, index: this.index, releaseId: this.releaseId },
      });
    } catch (err) {
      this.#cannotStart(err);
      return;
    }
    this.#child = child;
    const closed = child.closed;
    this.#reading.add(closed);
    void closed.then(() => this.#reading.delete(closed));
    void child.exited.then((exit) => this.#onExit(child, exit));
    if (child.pid === null) return; // spawn failed; `exited` tells why
    this.#startedAt = Date.now();
    this.#setAddress(address);
    this.#log.info({ pid: child.pid, address: address === null ? undefined : describe(address) }, 'instance spawned');
    if (address !== null) {
      this.#startupTimer = setTimeout(() => this.#startupTimedOut(run), this.config.health.startupTimeoutMs);
      this.#pollReady(run);
    } else {
      // A background worker has nothing to answer: it is up once its command runs.
      void child.spawned.then(() => {
        if (run === this.#run && this.#state === 'starting') this.#ready();
      });
    }
  }

  /** The process could not be started: said in the log and the tail (so a deploy that fails on it says why). */
  #cannotStart(err: unknown): void {
    this.#log.error({ err: errorMessage(err), command: this.processConfig.command, cwd: this.releaseDir }, 'instance cannot start');
    this.#line('berth', `cannot start: ${errorMessage(err)} (cwd ${this.releaseDir})`);
    this.#exited(null, null, 0);
  }

  /** One line of output to the log file and the tail; `berth` marks lines about the process, not from it. */
  #line(kind: 'out' | 'err' | 'berth', text: string): void {
    const line = `${new Date().toISOString()} ${this.label} ${this.releaseId} ${kind} ${text}`;
    this.#writer.write(line + '\n');
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
          this.#setAddress({ kind: 'unix', path: pinned });
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
    this.#log.warn({ pid: this.pid, startupTimeoutMs: this.config.health.startupTimeoutMs }, 'instance not ready in time: killing it');
    this.#killReason = { reason: 'startup-timeout', detail: `startup-timeout: not ready within ${Math.round(this.config.health.startupTimeoutMs / 1000)}s` };
    this.#child?.kill();
  }

  #unhealthy(failures: number): void {
    if (this.#state !== 'ready') return;
    this.#log.warn({ failures, pid: this.pid }, 'instance unhealthy');
    if (instanceChannel.hasSubscribers) instanceChannel.publish({ instance: this, event: 'unhealthy' } satisfies InstanceEvent);
    this.#transition('unhealthy');
    this.#listener?.instanceUnhealthy(this);
  }

  #heartbeatMissed(silentMs: number): void {
    const child = this.#child;
    if (this.#ended || child === null || child.pid === null) return;
    this.#log.warn({ pid: child.pid, silentMs, heartbeatTimeoutMs: this.processConfig.heartbeatTimeoutMs }, 'heartbeat missed: restarting instance');
    this.#killReason = { reason: 'heartbeat', detail: `heartbeat: silent for ${Math.round(silentMs / 1000)}s` };
    this.#line('berth', `heartbeat missed: silent for ${Math.round(silentMs / 1000)}s, restarting`);
    void child.stop(this.config.timeouts.stopMs);
  }

  #onExit(child: Child, { code, signal, error, unknown }: ChildExit): void {
    if (child !== this.#child) return;
    if (unknown === true) this.#killReason ??= { reason: 'exit', detail: 'exited (its exit status is not known: it was adopted at an upgrade)' };
    if (error !== null) {
      this.#child = null;
      this.#cannotStart(error);
      return;
    }
    const upMs = this.#startedAt === 0 ? 0 : Date.now() - this.#startedAt;
    const pid = child.pid;
    if (this.#ended) this.#log.info({ pid, code, signal, upMs }, 'instance exited');
    else this.#log.warn({ pid, code, signal, upMs }, 'instance exited');
    // Leftovers of the group would hold the old port or socket and outlive their instance.
    if (!this.#ended) child.kill();
    this.#exited(code, signal, upMs);
  }

  /** The process is gone (or never came): clean up, then restart with backoff unless stopping. */
  #exited(code: number | null, signal: string | null, upMs: number): void {
    const address = this.#address;
    this.#address = null;
    this.#child = null;
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
    if (this.#frozen) {
      // An upgrade is handing the instance over: the gateway that ends up with it restarts it.
      this.#deferredRestart = delay;
      return;
    }
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
    const child = this.#child;
    if (child !== null && child.pid !== null) {
      this.#transition('stopping');
      const outcome = await child.stop(this.config.timeouts.stopMs);
      if (outcome === 'killed') this.#log.warn({ pid: child.pid, stopMs: this.config.timeouts.stopMs }, 'instance did not stop in time: its process group was killed');
      else if (outcome === 'stuck') this.#log.error({ pid: child.pid, pgid: child.pid }, 'process group still running after SIGKILL');
    }
    this.#transition('stopped');
    this.#free();
    if (this.heartbeatFile !== null) await rm(this.heartbeatFile, { force: true }).catch(() => {});
  }

  #setAddress(address: UpstreamAddress | null): void {
    this.#address = address;
    Atomics.add(this.cells.i32, this.cells.instance(this.slot) + I_ADDRESS, 1);
  }

  /** Its cells go back to rest (requests cut by the stop may still end: they count into the resting slot). */
  #free(): void {
    if (this.#freed) return;
    this.#freed = true;
    this.cells.owners.delete(this.slot);
    this.cells.freeInstance(this.slot);
  }

  #clearProcessTimers(): void {
    if (this.#readyTimer) clearTimeout(this.#readyTimer);
    if (this.#startupTimer) clearTimeout(this.#startupTimer);
    this.#readyTimer = this.#startupTimer = null;
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
