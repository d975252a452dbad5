/**
 * Per-app rate limits: a token bucket per client IP (`rate_limit: {per_ip, burst, paths}`).
 *
 * Each bucket is kept as one number, its "theoretical arrival time" (the GCRA form of a token bucket):
 * a request is admitted when, after adding one emission interval (`per / count`), the bucket is at most
 * `burst` intervals ahead of now. So a fresh client gets exactly `burst` requests at once, then one every
 * interval. A bucket whose time is in the past is full, which is the same as having no bucket: evicting
 * it changes nothing, so idle buckets are dropped freely.
 *
 * Memory is bounded twice: a sweep (every SWEEP_INTERVAL_MS, from the proxy's timer) drops every idle
 * bucket, and a hard cap of `maxBuckets` (default MAX_BUCKETS) per app. At the cap a new client takes the
 * slot of the oldest bucket (the first idle one among the oldest few, else the oldest), which at worst
 * hands that old client a fresh burst: failing open for one client beats failing closed for all new ones.
 *
 * The bound, measured by test/proxy/rate-limit.test.ts: 100,000 distinct IPs through one app's limiter
 * leave at most MAX_BUCKETS (50,000) buckets, about 115 bytes each with their Map entry and key string
 * (5.4 MB measured per rate-limited app at the cap; the test asserts under 16 MB). Buckets live in a
 * Float64Array indexed from a Map of small integers, so a request allocates nothing once its client has
 * a bucket.
 *
 * IPv6 clients are bucketed by their /64 prefix: one host usually owns a whole /64 and could otherwise
 * start a fresh bucket with every address in it.
 */
import type { RateLimitConfig } from '../config/schema.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { prefixMatches } from './router.ts';
import { UNIX_PEER } from './client-ip.ts';
import { SharedBuckets } from './shared-buckets.ts';

/** Most buckets one app's limiter keeps (see the bound above). */
export const MAX_BUCKETS = 50_000;
/** How often the proxy sweeps idle buckets away. */
export const SWEEP_INTERVAL_MS = 10_000;
/** Buckets looked at, oldest first, for an idle one to evict when the cap is reached. */
const EVICT_SCAN = 8;
/** Float rounding slack when comparing times, in ms. */
const EPSILON_MS = 1e-6;
const INITIAL_CAPACITY = 1024;

export interface RateLimitOptions {
  /** The hard cap on buckets (default MAX_BUCKETS). */
  maxBuckets?: number;
  /**
   * A table shared by every proxy thread (`proxy.workers` above 1; shared-buckets.ts): the buckets live
   * there, so a client is counted once whichever thread it reaches. Default: buckets of its own.
   */
  shared?: SharedArrayBuffer | null;
}

export class RateLimit {
  readonly app: string;
  readonly maxBuckets: number;
  /** Path prefixes the limit applies to; empty: every path. */
  #paths: string[] = [];
  /** ms between tokens: `per / count`. */
  #interval = 0;
  /** How far ahead of now a bucket may run: `burst` intervals. */
  #tolerance = 0;
  #burst = 0;
  /** client key -> slot in #tat. Insertion order is creation order, which eviction relies on. */
  #slots = new Map<string, number>();
  /** Theoretical arrival time per slot, in performance.now() ms. */
  #tat = new Float64Array(0);
  #free: number[] = [];
  /** Slots handed out so far (the high-water mark of #tat). */
  #used = 0;
  #shared: SharedBuckets | null;

  constructor(app: string, config: RateLimitConfig, opts: RateLimitOptions = {}) {
    this.app = app;
    this.#shared = opts.shared ? new SharedBuckets(opts.shared) : null;
    this.maxBuckets = opts.maxBuckets ?? MAX_BUCKETS;
    if (!(this.maxBuckets >= 1)) throw new BerthError(ErrorCodes.internal, `maxBuckets must be at least 1, got ${this.maxBuckets}`);
    this.configure(config);
  }

  /** Buckets held now. */
  get size(): number {
    return this.#slots.size;
  }

  /** Applies a reloaded config; buckets are kept, measured against the new rate from now on. */
  configure(config: RateLimitConfig): void {
    this.#interval = config.perMs / config.count;
    this.#burst = config.burst;
    this.#tolerance = config.burst * this.#interval;
    this.#paths = config.paths.slice();
  }

  /** Whether the config is the one this limiter runs with (so the proxy only reconfigures on change). */
  matches(config: RateLimitConfig): boolean {
    if (config.perMs / config.count !== this.#interval || config.burst !== this.#burst || config.paths.length !== this.#paths.length) return false;
    for (let i = 0; i < config.paths.length; i++) if (config.paths[i] !== this.#paths[i]) return false;
    return true;
  }

  /** Whether the limit covers this origin-form path (query included; `paths` are segment prefixes). */
  applies(path: string): boolean {
    const paths = this.#paths;
    if (paths.length === 0) return true;
    for (let i = 0; i < paths.length; i++) if (prefixMatches(paths[i], path)) return true;
    return false;
  }

  /**
   * Takes a token for `ip` at `now` (performance.now() ms). Returns 0 when the request may go on, else
   * the ms until it would be admitted (for Retry-After). A refused request takes nothing.
   */
  take(ip: string, now: number): number {
    const key = clientKey(ip);
    // Shared between threads, whose performance.now() clocks start apart: on the epoch instead.
    if (this.#shared !== null) return this.#shared.take(key, performance.timeOrigin + now, this.#interval, this.#tolerance, EPSILON_MS);
    let slot = this.#slots.get(key);
    if (slot === undefined) {
      slot = this.#alloc(now);
      this.#slots.set(key, slot);
      this.#tat[slot] = now;
    }
    const tat = this.#tat[slot];
    const next = (tat > now ? tat : now) + this.#interval;
    const over = next - now - this.#tolerance;
    if (over > EPSILON_MS) return over;
    this.#tat[slot] = next;
    return 0;
  }

  /** Drops every idle (full) bucket; returns how many went. Called from the proxy's coarse timer. */
  sweep(now: number): number {
    let n = 0;
    for (const [key, slot] of this.#slots) {
      if (this.#tat[slot] <= now) {
        this.#slots.delete(key);
        this.#free.push(slot);
        n++;
      }
    }
    return n;
  }

  #alloc(now: number): number {
    const free = this.#free.pop();
    if (free !== undefined) return free;
    if (this.#used < this.maxBuckets) {
      if (this.#used === this.#tat.length) this.#grow();
      return this.#used++;
    }
    return this.#evict(now);
  }

  #grow(): void {
    const size = Math.min(this.maxBuckets, Math.max(INITIAL_CAPACITY, this.#tat.length * 2));
    const next = new Float64Array(size);
    next.set(this.#tat);
    this.#tat = next;
  }

  /** At the cap: frees the first idle bucket among the oldest few, else the oldest one. */
  #evict(now: number): number {
    let victim: string | null = null;
    let i = 0;
    for (const [key, slot] of this.#slots) {
      victim ??= key;
      if (this.#tat[slot] <= now) {
        victim = key;
        break;
      }
      if (++i >= EVICT_SCAN) break;
    }
    const slot = this.#slots.get(victim!)!;
    this.#slots.delete(victim!);
    return slot;
  }
}

/**
 * The bucket key of a client address: IPv4 (and anything that is not IPv6) as is, IPv6 by its /64.
 * Allocates only for IPv6.
 */
export function clientKey(ip: string): string {
  if (ip.indexOf(':') < 0 || ip === UNIX_PEER || ip.indexOf('.') >= 0) return ip;
  const zone = ip.indexOf('%');
  const addr = zone >= 0 ? ip.slice(0, zone) : ip;
  const gap = addr.indexOf('::');
  let groups: string[];
  if (gap >= 0) {
    if (addr.indexOf('::', gap + 1) >= 0) return ip;
    const head = gap === 0 ? [] : addr.slice(0, gap).split(':');
    const tail = gap + 2 === addr.length ? [] : addr.slice(gap + 2).split(':');
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return ip;
    groups = head.concat(new Array<string>(missing).fill('0'), tail);
  } else {
    groups = addr.split(':');
    if (groups.length !== 8) return ip;
  }
  let out = '';
  for (let i = 0; i < 4; i++) {
    const g = groups[i];
    if (g.length === 0 || g.length > 4 || !/^[0-9a-f]+$/i.test(g)) return ip;
    out += (i === 0 ? '' : ':') + parseInt(g, 16).toString(16);
  }
  return out + '::/64';
}
