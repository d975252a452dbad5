/**
 * One app's rate-limit buckets in shared memory, so that every proxy thread (`proxy.workers`) counts a
 * client against the same bucket. rate-limit.ts keeps the rule (GCRA: one "theoretical arrival time"
 * per client); this is where the times live when more than one thread serves.
 *
 * An open-addressing table of BUCKETS entries in one SharedArrayBuffer: per entry a lock word, the
 * client key's 64-bit hash (two Int32 halves) and its time (a Float64, epoch ms). An entry is read and
 * changed under its lock (a compare-and-swap on the lock word, held for a few instructions), so two
 * threads never interleave on one client's time. A client is looked for in PROBE consecutive entries
 * from its hash; a new client takes an empty entry there, else one whose time has passed (a full bucket,
 * the same as none), else the one with the oldest time: as the local limiter does at its cap, failing
 * open for one old client rather than closed for a new one. Two threads seeing the same new client at
 * the same instant may each give it an entry: its first burst then counts twice, once.
 *
 * Memory: BUCKETS x 24 bytes (1.5 MB) per rate-limited app, committed by the kernel only as entries are
 * touched.
 */

/** Entries per app: a power of two, above the local limiter's cap of 50,000 buckets. */
export const BUCKETS = 65_536;
/** Entries looked at from a key's hash. */
const PROBE = 8;
const INT_STRIDE = 4;
const LOCK = 0;
const KEY_HI = 1;
const KEY_LO = 2;
const USED = 3;
/** A lock held longer than this many spins is a thread that died holding it: taken over. */
const MAX_SPINS = 10_000;

/** A new table for one app (main thread), to hand to `SharedBuckets` in every thread. */
export function newBucketTable(): SharedArrayBuffer {
  return new SharedArrayBuffer(BUCKETS * INT_STRIDE * 4 + BUCKETS * 8);
}

export class SharedBuckets {
  #i32: Int32Array;
  #tat: Float64Array;

  constructor(buffer: SharedArrayBuffer) {
    this.#i32 = new Int32Array(buffer, 0, BUCKETS * INT_STRIDE);
    this.#tat = new Float64Array(buffer, BUCKETS * INT_STRIDE * 4, BUCKETS);
  }

  /**
   * GCRA for `key` at `now` (epoch ms): 0 when a request may go on (and it is counted), else the ms until
   * one would be admitted (nothing is counted).
   */
  take(key: string, now: number, interval: number, tolerance: number, epsilon: number): number {
    const hi = hash(key, 0x811c9dc5) | 1;
    const lo = hash(key, 0x050c5d1f);
    const entry = this.#find(hi, lo, now);
    const i32 = this.#i32;
    const at = entry * INT_STRIDE;
    // #find returns the entry locked, and already this key's.
    const tat = this.#tat[entry];
    const next = (tat > now ? tat : now) + interval;
    const over = next - now - tolerance;
    if (over <= epsilon) this.#tat[entry] = next;
    Atomics.store(i32, at + LOCK, 0);
    return over > epsilon ? over : 0;
  }

  /** The entry of (hi, lo), made if need be, returned locked. */
  #find(hi: number, lo: number, now: number): number {
    const i32 = this.#i32;
    const mask = BUCKETS - 1;
    // First the key's own entry, wherever it is in the probe window.
    for (let p = 0; p < PROBE; p++) {
      const e = (lo + p) & mask;
      const at = e * INT_STRIDE;
      if (Atomics.load(i32, at + USED) === 0) continue;
      this.#lock(at);
      if (Atomics.load(i32, at + USED) === 1 && Atomics.load(i32, at + KEY_HI) === hi && Atomics.load(i32, at + KEY_LO) === lo) return e;
      Atomics.store(i32, at + LOCK, 0);
    }
    // A new client: an empty entry, else a full bucket, else the oldest.
    let oldest = -1;
    let oldestTat = Infinity;
    for (let p = 0; p < PROBE; p++) {
      const e = (lo + p) & mask;
      const at = e * INT_STRIDE;
      this.#lock(at);
      const tat = this.#tat[e];
      if (Atomics.load(i32, at + USED) === 0 || tat <= now) return this.#claim(e, hi, lo, now);
      Atomics.store(i32, at + LOCK, 0);
      if (tat < oldestTat) {
        oldestTat = tat;
        oldest = e;
      }
    }
    this.#lock(oldest * INT_STRIDE);
    return this.#claim(oldest, hi, lo, now);
  }

  /** Makes the locked entry `e` this key's, with a full bucket. */
  #claim(e: number, hi: number, lo: number, now: number): number {
    const at = e * INT_STRIDE;
    Atomics.store(this.#i32, at + KEY_HI, hi);
    Atomics.store(this.#i32, at + KEY_LO, lo);
    this.#tat[e] = now;
    Atomics.store(this.#i32, at + USED, 1);
    return e;
  }

  #lock(at: number): void {
    const i32 = this.#i32;
    for (let spins = 0; Atomics.compareExchange(i32, at + LOCK, 0, 1) !== 0; spins++) {
      if (spins >= MAX_SPINS) {
        Atomics.store(i32, at + LOCK, 1);
        return;
      }
    }
  }
}

/** FNV-1a over the key's UTF-16 code units, 32 bits, from `seed`: two seeds make the 64-bit key. */
function hash(key: string, seed: number): number {
  let h = seed;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h | 0;
}
