/**
 * The counters every proxy thread shares (`proxy.workers`), in one SharedArrayBuffer: per instance its
 * state, requests and WebSockets in flight and requests served; per admission pool (`app/process`) its
 * active requests and waiters. A request slot is taken with a compare-and-swap, so an instance's
 * `concurrency` and a pool's limit hold across threads exactly, with no lock and no message on the
 * request path.
 *
 * Layout (Int32 cells):
 * - instances: INSTANCE_SLOTS blocks of INSTANCE_STRIDE cells (state, in flight, tunnels, served,
 *   watched, address generation, last affine request);
 * - admissions: ADMISSION_SLOTS blocks of ADMISSION_STRIDE cells (active, waiters, wake sequence, open
 *   WebSockets);
 * - per proxy thread (0 is the main thread): what that thread holds of each instance and pool (requests,
 *   tunnels, oldest request start; active requests, WebSockets, waiters), so that when a worker thread dies the
 *   main thread gives back exactly what it held.
 *
 * Only the main thread allocates slots. A freed instance slot rests for SLOT_REST_MS before reuse, and
 * its address generation changes, so a thread whose snapshot is a little behind sees the old instance
 * as not serving and never sends it a request.
 *
 * A gateway makes one SharedCells and hands it to its supervisor (instances) and its proxy (pools); a
 * worker thread makes its own over the same buffer (`new SharedCells(handle)`, `thread` set). The
 * buffer is zero-filled memory that the kernel commits only as cells are touched.
 */

export const INSTANCE_SLOTS = 16_384;
export const ADMISSION_SLOTS = 4_096;
/** The main thread plus at most this many minus one proxy worker threads. */
export const MAX_THREADS = 33;

const INSTANCE_STRIDE = 8;
export const I_STATE = 0;
export const I_IN_FLIGHT = 1;
export const I_TUNNELS = 2;
export const I_SERVED = 3;
/** 1 while the main thread waits for the instance to go idle (a drain): worker threads then tell it. */
export const I_WATCHED = 4;
/** Bumped at every address change: a snapshot with an older value has a stale address. */
export const I_ADDRESS = 5;
/** When a request of a cookie-affinity route last ended on it (deciseconds from `base`, as H_OLDEST; 0: never). */
export const I_AFFINE = 6;

const ADMISSION_STRIDE = 4;
export const A_ACTIVE = 0;
/** Requests queued for the pool, across threads. */
export const A_WAITERS = 1;
/** Bumped (and notified) when a slot frees up while another thread has waiters. */
export const A_SEQ = 2;
/** WebSockets open to the pool, across generations (held to `websockets.max`). */
export const A_WEBSOCKETS = 3;

/** Per thread: requests, tunnels and the oldest request's start (see `now`) of each instance; active of each pool. */
const HELD_INSTANCE_STRIDE = 3;
export const H_REQUESTS = 0;
export const H_TUNNELS = 1;
export const H_OLDEST = 2;
/** Per thread and pool: active requests, open WebSockets, queued requests. */
const HELD_ADMISSION_STRIDE = 3;
export const HA_ACTIVE = 0;
export const HA_WEBSOCKETS = 1;
export const HA_WAITERS = 2;
const HELD_THREAD_CELLS = INSTANCE_SLOTS * HELD_INSTANCE_STRIDE + ADMISSION_SLOTS * HELD_ADMISSION_STRIDE;

const ADMISSION_BASE = INSTANCE_SLOTS * INSTANCE_STRIDE;
/** Gateway-wide cells. */
const GLOBAL_BASE = ADMISSION_BASE + ADMISSION_SLOTS * ADMISSION_STRIDE;
/** Bumped by the main thread after it posts a new table or config to its workers (see proxy-workers.ts). */
export const G_STATE_VERSION = GLOBAL_BASE;
const HELD_BASE = GLOBAL_BASE + 8;
const TOTAL_CELLS = HELD_BASE + MAX_THREADS * HELD_THREAD_CELLS;

/** A freed instance slot is not reused before this: a snapshot a thread still reads may name it. */
const SLOT_REST_MS = 60_000;

/** Instance states as cell values (index in this list). */
export const STATE_CODES = ['stopped', 'starting', 'ready', 'unhealthy', 'backoff', 'crashed', 'stopping'] as const;

/**
 * Adds one to the cell at `index` if it is below `limit`, atomically against every other thread (a
 * compare-and-swap loop); false when it is not below.
 */
export function addBelow(i32: Int32Array, index: number, limit: number): boolean {
  let seen = Atomics.load(i32, index);
  for (;;) {
    if (seen >= limit) return false;
    const was = Atomics.compareExchange(i32, index, seen, seen + 1);
    if (was === seen) return true;
    seen = was;
  }
}

/** What a worker thread needs to adopt the cells. */
export interface SharedCellsHandle {
  buffer: SharedArrayBuffer;
  /** Date.now() of the cells' creation: `H_OLDEST` counts deciseconds from it. */
  base: number;
}

export class SharedCells {
  readonly buffer: SharedArrayBuffer;
  readonly i32: Int32Array;
  readonly base: number;
  /** This thread's index: 0 in the main thread, 1.. in proxy worker threads. */
  thread = 0;
  /** Proxy threads in use (the main thread's count; 1 without workers). */
  threads = 1;
  /** Main thread: who owns each instance slot, to tell when a worker thread saw it go idle. */
  readonly owners = new Map<number, { idle(): void }>();
  #nextInstance = 0;
  #freeInstances: { slot: number; at: number }[] = [];
  #admissions = new Map<string, number>();
  /** App -> its rate-limit table (proxy/shared-buckets.ts), made by the main thread. */
  #buckets = new Map<string, SharedArrayBuffer>();

  constructor(handle?: SharedCellsHandle) {
    this.buffer = handle?.buffer ?? new SharedArrayBuffer(TOTAL_CELLS * 4);
    this.i32 = new Int32Array(this.buffer);
    this.base = handle?.base ?? Date.now();
  }

  get handle(): SharedCellsHandle {
    return { buffer: this.buffer, base: this.base };
  }

  /** Epoch milliseconds of a H_OLDEST value. */
  toEpochMs(value: number): number {
    return this.base + value * 100;
  }

  /** The H_OLDEST value of epoch milliseconds. */
  fromEpochMs(ms: number): number {
    return Math.max(1, Math.floor((ms - this.base) / 100));
  }

  // ---- instances --------------------------------------------------------------------------------

  /** The first cell of an instance slot. */
  instance(slot: number): number {
    return slot * INSTANCE_STRIDE;
  }

  /** A free instance slot, its counters zero and its address generation bumped. Main thread only. */
  allocInstance(): number {
    let slot: number;
    const rested = this.#freeInstances[0];
    if (rested !== undefined && Date.now() - rested.at >= SLOT_REST_MS) slot = this.#freeInstances.shift()!.slot;
    else if (this.#nextInstance < INSTANCE_SLOTS) slot = this.#nextInstance++;
    else if (rested !== undefined) slot = this.#freeInstances.shift()!.slot;
    else throw new Error(`more than ${INSTANCE_SLOTS} instances at once`);
    const at = this.instance(slot);
    const i32 = this.i32;
    Atomics.add(i32, at + I_ADDRESS, 1);
    Atomics.store(i32, at + I_STATE, 0);
    Atomics.store(i32, at + I_IN_FLIGHT, 0);
    Atomics.store(i32, at + I_TUNNELS, 0);
    Atomics.store(i32, at + I_SERVED, 0);
    Atomics.store(i32, at + I_WATCHED, 0);
    Atomics.store(i32, at + I_AFFINE, 0);
    return slot;
  }

  /** The instance is gone; its slot rests, then is reused. Main thread only. */
  freeInstance(slot: number): void {
    const at = this.instance(slot);
    Atomics.add(this.i32, at + I_ADDRESS, 1);
    Atomics.store(this.i32, at + I_STATE, 0);
    this.#freeInstances.push({ slot, at: Date.now() });
  }

  /** The first of `thread`'s held cells of an instance slot. */
  heldInstance(thread: number, slot: number): number {
    return HELD_BASE + thread * HELD_THREAD_CELLS + slot * HELD_INSTANCE_STRIDE;
  }

  /**
   * Takes one request slot of the instance if it has fewer than `concurrency` in flight (compare and
   * swap, so two threads cannot both take the last one). Counts it as this thread's.
   */
  tryReserve(slot: number, concurrency: number): boolean {
    if (!addBelow(this.i32, this.instance(slot) + I_IN_FLIGHT, concurrency)) return false;
    Atomics.add(this.i32, this.heldInstance(this.thread, slot) + H_REQUESTS, 1);
    return true;
  }

  /** Takes a request slot whatever the count (the supervisor's own accounting and tests). */
  reserve(slot: number): void {
    Atomics.add(this.i32, this.instance(slot) + I_IN_FLIGHT, 1);
    Atomics.add(this.i32, this.heldInstance(this.thread, slot) + H_REQUESTS, 1);
  }

  /** Gives a request slot back and counts the request served; returns what is left in flight (requests and tunnels). */
  release(slot: number): number {
    const i32 = this.i32;
    const at = this.instance(slot);
    Atomics.add(i32, this.heldInstance(this.thread, slot) + H_REQUESTS, -1);
    Atomics.add(i32, at + I_SERVED, 1);
    const left = Atomics.sub(i32, at + I_IN_FLIGHT, 1) - 1;
    return left + Atomics.load(i32, at + I_TUNNELS);
  }

  openTunnel(slot: number): void {
    Atomics.add(this.i32, this.instance(slot) + I_TUNNELS, 1);
    Atomics.add(this.i32, this.heldInstance(this.thread, slot) + H_TUNNELS, 1);
  }

  /** Returns what is left in flight (requests and tunnels). */
  closeTunnel(slot: number): number {
    const i32 = this.i32;
    const at = this.instance(slot);
    Atomics.add(i32, this.heldInstance(this.thread, slot) + H_TUNNELS, -1);
    const left = Atomics.sub(i32, at + I_TUNNELS, 1) - 1;
    return left + Atomics.load(i32, at + I_IN_FLIGHT);
  }

  /** Sets this thread's oldest request start on the instance (0: none). */
  setOldest(slot: number, value: number): void {
    Atomics.store(this.i32, this.heldInstance(this.thread, slot) + H_OLDEST, value);
  }

  /** The oldest request start on the instance that any thread other than this one holds (0: none). */
  oldestElsewhere(slot: number, threads: number): number {
    let oldest = 0;
    for (let t = 0; t < threads; t++) {
      if (t === this.thread) continue;
      const v = Atomics.load(this.i32, this.heldInstance(t, slot) + H_OLDEST);
      if (v !== 0 && (oldest === 0 || v < oldest)) oldest = v;
    }
    return oldest;
  }

  // ---- admissions -------------------------------------------------------------------------------

  admission(slot: number): number {
    return ADMISSION_BASE + slot * ADMISSION_STRIDE;
  }

  /** The first of `thread`'s cells for pool `slot` (HA_ACTIVE, HA_WEBSOCKETS, HA_WAITERS). */
  heldAdmission(thread: number, slot: number): number {
    return HELD_BASE + thread * HELD_THREAD_CELLS + INSTANCE_SLOTS * HELD_INSTANCE_STRIDE + slot * HELD_ADMISSION_STRIDE;
  }

  /** One more WebSocket on pool `slot` if fewer than `max` are open (compare and swap). */
  tryOpenWebSocket(slot: number, max: number): boolean {
    if (!addBelow(this.i32, this.admission(slot) + A_WEBSOCKETS, max)) return false;
    Atomics.add(this.i32, this.heldAdmission(this.thread, slot) + HA_WEBSOCKETS, 1);
    return true;
  }

  closeWebSocket(slot: number): void {
    Atomics.sub(this.i32, this.heldAdmission(this.thread, slot) + HA_WEBSOCKETS, 1);
    Atomics.sub(this.i32, this.admission(slot) + A_WEBSOCKETS, 1);
  }

  /**
   * The slot of pool `key` (`app/process`). The main thread allocates one on first use; a worker thread
   * knows the ones its snapshots named, and gets -1 for others (then it counts that pool alone).
   */
  admissionSlot(key: string): number {
    const known = this.#admissions.get(key);
    if (known !== undefined) return known;
    if (this.thread !== 0 || this.#admissions.size >= ADMISSION_SLOTS) return -1;
    const slot = this.#admissions.size;
    this.#admissions.set(key, slot);
    return slot;
  }

  /** Every pool slot allocated so far (the main thread sends them to its workers). */
  admissionSlots(): [string, number][] {
    return [...this.#admissions];
  }

  /** A worker thread learns the main thread's pool slots. */
  learnAdmissionSlots(slots: [string, number][]): void {
    for (const [key, slot] of slots) this.#admissions.set(key, slot);
  }

  /**
   * The rate-limit table of `app`: the main thread makes one on first use (`make` gives its buffer); a
   * worker thread knows the ones its snapshots named, and gets null for others.
   */
  rateBuckets(app: string, make: () => SharedArrayBuffer): SharedArrayBuffer | null {
    const known = this.#buckets.get(app);
    if (known !== undefined || this.thread !== 0) return known ?? null;
    const made = make();
    this.#buckets.set(app, made);
    return made;
  }

  /** Every app's rate-limit table (the main thread sends them to its workers: shared, not copied). */
  rateBucketTables(): [string, SharedArrayBuffer][] {
    return [...this.#buckets];
  }

  learnRateBuckets(tables: [string, SharedArrayBuffer][]): void {
    for (const [app, buffer] of tables) this.#buckets.set(app, buffer);
  }

  // ---- a worker thread that died ----------------------------------------------------------------

  /**
   * Gives back everything `thread` held (it died mid-request): its requests and tunnels on every
   * instance, its active requests on every pool. Returns the instance slots that changed. Main thread.
   */
  reclaim(thread: number): number[] {
    const i32 = this.i32;
    const changed: number[] = [];
    for (let slot = 0; slot < this.#nextInstance; slot++) {
      const held = this.heldInstance(thread, slot);
      const requests = Atomics.exchange(i32, held + H_REQUESTS, 0);
      const tunnels = Atomics.exchange(i32, held + H_TUNNELS, 0);
      Atomics.store(i32, held + H_OLDEST, 0);
      if (requests !== 0) Atomics.sub(i32, this.instance(slot) + I_IN_FLIGHT, requests);
      if (tunnels !== 0) Atomics.sub(i32, this.instance(slot) + I_TUNNELS, tunnels);
      if (requests !== 0 || tunnels !== 0) changed.push(slot);
    }
    for (const slot of this.#admissions.values()) {
      const sockets = Atomics.exchange(i32, this.heldAdmission(thread, slot) + HA_WEBSOCKETS, 0);
      if (sockets !== 0) Atomics.sub(i32, this.admission(slot) + A_WEBSOCKETS, sockets);
      const waiters = Atomics.exchange(i32, this.heldAdmission(thread, slot) + HA_WAITERS, 0);
      if (waiters !== 0) Atomics.sub(i32, this.admission(slot) + A_WAITERS, waiters);
      const active = Atomics.exchange(i32, this.heldAdmission(thread, slot) + HA_ACTIVE, 0);
      if (active !== 0) {
        Atomics.sub(i32, this.admission(slot) + A_ACTIVE, active);
        Atomics.add(i32, this.admission(slot) + A_SEQ, 1);
        Atomics.notify(i32, this.admission(slot) + A_SEQ);
      }
    }
    return changed;
  }
}

/**
 * One instance's counting, as one thread does it: request tickets (for `busy`: the oldest request of
 * any thread), tunnels, and the shared counts they move. The supervisor's Instance and a worker thread's
 * view of it (proxy/mirror.ts) both extend this, so both count the same way; `idle()` is what each does
 * when this thread's end of a request or tunnel left nothing in flight on the instance.
 */
export abstract class SlotCounted {
  readonly slot: number;
  abstract readonly concurrency: number;
  protected readonly cells: SharedCells;
  /** This thread's tickets -> start time (epoch ms). A Map keeps insertion order: the first is the oldest. */
  #tickets = new Map<number, number>();
  #lastTicket = 0;
  /** WebSockets this thread opened; guards against a second endTunnel. */
  #tunnels = 0;

  constructor(cells: SharedCells, slot: number) {
    this.cells = cells;
    this.slot = slot;
  }

  abstract idle(): void;

  get inFlight(): number {
    return Atomics.load(this.cells.i32, this.cells.instance(this.slot) + I_IN_FLIGHT);
  }

  get tunnels(): number {
    return Atomics.load(this.cells.i32, this.cells.instance(this.slot) + I_TUNNELS);
  }

  get served(): number {
    return Atomics.load(this.cells.i32, this.cells.instance(this.slot) + I_SERVED);
  }

  markAffine(): void {
    Atomics.store(this.cells.i32, this.cells.instance(this.slot) + I_AFFINE, this.cells.fromEpochMs(Date.now()));
  }

  get lastAffineAt(): number {
    const v = Atomics.load(this.cells.i32, this.cells.instance(this.slot) + I_AFFINE);
    return v === 0 ? 0 : this.cells.toEpochMs(v);
  }

  /** Epoch ms of the oldest request in flight on the instance in any thread; 0: none. */
  oldestStart(): number {
    const mine = this.#tickets.size === 0 ? 0 : (this.#tickets.values().next().value as number);
    const other = this.cells.oldestElsewhere(this.slot, this.cells.threads);
    if (other === 0) return mine;
    const otherMs = this.cells.toEpochMs(other);
    return mine === 0 ? otherMs : Math.min(mine, otherMs);
  }

  tryReserve(): boolean {
    return this.cells.tryReserve(this.slot, this.concurrency);
  }

  begin(reserved = false): number {
    if (!reserved) this.cells.reserve(this.slot);
    const ticket = ++this.#lastTicket;
    const now = Date.now();
    if (this.#tickets.size === 0) this.cells.setOldest(this.slot, this.cells.fromEpochMs(now));
    this.#tickets.set(ticket, now);
    return ticket;
  }

  end(ticket: number): void {
    const tickets = this.#tickets;
    const oldest = tickets.keys().next().value;
    if (!tickets.delete(ticket)) return;
    if (ticket === oldest) this.cells.setOldest(this.slot, tickets.size === 0 ? 0 : this.cells.fromEpochMs(tickets.values().next().value as number));
    if (this.cells.release(this.slot) === 0) this.idle();
  }

  beginTunnel(): void {
    this.#tunnels++;
    this.cells.openTunnel(this.slot);
  }

  endTunnel(): void {
    if (this.#tunnels === 0) return;
    this.#tunnels--;
    if (this.cells.closeTunnel(this.slot) === 0) this.idle();
  }
}
