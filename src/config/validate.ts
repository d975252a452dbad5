/**
 * Config validation: the raw merged object (the YAML file, then the chosen `environments` section, then
 * `BERTH_*` overrides; load.ts does the merging) becomes the normalised BerthConfig of schema.ts, or every
 * problem is reported at once as `dotted.key.path: message`. This file checks the top level and the
 * `control` section; app-checks.ts checks each `apps.<app>`; checker.ts reads single values.
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
 * - Routes: `cache` and `cors` only apply to static routes, `affinity` only to routes to a process type
 *   (`cookie`, `ip`, `header:<name>` with a header name, lower-cased, or `query:<name>` with a name of
 *   letters, digits and `-._~`). Without `routes`, an app that has (or, as a Procfile app, may have) a
 *   `web` type gets `/ -> web`; any other app gets no routes.
 * - Hosts are lower-cased names without a port, or `*.suffix` wildcards, listed once each.
 * - `control.call_context_header` and token hashes are lower-cased (both compare case-insensitively).
 * - App `env` values: strings, numbers and booleans become strings; null becomes "".
 * - A Procfile app's DB budget cannot be checked at load time: its process types are only known per
 *   release.
 */
import { availableParallelism } from 'node:os';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { ConfigError, type ConfigProblem } from '../lib/errors.ts';
import { LOGGER_NAMES, type LogLevel } from '../lib/logger.ts';
import {
  DEFAULT_CALL_CONTEXT_FROM,
  DEFAULT_USER,
  DEFAULT_CLEANUP_CRON,
  DEFAULT_CONTROL_SOCKET,
  DEFAULT_HISTORY_RETENTION_MS,
  DEFAULT_INTERNAL_PREFIX,
  DEFAULT_LISTEN,
  DEFAULT_MIGRATIONS,
  DEFAULT_SCHEDULER_DELAY_MS,
  DEFAULT_STATE_DIR,
  DEFAULT_TRUSTED_PROXY_COUNT,
  APP_NAME_RE,
  MAX_PROXY_WORKERS,
  DEFAULT_DATABASE_POOL,
  DEFAULT_NODE_TIMEOUT_MS,
  MIN_NODE_TIMEOUT_MS,
  NODE_ID_RE,
  MAX_DATABASE_POOL,
  ROLES,
  type AppConfig,
  type ProxyConfig,
  type BerthConfig,
  type ControlConfig,
  type ListenAddress,
  type Role,
  type TokenConfig,
} from './schema.ts';
import { Checker, Fields, HEADER_NAME_RE, isMapping, put, show, type ConfigIssue, type KeyPath } from './checker.ts';
import { checkApp, checkOverlaps } from './app-checks.ts';
import { checkAcme, checkTls, checkTlsTogether } from './tls-checks.ts';
import { topLevelKeys } from './settings.ts';

/** The keys allowed at the top level of a config file (besides `environments`, which load.ts consumes). */
export const TOP_LEVEL_KEYS: readonly string[] = topLevelKeys();

const TOKEN_HASH_RE = /^sha256:[0-9a-fA-F]{64}$/;
const PORT_RE = /^\d{1,5}$/;
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
  const top = new Fields(c, rawTop, [], '');

  const stateDir = resolve(dir, top.string('state_dir') ?? DEFAULT_STATE_DIR);
  const listen = checkListen(c, top, stateDir);
  const control = checkControl(c, top.fields('control'), stateDir);
  const trustedProxyCount = top.int('trusted_proxy_count', 0) ?? DEFAULT_TRUSTED_PROXY_COUNT;
  const internalPrefix = checkInternalPrefix(c, top);
  const logLevels = checkLogLevels(c, top);
  const database = checkDatabase(c, top);
  const databasePool = checkDatabasePool(c, top);
  const nodeId = checkNodeId(c, top);
  const nodeTimeoutMs = checkNodeTimeout(c, top);
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
  const tls = checkTls(c, top.fields('tls'), dir);
  const acme = checkAcme(c, top.fields('acme'), dir);
  checkTlsTogether(c, listen, tls, acme, apps);
  const proxy = checkProxy(c, top.fields('proxy'));
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
    databasePool,
    nodeId,
    nodeTimeoutMs,
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
    tls,
    acme,
    proxy,
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
    return { kind: 'unix', path: resolve(stateDir, path), text, tls: false };
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
  return { kind: 'tcp', host, port: Number(portText), text, tls: false };
}

// ---- sections ---------------------------------------------------------------------------------

function checkListen(c: Checker, top: Fields, stateDir: string): ListenAddress[] {
  const raw = top.take('listen');
  if (raw === undefined) return DEFAULT_LISTEN.map((t) => parseListenAddress(t, stateDir) as ListenAddress);
  const items = Array.isArray(raw) ? raw : [raw];
  if (items.length === 0) c.problem(top.path('listen'), 'expected at least one address to listen on');
  const out: ListenAddress[] = [];
  items.forEach((item, i) => {
    const at = Array.isArray(raw) ? [...top.path('listen'), i] : top.path('listen');
    let text: string | undefined;
    let tls = false;
    if (typeof item === 'string') {
      text = item;
    } else if (isMapping(item)) {
      const f = c.fields(item, at, `${top.setting('listen')}[]`);
      if (f.raw('address') === undefined) c.problem(f.path('address'), 'required: "host:port", "[v6]:port" or "unix:/path"');
      text = f.string('address');
      tls = f.bool('tls') ?? false;
      f.done();
    } else {
      c.problem(at, `expected "host:port", "[v6]:port", "unix:/path" or { address, tls }, got ${show(item)}`);
    }
    if (text === undefined) return;
    const addr = parseListenAddress(text, stateDir);
    if (typeof addr === 'string') c.problem(typeof item === 'string' ? at : [...at, 'address'], addr);
    else if (tls && addr.kind === 'unix') c.problem([...at, 'tls'], 'TLS listeners take "host:port" or "[v6]:port", not a unix socket');
    else out.push(addr.kind === 'tcp' ? { ...addr, tls } : addr);
  });
  return out;
}

/**
 * `proxy.workers`: how many threads serve the front door (1, the default, is the main thread alone);
 * `auto` is one per core, up to MAX_PROXY_WORKERS.
 */
function checkProxy(c: Checker, f: Fields): ProxyConfig {
  const raw = f.raw('workers');
  let workers = 1;
  let auto = false;
  if (raw === 'auto') {
    auto = true;
    workers = Math.min(availableParallelism(), MAX_PROXY_WORKERS);
    f.take('workers');
  } else if (raw !== undefined) {
    if (typeof raw !== 'number' || !Number.isInteger(raw) || raw < 1 || raw > MAX_PROXY_WORKERS) {
      c.problem(f.path('workers'), `expected an integer from 1 to ${MAX_PROXY_WORKERS} or "auto", got ${show(raw)}`);
    } else workers = raw;
    f.take('workers');
  }
  f.done();
  return { workers, auto };
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
    const t = c.fields(value, [...f.path('tokens'), user], `${f.setting('tokens')}.<user>`);
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
    for (const [user, list] of c.fields(value, [...f.path('permissions'), env], `${f.setting('permissions')}.<environment>`).allEntries()) {
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

/** `database_pool`: the gateway's own PostgreSQL connections, 1 to MAX_DATABASE_POOL (SQLite has one). */
function checkDatabasePool(c: Checker, top: Fields): number {
  const n = top.int('database_pool', 1);
  if (n === undefined) return DEFAULT_DATABASE_POOL;
  if (n > MAX_DATABASE_POOL) {
    c.problem(top.path('database_pool'), `expected at most ${MAX_DATABASE_POOL} connections, got ${n}`);
    return DEFAULT_DATABASE_POOL;
  }
  return n;
}

/** `node_id`: this gateway's name in a fleet; null derives it from the host name and state dir at start. */
function checkNodeId(c: Checker, top: Fields): string | null {
  const id = top.string('node_id');
  if (id === undefined) return null;
  if (!NODE_ID_RE.test(id)) {
    c.problem(top.path('node_id'), `expected 1-128 letters, digits and . _ : / @ - (starting with a letter or digit), got ${show(id)}`);
    return null;
  }
  return id;
}

/** `node_timeout`: a node silent this long is lost; at least two heartbeats and a bit. */
function checkNodeTimeout(c: Checker, top: Fields): number {
  const ms = top.duration('node_timeout');
  if (ms === undefined) return DEFAULT_NODE_TIMEOUT_MS;
  if (ms < MIN_NODE_TIMEOUT_MS) {
    c.problem(top.path('node_timeout'), `expected at least ${MIN_NODE_TIMEOUT_MS / 1000}s (nodes write a heartbeat every 2s), got ${ms}ms`);
    return DEFAULT_NODE_TIMEOUT_MS;
  }
  return ms;
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

function describeSecret(value: unknown): string {
  return typeof value === 'string' ? `a string of ${value.length} characters` : show(value);
}
