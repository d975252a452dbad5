/**
 * The normalised config: the one shape every component reads. The loader (load.ts) turns a YAML file,
 * environment overrides and the chosen `environments` section into this, or fails with every problem.
 * Durations are milliseconds; paths are absolute.
 *
 * Defaults are named constants here so the CLI, the API and the docs read the same values.
 */
import type { LogLevel } from '../lib/logger.ts';

/** App names (also directory names under the state dir and parts of URLs). */
export const APP_NAME_RE = /^[a-z0-9][a-z0-9_-]*$/;
/** Process type, schedule entry and `scale` key names. */
export const PROCESS_NAME_RE = /^[A-Za-z0-9_-]+$/;

// ---- defaults (SPEC § Config file) -------------------------------------------------------------
export const DEFAULT_STATE_DIR = '.berth';
export const DEFAULT_LISTEN = ['127.0.0.1:8080'];
export const DEFAULT_CONTROL_SOCKET = 'control.sock';
export const DEFAULT_INTERNAL_PREFIX = '/_berth';
export const DEFAULT_TRUSTED_PROXY_COUNT = 0;
export const DEFAULT_MIGRATIONS = 'upgrade';
export const DEFAULT_HISTORY_RETENTION_MS = 14 * 86_400_000;
export const DEFAULT_CLEANUP_CRON = '0 * * * *';
export const DEFAULT_SCHEDULER_DELAY_MS = 60_000;
export const DEFAULT_KEEP_RELEASES = 5;
export const DEFAULT_INSTANCES = 1;
/** Requests one http instance may hold at once when `concurrency` is not set. */
export const DEFAULT_CONCURRENCY = 8;
export const DEFAULT_APP_LISTEN = 'port';
export const DEFAULT_HEALTH_INTERVAL_MS = 2_000;
export const DEFAULT_HEALTH_TIMEOUT_MS = 1_000;
export const DEFAULT_HEALTH_UNHEALTHY_AFTER = 3;
export const DEFAULT_HEALTH_STARTUP_TIMEOUT_MS = 30_000;
export const DEFAULT_QUEUE_MAX = 100;
export const DEFAULT_QUEUE_TIMEOUT_MS = 10_000;
export const DEFAULT_TIMEOUT_HEADERS_MS = 30_000;
export const DEFAULT_TIMEOUT_DRAIN_MS = 30_000;
export const DEFAULT_TIMEOUT_STOP_MS = 10_000;
export const DEFAULT_SCHEDULE_TIMEOUT_MS = 60 * 60_000;
/** Instance restarts: backoff from 1s doubling to 60s, reset after 60s up; crashed after 10 failures in 10 min. */
export const RESTART_BACKOFF_INITIAL_MS = 1_000;
export const RESTART_BACKOFF_MAX_MS = 60_000;
export const RESTART_BACKOFF_RESET_AFTER_MS = 60_000;
export const RESTART_FAILURE_LIMIT = 10;
export const RESTART_FAILURE_WINDOW_MS = 10 * 60_000;
export const HEALTH_FILE_INTERVAL_MS = 5_000;
/** Node's setTimeout limit (2^31-1 ms, about 24.8 days): durations that drive a timer may not exceed it. */
export const MAX_TIMER_MS = 2_147_483_647;
/** Request bodies larger than this get 413 (`max_body`). */
export const DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024;
/**
 * A buffered request body or response is held in memory up to this size, then spilled to a temp file.
 * Small, as nginx's proxy buffers are: a client that never reads costs this much memory, not more.
 */
export const DEFAULT_BUFFER_MEMORY_BYTES = 64 * 1024;
/** A request body that sends nothing for this long gets 408 (nginx's client_body_timeout). */
export const DEFAULT_BODY_TIMEOUT_MS = 60_000;
/** A client that accepts no response bytes for this long is closed (nginx's send_timeout). */
export const DEFAULT_SEND_TIMEOUT_MS = 60_000;
/** Open WebSockets per pool (http process type), counted apart from request slots. */
export const DEFAULT_WEBSOCKETS_MAX = 1000;
/** The user an app runs as (berth running as root) when its source belongs to root (Passenger's default_user). */
export const DEFAULT_USER = 'nobody';
/** Where the call-context header is honoured from when `control.call_context_from` is not set: loopback. */
export const DEFAULT_CALL_CONTEXT_FROM = ['127.0.0.0/8', '::1/128'];
/** A prepared release (copied, extracted or checked out) may hold at most this much, before build. */
export const DEFAULT_MAX_RELEASE_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_MAX_RELEASE_FILES = 100_000;

// ---- types -----------------------------------------------------------------------------------
export type Mode = 'normal' | 'maintenance' | 'read-only';
export const MODES: readonly Mode[] = ['normal', 'maintenance', 'read-only'];
export type Role = 'viewer' | 'deployer' | 'admin';
export const ROLES: readonly Role[] = ['viewer', 'deployer', 'admin'];

/** A front-door or control listener address. */
/** A listener. `tls`: HTTPS (h2 and http/1.1 by ALPN) with certificates chosen by SNI; TCP only. */
export type ListenAddress =
  | { kind: 'tcp'; host: string; port: number; /** as written in config, e.g. "127.0.0.1:8080" */ text: string; tls: boolean }
  | { kind: 'unix'; path: string; text: string; tls: false };

/** A certificate and its key on disk: absolute paths to PEM files. `certificate` may hold the chain after the leaf. */
export interface CertificateFiles {
  certificate: string;
  key: string;
}

/** One `apps.<app>.tls` certificate. `hosts` empty: every host of the app. */
export interface AppCertificate {
  /** The key it was written at (`apps.shop.tls`, `apps.shop.tls.1`), for messages and `berth certs`. */
  from: string;
  hosts: string[];
  files: CertificateFiles;
}

/** The top-level `tls` block: certificates that are not an app's own. */
export interface TlsConfig {
  /** A directory of certificates, each serving the DNS names written in it; null: none. */
  directory: string | null;
  /** For clients without SNI and names nothing else serves; null: those handshakes are refused. */
  defaultCertificate: CertificateFiles | null;
}

/** The top-level `acme` block: how berth obtains certificates for apps with `tls: { acme: true }`. */
export interface AcmeConfig {
  /** The ACME directory URL (default Let's Encrypt production). */
  directory: string;
  email: string | null;
  /** Absolute path of a PEM CA certificate trusted for the directory's HTTPS (a private CA); null: system roots. */
  caRoot: string | null;
  challenge: 'http-01' | 'tls-alpn-01';
  /** On-demand TLS: a name is ordered at its first handshake only when GET <ask>?domain=<name> answers 200. */
  ask: string | null;
  onDemand: { perMinute: number; inFlight: number };
}

/** `apps.<app>.hsts`: the Strict-Transport-Security header sent on HTTPS responses. */
export interface HstsConfig {
  maxAgeS: number;
  includeSubdomains: boolean;
  preload: boolean;
}

export interface ProcessConfig {
  name: string;
  command: string;
  instances: number;
  /** Requests one instance holds at once (http types). Non-http types: 1. */
  concurrency: number;
  http: boolean;
  heartbeatTimeoutMs: number | null;
  /** Merged over the app's `env` for this process type's instances (`processes.<type>.env`). */
  env: Record<string, string>;
}

export interface RouteConfig {
  /** Path prefix, always starting with `/`, without a trailing slash except for `/` itself. */
  path: string;
  /** Process type (pool) name, for a proxied route. */
  to: string | null;
  /** Directory inside the release, for a static route. Exactly one of `to` and `static` is set. */
  static: string | null;
  /** `immutable`, or a literal Cache-Control value, or null. */
  cache: string | null;
  cors: string | null;
  /** `routes[].buffering`, default true; false: neither request bodies nor responses are buffered. */
  buffering: boolean;
  /** `routes[].affinity` (routes to a process type only): which instance a client's requests keep going to; null: none. */
  affinity: RouteAffinity | null;
}

/**
 * `routes[].affinity`, session affinity (proxy/affinity.ts). `cookie`: berth sets a signed cookie naming
 * the instance. `ip`, `header` and `query`: a rendezvous hash of the client IP (after
 * `trusted_proxy_count`), of a request header (`name` lower-cased) or of a query parameter over the pool.
 */
export type RouteAffinity = { by: 'cookie' } | { by: 'ip' } | { by: 'header'; name: string } | { by: 'query'; name: string };

export interface HealthConfig {
  /** HTTP path probed on each instance; null: readiness is a TCP connect. */
  path: string | null;
  intervalMs: number;
  timeoutMs: number;
  unhealthyAfter: number;
  startupTimeoutMs: number;
  /** Default: timeouts.headersMs. */
  busyGraceMs: number;
}

export interface RateLimitConfig {
  /** Sustained rate: `count` requests per `perMs`. */
  count: number;
  perMs: number;
  burst: number;
  /** Path prefixes the limit applies to; empty: every path. */
  paths: string[];
}

export interface ScheduleConfig {
  name: string;
  cron: string;
  command: string;
  timeoutMs: number;
  timezone: string | null;
  overlap: 'skip' | 'allow';
}

/** One `cache_flush.rules.<name>`: which changed paths it takes, and the URLs (or ARLs) it makes of each. */
export interface CacheFlushRule {
  name: string;
  /** URLs or Akamai ARLs with `{path}` (the path without its leading slash) and `{ttl}`; one without `{path}` gets the path appended. */
  templates: string[];
  /** Regexes on the path: a rule takes a path that matches any include (or every path without includes) and no exclude. */
  includes: string[];
  excludes: string[];
  /** `{ttl}` in seconds; null: from the static route's `cache` setting. */
  ttlSeconds: number | null;
}

/** `apps.<app>.cache_flush`: purge a CDN's cache of what a deploy changed (SPEC § Cache flush). */
export interface CacheFlushConfig {
  provider: 'http' | 'akamai';
  /** Every rule, by name, in config order. */
  rules: CacheFlushRule[];
  /** The names of the rules that run (an environment overrides the list); default: every rule. */
  enable: string[];
  /** Paths flushed on every deploy whatever changed, such as `/` or `/sitemap.xml`. */
  paths: string[];
  /** A flush still failing after this long gives up. */
  retryForMs: number;
  /** http: the request method, headers, most requests at once, and each request's timeout. */
  method: string;
  headers: Record<string, string>;
  concurrency: number;
  timeoutMs: number;
  /** akamai: Fast Purge's action and network. */
  action: 'invalidate' | 'delete';
  network: 'production' | 'staging';
}

/** `apps.<app>.buffering`: nginx's proxy_request_buffering / proxy_buffering, per app. */
export interface BufferingConfig {
  /** Read a request body whole (memory, then a temp file) before the request takes an admission slot. */
  requests: boolean;
  /** Read the app's response as fast as it sends (memory, then a temp file), freeing the slot early. */
  responses: boolean;
  /** Per body or response: held in memory up to this many bytes, then spilled to `<state_dir>/tmp`. */
  memoryBytes: number;
  /** A request body idle for this long gets 408. */
  bodyTimeoutMs: number;
  /** A client that accepts no response bytes for this long is closed. */
  sendTimeoutMs: number;
}

export interface WebSocketsConfig {
  /** Most WebSockets open at once per pool (http process type); beyond it: 503. Not request slots. */
  max: number;
  /** A WebSocket with no bytes either way for this long is closed with 1001; null: never. */
  idleTimeoutMs: number | null;
}

export interface AppConfig {
  name: string;
  /** OS user every process of the app runs as when berth runs as root; null: the source's owner (root -> default_user). */
  user: string | null;
  /** OS group; null: the user's primary group. */
  group: string | null;
  /** Lower-cased host patterns: exact names and `*.suffix` wildcards. Empty: catch-all. */
  hosts: string[];
  /** Absolute directory or .tar.gz path, or a git URL/path with `#ref`; null when not set. */
  source: string | null;
  build: string | null;
  release: string | null;
  keepReleases: number;
  shared: string[];
  env: Record<string, string>;
  /** Null: process types come from each release's Procfile. */
  processes: Record<string, ProcessConfig> | null;
  /** Instance counts by process type, overriding Procfile defaults. */
  scale: Record<string, number>;
  listen: 'port' | 'socket';
  routes: RouteConfig[];
  health: HealthConfig;
  queue: { max: number; timeoutMs: number };
  timeouts: { headersMs: number; drainMs: number; stopMs: number };
  /** Null: no budget set, nothing to check. */
  dbConnections: number | null;
  rateLimit: RateLimitConfig | null;
  schedule: Record<string, ScheduleConfig>;
  /** File name under <state_dir>/apps/<app>/ whose touch reloads the app; null: none. */
  reloadTrigger: string | null;
  /** Paths inside the release. */
  pages: { maintenance: string | null; readOnly: string | null; error: string | null };
  cacheFlush: CacheFlushConfig | null;
  /** Request bodies larger than this get 413. */
  maxBodyBytes: number;
  buffering: BufferingConfig;
  websockets: WebSocketsConfig;
  /** Limits on a prepared release (archive bombs): bytes and files. */
  maxReleaseBytes: number;
  maxReleaseFiles: number;
  /** The app's certificates, per host first; empty: the certificate directory or default serve it. */
  tls: AppCertificate[];
  /** `tls: { acme: true }`: certificates for the app's hosts come from ACME (wildcards: on demand). */
  acme: boolean;
  /** Plain-HTTP requests get a 308 to https (not ACME challenges, not the internal prefix). */
  httpsRedirect: boolean;
  hsts: HstsConfig | null;
  /** Requests for the app's other hosts get a 308 to this one; null: none. */
  canonicalHost: string | null;
}

export interface TokenConfig {
  hash: string;
  roles: Role[];
}

export interface ControlConfig {
  /** Absolute path of the control socket. */
  socket: string;
  socketGroup: string | null;
  listen: ListenAddress | null;
  tokens: Record<string, TokenConfig>;
  callContextHeader: string | null;
  /** environment -> user -> app regex sources; each matches the whole app name. */
  permissions: Record<string, Record<string, string[]>>;
  /** Starting with permissions that cannot be enforced against app code (berth not root) is allowed. */
  permissionsUnenforcedOk: boolean;
  /** Addresses or CIDR blocks the call-context header is honoured from (e.g. "127.0.0.0/8", "::1/128"). */
  callContextFrom: string[];
}

export interface BerthConfig {
  /** Absolute path of the config file that was loaded. */
  file: string;
  /** The `environments` entry applied, or null. */
  environment: string | null;
  /** Absolute. */
  stateDir: string;
  listen: ListenAddress[];
  control: ControlConfig;
  trustedProxyCount: number;
  /** Starts with `/`, no trailing slash. */
  internalPrefix: string;
  logLevels: Partial<Record<string, LogLevel>>;
  /** Null: SQLite at <stateDir>/berth.db. */
  database: string | null;
  /** PostgreSQL: most connections the gateway itself opens (not counted in any app's `db_connections`). */
  databasePool: number;
  /** This gateway's name in a fleet (`node_id`); null: derived at start from the host name and the state dir. */
  nodeId: string | null;
  /** A fleet node whose heartbeat is older than this is `lost`, and its deploy locks may be taken. */
  nodeTimeoutMs: number;
  migrations: 'upgrade' | 'none' | 'model';
  resetState: boolean;
  historyRetentionMs: number;
  cleanupCron: string;
  schedulerDelayMs: number;
  /** Absolute, or null. */
  healthFile: string | null;
  metricsPublic: boolean;
  /** Keep request header names with underscores (nginx's underscores_in_headers); default false: dropped. */
  underscoresInHeaders: boolean;
  /** Front-door health endpoints give reasons, and responses carry X-Berth-Release; default false. */
  publicDetails: boolean;
  /** The user an app runs as, berth being root, when its source belongs to root. */
  defaultUser: string;
  /** In config file order. */
  tls: TlsConfig;
  acme: AcmeConfig;
  proxy: ProxyConfig;
  apps: Record<string, AppConfig>;
}

/** `proxy`: the front door's threads. */
export interface ProxyConfig {
  /** Threads serving the front door, the main thread included (`auto` resolved to the core count). */
  workers: number;
  /** Written as `auto`. */
  auto: boolean;
}

/** `database_pool` when not written: the gateway's own PostgreSQL connections. */
export const DEFAULT_DATABASE_POOL = 4;
export const MAX_DATABASE_POOL = 100;

/** `node_timeout` when not written, and the least it may be (nodes write a heartbeat every 2s). */
export const DEFAULT_NODE_TIMEOUT_MS = 10_000;
export const MIN_NODE_TIMEOUT_MS = 5_000;
export const NODE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:\/@-]{0,127}$/;

/** The most proxy threads `proxy.workers` (or `auto`) gives. */
export const MAX_PROXY_WORKERS = 32;

/** The http process types of an app (those that can be route targets). */
export function httpProcesses(app: AppConfig): ProcessConfig[] {
  return app.processes ? Object.values(app.processes).filter((p) => p.http) : [];
}

/** `instances × concurrency` summed over the app's http pools: what the DB budget must cover. */
export function dbDemand(app: AppConfig): number {
  return httpProcesses(app).reduce((sum, p) => sum + p.instances * p.concurrency, 0);
}

// ---- defaults added with the loader (src/config/validate.ts) ---------------------------------
/** `schedule.<name>.overlap` when not set: a run is skipped while the previous one still runs. */
export const DEFAULT_SCHEDULE_OVERLAP = 'skip';
export const DEFAULT_CACHE_FLUSH_PROVIDER = 'http';
export const DEFAULT_CACHE_FLUSH_METHOD = 'PURGE';
/** Purge requests in flight at once per app (provider `http`). */
export const DEFAULT_CACHE_FLUSH_CONCURRENCY = 4;
export const DEFAULT_CACHE_FLUSH_RETRY_FOR_MS = 15 * 60_000;
export const DEFAULT_CACHE_FLUSH_TIMEOUT_MS = 10_000;
/** `apps.<app>.hsts.max_age` when not written: one year, as hstspreload.org asks. */
export const DEFAULT_HSTS_MAX_AGE_S = 31_536_000;
export const DEFAULT_ACME_DIRECTORY = 'https://acme-v02.api.letsencrypt.org/directory';
/** On-demand orders started per minute, and names asked about or ordered at once. */
export const DEFAULT_ON_DEMAND_PER_MINUTE = 10;
export const DEFAULT_ON_DEMAND_IN_FLIGHT = 4;
