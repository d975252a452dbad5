/**
 * A Store put together from one repository per part of the interface. Every backend supplies the same
 * four parts plus its own open, close and schema version, so the long list of Store methods is written
 * once here, not once per backend.
 */
import type { AppStore, AuditStore, DeployStore, Store, TaskStore } from './store.ts';

/** A backend's repositories. The retention delete of deploys belongs to the deploys, not the task runs. */
export interface StoreParts {
  apps: AppStore;
  deploys: DeployStore & Pick<TaskStore, 'deleteDeploysBefore'>;
  audit: AuditStore;
  taskRuns: Omit<TaskStore, 'deleteDeploysBefore'>;
}

export abstract class ComposedStore implements Store {
  #apps: StoreParts['apps'];
  #deploys: StoreParts['deploys'];
  #audit: StoreParts['audit'];
  #taskRuns: StoreParts['taskRuns'];

  constructor(parts: StoreParts) {
    this.#apps = parts.apps;
    this.#deploys = parts.deploys;
    this.#audit = parts.audit;
    this.#taskRuns = parts.taskRuns;
  }

  abstract open(): Promise<void>;
  abstract close(): Promise<void>;
  abstract schemaVersion(): Promise<number>;

  // Each method takes the interface's own parameters, so its signature and JSDoc live in store.ts alone.

  getAppState(...a: Parameters<Store['getAppState']>) { return this.#apps.getAppState(...a); }
  listAppStates(...a: Parameters<Store['listAppStates']>) { return this.#apps.listAppStates(...a); }
  setActiveRelease(...a: Parameters<Store['setActiveRelease']>) { return this.#apps.setActiveRelease(...a); }
  setMode(...a: Parameters<Store['setMode']>) { return this.#apps.setMode(...a); }
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
}
