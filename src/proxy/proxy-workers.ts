/**
 * The front door on several threads (`proxy.workers: N | auto`): the main thread's proxy plus N - 1
 * worker threads (worker-thread.ts), each running the same Proxy on the same cleartext TCP listeners
 * (SO_REUSEPORT: the kernel spreads new connections over the threads).
 *
 * What they share and how:
 * - Counts, in the gateway's SharedCells: every instance's state and requests in flight, every pool's
 *   active requests and waiters. A request takes its slots with a compare-and-swap, so `concurrency` and
 *   the pool's limit (`db_connections`) hold across threads without a message on the request path.
 * - The routing table, as a snapshot posted to every worker whenever the table changes, and whenever a
 *   pool's members or an instance's address change (checked every SNAPSHOT_CHECK_MS); configs the same
 *   way. After posting, the main thread bumps a version cell; a worker compares it before each request
 *   and reads what was posted first if it is behind, so a mode switch or a deploy's switch applies to
 *   the very next request on every thread. Requests pin the generation of the table they arrived under.
 * - Drains: the supervisor waits on the shared counts; a worker tells the main thread when its last
 *   request on an instance a drain watches ends. At the drain deadline every thread closes the old
 *   generation's WebSockets with 1001.
 * - Metrics: each worker sends the requests and admission decisions it saw every STATS_MS; the main
 *   thread counts them as its own. Access and error logs: each worker sends its lines, and the main
 *   thread writes them to its own output, so lines never interleave.
 * - A worker that dies is started again (with backoff); what it held in the cells is given back, and the
 *   requests in flight on the other threads are untouched (its own connections are lost with it).
 *
 * TLS listeners are shared too. Each worker loads the certificate files itself (from the config, as the
 * main thread does, and again on every config reload and change on disk), gets every ACME certificate
 * the main thread serves and every TLS-ALPN-01 challenge it answers (as PEM, over the state port), asks
 * the main thread to decide on-demand names, and uses the main thread's session ticket keys, so a
 * session resumes on whichever thread a client reaches. Unix-socket listeners stay on the main thread.
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import type { BerthConfig, ListenAddress } from '../config/schema.ts';
import type { Logger, LoggerFactory } from '../lib/logger.ts';
import type { AcmeManager } from '../tls/acme/acme-manager.ts';
import type { FrontDoorTls } from '../tls/front-door.ts';
import { G_STATE_VERSION, type SharedCells } from '../lib/shared-cells.ts';
import type { Metrics } from '../metrics/metrics.ts';
import { everyInstance } from '../supervisor/app-health.ts';
import type { GenerationView, Upstream } from '../supervisor/types.ts';
import type { GenerationSnapshot, InstanceSnapshot, TableSnapshot } from './mirror.ts';
import type { RoutingTable } from './router.ts';
import type { Proxy } from './server.ts';
import type { FromWorker, StateMessage, ToWorker, WorkerData } from './worker-protocol.ts';
import type { PemPair } from '../tls/types.ts';

/** The thread's entry beside this file: the .ts source in a checkout, the .js build in an installed package (dist/). */
const ENTRY = new URL(import.meta.url.endsWith('.ts') ? './worker-thread.ts' : './worker-thread.js', import.meta.url);
/** How often pools and addresses are compared with the last snapshot (instance restarts, replacements). */
const SNAPSHOT_CHECK_MS = 50;
/** A worker that does not listen within this is given up on (and retried). */
const READY_TIMEOUT_MS = 30_000;
/** A stopping worker gets the drain deadline plus this before it is terminated. */
const STOP_GRACE_MS = 5_000;
const RESTART_MIN_MS = 500;
const RESTART_MAX_MS = 30_000;

/** An instance as the snapshot reads it: the supervisor's Instance has these. */
interface SlottedUpstream extends Upstream {
  readonly slot: number;
  readonly addressGeneration: number;
}

interface WorkerSlot {
  thread: number;
  worker: Worker | null;
  /** The main thread's end of its state channel (tables and configs). */
  state: MessagePort | null;
  ready: boolean;
  /** Consecutive failures, for the restart backoff. */
  failures: number;
  restartTimer: NodeJS.Timeout | null;
  stopped: Promise<void> | null;
}

export interface ProxyWorkersOptions {
  main: Proxy;
  config: BerthConfig;
  cells: SharedCells;
  logger: Logger;
  /** Where worker threads' log lines are written (the main thread's output). */
  logs: LoggerFactory;
  metrics: Metrics;
}

export class ProxyWorkers {
  #main: Proxy;
  #config: BerthConfig;
  #cells: SharedCells;
  #log: Logger;
  #logs: LoggerFactory;
  #metrics: Metrics;
  #slots: WorkerSlot[] = [];
  #listen: ListenAddress[] = [];
  #table: RoutingTable | null = null;
  /** What the last snapshot was made of: pool member lists and instance address generations. */
  #fingerprint = '';
  #check: NodeJS.Timeout | null = null;
  #stopping = false;
  /** The latest table snapshot sent, and the state version it went out with. */
  #snapshotSent: TableSnapshot | null = null;
  #version = 0;
  /** The pending ACME HTTP-01 answers, as last sent. */
  #challenges: [string, string][] = [];
  /** The main thread's TLS, whose listeners the workers share. */
  #tls: FrontDoorTls<AcmeManager> | null = null;
  #stopTicketKeys: (() => void) | null = null;
  /** ACME certificates served and TLS-ALPN-01 challenges pending, as last sent (a restarted worker starts with them). */
  #managed = new Map<string, PemPair>();
  #alpn = new Map<string, PemPair>();

  constructor(opts: ProxyWorkersOptions) {
    this.#main = opts.main;
    this.#config = opts.config;
    this.#cells = opts.cells;
    this.#log = opts.logger;
    this.#logs = opts.logs;
    this.#metrics = opts.metrics;
  }

  /** Worker threads besides the main thread. */
  get count(): number {
    return this.#slots.length;
  }

  /** Threads running now (the main thread's included). */
  get running(): number {
    return 1 + this.#slots.filter((s) => s.ready).length;
  }

  /**
   * Starts the worker threads once the main thread's proxy listens (its ports, 0 resolved, are the ones
   * they bind). Resolves when every one listens; one that fails is retried in the background.
   */
  async start(table: RoutingTable, tls: FrontDoorTls<AcmeManager> | null): Promise<void> {
    this.#table = table;
    const addresses = this.#main.addresses();
    this.#tls = tls;
    this.#listen = addresses.filter((a) => a.kind === 'tcp' && (!a.tls || this.#tls !== null));
    if (this.#tls !== null) {
      this.#stopTicketKeys = this.#tls.certificates.ticketKeys.onRotate((key) => {
        if (this.#slots.length > 0) this.#publish({ version: ++this.#version, type: 'ticket-key', key });
      });
    }
    const threads = this.#config.proxy.workers;
    this.#cells.threads = threads;
    if (this.#listen.length === 0) {
      this.#log.warn({ workers: threads }, 'proxy workers: no cleartext TCP listener to share; the main thread serves alone');
      return;
    }
    for (let thread = 1; thread < threads; thread++) this.#slots.push({ thread, worker: null, state: null, ready: false, failures: 0, restartTimer: null, stopped: null });
    await Promise.all(this.#slots.map((slot) => this.#spawn(slot)));
    this.#check = setInterval(() => this.#checkSnapshot(), SNAPSHOT_CHECK_MS);
    this.#check.unref();
    this.#log.info({ workers: threads, listen: this.#listen.map((a) => a.text) }, 'proxy workers running');
  }

  setTable(table: RoutingTable): void {
    this.#table = table;
    if (this.#slots.length === 0) return;
    const snapshot = this.#snapshot(table);
    this.#snapshotSent = snapshot;
    this.#publish({ version: ++this.#version, type: 'table', table: snapshot });
  }

  setConfig(config: BerthConfig): void {
    this.#config = config;
    if (this.#slots.length === 0) return;
    this.#publish({ version: ++this.#version, type: 'config', config, tables: { admissionSlots: this.#cells.admissionSlots(), rateBuckets: this.#cells.rateBucketTables() } });
  }

  /** The ACME manager's pending HTTP-01 answers changed: every thread answers the CA from the next request on. */
  setChallenges = (tokens: [string, string][]): void => {
    this.#challenges = tokens;
    if (this.#slots.length === 0) return;
    this.#publish({ version: ++this.#version, type: 'challenges', tokens });
  };

  /** The ACME manager serves a new certificate for `host` (null: none any more): every thread serves it. */
  setManaged = (host: string, pem: PemPair | null): void => {
    if (pem === null) this.#managed.delete(host);
    else this.#managed.set(host, pem);
    if (this.#slots.length === 0) return;
    this.#publish({ version: ++this.#version, type: 'managed', host, pem });
  };

  /** A TLS-ALPN-01 challenge certificate for `host` (null: its validation is over): every thread answers it. */
  setAlpnChallenge = (host: string, pem: PemPair | null): void => {
    if (pem === null) this.#alpn.delete(host);
    else this.#alpn.set(host, pem);
    if (this.#slots.length === 0) return;
    this.#publish({ version: ++this.#version, type: 'alpn', host, pem });
  };

  /** To every worker's state port, then the version cell: a worker that sees the cell finds the message. */
  #publish(msg: StateMessage): void {
    for (const slot of this.#slots) {
      try {
        slot.state?.postMessage(msg);
      } catch (err) {
        this.#log.warn({ thread: slot.thread, err: (err as Error).message }, 'proxy worker state message failed');
      }
    }
    Atomics.store(this.#cells.i32, G_STATE_VERSION, msg.version);
  }

  /**
   * Closes the WebSockets pinned to `gen` in every thread (1001). Returns how many were open, across
   * threads (the shared tunnel counts), so the drain knows to wait for them to go.
   */
  closeUpgrades(gen: GenerationView): number {
    let open = 0;
    for (const inst of everyInstance(gen as never) as readonly Upstream[]) open += inst.tunnels ?? 0;
    this.#main.closeUpgrades(gen);
    this.#broadcast({ type: 'close-upgrades', generation: gen.id });
    return open;
  }

  /** Graceful: every worker stops as the main thread's proxy does (listeners first, then in-flight work). */
  async stop(deadlineMs: number): Promise<void> {
    this.#stopping = true;
    this.#clearCheck();
    this.#stopTicketKeys?.();
    await Promise.all(this.#slots.map((slot) => this.#stopSlot(slot, deadlineMs)));
  }

  /**
   * Ends worker thread `thread` at once, as a crash would: what it held is given back and it is started
   * again like any worker that died. For tests of exactly that.
   */
  async kill(thread: number): Promise<void> {
    await this.#slots.find((s) => s.thread === thread)?.worker?.terminate();
  }

  destroy(): void {
    this.#stopping = true;
    this.#clearCheck();
    for (const slot of this.#slots) {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      void slot.worker?.terminate();
      slot.state?.close();
    }
  }

  // ---- workers ---------------------------------------------------------------------------------------

  #spawn(slot: WorkerSlot): Promise<void> {
    const channel = new MessageChannel();
    slot.state?.close();
    slot.state = channel.port1;
    // What the others have: a restarted worker starts from the latest state, not a newer snapshot.
    const table = this.#snapshotSent ?? this.#snapshot(this.#table!);
    this.#snapshotSent = table;
    const data: WorkerData = {
      cells: this.#cells.handle,
      thread: slot.thread,
      threads: this.#config.proxy.workers,
      config: this.#config,
      listen: this.#listen,
      table,
      version: this.#version,
      state: channel.port2,
      challenges: this.#challenges,
      ticketKey: this.#tls?.certificates.ticketKeys.current ?? null,
      managed: [...this.#managed],
      alpn: [...this.#alpn],
    };
    const worker = new Worker(ENTRY, { workerData: data, transferList: [channel.port2], name: `berth-proxy-${slot.thread}` });
    slot.worker = worker;
    slot.ready = false;
    return new Promise<void>((resolve) => {
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#log.error({ thread: slot.thread }, 'proxy worker did not start listening in time');
        void worker.terminate();
        settle();
      }, READY_TIMEOUT_MS);
      worker.on('message', (msg: FromWorker) => {
        if (msg.type === 'ready') {
          slot.ready = true;
          slot.failures = 0;
          settle();
        } else this.#onMessage(slot, msg);
      });
      worker.on('error', (err) => this.#log.error({ thread: slot.thread, err: err.message }, 'proxy worker failed'));
      worker.on('exit', (code) => {
        settle();
        this.#exited(slot, worker, code);
      });
    });
  }

  #onMessage(slot: WorkerSlot, msg: FromWorker): void {
    switch (msg.type) {
      case 'idle':
        this.#cells.owners.get(msg.slot)?.idle();
        break;
      case 'stats':
        this.#metrics.recordRemote(msg.requests, msg.admissions);
        break;
      case 'log':
        this.#logs.writeRaw(msg.text);
        break;
      case 'metrics':
        void this.#metrics.text().then(
          (text) => this.#post(slot, { type: 'metrics-text', id: msg.id, text, contentType: this.#metrics.contentType }),
          () => this.#post(slot, { type: 'metrics-text', id: msg.id, text: null, contentType: this.#metrics.contentType }),
        );
        break;
      case 'on-demand': {
        // The manager rate-limits, asks the `ask` URL and orders; the certificate reaches the worker
        // through the state port (setManaged) before this answer does.
        const acme = this.#tls?.acme ?? null;
        const done = (ok: boolean) => this.#post(slot, { type: 'on-demand-done', id: msg.id, ok });
        if (acme === null) done(false);
        else acme.onDemand(msg.name).then(done, () => done(false));
        break;
      }
      case 'stopped':
      case 'ready':
        break;
    }
  }

  /** A worker ended: on purpose (stopping), or it died, and what it held goes back and it starts again. */
  #exited(slot: WorkerSlot, worker: Worker, code: number): void {
    if (slot.worker !== worker) return;
    slot.worker = null;
    slot.ready = false;
    slot.state?.close();
    slot.state = null;
    // Whatever it held: requests, tunnels and pool places it never gave back.
    for (const s of this.#cells.reclaim(slot.thread)) this.#cells.owners.get(s)?.idle();
    if (this.#stopping) return;
    slot.failures++;
    const delay = Math.min(RESTART_MAX_MS, RESTART_MIN_MS * 2 ** (slot.failures - 1));
    this.#log.error({ thread: slot.thread, code, restartInMs: delay }, 'proxy worker exited; restarting it');
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = null;
      if (!this.#stopping) void this.#spawn(slot);
    }, delay);
    slot.restartTimer.unref();
  }

  #stopSlot(slot: WorkerSlot, deadlineMs: number): Promise<void> {
    if (slot.restartTimer) clearTimeout(slot.restartTimer);
    slot.restartTimer = null;
    const worker = slot.worker;
    if (worker === null) return Promise.resolve();
    slot.stopped ??= new Promise<void>((resolve) => {
      const kill = setTimeout(() => void worker.terminate(), deadlineMs + STOP_GRACE_MS);
      worker.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      this.#post(slot, { type: 'stop', deadlineMs });
    });
    return slot.stopped;
  }

  #post(slot: WorkerSlot, msg: ToWorker): void {
    try {
      slot.worker?.postMessage(msg);
    } catch (err) {
      this.#log.warn({ thread: slot.thread, err: (err as Error).message }, 'proxy worker message failed');
    }
  }

  #broadcast(msg: ToWorker): void {
    for (const slot of this.#slots) this.#post(slot, msg);
  }

  // ---- snapshots ---------------------------------------------------------------------------------

  #checkSnapshot(): void {
    if (this.#table === null || this.#stopping) return;
    const print = fingerprint(this.#table);
    if (print !== this.#fingerprint) this.setTable(this.#table);
  }

  #snapshot(table: RoutingTable): TableSnapshot {
    this.#fingerprint = fingerprint(table);
    return {
      admissionSlots: this.#cells.admissionSlots(),
      rateBuckets: this.#cells.rateBucketTables(),
      apps: table.apps.map((a) => ({
        name: a.name,
        config: a.config,
        mode: a.mode,
        ...(a.noGeneration ? { noGeneration: a.noGeneration } : {}),
        generation: a.generation === null ? null : generationSnapshot(a.generation),
        // What affinity cookies may still lead to while a deploy drains (affinity.ts).
        ...(a.draining !== undefined && a.draining.length > 0 ? { draining: a.draining.map(generationSnapshot) } : {}),
      })),
    };
  }

  #clearCheck(): void {
    if (this.#check !== null) clearInterval(this.#check);
    this.#check = null;
  }
}

function generationSnapshot(gen: GenerationView): GenerationSnapshot {
  const instances: InstanceSnapshot[] = [];
  const index = new Map<Upstream, number>();
  /** The instance's place in `instances`, added on first sight. */
  const place = (inst: SlottedUpstream): number => {
    let i = index.get(inst);
    if (i === undefined) {
      const { slot, addressGeneration, app, process, index: n, releaseId, concurrency, address } = inst;
      i = instances.push({ slot, addressGeneration, app, process, index: n, releaseId, concurrency, address }) - 1;
      index.set(inst, i);
    }
    return i;
  };
  for (const inst of everyInstance(gen as never) as readonly SlottedUpstream[]) place(inst);
  // A pool may hold an instance no longer in the generation's list (a replacement): it is still served.
  const pools: GenerationSnapshot['pools'] = [...gen.pools.values()].map((pool) => ({
    process: pool.process,
    concurrency: pool.concurrency,
    members: pool.instances.map((inst) => place(inst as SlottedUpstream)),
  }));
  return { id: gen.id, app: gen.app, releaseId: gen.releaseId, releaseDir: gen.releaseDir, instances, pools };
}

/** What the snapshot depends on beyond the table object: pool members and instance addresses. */
function fingerprint(table: RoutingTable): string {
  let s = '';
  for (const a of table.apps) {
    if (a.generation !== null) s += generationPrint(a.generation);
    // Draining generations too: affinity cookies may still lead to them.
    if (a.draining !== undefined) for (const gen of a.draining) s += generationPrint(gen);
  }
  return s;
}

function generationPrint(gen: GenerationView): string {
  let s = gen.id;
  for (const pool of gen.pools.values()) {
    s += '|';
    for (const inst of pool.instances) s += `${(inst as SlottedUpstream).slot}.${(inst as SlottedUpstream).addressGeneration},`;
  }
  for (const inst of everyInstance(gen as never) as readonly SlottedUpstream[]) s += `${inst.slot}.${inst.addressGeneration};`;
  return s;
}
