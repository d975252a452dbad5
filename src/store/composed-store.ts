/**
 * The Store over one backend's connection (database.ts): the repositories (./repositories/) written once
 * for every backend, and the open, close and schema version they share. A backend only says how to
 * connect (sqlite.ts, postgres.ts), so the long list of Store methods is written once here.
 */
import type { Logger } from '../lib/logger.ts';
import type { StoreDatabase } from './database.ts';
import { loadMigrations, migrate, SCHEMA_VERSION_SQL, type MigrationPolicy } from './migrations.ts';
import type { Store } from './store.ts';
import { Acme } from './repositories/acme.ts';
import { Apps } from './repositories/apps.ts';
import { Audit } from './repositories/audit.ts';
import { Deploys } from './repositories/deploys.ts';
import { TaskRuns } from './repositories/task-runs.ts';
import { Fleet } from './repositories/fleet.ts';
import { Flushes } from './repositories/flushes.ts';
import { Scales } from './repositories/scales.ts';

/** How a store brings its schema in line when it opens; every backend takes the same. */
export interface MigrationOptions {
  migrations: MigrationPolicy;
  /** Drop every table before migrating (development only). */
  resetState: boolean;
  logger: Logger;
  /** Where the NNN-name.sql files are; defaults to the ones that ship with this build (tests point elsewhere). */
  migrationsDir?: string;
  /** The fleet node this gateway is (FleetStore.node); default `local`. */
  node?: string;
}

/** The node a store writes as when none is given (a single gateway, tests). */
export const DEFAULT_NODE = 'local';

export class ComposedStore implements Store {
  #db: StoreDatabase;
  #opts: MigrationOptions;
  #apps: Apps;
  #deploys: Deploys;
  #audit: Audit;
  #taskRuns: TaskRuns;
  #acme: Acme;
  #fleet: Fleet;
  #flushes: Flushes;
  #scales: Scales;
  readonly node: string;

  constructor(db: StoreDatabase, opts: MigrationOptions) {
    this.#db = db;
    this.#opts = opts;
    this.node = opts.node ?? DEFAULT_NODE;
    this.#apps = new Apps(db);
    this.#deploys = new Deploys(db, this.node);
    this.#audit = new Audit(db, this.node);
    this.#taskRuns = new TaskRuns(db, this.node);
    this.#acme = new Acme(db);
    this.#fleet = new Fleet(db, this.node);
    this.#flushes = new Flushes(db, this.node);
    this.#scales = new Scales(db, this.node);
  }

  /**
   * Connects, optionally drops every table (`resetState`), then brings the schema in line with
   * `migrations` (for PostgreSQL under the migration lock, so gateways starting together take turns).
   * Throws BERTH_E_STORE, and leaves the store closed, when the database cannot be opened or reached, a
   * migration fails, or `none` finds the schema missing or behind.
   */
  async open(): Promise<void> {
    const { migrations: policy, resetState, logger } = this.#opts;
    const migrations = await loadMigrations(this.#opts.migrationsDir ?? this.#db.migrationsDir);
    await this.#db.open((schema) => migrate(schema, migrations, { policy, resetState, logger }));
    logger.info({ ...this.#db.logged, migrations: policy, schemaVersion: await this.schemaVersion() }, 'store opened');
  }

  async close(): Promise<void> {
    if (await this.#db.close()) this.#opts.logger.info({ ...this.#db.logged }, 'store closed');
  }

  async schemaVersion(): Promise<number> {
    return Number(await this.#db.get('read schema version', SCHEMA_VERSION_SQL, [], (row) => row.version));
  }

  // Each method takes the interface's own parameters, so its signature and JSDoc live in store.ts alone.

  getAppState(...a: Parameters<Store['getAppState']>) { return this.#apps.getAppState(...a); }
  listAppStates(...a: Parameters<Store['listAppStates']>) { return this.#apps.listAppStates(...a); }
  setActiveRelease(...a: Parameters<Store['setActiveRelease']>) { return this.#apps.setActiveRelease(...a); }
  setMode(...a: Parameters<Store['setMode']>) { return this.#apps.setMode(...a); }
  requestReload(...a: Parameters<Store['requestReload']>) { return this.#apps.requestReload(...a); }
  putRelease(...a: Parameters<Store['putRelease']>) { return this.#apps.putRelease(...a); }
  getRelease(...a: Parameters<Store['getRelease']>) { return this.#apps.getRelease(...a); }
  listReleases(...a: Parameters<Store['listReleases']>) { return this.#apps.listReleases(...a); }
  setReleaseState(...a: Parameters<Store['setReleaseState']>) { return this.#apps.setReleaseState(...a); }
  setReleasePrunedAt(...a: Parameters<Store['setReleasePrunedAt']>) { return this.#apps.setReleasePrunedAt(...a); }

  createDeploy(...a: Parameters<Store['createDeploy']>) { return this.#deploys.createDeploy(...a); }
  updateDeploy(...a: Parameters<Store['updateDeploy']>) { return this.#deploys.updateDeploy(...a); }
  getDeploy(...a: Parameters<Store['getDeploy']>) { return this.#deploys.getDeploy(...a); }
  listDeploys(...a: Parameters<Store['listDeploys']>) { return this.#deploys.listDeploys(...a); }
  addDeployEvent(...a: Parameters<Store['addDeployEvent']>) { return this.#deploys.addDeployEvent(...a); }
  listDeployEvents(...a: Parameters<Store['listDeployEvents']>) { return this.#deploys.listDeployEvents(...a); }
  deleteDeploysBefore(...a: Parameters<Store['deleteDeploysBefore']>) { return this.#deploys.deleteDeploysBefore(...a); }
  recordProcess(...a: Parameters<Store['recordProcess']>) { return this.#deploys.recordProcess(...a); }
  removeProcess(...a: Parameters<Store['removeProcess']>) { return this.#deploys.removeProcess(...a); }
  listProcesses(...a: Parameters<Store['listProcesses']>) { return this.#deploys.listProcesses(...a); }

  addAudit(...a: Parameters<Store['addAudit']>) { return this.#audit.addAudit(...a); }
  finishAudit(...a: Parameters<Store['finishAudit']>) { return this.#audit.finishAudit(...a); }
  listAudit(...a: Parameters<Store['listAudit']>) { return this.#audit.listAudit(...a); }
  deleteAuditBefore(...a: Parameters<Store['deleteAuditBefore']>) { return this.#audit.deleteAuditBefore(...a); }

  createTaskRun(...a: Parameters<Store['createTaskRun']>) { return this.#taskRuns.createTaskRun(...a); }
  finishTaskRun(...a: Parameters<Store['finishTaskRun']>) { return this.#taskRuns.finishTaskRun(...a); }
  getTaskRun(...a: Parameters<Store['getTaskRun']>) { return this.#taskRuns.getTaskRun(...a); }
  listTaskRuns(...a: Parameters<Store['listTaskRuns']>) { return this.#taskRuns.listTaskRuns(...a); }
  interruptTaskRuns(...a: Parameters<Store['interruptTaskRuns']>) { return this.#taskRuns.interruptTaskRuns(...a); }
  deleteTaskRunsBefore(...a: Parameters<Store['deleteTaskRunsBefore']>) { return this.#taskRuns.deleteTaskRunsBefore(...a); }

  getAcmeAccount(...a: Parameters<Store['getAcmeAccount']>) { return this.#acme.getAcmeAccount(...a); }
  saveAcmeAccount(...a: Parameters<Store['saveAcmeAccount']>) { return this.#acme.saveAcmeAccount(...a); }
  getCertificate(...a: Parameters<Store['getCertificate']>) { return this.#acme.getCertificate(...a); }
  saveCertificate(...a: Parameters<Store['saveCertificate']>) { return this.#acme.saveCertificate(...a); }
  listCertificates(...a: Parameters<Store['listCertificates']>) { return this.#acme.listCertificates(...a); }
  deleteCertificate(...a: Parameters<Store['deleteCertificate']>) { return this.#acme.deleteCertificate(...a); }

  saveNode(...a: Parameters<Store['saveNode']>) { return this.#fleet.saveNode(...a); }
  listNodes(...a: Parameters<Store['listNodes']>) { return this.#fleet.listNodes(...a); }
  deleteNodesBefore(...a: Parameters<Store['deleteNodesBefore']>) { return this.#fleet.deleteNodesBefore(...a); }
  acquireLock(...a: Parameters<Store['acquireLock']>) { return this.#fleet.acquireLock(...a); }
  releaseLock(...a: Parameters<Store['releaseLock']>) { return this.#fleet.releaseLock(...a); }
  releaseAllLocks(...a: Parameters<Store['releaseAllLocks']>) { return this.#fleet.releaseAllLocks(...a); }
  claimOnce(...a: Parameters<Store['claimOnce']>) { return this.#fleet.claimOnce(...a); }
  deleteClaimsBefore(...a: Parameters<Store['deleteClaimsBefore']>) { return this.#fleet.deleteClaimsBefore(...a); }
  putChallenge(...a: Parameters<Store['putChallenge']>) { return this.#fleet.putChallenge(...a); }
  getChallenge(...a: Parameters<Store['getChallenge']>) { return this.#fleet.getChallenge(...a); }
  listChallenges(...a: Parameters<Store['listChallenges']>) { return this.#fleet.listChallenges(...a); }
  deleteChallenge(...a: Parameters<Store['deleteChallenge']>) { return this.#fleet.deleteChallenge(...a); }
  watch(...a: Parameters<Store['watch']>) { return this.#db.watch(...a); }

  createFlush(...a: Parameters<Store['createFlush']>) { return this.#flushes.createFlush(...a); }
  updateFlush(...a: Parameters<Store['updateFlush']>) { return this.#flushes.updateFlush(...a); }
  getFlush(...a: Parameters<Store['getFlush']>) { return this.#flushes.getFlush(...a); }
  listPendingFlushes(...a: Parameters<Store['listPendingFlushes']>) { return this.#flushes.listPendingFlushes(...a); }
  listFlushes(...a: Parameters<Store['listFlushes']>) { return this.#flushes.listFlushes(...a); }
  deleteFlushesBefore(...a: Parameters<Store['deleteFlushesBefore']>) { return this.#flushes.deleteFlushesBefore(...a); }

  listScales(...a: Parameters<Store['listScales']>) { return this.#scales.listScales(...a); }
  setScale(...a: Parameters<Store['setScale']>) { return this.#scales.setScale(...a); }
  deleteScale(...a: Parameters<Store['deleteScale']>) { return this.#scales.deleteScale(...a); }
}
