/**
 * The records the store keeps, as every backend writes and reads them: pure functions that check a
 * record before it is written (BERTH_E_BAD_REQUEST, whichever backend), and the tables (./table.ts) that
 * turn it into a row of the shared schema (src/store/migrations/*.sql: snake_case columns, ISO text
 * times, JSON text for line lists) and a row read back into a record. A backend only moves rows; it
 * never decides what a valid record is.
 *
 * Text that can quote a deploy source (release and deploy sources, deploy errors, log tails and events,
 * audit targets and details) is redacted (src/lib/redact.ts) on the way in, so credentials never reach
 * the database, and again on the way out, so rows an older berth wrote in clear come out clean.
 */
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { redactNullable, redactText } from '../lib/redact.ts';
import { MODES, type Mode } from '../config/schema.ts';
import type {
  AcmeAccountRecord,
  AcmeCertificateRecord,
  AppState,
  AuditChannel,
  AuditFilter,
  AuditOutcome,
  AuditRecord,
  DeployEvent,
  DeployKind,
  DeployRecord,
  DeployState,
  DeployStore,
  FlushRecord,
  FlushState,
  FlushStore,
  NodeRecord,
  NodeServing,
  ProcessRecord,
  ReleaseInput,
  ReleaseRecord,
  ReleaseState,
  ScaleOverride,
  TaskRunFilter,
  TaskRunRecord,
  TaskRunState,
  TaskTrigger,
} from './store.ts';
import { integer, integerOrNull, Table, text, textOrNull, type Codec, type SqlValue } from './table.ts';

/**
 * A list query, backend-neutral: every backend turns it into its own WHERE clause. Only the conditions
 * that are set appear, each on its own column, so a backend can serve them from its indexes.
 */
export interface RowFilter {
  /** `column = value`, for each pair. */
  equal: [column: string, value: string][];
  /** `column IN (values)`; an empty list matches nothing and never reaches a backend. */
  oneOf: [column: string, values: string[]] | null;
  /** `column >= value`. */
  atLeast: [column: string, value: string] | null;
  limit: number;
}

export type DeployUpdate = Parameters<DeployStore['updateDeploy']>[1];
/** What `finishTaskRun` sets. */
export type TaskRunFinish = Pick<TaskRunRecord, 'state' | 'finishedAt' | 'exitCode' | 'durationMs' | 'output' | 'error'>;

export type FlushUpdate = Parameters<FlushStore['updateFlush']>[1];

/** A list without a `limit`. */
export const DEFAULT_LIST_LIMIT = 100;
/** The message a run left `running` by a killed gateway is finished with. */
export const INTERRUPTED_TASK_ERROR = 'the gateway stopped while this ran';

const RELEASE_STATES: ReadonlySet<string> = new Set<ReleaseState>(['building', 'ready', 'active', 'previous', 'failed', 'pruned']);
const MODE_SET: ReadonlySet<string> = new Set(MODES);
const DEPLOY_KINDS: ReadonlySet<string> = new Set<DeployKind>(['deploy', 'rollback', 'reload']);
const DEPLOY_STATES: ReadonlySet<string> = new Set<DeployState>(['running', 'succeeded', 'failed', 'interrupted']);
const EVENT_STATUSES: ReadonlySet<string> = new Set<DeployEvent['status']>(['started', 'succeeded', 'failed', 'skipped']);
const AUDIT_OUTCOMES: ReadonlySet<string> = new Set<AuditOutcome>(['pending', 'ok', 'failed', 'refused', 'interrupted']);
const AUDIT_CHANNELS: ReadonlySet<string> = new Set<AuditChannel>(['socket', 'tcp', 'internal']);
const TASK_RUN_STATES: ReadonlySet<string> = new Set<TaskRunState>(['running', 'succeeded', 'failed', 'skipped', 'timeout', 'interrupted']);
const TASK_TRIGGERS: ReadonlySet<string> = new Set<TaskTrigger>(['schedule', 'manual', 'cleanup']);
const FLUSH_STATES: ReadonlySet<string> = new Set<FlushState>(['pending', 'succeeded', 'failed', 'skipped']);
const FLUSH_PROVIDERS: ReadonlySet<string> = new Set<FlushRecord['provider']>(['http', 'akamai']);
/** What `updateFlush` may change: the rest is fixed when the flush is created. */
const FLUSH_UPDATABLE: ReadonlySet<string> = new Set<keyof FlushUpdate>(['done', 'state', 'attempts', 'nextAt', 'error', 'finishedAt']);
/** What `updateDeploy` may change: id, app, kind and createdAt are fixed when the deploy is created. */
const DEPLOY_UPDATABLE: ReadonlySet<string> = new Set<keyof DeployUpdate>([
  'state', 'releaseId', 'previousRelease', 'source', 'user', 'failedStep', 'error', 'logTail', 'finishedAt',
]);

// ---- codecs of berth's own -------------------------------------------------------------------------

/** Text that may quote a deploy source: redacted both ways. */
const redacted: Codec = { write: (v) => redactText(v as string), read: (v) => redactText(String(v)) };
/** The same, for a column that may be null. */
const redactedOrNull: Codec = { write: (v) => redactNullable((v ?? null) as string | null), read: (v) => redactNullable(v == null ? null : String(v)) };
/** `String(output ?? '')`: an output column an older row may lack reads as empty. */
const textOrEmpty: Codec = { write: (v) => v as string, read: (v) => String(v ?? '') };

/**
 * Output lines, stored as JSON text of the redacted lines. Anything but an array of strings would not
 * read back as one, so it is refused on write. On read they are redacted again; a backend that keeps
 * JSON natively may hand over the parsed array, and text that is not JSON throws a plain Error, which
 * the backend reports as BERTH_E_STORE like any other unreadable row.
 */
function lines(field: string, absentWhenNull = false): Codec {
  return {
    absentWhenNull,
    write(value) {
      if (!Array.isArray(value) || !value.every((l) => typeof l === 'string')) throw badRequest(`${field} must be an array of strings`);
      return JSON.stringify(value.map((l: string) => redactText(l)));
    },
    read(value) {
      const parsed = typeof value === 'string' ? (JSON.parse(value) as unknown) : value;
      return Array.isArray(parsed) ? parsed.map((l) => (typeof l === 'string' ? redactText(l) : l)) : parsed;
    },
  };
}

/**
 * What a node serves, as JSON text. Read back entry by entry, keeping only well-formed ones: another
 * node (maybe another version) wrote it.
 */
const servingList: Codec = {
  write: (v) => JSON.stringify(v),
  read(v) {
    let parsed: unknown = v;
    try {
      if (typeof v === 'string') parsed = JSON.parse(v);
    } catch {
      return [];
    }
    if (!Array.isArray(parsed)) return [];
    return parsed.filter((e): e is NodeServing => typeof e === 'object' && e !== null && typeof (e as NodeServing).app === 'string');
  },
};

/**
 * A list of strings (URLs or Akamai ARLs to purge), as JSON text of the strings exactly as given: they
 * are what a CDN is asked to purge, so they are not redacted, and read back as written. Anything but an
 * array of strings is refused on write; a column that does not hold one fails the read (BERTH_E_STORE).
 */
function strings(field: string): Codec {
  return {
    write(value) {
      if (!isStringList(value)) throw badRequest(`${field} must be an array of strings`);
      return JSON.stringify(value);
    },
    read(value) {
      const parsed = typeof value === 'string' ? (JSON.parse(value) as unknown) : value;
      if (!isStringList(parsed)) throw new Error(`${field} is not a JSON array of strings`);
      return parsed;
    },
  };
}

function isStringList(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/** A flag kept as 0/1 (SQLite has no boolean; PostgreSQL may hand back a boolean). */
const flag: Codec = { write: (v) => (v ? 1 : 0), read: (v) => v === true || Number(v) === 1 };

// ---- tables ---------------------------------------------------------------------------------------

/** Apps are written column by column (the active release, the mode), so this table is only read whole. */
export const APPS = new Table<AppState>('apps', {
  app: ['app', text], activeRelease: ['active_release', textOrNull], mode: ['mode', text],
  modeMessage: ['mode_message', textOrNull], modeRetryAfter: ['mode_retry_after', integerOrNull], reloads: ['reloads', integer],
  updatedAt: ['updated_at', text],
});

export const RELEASES = new Table<ReleaseRecord>('releases', {
  app: ['app', text], id: ['id', text], createdAt: ['created_at', text], state: ['state', text],
  source: ['source', redacted], revision: ['revision', textOrNull], prunedAt: ['pruned_at', textOrNull],
});

export const DEPLOYS = new Table<DeployRecord>('deploys', {
  id: ['id', text], app: ['app', text], kind: ['kind', text], state: ['state', text],
  releaseId: ['release_id', textOrNull], previousRelease: ['previous_release', textOrNull], source: ['source', redactedOrNull],
  user: ['user_name', textOrNull], failedStep: ['failed_step', textOrNull], error: ['error', redactedOrNull],
  logTail: ['log_tail', lines('logTail')], createdAt: ['created_at', text], finishedAt: ['finished_at', textOrNull],
  node: ['node', textOrNull],
});

/** `lines` is optional in the record: absent stays absent, so an event reads back as it was written. */
export const DEPLOY_EVENTS = new Table<DeployEvent>('deploy_events', {
  deployId: ['deploy_id', text], seq: ['seq', integer], step: ['step', text], status: ['status', text], at: ['occurred_at', text],
  durationMs: ['duration_ms', integerOrNull], message: ['message', redactedOrNull], lines: ['lines', lines('lines', true)],
});

/** Process groups by node (migration 007); LEGACY_PROCESS_GROUPS reads the rows older gateways wrote. */
export const PROCESS_GROUPS = new Table<ProcessRecord>('node_process_groups', {
  node: ['node', textOrNull], pgid: ['pgid', integer], app: ['app', text], generation: ['generation', text], process: ['process', text],
  index: ['instance_index', integer], gatewayPid: ['gateway_pid', integer], startedAt: ['started_at', text],
});

/** Migration 002's table, keyed by pgid alone: rows a gateway older than migration 007 wrote (they name no node). */
export const LEGACY_PROCESS_GROUPS = new Table<Omit<ProcessRecord, 'node'>>('process_groups', {
  pgid: ['pgid', integer], app: ['app', text], generation: ['generation', text], process: ['process', text],
  index: ['instance_index', integer], gatewayPid: ['gateway_pid', integer], startedAt: ['started_at', text],
});

export const AUDIT = new Table<AuditRecord>('audit', {
  id: ['id', integer, 'generated'], at: ['occurred_at', text], user: ['user_name', text], channel: ['channel', text],
  action: ['action', text], app: ['app', textOrNull], target: ['target', redactedOrNull],
  outcome: ['outcome', text], detail: ['detail', redactedOrNull], finishedAt: ['finished_at', textOrNull], node: ['node', textOrNull],
});

export const TASK_RUNS = new Table<TaskRunRecord>('task_runs', {
  id: ['id', text], app: ['app', textOrNull], task: ['task', text], trigger: ['triggered_by', text], state: ['state', text],
  command: ['command', textOrNull], releaseId: ['release_id', textOrNull], user: ['user_name', textOrNull],
  startedAt: ['started_at', text], finishedAt: ['finished_at', textOrNull], exitCode: ['exit_code', integerOrNull],
  durationMs: ['duration_ms', integerOrNull], output: ['output', textOrEmpty], error: ['error', textOrNull], node: ['node', textOrNull],
});

export const ACME_ACCOUNTS = new Table<AcmeAccountRecord>('acme_accounts', {
  directory: ['directory', text], email: ['email', textOrNull], keyPem: ['key_pem', text], url: ['url', textOrNull],
  createdAt: ['created_at', text], updatedAt: ['updated_at', text],
});

export const ACME_CERTIFICATES = new Table<AcmeCertificateRecord>('acme_certificates', {
  host: ['host', text], directory: ['directory', text], certificatePem: ['certificate_pem', text], keyPem: ['key_pem', text],
  notBefore: ['not_before', text], notAfter: ['not_after', text], onDemand: ['on_demand', flag], issuedAt: ['issued_at', text],
});

export const NODES = new Table<NodeRecord>('nodes', {
  node: ['node', text], hostname: ['hostname', text], pid: ['pid', integer], version: ['version', text], state: ['state', text],
  startedAt: ['started_at', text], heartbeatAt: ['heartbeat_at', text], serving: ['serving', servingList],
});

/** Cache flushes (migration 008). `error` may quote a CDN answer or an endpoint URL, so it is redacted. */
export const FLUSHES = new Table<FlushRecord>('cache_flushes', {
  id: ['id', text], app: ['app', text], deployId: ['deploy_id', textOrNull], provider: ['provider', text],
  urls: ['urls', strings('urls')], done: ['done', strings('done')], state: ['state', text], attempts: ['attempts', integer],
  nextAt: ['next_at', text], giveUpAt: ['give_up_at', text], error: ['error', redactedOrNull], user: ['user_name', textOrNull],
  createdAt: ['created_at', text], finishedAt: ['finished_at', textOrNull], node: ['node', textOrNull],
});

/** Instance-count overrides (migration 009). */
export const SCALES = new Table<ScaleOverride>('scale_overrides', {
  app: ['app', text], process: ['process', text], instances: ['instances', integer], user: ['user_name', textOrNull],
  setAt: ['set_at', text], node: ['node', textOrNull],
});

// ---- apps and releases ----------------------------------------------------------------------------

/** Throws BERTH_E_BAD_REQUEST for an unknown mode or a retry-after that is not whole seconds. */
export function checkMode(mode: Mode, retryAfter: number | null): void {
  if (!MODE_SET.has(mode)) throw badRequest(`unknown mode "${mode}": expected ${MODES.join(', ')}`);
  if (retryAfter !== null && !(Number.isInteger(retryAfter) && retryAfter >= 0)) {
    throw badRequest(`retry-after must be a non-negative whole number of seconds, got ${retryAfter}`);
  }
}

/** Throws BERTH_E_BAD_REQUEST for a state a release cannot be in. */
export function checkReleaseState(state: string): void {
  if (!RELEASE_STATES.has(state)) throw badRequest(`unknown release state "${state}": expected ${[...RELEASE_STATES].join(', ')}`);
}

/** The values `putRelease` writes: a left-out prunedAt is written as null. */
export function releaseValues(release: ReleaseInput): SqlValue[] {
  checkReleaseState(release.state);
  return RELEASES.values(release);
}

/** What a write to a release that was never recorded throws. */
export function releaseNotFound(app: string, id: string): BerthError {
  return new BerthError(ErrorCodes.notFound, `release ${id} of app ${app} is not recorded`);
}

// ---- deploys and process groups -------------------------------------------------------------------

function checkDeployState(state: string): void {
  if (!DEPLOY_STATES.has(state)) throw badRequest(`unknown deploy state "${state}": expected ${[...DEPLOY_STATES].join(', ')}`);
}

/** The values `createDeploy` writes. Throws BERTH_E_BAD_REQUEST for an unknown kind or state or a bad log tail. */
export function deployValues(deploy: DeployRecord): SqlValue[] {
  if (!DEPLOY_KINDS.has(deploy.kind)) throw badRequest(`unknown deploy kind "${deploy.kind}": expected ${[...DEPLOY_KINDS].join(', ')}`);
  checkDeployState(deploy.state);
  return DEPLOYS.values(deploy);
}

/**
 * The columns an `updateDeploy` sets: only the fields present (an `undefined` value counts as absent;
 * `null` clears a nullable field). Throws BERTH_E_BAD_REQUEST for a field that cannot change or a bad value.
 */
export function deployChanges(fields: DeployUpdate): [column: string, value: SqlValue][] {
  for (const key of Object.keys(fields)) {
    if (!DEPLOY_UPDATABLE.has(key)) throw badRequest(`deploy field "${key}" cannot be updated`);
  }
  if (fields.state !== undefined) checkDeployState(fields.state);
  return DEPLOYS.changes(fields);
}

/** `listDeploys`' filter. Throws BERTH_E_BAD_REQUEST for an unknown state or a limit below 1. */
export function deployFilter(filter: { app?: string; state?: DeployState; limit?: number }): RowFilter {
  if (filter.state !== undefined) checkDeployState(filter.state);
  return rowFilter([['app', filter.app], ['state', filter.state]], filter.limit);
}

/** What a write to a deploy that was never recorded throws. */
export function deployNotFound(id: string): BerthError {
  return new BerthError(ErrorCodes.notFound, `deploy ${id} is not recorded`);
}

/** The values `addDeployEvent` writes. Throws BERTH_E_BAD_REQUEST for a bad status, seq, duration or lines. */
export function deployEventValues(event: DeployEvent): SqlValue[] {
  if (!EVENT_STATUSES.has(event.status)) {
    throw badRequest(`unknown deploy event status "${event.status}": expected ${[...EVENT_STATUSES].join(', ')}`);
  }
  if (!(Number.isSafeInteger(event.seq) && event.seq >= 1)) throw badRequest(`deploy event seq must be a whole number of at least 1, got ${event.seq}`);
  if (event.durationMs !== null && !(Number.isSafeInteger(event.durationMs) && event.durationMs >= 0)) {
    throw badRequest(`deploy event durationMs must be null or a non-negative whole number, got ${event.durationMs}`);
  }
  return DEPLOY_EVENTS.values(event);
}

/** The values `recordProcess` writes. Throws BERTH_E_BAD_REQUEST for a pgid below 2 or a bad pid or index. */
export function processValues(p: ProcessRecord): SqlValue[] {
  // The orphan sweep signals -pgid: 0 would hit the gateway's own group and 1 (kill(-1)) every process.
  if (!(Number.isSafeInteger(p.pgid) && p.pgid >= 2)) throw badRequest(`process group id must be a whole number of at least 2, got ${p.pgid}`);
  if (!(Number.isSafeInteger(p.gatewayPid) && p.gatewayPid >= 1)) throw badRequest(`gateway pid must be a positive whole number, got ${p.gatewayPid}`);
  if (!(Number.isSafeInteger(p.index) && p.index >= 0)) throw badRequest(`instance index must be a non-negative whole number, got ${p.index}`);
  return PROCESS_GROUPS.values(p);
}

// ---- audit ----------------------------------------------------------------------------------------

/** The values `addAudit` writes. Throws BERTH_E_BAD_REQUEST for an unknown outcome or channel, or no user or action. */
export function auditValues(e: Omit<AuditRecord, 'id'>): SqlValue[] {
  if (!AUDIT_OUTCOMES.has(e.outcome)) throw badRequest(`unknown audit outcome "${e.outcome}"`);
  if (!AUDIT_CHANNELS.has(e.channel)) throw badRequest(`unknown audit channel "${e.channel}"`);
  if (!e.user || !e.action) throw badRequest('an audit row needs a user and an action');
  return AUDIT.values(e);
}

/** Checks a final outcome and returns the detail to write (null keeps the one written at the start). */
export function auditFinishDetail(outcome: Exclude<AuditOutcome, 'pending'>, detail: string | null): string | null {
  if (!AUDIT_OUTCOMES.has(outcome) || (outcome as string) === 'pending') throw badRequest(`unknown final audit outcome "${outcome}"`);
  return redactNullable(detail);
}

/** `listAudit`'s filter. Throws BERTH_E_BAD_REQUEST for an unknown outcome or a limit below 1. */
export function auditFilter(filter: AuditFilter): RowFilter {
  const f = rowFilter([['app', filter.app], ['user_name', filter.user], ['action', filter.action], ['outcome', filter.outcome]], filter.limit);
  if (filter.outcome !== undefined && !AUDIT_OUTCOMES.has(filter.outcome)) throw badRequest(`unknown audit outcome "${filter.outcome}"`);
  if (filter.since !== undefined) f.atLeast = ['occurred_at', filter.since];
  return f;
}

/** What finishing an audit row that does not exist throws. */
export function auditNotFound(id: number): BerthError {
  return new BerthError(ErrorCodes.notFound, `no audit row ${id}`);
}

// ---- task runs ------------------------------------------------------------------------------------

/** The values `createTaskRun` writes. Throws BERTH_E_BAD_REQUEST for a missing name, an unknown trigger or state, or a bad number or time. */
export function taskRunValues(run: TaskRunRecord): SqlValue[] {
  if (typeof run.id !== 'string' || run.id === '') throw badRequest('a task run needs an id');
  if (typeof run.task !== 'string' || run.task === '') throw badRequest('a task run needs a task name');
  checkTaskTrigger(run.trigger, `: expected ${[...TASK_TRIGGERS].join(', ')}`);
  checkTaskRunFinish(run);
  if (Number.isNaN(Date.parse(run.startedAt))) throw badRequest(`task run start must be an ISO time, got "${run.startedAt}"`);
  return TASK_RUNS.values(run);
}

/** The columns `finishTaskRun` sets. */
export function taskRunFinishChanges(f: TaskRunFinish): [column: string, value: SqlValue][] {
  checkTaskRunFinish(f);
  return TASK_RUNS.changes(f);
}

/** `listTaskRuns`' filter. Throws BERTH_E_BAD_REQUEST for an unknown trigger or state or a limit below 1. */
export function taskRunFilter(filter: TaskRunFilter): RowFilter {
  const limit = checkLimit(filter.limit ?? DEFAULT_LIST_LIMIT);
  if (filter.trigger !== undefined) checkTaskTrigger(filter.trigger, '');
  const f = rowFilter([['app', filter.app], ['task', filter.task], ['triggered_by', filter.trigger]], limit);
  if (filter.states !== undefined) {
    for (const s of filter.states) checkTaskRunState(s);
    f.oneOf = ['state', filter.states];
  }
  return f;
}

/** What finishing a task run that was never recorded throws. */
export function taskRunNotFound(id: string): BerthError {
  return new BerthError(ErrorCodes.notFound, `no task run ${id}`);
}

function checkTaskTrigger(trigger: string, expected: string): void {
  if (!TASK_TRIGGERS.has(trigger)) throw badRequest(`unknown task trigger "${trigger}"${expected}`);
}

function checkTaskRunState(state: string): void {
  if (!TASK_RUN_STATES.has(state)) throw badRequest(`unknown task run state "${state}": expected ${[...TASK_RUN_STATES].join(', ')}`);
}

/** The fields a run is finished with: a known state, whole numbers, text output. */
function checkTaskRunFinish(f: Pick<TaskRunRecord, 'state' | 'exitCode' | 'durationMs' | 'output'>): void {
  checkTaskRunState(f.state);
  if (f.exitCode !== null && !Number.isSafeInteger(f.exitCode)) throw badRequest(`task run exit code must be a whole number or null, got ${f.exitCode}`);
  if (f.durationMs !== null && !(Number.isSafeInteger(f.durationMs) && f.durationMs >= 0)) {
    throw badRequest(`task run duration must be a non-negative whole number of ms or null, got ${f.durationMs}`);
  }
  if (typeof f.output !== 'string') throw badRequest('task run output must be a string');
}

// ---- ACME accounts and certificates ------------------------------------------------------------------
// A message here names the field that is wrong, never its value: the value may be a private key.

const HOST_LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
const HOST_RE = new RegExp(`^${HOST_LABEL}(?:\\.${HOST_LABEL})*$`);
const PEM_KEY_RE = /-----BEGIN (?:EC |RSA )?PRIVATE KEY-----[\s\S]+-----END (?:EC |RSA )?PRIVATE KEY-----/;
const PEM_CERTIFICATE_RE = /-----BEGIN CERTIFICATE-----[\s\S]+-----END CERTIFICATE-----/;

/** Throws BERTH_E_BAD_REQUEST unless `host` is a lower-case DNS name without a trailing dot. */
export function checkCertificateHost(host: string): void {
  if (typeof host !== 'string' || host.length > 253 || !HOST_RE.test(host)) throw badRequest(`certificate host must be a lower-case DNS name, got "${String(host).slice(0, 260)}"`);
}

/** The values `saveAcmeAccount` writes. Throws BERTH_E_BAD_REQUEST for a bad directory, email, key or time. */
export function acmeAccountValues(account: AcmeAccountRecord): SqlValue[] {
  checkDirectory(account.directory);
  if (account.email !== null && !(typeof account.email === 'string' && /^[^\s@]+@[^\s@]+$/.test(account.email))) throw badRequest('ACME account email must be an address (name@domain) or null');
  checkPem(account.keyPem, PEM_KEY_RE, 'ACME account key must be a PEM private key');
  if (account.url !== null && !isHttpUrl(account.url)) throw badRequest('ACME account url must be an http(s) URL or null');
  checkTime(account.createdAt, 'ACME account createdAt');
  checkTime(account.updatedAt, 'ACME account updatedAt');
  return ACME_ACCOUNTS.values(account);
}

/** The values `saveCertificate` writes. Throws BERTH_E_BAD_REQUEST for a bad host, directory, PEM or time. */
export function acmeCertificateValues(c: AcmeCertificateRecord): SqlValue[] {
  checkCertificateHost(c.host);
  checkDirectory(c.directory);
  checkPem(c.certificatePem, PEM_CERTIFICATE_RE, `certificate of ${c.host} must be PEM certificates`);
  checkPem(c.keyPem, PEM_KEY_RE, `key of ${c.host} must be a PEM private key`);
  checkTime(c.notBefore, 'certificate notBefore');
  checkTime(c.notAfter, 'certificate notAfter');
  checkTime(c.issuedAt, 'certificate issuedAt');
  if (typeof c.onDemand !== 'boolean') throw badRequest('certificate onDemand must be true or false');
  return ACME_CERTIFICATES.values(c);
}

function checkDirectory(directory: string): void {
  if (!isHttpUrl(directory)) throw badRequest('ACME directory must be an http(s) URL');
}

function isHttpUrl(value: unknown): boolean {
  if (typeof value !== 'string') return false;
  try {
    const u = new URL(value);
    return u.protocol === 'https:' || u.protocol === 'http:';
  } catch {
    return false;
  }
}

function checkPem(value: unknown, re: RegExp, message: string): void {
  if (typeof value !== 'string' || !re.test(value)) throw badRequest(message);
}

function checkTime(value: unknown, field: string): void {
  if (typeof value !== 'string' || Number.isNaN(Date.parse(value))) throw badRequest(`${field} must be an ISO time`);
}

// ---- fleet -------------------------------------------------------------------------------------------

const NODE_STATES: ReadonlySet<string> = new Set(['running', 'stopped']);

/** The values `saveNode` writes. Throws BERTH_E_BAD_REQUEST for a missing name, an unknown state or a bad time. */
export function nodeValues(n: NodeRecord): SqlValue[] {
  if (typeof n.node !== 'string' || n.node === '') throw badRequest('a node needs a name');
  if (!NODE_STATES.has(n.state)) throw badRequest(`unknown node state "${n.state}": expected running, stopped`);
  if (!(Number.isSafeInteger(n.pid) && n.pid >= 1)) throw badRequest(`node pid must be a positive whole number, got ${n.pid}`);
  checkTime(n.startedAt, 'node startedAt');
  checkTime(n.heartbeatAt, 'node heartbeatAt');
  if (!Array.isArray(n.serving)) throw badRequest('node serving must be a list');
  return NODES.values(n);
}

// ---- cache flushes -----------------------------------------------------------------------------------

/**
 * The values `createFlush` writes (a left-out nullable field is written as null). Throws
 * BERTH_E_BAD_REQUEST for a missing id or app, an unknown state or provider, a negative or fractional
 * attempt count, a bad time, or URLs that are not arrays of strings.
 */
export function flushValues(f: FlushRecord): SqlValue[] {
  if (typeof f.id !== 'string' || f.id === '') throw badRequest('a flush needs an id');
  if (typeof f.app !== 'string' || f.app === '') throw badRequest('a flush needs an app');
  if (f.deployId != null && !(typeof f.deployId === 'string' && f.deployId !== '')) throw badRequest('flush deployId must be a deploy id or null');
  if (!FLUSH_PROVIDERS.has(f.provider)) throw badRequest(`unknown flush provider "${f.provider}": expected ${[...FLUSH_PROVIDERS].join(', ')}`);
  if (!isStringList(f.urls)) throw badRequest('flush urls must be an array of strings');
  if (f.user != null && typeof f.user !== 'string') throw badRequest('flush user must be a string or null');
  if (f.node != null && !(typeof f.node === 'string' && f.node !== '')) throw badRequest('flush node must be a node name or null');
  checkTime(f.giveUpAt, 'flush giveUpAt');
  checkTime(f.createdAt, 'flush createdAt');
  checkFlushFields(f, true);
  return FLUSHES.values(f);
}

/**
 * The columns an `updateFlush` sets: only the fields present (an `undefined` value counts as absent;
 * `null` clears `error` or `finishedAt`). Throws BERTH_E_BAD_REQUEST for a field that cannot change or a bad value.
 */
export function flushChanges(fields: FlushUpdate): [column: string, value: SqlValue][] {
  for (const key of Object.keys(fields)) {
    if (!FLUSH_UPDATABLE.has(key)) throw badRequest(`flush field "${key}" cannot be updated`);
  }
  checkFlushFields(fields, false);
  return FLUSHES.changes(fields);
}

/** `listFlushes`' filter. Throws BERTH_E_BAD_REQUEST for a limit below 1. */
export function flushFilter(filter: { app?: string; deployId?: string; limit?: number }): RowFilter {
  return rowFilter([['app', filter.app], ['deploy_id', filter.deployId]], filter.limit);
}

/** What a write to a flush that was never recorded throws. */
export function flushNotFound(id: string): BerthError {
  return new BerthError(ErrorCodes.notFound, `flush ${id} is not recorded`);
}

/**
 * The fields a flush is created with (`whole`: each that cannot be null must be there) and updated by
 * (each checked when present).
 */
function checkFlushFields(f: Partial<FlushRecord>, whole: boolean): void {
  const has = (key: keyof FlushRecord) => whole || f[key] !== undefined;
  if (has('state') && !FLUSH_STATES.has(f.state as string)) throw badRequest(`unknown flush state "${f.state}": expected ${[...FLUSH_STATES].join(', ')}`);
  if (has('attempts') && !(Number.isSafeInteger(f.attempts) && f.attempts! >= 0)) {
    throw badRequest(`flush attempts must be a non-negative whole number, got ${f.attempts}`);
  }
  if (has('done') && !isStringList(f.done)) throw badRequest('flush done must be an array of strings');
  if (has('nextAt')) checkTime(f.nextAt, 'flush nextAt');
  if (f.finishedAt != null) checkTime(f.finishedAt, 'flush finishedAt');
  if (f.error != null && typeof f.error !== 'string') throw badRequest('flush error must be a string or null');
}

// ---- instance-count overrides ------------------------------------------------------------------------

/** The values `setScale` writes. Throws BERTH_E_BAD_REQUEST for a missing app or type, a count that is not a whole number from 0, or a bad time. */
export function scaleValues(s: ScaleOverride): SqlValue[] {
  if (typeof s.app !== 'string' || s.app === '') throw badRequest('a scale override needs an app');
  if (typeof s.process !== 'string' || s.process === '') throw badRequest('a scale override needs a process type');
  if (!(Number.isSafeInteger(s.instances) && s.instances >= 0)) throw badRequest(`instances must be a whole number from 0, got ${s.instances}`);
  if (s.user != null && typeof s.user !== 'string') throw badRequest('scale override user must be a string or null');
  checkTime(s.setAt, 'scale override setAt');
  return SCALES.values(s);
}

// ---- shared pieces --------------------------------------------------------------------------------

/** A list query's row limit: a whole number of at least 1, else BERTH_E_BAD_REQUEST. */
function checkLimit(limit: number): number {
  if (!(Number.isSafeInteger(limit) && limit >= 1)) throw badRequest(`limit must be a whole number of at least 1, got ${limit}`);
  return limit;
}

/** A filter of the `column = value` conditions that are set. */
function rowFilter(pairs: [column: string, value: string | undefined][], limit: number = DEFAULT_LIST_LIMIT): RowFilter {
  const equal: [string, string][] = [];
  for (const [column, value] of pairs) if (value !== undefined) equal.push([column, value]);
  return { equal, oneOf: null, atLeast: null, limit: checkLimit(limit) };
}

function badRequest(message: string): BerthError {
  return new BerthError(ErrorCodes.badRequest, message);
}
