/**
 * The embedded state store: SQLite through node:sqlite's DatabaseSync. Every call is synchronous under
 * the hood and answers through the async Store interface, so PostgreSQL can implement the same one.
 *
 * The schema comes from numbered, additive SQL files in ./migrations (`NNN-name.sql`), read at open and
 * recorded in `schema_migrations(version, name, applied_at)`.
 *
 * Constraint violations that callers can cause (a duplicate id, an event for an unknown deploy) surface as
 * BERTH_E_CONFLICT / BERTH_E_NOT_FOUND; anything else the database refuses is BERTH_E_STORE.
 *
 * Text that can quote a deploy source (release and deploy sources, deploy errors, log tails and events,
 * audit targets and details) is redacted (src/lib/redact.ts) on write, so credentials never reach the
 * file, and again on read, so rows an older berth wrote in clear come out clean.
 */
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import { redactNullable, redactText } from '../lib/redact.ts';
import { MODES, type Mode } from '../config/schema.ts';
import type {
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
  ProcessRecord,
  ReleaseInput,
  ReleaseRecord,
  ReleaseState,
  Store,
} from './store.ts';
import type { TaskRunFilter, TaskRunRecord, TaskRunState, TaskTrigger } from './store.ts';

/** The migrations that ship with this build. */
export const MIGRATIONS_DIR = fileURLToPath(new URL('./migrations/', import.meta.url));

/** How long a writer waits for another connection's lock (a second gateway, the CLI) before failing. */
const BUSY_TIMEOUT_MS = 5_000;

const MIGRATION_FILE_RE = /^(\d+)-([A-Za-z0-9_-]+)\.sql$/;
const RELEASE_STATES: ReadonlySet<ReleaseState> = new Set<ReleaseState>(['building', 'ready', 'active', 'previous', 'failed', 'pruned']);
const MODE_SET: ReadonlySet<string> = new Set(MODES);
const DEPLOY_KINDS: ReadonlySet<DeployKind> = new Set<DeployKind>(['deploy', 'rollback', 'reload']);
const DEPLOY_STATES: ReadonlySet<DeployState> = new Set<DeployState>(['running', 'succeeded', 'failed', 'interrupted']);
const EVENT_STATUSES: ReadonlySet<DeployEvent['status']> = new Set<DeployEvent['status']>(['started', 'succeeded', 'failed', 'skipped']);
/** What `updateDeploy` may change; id, app, kind and createdAt are fixed when the deploy is created. */
const DEPLOY_UPDATABLE: ReadonlySet<string> = new Set<keyof DeployUpdate>([
  'state',
  'releaseId',
  'previousRelease',
  'source',
  'user',
  'failedStep',
  'error',
  'logTail',
  'finishedAt',
]);
/** `listDeploys` without a limit. */
const DEFAULT_DEPLOY_LIST_LIMIT = 100;

// SQLite extended result codes (sqlite3.h) for the constraint failures callers can cause.
const SQLITE_CONSTRAINT_FOREIGNKEY = 787;
const SQLITE_CONSTRAINT_PRIMARYKEY = 1555;
const SQLITE_CONSTRAINT_UNIQUE = 2067;

type DeployUpdate = Parameters<DeployStore['updateDeploy']>[1];

export interface Migration {
  version: number;
  /** File name without the number and extension, e.g. `apps-and-releases`. */
  name: string;
  file: string;
  sql: string;
}

export interface SqliteStoreOptions {
  /** The database file; its parent directory is created. */
  path: string;
  /** upgrade: apply missing migrations. none: apply nothing and fail when behind. model: recreate from scratch (dev only). */
  migrations: 'upgrade' | 'none' | 'model';
  /** Drop every table before migrating (development only). */
  resetState: boolean;
  logger: Logger;
  /** Where the NNN-name.sql files are; defaults to the ones that ship with this build (tests point elsewhere). */
  migrationsDir?: string;
}

/** Reads `NNN-name.sql` files from a directory, sorted by number. Throws BERTH_E_STORE on a bad or duplicate file. */
export async function loadMigrations(dir: string): Promise<Migration[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new BerthError(ErrorCodes.store, `cannot read migrations from ${dir}: ${errorMessage(err)}`, { cause: err });
  }
  const byVersion = new Map<number, Migration>();
  for (const file of names) {
    if (!file.endsWith('.sql')) continue;
    const m = MIGRATION_FILE_RE.exec(file);
    if (!m) throw new BerthError(ErrorCodes.store, `migration file ${file} is not named NNN-name.sql`);
    const version = Number(m[1]);
    const other = byVersion.get(version);
    if (other) throw new BerthError(ErrorCodes.store, `migrations ${other.file} and ${file} have the same version ${version}`);
    byVersion.set(version, { version, name: m[2], file, sql: await readFile(join(dir, file), 'utf8') });
  }
  return [...byVersion.values()].sort((a, b) => a.version - b.version);
}

/** Prepared once per open, after the schema is in place. */
interface Statements {
  getApp: StatementSync;
  listApps: StatementSync;
  setActive: StatementSync;
  setMode: StatementSync;
  putRelease: StatementSync;
  getRelease: StatementSync;
  listReleases: StatementSync;
  setReleaseState: StatementSync;
  setReleasePrunedAt: StatementSync;
  schemaVersion: StatementSync;
  createDeploy: StatementSync;
  updateDeploy: StatementSync;
  getDeploy: StatementSync;
  // One statement per filter combination: `(? IS NULL OR app = ?)` would keep SQLite off the indexes.
  listDeploys: StatementSync;
  listDeploysByApp: StatementSync;
  listDeploysByState: StatementSync;
  listDeploysByAppState: StatementSync;
  addDeployEvent: StatementSync;
  listDeployEvents: StatementSync;
  recordProcess: StatementSync;
  removeProcess: StatementSync;
  listProcesses: StatementSync;
}

type Row = Record<string, unknown>;

export class SqliteStore implements Store {
  readonly path: string;
  #migrations: SqliteStoreOptions['migrations'];
  #resetState: boolean;
  #migrationsDir: string;
  #log: Logger;
  #db: DatabaseSync | null = null;
  #q: Statements | null = null;

  constructor(opts: SqliteStoreOptions) {
    this.path = opts.path;
    this.#migrations = opts.migrations;
    this.#resetState = opts.resetState;
    this.#migrationsDir = opts.migrationsDir ?? MIGRATIONS_DIR;
    this.#log = opts.logger;
  }

  /**
   * Opens the database (WAL, busy timeout, foreign keys), optionally drops every table (`resetState`),
   * then brings the schema in line with `migrations`. Throws BERTH_E_STORE, and leaves the store closed,
   * when the database cannot be opened, a migration fails, or `none` finds the schema missing or behind.
   */
  async open(): Promise<void> {
    if (this.#db) throw new BerthError(ErrorCodes.store, `store ${this.path} is already open`);
    const migrations = await loadMigrations(this.#migrationsDir);
    let db: DatabaseSync;
    try {
      await mkdir(dirname(this.path), { recursive: true });
      db = new DatabaseSync(this.path, { enableForeignKeyConstraints: true, timeout: BUSY_TIMEOUT_MS });
      db.exec(`PRAGMA journal_mode = WAL; PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;`);
    } catch (err) {
      throw new BerthError(ErrorCodes.store, `cannot open SQLite database ${this.path}: ${errorMessage(err)}`, { cause: err });
    }
    try {
      if (this.#resetState) this.#dropAll(db, 'reset_state');
      if (this.#migrations === 'model') this.#createFromModel(db, migrations);
      else if (this.#migrations === 'upgrade') this.#upgrade(db, migrations);
      else this.#checkCurrent(db, migrations);
      this.#q = prepareStatements(db);
    } catch (err) {
      db.close();
      if (err instanceof BerthError) throw err;
      throw new BerthError(ErrorCodes.store, `cannot prepare SQLite database ${this.path}: ${errorMessage(err)}`, { cause: err });
    }
    this.#db = db;
    this.#log.info({ path: this.path, migrations: this.#migrations, schemaVersion: readVersion(db) }, 'store opened');
  }

  async close(): Promise<void> {
    const db = this.#db;
    if (!db) return;
    this.#db = null;
    this.#q = null;
    this.#lazy.clear();
    db.close();
    this.#log.info({ path: this.path }, 'store closed');
  }

  // ---- schema ---------------------------------------------------------------------------------

  /** berth.db belongs to berth alone, so every table in it is a berth table, including ones a newer version added. */
  #dropAll(db: DatabaseSync, reason: string): void {
    const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).all() as Row[];
    const views = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'view'`).all() as Row[];
    // Foreign keys would make the drop order matter; the pragma is a no-op inside a transaction, so set it first.
    db.exec('PRAGMA foreign_keys = OFF');
    try {
      inTransaction(db, () => {
        for (const v of views) db.exec(`DROP VIEW ${quoteIdent(String(v.name))}`);
        for (const t of tables) db.exec(`DROP TABLE ${quoteIdent(String(t.name))}`);
      });
    } finally {
      db.exec('PRAGMA foreign_keys = ON');
    }
    this.#log.warn({ path: this.path, reason, tables: tables.map((t) => t.name) }, 'store state dropped');
  }

  /** Applies each missing migration in its own transaction. Newer versions already in the table are left alone. */
  #upgrade(db: DatabaseSync, migrations: Migration[]): void {
    ensureMigrationsTable(db);
    const isApplied = db.prepare('SELECT 1 AS one FROM schema_migrations WHERE version = ?');
    for (const m of migrations) {
      // IMMEDIATE takes the write lock before the check, so two gateways starting together apply each file once.
      let applied = false;
      try {
        inTransaction(db, () => {
          if (isApplied.get(m.version)) return;
          db.exec(m.sql);
          recordMigration(db, m);
          applied = true;
        });
      } catch (err) {
        throw new BerthError(ErrorCodes.store, `migration ${m.file} failed: ${errorMessage(err)}`, { cause: err, details: { version: m.version } });
      }
      if (applied) this.#log.info({ version: m.version, name: m.name }, 'migration applied');
    }
  }

  /** Dev only: throws away whatever is there and builds the current schema from every file, in one transaction. */
  #createFromModel(db: DatabaseSync, migrations: Migration[]): void {
    this.#dropAll(db, 'migrations: model');
    try {
      inTransaction(db, () => {
        ensureMigrationsTable(db);
        for (const m of migrations) {
          db.exec(m.sql);
          recordMigration(db, m);
        }
      });
    } catch (err) {
      throw new BerthError(ErrorCodes.store, `creating the schema from the model failed: ${errorMessage(err)}`, { cause: err });
    }
    this.#log.warn({ versions: migrations.map((m) => m.version) }, 'schema created from model');
  }

  /** `migrations: none`: the operator migrates out of band, so a missing or older schema is a start-up error. */
  #checkCurrent(db: DatabaseSync, migrations: Migration[]): void {
    const expected = migrations.map((m) => m.file.replace(/\.sql$/, '')).join(', ');
    if (!db.prepare(`SELECT 1 AS one FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).get()) {
      throw new BerthError(
        ErrorCodes.store,
        `database ${this.path} has no berth schema and migrations is "none": expected migrations ${expected}; run once with migrations: upgrade`,
        { details: { missing: migrations.map((m) => m.version) } },
      );
    }
    const applied = new Set((db.prepare('SELECT version FROM schema_migrations').all() as Row[]).map((r) => Number(r.version)));
    const missing = migrations.filter((m) => !applied.has(m.version));
    if (missing.length > 0) {
      throw new BerthError(
        ErrorCodes.store,
        `database ${this.path} schema is behind and migrations is "none": missing migrations ${missing.map((m) => m.file.replace(/\.sql$/, '')).join(', ')}; run once with migrations: upgrade`,
        { details: { missing: missing.map((m) => m.version) } },
      );
    }
  }

  // ---- data -----------------------------------------------------------------------------------

  #statements(): Statements {
    if (!this.#q) throw new BerthError(ErrorCodes.store, `store ${this.path} is not open`);
    return this.#q;
  }

  async getAppState(app: string): Promise<AppState | null> {
    const q = this.#statements();
    try {
      const row = q.getApp.get(app) as Row | undefined;
      return row ? toAppState(row) : null;
    } catch (err) {
      throw failure('read app state', err);
    }
  }

  async listAppStates(): Promise<AppState[]> {
    const q = this.#statements();
    try {
      return (q.listApps.all() as Row[]).map(toAppState);
    } catch (err) {
      throw failure('list app states', err);
    }
  }

  async setActiveRelease(app: string, releaseId: string): Promise<void> {
    const q = this.#statements();
    try {
      q.setActive.run(app, releaseId, new Date().toISOString());
    } catch (err) {
      throw failure('set active release', err);
    }
  }

  async setMode(app: string, mode: Mode, message: string | null, retryAfter: number | null): Promise<void> {
    if (!MODE_SET.has(mode)) throw new BerthError(ErrorCodes.badRequest, `unknown mode "${mode}": expected ${MODES.join(', ')}`);
    if (retryAfter !== null && !(Number.isInteger(retryAfter) && retryAfter >= 0)) {
      throw new BerthError(ErrorCodes.badRequest, `retry-after must be a non-negative whole number of seconds, got ${retryAfter}`);
    }
    const q = this.#statements();
    try {
      q.setMode.run(app, mode, message, retryAfter, new Date().toISOString());
    } catch (err) {
      throw failure('set mode', err);
    }
  }

  async putRelease(release: ReleaseInput): Promise<void> {
    assertReleaseState(release.state);
    const q = this.#statements();
    try {
      q.putRelease.run(release.app, release.id, release.createdAt, release.state, redactText(release.source), release.revision, release.prunedAt ?? null);
    } catch (err) {
      throw failure('put release', err);
    }
  }

  async getRelease(app: string, id: string): Promise<ReleaseRecord | null> {
    const q = this.#statements();
    try {
      const row = q.getRelease.get(app, id) as Row | undefined;
      return row ? toRelease(row) : null;
    } catch (err) {
      throw failure('read release', err);
    }
  }

  async listReleases(app: string): Promise<ReleaseRecord[]> {
    const q = this.#statements();
    try {
      return (q.listReleases.all(app) as Row[]).map(toRelease);
    } catch (err) {
      throw failure('list releases', err);
    }
  }

  /** Throws BERTH_E_NOT_FOUND when the release was never recorded. */
  async setReleaseState(app: string, id: string, state: ReleaseState): Promise<void> {
    assertReleaseState(state);
    const q = this.#statements();
    let changes: number | bigint;
    try {
      changes = q.setReleaseState.run(state, app, id).changes;
    } catch (err) {
      throw failure('set release state', err);
    }
    if (Number(changes) === 0) throw new BerthError(ErrorCodes.notFound, `release ${id} of app ${app} is not recorded`);
  }

  /** Throws BERTH_E_NOT_FOUND when the release was never recorded. */
  async setReleasePrunedAt(app: string, id: string, prunedAt: string): Promise<void> {
    const q = this.#statements();
    let changes: number | bigint;
    try {
      changes = q.setReleasePrunedAt.run(prunedAt, app, id).changes;
    } catch (err) {
      throw failure('set release pruned time', err);
    }
    if (Number(changes) === 0) throw new BerthError(ErrorCodes.notFound, `release ${id} of app ${app} is not recorded`);
  }

  async schemaVersion(): Promise<number> {
    const q = this.#statements();
    try {
      return Number((q.schemaVersion.get() as Row).version);
    } catch (err) {
      throw failure('read schema version', err);
    }
  }

  // ---- deploys --------------------------------------------------------------------------------

  /** Throws BERTH_E_CONFLICT when a deploy with this id is already recorded. */
  async createDeploy(deploy: DeployRecord): Promise<void> {
    assertDeployKind(deploy.kind);
    assertDeployState(deploy.state);
    assertLines('logTail', deploy.logTail);
    const q = this.#statements();
    try {
      q.createDeploy.run(
        deploy.id,
        deploy.app,
        deploy.kind,
        deploy.state,
        deploy.releaseId,
        deploy.previousRelease,
        redactNullable(deploy.source),
        deploy.user,
        deploy.failedStep,
        redactNullable(deploy.error),
        JSON.stringify(redactLines(deploy.logTail)),
        deploy.createdAt,
        deploy.finishedAt,
      );
    } catch (err) {
      if (isUniqueViolation(err)) throw new BerthError(ErrorCodes.conflict, `deploy ${deploy.id} is already recorded`, { cause: err });
      throw failure('create deploy', err);
    }
  }

  /**
   * Changes only the fields present (an `undefined` value counts as absent; `null` clears a nullable
   * field). Throws BERTH_E_BAD_REQUEST for a field that cannot change or a bad value, and
   * BERTH_E_NOT_FOUND when the deploy was never recorded.
   */
  async updateDeploy(id: string, fields: DeployUpdate): Promise<void> {
    for (const key of Object.keys(fields)) {
      if (!DEPLOY_UPDATABLE.has(key)) throw new BerthError(ErrorCodes.badRequest, `deploy field "${key}" cannot be updated`);
    }
    if (fields.state !== undefined) assertDeployState(fields.state);
    if (fields.logTail !== undefined) assertLines('logTail', fields.logTail);
    const q = this.#statements();
    let changes: number | bigint;
    try {
      // One prepared statement for every combination: each column has a "set it" flag next to its value.
      changes = q.updateDeploy.run({
        id,
        set_state: flag(fields.state),
        state: fields.state ?? null,
        set_release_id: flag(fields.releaseId),
        release_id: fields.releaseId ?? null,
        set_previous_release: flag(fields.previousRelease),
        previous_release: fields.previousRelease ?? null,
        set_source: flag(fields.source),
        source: redactNullable(fields.source ?? null),
        set_user_name: flag(fields.user),
        user_name: fields.user ?? null,
        set_failed_step: flag(fields.failedStep),
        failed_step: fields.failedStep ?? null,
        set_error: flag(fields.error),
        error: redactNullable(fields.error ?? null),
        set_log_tail: flag(fields.logTail),
        log_tail: fields.logTail === undefined ? null : JSON.stringify(redactLines(fields.logTail)),
        set_finished_at: flag(fields.finishedAt),
        finished_at: fields.finishedAt ?? null,
      }).changes;
    } catch (err) {
      throw failure('update deploy', err);
    }
    if (Number(changes) === 0) throw new BerthError(ErrorCodes.notFound, `deploy ${id} is not recorded`);
  }

  async getDeploy(id: string): Promise<DeployRecord | null> {
    const q = this.#statements();
    try {
      const row = q.getDeploy.get(id) as Row | undefined;
      return row ? toDeploy(row) : null;
    } catch (err) {
      throw failure('read deploy', err);
    }
  }

  /** Newest first (created_at, then id). Throws BERTH_E_BAD_REQUEST for an unknown state or a limit below 1. */
  async listDeploys(filter: { app?: string; state?: DeployState; limit?: number } = {}): Promise<DeployRecord[]> {
    const { app, state, limit = DEFAULT_DEPLOY_LIST_LIMIT } = filter;
    if (state !== undefined) assertDeployState(state);
    checkLimit(limit);
    const q = this.#statements();
    try {
      let rows: Row[];
      if (app !== undefined && state !== undefined) rows = q.listDeploysByAppState.all(app, state, limit) as Row[];
      else if (app !== undefined) rows = q.listDeploysByApp.all(app, limit) as Row[];
      else if (state !== undefined) rows = q.listDeploysByState.all(state, limit) as Row[];
      else rows = q.listDeploys.all(limit) as Row[];
      return rows.map(toDeploy);
    } catch (err) {
      throw failure('list deploys', err);
    }
  }

  /**
   * Appends one event. Throws BERTH_E_BAD_REQUEST for a bad status, seq, duration or lines,
   * BERTH_E_NOT_FOUND when the deploy was never recorded, and BERTH_E_CONFLICT when the seq is taken.
   */
  async addDeployEvent(event: DeployEvent): Promise<void> {
    if (!EVENT_STATUSES.has(event.status)) {
      throw new BerthError(ErrorCodes.badRequest, `unknown deploy event status "${event.status}": expected ${[...EVENT_STATUSES].join(', ')}`);
    }
    if (!(Number.isSafeInteger(event.seq) && event.seq >= 1)) {
      throw new BerthError(ErrorCodes.badRequest, `deploy event seq must be a whole number of at least 1, got ${event.seq}`);
    }
    if (event.durationMs !== null && !(Number.isSafeInteger(event.durationMs) && event.durationMs >= 0)) {
      throw new BerthError(ErrorCodes.badRequest, `deploy event durationMs must be null or a non-negative whole number, got ${event.durationMs}`);
    }
    if (event.lines !== undefined) assertLines('lines', event.lines);
    const q = this.#statements();
    try {
      q.addDeployEvent.run(
        event.deployId,
        event.seq,
        event.step,
        event.status,
        event.at,
        event.durationMs,
        redactNullable(event.message),
        event.lines === undefined ? null : JSON.stringify(redactLines(event.lines)),
      );
    } catch (err) {
      const code = sqliteErrcode(err);
      if (code === SQLITE_CONSTRAINT_FOREIGNKEY) throw new BerthError(ErrorCodes.notFound, `deploy ${event.deployId} is not recorded`, { cause: err });
      if (isUniqueViolation(err)) throw new BerthError(ErrorCodes.conflict, `deploy ${event.deployId} already has event ${event.seq}`, { cause: err });
      throw failure('add deploy event', err);
    }
  }

  /** In seq order; empty for an unknown deploy. */
  async listDeployEvents(deployId: string): Promise<DeployEvent[]> {
    const q = this.#statements();
    try {
      return (q.listDeployEvents.all(deployId) as Row[]).map(toDeployEvent);
    } catch (err) {
      throw failure('list deploy events', err);
    }
  }

  // ---- process groups -------------------------------------------------------------------------

  /** Inserts or replaces the row for `p.pgid`. Throws BERTH_E_BAD_REQUEST for a pgid below 2 or a bad pid/index. */
  async recordProcess(p: ProcessRecord): Promise<void> {
    // The orphan sweep signals -pgid: 0 would hit the gateway's own group and 1 (kill(-1)) every process.
    if (!(Number.isSafeInteger(p.pgid) && p.pgid >= 2)) {
      throw new BerthError(ErrorCodes.badRequest, `process group id must be a whole number of at least 2, got ${p.pgid}`);
    }
    if (!(Number.isSafeInteger(p.gatewayPid) && p.gatewayPid >= 1)) {
      throw new BerthError(ErrorCodes.badRequest, `gateway pid must be a positive whole number, got ${p.gatewayPid}`);
    }
    if (!(Number.isSafeInteger(p.index) && p.index >= 0)) {
      throw new BerthError(ErrorCodes.badRequest, `instance index must be a non-negative whole number, got ${p.index}`);
    }
    const q = this.#statements();
    try {
      q.recordProcess.run(p.pgid, p.app, p.generation, p.process, p.index, p.gatewayPid, p.startedAt);
    } catch (err) {
      throw failure('record process', err);
    }
  }

  /** Forgetting a pgid that is not recorded is not an error: the exit and the orphan sweep may both try. */
  async removeProcess(pgid: number): Promise<void> {
    const q = this.#statements();
    try {
      q.removeProcess.run(pgid);
    } catch (err) {
      throw failure('remove process', err);
    }
  }

  /** Oldest first (started_at, then pgid). */
  async listProcesses(): Promise<ProcessRecord[]> {
    const q = this.#statements();
    try {
      return (q.listProcesses.all() as Row[]).map(toProcess);
    } catch (err) {
      throw failure('list processes', err);
    }
  }

  // ---- lazily prepared statements (for domains added after the first ones) ----------------------

  #lazy = new Map<string, StatementSync>();

  /** A prepared statement, made on first use and cached until close. */
  #prep(sql: string): StatementSync {
    this.#statements();
    let st = this.#lazy.get(sql);
    if (!st) {
      st = this.#db!.prepare(sql);
      this.#lazy.set(sql, st);
    }
    return st;
  }

  // ---- audit ----------------------------------------------------------------------------------

  async addAudit(e: Omit<AuditRecord, 'id'>): Promise<number> {
    if (!AUDIT_OUTCOMES.has(e.outcome)) throw new BerthError(ErrorCodes.badRequest, `unknown audit outcome "${e.outcome}"`);
    if (!AUDIT_CHANNELS.has(e.channel)) throw new BerthError(ErrorCodes.badRequest, `unknown audit channel "${e.channel}"`);
    if (!e.user || !e.action) throw new BerthError(ErrorCodes.badRequest, 'an audit row needs a user and an action');
    try {
      const r = this.#prep(
        `INSERT INTO audit (occurred_at, user_name, channel, action, app, target, outcome, detail, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(e.at, e.user, e.channel, e.action, e.app, redactNullable(e.target), e.outcome, redactNullable(e.detail), e.finishedAt);
      return Number(r.lastInsertRowid);
    } catch (err) {
      throw failure('add audit row', err);
    }
  }

  async finishAudit(id: number, outcome: Exclude<AuditOutcome, 'pending'>, detail: string | null, finishedAt: string): Promise<void> {
    if (!AUDIT_OUTCOMES.has(outcome) || (outcome as string) === 'pending') throw new BerthError(ErrorCodes.badRequest, `unknown final audit outcome "${outcome}"`);
    let changes: number;
    try {
      changes = Number(this.#prep(`UPDATE audit SET outcome = ?, detail = COALESCE(?, detail), finished_at = ? WHERE id = ?`).run(outcome, redactNullable(detail), finishedAt, id).changes);
    } catch (err) {
      throw failure('finish audit row', err);
    }
    if (changes === 0) throw new BerthError(ErrorCodes.notFound, `no audit row ${id}`);
  }

  async listAudit(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    const limit = checkLimit(filter.limit ?? 100);
    const { where, args } = equalities([
      ['app', filter.app],
      ['user_name', filter.user],
      ['action', filter.action],
      ['outcome', filter.outcome],
    ]);
    if (filter.outcome !== undefined && !AUDIT_OUTCOMES.has(filter.outcome)) throw new BerthError(ErrorCodes.badRequest, `unknown audit outcome "${filter.outcome}"`);
    if (filter.since !== undefined) {
      where.push('occurred_at >= ?');
      args.push(filter.since);
    }
    const sql = `SELECT id, occurred_at, user_name, channel, action, app, target, outcome, detail, finished_at FROM audit ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY occurred_at DESC, id DESC LIMIT ?`;
    try {
      return (this.#prep(sql).all(...args, limit) as Row[]).map((r) => ({
        id: Number(r.id),
        at: String(r.occurred_at),
        user: String(r.user_name),
        channel: String(r.channel) as AuditChannel,
        action: String(r.action),
        app: r.app === null ? null : String(r.app),
        target: r.target === null ? null : redactText(String(r.target)),
        outcome: String(r.outcome) as AuditOutcome,
        detail: r.detail === null ? null : redactText(String(r.detail)),
        finishedAt: r.finished_at === null ? null : String(r.finished_at),
      }));
    } catch (err) {
      throw failure('list audit rows', err);
    }
  }

  async deleteAuditBefore(before: string): Promise<number> {
    try {
      return Number(this.#prep('DELETE FROM audit WHERE occurred_at < ?').run(before).changes);
    } catch (err) {
      throw failure('delete audit rows', err);
    }
  }

  // ---- task runs (migration 004) -------------------------------------------------------------

  async createTaskRun(run: TaskRunRecord): Promise<void> {
    assertTaskRun(run);
    try {
      this.#prep(`INSERT INTO task_runs (${TASK_RUN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(
        run.id,
        run.app,
        run.task,
        run.trigger,
        run.state,
        run.command,
        run.releaseId,
        run.user,
        run.startedAt,
        run.finishedAt,
        run.exitCode,
        run.durationMs,
        run.output,
        run.error,
      );
    } catch (err) {
      if (isUniqueViolation(err)) throw new BerthError(ErrorCodes.conflict, `task run ${run.id} is already recorded`, { cause: err });
      throw failure('create task run', err);
    }
  }

  async finishTaskRun(id: string, f: Pick<TaskRunRecord, 'state' | 'finishedAt' | 'exitCode' | 'durationMs' | 'output' | 'error'>): Promise<void> {
    assertTaskRunState(f.state);
    assertTaskRunNumbers(f);
    if (typeof f.output !== 'string') throw new BerthError(ErrorCodes.badRequest, 'task run output must be a string');
    let changes: number;
    try {
      changes = Number(
        this.#prep(`UPDATE task_runs SET state = ?, finished_at = ?, exit_code = ?, duration_ms = ?, output = ?, error = ? WHERE id = ?`).run(
          f.state,
          f.finishedAt,
          f.exitCode,
          f.durationMs,
          f.output,
          f.error,
          id,
        ).changes,
      );
    } catch (err) {
      throw failure('finish task run', err);
    }
    if (changes === 0) throw new BerthError(ErrorCodes.notFound, `no task run ${id}`);
  }

  async getTaskRun(id: string): Promise<TaskRunRecord | null> {
    try {
      const row = this.#prep(`SELECT ${TASK_RUN_COLS} FROM task_runs WHERE id = ?`).get(id) as Row | undefined;
      return row ? toTaskRun(row) : null;
    } catch (err) {
      throw failure('read task run', err);
    }
  }

  async listTaskRuns(filter: TaskRunFilter = {}): Promise<TaskRunRecord[]> {
    const limit = checkLimit(filter.limit ?? 100);
    if (filter.trigger !== undefined && !TASK_TRIGGERS.has(filter.trigger)) throw new BerthError(ErrorCodes.badRequest, `unknown task trigger "${filter.trigger}"`);
    const { where, args } = equalities([
      ['app', filter.app],
      ['task', filter.task],
      ['triggered_by', filter.trigger],
    ]);
    if (filter.states !== undefined) {
      if (filter.states.length === 0) return [];
      for (const s of filter.states) assertTaskRunState(s);
      where.push(`state IN (${filter.states.map(() => '?').join(', ')})`);
      args.push(...filter.states);
    }
    const sql = `SELECT ${TASK_RUN_COLS} FROM task_runs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY started_at DESC, id DESC LIMIT ?`;
    try {
      return (this.#prep(sql).all(...args, limit) as Row[]).map(toTaskRun);
    } catch (err) {
      throw failure('list task runs', err);
    }
  }

  async interruptTaskRuns(finishedAt: string): Promise<string[]> {
    try {
      const rows = this.#prep(`SELECT id FROM task_runs WHERE state = 'running' ORDER BY started_at, id`).all() as Row[];
      const ids = rows.map((r) => String(r.id));
      if (ids.length > 0) {
        this.#prep(`UPDATE task_runs SET state = 'interrupted', finished_at = ?, error = COALESCE(error, 'the gateway stopped while this ran') WHERE state = 'running'`).run(finishedAt);
      }
      return ids;
    } catch (err) {
      throw failure('interrupt task runs', err);
    }
  }

  async deleteTaskRunsBefore(before: string): Promise<number> {
    try {
      return Number(this.#prep(`DELETE FROM task_runs WHERE started_at < ? AND state <> 'running'`).run(before).changes);
    } catch (err) {
      throw failure('delete task runs', err);
    }
  }

  async deleteDeploysBefore(before: string): Promise<number> {
    try {
      // deploy_events go with their deploy (ON DELETE CASCADE).
      return Number(this.#prep(`DELETE FROM deploys WHERE created_at < ? AND state <> 'running'`).run(before).changes);
    } catch (err) {
      throw failure('delete deploys', err);
    }
  }
}

const TASK_RUN_COLS = 'id, app, task, triggered_by, state, command, release_id, user_name, started_at, finished_at, exit_code, duration_ms, output, error';
const TASK_RUN_STATES: ReadonlySet<string> = new Set<TaskRunState>(['running', 'succeeded', 'failed', 'skipped', 'timeout', 'interrupted']);
const TASK_TRIGGERS: ReadonlySet<string> = new Set<TaskTrigger>(['schedule', 'manual', 'cleanup']);

function assertTaskRunState(state: string): void {
  if (!TASK_RUN_STATES.has(state)) throw new BerthError(ErrorCodes.badRequest, `unknown task run state "${state}": expected ${[...TASK_RUN_STATES].join(', ')}`);
}

function assertTaskRunNumbers(f: { exitCode: number | null; durationMs: number | null }): void {
  if (f.exitCode !== null && !Number.isSafeInteger(f.exitCode)) throw new BerthError(ErrorCodes.badRequest, `task run exit code must be a whole number or null, got ${f.exitCode}`);
  if (f.durationMs !== null && !(Number.isSafeInteger(f.durationMs) && f.durationMs >= 0)) {
    throw new BerthError(ErrorCodes.badRequest, `task run duration must be a non-negative whole number of ms or null, got ${f.durationMs}`);
  }
}

function assertTaskRun(run: TaskRunRecord): void {
  if (typeof run.id !== 'string' || run.id === '') throw new BerthError(ErrorCodes.badRequest, 'a task run needs an id');
  if (typeof run.task !== 'string' || run.task === '') throw new BerthError(ErrorCodes.badRequest, 'a task run needs a task name');
  if (!TASK_TRIGGERS.has(run.trigger)) throw new BerthError(ErrorCodes.badRequest, `unknown task trigger "${run.trigger}": expected ${[...TASK_TRIGGERS].join(', ')}`);
  assertTaskRunState(run.state);
  assertTaskRunNumbers(run);
  if (Number.isNaN(Date.parse(run.startedAt))) throw new BerthError(ErrorCodes.badRequest, `task run start must be an ISO time, got "${run.startedAt}"`);
  if (typeof run.output !== 'string') throw new BerthError(ErrorCodes.badRequest, 'task run output must be a string');
}

function toTaskRun(row: Row): TaskRunRecord {
  return {
    id: String(row.id),
    app: textOrNull(row.app),
    task: String(row.task),
    trigger: String(row.triggered_by) as TaskTrigger,
    state: String(row.state) as TaskRunState,
    command: textOrNull(row.command),
    releaseId: textOrNull(row.release_id),
    user: textOrNull(row.user_name),
    startedAt: String(row.started_at),
    finishedAt: textOrNull(row.finished_at),
    exitCode: row.exit_code == null ? null : Number(row.exit_code),
    durationMs: row.duration_ms == null ? null : Number(row.duration_ms),
    output: String(row.output ?? ''),
    error: textOrNull(row.error),
  };
}

/** A list query's row limit: a whole number of at least 1, else BERTH_E_BAD_REQUEST. */
function checkLimit(limit: number): number {
  if (!(Number.isSafeInteger(limit) && limit >= 1)) throw new BerthError(ErrorCodes.badRequest, `limit must be a whole number of at least 1, got ${limit}`);
  return limit;
}

/** `column = ?` conditions for the filters that are set, with their values, for a list query's WHERE. */
function equalities(pairs: [column: string, value: string | undefined][]): { where: string[]; args: (string | number)[] } {
  const where: string[] = [];
  const args: (string | number)[] = [];
  for (const [column, value] of pairs) {
    if (value === undefined) continue;
    where.push(`${column} = ?`);
    args.push(value);
  }
  return { where, args };
}

const AUDIT_OUTCOMES: ReadonlySet<string> = new Set<AuditOutcome>(['pending', 'ok', 'failed', 'refused', 'interrupted']);
const AUDIT_CHANNELS = new Set<string>(['socket', 'tcp', 'internal']);

function prepareStatements(db: DatabaseSync): Statements {
  const appCols = 'app, active_release, mode, mode_message, mode_retry_after, updated_at';
  const releaseCols = 'app, id, created_at, state, source, revision, pruned_at';
  const deployCols =
    'id, app, kind, state, release_id, previous_release, source, user_name, failed_step, error, log_tail, created_at, finished_at';
  const newestFirst = 'ORDER BY created_at DESC, id DESC LIMIT ?';
  const eventCols = 'deploy_id, seq, step, status, occurred_at, duration_ms, message, lines';
  const processCols = 'pgid, app, generation, process, instance_index, gateway_pid, started_at';
  return {
    getApp: db.prepare(`SELECT ${appCols} FROM apps WHERE app = ?`),
    listApps: db.prepare(`SELECT ${appCols} FROM apps ORDER BY app`),
    setActive: db.prepare(
      `INSERT INTO apps (app, active_release, updated_at) VALUES (?1, ?2, ?3)
       ON CONFLICT (app) DO UPDATE SET active_release = excluded.active_release, updated_at = excluded.updated_at`,
    ),
    setMode: db.prepare(
      `INSERT INTO apps (app, mode, mode_message, mode_retry_after, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
       ON CONFLICT (app) DO UPDATE SET mode = excluded.mode, mode_message = excluded.mode_message,
         mode_retry_after = excluded.mode_retry_after, updated_at = excluded.updated_at`,
    ),
    // An upsert rather than INSERT OR REPLACE: REPLACE deletes the row first, which would cascade into
    // rows that later migrations hang off a release.
    putRelease: db.prepare(
      `INSERT INTO releases (${releaseCols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
       ON CONFLICT (app, id) DO UPDATE SET created_at = excluded.created_at, state = excluded.state,
         source = excluded.source, revision = excluded.revision, pruned_at = excluded.pruned_at`,
    ),
    getRelease: db.prepare(`SELECT ${releaseCols} FROM releases WHERE app = ? AND id = ?`),
    listReleases: db.prepare(`SELECT ${releaseCols} FROM releases WHERE app = ? ORDER BY created_at DESC, id DESC`),
    setReleaseState: db.prepare('UPDATE releases SET state = ? WHERE app = ? AND id = ?'),
    setReleasePrunedAt: db.prepare('UPDATE releases SET pruned_at = ? WHERE app = ? AND id = ?'),
    schemaVersion: db.prepare('SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations'),
    createDeploy: db.prepare(`INSERT INTO deploys (${deployCols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)`),
    updateDeploy: db.prepare(
      `UPDATE deploys SET
         state = CASE WHEN :set_state THEN :state ELSE state END,
         release_id = CASE WHEN :set_release_id THEN :release_id ELSE release_id END,
         previous_release = CASE WHEN :set_previous_release THEN :previous_release ELSE previous_release END,
         source = CASE WHEN :set_source THEN :source ELSE source END,
         user_name = CASE WHEN :set_user_name THEN :user_name ELSE user_name END,
         failed_step = CASE WHEN :set_failed_step THEN :failed_step ELSE failed_step END,
         error = CASE WHEN :set_error THEN :error ELSE error END,
         log_tail = CASE WHEN :set_log_tail THEN :log_tail ELSE log_tail END,
         finished_at = CASE WHEN :set_finished_at THEN :finished_at ELSE finished_at END
       WHERE id = :id`,
    ),
    getDeploy: db.prepare(`SELECT ${deployCols} FROM deploys WHERE id = ?`),
    listDeploys: db.prepare(`SELECT ${deployCols} FROM deploys ${newestFirst}`),
    listDeploysByApp: db.prepare(`SELECT ${deployCols} FROM deploys WHERE app = ? ${newestFirst}`),
    listDeploysByState: db.prepare(`SELECT ${deployCols} FROM deploys WHERE state = ? ${newestFirst}`),
    listDeploysByAppState: db.prepare(`SELECT ${deployCols} FROM deploys WHERE app = ? AND state = ? ${newestFirst}`),
    addDeployEvent: db.prepare(`INSERT INTO deploy_events (${eventCols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)`),
    listDeployEvents: db.prepare(`SELECT ${eventCols} FROM deploy_events WHERE deploy_id = ? ORDER BY seq`),
    recordProcess: db.prepare(
      `INSERT INTO process_groups (${processCols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
       ON CONFLICT (pgid) DO UPDATE SET app = excluded.app, generation = excluded.generation, process = excluded.process,
         instance_index = excluded.instance_index, gateway_pid = excluded.gateway_pid, started_at = excluded.started_at`,
    ),
    removeProcess: db.prepare('DELETE FROM process_groups WHERE pgid = ?'),
    listProcesses: db.prepare(`SELECT ${processCols} FROM process_groups ORDER BY started_at, pgid`),
  };
}

function ensureMigrationsTable(db: DatabaseSync): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)');
}

function recordMigration(db: DatabaseSync, m: Migration): void {
  db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, new Date().toISOString());
}

function readVersion(db: DatabaseSync): number {
  return Number((db.prepare('SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations').get() as Row).version);
}

/** Runs `fn` inside BEGIN IMMEDIATE … COMMIT, rolling back when it throws. */
function inTransaction(db: DatabaseSync, fn: () => void): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    fn();
    db.exec('COMMIT');
  } catch (err) {
    if (db.isTransaction) db.exec('ROLLBACK');
    throw err;
  }
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function assertReleaseState(state: string): void {
  if (!RELEASE_STATES.has(state as ReleaseState)) {
    throw new BerthError(ErrorCodes.badRequest, `unknown release state "${state}": expected ${[...RELEASE_STATES].join(', ')}`);
  }
}

function assertDeployKind(kind: string): void {
  if (!DEPLOY_KINDS.has(kind as DeployKind)) {
    throw new BerthError(ErrorCodes.badRequest, `unknown deploy kind "${kind}": expected ${[...DEPLOY_KINDS].join(', ')}`);
  }
}

function assertDeployState(state: string): void {
  if (!DEPLOY_STATES.has(state as DeployState)) {
    throw new BerthError(ErrorCodes.badRequest, `unknown deploy state "${state}": expected ${[...DEPLOY_STATES].join(', ')}`);
  }
}

/** Output lines are stored as JSON; anything but an array of strings would not read back as one. */
function assertLines(field: string, lines: unknown): void {
  if (!Array.isArray(lines) || !lines.every((l) => typeof l === 'string')) {
    throw new BerthError(ErrorCodes.badRequest, `${field} must be an array of strings`);
  }
}

/** 1 when an update names the field, for the `set_*` flags of the update statement. */
function flag(value: unknown): number {
  return value === undefined ? 0 : 1;
}

/** node:sqlite's extended result code, when `err` comes from SQLite. */
function sqliteErrcode(err: unknown): number | undefined {
  const code = (err as { errcode?: unknown } | null)?.errcode;
  return typeof code === 'number' ? code : undefined;
}

function isUniqueViolation(err: unknown): boolean {
  const code = sqliteErrcode(err);
  return code === SQLITE_CONSTRAINT_PRIMARYKEY || code === SQLITE_CONSTRAINT_UNIQUE;
}

function failure(action: string, err: unknown): BerthError {
  return new BerthError(ErrorCodes.store, `store: cannot ${action}: ${errorMessage(err)}`, { cause: err });
}

function toAppState(row: Row): AppState {
  return {
    app: String(row.app),
    activeRelease: row.active_release == null ? null : String(row.active_release),
    mode: String(row.mode) as Mode,
    modeMessage: row.mode_message == null ? null : String(row.mode_message),
    modeRetryAfter: row.mode_retry_after == null ? null : Number(row.mode_retry_after),
    updatedAt: String(row.updated_at),
  };
}

function toRelease(row: Row): ReleaseRecord {
  return {
    app: String(row.app),
    id: String(row.id),
    createdAt: String(row.created_at),
    state: String(row.state) as ReleaseState,
    source: redactText(String(row.source)),
    revision: row.revision == null ? null : String(row.revision),
    prunedAt: textOrNull(row.pruned_at),
  };
}

function toDeploy(row: Row): DeployRecord {
  return {
    id: String(row.id),
    app: String(row.app),
    kind: String(row.kind) as DeployKind,
    state: String(row.state) as DeployState,
    releaseId: textOrNull(row.release_id),
    previousRelease: textOrNull(row.previous_release),
    source: redactNullable(textOrNull(row.source)),
    user: textOrNull(row.user_name),
    failedStep: textOrNull(row.failed_step),
    error: redactNullable(textOrNull(row.error)),
    logTail: redactLines(JSON.parse(String(row.log_tail)) as string[]),
    createdAt: String(row.created_at),
    finishedAt: textOrNull(row.finished_at),
  };
}

function toDeployEvent(row: Row): DeployEvent {
  const event: DeployEvent = {
    deployId: String(row.deploy_id),
    seq: Number(row.seq),
    step: String(row.step),
    status: String(row.status) as DeployEvent['status'],
    at: String(row.occurred_at),
    durationMs: row.duration_ms == null ? null : Number(row.duration_ms),
    message: redactNullable(textOrNull(row.message)),
  };
  // `lines` is optional in the record: absent stays absent, so an event reads back as it was written.
  if (row.lines != null) event.lines = redactLines(JSON.parse(String(row.lines)) as string[]);
  return event;
}

function toProcess(row: Row): ProcessRecord {
  return {
    pgid: Number(row.pgid),
    app: String(row.app),
    generation: String(row.generation),
    process: String(row.process),
    index: Number(row.instance_index),
    gatewayPid: Number(row.gateway_pid),
    startedAt: String(row.started_at),
  };
}

/**
 * Output lines as recorded: a URL with credentials (a deploy source echoed by git or a build) is
 * redacted. Done on write and again on read, so rows written before redaction existed come out clean.
 */
function redactLines(lines: string[]): string[] {
  return Array.isArray(lines) ? lines.map((l) => (typeof l === 'string' ? redactText(l) : l)) : lines;
}

function textOrNull(value: unknown): string | null {
  return value == null ? null : String(value);
}
