/**
 * The settings catalogue: every key a berth.yaml may hold, with its type as a user writes it, its default
 * (from the named constants of schema.ts), a description and an example. It is the one list of keys:
 * - the validator may read no other key (checker.ts `Fields` throws an internal error for one it lacks);
 * - test/config/settings-reference.test.ts loads every example and choice through the real loader and
 *   checks every default against the validator, so a key listed here is accepted as documented;
 * - docs/settings.md is rendered from it (settings-reference.ts, `npm run docs:settings`).
 *
 * Paths: `<name>` is a name the user chooses (PLACEHOLDERS says which), `[]` an item of a list. Mappings
 * that only group keys (`control`, `apps.<app>.health`) are not listed themselves: they exist because
 * keys lie under them. Whether a config reload applies a key is read from src/gateway/reload-plan.ts by
 * the generator; `reload: 'start'` marks the few keys only a start reads.
 */
import { formatDuration } from '../lib/durations.ts';
import { LOGGER_NAMES } from '../lib/logger.ts';
import { formatSize } from '../lib/sizes.ts';
import {
  APP_NAME_RE,
  DEFAULT_ACME_DIRECTORY,
  DEFAULT_APP_LISTEN,
  DEFAULT_BODY_TIMEOUT_MS,
  DEFAULT_BUFFER_MEMORY_BYTES,
  DEFAULT_CACHE_FLUSH_CONCURRENCY,
  DEFAULT_CACHE_FLUSH_METHOD,
  DEFAULT_CACHE_FLUSH_PROVIDER,
  DEFAULT_CACHE_FLUSH_RETRY_FOR_MS,
  DEFAULT_CACHE_FLUSH_TIMEOUT_MS,
  DEFAULT_CALL_CONTEXT_FROM,
  DEFAULT_CLEANUP_CRON,
  DEFAULT_CONCURRENCY,
  DEFAULT_CONTROL_SOCKET,
  DEFAULT_DATABASE_POOL,
  DEFAULT_HEALTH_INTERVAL_MS,
  DEFAULT_HEALTH_STARTUP_TIMEOUT_MS,
  DEFAULT_HEALTH_TIMEOUT_MS,
  DEFAULT_HEALTH_UNHEALTHY_AFTER,
  DEFAULT_HISTORY_RETENTION_MS,
  DEFAULT_HSTS_MAX_AGE_S,
  DEFAULT_INSTANCES,
  DEFAULT_INTERNAL_PREFIX,
  DEFAULT_KEEP_RELEASES,
  DEFAULT_LISTEN,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_RELEASE_BYTES,
  DEFAULT_MAX_RELEASE_FILES,
  DEFAULT_MIGRATIONS,
  DEFAULT_NODE_TIMEOUT_MS,
  DEFAULT_ON_DEMAND_IN_FLIGHT,
  DEFAULT_ON_DEMAND_PER_MINUTE,
  DEFAULT_QUEUE_MAX,
  DEFAULT_QUEUE_TIMEOUT_MS,
  DEFAULT_SCHEDULE_OVERLAP,
  DEFAULT_SCHEDULE_TIMEOUT_MS,
  DEFAULT_SCHEDULER_DELAY_MS,
  DEFAULT_SEND_TIMEOUT_MS,
  DEFAULT_STATE_DIR,
  DEFAULT_TIMEOUT_DRAIN_MS,
  DEFAULT_TIMEOUT_HEADERS_MS,
  DEFAULT_TIMEOUT_STOP_MS,
  DEFAULT_TRUSTED_PROXY_COUNT,
  DEFAULT_USER,
  DEFAULT_WEBSOCKETS_MAX,
  HEALTH_FILE_INTERVAL_MS,
  MAX_DATABASE_POOL,
  MAX_PROXY_WORKERS,
  MIN_NODE_TIMEOUT_MS,
  PROCESS_NAME_RE,
  ROLES,
} from './schema.ts';

/** One key of the config file. */
export interface Setting {
  /** The key path: dotted, `<name>` for a name the user chooses, `[]` for an item of a list. */
  path: string;
  /** The type as written in YAML: `duration`, `size`, `path`, `true | false`, `list of ...`. */
  type: string;
  /** The only values the key takes (or, for a list, its items take); the type then lists them. */
  choices?: readonly string[];
  /** The default as a YAML value; writing it must give the same config as leaving the key out. */
  default?: unknown;
  /** The default in words, where it is no one value (or what the value means). */
  defaultNote?: string;
  /** The key must be written whenever the mapping around it is. */
  required?: boolean;
  /** Read only at start: a config reload accepts a change, which applies from the next start. */
  reload?: 'start';
  /** One to three sentences, markdown. */
  description: string;
  /** A value a config may hold, as YAML reads it. */
  example: unknown;
  /** Keys beside it in the same mapping that the example needs (a static route for `cache`). */
  exampleWith?: Readonly<Record<string, unknown>>;
}

/** A group of keys, one section of the reference page. */
export interface SettingsSection {
  title: string;
  /** Markdown: what the keys have in common. */
  intro: string;
  settings: readonly Setting[];
}

/** The names a user chooses, as paths write them: what each stands for, and the name examples use. */
export const PLACEHOLDERS: Readonly<Record<string, { means: string; example: string }>> = {
  '<app>': { means: `an app name, matching \`${APP_NAME_RE.source}\``, example: 'shop' },
  '<type>': { means: `a process type, matching \`${PROCESS_NAME_RE.source}\``, example: 'worker' },
  '<name>': { means: `a schedule entry, matching \`${PROCESS_NAME_RE.source}\``, example: 'cleanup' },
  '<rule>': { means: 'a cache flush rule: 1-64 letters, digits, `.`, `_` and `-`', example: 'cdn' },
  '<user>': { means: 'a user of the control API, as its token or call context names it', example: 'alice' },
  '<environment>': { means: 'an environment name, as `--env` or `BERTH_ENV` gives it', example: 'production' },
  '<logger>': { means: `a logger: ${LOGGER_NAMES.map((n) => `\`${n}\``).join(', ')}`, example: 'proxy' },
  '<NAME>': { means: 'an environment variable name: letters, digits and `_`, not starting with a digit', example: 'LOG_FORMAT' },
  '<header>': { means: 'an HTTP header name', example: 'X-Purge-Key' },
};

const ms = formatDuration;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export const SETTINGS_SECTIONS: readonly SettingsSection[] = [
  {
    title: 'Gateway',
    intro: 'The top level of the file: where berth keeps its state, what it listens on, and how the front door treats requests.',
    settings: [
      { path: 'state_dir', type: 'path', default: DEFAULT_STATE_DIR, example: '/var/lib/berth',
        description: "Where berth keeps releases, the SQLite store, logs, sockets and temp files. Relative to the config file's directory." },
      { path: 'listen', type: 'list of addresses', default: DEFAULT_LISTEN, example: ['0.0.0.0:80', { address: '0.0.0.0:443', tls: true }],
        description: 'The front door\'s listeners: `host:port`, `[v6]:port` (port 0: any free port), `unix:path` (relative to `state_dir`), or `{ address, tls }`. One bare address counts as a list of one.' },
      { path: 'listen[].address', type: 'address', required: true, example: '0.0.0.0:443',
        description: 'The address of a listener written as a mapping: `host:port`, `[v6]:port` or `unix:path`.' },
      { path: 'listen[].tls', type: 'true | false', default: false, example: true,
        description: 'Serve HTTPS here (h2 and http/1.1 by ALPN), choosing certificates by SNI; TCP only. A TLS listener needs certificates: an app\'s `tls`, `tls.directory` or `tls.default_certificate`.' },
      { path: 'trusted_proxy_count', type: 'integer ≥ 0', default: DEFAULT_TRUSTED_PROXY_COUNT, example: 1,
        description: 'How many `X-Forwarded-For` hops nearest berth are trusted proxies: the client IP is the rightmost untrusted entry. Above 0, a client\'s `Forwarded` header is passed on too.' },
      { path: 'internal_prefix', type: 'path prefix', default: DEFAULT_INTERNAL_PREFIX, example: '/_gateway',
        description: 'Where the gateway\'s own endpoints (health, ready, app health, metrics) live on the front door. Starts with `/`, without a trailing `/`.' },
      { path: 'log_levels', type: 'mapping of logger to level', defaultNote: 'every logger at `info`', example: { root: 'info', proxy: 'warn' },
        description: 'Log levels per logger. A logger not named takes `root`\'s level.' },
      { path: 'log_levels.<logger>', type: 'level', choices: LOG_LEVELS, defaultNote: '`root`\'s level', example: 'debug',
        description: 'The level of one logger.' },
      { path: 'health_file', type: 'path', example: 'run/healthy',
        description: `A file the gateway touches every ${ms(HEALTH_FILE_INTERVAL_MS)} while it is healthy, for container platforms that probe a file. Relative to the config file.` },
      { path: 'metrics_public', type: 'true | false', default: false, example: true,
        description: 'Also serve `<internal_prefix>/metrics` (Prometheus text) on the front door. It is always on the control API.' },
      { path: 'public_details', type: 'true | false', default: false, example: true,
        description: 'Front-door health endpoints give reasons and each app\'s health, an unknown app is 404, and responses carry `X-Berth-Release`. Otherwise they say only ok or unavailable.' },
      { path: 'underscores_in_headers', type: 'true | false', default: false, example: true,
        description: 'Keep request header names that contain `_`. By default they are dropped, as nginx does.' },
      { path: 'default_user', type: 'user name or id', default: DEFAULT_USER, example: 'www-data',
        description: 'With berth running as root: the user of an app without `user` whose source belongs to root or is not a path on this machine. berth never picks root by itself.' },
      { path: 'environments.<environment>', type: 'mapping of config keys', example: { trusted_proxy_count: 1, apps: { shop: { processes: { web: { instances: 4 } } } } },
        description: 'Keys deep-merged over the rest of the file when `--env` or `BERTH_ENV` names this environment: mappings merge, lists and scalars replace. Every environment is checked for unknown keys, chosen or not.' },
    ],
  },
  {
    title: 'Control API',
    intro: 'The `control` mapping: the control socket the CLI uses, the optional TCP control API, and who may call it as what.',
    settings: [
      { path: 'control.socket', type: 'path', default: DEFAULT_CONTROL_SOCKET, example: '/run/berth/control.sock',
        description: 'The control API\'s unix socket, relative to `state_dir`. Mode 0600, or 0660 with `socket_group`.' },
      { path: 'control.socket_group', type: 'group name', example: 'berth-admins',
        description: 'A group whose members may use the control socket too (mode 0660).' },
      { path: 'control.listen', type: 'host:port', example: '127.0.0.1:7000',
        description: 'Also serve the control API over TCP. Callers there need a bearer token (`tokens`) or the call-context header.' },
      { path: 'control.tokens.<user>.hash', type: 'string', required: true, example: `sha256:${'4e'.repeat(32)}`,
        description: 'The SHA-256 of the user\'s bearer token, as `sha256:` and 64 hex digits (`berth token new` makes both). The token itself is never in the config.' },
      { path: 'control.tokens.<user>.roles', type: 'list of roles', choices: ROLES, required: true, example: ['deployer'],
        description: '`viewer` reads; `deployer` also deploys, rolls back, reloads, switches modes and runs tasks; `admin` has everything.' },
      { path: 'control.call_context_header', type: 'header name', example: 'X-Berth-Call-Context',
        description: 'A header set by a trusted auth proxy, carrying base64 JSON `{"user": ..., "roles": [...]}`, accepted in place of a token. Matched in any case.' },
      { path: 'control.call_context_from', type: 'list of IP addresses or CIDR blocks', default: DEFAULT_CALL_CONTEXT_FROM, example: ['10.0.0.5', '127.0.0.0/8'],
        description: 'Where the call-context header is honoured from. From anywhere else it is ignored, and the request needs a token.' },
      { path: 'control.permissions.<environment>.<user>', type: 'list of regexes', example: ['shop', 'blog-.*'],
        description: 'The apps this user may touch while the gateway runs this environment (`default` without one); each regex matches the whole app name. Users not listed are unrestricted.' },
      { path: 'control.permissions_unenforced_ok', type: 'true | false', default: false, example: true,
        description: 'Start even though berth is not root, so app code shares its user and `permissions` cannot bind it. Without it, permissions that restrict anyone are then a config error.' },
    ],
  },
  {
    title: 'Certificates',
    intro: 'The `tls` mapping: certificates that are not an app\'s own. An app\'s own are under [HTTPS per app](#https-per-app).',
    settings: [
      { path: 'tls.directory', type: 'path', example: '/etc/berth/certs',
        description: 'A directory of certificates, each serving the DNS names written in it (`<name>.crt` + `<name>.key`, mkcert\'s and certbot\'s layouts too). Watched: changes apply without a reload.' },
      { path: 'tls.default_certificate.certificate', type: 'path', required: true, example: '/etc/ssl/default.crt',
        description: 'The PEM certificate (the chain may follow the leaf) for clients without SNI and for names nothing else serves. Without a default certificate, those handshakes are refused.' },
      { path: 'tls.default_certificate.key', type: 'path', required: true, example: '/etc/ssl/default.key',
        description: 'Its PEM private key, unencrypted.' },
    ],
  },
  {
    title: 'ACME',
    intro: 'The `acme` mapping: how berth obtains certificates for apps with `tls: { acme: true }`. Every key is optional.',
    settings: [
      { path: 'acme.directory', type: 'URL', default: DEFAULT_ACME_DIRECTORY, example: 'https://acme-staging-v02.api.letsencrypt.org/directory',
        description: 'The ACME directory of the certificate authority. The default is Let\'s Encrypt production.' },
      { path: 'acme.email', type: 'email address', example: 'ops@example.com',
        description: 'The account\'s contact.' },
      { path: 'acme.ca_root', type: 'path', defaultNote: 'the system\'s roots', example: 'ca/root.pem',
        description: 'A PEM CA certificate trusted for the directory\'s HTTPS, for a private CA. Relative to the config file.' },
      { path: 'acme.challenge', type: 'challenge', choices: ['http-01', 'tls-alpn-01'], default: 'http-01', example: 'tls-alpn-01',
        description: 'How the CA checks a name: `http-01` needs a cleartext listener (port 80 for a public CA), `tls-alpn-01` is answered on the TLS listeners.' },
      { path: 'acme.ask', type: 'URL', example: 'http://127.0.0.1:9000/allowed',
        description: 'On-demand TLS: a name is ordered at its first handshake only when `GET <ask>?domain=<name>` answers 200. Needed by ACME apps with wildcard hosts or none.' },
      { path: 'acme.on_demand.per_minute', type: 'integer ≥ 1', default: DEFAULT_ON_DEMAND_PER_MINUTE, example: 20,
        description: 'On-demand orders started per minute, at most.' },
      { path: 'acme.on_demand.in_flight', type: 'integer ≥ 1', default: DEFAULT_ON_DEMAND_IN_FLIGHT, example: 8,
        description: 'Names asked about or ordered at once, at most.' },
    ],
  },
  {
    title: 'Proxy threads',
    intro: 'The `proxy` mapping.',
    settings: [
      { path: 'proxy.workers', type: `integer 1-${MAX_PROXY_WORKERS} | auto`, default: 1, example: 'auto',
        description: `Threads serving the front door, the main thread included; \`auto\` is one per core, at most ${MAX_PROXY_WORKERS}. Limits, queues and rate limits stay global across threads.` },
    ],
  },
  {
    title: 'State store and fleet',
    intro: 'Where berth keeps its state, how a fleet of gateways shares one PostgreSQL database, and the housekeeping that runs on it.',
    settings: [
      { path: 'database', type: 'postgres URL', default: null, defaultNote: 'SQLite at `<state_dir>/berth.db`', example: 'postgres://berth:secret@db.internal:5432/berth',
        description: 'A `postgres://` URL makes the state store PostgreSQL, and gateways sharing it a fleet. The password never appears in logs, status or errors.' },
      { path: 'database_pool', type: `integer 1-${MAX_DATABASE_POOL}`, default: DEFAULT_DATABASE_POOL, example: 10,
        description: 'PostgreSQL: the most connections the gateway itself opens. Apps\' `db_connections` do not count them.' },
      { path: 'node_id', type: 'string', defaultNote: '`<hostname>:<state_dir>`', example: 'eu-1',
        description: 'This gateway\'s name in a fleet: 1-128 letters, digits and `. _ : / @ -`, starting with a letter or digit.' },
      { path: 'node_timeout', type: `duration ≥ ${ms(MIN_NODE_TIMEOUT_MS)}`, default: ms(DEFAULT_NODE_TIMEOUT_MS), example: '30s',
        description: 'A fleet node silent this long is lost, and its deploy and ACME locks are free to take.' },
      { path: 'migrations', type: 'policy', choices: ['upgrade', 'none', 'model'], default: DEFAULT_MIGRATIONS, reload: 'start', example: 'none',
        description: 'At start: `upgrade` applies new schema migrations, `none` applies none, `model` creates the tables from the current schema (development only).' },
      { path: 'reset_state', type: 'true | false', default: false, reload: 'start', example: true,
        description: 'Drop every berth table at start. Development only.' },
      { path: 'history_retention', type: 'duration', default: ms(DEFAULT_HISTORY_RETENTION_MS), example: '90d',
        description: 'Deploys, task runs, audit rows and lost fleet nodes older than this are cleaned up. A cut-off, not a timer: it may exceed 24.8 days.' },
      { path: 'cleanup_cron', type: 'cron', default: DEFAULT_CLEANUP_CRON, example: '30 4 * * *',
        description: 'When the built-in cleanup job runs: it deletes old history and releases beyond `keep_releases`.' },
      { path: 'scheduler_delay', type: 'duration, 0 allowed', default: ms(DEFAULT_SCHEDULER_DELAY_MS), reload: 'start', example: '10s',
        description: 'How long after start no scheduled task runs; 0 runs schedules from the first tick.' },
    ],
  },
  {
    title: 'Apps',
    intro: '`apps` maps each app\'s name to its settings. An app needs none: without `processes` its process types come from each release\'s Procfile.',
    settings: [
      { path: 'apps.<app>.hosts', type: 'list of host names', default: [], defaultNote: 'catch-all', example: ['shop.example.com', '*.shop.example.com'],
        description: 'The host names the app serves: exact names and `*.suffix` wildcards, without a port. Empty: every host no other app claims.' },
      { path: 'apps.<app>.source', type: 'path or git URL', example: './apps/shop',
        description: 'The default deploy source: a directory or a `.tar.gz` (relative to the config file), or a git URL or path with `#ref`. The first start deploys it.' },
      { path: 'apps.<app>.build', type: 'command', example: 'npm ci --omit=dev',
        description: 'Run in each new release directory before anything starts; a failure fails the deploy.' },
      { path: 'apps.<app>.release', type: 'command', example: 'node migrate.js',
        description: 'Run once per deploy, rollback or reload, in the new release\'s environment, before the switch.' },
      { path: 'apps.<app>.keep_releases', type: 'integer ≥ 1', default: DEFAULT_KEEP_RELEASES, example: 10,
        description: 'Releases kept on disk. The active and previous releases are never pruned; failed ones do not count.' },
      { path: 'apps.<app>.shared', type: 'list of paths inside the release', default: [], example: ['uploads', '.env'],
        description: 'Linked from `<state_dir>/apps/<app>/shared/` into every release. A missing one fails the deploy.' },
      { path: 'apps.<app>.env.<NAME>', type: 'string', example: 'json',
        description: 'An environment variable of every process of the app. The value keeps the text written (`0123` stays `0123`); `~` or nothing is the empty string.' },
      { path: 'apps.<app>.user', type: 'user name or id', defaultNote: 'the source\'s owner (root: `default_user`)', example: 'shop',
        description: 'With berth running as root: the OS user of every process of the app. `root` only when written.' },
      { path: 'apps.<app>.group', type: 'group name or id', defaultNote: 'the user\'s primary group', example: 'shop',
        description: 'With berth running as root: the one group of every process of the app.' },
      { path: 'apps.<app>.listen', type: 'how instances listen', choices: ['port', 'socket'], default: DEFAULT_APP_LISTEN, example: 'socket',
        description: '`port`: on `$PORT` at 127.0.0.1; `socket`: on the unix socket `$BERTH_SOCKET`.' },
      { path: 'apps.<app>.scale.<type>', type: 'integer ≥ 0', defaultNote: `\`${DEFAULT_INSTANCES}\``, example: 2,
        description: 'Instances of a Procfile process type. Only for apps without `processes`, which set `instances` instead.' },
      { path: 'apps.<app>.db_connections', type: 'integer ≥ 1', example: 40,
        description: 'The app\'s database connection budget. With `processes`, `instances × concurrency` summed over its http types must fit, or the config is refused.' },
      { path: 'apps.<app>.reload_trigger', type: 'file name', example: 'restart.txt',
        description: 'Touching `<state_dir>/apps/<app>/<file>` reloads the app with zero downtime.' },
      { path: 'apps.<app>.max_body', type: 'size', default: formatSize(DEFAULT_MAX_BODY_BYTES), example: '20m',
        description: 'Request bodies larger than this get 413.' },
      { path: 'apps.<app>.max_release_size', type: 'size', default: formatSize(DEFAULT_MAX_RELEASE_BYTES), example: '2g',
        description: 'The most a prepared release (copied, extracted or checked out) may hold, before build. More fails the deploy.' },
      { path: 'apps.<app>.max_release_files', type: 'integer ≥ 1', default: DEFAULT_MAX_RELEASE_FILES, example: 200000,
        description: 'The most files, directories and links a prepared release may hold. More fails the deploy.' },
    ],
  },
  {
    title: 'Processes',
    intro: '`apps.<app>.processes` maps process types to their commands. An *http* type gets traffic and health probes; any other is a background worker.',
    settings: [
      { path: 'apps.<app>.processes', type: 'mapping of process types', defaultNote: 'each release\'s Procfile (`web` is http)', example: { web: { command: 'node server.js', instances: 2 } },
        description: 'The app\'s process types. When written, it declares at least one, and `scale` does not apply.' },
      { path: 'apps.<app>.processes.<type>.command', type: 'command', required: true, example: 'node worker.js',
        description: 'Run through `sh -c` in the release directory, so `$PORT` expands.' },
      { path: 'apps.<app>.processes.<type>.instances', type: 'integer ≥ 0', default: DEFAULT_INSTANCES, example: 2,
        description: 'How many processes of this type run.' },
      { path: 'apps.<app>.processes.<type>.http', type: 'true | false', defaultNote: '`true` for `web` and route targets, else `false`', example: true,
        description: 'Whether the type takes traffic. `false` on a route target is an error.' },
      { path: 'apps.<app>.processes.<type>.concurrency', type: 'integer ≥ 1', default: DEFAULT_CONCURRENCY, example: 16, exampleWith: { http: true },
        description: 'Requests one instance holds at once (http types), also given to it as `BERTH_DB_POOL_SIZE`. Non-http types always have 1.' },
      { path: 'apps.<app>.processes.<type>.heartbeat_timeout', type: 'duration', example: '30s',
        description: 'Non-http types only: an instance that does not touch `$BERTH_HEARTBEAT_FILE` within this is restarted.' },
      { path: 'apps.<app>.processes.<type>.env.<NAME>', type: 'string', example: 'text',
        description: 'An environment variable of this type\'s instances, over the app\'s `env`.' },
    ],
  },
  {
    title: 'Routes',
    intro: '`apps.<app>.routes`: which paths of the app\'s hosts go to which process type, or are static files. The longest path prefix wins within a host.',
    settings: [
      { path: 'apps.<app>.routes', type: 'list of routes', defaultNote: '`/` to `web` when the app has (or, from a Procfile, may have) an http `web` type', example: [{ path: '/static', static: 'public', cache: 'immutable' }, { path: '/', to: 'web' }],
        description: 'Each path once per app; two apps may not route the same host and path.' },
      { path: 'apps.<app>.routes[].path', type: 'path prefix', required: true, example: '/static',
        description: 'Starts with `/`; a trailing `/` is dropped.' },
      { path: 'apps.<app>.routes[].to', type: 'process type', example: 'web',
        description: 'The http process type (pool) that serves the route. Exactly one of `to` and `static`.' },
      { path: 'apps.<app>.routes[].static', type: 'path inside the release', example: 'public',
        description: 'A directory of the release served as static files, with ETag, Range and precompressed `.br` and `.gz` siblings.' },
      { path: 'apps.<app>.routes[].cache', type: 'string', example: 'immutable', exampleWith: { static: 'public' },
        description: 'Static routes: `immutable` (one year) or a literal `Cache-Control` value.' },
      { path: 'apps.<app>.routes[].cors', type: 'string', example: '*', exampleWith: { static: 'public' },
        description: 'Static routes: the `Access-Control-Allow-Origin` value.' },
      { path: 'apps.<app>.routes[].buffering', type: 'true | false', default: true, example: false,
        description: '`false`: neither request bodies nor responses are buffered on this route, for streaming and long polling.' },
      { path: 'apps.<app>.routes[].affinity', type: 'cookie | ip | header:<name> | query:<name>', example: 'cookie', exampleWith: { to: 'web' },
        description: 'Routes to a process type: which instance a client\'s requests keep going to. `cookie`: berth sets a signed cookie naming the instance; `ip`, `header:<name>` and `query:<name>`: a hash of the client IP (after `trusted_proxy_count`), a request header or a query parameter picks it.' },
    ],
  },
  {
    title: 'Health',
    intro: '`apps.<app>.health`: how each http instance is probed, directly and never behind app traffic.',
    settings: [
      { path: 'apps.<app>.health.path', type: 'HTTP path', defaultNote: 'a TCP connect', example: '/up',
        description: 'Probed with GET on each instance, as written (a query or trailing `/` is kept); a 2xx passes.' },
      { path: 'apps.<app>.health.interval', type: 'duration', default: ms(DEFAULT_HEALTH_INTERVAL_MS), example: '5s',
        description: 'Time between probes.' },
      { path: 'apps.<app>.health.timeout', type: 'duration', default: ms(DEFAULT_HEALTH_TIMEOUT_MS), example: '2s',
        description: 'A probe that takes longer fails.' },
      { path: 'apps.<app>.health.unhealthy_after', type: 'integer ≥ 1', default: DEFAULT_HEALTH_UNHEALTHY_AFTER, example: 5,
        description: 'Failed probes in a row, while the instance is not busy, that make it unhealthy: it gets no new requests and is replaced.' },
      { path: 'apps.<app>.health.startup_timeout', type: 'duration', default: ms(DEFAULT_HEALTH_STARTUP_TIMEOUT_MS), example: '2m',
        description: 'How long a deploy waits for every new instance to be healthy before it fails.' },
      { path: 'apps.<app>.health.busy_grace', type: 'duration', defaultNote: '`timeouts.headers`', example: '1m',
        description: 'An instance with requests in flight, none older than this, is busy: its failed probes do not count.' },
    ],
  },
  {
    title: 'Queue and timeouts',
    intro: '`apps.<app>.queue` holds requests while every slot (`instances × concurrency`) is taken; `apps.<app>.timeouts` bounds waits on the app.',
    settings: [
      { path: 'apps.<app>.queue.max', type: 'integer ≥ 0', default: DEFAULT_QUEUE_MAX, example: 50,
        description: 'Requests waiting for a slot, per app. Over it: 503 with `X-Berth-Reason: queue-full`.' },
      { path: 'apps.<app>.queue.timeout', type: 'duration', default: ms(DEFAULT_QUEUE_TIMEOUT_MS), example: '30s',
        description: 'The longest a request waits. Then: 503 with `X-Berth-Reason: queue-timeout`.' },
      { path: 'apps.<app>.timeouts.headers', type: 'duration', default: ms(DEFAULT_TIMEOUT_HEADERS_MS), example: '1m',
        description: 'An instance that sends no response headers within this gets the request a 504.' },
      { path: 'apps.<app>.timeouts.drain', type: 'duration', default: ms(DEFAULT_TIMEOUT_DRAIN_MS), example: '2m',
        description: 'How long an old generation may finish its requests and WebSockets after a switch, before it is stopped.' },
      { path: 'apps.<app>.timeouts.stop', type: 'duration', default: ms(DEFAULT_TIMEOUT_STOP_MS), example: '30s',
        description: 'Between SIGTERM and SIGKILL when a process group is stopped.' },
    ],
  },
  {
    title: 'Rate limit',
    intro: '`apps.<app>.rate_limit`: requests per client IP; over the limit, 429 with `Retry-After`. Off unless written.',
    settings: [
      { path: 'apps.<app>.rate_limit.per_ip', type: 'rate', required: true, example: '20/s',
        description: 'The sustained rate per client IP: a count per second, minute or hour (`20/s`, `100/m`, `1000/h`).' },
      { path: 'apps.<app>.rate_limit.burst', type: 'integer ≥ 1', defaultNote: 'the count of `per_ip`', example: 40,
        description: 'Requests a client may send at once above the sustained rate.' },
      { path: 'apps.<app>.rate_limit.paths', type: 'list of path prefixes', default: [], defaultNote: 'every path', example: ['/login'],
        description: 'The paths the limit applies to.' },
    ],
  },
  {
    title: 'Buffering and WebSockets',
    intro: '`apps.<app>.buffering` keeps slow clients from holding app slots, as nginx\'s proxy buffering does; `apps.<app>.websockets` limits tunnels, which take no slot.',
    settings: [
      { path: 'apps.<app>.buffering.requests', type: 'true | false', default: true, example: false,
        description: 'Read a request body whole (memory, then a temp file) before the request takes a slot. `false` streams it and holds the slot meanwhile.' },
      { path: 'apps.<app>.buffering.responses', type: 'true | false', default: true, example: false,
        description: 'Read the app\'s response as fast as it sends, freeing the slot early, when the client is slower.' },
      { path: 'apps.<app>.buffering.memory', type: 'size', default: formatSize(DEFAULT_BUFFER_MEMORY_BYTES), example: '256k',
        description: 'Per body or response: held in memory up to this, then spilled to `<state_dir>/tmp`.' },
      { path: 'apps.<app>.buffering.body_timeout', type: 'duration', default: ms(DEFAULT_BODY_TIMEOUT_MS), example: '30s',
        description: 'A request body that sends nothing for this long gets 408.' },
      { path: 'apps.<app>.buffering.send_timeout', type: 'duration', default: ms(DEFAULT_SEND_TIMEOUT_MS), example: '2m',
        description: 'A client that accepts no response bytes for this long is disconnected, buffered or not.' },
      { path: 'apps.<app>.websockets.max', type: 'integer ≥ 1', default: DEFAULT_WEBSOCKETS_MAX, example: 5000,
        description: 'Open WebSockets per http process type, across generations. Over it: 503 with `X-Berth-Reason: websocket-limit`.' },
      { path: 'apps.<app>.websockets.idle_timeout', type: 'duration', defaultNote: 'never', example: '10m',
        description: 'A WebSocket with no bytes either way for this long is closed with 1001, at a frame boundary.' },
    ],
  },
  {
    title: 'Pages',
    intro: '`apps.<app>.pages`: HTML files inside the release shown instead of the built-in pages. One that resolves outside the release or is over 1 MiB is ignored.',
    settings: [
      { path: 'apps.<app>.pages.maintenance', type: 'path inside the release', example: 'maintenance.html',
        description: 'Sent with the 503 of the `maintenance` mode.' },
      { path: 'apps.<app>.pages.read_only', type: 'path inside the release', example: 'read-only.html',
        description: 'Sent with the 503 the `read-only` mode gives to POST, PUT, PATCH and DELETE.' },
      { path: 'apps.<app>.pages.error', type: 'path inside the release', example: 'error.html',
        description: 'A template for the gateway\'s 5xx answers in the app\'s name: 502, 504, and the 503s of a full queue or of no active generation.' },
    ],
  },
  {
    title: 'HTTPS per app',
    intro: 'An app\'s certificates, redirects and headers. Certificates that are not an app\'s own are under [Certificates](#certificates) and [ACME](#acme).',
    settings: [
      { path: 'apps.<app>.tls', type: '{ certificate, key } | list | { acme: true }', example: { certificate: '/etc/ssl/shop.crt', key: '/etc/ssl/shop.key' },
        description: 'One certificate for every host of the app, a list of certificates for the hosts each names, or ACME. Paths are relative to the config file.' },
      { path: 'apps.<app>.tls.certificate', type: 'path', example: '/etc/ssl/shop.crt',
        description: 'The PEM certificate for every host of the app; the chain may follow the leaf. Needs `key`.' },
      { path: 'apps.<app>.tls.key', type: 'path', example: '/etc/ssl/shop.key',
        description: 'Its PEM private key, unencrypted.' },
      { path: 'apps.<app>.tls.acme', type: 'true | false', default: false, example: true,
        description: 'Certificates for the app\'s hosts come from ACME (see `acme`); wildcard hosts get theirs on demand. Needs a TLS listener, and not `certificate` or `key`.' },
      { path: 'apps.<app>.tls[].hosts', type: 'list of host names', defaultNote: 'every host of the app', example: ['shop.example.com'],
        description: 'The hosts this certificate serves, each one of the app\'s hosts. Listed certificates come before one without hosts.' },
      { path: 'apps.<app>.tls[].certificate', type: 'path', required: true, example: '/etc/ssl/shop.crt',
        description: 'The PEM certificate; the chain may follow the leaf.' },
      { path: 'apps.<app>.tls[].key', type: 'path', required: true, example: '/etc/ssl/shop.key',
        description: 'Its PEM private key, unencrypted.' },
      { path: 'apps.<app>.https_redirect', type: 'true | false', default: false, example: true,
        description: 'Plain-HTTP requests get a 308 to `https://` on the same host, path and query (not ACME challenges or the internal prefix). Needs a TLS listener.' },
      { path: 'apps.<app>.hsts', type: 'true | { max_age, include_subdomains, preload }', default: false, example: true,
        description: 'Send `Strict-Transport-Security` on responses over TLS, never over cleartext. `true` takes every default below.' },
      { path: 'apps.<app>.hsts.max_age', type: 'duration, 0 allowed', default: ms(DEFAULT_HSTS_MAX_AGE_S * 1000), example: '730d',
        description: 'The header\'s `max-age`, sent in seconds; up to 2^31-1 seconds (about 68 years). 0 tells browsers to forget the policy.' },
      { path: 'apps.<app>.hsts.include_subdomains', type: 'true | false', default: false, example: true,
        description: 'Add `includeSubDomains`.' },
      { path: 'apps.<app>.hsts.preload', type: 'true | false', default: false, example: true, exampleWith: { include_subdomains: true },
        description: 'Add `preload`. Needs `include_subdomains` and a `max_age` of at least 365d, as browsers\' preload lists do.' },
      { path: 'apps.<app>.canonical_host', type: 'host name', example: 'shop.example.com',
        description: 'One of the app\'s hosts: requests for its other hosts get a 308 to it, keeping scheme, port, path and query.' },
    ],
  },
  {
    title: 'Schedule',
    intro: '`apps.<app>.schedule` maps entry names to commands run at cron times, each as a one-off process in the active release\'s environment.',
    settings: [
      { path: 'apps.<app>.schedule.<name>.cron', type: 'cron', required: true, example: '0 3 * * *',
        description: 'When it runs: 5 fields, or 6 with seconds first.' },
      { path: 'apps.<app>.schedule.<name>.command', type: 'command', required: true, example: 'node cleanup.js',
        description: 'Run through `sh -c` in the release directory.' },
      { path: 'apps.<app>.schedule.<name>.timeout', type: 'duration', default: ms(DEFAULT_SCHEDULE_TIMEOUT_MS), example: '30m',
        description: 'A run still going after this is killed.' },
      { path: 'apps.<app>.schedule.<name>.timezone', type: 'IANA time zone', defaultNote: 'the gateway\'s local time', example: 'Europe/Paris',
        description: 'The zone the cron times are read in.' },
      { path: 'apps.<app>.schedule.<name>.overlap', type: 'policy', choices: ['skip', 'allow'], default: DEFAULT_SCHEDULE_OVERLAP, example: 'allow',
        description: '`skip`: a run due while the previous one still runs is skipped and recorded as such; `allow`: it runs too.' },
    ],
  },
  {
    title: 'Cache flush',
    intro: '`apps.<app>.cache_flush`: after a deploy or rollback switches, purge a CDN\'s cache of exactly the static paths that changed. Off unless written.',
    settings: [
      { path: 'apps.<app>.cache_flush.provider', type: 'provider', choices: ['http', 'akamai'], default: DEFAULT_CACHE_FLUSH_PROVIDER, example: 'akamai',
        description: '`http` sends a request to each URL; `akamai` uses Fast Purge v3, with credentials from `BERTH_FASTPURGE_*` variables.' },
      { path: 'apps.<app>.cache_flush.rules', type: 'mapping of rules', required: true, example: { cdn: { templates: ['https://cdn.example.com/{path}'], excludes: ['^/files/'] } },
        description: 'Named rules, each making URLs (or Akamai ARLs) of the paths it takes. A list is read as rules named `1`, `2`, ...' },
      { path: 'apps.<app>.cache_flush.rules.<rule>.templates', type: 'list of templates', required: true, example: ['https://cdn.example.com/{path}'],
        description: '`{path}` is the path without its leading `/`, `{ttl}` the rule\'s TTL; a template without `{path}` gets it appended. For `http`, each is an http(s) URL.' },
      { path: 'apps.<app>.cache_flush.rules.<rule>.includes', type: 'list of regexes', default: [], defaultNote: 'every path', example: ['^/static/'],
        description: 'The rule takes a path that matches one of these.' },
      { path: 'apps.<app>.cache_flush.rules.<rule>.excludes', type: 'list of regexes', default: [], example: ['^/files/'],
        description: 'The rule leaves out a path that matches one of these.' },
      { path: 'apps.<app>.cache_flush.rules.<rule>.ttl', type: 'duration, 0 allowed', defaultNote: 'the max-age of the path\'s static route', example: '1d',
        description: 'The value of `{ttl}`, written as Akamai does (`1d`, `10m`, `30s`).' },
      { path: 'apps.<app>.cache_flush.enable', type: 'list of rule names', defaultNote: 'every rule', example: ['cdn'],
        description: 'The rules that run. An environment overrides the list.' },
      { path: 'apps.<app>.cache_flush.paths', type: 'list of paths', default: [], example: ['/', '/sitemap.xml'],
        description: 'Paths flushed on every deploy, whatever changed.' },
      { path: 'apps.<app>.cache_flush.retry_for', type: 'duration, 0 allowed', default: ms(DEFAULT_CACHE_FLUSH_RETRY_FOR_MS), example: '1h',
        description: 'URLs that fail with 408, 429, 5xx or no answer are tried again, with backoff, until this has passed.' },
      { path: 'apps.<app>.cache_flush.method', type: 'HTTP method', default: DEFAULT_CACHE_FLUSH_METHOD, example: 'BAN',
        description: '`http`: the method of each purge request.' },
      { path: 'apps.<app>.cache_flush.headers.<header>', type: 'string', example: 'purge-secret',
        description: '`http`: a header of each purge request, such as the CDN\'s purge key. Config errors never quote it.' },
      { path: 'apps.<app>.cache_flush.concurrency', type: 'integer ≥ 1', default: DEFAULT_CACHE_FLUSH_CONCURRENCY, example: 8,
        description: '`http`: purge requests in flight at once.' },
      { path: 'apps.<app>.cache_flush.timeout', type: 'duration', default: ms(DEFAULT_CACHE_FLUSH_TIMEOUT_MS), example: '30s',
        description: '`http`: each purge request\'s timeout.' },
      { path: 'apps.<app>.cache_flush.action', type: 'action', choices: ['invalidate', 'delete'], default: 'invalidate', example: 'delete',
        description: '`akamai`: mark cached objects stale, or remove them.' },
      { path: 'apps.<app>.cache_flush.network', type: 'network', choices: ['production', 'staging'], default: 'production', example: 'staging',
        description: '`akamai`: the network purged.' },
    ],
  },
];

/** Every setting, in page order. */
export const SETTINGS: readonly Setting[] = SETTINGS_SECTIONS.flatMap((s) => s.settings);

const KEYS: ReadonlySet<string> = new Set(SETTINGS.map((s) => s.path));

/**
 * The mappings and lists keys lie under, each both as the key that holds it (`apps.<app>.routes`) and,
 * for a list, as its items (`apps.<app>.routes[]`).
 */
const SECTIONS: ReadonlySet<string> = new Set(
  SETTINGS.flatMap((s) => {
    const parts = s.path.split('.');
    return parts.slice(0, -1).flatMap((part, i) => {
      const path = parts.slice(0, i + 1).join('.');
      return part.endsWith('[]') ? [path, path.slice(0, -2)] : [path];
    });
  }),
);

/** Whether `path` is a key the catalogue lists, or a mapping or list that keys lie under. */
export function isSettingPath(path: string): boolean {
  return KEYS.has(path) || SECTIONS.has(path);
}

/** Whether `path` is a mapping (or list item) that keys lie under: a place the validator reads keys in. */
export function isSettingSection(path: string): boolean {
  return SECTIONS.has(path);
}

/** The keys written directly at the top level of a file, `environments` aside (load.ts handles it). */
export function topLevelKeys(): string[] {
  const keys = SETTINGS.map((s) => s.path.split('.')[0].replace(/\[\]$/, '')).filter((k) => k !== 'environments');
  return [...new Set(keys)];
}
