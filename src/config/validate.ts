/**
 * Config validation: the raw merged object (the YAML file, then the chosen `environments` section, then
 * `BERTH_*` overrides; load.ts does the merging) becomes the normalised BerthConfig of schema.ts, or every
 * problem is reported at once as `dotted.key.path: message`.
 *
 * Rules, beyond SPEC § "Config file":
 * - A key set to null (`key:` or `key: ~`) counts as not set, so its default applies; a required key
 *   still fails. An empty file is an empty mapping: every default applies.
 * - Unknown keys are errors at every level, `environments.<name>.*` included.
 * - Every list of strings (listen, hosts, shared, roles, regex lists, ...) also accepts one bare string.
 * - Names: apps match `^[a-z0-9][a-z0-9_-]*$`; process types, schedule entries and `scale` keys match
 *   `^[A-Za-z0-9_-]+$`; `env` keys are environment variable names.
 * - Paths: `state_dir`, `health_file` and app `source` are relative to the config file's directory;
 *   `control.socket` and relative `unix:` listen paths are relative to `state_dir`. A `source` with `://`,
 *   starting with `git@`, is kept as written; one with a `#ref` suffix keeps the ref and has its path part
 *   resolved. `static` directories, `pages` and `shared` are relative paths inside the release: no
 *   absolute paths and no `..` segments. `reload_trigger` is a plain file name.
 * - `listen` names at least one address: `host:port`, `[v6]:port` or `unix:path`; port 0 means "any
 *   free port". `control.listen` is `host:port` or `[v6]:port`.
 * - Durations must be greater than 0.
 * - Process types: `http` defaults to true for `web` and for every route target, else false;
 *   `http: false` on a route target is an error. `concurrency` is forced to 1 on non-http types, and
 *   `heartbeat_timeout` on an http type is an error.
 * - `processes`, when present, must declare at least one type; leave it out to use the release's Procfile.
 *   `scale` only applies to Procfile apps: with `processes`, set `instances` instead.
 * - Routes: `cache` and `cors` only apply to static routes. Without `routes`, an app that has (or, as a
 *   Procfile app, may have) a `web` type gets `/ -> web`; any other app gets no routes.
 * - Hosts are lower-cased names without a port, or `*.suffix` wildcards, listed once each.
 * - `control.call_context_header` and token hashes are lower-cased (both compare case-insensitively).
 * - App `env` values: strings, numbers and booleans become strings; null becomes "".
 * - A Procfile app's DB budget cannot be checked at load time: its process types are only known per
 *   release.
 */
import { isIP } from 'node:net';
import { dirname, isAbsolute, posix, resolve } from 'node:path';
import { Cron } from 'croner';
import { ConfigError, type ConfigProblem } from '../lib/errors.ts';
import { formatDuration, parseDuration } from '../lib/durations.ts';
import { parseSize } from '../lib/sizes.ts';
import { LOGGER_NAMES, type LogLevel } from '../lib/logger.ts';
import {
  DEFAULT_APP_LISTEN,
  DEFAULT_BODY_TIMEOUT_MS,
  DEFAULT_BUFFER_MEMORY_BYTES,
  DEFAULT_CALL_CONTEXT_FROM,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_RELEASE_BYTES,
  DEFAULT_MAX_RELEASE_FILES,
  DEFAULT_SEND_TIMEOUT_MS,
  DEFAULT_USER,
  DEFAULT_WEBSOCKETS_MAX,
  MAX_TIMER_MS,
  DEFAULT_CACHE_FLUSH_CONCURRENCY,
  DEFAULT_CACHE_FLUSH_METHOD,
  DEFAULT_CACHE_FLUSH_PROVIDER,
  DEFAULT_CLEANUP_CRON,
  DEFAULT_CONCURRENCY,
  DEFAULT_CONTROL_SOCKET,
  DEFAULT_HEALTH_INTERVAL_MS,
  DEFAULT_HEALTH_STARTUP_TIMEOUT_MS,
  DEFAULT_HEALTH_TIMEOUT_MS,
  DEFAULT_HEALTH_UNHEALTHY_AFTER,
  DEFAULT_HISTORY_RETENTION_MS,
  DEFAULT_INSTANCES,
  DEFAULT_INTERNAL_PREFIX,
  DEFAULT_KEEP_RELEASES,
  DEFAULT_LISTEN,
  DEFAULT_MIGRATIONS,
  DEFAULT_QUEUE_MAX,
  DEFAULT_QUEUE_TIMEOUT_MS,
  DEFAULT_SCHEDULE_OVERLAP,
  DEFAULT_SCHEDULE_TIMEOUT_MS,
  DEFAULT_SCHEDULER_DELAY_MS,
  DEFAULT_STATE_DIR,
  DEFAULT_TIMEOUT_DRAIN_MS,
  DEFAULT_TIMEOUT_HEADERS_MS,
  DEFAULT_TIMEOUT_STOP_MS,
  DEFAULT_TRUSTED_PROXY_COUNT,
  ROLES,
  type AppConfig,
  type BerthConfig,
  type BufferingConfig,
  type WebSocketsConfig,
  type CacheFlushConfig,
  type ControlConfig,
  type HealthConfig,
  type ListenAddress,
  type ProcessConfig,
  type RateLimitConfig,
  type Role,
  type RouteConfig,
  type ScheduleConfig,
  type TokenConfig,
} from './schema.ts';

/** A key path: mapping keys and list indexes, printed joined by dots. */
export type KeyPath = readonly (string | number)[];

/** One problem, with its path as segments so callers can re-attribute it (load.ts does, for environments). */
export interface ConfigIssue {
  at: KeyPath;
  message: string;
  /** True for a key the schema does not know. */
  unknownKey: boolean;
}

/** The keys allowed at the top level of a config file (besides `environments`, which load.ts consumes). */
export const TOP_LEVEL_KEYS = [
  'state_dir',
  'listen',
  'control',
  'trusted_proxy_count',
  'internal_prefix',
  'log_levels',
  'database',
  'migrations',
  'reset_state',
  'history_retention',
  'cleanup_cron',
  'scheduler_delay',
  'health_file',
  'metrics_public',
  'underscores_in_headers',
  'public_details',
  'default_user',
  'apps',
] as const;

export const APP_NAME_RE = /^[a-z0-9][a-z0-9_-]*$/;
export const PROCESS_NAME_RE = /^[A-Za-z0-9_-]+$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HOST_LABEL = '[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?';
const HOST_RE = new RegExp(`^(?:\\*\\.)?${HOST_LABEL}(?:\\.${HOST_LABEL})*$`);
const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const TOKEN_HASH_RE = /^sha256:[0-9a-fA-F]{64}$/;
const HTTP_METHOD_RE = /^[A-Za-z]+$/;
const PORT_RE = /^\d{1,5}$/;
/** An OS user or group name (POSIX portable names, as useradd accepts them), or a numeric id. */
const OS_NAME_RE = /^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|\d{1,10})$/;
const RATE_RE = /^(\d+)\s*\/\s*(s|m|h)$/;
const RATE_UNIT_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000 };
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const MIGRATIONS = ['upgrade', 'none', 'model'] as const;

/** Pure: raw merged object -> normalised BerthConfig, or throws ConfigError with every problem. */
export function normaliseConfig(raw: unknown, ctx: { file: string; environment: string | null }): BerthConfig {
  const { config, issues } = checkConfig(raw, ctx);
  if (issues.length > 0) throw new ConfigError(issues.map(toProblem));
  return config;
}

/**
 * The work of normaliseConfig without the throw: always returns a config (bad values replaced by their
 * defaults) and the issues found. The config is only meaningful when `issues` is empty.
 */
export function checkConfig(raw: unknown, ctx: { file: string; environment: string | null }): { config: BerthConfig; issues: ConfigIssue[] } {
  const c = new Checker();
  const dir = dirname(ctx.file);
  let rawTop: Record<string, unknown> = {};
  if (isMapping(raw)) rawTop = raw;
  else if (raw !== null && raw !== undefined) c.problem([], `the top level must be a mapping of keys, got ${show(raw)}`);
  const top = new Fields(c, rawTop, []);

  const stateDir = resolve(dir, top.string('state_dir') ?? DEFAULT_STATE_DIR);
  const listen = checkListen(c, top, stateDir);
  const control = checkControl(c, top.fields('control'), stateDir);
  const trustedProxyCount = top.int('trusted_proxy_count', 0) ?? DEFAULT_TRUSTED_PROXY_COUNT;
  const internalPrefix = checkInternalPrefix(c, top);
  const logLevels = checkLogLevels(c, top);
  const database = checkDatabase(c, top);
  const migrations = top.choice('migrations', MIGRATIONS) ?? DEFAULT_MIGRATIONS;
  const resetState = top.bool('reset_state') ?? false;
  // A cut-off for cleanup queries, not a timer: longer than Node's timer limit is fine.
  const historyRetentionMs = top.duration('history_retention', false, Number.MAX_SAFE_INTEGER) ?? DEFAULT_HISTORY_RETENTION_MS;
  const cleanupCron = top.cron('cleanup_cron') ?? DEFAULT_CLEANUP_CRON;
  // 0 is allowed: run schedules from the first tick (tests, and hosts that never restart mid-minute).
  const schedulerDelayMs = top.duration('scheduler_delay', true) ?? DEFAULT_SCHEDULER_DELAY_MS;
  const healthFileText = top.string('health_file');
  const healthFile = healthFileText === undefined ? null : resolve(dir, healthFileText);
  const metricsPublic = top.bool('metrics_public') ?? false;
  const underscoresInHeaders = top.bool('underscores_in_headers') ?? false;
  const publicDetails = top.bool('public_details') ?? false;
  const defaultUser = top.osName('default_user') ?? DEFAULT_USER;

  const apps: Record<string, AppConfig> = {};
  const explicitRoutes = new Set<string>();
  for (const [name, value] of top.entries('apps')) {
    const at = ['apps', name];
    if (!APP_NAME_RE.test(name)) c.problem(at, `app names must match ${APP_NAME_RE.source}, got ${show(name)}`);
    put(apps, name, checkApp(c, name, value, at, dir));
    if (isMapping(value) && value.routes !== undefined && value.routes !== null) explicitRoutes.add(name);
  }
  checkOverlaps(c, apps, explicitRoutes);
  top.done();

  const config: BerthConfig = {
    file: ctx.file,
    environment: ctx.environment,
    stateDir,
    listen,
    control,
    trustedProxyCount,
    internalPrefix,
    logLevels,
    database,
    migrations,
    resetState,
    historyRetentionMs,
    cleanupCron,
    schedulerDelayMs,
    healthFile,
    metricsPublic,
    underscoresInHeaders,
    publicDetails,
    defaultUser,
    apps,
  };
  return { config, issues: inDocumentOrder(c.issues, raw) };
}

/**
 * Issues sorted the way the keys appear in the file, so a long list reads top to bottom. Issues about
 * a missing key go after the keys that are there; otherwise the order found is kept (the sort is stable).
 */
function inDocumentOrder(issues: ConfigIssue[], raw: unknown): ConfigIssue[] {
  const position = (at: KeyPath): number[] => {
    const out: number[] = [];
    let node: unknown = raw;
    for (const key of at) {
      if (Array.isArray(node) && typeof key === 'number') {
        out.push(key);
        node = node[key];
      } else if (isMapping(node) && Object.hasOwn(node, String(key))) {
        out.push(Object.keys(node).indexOf(String(key)));
        node = node[String(key)];
      } else {
        out.push(Number.MAX_SAFE_INTEGER);
        node = undefined;
      }
    }
    return out;
  };
  const keyed = issues.map((issue) => ({ issue, pos: position(issue.at) }));
  keyed.sort((a, b) => {
    for (let i = 0; i < Math.min(a.pos.length, b.pos.length); i++) if (a.pos[i] !== b.pos[i]) return a.pos[i] - b.pos[i];
    return a.pos.length - b.pos.length;
  });
  return keyed.map((k) => k.issue);
}

/** A ConfigIssue as the ConfigProblem that ConfigError carries. */
export function toProblem(issue: ConfigIssue): ConfigProblem {
  return { path: issue.at.join('.'), message: issue.message };
}

/**
 * Parses one listener address: `host:port`, `[v6]:port` or `unix:path` (relative to `stateDir`).
 * Returns an error message instead when the text is not an address.
 */
export function parseListenAddress(text: string, stateDir: string): ListenAddress | string {
  const expected = `expected "host:port", "[v6]:port" or "unix:/path", got ${show(text)}`;
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (path === '') return expected;
    return { kind: 'unix', path: resolve(stateDir, path), text };
  }
  const colon = text.lastIndexOf(':');
  if (colon <= 0) return expected;
  let host = text.slice(0, colon);
  const portText = text.slice(colon + 1);
  if (host.startsWith('[')) {
    if (!host.endsWith(']') || host.length < 3) return expected;
    host = host.slice(1, -1);
  } else if (host.includes(':') || host.includes('[') || host.includes(']')) {
    return expected;
  }
  if (/\s/.test(host)) return expected;
  if (!PORT_RE.test(portText) || Number(portText) > 65_535) return `expected a port from 0 to 65535 in ${show(text)}`;
  return { kind: 'tcp', host, port: Number(portText), text };
}

// ---- sections ---------------------------------------------------------------------------------

function checkListen(c: Checker, top: Fields, stateDir: string): ListenAddress[] {
  const texts = top.strings('listen');
  if (texts === undefined) return DEFAULT_LISTEN.map((t) => parseListenAddress(t, stateDir) as ListenAddress);
  if (texts.length === 0) c.problem(top.path('listen'), 'expected at least one address to listen on');
  const out: ListenAddress[] = [];
  texts.forEach((text, i) => {
    const at = top.listItemPath('listen', i);
    const addr = parseListenAddress(text, stateDir);
    if (typeof addr === 'string') c.problem(at, addr);
    else out.push(addr);
  });
  return out;
}

function checkControl(c: Checker, f: Fields, stateDir: string): ControlConfig {
  const socket = resolve(stateDir, f.string('socket') ?? DEFAULT_CONTROL_SOCKET);
  const socketGroup = f.string('socket_group') ?? null;
  let listen: ListenAddress | null = null;
  const listenText = f.string('listen');
  if (listenText !== undefined) {
    const addr = parseListenAddress(listenText, stateDir);
    if (typeof addr === 'string') c.problem(f.path('listen'), addr);
    else if (addr.kind === 'unix') c.problem(f.path('listen'), `expected "host:port" or "[v6]:port" (the control socket is set by control.socket), got ${show(listenText)}`);
    else listen = addr;
  }
  const tokens: Record<string, TokenConfig> = {};
  for (const [user, value] of f.entries('tokens')) {
    const t = c.fields(value, [...f.path('tokens'), user]);
    const hash = t.raw('hash');
    let hashOk: string | undefined;
    if (hash === undefined) c.problem(t.path('hash'), 'required');
    // The value is not echoed: a raw token pasted here by mistake must not end up in logs.
    else if (typeof hash !== 'string' || !TOKEN_HASH_RE.test(hash)) c.problem(t.path('hash'), `expected "sha256:" followed by 64 hex digits (the SHA-256 of the token), got ${describeSecret(hash)}`);
    else hashOk = hash.toLowerCase();
    t.take('hash');
    const roles = t.strings('roles') ?? [];
    if (t.raw('roles') === undefined) c.problem(t.path('roles'), `required: a list of ${ROLES.join(', ')}`);
    else if (roles.length === 0) c.problem(t.path('roles'), `expected at least one of ${ROLES.join(', ')}`);
    roles.forEach((role, i) => {
      if (!ROLES.includes(role as Role)) c.problem([...t.path('roles'), i], `expected one of ${ROLES.join(', ')}, got ${show(role)}`);
    });
    t.done();
    put(tokens, user, { hash: hashOk ?? '', roles: roles.filter((r) => ROLES.includes(r as Role)) as Role[] });
  }
  let callContextHeader: string | null = null;
  const header = f.string('call_context_header');
  if (header !== undefined) {
    if (!HEADER_NAME_RE.test(header)) c.problem(f.path('call_context_header'), `expected an HTTP header name, got ${show(header)}`);
    else callContextHeader = header.toLowerCase();
  }
  const permissions: Record<string, Record<string, string[]>> = {};
  for (const [env, value] of f.entries('permissions')) {
    const byUser: Record<string, string[]> = {};
    const seen = new Map<string, string>();
    for (const [user, list] of c.fields(value, [...f.path('permissions'), env]).allEntries()) {
      // Users match case-insensitively (a call context may name `Alice`), so one spelling per user.
      const other = seen.get(user.toLowerCase());
      if (other !== undefined) c.problem([...f.path('permissions'), env, user], `names the same user as ${show(other)} (user names match in any case): keep one entry`);
      seen.set(user.toLowerCase(), user);
      put(byUser, user, c.regexList(list, [...f.path('permissions'), env, user]));
    }
    put(permissions, env, byUser);
  }
  const permissionsUnenforcedOk = f.bool('permissions_unenforced_ok') ?? false;
  const callContextFrom = checkAddressBlocks(c, f, 'call_context_from') ?? [...DEFAULT_CALL_CONTEXT_FROM];
  f.done();
  return { socket, socketGroup, listen, tokens, callContextHeader, permissions, permissionsUnenforcedOk, callContextFrom };
}

/**
 * A list of IP addresses and CIDR blocks (`127.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`), normalised to
 * CIDR form (`127.0.0.1/32`).
 */
function checkAddressBlocks(c: Checker, f: Fields, key: string): string[] | undefined {
  const list = f.strings(key);
  if (list === undefined) return undefined;
  const out: string[] = [];
  list.forEach((text, i) => {
    const at = f.listItemPath(key, i);
    const [addr, bits, extra] = text.trim().split('/');
    const family = isIP(addr);
    const max = family === 6 ? 128 : 32;
    const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : -1;
    if (family === 0 || extra !== undefined || prefix < 0 || prefix > max) {
      c.problem(at, `expected an IP address or a CIDR block such as "127.0.0.0/8" or "::1/128", got ${show(text)}`);
      return;
    }
    out.push(`${addr}/${prefix}`);
  });
  return out;
}

function checkInternalPrefix(c: Checker, top: Fields): string {
  const prefix = top.string('internal_prefix');
  if (prefix === undefined) return DEFAULT_INTERNAL_PREFIX;
  if (!/^(\/[A-Za-z0-9._~-]+)+$/.test(prefix)) {
    c.problem(top.path('internal_prefix'), `expected a path such as "/_berth": starting with "/", without a trailing "/", got ${show(prefix)}`);
    return DEFAULT_INTERNAL_PREFIX;
  }
  return prefix;
}

function checkLogLevels(c: Checker, top: Fields): Partial<Record<string, LogLevel>> {
  const levels: Partial<Record<string, LogLevel>> = {};
  for (const [name, value] of top.entries('log_levels')) {
    const at = [...top.path('log_levels'), name];
    if (!(LOGGER_NAMES as readonly string[]).includes(name)) {
      c.problem(at, `unknown key (loggers: ${LOGGER_NAMES.join(', ')})`, true);
      continue;
    }
    if (typeof value !== 'string' || !LOG_LEVELS.includes(value as LogLevel)) {
      c.problem(at, `expected one of ${LOG_LEVELS.join(', ')}, got ${show(value)}`);
      continue;
    }
    put(levels, name, value);
  }
  return levels;
}

function checkDatabase(c: Checker, top: Fields): string | null {
  const url = top.string('database');
  if (url === undefined) return null;
  let parsed: URL | null = null;
  try {
    parsed = new URL(url);
  } catch {
    // reported below
  }
  if (parsed && (parsed.protocol === 'postgres:' || parsed.protocol === 'postgresql:')) return url;
  // The value may hold a password: mask it where the URL parser finds one, else do not echo `user:pw@` text.
  let shown = show(url);
  if (parsed?.password) {
    parsed.password = '***';
    shown = show(parsed.href);
  } else if (url.includes('@')) {
    shown = 'text that is not a URL';
  }
  c.problem(top.path('database'), `expected null (SQLite) or a postgres:// URL, got ${shown}`);
  return null;
}

function checkApp(c: Checker, name: string, value: unknown, at: KeyPath, dir: string): AppConfig {
  const f = c.fields(value ?? {}, at);
  const hosts = checkHosts(c, f);
  const sourceText = f.string('source');
  const source = sourceText === undefined ? null : resolveSource(sourceText, dir);
  const build = f.string('build') ?? null;
  const release = f.string('release') ?? null;
  const keepReleases = f.int('keep_releases', 1) ?? DEFAULT_KEEP_RELEASES;
  const shared = (f.strings('shared') ?? []).flatMap((p, i) => c.releasePath(p, f.listItemPath('shared', i)) ?? []);
  const env = checkEnv(c, f);
  const listen = f.choice('listen', ['port', 'socket'] as const) ?? DEFAULT_APP_LISTEN;
  const routes = checkRoutes(c, f);
  const routeTargets = new Set(routes.flatMap((r) => (r.route.to === null ? [] : [r.route.to])));
  const processes = f.raw('processes') === undefined ? null : checkProcesses(c, f, routeTargets);
  f.take('processes');
  const scale: Record<string, number> = {};
  for (const [type, count] of f.entries('scale')) {
    const sat = [...f.path('scale'), type];
    if (processes !== null) {
      c.problem(sat, 'scale only applies to apps whose process types come from a Procfile; set processes.<type>.instances instead');
      continue;
    }
    if (!PROCESS_NAME_RE.test(type)) c.problem(sat, `process type names must match ${PROCESS_NAME_RE.source}`);
    const n = c.int(count, sat, 0);
    if (n !== undefined) put(scale, type, n);
  }

  // Routes need the process types and the process types need the routes (http defaults): cross-check here.
  let finalRoutes = routes.map((r) => r.route);
  if (f.raw('routes') === undefined) {
    finalRoutes = processes === null || processes.web?.http ? [{ path: '/', to: 'web', static: null, cache: null, cors: null, buffering: true }] : [];
  } else if (processes !== null) {
    for (const { route, at: rat } of routes) {
      if (route.to === null) continue;
      if (!Object.hasOwn(processes, route.to)) c.problem([...rat, 'to'], `names process type ${show(route.to)}, which is not in processes (${Object.keys(processes).join(', ')})`);
    }
  }

  const timeoutsF = f.fields('timeouts');
  const timeouts = {
    headersMs: timeoutsF.duration('headers') ?? DEFAULT_TIMEOUT_HEADERS_MS,
    drainMs: timeoutsF.duration('drain') ?? DEFAULT_TIMEOUT_DRAIN_MS,
    stopMs: timeoutsF.duration('stop') ?? DEFAULT_TIMEOUT_STOP_MS,
  };
  timeoutsF.done();
  const health = checkHealth(f.fields('health'), timeouts.headersMs);
  const queueF = f.fields('queue');
  const queue = { max: queueF.int('max', 0) ?? DEFAULT_QUEUE_MAX, timeoutMs: queueF.duration('timeout') ?? DEFAULT_QUEUE_TIMEOUT_MS };
  queueF.done();
  const dbConnections = f.int('db_connections', 1) ?? null;
  const rateLimit = checkRateLimit(c, f);
  const schedule = checkSchedule(c, f);
  const reloadTrigger = checkReloadTrigger(c, f);
  const pagesF = f.fields('pages');
  const pages = {
    maintenance: pagesF.releasePath('maintenance'),
    readOnly: pagesF.releasePath('read_only'),
    error: pagesF.releasePath('error'),
  };
  pagesF.done();
  const cacheFlush = checkCacheFlush(c, f);
  const user = f.osName('user') ?? null;
  const group = f.osName('group') ?? null;
  const maxBodyBytes = f.size('max_body') ?? DEFAULT_MAX_BODY_BYTES;
  const buffering = checkBuffering(f.fields('buffering'));
  const websockets = checkWebSockets(f.fields('websockets'));
  const maxReleaseBytes = f.size('max_release_size', 1) ?? DEFAULT_MAX_RELEASE_BYTES;
  const maxReleaseFiles = f.int('max_release_files', 1) ?? DEFAULT_MAX_RELEASE_FILES;
  f.done();

  const app: AppConfig = {
    name,
    user,
    group,
    hosts,
    source,
    build,
    release,
    keepReleases,
    shared,
    env,
    processes,
    scale,
    listen,
    routes: finalRoutes,
    health,
    queue,
    timeouts,
    dbConnections,
    rateLimit,
    schedule,
    reloadTrigger,
    pages,
    cacheFlush,
    maxBodyBytes,
    buffering,
    websockets,
    maxReleaseBytes,
    maxReleaseFiles,
  };
  if (processes !== null && dbConnections !== null) checkBudget(c, app, f.path('db_connections'));
  return app;
}

function checkBuffering(f: Fields): BufferingConfig {
  const buffering: BufferingConfig = {
    requests: f.bool('requests') ?? true,
    responses: f.bool('responses') ?? true,
    memoryBytes: f.size('memory') ?? DEFAULT_BUFFER_MEMORY_BYTES,
    bodyTimeoutMs: f.duration('body_timeout') ?? DEFAULT_BODY_TIMEOUT_MS,
    sendTimeoutMs: f.duration('send_timeout') ?? DEFAULT_SEND_TIMEOUT_MS,
  };
  f.done();
  return buffering;
}

function checkWebSockets(f: Fields): WebSocketsConfig {
  const websockets: WebSocketsConfig = {
    max: f.int('max', 1) ?? DEFAULT_WEBSOCKETS_MAX,
    idleTimeoutMs: f.duration('idle_timeout') ?? null,
  };
  f.done();
  return websockets;
}

function checkHosts(c: Checker, f: Fields): string[] {
  const hosts: string[] = [];
  (f.strings('hosts') ?? []).forEach((text, i) => {
    const host = text.trim().toLowerCase();
    if (!HOST_RE.test(host)) {
      c.problem(f.listItemPath('hosts', i), `expected a host name such as "shop.example.com" or a wildcard such as "*.example.com", got ${show(text)}`);
    } else if (!hosts.includes(host)) {
      hosts.push(host);
    }
  });
  return hosts;
}

/** A deploy source: git URLs are kept; local paths (also `path#ref`) are resolved against the config's directory. */
function resolveSource(text: string, dir: string): string {
  if (text.includes('://') || text.startsWith('git@')) return text;
  const hash = text.lastIndexOf('#');
  if (hash > 0) return `${resolve(dir, text.slice(0, hash))}${text.slice(hash)}`;
  return resolve(dir, text);
}

function checkEnv(c: Checker, f: Fields): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of f.entries('env')) {
    const at = [...f.path('env'), key];
    if (!ENV_NAME_RE.test(key)) c.problem(at, `expected an environment variable name (letters, digits, _), got ${show(key)}`);
    // load.ts keeps the source text of plain YAML scalars here; numbers and booleans only arrive from
    // callers that build the raw object themselves.
    if (value === null || value === undefined) put(env, key, '');
    else if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') put(env, key, String(value));
    else c.problem(at, `expected a string, number or boolean, got ${show(value)}`);
  }
  return env;
}

function checkRoutes(c: Checker, f: Fields): { route: RouteConfig; at: KeyPath }[] {
  const list = f.list('routes');
  if (list === undefined) return [];
  const out: { route: RouteConfig; at: KeyPath }[] = [];
  const seen = new Map<string, number>();
  list.forEach((value, i) => {
    const at = [...f.path('routes'), i];
    const r = c.fields(value, at);
    const path = r.routePath('path', true);
    const to = r.string('to');
    const stat = r.releasePath('static');
    const cache = r.string('cache') ?? null;
    const cors = r.string('cors') ?? null;
    const buffering = r.bool('buffering') ?? true;
    if (r.raw('to') !== undefined && r.raw('static') !== undefined) c.problem(at, 'expected either "to" (a process type) or "static" (a directory), not both');
    else if (r.raw('to') === undefined && r.raw('static') === undefined) c.problem(at, 'expected "to" (a process type) or "static" (a directory)');
    if (to !== undefined && !PROCESS_NAME_RE.test(to)) c.problem(r.path('to'), `process type names must match ${PROCESS_NAME_RE.source}, got ${show(to)}`);
    if (r.raw('to') !== undefined) {
      if (cache !== null) c.problem(r.path('cache'), 'only applies to static routes');
      if (cors !== null) c.problem(r.path('cors'), 'only applies to static routes');
    }
    r.done();
    if (path === undefined) return;
    const first = seen.get(path);
    if (first !== undefined) c.problem(r.path('path'), `duplicate path ${show(path)}: routes.${first} already routes it`);
    else seen.set(path, i);
    out.push({ route: { path, to: to ?? null, static: to === undefined ? (stat ?? null) : null, cache, cors, buffering }, at });
  });
  return out;
}

function checkProcesses(c: Checker, f: Fields, routeTargets: Set<string>): Record<string, ProcessConfig> {
  const processes: Record<string, ProcessConfig> = {};
  const entries = f.entries('processes');
  if (entries.length === 0 && isMapping(f.raw('processes'))) {
    c.problem(f.path('processes'), 'expected at least one process type (leave processes out to read them from the Procfile)');
  }
  for (const [name, value] of entries) {
    const at = [...f.path('processes'), name];
    if (!PROCESS_NAME_RE.test(name)) c.problem(at, `process type names must match ${PROCESS_NAME_RE.source}, got ${show(name)}`);
    const p = c.fields(value, at);
    const command = p.string('command');
    if (p.raw('command') === undefined) c.problem(p.path('command'), 'required');
    const instances = p.int('instances', 0) ?? DEFAULT_INSTANCES;
    const explicitHttp = p.bool('http');
    const routed = routeTargets.has(name);
    if (explicitHttp === false && routed) c.problem(p.path('http'), 'is false, but a route sends traffic to this process type');
    const http = explicitHttp ?? (name === 'web' || routed);
    const concurrency = p.int('concurrency', 1);
    const heartbeat = p.duration('heartbeat_timeout');
    if (heartbeat !== undefined && http) c.problem(p.path('heartbeat_timeout'), 'only applies to non-http process types');
    const env = checkEnv(c, p);
    p.done();
    put(processes, name, {
      name,
      command: command ?? '',
      instances,
      concurrency: http ? (concurrency ?? DEFAULT_CONCURRENCY) : 1,
      http,
      heartbeatTimeoutMs: http ? null : (heartbeat ?? null),
      env,
    } satisfies ProcessConfig);
  }
  return processes;
}

function checkHealth(f: Fields, headersMs: number): HealthConfig {
  const health: HealthConfig = {
    path: f.probePath('path') ?? null,
    intervalMs: f.duration('interval') ?? DEFAULT_HEALTH_INTERVAL_MS,
    timeoutMs: f.duration('timeout') ?? DEFAULT_HEALTH_TIMEOUT_MS,
    unhealthyAfter: f.int('unhealthy_after', 1) ?? DEFAULT_HEALTH_UNHEALTHY_AFTER,
    startupTimeoutMs: f.duration('startup_timeout') ?? DEFAULT_HEALTH_STARTUP_TIMEOUT_MS,
    busyGraceMs: f.duration('busy_grace') ?? headersMs,
  };
  f.done();
  return health;
}

function checkRateLimit(c: Checker, app: Fields): RateLimitConfig | null {
  if (app.raw('rate_limit') === undefined) {
    app.take('rate_limit');
    return null;
  }
  const f = app.fields('rate_limit');
  const perIp = f.raw('per_ip');
  let rate: { count: number; perMs: number } | null = null;
  if (perIp === undefined) c.problem(f.path('per_ip'), 'required, e.g. "20/s", "100/m" or "1000/h"');
  else {
    const m = typeof perIp === 'string' ? RATE_RE.exec(perIp.trim()) : null;
    if (!m || Number(m[1]) < 1) c.problem(f.path('per_ip'), `expected a rate such as "20/s", "100/m" or "1000/h", got ${show(perIp)}`);
    else rate = { count: Number(m[1]), perMs: RATE_UNIT_MS[m[2]] };
  }
  f.take('per_ip');
  const burst = f.int('burst', 1);
  const paths = (f.strings('paths') ?? []).flatMap((p, i) => c.routePath(p, f.listItemPath('paths', i)) ?? []);
  f.done();
  if (rate === null) return null;
  return { count: rate.count, perMs: rate.perMs, burst: burst ?? rate.count, paths };
}

function checkSchedule(c: Checker, app: Fields): Record<string, ScheduleConfig> {
  const schedule: Record<string, ScheduleConfig> = {};
  for (const [name, value] of app.entries('schedule')) {
    const at = [...app.path('schedule'), name];
    if (!PROCESS_NAME_RE.test(name)) c.problem(at, `schedule entry names must match ${PROCESS_NAME_RE.source}, got ${show(name)}`);
    const f = c.fields(value, at);
    if (f.raw('cron') === undefined) c.problem(f.path('cron'), 'required');
    const cron = f.cron('cron');
    if (f.raw('command') === undefined) c.problem(f.path('command'), 'required');
    const command = f.string('command');
    const timeoutMs = f.duration('timeout') ?? DEFAULT_SCHEDULE_TIMEOUT_MS;
    let timezone = f.string('timezone') ?? null;
    if (timezone !== null && !isTimeZone(timezone)) {
      c.problem(f.path('timezone'), `expected an IANA time zone such as "Europe/Paris" or "UTC", got ${show(timezone)}`);
      timezone = null;
    }
    const overlap = f.choice('overlap', ['skip', 'allow'] as const) ?? DEFAULT_SCHEDULE_OVERLAP;
    f.done();
    put(schedule, name, { name, cron: cron ?? '', command: command ?? '', timeoutMs, timezone, overlap } satisfies ScheduleConfig);
  }
  return schedule;
}

function checkReloadTrigger(c: Checker, f: Fields): string | null {
  const name = f.string('reload_trigger');
  if (name === undefined) return null;
  if (name.includes('/') || name.includes('\\') || name === '.' || name === '..' || name.includes('\0')) {
    c.problem(f.path('reload_trigger'), `expected a plain file name such as "restart.txt", got ${show(name)}`);
    return null;
  }
  return name;
}

function checkCacheFlush(c: Checker, app: Fields): CacheFlushConfig | null {
  if (app.raw('cache_flush') === undefined) {
    app.take('cache_flush');
    return null;
  }
  const f = app.fields('cache_flush');
  const provider = f.choice('provider', ['http', 'akamai'] as const) ?? DEFAULT_CACHE_FLUSH_PROVIDER;
  let method = f.string('method') ?? DEFAULT_CACHE_FLUSH_METHOD;
  if (!HTTP_METHOD_RE.test(method)) {
    c.problem(f.path('method'), `expected an HTTP method such as PURGE, got ${show(method)}`);
    method = DEFAULT_CACHE_FLUSH_METHOD;
  }
  const concurrency = f.int('concurrency', 1) ?? DEFAULT_CACHE_FLUSH_CONCURRENCY;
  if (f.raw('rules') === undefined) c.problem(f.path('rules'), 'required: a list of {templates, includes?, excludes?}');
  const rules = (f.list('rules') ?? []).map((value, i) => {
    const r = c.fields(value, [...f.path('rules'), i]);
    const templates = r.strings('templates') ?? [];
    if (templates.length === 0) c.problem(r.path('templates'), 'required: at least one URL template, e.g. "https://cdn.example.com{path}"');
    const includes = r.regexes('includes');
    const excludes = r.regexes('excludes');
    r.done();
    return { templates, includes, excludes };
  });
  f.done();
  return { provider, method: method.toUpperCase(), concurrency, rules };
}

function checkBudget(c: Checker, app: AppConfig, at: KeyPath): void {
  const pools = Object.values(app.processes ?? {}).filter((p) => p.http);
  const need = pools.reduce((sum, p) => sum + p.instances * p.concurrency, 0);
  const budget = app.dbConnections ?? Infinity;
  if (need <= budget) return;
  const terms = pools.map((p) => `${p.name} ${p.instances}x${p.concurrency}`).join(' + ');
  c.problem(at, `the http pools need ${need} connections (${terms}), more than the budget of ${budget}`);
}

function checkOverlaps(c: Checker, apps: Record<string, AppConfig>, explicitRoutes: Set<string>): void {
  const owners = new Map<string, string>();
  for (const app of Object.values(apps)) {
    const hosts = app.hosts.length === 0 ? [''] : app.hosts;
    for (const host of hosts) {
      app.routes.forEach((route, i) => {
        const key = `${host} ${route.path}`;
        const owner = owners.get(key);
        if (owner === undefined) {
          owners.set(key, app.name);
          return;
        }
        if (owner === app.name) return;
        const where = host === '' ? 'on any host (both are catch-all)' : `on host ${host}`;
        // Default routes have no path of their own in the file: name the hosts that make them collide.
        const at = explicitRoutes.has(app.name) ? ['apps', app.name, 'routes', i, 'path'] : ['apps', app.name, 'hosts'];
        c.problem(at, `overlapping host+path: apps "${owner}" and "${app.name}" both route ${route.path} ${where}`);
      });
    }
  }
}

// ---- the checker ------------------------------------------------------------------------------

/** Collects issues; its value checks report at a path and return undefined for a bad value. */
class Checker {
  readonly issues: ConfigIssue[] = [];

  problem(at: KeyPath, message: string, unknownKey = false): void {
    this.issues.push({ at, message, unknownKey });
  }

  fields(value: unknown, at: KeyPath): Fields {
    if (isMapping(value)) return new Fields(this, value, at);
    this.problem(at, `expected a mapping of keys, got ${show(value)}`);
    return new Fields(this, {}, at);
  }

  string(value: unknown, at: KeyPath): string | undefined {
    if (typeof value === 'string' && value.trim() !== '') return value;
    this.problem(at, typeof value === 'string' ? 'expected a non-empty string' : `expected a string, got ${show(value)}`);
    return undefined;
  }

  int(value: unknown, at: KeyPath, min: 0 | 1): number | undefined {
    if (typeof value === 'number' && Number.isSafeInteger(value) && value >= min) return value;
    if (min === 0 && typeof value === 'number' && Number.isSafeInteger(value)) this.problem(at, `expected a positive integer or 0, got ${show(value)}`);
    else this.problem(at, `expected a positive integer, got ${show(value)}`);
    return undefined;
  }

  /** `maxMs` defaults to Node's timer limit: a longer timer would fire at once (about every 1 ms). */
  duration(value: unknown, at: KeyPath, allowZero = false, maxMs = MAX_TIMER_MS): number | undefined {
    const ms = parseDuration(value);
    if (ms === null) this.problem(at, `expected a duration such as 250ms, 30s, 5m, 2h or 14d, got ${show(value)}`);
    else if (ms < 0 || (ms === 0 && !allowZero)) this.problem(at, `expected a duration greater than 0, got ${show(value)}`);
    else if (ms > maxMs) this.problem(at, `expected a duration of at most ${formatDuration(Math.floor(maxMs / 60_000) * 60_000)} (the longest timer Node can set, about 24.8 days), got ${show(value)}`);
    else return ms;
    return undefined;
  }

  size(value: unknown, at: KeyPath, min: 0 | 1): number | undefined {
    const bytes = parseSize(value);
    if (bytes === null) this.problem(at, `expected a size such as 512k, 10m or 1g (or a number of bytes), got ${show(value)}`);
    else if (bytes < min) this.problem(at, `expected a size greater than 0, got ${show(value)}`);
    else return bytes;
    return undefined;
  }

  /** A user or group name as the OS knows it, or a numeric id. Whether it exists is checked at use. */
  osName(value: unknown, at: KeyPath): string | undefined {
    const text = typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? String(value) : this.string(value, at);
    if (text === undefined) return undefined;
    if (OS_NAME_RE.test(text)) return text;
    this.problem(at, `expected a user or group name (letters, digits, "_", "-", "."), or a numeric id, got ${show(text)}`);
    return undefined;
  }

  cron(value: unknown, at: KeyPath): string | undefined {
    const expr = this.string(value, at);
    if (expr === undefined) return undefined;
    try {
      new Cron(expr, { paused: true }).stop();
      return expr;
    } catch (err) {
      const why = err instanceof Error ? err.message.replace(/^CronPattern:\s*/, '') : String(err);
      this.problem(at, `expected a cron expression with 5 or 6 fields, got ${show(expr)}: ${why}`);
      return undefined;
    }
  }

  /** A list of strings; one bare string counts as a one-element list. */
  strings(value: unknown, at: KeyPath): string[] | undefined {
    if (typeof value === 'string') return this.string(value, at) === undefined ? [] : [value];
    if (!Array.isArray(value)) {
      this.problem(at, `expected a list of strings, got ${show(value)}`);
      return undefined;
    }
    return value.flatMap((item, i) => this.string(item, [...at, i]) ?? []);
  }

  /** A list of regular expression sources (or one bare string), each of which must compile. */
  regexList(value: unknown, at: KeyPath): string[] {
    if (value === null || value === undefined) return [];
    if (typeof value === 'string') {
      const source = this.regex(value, at);
      return source === undefined ? [] : [source];
    }
    if (!Array.isArray(value)) {
      this.problem(at, `expected a list of regular expressions, got ${show(value)}`);
      return [];
    }
    return value.flatMap((item, i) => this.regex(item, [...at, i]) ?? []);
  }

  regex(value: unknown, at: KeyPath): string | undefined {
    const source = this.string(value, at);
    if (source === undefined) return undefined;
    try {
      new RegExp(source);
      return source;
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      this.problem(at, `expected a regular expression, got ${show(source)}: ${why}`);
      return undefined;
    }
  }

  /** A route-like path: starts with `/`; trailing slashes are dropped except for `/` itself. */
  routePath(value: unknown, at: KeyPath): string | undefined {
    const text = this.string(value, at);
    if (text === undefined) return undefined;
    if (!text.startsWith('/') || /[\s?#]/.test(text)) {
      this.problem(at, `expected a path starting with "/", got ${show(text)}`);
      return undefined;
    }
    const trimmed = text.replace(/\/+$/, '');
    return trimmed === '' ? '/' : trimmed;
  }

  /** A path inside the release: relative, without `..` segments; normalised without `./` or a trailing `/`. */
  releasePath(value: unknown, at: KeyPath): string | undefined {
    const text = this.string(value, at);
    if (text === undefined) return undefined;
    if (isAbsolute(text) || posix.isAbsolute(text) || text.split(/[\\/]/).includes('..')) {
      this.problem(at, `expected a relative path inside the release, without "..", got ${show(text)}`);
      return undefined;
    }
    return posix.normalize(text).replace(/\/+$/, '') || '.';
  }
}

/** One mapping being read: each key read is marked known, and `done()` reports the rest as unknown. */
class Fields {
  readonly #c: Checker;
  readonly #obj: Record<string, unknown>;
  readonly #at: KeyPath;
  readonly #seen = new Set<string>();

  constructor(checker: Checker, obj: Record<string, unknown>, at: KeyPath) {
    this.#c = checker;
    this.#obj = obj;
    this.#at = at;
  }

  path(key: string): KeyPath {
    return [...this.#at, key];
  }

  /** The path of item `i` of a string list, or of the key itself when it was written as one bare string. */
  listItemPath(key: string, i: number): KeyPath {
    return typeof this.raw(key) === 'string' ? this.path(key) : [...this.path(key), i];
  }

  /** The value without marking the key; undefined when missing or null. */
  raw(key: string): unknown {
    const v = Object.hasOwn(this.#obj, key) ? this.#obj[key] : undefined;
    return v === null ? undefined : v;
  }

  /** The value, marking the key known. */
  take(key: string): unknown {
    this.#seen.add(key);
    return this.raw(key);
  }

  done(): void {
    for (const key of Object.keys(this.#obj)) {
      if (!this.#seen.has(key)) this.#c.problem(this.path(key), 'unknown key', true);
    }
  }

  /** Every key of this mapping as an entry, all marked known (for mappings keyed by user-chosen names). */
  allEntries(): [string, unknown][] {
    for (const key of Object.keys(this.#obj)) this.#seen.add(key);
    return Object.entries(this.#obj);
  }

  #read<T>(key: string, check: (value: unknown, at: KeyPath) => T | undefined): T | undefined {
    const v = this.take(key);
    return v === undefined ? undefined : check(v, this.path(key));
  }

  string(key: string): string | undefined {
    return this.#read(key, (v, at) => this.#c.string(v, at));
  }

  int(key: string, min: 0 | 1): number | undefined {
    return this.#read(key, (v, at) => this.#c.int(v, at, min));
  }

  duration(key: string, allowZero = false, maxMs?: number): number | undefined {
    return this.#read(key, (v, at) => this.#c.duration(v, at, allowZero, maxMs));
  }

  size(key: string, min: 0 | 1 = 0): number | undefined {
    return this.#read(key, (v, at) => this.#c.size(v, at, min));
  }

  osName(key: string): string | undefined {
    return this.#read(key, (v, at) => this.#c.osName(v, at));
  }

  cron(key: string): string | undefined {
    return this.#read(key, (v, at) => this.#c.cron(v, at));
  }

  bool(key: string): boolean | undefined {
    return this.#read(key, (v, at) => {
      if (typeof v === 'boolean') return v;
      this.#c.problem(at, `expected true or false, got ${show(v)}`);
      return undefined;
    });
  }

  choice<T extends string>(key: string, options: readonly T[]): T | undefined {
    return this.#read(key, (v, at) => {
      if (typeof v === 'string' && options.includes(v as T)) return v as T;
      this.#c.problem(at, `expected one of ${options.join(', ')}, got ${show(v)}`);
      return undefined;
    });
  }

  strings(key: string): string[] | undefined {
    return this.#read(key, (v, at) => this.#c.strings(v, at));
  }

  regexes(key: string): string[] {
    return this.#read(key, (v, at) => this.#c.regexList(v, at)) ?? [];
  }

  routePath(key: string, required: boolean): string | undefined {
    if (required && this.raw(key) === undefined) this.#c.problem(this.path(key), 'required');
    return this.#read(key, (v, at) => this.#c.routePath(v, at));
  }

  /** An HTTP path probed as written (a trailing `/` or a query may matter to the app). */
  probePath(key: string): string | undefined {
    return this.#read(key, (v, at) => {
      const text = this.#c.string(v, at);
      if (text === undefined) return undefined;
      if (text.startsWith('/') && !/\s/.test(text)) return text;
      this.#c.problem(at, `expected a path starting with "/", got ${show(text)}`);
      return undefined;
    });
  }

  releasePath(key: string): string | null {
    return this.#read(key, (v, at) => this.#c.releasePath(v, at)) ?? null;
  }

  list(key: string): unknown[] | undefined {
    return this.#read(key, (v, at) => {
      if (Array.isArray(v)) return v;
      this.#c.problem(at, `expected a list, got ${show(v)}`);
      return undefined;
    });
  }

  /** A sub-mapping; missing gives an empty one, so its defaults apply. */
  fields(key: string): Fields {
    const v = this.take(key);
    return v === undefined ? new Fields(this.#c, {}, this.path(key)) : this.#c.fields(v, this.path(key));
  }

  /** The entries of a mapping keyed by user-chosen names (apps, processes, users, ...). */
  entries(key: string): [string, unknown][] {
    const v = this.take(key);
    if (v === undefined) return [];
    if (!isMapping(v)) {
      this.#c.problem(this.path(key), `expected a mapping of keys, got ${show(v)}`);
      return [];
    }
    return Object.entries(v);
  }
}

// ---- helpers ----------------------------------------------------------------------------------

/** A plain mapping (not a list, not null). */
export function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Sets a key as an own data property. Plain assignment of a user-written `__proto__` key would replace
 * the object's prototype instead of adding a key that validation can report.
 */
export function put(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** A value as problem messages quote it: strings in JSON quotes, lists and mappings by kind. */
function show(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return String(value);
}

function describeSecret(value: unknown): string {
  return typeof value === 'string' ? `a string of ${value.length} characters` : show(value);
}

function isTimeZone(name: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: name });
    return true;
  } catch {
    return false;
  }
}
