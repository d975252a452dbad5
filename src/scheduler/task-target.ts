/**
 * What the scheduler and its jobs know of an app, and who tells them. In its own file so the scheduler
 * and the cleanup job it runs can both name it without importing each other.
 */
import type { ProcessConfig, AppConfig } from '../config/schema.ts';
import type { ReleaseStore } from '../deploy/release-store.ts';

/** What the scheduler needs to know of an app, from the gateway. */
export interface TaskTarget {
  config: AppConfig;
  releases: ReleaseStore;
  /** The active generation's release: where tasks run. Null while the app serves nothing. */
  active: { id: string; dir: string; processes: Readonly<Record<string, ProcessConfig>> } | null;
}

export interface SchedulerHost {
  /** Undefined when no app has that name. */
  taskTarget(app: string): TaskTarget | undefined;
  /** Why no run may start now (an upgrade hands the gateway over), or null. */
  held?(): string | null;
}
