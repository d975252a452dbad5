/**
 * What `berth check` says about `shared` entries: each must exist at `<state_dir>/apps/<app>/shared/<entry>`
 * before the app deploys, or the deploy's link step fails (and an app's first start with it). A missing
 * one is a warning, not an error: the operator may create it before `berth start`, and the config is valid.
 */
import { lstatSync } from 'node:fs';
import { join, posix } from 'node:path';
import type { BerthConfig } from '../config/schema.ts';

export interface MissingShared {
  app: string;
  entry: string;
  /** Where the deploy looks for it. */
  path: string;
}

/** Every `shared` entry of every app that is not in the state dir (a dangling symlink counts as there, as for the deploy). */
export function missingSharedEntries(config: BerthConfig): MissingShared[] {
  const missing: MissingShared[] = [];
  for (const app of Object.values(config.apps)) {
    for (const entry of app.shared) {
      // The same normal form the link step uses; a path that climbs out is config validation's to refuse.
      const rel = posix.normalize(entry.replace(/\/+$/, ''));
      if (rel === '' || rel === '.' || rel === '..' || rel.startsWith('../') || posix.isAbsolute(rel)) continue;
      const path = join(config.stateDir, 'apps', app.name, 'shared', rel);
      if (lstatSync(path, { throwIfNoEntry: false }) === undefined) missing.push({ app: app.name, entry, path });
    }
  }
  return missing;
}

/** One warning line per missing entry, naming the app, the entry and the path to create. */
export function sharedWarnings(config: BerthConfig): string[] {
  return missingSharedEntries(config).map((m) => `app ${m.app}: shared entry "${m.entry}" is missing: create ${m.path} (its deploy fails without it)`);
}
