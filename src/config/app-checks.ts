/**
 * The checks of one `apps.<app>` section (hosts, source, env, routes, processes, health, rate limit,
 * schedule, cache flush, DB budget) and of the apps together (overlapping host+path routes). The rules
 * are listed in validate.ts; the reading of single values is checker.ts.
 */
import { resolve } from 'node:path';
import {
  DEFAULT_APP_LISTEN,
  DEFAULT_BODY_TIMEOUT_MS,
  DEFAULT_BUFFER_MEMORY_BYTES,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_RELEASE_BYTES,
  DEFAULT_MAX_RELEASE_FILES,
  DEFAULT_SEND_TIMEOUT_MS,
  DEFAULT_WEBSOCKETS_MAX,
  DEFAULT_CACHE_FLUSH_CONCURRENCY,
  DEFAULT_CACHE_FLUSH_METHOD,
  DEFAULT_CACHE_FLUSH_PROVIDER,
  DEFAULT_CONCURRENCY,
  DEFAULT_HEALTH_INTERVAL_MS,
  DEFAULT_HEALTH_STARTUP_TIMEOUT_MS,
  DEFAULT_HEALTH_TIMEOUT_MS,
  DEFAULT_HEALTH_UNHEALTHY_AFTER,
  DEFAULT_INSTANCES,
  DEFAULT_KEEP_RELEASES,
  DEFAULT_QUEUE_MAX,
  DEFAULT_QUEUE_TIMEOUT_MS,
  DEFAULT_SCHEDULE_OVERLAP,
  DEFAULT_SCHEDULE_TIMEOUT_MS,
  DEFAULT_TIMEOUT_DRAIN_MS,
  DEFAULT_TIMEOUT_HEADERS_MS,
  DEFAULT_TIMEOUT_STOP_MS,
  PROCESS_NAME_RE,
  type AppConfig,
  type BufferingConfig,
  type WebSocketsConfig,
  type CacheFlushConfig,
  type CacheFlushRule,
  DEFAULT_CACHE_FLUSH_RETRY_FOR_MS,
  DEFAULT_CACHE_FLUSH_TIMEOUT_MS,
  type HealthConfig,
  type ProcessConfig,
  type RateLimitConfig,
  type RouteAffinity,
  type RouteConfig,
  type ScheduleConfig,
} from './schema.ts';
import { Checker, Fields, HEADER_NAME_RE, isHttpUrl, isMapping, isTimeZone, put, show, type KeyPath } from './checker.ts';
import { checkAppTls, checkCanonicalHost, checkHsts } from './tls-checks.ts';

const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HOST_LABEL = '[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?';
const HOST_RE = new RegExp(`^(?:\\*\\.)?${HOST_LABEL}(?:\\.${HOST_LABEL})*$`);
const HTTP_METHOD_RE = /^[A-Za-z]+$/;
const RATE_RE = /^(\d+)\s*\/\s*(s|m|h)$/;
const RATE_UNIT_MS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000 };
/** A query parameter name `affinity: query:<name>` may read: unreserved characters (RFC 3986 § 2.3), as written in URLs. */
const QUERY_NAME_RE = /^[A-Za-z0-9._~-]+$/;
/** The longest header or query parameter name an affinity may name. */
const AFFINITY_NAME_MAX = 128;

export function checkApp(c: Checker, name: string, value: unknown, at: KeyPath, dir: string): AppConfig {
  const f = c.fields(value ?? {}, at, 'apps.<app>');
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
    finalRoutes = processes === null || processes.web?.http ? [{ path: '/', to: 'web', static: null, cache: null, cors: null, buffering: true, affinity: null }] : [];
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
  const { certificates: tls, acme } = checkAppTls(c, f, dir, hosts);
  const httpsRedirect = f.bool('https_redirect') ?? false;
  const hsts = checkHsts(c, f);
  const canonicalHost = checkCanonicalHost(c, f, hosts);
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
    tls,
    acme,
    httpsRedirect,
    hsts,
    canonicalHost,
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
    const r = c.fields(value, at, `${f.setting('routes')}[]`);
    const path = r.routePath('path', true);
    const to = r.string('to');
    const stat = r.releasePath('static');
    const cache = r.string('cache') ?? null;
    const cors = r.string('cors') ?? null;
    const buffering = r.bool('buffering') ?? true;
    const affinity = checkAffinity(c, r);
    if (r.raw('to') !== undefined && r.raw('static') !== undefined) c.problem(at, 'expected either "to" (a process type) or "static" (a directory), not both');
    else if (r.raw('to') === undefined && r.raw('static') === undefined) c.problem(at, 'expected "to" (a process type) or "static" (a directory)');
    if (to !== undefined && !PROCESS_NAME_RE.test(to)) c.problem(r.path('to'), `process type names must match ${PROCESS_NAME_RE.source}, got ${show(to)}`);
    if (r.raw('to') !== undefined) {
      if (cache !== null) c.problem(r.path('cache'), 'only applies to static routes');
      if (cors !== null) c.problem(r.path('cors'), 'only applies to static routes');
    } else if (affinity !== null) c.problem(r.path('affinity'), 'only applies to routes to a process type ("to"): a static route has no instances');
    r.done();
    if (path === undefined) return;
    const first = seen.get(path);
    if (first !== undefined) c.problem(r.path('path'), `duplicate path ${show(path)}: routes.${first} already routes it`);
    else seen.set(path, i);
    out.push({ route: { path, to: to ?? null, static: to === undefined ? (stat ?? null) : null, cache, cors, buffering, affinity: to === undefined ? null : affinity }, at });
  });
  return out;
}

/** `routes[].affinity`: `cookie`, `ip`, `header:<name>` or `query:<name>`; null when not set (or not valid, said as a problem). */
function checkAffinity(c: Checker, r: Fields): RouteAffinity | null {
  const text = r.string('affinity');
  if (text === undefined) return null;
  const at = r.path('affinity');
  const value = text.trim();
  if (value === 'cookie' || value === 'ip') return { by: value };
  const colon = value.indexOf(':');
  const by = colon < 0 ? value : value.slice(0, colon);
  const name = colon < 0 ? '' : value.slice(colon + 1).trim();
  if (by === 'header' || by === 'query') {
    const [re, what] = by === 'header' ? [HEADER_NAME_RE, 'a header name (letters, digits and !#$%&\'*+.^_`|~-)'] : [QUERY_NAME_RE, 'a query parameter name (letters, digits and - . _ ~)'];
    if (name === '') c.problem(at, `expected ${by}:<name>, with ${what}, got ${show(text)}`);
    else if (name.length > AFFINITY_NAME_MAX) c.problem(at, `expected a name of at most ${AFFINITY_NAME_MAX} characters after "${by}:", got one of ${name.length}`);
    else if (!re.test(name)) c.problem(at, `expected ${what} after "${by}:", got ${show(name)}`);
    // Header names are case-insensitive, and node gives them lower-cased; query parameter names are not.
    else return by === 'header' ? { by, name: name.toLowerCase() } : { by, name };
    return null;
  }
  c.problem(at, `expected cookie, ip, header:<name> or query:<name>, got ${show(text)}`);
  return null;
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
    const p = c.fields(value, at, `${f.setting('processes')}.<type>`);
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
  const f = app.section('rate_limit');
  if (f === null) return null;
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
    const f = c.fields(value, at, `${app.setting('schedule')}.<name>`);
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
  const f = app.section('cache_flush');
  if (f === null) return null;
  const provider = f.choice('provider', ['http', 'akamai'] as const) ?? DEFAULT_CACHE_FLUSH_PROVIDER;
  let method = f.string('method') ?? DEFAULT_CACHE_FLUSH_METHOD;
  if (!HTTP_METHOD_RE.test(method)) {
    c.problem(f.path('method'), `expected an HTTP method such as PURGE, got ${show(method)}`);
    method = DEFAULT_CACHE_FLUSH_METHOD;
  }
  const headers: Record<string, string> = {};
  for (const [name, value] of f.entries('headers')) {
    // The value is never quoted back: a purge header often carries a key.
    if (!HEADER_NAME_RE.test(name) || typeof value !== 'string' || /[\r\n\0]/.test(value)) c.problem([...f.path('headers'), name], 'expected a header name and a one-line string value');
    else put(headers, name, value);
  }
  const concurrency = f.int('concurrency', 1) ?? DEFAULT_CACHE_FLUSH_CONCURRENCY;
  const timeoutMs = f.duration('timeout') ?? DEFAULT_CACHE_FLUSH_TIMEOUT_MS;
  const retryForMs = f.duration('retry_for', true) ?? DEFAULT_CACHE_FLUSH_RETRY_FOR_MS;
  const action = f.choice('action', ['invalidate', 'delete'] as const) ?? 'invalidate';
  const network = f.choice('network', ['production', 'staging'] as const) ?? 'production';
  const rules = checkFlushRules(c, f, provider);
  const names = rules.map((r) => r.name);
  let enable = names;
  if (f.raw('enable') !== undefined && f.raw('enable') !== null) {
    enable = f.strings('enable') ?? [];
    enable.forEach((name, i) => {
      if (!names.includes(name)) c.problem(f.listItemPath('enable', i), `no rule named ${show(name)} in cache_flush.rules (rules: ${names.join(', ') || 'none'})`);
    });
  } else f.take('enable');
  const paths = (f.strings('paths') ?? []).filter((p, i) => {
    if (p.startsWith('/') && !/[\s\0]/.test(p) && !/(^|\/)\.{1,2}(\/|$)/.test(p)) return true;
    c.problem(f.listItemPath('paths', i), `expected a path starting with "/", without spaces or "." and ".." segments, got ${show(p)}`);
    return false;
  });
  f.done();
  return { provider, rules, enable: [...new Set(enable)], paths, retryForMs, method: method.toUpperCase(), headers, concurrency, timeoutMs, action, network };
}

const TEMPLATE_PLACEHOLDER_RE = /\{([^{}]*)\}/g;

/**
 * `cache_flush.rules`: a mapping of named rules (a list is read as rules named `1`, `2`...). Each needs
 * templates with no placeholder but `{path}` and `{ttl}`; for `http` each must be an http(s) URL.
 */
function checkFlushRules(c: Checker, f: Fields, provider: 'http' | 'akamai'): CacheFlushRule[] {
  const raw = f.raw('rules');
  if (raw === undefined || raw === null) {
    c.problem(f.path('rules'), 'required: named rules, e.g. { cdn: { templates: ["https://cdn.example.com/{path}"] } }');
    f.take('rules');
    return [];
  }
  const entries: [string, unknown, KeyPath][] = Array.isArray(raw)
    ? (f.list('rules') ?? []).map((v, i) => [String(i + 1), v, [...f.path('rules'), i]])
    : f.entries('rules').map(([name, v]) => [name, v, [...f.path('rules'), name]]);
  return entries.map(([name, value, at]) => {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) c.problem(at, `rule names are 1-64 letters, digits, . _ -, got ${show(name)}`);
    const r = c.fields(value, at, `${f.setting('rules')}.<rule>`);
    const templates = r.strings('templates') ?? [];
    if (templates.length === 0) c.problem(r.path('templates'), 'required: at least one URL template, e.g. "https://cdn.example.com/{path}"');
    templates.forEach((t, i) => {
      const unknown = [...t.matchAll(TEMPLATE_PLACEHOLDER_RE)].map((m) => m[1]).filter((p) => p !== 'path' && p !== 'ttl');
      if (unknown.length > 0) c.problem(r.listItemPath('templates', i), `unknown placeholder {${unknown[0]}}: a template may use {path} and {ttl}`);
      else if (/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*@/i.test(t)) c.problem(r.listItemPath('templates', i), 'a template carries user:password, which would be logged and shown: send a purge key in cache_flush.headers');
      else if (provider === 'http' && !isHttpUrl(t.replaceAll('{path}', 'x').replaceAll('{ttl}', '1'))) c.problem(r.listItemPath('templates', i), `the http provider purges URLs: expected http(s)://..., got ${show(t)}`);
      else if (/[\s\0]/.test(t)) c.problem(r.listItemPath('templates', i), `a template has no spaces, got ${show(t)}`);
    });
    const includes = r.regexes('includes');
    const excludes = r.regexes('excludes');
    const ttlMs = r.duration('ttl', true);
    r.done();
    return { name, templates, includes, excludes, ttlSeconds: ttlMs === undefined ? null : Math.floor(ttlMs / 1000) };
  });
}

function checkBudget(c: Checker, app: AppConfig, at: KeyPath): void {
  const pools = Object.values(app.processes ?? {}).filter((p) => p.http);
  const need = pools.reduce((sum, p) => sum + p.instances * p.concurrency, 0);
  const budget = app.dbConnections ?? Infinity;
  if (need <= budget) return;
  const terms = pools.map((p) => `${p.name} ${p.instances}x${p.concurrency}`).join(' + ');
  c.problem(at, `the http pools need ${need} connections (${terms}), more than the budget of ${budget}`);
}

export function checkOverlaps(c: Checker, apps: Record<string, AppConfig>, explicitRoutes: Set<string>): void {
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
