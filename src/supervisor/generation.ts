import type { AppConfig, ProcessConfig } from '../config/schema.ts';
import { within } from '../lib/deadline.ts';
import { BerthError, ErrorCodes, type ErrorCode } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import { formatDuration } from '../lib/durations.ts';
import type { Readable } from 'node:stream';
import type { Instance, InstanceHandover, InstanceListener, InstanceSnapshot } from './instance.ts';
import { Pool } from './pool.ts';
import type { GenerationState, GenerationView } from './types.ts';

/** Lines of output a startup failure carries: the newest, merged by time across its instances. */
export const FAILURE_TAIL_LINES = 20;
/** After an exit, how long a startup failure waits for the rest of the process's output to be read. */
const OUTPUT_WAIT_MS = 1_000;

export interface GenerationSnapshot {
  id: string;
  releaseId: string;
  state: GenerationState;
  inFlight: number;
  instances: InstanceSnapshot[];
}

/** A running instance handed over at an upgrade, with its output pipes (Instance#handOver). */
export interface HandedInstance {
  info: InstanceHandover;
  stdout: Readable;
  stderr: Readable;
}

/** Makes the instances of a generation: the supervisor, which owns ports, log files and timings. */
export interface InstanceFactory {
  createInstance(gen: Generation, proc: ProcessConfig, index: number): Instance;
}

export interface GenerationOptions {
  /** `${app}#${n}` */
  id: string;
  app: AppConfig;
  releaseId: string;
  /** The release's real path. */
  releaseDir: string;
  processes: Record<string, ProcessConfig>;
  factory: InstanceFactory;
  logger: Logger;
  /**
   * An instance that exits before the generation is ready fails `waitReady` at once, instead of
   * restarting with backoff until startup_timeout: what a deploy waiting on wait_healthy wants. Off for
   * an app's first boot, whose instances keep restarting while it serves what it can.
   */
  failOnExit?: boolean;
}

/**
 * All the instances that one deploy or reload started for one app, with the pools the proxy routes to.
 * It starts them all at once, knows when they are all up (`waitReady`), and replaces an instance that
 * turned unhealthy: the new one starts first and takes the old one's place only once it is ready; the
 * old one is then drained and stopped.
 */
export class Generation implements GenerationView, InstanceListener {
  readonly id: string;
  readonly app: string;
  readonly releaseId: string;
  readonly releaseDir: string;
  readonly config: AppConfig;
  readonly pools: ReadonlyMap<string, Pool>;

  #state: GenerationState = 'starting';
  #processes: Readonly<Record<string, ProcessConfig>>;
  #instances: readonly Instance[] = [];
  #factory: InstanceFactory;
  #log: Logger;
  /** Replacement being started -> the unhealthy instance it will replace. */
  #replacing = new Map<Instance, Instance>();
  /** Instances no longer in `instances` that are still draining or stopping: old -> drain deadline timer. */
  #retiring = new Map<Instance, NodeJS.Timeout | null>();
  #ready: Promise<void>;
  #resolveReady!: () => void;
  #rejectReady!: (err: Error) => void;
  #settled = false;
  #startupTimer: NodeJS.Timeout | null = null;
  #stopping: Promise<void> | null = null;
  #failOnExit: boolean;
  /** An exit failed the startup; the failure waits for the exited processes' last output. */
  #failing = false;
  /** An upgrade is handing the generation over (handOver until thaw or release). */
  #frozen = false;
  /** whenIdle() callers waiting for `inFlight` to reach 0; null when nobody waits (the common case). */
  #idleWaiters: (() => void)[] | null = null;
  /** whenUp() callers: each looks again at every instance change until its instances are up or failed. */
  #upWaiters = new Set<() => void>();

  constructor(opts: GenerationOptions) {
    this.id = opts.id;
    this.app = opts.app.name;
    this.releaseId = opts.releaseId;
    this.releaseDir = opts.releaseDir;
    this.config = opts.app;
    this.#processes = opts.processes;
    this.#factory = opts.factory;
    this.#log = opts.logger;
    this.#failOnExit = opts.failOnExit === true;
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    // Nobody may ever wait (a generation stopped at once); that is no unhandled rejection.
    this.#ready.catch(() => {});
    const pools = new Map<string, Pool>();
    for (const proc of Object.values(opts.processes)) if (proc.http) pools.set(proc.name, new Pool(proc.name, proc.concurrency));
    this.pools = pools;
  }

  get state(): GenerationState {
    return this.#state;
  }

  /** Its process types, with the instance counts it runs now (`scale` changes them; copy on write). */
  get processes(): Readonly<Record<string, ProcessConfig>> {
    return this.#processes;
  }

  /** Every instance of every process type, http or not. Copy on write: a replacement swaps the array. */
  get instances(): readonly Instance[] {
    return this.#instances;
  }

  /**
   * Requests and WebSockets in flight on its instances, including ones being replaced that still drain.
   * WebSockets hold no request slot, but a deploy's drain must still wait for them (then close them).
   */
  get inFlight(): number {
    let n = 0;
    for (const inst of this.#instances) n += inst.inFlight + inst.tunnels;
    for (const inst of this.#retiring.keys()) n += inst.inFlight + inst.tunnels;
    return n;
  }

  /**
   * Resolves once nothing is in flight on the generation (see `inFlight`): at once when that is so
   * now, else when its last request or WebSocket ends. A drain races it against its deadline, so it
   * never rejects; a caller that gives up simply stops waiting.
   */
  whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    // Proxy worker threads say when their last request on a watched instance ends.
    for (const inst of this.#instances) inst.watchIdle();
    for (const inst of this.#retiring.keys()) inst.watchIdle();
    return new Promise((resolve) => (this.#idleWaiters ??= []).push(resolve));
  }

  /**
   * whenIdle() raced against a deadline of `deadlineMs`: resolves with what is still in flight then
   * (0 when it went idle in time). What a drain awaits.
   */
  async idleWithin(deadlineMs: number): Promise<number> {
    if (this.inFlight > 0) await within(this.whenIdle(), deadlineMs);
    return this.inFlight;
  }

  /**
   * Creates and starts every instance (types with `instances: 0` get none) and the startup deadline.
   * Called once, by the supervisor. At an upgrade, `adopted` holds the processes the old gateway handed
   * over, by `<process>.<index>`: those are adopted where they run, the others start.
   */
  start(adopted?: ReadonlyMap<string, HandedInstance>): void {
    if (this.#instances.length > 0 || this.#state !== 'starting') return;
    const all: Instance[] = [];
    for (const proc of Object.values(this.#processes)) {
      const list: Instance[] = [];
      for (let i = 0; i < proc.instances; i++) list.push(this.#factory.createInstance(this, proc, i));
      this.pools.get(proc.name)?.setInstances(list);
      all.push(...list);
    }
    this.#instances = all;
    const timeoutMs = this.config.health.startupTimeoutMs;
    this.#startupTimer = setTimeout(() => this.#startupTimedOut(timeoutMs), timeoutMs);
    for (const inst of all) {
      const handed = adopted?.get(inst.label);
      if (handed) inst.adopt(handed.info, handed);
      else inst.start();
    }
    this.#checkStartup();
  }

  // ---- upgrade: the old gateway's side (the new one's is start(adopted)) ------------------------

  /**
   * Every running instance, for the next gateway to adopt. The generation is frozen until thaw() or
   * release(): no instance restarts, and none is replaced for being unhealthy.
   */
  handOver(): HandedInstance[] {
    this.#frozen = true;
    const out: HandedInstance[] = [];
    for (const inst of this.#instances) {
      const handed = inst.handOver();
      if (handed) out.push(handed);
    }
    return out;
  }

  /** The upgrade failed: everything goes on here. */
  thaw(): void {
    this.#frozen = false;
    for (const inst of this.#instances) inst.thaw();
  }

  /**
   * The upgrade is done: the next gateway owns the instances in the pools. A later stop() or destroy()
   * leaves them alone; it still ends what this gateway keeps: a replacement it was starting, and
   * instances out of the pools that finish their drain here.
   */
  release(): void {
    this.#settle(new BerthError(ErrorCodes.unavailable, `generation ${this.id} was handed over to the next gateway`));
    for (const inst of this.#instances) inst.release();
  }

  /**
   * Resolves when every instance is up: http types ready, background types running. Rejects with
   * BERTH_E_STARTUP_TIMEOUT after `health.startup_timeout`, or BERTH_E_SPAWN as soon as an instance has
   * crashed for good (with `failOnExit`: as soon as one exits); the message names the instances that are
   * not up, with their exit, and carries the last FAILURE_TAIL_LINES lines of their output merged by time
   * (also in `details.logTail`). Rejects with BERTH_E_UNAVAILABLE when stopped before it got ready.
   */
  waitReady(): Promise<void> {
    return this.#ready;
  }

  /**
   * Runs `count` instances of process type `process` from now on (`berth scale`), touching no other
   * instance. More: the new ones (the next indexes) start at once and join the pool as they get ready,
   * as a boot's do. Fewer: the highest indexes leave the pool at once, so they get no new request; each
   * one's requests and WebSockets in flight may finish, up to `timeouts.drain`, then it is stopped
   * (SIGTERM, SIGKILL after `timeouts.stop`), as an instance replaced for its health is. Returns the
   * instances started and those retired. Throws BERTH_E_NOT_FOUND for a type it does not run, and
   * BERTH_E_UNAVAILABLE once it is stopping.
   */
  scale(process: string, count: number): { added: Instance[]; removed: Instance[] } {
    if (this.#stopping !== null || this.#state === 'stopping' || this.#state === 'stopped') throw new BerthError(ErrorCodes.unavailable, `generation ${this.id} is ${this.#state}: not scaling it`);
    if (this.#frozen) throw new BerthError(ErrorCodes.conflict, `generation ${this.id} is being handed over to the next gateway: not scaling it`);
    if (!Object.hasOwn(this.#processes, process)) throw new BerthError(ErrorCodes.notFound, `generation ${this.id} runs no process type "${process}"`);
    const proc = { ...this.#processes[process], instances: count };
    const mine = this.#instances.filter((i) => i.process === process);
    const added: Instance[] = [];
    for (let index = mine.length; index < count; index++) added.push(this.#factory.createInstance(this, proc, index));
    const removed = mine.filter((i) => i.index >= count);
    this.#processes = { ...this.#processes, [process]: proc };
    this.#instances = [...this.#instances.filter((i) => !removed.includes(i)), ...added];
    const pool = this.pools.get(process);
    if (pool) pool.setInstances([...pool.instances.filter((u) => !removed.includes(u as Instance)), ...added]);
    for (const inst of added) {
      // A background instance of this index still stopping (scaled down a moment ago) owns the heartbeat
      // file the new one will use, and removes it once stopped: the new one starts after that.
      const before = [...this.#retiring.keys()].find((r) => r.heartbeatFile !== null && r.heartbeatFile === inst.heartbeatFile);
      if (before === undefined) inst.start();
      else void before.stop().then(() => this.#stopping === null && this.#instances.includes(inst) && inst.start());
    }
    for (const old of removed) {
      // A replacement being started for a removed instance goes too: its slot is no more.
      for (const [fresh, was] of this.#replacing) {
        if (was !== old) continue;
        this.#replacing.delete(fresh);
        void fresh.stop();
      }
      this.#retireAfterDrain(old);
    }
    if (added.length > 0 || removed.length > 0) this.#log.info({ process, instances: count, added: added.map((i) => i.label), removed: removed.map((i) => i.label) }, 'generation scaled');
    if (!this.#settled) this.#checkStartup();
    this.#checkUpWaiters();
    return { added, removed };
  }

  /**
   * Resolves once every one of `instances` (of this generation) is ready. Rejects with BERTH_E_SPAWN as
   * soon as one exited before it was ready (it goes on restarting with backoff) or crashed for good,
   * BERTH_E_STARTUP_TIMEOUT when one is not ready after `timeoutMs`, and BERTH_E_UNAVAILABLE when one is
   * stopped first; the message names them and carries the last lines of their output, as waitReady's does.
   */
  whenUp(instances: readonly Instance[], timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      const end = (err: BerthError | null) => {
        this.#upWaiters.delete(look);
        if (timer) clearTimeout(timer);
        if (err === null) resolve();
        else reject(err);
      };
      const look = () => {
        // Stopped: taken out (scaled down again) or the generation stopped; one not started yet is stopped too.
        const ended = this.#stopping !== null || this.#state === 'stopping' || this.#state === 'stopped';
        const gone = instances.filter((i) => i.state === 'stopping' || (i.state === 'stopped' && (ended || !this.#instances.includes(i))));
        const failed = instances.filter((i) => i.state === 'backoff' || i.state === 'crashed');
        if (gone.length > 0) end(this.#failure(ErrorCodes.unavailable, `${list(gone)} stopped before ${gone.length === 1 ? 'it was' : 'they were'} ready`, gone));
        else if (failed.length > 0) {
          this.#upWaiters.delete(look);
          // The exit can come before its last lines are read: they say why.
          void Promise.all(failed.map((i) => i.outputEnded(OUTPUT_WAIT_MS))).then(() => {
            end(this.#failure(ErrorCodes.spawn, `${failed.map((i) => `${i.label} ${describeExit(i)}`).join(', ')} before it was ready`, failed));
          });
        } else if (instances.every((i) => i.state === 'ready')) end(null);
      };
      this.#upWaiters.add(look);
      timer = setTimeout(() => {
        const late = instances.filter((i) => i.state !== 'ready');
        end(this.#failure(ErrorCodes.startup, `not ready after ${formatDuration(timeoutMs)}: ${late.map((i) => `${i.label} (${i.state})`).join(', ')}`, late));
      }, timeoutMs);
      look();
    });
  }

  /**
   * Graceful stop of every instance (and of replacements and drained-out ones): SIGTERM, SIGKILL after
   * `timeouts.stop`; resolves when no process of the generation is left. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  /** SIGKILLs every process group of the generation, synchronously. */
  destroy(err?: Error): void {
    this.#settle(new BerthError(ErrorCodes.unavailable, `generation ${this.id} was destroyed before it was ready`, { cause: err }));
    this.#clearTimers();
    for (const inst of this.#everyInstance()) inst.destroy(err);
    if (this.#state !== 'stopped') this.#transition('stopped');
    this.#stopping ??= Promise.resolve();
    this.#checkUpWaiters();
  }

  snapshot(): GenerationSnapshot {
    return {
      id: this.id,
      releaseId: this.releaseId,
      state: this.#state,
      inFlight: this.inFlight,
      instances: this.#instances.map((i) => i.snapshot()),
    };
  }

  // ---- InstanceListener ------------------------------------------------------------------------

  instanceChanged(inst: Instance): void {
    const old = this.#replacing.get(inst);
    // A replacement that gave up for good takes the slot anyway, so status shows the slot as crashed.
    if (old !== undefined && (inst.state === 'ready' || inst.state === 'crashed')) this.#swap(old, inst);
    if (!this.#settled) this.#checkStartup();
    if (this.#upWaiters.size > 0) this.#checkUpWaiters();
  }

  instanceUnhealthy(inst: Instance): void {
    if (this.#frozen || this.#stopping !== null || !this.#instances.includes(inst)) return;
    for (const old of this.#replacing.values()) if (old === inst) return;
    const proc = this.processes[inst.process];
    this.#log.warn({ instance: inst.label, pid: inst.pid }, 'replacing unhealthy instance');
    const fresh = this.#factory.createInstance(this, proc, inst.index);
    this.#replacing.set(fresh, inst);
    fresh.start();
  }

  instanceIdle(inst: Instance): void {
    if (this.#retiring.size > 0 && this.#retiring.has(inst)) this.#retire(inst);
    this.#checkIdle();
  }

  // ---- internals -------------------------------------------------------------------------------

  #checkUpWaiters(): void {
    for (const look of [...this.#upWaiters]) look();
  }

  /** Wakes whenIdle() callers once nothing is in flight. Called when an instance idles or leaves the count. */
  #checkIdle(): void {
    if (this.#idleWaiters === null || this.inFlight > 0) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = null;
    for (const fn of waiters) fn();
  }

  #transition(next: GenerationState): void {
    const was = this.#state;
    if (was === next) return;
    this.#state = next;
    this.#log.info({ state: next, was }, 'generation state');
  }

  #checkStartup(): void {
    if (this.#settled || this.#failing) return;
    let pending = 0;
    const crashed: Instance[] = [];
    const exited: Instance[] = [];
    for (const inst of this.#instances) {
      if (inst.state === 'crashed') crashed.push(inst);
      else if (inst.state === 'backoff' && this.#failOnExit) exited.push(inst);
      else if (inst.state !== 'ready') pending++;
    }
    if (exited.length > 0) {
      this.#failOnExits([...crashed, ...exited]);
    } else if (crashed.length > 0) {
      this.#settle(this.#failure(ErrorCodes.spawn, `generation ${this.id} failed to start: ${list(crashed)} crashed`, crashed));
    } else if (pending === 0) {
      this.#settle(null);
    }
  }

  /**
   * Instances exited before the generation was ready: it fails now, with no startup_timeout to wait
   * out. The message names each exit; the last lines of output are read first (the exit event can come
   * before them), up to OUTPUT_WAIT_MS. The instances stay in backoff until the deployer stops them.
   */
  #failOnExits(culprits: Instance[]): void {
    this.#failing = true;
    this.#log.warn({ instances: culprits.map((i) => i.label) }, 'instance exited before the generation was ready');
    void Promise.all(culprits.map((i) => i.outputEnded(OUTPUT_WAIT_MS))).then(() => {
      // Instances that exited meanwhile (all of them, for a release that cannot boot) are named too.
      const all = this.#instances.filter((i) => culprits.includes(i) || i.state === 'backoff' || i.state === 'crashed');
      const exits = all.map((i) => `${i.label} ${describeExit(i)}`).join(', ');
      this.#settle(this.#failure(ErrorCodes.spawn, `generation ${this.id} failed to start: ${exits} before it was ready`, all));
    });
  }

  #startupTimedOut(timeoutMs: number): void {
    this.#startupTimer = null;
    if (this.#settled) return;
    const late = this.#instances.filter((i) => i.state !== 'ready');
    const names = late.map((i) => `${i.label} (${i.state})`).join(', ');
    this.#settle(this.#failure(ErrorCodes.startup, `generation ${this.id} not ready after ${formatDuration(timeoutMs)}: ${names}`, late));
  }

  #failure(code: ErrorCode, headline: string, culprits: Instance[]): BerthError {
    const logTail = mergeTails(culprits.map((i) => i.logTail()), FAILURE_TAIL_LINES);
    const message = logTail.length > 0 ? `${headline}\n${logTail.join('\n')}` : `${headline} (no output)`;
    return new BerthError(code, message, {
      details: { generation: this.id, release: this.releaseId, instances: culprits.map((i) => i.label), logTail },
    });
  }

  /** Ends the startup phase once: null for ready, else the error waitReady rejects with. */
  #settle(err: BerthError | null): void {
    if (this.#settled) return;
    this.#settled = true;
    if (this.#startupTimer) clearTimeout(this.#startupTimer);
    this.#startupTimer = null;
    if (err === null) {
      this.#transition('ready');
      this.#resolveReady();
    } else {
      if (this.#state === 'starting') this.#transition('failed');
      this.#log.warn({ code: err.code, instances: err.details?.instances }, 'generation not ready');
      this.#rejectReady(err);
    }
  }

  /** The replacement is ready (or gave up): it takes the old instance's place; the old one retires. */
  #swap(old: Instance, fresh: Instance): void {
    this.#replacing.delete(fresh);
    const i = this.#instances.indexOf(old);
    if (i === -1 || this.#stopping !== null) return;
    const next = this.#instances.slice();
    next[i] = fresh;
    this.#instances = next;
    const pool = this.pools.get(old.process);
    if (pool) pool.setInstances(pool.instances.map((u) => (u === old ? fresh : u)));
    this.#log.info({ instance: fresh.label, pid: fresh.pid, was: old.pid, state: fresh.state }, 'instance replaced');
    this.#retireAfterDrain(old);
  }

  /** Out of the pool now, so it gets no new requests; the ones it holds may finish, up to timeouts.drain. */
  #retireAfterDrain(old: Instance): void {
    if (old.inFlight + old.tunnels === 0) {
      this.#retiring.set(old, null);
      this.#retire(old);
    } else {
      old.watchIdle();
      this.#retiring.set(old, setTimeout(() => this.#retire(old), this.config.timeouts.drainMs));
    }
  }

  #retire(old: Instance): void {
    const timer = this.#retiring.get(old);
    if (timer) clearTimeout(timer);
    this.#retiring.set(old, null);
    if (old.inFlight + old.tunnels > 0) this.#log.warn({ instance: old.label, pid: old.pid, inFlight: old.inFlight, websockets: old.tunnels }, 'drain timeout: stopping instance with requests in flight');
    old.stop().then(() => {
      this.#retiring.delete(old);
      // Requests cut by the stop may end later, or never through this generation: it no longer counts them.
      this.#checkIdle();
    });
  }

  async #stop(): Promise<void> {
    this.#settle(new BerthError(ErrorCodes.unavailable, `generation ${this.id} was stopped before it was ready`));
    this.#clearTimers();
    this.#transition('stopping');
    this.#checkUpWaiters();
    await Promise.all(this.#everyInstance().map((i) => i.stop()));
    this.#replacing.clear();
    this.#retiring.clear();
    this.#transition('stopped');
    this.#checkIdle();
  }

  #everyInstance(): Instance[] {
    return [...new Set([...this.#instances, ...this.#replacing.keys(), ...this.#retiring.keys()])];
  }

  #clearTimers(): void {
    if (this.#startupTimer) clearTimeout(this.#startupTimer);
    this.#startupTimer = null;
    for (const timer of this.#retiring.values()) if (timer) clearTimeout(timer);
  }
}

/** "exited with code 3", "was killed by SIGSEGV", "could not start". */
function describeExit(inst: Instance): string {
  const exit = inst.lastExit;
  if (exit === null || (exit.code === null && exit.signal === null)) return 'could not start';
  return exit.signal !== null ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
}

/**
 * The newest `max` lines of several instances' tails, in time order. Each line starts with its ISO
 * timestamp (Instance#line), which sorts as text; the sort is stable, so lines of one instance in the
 * same millisecond keep their order.
 */
export function mergeTails(tails: readonly (readonly string[])[], max: number): string[] {
  const all = tails.length === 1 ? tails[0].slice() : tails.flat().sort((a, b) => (a.slice(0, 24) < b.slice(0, 24) ? -1 : a.slice(0, 24) > b.slice(0, 24) ? 1 : 0));
  return all.slice(Math.max(0, all.length - max));
}

function list(instances: Instance[]): string {
  return instances.map((i) => i.label).join(', ');
}
