/**
 * Session affinity (`routes[].affinity`): which instance of a route's pool a request goes to, so that a
 * client's requests keep reaching the instance that holds its session (socket.io's long polling, an app
 * that keeps sessions in memory), as nginx's `ip_hash` and Passenger's sticky sessions do.
 *
 * - `cookie`: a response names its instance in a cookie (`berth_affinity`, Path the route's path,
 *   HttpOnly, SameSite=Lax, Secure over TLS). The value is opaque and signed: 22 base64url characters
 *   (132 bits) of HMAC-SHA256 over the generation, release, process type and index, under the state
 *   dir's key (affinity-key.ts). A request carrying one goes to the instance it names, in the active
 *   generation or in a generation still draining after a deploy (until its drain ends: the deployer
 *   takes it out of the table). A value that names no instance of the route's pool (forged, badly
 *   signed, from a generation that is gone) is a miss: the request goes where load sends it and gets a
 *   new cookie. So a cookie can only ever pick an instance of the pool, and never fails a request.
 * - `ip`, `header:<name>`, `query:<name>`: a rendezvous (highest random weight) hash of the client IP,
 *   the header's value or the parameter's raw value over the active generation's pool: each instance
 *   weighs the key by a hash of it and of the instance's index, and the heaviest ready one takes it. So
 *   adding or removing an instance moves only the keys it gains or loses, and after a deploy a key goes
 *   to the same index in the new generation. No value: placed by load.
 *
 * An affine request waits for its own instance's slot (admission.ts), within the queue timeout, rather
 * than going elsewhere. Outcomes, in the access log's `affinity` and berth_affinity_requests_total:
 * - hit: it went to the instance its affinity names;
 * - miss: it carried no affinity berth could follow (none yet, or a cookie naming nothing of the pool),
 *   so load placed it (with `cookie`, its response sets the cookie);
 * - repin: its affinity named an instance that was not ready (unhealthy, restarting, stopping, or gone
 *   while it waited), so it went to another: for the app, a new session.
 *
 * Everything a request needs is worked out once per pool and kept (cookie values, hash seeds), rebuilt
 * when the pool's instance list changes (the pool replaces it on every change); a request costs a scan
 * of its Cookie header and a map lookup, or one string hash and one mix per instance.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { RouteAffinity } from '../config/schema.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import type { GenerationView, PoolView, Upstream } from '../supervisor/types.ts';
import { AFFINITY_KEY_BYTES, loadAffinityKey } from './affinity-key.ts';
import type { AppEntry, RoutingTable } from './router.ts';

export type AffinityOutcome = 'hit' | 'miss' | 'repin';

/** Every outcome, in the order metrics list them. */
export const AFFINITY_OUTCOMES: readonly AffinityOutcome[] = ['hit', 'miss', 'repin'];

/** The cookie's name. */
export const AFFINITY_COOKIE = 'berth_affinity';
const COOKIE_PREFIX = `${AFFINITY_COOKIE}=`;
/** Characters of the base64url HMAC a cookie value keeps: 132 bits. */
const TOKEN_LENGTH = 22;

/** Where `place` writes its answer: resolver.ts's Resolution has these fields (no allocation per request). */
export interface AffinityTarget {
  /** In: the active generation and the route's pool in it. Out: where the request is pinned. */
  generation: GenerationView | null;
  pool: PoolView | null;
  affinity: AffinityOutcome | null;
  /** The instance the request waits for; null: any of its pool. */
  affine: Upstream | null;
  /** `cookie`: the instance the request's cookie validly names, ready or not; null: none. */
  cookieNamed: Upstream | null;
}

/** One pool's cookie values, made for one instance list of it. */
interface CookieKeys {
  instances: readonly Upstream[];
  byValue: Map<string, Upstream>;
  /** Kept across rebuilds: an instance's value never changes. */
  values: Map<Upstream, string>;
}

/** One pool's rendezvous seeds, one per instance of `instances`, in its order. */
interface HashSeeds {
  instances: readonly Upstream[];
  seeds: Uint32Array;
}

/** One per proxy (thread): places affine requests, and names instances in cookies. */
export class Affinity {
  #stateDir: string;
  #log: Logger;
  #key: Buffer | null = null;
  #cookies = new WeakMap<PoolView, CookieKeys>();
  #seeds = new WeakMap<PoolView, HashSeeds>();

  constructor(stateDir: string, log: Logger) {
    this.#stateDir = stateDir;
    this.#log = log;
  }

  /**
   * A new routing table: when a route in it has cookie affinity, the signing key is read (or made) now,
   * off the request path. A key that cannot be read or made is said once, and cookies are then signed
   * with a key of this thread's own until a restart: they still route, but no other thread and no later
   * gateway knows them (a miss each, never an error).
   */
  prepare(table: RoutingTable): void {
    if (this.#key !== null) return;
    for (const app of table.apps) {
      if (app.config.routes.some((route) => route.affinity?.by === 'cookie')) {
        this.#loadKey();
        return;
      }
    }
  }

  /**
   * Places a request of a route with `affinity` (SPEC § Request handling, step 6). `t` holds the active
   * generation and the route's pool in it; a cookie naming an instance of a draining generation moves
   * it there. `path` is the origin-form target (query included), `clientIp` as rate limits use it.
   */
  place(t: AffinityTarget, req: IncomingMessage, app: AppEntry, affinity: RouteAffinity, process: string, clientIp: string, path: string): void {
    t.affine = null;
    t.cookieNamed = null;
    if (affinity.by === 'cookie') {
      this.#byCookie(t, req.headers.cookie, app, process);
      return;
    }
    const key = affinity.by === 'ip' ? clientIp : affinity.by === 'header' ? headerValue(req.headers[affinity.name]) : queryValue(path, affinity.name);
    if (key === '') t.affinity = 'miss';
    else this.#byHash(t, key);
  }

  /**
   * The Set-Cookie value naming `upstream`, an instance of `pool` in `generation`, for a response of a
   * route at `path` (the cookie's Path) that arrived over TLS or not (Secure).
   */
  cookie(generation: GenerationView, pool: PoolView, upstream: Upstream, path: string, tls: boolean): string {
    const keys = this.#cookieKeys(generation, pool);
    let value = keys.values.get(upstream);
    if (value === undefined) {
      value = this.#value(generation, upstream);
      keys.values.set(upstream, value);
    }
    // A route path may hold `;` (or bytes a header cannot), which would end the attribute: `/` then.
    const scope = COOKIE_PATH_RE.test(path) ? path : '/';
    return `${COOKIE_PREFIX}${value}; Path=${scope}; HttpOnly; SameSite=Lax${tls ? '; Secure' : ''}`;
  }

  // ---- cookie --------------------------------------------------------------------------------------

  #byCookie(t: AffinityTarget, header: string | undefined, app: AppEntry, process: string): void {
    t.affinity = 'miss';
    if (header === undefined) return;
    const active = t.generation!;
    const pool = t.pool!;
    // A browser may send several (one per Path that matches, or a stale one beside a fresh one): the
    // first that names an instance of this route's pool counts.
    for (let at = cookieValueStart(header, 0); at >= 0; at = cookieValueStart(header, at)) {
      let end = header.indexOf(';', at);
      if (end < 0) end = header.length;
      const value = cookieValue(header, at, end);
      at = end;
      if (value.length !== TOKEN_LENGTH) continue;
      let named = this.#cookieKeys(active, pool).byValue.get(value);
      let generation = active;
      let namedPool = pool;
      if (named === undefined && app.draining !== undefined) {
        for (const g of app.draining) {
          const p = g.pools.get(process);
          if (p === undefined || g.state === 'stopping' || g.state === 'stopped') continue;
          named = this.#cookieKeys(g, p).byValue.get(value);
          if (named !== undefined) {
            generation = g;
            namedPool = p;
            break;
          }
        }
      }
      if (named === undefined) continue;
      t.cookieNamed = named;
      if (named.state === 'ready' && named.address !== null) {
        t.affinity = 'hit';
        t.affine = named;
        t.generation = generation;
        t.pool = namedPool;
      } else t.affinity = 'repin';
      return;
    }
  }

  #cookieKeys(generation: GenerationView, pool: PoolView): CookieKeys {
    const known = this.#cookies.get(pool);
    const instances = pool.instances;
    if (known !== undefined && known.instances === instances) return known;
    const values = known?.values ?? new Map<Upstream, string>();
    const byValue = new Map<string, Upstream>();
    for (const inst of instances) {
      let value = values.get(inst);
      if (value === undefined) {
        value = this.#value(generation, inst);
        values.set(inst, value);
      }
      byValue.set(value, inst);
    }
    // Instances that left the pool (replaced, scaled down) are forgotten with it.
    for (const inst of values.keys()) if (!instances.includes(inst)) values.delete(inst);
    const keys = { instances, byValue, values };
    this.#cookies.set(pool, keys);
    return keys;
  }

  /** The cookie value naming an instance: what no one without the key can make for another one. */
  #value(generation: GenerationView, inst: Upstream): string {
    const mac = createHmac('sha256', this.#key ?? this.#loadKey());
    mac.update(`${generation.id}\n${generation.releaseId}\n${inst.process}\n${inst.index}`);
    return mac.digest('base64url').slice(0, TOKEN_LENGTH);
  }

  #loadKey(): Buffer {
    try {
      this.#key = loadAffinityKey(this.#stateDir);
    } catch (err) {
      this.#log.error({ err: errorMessage(err) }, 'affinity cookies are signed with a key of this thread only: other threads and later gateways will not know them');
      this.#key = randomBytes(AFFINITY_KEY_BYTES);
    }
    return this.#key;
  }

  // ---- hash ----------------------------------------------------------------------------------------

  #byHash(t: AffinityTarget, key: string): void {
    const pool = t.pool!;
    const seeds = this.#hashSeeds(pool);
    const list = seeds.instances;
    const h = hashString(key);
    let top = -1;
    let topWeight = -1;
    let best = -1;
    let bestWeight = -1;
    for (let i = 0; i < list.length; i++) {
      const w = weight(h, seeds.seeds[i]);
      if (w > topWeight) {
        top = i;
        topWeight = w;
      }
      const inst = list[i];
      if (w > bestWeight && inst.state === 'ready' && inst.address !== null) {
        best = i;
        bestWeight = w;
      }
    }
    // The key's own instance is not ready: the heaviest ready one takes it (where it goes again while
    // its own is out); with none ready, it waits for an instance like any request.
    t.affinity = best >= 0 && best === top ? 'hit' : 'repin';
    t.affine = best < 0 ? null : list[best];
  }

  #hashSeeds(pool: PoolView): HashSeeds {
    const known = this.#seeds.get(pool);
    const instances = pool.instances;
    if (known !== undefined && known.instances === instances) return known;
    const seeds = new Uint32Array(instances.length);
    // The index, not the instance: a replacement, and the same index in the next generation, keep the keys.
    for (let i = 0; i < instances.length; i++) seeds[i] = hashString(`${pool.process}/${instances[i].index}`);
    const made = { instances, seeds };
    this.#seeds.set(pool, made);
    return made;
  }
}

/** Adds a Set-Cookie to a parsed response header object (undici's), after the app's own. */
export function addSetCookie(headers: IncomingHttpHeaders, cookie: string): void {
  const had = headers['set-cookie'] as string | string[] | undefined;
  headers['set-cookie'] = had === undefined ? [cookie] : Array.isArray(had) ? [...had, cookie] : [had, cookie];
}

/** A cookie Path attribute value that needs no care: printable ASCII without `;`. */
const COOKIE_PATH_RE = /^\/[\x21-\x3a\x3c-\x7e]*$/;

/**
 * Where the value of the next `berth_affinity` cookie in a Cookie header starts, searching from `from`;
 * -1 when there is none. A name counts only at the start of a cookie pair (`other_berth_affinity=` does not).
 */
function cookieValueStart(header: string, from: number): number {
  for (let i = header.indexOf(COOKIE_PREFIX, from); i >= 0; i = header.indexOf(COOKIE_PREFIX, i + 1)) {
    let j = i - 1;
    while (j >= 0 && (header.charCodeAt(j) === 0x20 || header.charCodeAt(j) === 0x09)) j--;
    if (j < 0 || header.charCodeAt(j) === 0x3b /* ; */ || header.charCodeAt(j) === 0x2c /* , (joined headers) */) return i + COOKIE_PREFIX.length;
  }
  return -1;
}

/** A cookie value between `start` and `end`, without surrounding whitespace or DQUOTEs (RFC 6265 § 4.1.1). */
function cookieValue(header: string, start: number, end: number): string {
  while (start < end && header.charCodeAt(start) === 0x20) start++;
  while (end > start && (header.charCodeAt(end - 1) === 0x20 || header.charCodeAt(end - 1) === 0x09)) end--;
  if (end - start >= 2 && header.charCodeAt(start) === 0x22 && header.charCodeAt(end - 1) === 0x22) {
    start++;
    end--;
  }
  return header.slice(start, end);
}

/** A request header's value as one string ('' when absent). */
function headerValue(value: string | string[] | undefined): string {
  if (value === undefined) return '';
  return typeof value === 'string' ? value : value.join(', ');
}

/** The raw value of the query parameter `name` (its first occurrence) in an origin-form target; '' when absent. */
export function queryValue(path: string, name: string): string {
  const q = path.indexOf('?');
  if (q < 0) return '';
  const n = name.length;
  for (let i = q + 1; i < path.length; ) {
    let end = path.indexOf('&', i);
    if (end < 0) end = path.length;
    if (path.startsWith(name, i) && (i + n === end || path.charCodeAt(i + n) === 0x3d /* = */)) return i + n === end ? '' : path.slice(i + n + 1, end);
    i = end + 1;
  }
  return '';
}

/** FNV-1a over the string's UTF-16 code units, finished with murmur3's mix: 32 well-spread bits. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return mix(h);
}

/** A key's weight at an instance: the key's hash and the instance's seed mixed. */
function weight(key: number, seed: number): number {
  return mix(key ^ seed);
}

/** murmur3's 32-bit finaliser: every input bit moves about half of the output bits. */
function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
