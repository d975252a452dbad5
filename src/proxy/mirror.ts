/**
 * The routing table as a proxy worker thread sees it (`proxy.workers`).
 *
 * The main thread owns the apps, generations and instances. It sends each worker thread a snapshot of
 * the table (plain data: proxy-workers.ts) whenever the table changes and whenever an instance's
 * address or a pool's members change. The worker builds the same RoutingTable the main thread's proxy
 * has, over mirror objects: a generation with the supervisor's own Pool class (so `pick` and `acquire`
 * are the same code), and instances whose state and counts are read from, and counted into, the shared
 * cells. So a worker never waits on the main thread: an instance that turns unhealthy is skipped on the
 * next request, and its counts are global the moment they change.
 *
 * An instance whose address changed since the snapshot (a restart) reads as `starting` until the next
 * snapshot brings its new address: a request never goes to a stale port.
 */
import type { AppConfig } from '../config/schema.ts';
import { I_ADDRESS, I_STATE, I_WATCHED, SlotCounted, STATE_CODES, type SharedCells } from '../lib/shared-cells.ts';
import { Pool } from '../supervisor/pool.ts';
import type { GenerationState, GenerationView, InstanceState, Upstream, UpstreamAddress } from '../supervisor/types.ts';
import { RoutingTable, type AppEntry, type ModeState, type NoGenerationReason } from './router.ts';

/** A worker thread learns where the main thread keeps shared counts (before it makes limiters for them). */
export function learnTables(cells: SharedCells, tables: SharedTables): void {
  cells.learnAdmissionSlots(tables.admissionSlots);
  cells.learnRateBuckets(tables.rateBuckets);
}

/** One instance in a snapshot. */
export interface InstanceSnapshot {
  slot: number;
  /** Its I_ADDRESS cell when the snapshot was taken: the address below is good while the cell still says so. */
  addressGeneration: number;
  app: string;
  process: string;
  index: number;
  releaseId: string;
  concurrency: number;
  address: UpstreamAddress | null;
}

export interface GenerationSnapshot {
  id: string;
  app: string;
  releaseId: string;
  releaseDir: string;
  /** Every instance, background ones included (the health rule reads them). */
  instances: InstanceSnapshot[];
  /** http process type -> its concurrency and its instances (indices into `instances`). */
  pools: { process: string; concurrency: number; members: number[] }[];
}

export interface AppSnapshot {
  name: string;
  config: AppConfig;
  mode: ModeState;
  noGeneration?: NoGenerationReason;
  generation: GenerationSnapshot | null;
  /** Generations still draining after a deploy, which affinity cookies may still lead to (router.ts). */
  draining?: GenerationSnapshot[];
}

/** What a worker thread gets on every change. */
export interface TableSnapshot extends SharedTables {
  apps: AppSnapshot[];
}

/** Where the shared counts of pools and rate limits are, as the main thread allocated them. */
export interface SharedTables {
  /** Pool (`app/process`) -> its admission slot in the shared cells. */
  admissionSlots: [string, number][];
  /** App -> its rate-limit buckets (shared-buckets.ts). */
  rateBuckets: [string, SharedArrayBuffer][];
}

/** An instance as a worker thread sees it: fields from the snapshot, state and counts from the cells. */
class MirrorUpstream extends SlotCounted implements Upstream {
  readonly app: string;
  readonly process: string;
  readonly index: number;
  readonly releaseId: string;
  readonly concurrency: number;
  readonly address: UpstreamAddress | null;
  readonly addressGeneration: number;
  #onIdle: (slot: number) => void;

  constructor(s: InstanceSnapshot, cells: SharedCells, onIdle: (slot: number) => void) {
    super(cells, s.slot);
    this.app = s.app;
    this.process = s.process;
    this.index = s.index;
    this.releaseId = s.releaseId;
    this.concurrency = s.concurrency;
    this.address = s.address;
    this.addressGeneration = s.addressGeneration;
    this.#onIdle = onIdle;
  }

  get state(): InstanceState {
    const i32 = this.cells.i32;
    const at = this.cells.instance(this.slot);
    if (Atomics.load(i32, at + I_ADDRESS) !== this.addressGeneration) return 'starting';
    return STATE_CODES[Atomics.load(i32, at + I_STATE)] ?? 'stopped';
  }

  /** Only a drain watches an instance: then the main thread wants to hear that this thread left it idle. */
  idle(): void {
    if (Atomics.load(this.cells.i32, this.cells.instance(this.slot) + I_WATCHED) === 1) this.#onIdle(this.slot);
  }
}

class MirrorGeneration implements GenerationView {
  readonly id: string;
  readonly app: string;
  readonly releaseId: string;
  readonly releaseDir: string;
  readonly state: GenerationState = 'ready';
  readonly pools = new Map<string, Pool>();
  instances: readonly MirrorUpstream[] = [];

  constructor(s: GenerationSnapshot) {
    this.id = s.id;
    this.app = s.app;
    this.releaseId = s.releaseId;
    this.releaseDir = s.releaseDir;
  }

  get inFlight(): number {
    let n = 0;
    for (const inst of this.instances) n += inst.inFlight + inst.tunnels;
    return n;
  }
}

/**
 * Builds tables from snapshots, keeping the same object for a generation (by id) and for an instance
 * (by slot and address generation) from one snapshot to the next, as the main thread's table does.
 */
export class Mirror {
  #cells: SharedCells;
  #onIdle: (slot: number) => void;
  /** The latest table's generations, reused by the next snapshot. */
  #generations = new Map<string, MirrorGeneration>();
  /** Every generation some request or WebSocket may still be pinned to, by id (the old one of a drain). */
  #byId = new Map<string, WeakRef<MirrorGeneration>>();
  #instances = new Map<string, MirrorUpstream>();

  /** `onIdle(slot)`: this thread's last request on a watched instance ended (tell the main thread). */
  constructor(cells: SharedCells, onIdle: (slot: number) => void) {
    this.#cells = cells;
    this.#onIdle = onIdle;
  }

  /** Looks up a generation of the latest table by id (closing WebSockets pinned to it). */
  generation(id: string): GenerationView | null {
    return this.#byId.get(id)?.deref() ?? null;
  }

  table(snapshot: TableSnapshot): RoutingTable {
    learnTables(this.#cells, snapshot);
    const generations = new Map<string, MirrorGeneration>();
    const instances = new Map<string, MirrorUpstream>();
    const entries: AppEntry[] = snapshot.apps.map((a) => {
      const generation = a.generation === null ? null : this.#generation(a.generation, generations, instances);
      const entry: AppEntry = { name: a.name, config: a.config, generation, mode: a.mode, ...(a.noGeneration ? { noGeneration: a.noGeneration } : {}) };
      if (a.draining !== undefined && a.draining.length > 0) return { ...entry, draining: a.draining.map((g) => this.#generation(g, generations, instances)) };
      return entry;
    });
    this.#generations = generations;
    this.#instances = instances;
    for (const [id, ref] of this.#byId) if (ref.deref() === undefined) this.#byId.delete(id);
    for (const [id, gen] of generations) if (!this.#byId.has(id)) this.#byId.set(id, new WeakRef(gen));
    return new RoutingTable(entries);
  }

  #generation(s: GenerationSnapshot, generations: Map<string, MirrorGeneration>, instances: Map<string, MirrorUpstream>): MirrorGeneration {
    const gen = this.#generations.get(s.id) ?? new MirrorGeneration(s);
    const members = s.instances.map((i) => {
      const key = `${i.slot}:${i.addressGeneration}`;
      const inst = this.#instances.get(key) ?? new MirrorUpstream(i, this.#cells, this.#onIdle);
      instances.set(key, inst);
      return inst;
    });
    gen.instances = members;
    for (const p of s.pools) {
      let pool = gen.pools.get(p.process);
      if (pool === undefined) {
        pool = new Pool(p.process, p.concurrency);
        gen.pools.set(p.process, pool);
      }
      const list = p.members.map((i) => members[i]);
      // Copy on write, as the supervisor does: a request holding the old list is unaffected.
      if (list.length !== pool.instances.length || list.some((u, i) => u !== pool!.instances[i])) pool.setInstances(list);
    }
    generations.set(s.id, gen);
    return gen;
  }
}
