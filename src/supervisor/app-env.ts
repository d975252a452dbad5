/**
 * THE environment of every app process: instances, scheduled tasks, one-off runs (`berth run`) and
 * build/release commands. Apps never inherit the gateway's environment as a whole: it holds the
 * operator's secrets (BERTH_TOKEN), BERTH_* config overrides (one app's env written as
 * BERTH_APPS__ALPHA__ENV__DB_PASSWORD) and whatever else berth was started with.
 *
 * Layers, each over the one before:
 * 1. the pass-through list, from the gateway's environment: PASS_THROUGH_ENV and every `LC_*`;
 *    TMPDIR only when the app runs as berth's own user (a root TMPDIR is usually not theirs to write);
 * 2. HOME (the app user's home), USER and LOGNAME (the app user's name);
 * 3. the app's `env`;
 * 4. `processes.<type>.env`, for an instance of that type;
 * 5. the BERTH_* variables (and PORT) of SPEC § Environment: facts about this process that the app's
 *    own env may not change (the health probe goes to the PORT berth chose).
 */
import type { AppConfig, ProcessConfig } from '../config/schema.ts';
import type { AppUser } from './app-user.ts';

/** Variables passed through from the gateway's environment, as they are (plus every `LC_*`). */
export const PASS_THROUGH_ENV: readonly string[] = ['PATH', 'LANG', 'LANGUAGE', 'TZ', 'SSL_CERT_FILE', 'SSL_CERT_DIR', 'NODE_EXTRA_CA_CERTS'];

/** The variables berth sets per process; never taken from the gateway's environment or from a layer below. */
export const BERTH_VARS: readonly string[] = ['PORT', 'BERTH_SOCKET', 'BERTH_APP', 'BERTH_RELEASE', 'BERTH_PROCESS', 'BERTH_INSTANCE', 'BERTH_DB_POOL_SIZE', 'BERTH_HEARTBEAT_FILE', 'BERTH_TASK'];

export interface AppEnvInput {
  app: AppConfig;
  user: AppUser;
  /** The process type of an instance: its `env` goes over the app's. Null for tasks and commands. */
  process?: ProcessConfig | null;
  /** The BERTH_* variables (and PORT) of this process; undefined values are left out. */
  vars: Record<string, string | undefined>;
}

/**
 * Builds the environment of one app process from the gateway's environment (`inherited`, normally
 * process.env): only the pass-through list gets through.
 */
export function appEnv(inherited: Record<string, string | undefined>, input: AppEnvInput): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of Object.keys(inherited)) {
    const value = inherited[key];
    if (value === undefined) continue;
    if (PASS_THROUGH_ENV.includes(key) || key.startsWith('LC_') || (key === 'TMPDIR' && !input.user.switches)) env[key] = value;
  }
  env.HOME = input.user.home;
  env.USER = input.user.name;
  env.LOGNAME = input.user.name;
  Object.assign(env, input.app.env);
  if (input.process) Object.assign(env, input.process.env);
  for (const key of BERTH_VARS) delete env[key];
  for (const [key, value] of Object.entries(input.vars)) if (value !== undefined) env[key] = value;
  return env;
}

/** The BERTH_* variables of an instance, but its address (PORT or BERTH_SOCKET, set at each start). */
export function instanceVars(app: AppConfig, releaseId: string, proc: ProcessConfig, index: number, heartbeatFile: string | null): Record<string, string | undefined> {
  return {
    BERTH_APP: app.name,
    BERTH_RELEASE: releaseId,
    BERTH_PROCESS: proc.name,
    BERTH_INSTANCE: String(index),
    BERTH_DB_POOL_SIZE: String(proc.http ? proc.concurrency : 1),
    BERTH_HEARTBEAT_FILE: !proc.http && heartbeatFile !== null ? heartbeatFile : undefined,
  };
}

/** The BERTH_* variables of a scheduled task or a one-off run. */
export function taskVars(app: AppConfig, releaseId: string, task: string): Record<string, string> {
  return { BERTH_APP: app.name, BERTH_RELEASE: releaseId, BERTH_TASK: task, BERTH_DB_POOL_SIZE: '1' };
}

/** The BERTH_* variables of a build or release command. */
export function commandVars(app: AppConfig, releaseId: string): Record<string, string> {
  return { BERTH_APP: app.name, BERTH_RELEASE: releaseId };
}
