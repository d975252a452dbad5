/**
 * The routing table: an immutable snapshot of every app's hosts, routes, active generation and mode.
 * The gateway builds a new one on every change (switch, mode, app start/stop, config) and hands it to the
 * proxy, which swaps one pointer. Everything a lookup needs is precomputed here, so a request costs a map
 * get, a few `endsWith`/`startsWith` calls and no regex.
 */
import type { AppConfig, Mode, RouteConfig } from '../config/schema.ts';
import type { GenerationView } from '../supervisor/types.ts';

export interface ModeState {
  mode: Mode;
  message: string | null;
  retryAfter: number | null;
}

/**
 * Why an app with no active generation answers 503 (`X-Berth-Reason`): still starting, or its start
 * failed (first deploy, release, user or `shared` entry). Only the class is public, never the cause.
 */
export type NoGenerationReason = 'no-active-generation' | 'start-failed';

export interface AppEntry {
  readonly name: string;
  readonly config: AppConfig;
  /** Active generation: new requests pin this one. Null while the app has none (starting, or failed). */
  readonly generation: GenerationView | null;
  /**
   * Generations switched away from and still draining (a deploy's old one, until its drain ends): only
   * requests whose affinity cookie names one of their instances go there (affinity.ts). Absent: none.
   */
  readonly draining?: readonly GenerationView[];
  readonly mode: ModeState;
  /**
   * The answer while `generation` is null, set by the gateway when it builds the table so a request
   * only reads it. Absent: `no-active-generation` (starting).
   */
  readonly noGeneration?: NoGenerationReason;
}

export interface RouteMatch {
  readonly app: AppEntry;
  readonly route: RouteConfig;
}

/** One row of `berth routes`. */
export interface RouteRow {
  host: string;
  path: string;
  target: string;
  app: string;
  mode: Mode;
}

/** A route of one host rule, with its match result built once so a lookup returns it without allocating. */
interface RouteEntry {
  readonly prefix: string;
  readonly match: RouteMatch;
}

/** Every route of every app that shares one host pattern, longest prefix first. */
interface HostRule {
  /** As `berth routes` shows it: the exact host, `*.suffix`, or `*` for catch-all. */
  readonly pattern: string;
  readonly routes: RouteEntry[];
}

interface WildcardRule {
  /** `.shop.test` for the pattern `*.shop.test`: a host must end with it and be longer than it. */
  readonly suffix: string;
  readonly rule: HostRule;
}

/** Immutable snapshot, rebuilt by the gateway on every change (switch, mode, app start/stop, config). */
export class RoutingTable {
  readonly apps: readonly AppEntry[];
  #byName: Map<string, AppEntry>;
  #exact = new Map<string, HostRule>();
  /** Longest suffix first, so the most specific wildcard is tried first. */
  #wildcards: WildcardRule[] = [];
  #catchAll: HostRule | null = null;

  constructor(apps: readonly AppEntry[]) {
    this.apps = apps;
    this.#byName = new Map(apps.map((a) => [a.name, a]));
    const wild = new Map<string, HostRule>();
    for (const app of apps) {
      const hosts = app.config.hosts;
      if (hosts.length === 0) {
        this.#catchAll ??= { pattern: '*', routes: [] };
        addRoutes(this.#catchAll, app);
        continue;
      }
      for (const raw of hosts) {
        const pattern = raw.toLowerCase();
        const isWild = pattern.startsWith('*.');
        const rules = isWild ? wild : this.#exact;
        let rule = rules.get(pattern);
        if (!rule) {
          rule = { pattern, routes: [] };
          rules.set(pattern, rule);
        }
        addRoutes(rule, app);
      }
    }
    for (const [pattern, rule] of wild) this.#wildcards.push({ suffix: pattern.slice(1), rule });
    this.#wildcards.sort((a, b) => b.suffix.length - a.suffix.length);
    // Stable sort: among equal prefixes (config validation forbids them across apps) the first app wins.
    for (const rule of this.#rules()) rule.routes.sort((a, b) => b.prefix.length - a.prefix.length);
  }

  /**
   * Finds the route for a request. `host` is the Host header as received (port and case are ignored);
   * `path` is the request target in origin form, query included. Null when nothing matches.
   */
  lookup(host: string, path: string): RouteMatch | null {
    const h = normalizeHost(host);
    const exact = this.#exact.get(h);
    if (exact !== undefined) {
      const m = matchRoutes(exact.routes, path);
      if (m !== null) return m;
    }
    const wild = this.#wildcards;
    for (let i = 0; i < wild.length; i++) {
      const w = wild[i];
      if (h.length > w.suffix.length && h.endsWith(w.suffix)) {
        const m = matchRoutes(w.rule.routes, path);
        if (m !== null) return m;
      }
    }
    return this.#catchAll === null ? null : matchRoutes(this.#catchAll.routes, path);
  }

  /** The app with this name, for the health lane and status. */
  app(name: string): AppEntry | undefined {
    return this.#byName.get(name);
  }

  /** Rows for `berth routes`, in the order a lookup tries them. */
  describe(): RouteRow[] {
    const rows: RouteRow[] = [];
    for (const rule of this.#rules()) {
      for (const { match } of rule.routes) {
        const r = match.route;
        rows.push({
          host: rule.pattern,
          path: r.path,
          target: r.to !== null ? r.to : `static:${r.static}`,
          app: match.app.name,
          mode: match.app.mode.mode,
        });
      }
    }
    return rows;
  }

  *#rules(): Iterable<HostRule> {
    yield* this.#exact.values();
    for (const w of this.#wildcards) yield w.rule;
    if (this.#catchAll) yield this.#catchAll;
  }
}

function addRoutes(rule: HostRule, app: AppEntry): void {
  for (const route of app.config.routes) rule.routes.push({ prefix: route.path, match: { app, route } });
}

/** Longest prefix first, so the first hit is the longest match. */
function matchRoutes(routes: readonly RouteEntry[], path: string): RouteMatch | null {
  for (let i = 0; i < routes.length; i++) {
    const e = routes[i];
    if (prefixMatches(e.prefix, path)) return e.match;
  }
  return null;
}

/**
 * Segment-aware prefix match: `/api` matches `/api`, `/api/x` and `/api?x`, but not `/apix`.
 * `/` matches every origin-form path.
 */
export function prefixMatches(prefix: string, path: string): boolean {
  if (!path.startsWith(prefix)) return false;
  const n = prefix.length;
  if (path.length === n || n === 1) return true;
  const c = path.charCodeAt(n);
  return c === 0x2f /* / */ || c === 0x3f /* ? */;
}

/**
 * The host part of a Host header, lower-cased, without port or trailing dot. `[::1]:8080` gives `[::1]`.
 * Returns the input itself (no allocation) when it is already in that form, which is the common case.
 */
export function normalizeHost(raw: string): string {
  let clean = true;
  const n = raw.length;
  for (let i = 0; i < n; i++) {
    const c = raw.charCodeAt(i);
    if ((c >= 0x41 && c <= 0x5a) || c === 0x3a /* : */) {
      clean = false;
      break;
    }
  }
  if (clean && (n === 0 || raw.charCodeAt(n - 1) !== 0x2e /* . */)) return raw;
  let host = raw;
  if (host.charCodeAt(0) === 0x5b /* [ */) {
    const close = host.indexOf(']');
    if (close > 0) host = host.slice(0, close + 1);
  } else {
    const colon = host.indexOf(':');
    if (colon >= 0) host = host.slice(0, colon);
  }
  if (host.endsWith('.')) host = host.slice(0, -1);
  return host.toLowerCase();
}
