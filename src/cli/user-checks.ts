/**
 * What `berth check` and `berth start` say about app users (SPEC: Users and environment):
 * - berth is root: every app's user and group must exist (an unknown one is an error naming it);
 * - berth is not root: apps share berth's user, so app code (and `berth run`) can reach the control
 *   socket, whose callers are unrestricted admins. `control.permissions` that restrict anyone cannot be
 *   enforced against app code then: an error, or a warning when `control.permissions_unenforced_ok`.
 */
import type { BerthConfig } from '../config/schema.ts';
import { DEFAULT_PERMISSIONS_ENVIRONMENT } from '../api/auth.ts';
import { errorMessage, type ConfigProblem } from '../lib/errors.ts';
import { isRoot, resolveAppUser } from '../supervisor/app-user.ts';

export interface UserCheck {
  /** Refuse: `berth check` exits 2, `berth start` does not start. */
  problems: ConfigProblem[];
  /** Said, and nothing refused. */
  warnings: string[];
}

export function checkUsers(config: BerthConfig, root: boolean = isRoot()): UserCheck {
  const problems: ConfigProblem[] = [];
  const warnings: string[] = [];
  if (root) {
    for (const app of Object.values(config.apps)) {
      try {
        resolveAppUser(app, config.defaultUser, true);
      } catch (err) {
        problems.push({ path: '', message: errorMessage(err) });
      }
    }
    return { problems, warnings };
  }
  const env = config.environment ?? DEFAULT_PERMISSIONS_ENVIRONMENT;
  const limited = Object.keys(config.control.permissions[env] ?? {});
  if (limited.length > 0) {
    const uid = process.getuid?.();
    const message =
      `restricts ${limited.join(', ')}, but berth is not root${uid === undefined ? '' : ` (uid ${uid})`}: every app runs as berth's own user, ` +
      `so app code and \`berth run\` can use the control socket as an unrestricted admin and act on any app. ` +
      `Run berth as root, so that each app runs as its own user, or accept this with control.permissions_unenforced_ok: true`;
    if (config.control.permissionsUnenforcedOk) warnings.push(`control.permissions.${env} ${message.replace(/, or accept this with .*$/, ' (accepted: control.permissions_unenforced_ok is true)')}`);
    else problems.push({ path: `control.permissions.${env}`, message });
  }
  return { problems, warnings };
}
