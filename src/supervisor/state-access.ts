/**
 * Who may reach what in the state dir, once apps run as users of their own (berth is root).
 *
 * ```
 * <state_dir>/                 0711 root   (0700 when berth is not root and no socket_group needs it)
 *   berth.db, -wal, -shm       0600 root   (open-store.ts)
 *   control.sock               0600 root   (0660 with control.socket_group)
 *   tmp/                       0700 root
 *   logs/                      0700 root
 *     berth.log (.1, .2, .3)   0600 root   the gateway's own log (lib/logger.ts, lib/log-writer.ts)
 *   sockets/                   0711 root
 *     <app>/                   0700 app    its BERTH_SOCKET files (ports.ts)
 *   apps/                      0711 root
 *     <app>/                   0711 root   an app can pass through, never list or write
 *       logs/                  0700 root   process and deploy logs: only berth reads them
 *       run/                   0711 root   heartbeat files, each 0644 owned by the app (instance.ts)
 *       releases/              0711 root
 *         <id>/                0700 app    the whole tree belongs to the app's user
 *       current -> releases/<id>
 *       shared/                0700 app    and each `shared` entry belongs to the app
 * ```
 *
 * Directories an app may write are never above anything berth writes as root, so an app cannot swap a
 * path berth uses for a symlink. 0711 lets an app user pass through to its own directories without
 * seeing anything else; what it passes into is closed to other apps' users (0700). Apps that share a
 * user (two apps on `default_user`) can of course read each other.
 */
import { chmod, lchown, lstat, mkdir, opendir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { AppUser } from './app-user.ts';

/** Mode of a directory app users pass through without listing it. */
const TRAVERSE = 0o711;
const PRIVATE = 0o700;

/**
 * The state dir and its shared top-level directories, at gateway start. `root`: app users must pass
 * through (0711); else 0700 unless `socketGroup` members must reach a control socket inside it.
 */
export async function secureStateDir(stateDir: string, opts: { root: boolean; socketGroup: string | null }): Promise<void> {
  const open = opts.root || opts.socketGroup !== null;
  await mkdir(stateDir, { recursive: true, mode: PRIVATE });
  // Made so by someone else: anything in it may have been planted or swapped already. Not fixed quietly.
  if (((await stat(stateDir)).mode & 0o002) !== 0) {
    throw new BerthError(ErrorCodes.listen, `the state directory ${stateDir} is world-writable; refusing to use it (chmod o-w ${stateDir}, or set state_dir elsewhere)`);
  }
  await ensureDir(stateDir, open ? TRAVERSE : PRIVATE);
  await ensureDir(join(stateDir, 'apps'), open ? TRAVERSE : PRIVATE);
  // Spilled request bodies and responses: other people's traffic.
  await ensureDir(join(stateDir, 'tmp'), PRIVATE);
  await ensureDir(join(stateDir, 'logs'), PRIVATE);
}

/**
 * One app's directories, before it deploys or boots: see the layout above. Only the `shared` dir and
 * its top-level entries change owner (lchown: a symlink there is changed itself, never its target).
 */
export async function prepareAppDirs(appDir: string, user: AppUser, shared: readonly string[]): Promise<void> {
  await ensureDir(appDir, TRAVERSE);
  await ensureDir(join(appDir, 'logs'), PRIVATE);
  await ensureDir(join(appDir, 'run'), TRAVERSE);
  await ensureDir(join(appDir, 'releases'), TRAVERSE);
  if (!user.switches) return;
  const sharedDir = join(appDir, 'shared');
  await mkdir(sharedDir, { recursive: true, mode: PRIVATE });
  const st = await lstat(sharedDir);
  if (st.isDirectory()) {
    await lchown(sharedDir, user.uid, user.gid);
    await chmod(sharedDir, PRIVATE);
  }
  for (const entry of shared) {
    const top = entry.replace(/^\/+/, '').split('/')[0];
    if (top === '' || top === '.' || top === '..') continue;
    await lchown(join(sharedDir, top), user.uid, user.gid).catch(() => {
      // Missing: the link step names it and fails the deploy.
    });
  }
}

/**
 * Gives a freshly prepared release tree to the app's user: every entry (lchown: symlinks themselves)
 * and then the release directory, which becomes 0700. The root is closed (0700, still root's) first
 * and given away last, so no app process can reach into the tree while it is being walked and replace
 * a directory by a symlink under berth's feet. Nothing happens when the app does not switch users.
 */
export async function ownRelease(dir: string, user: AppUser): Promise<void> {
  if (!user.switches) return;
  await chmod(dir, PRIVATE);
  await ownTree(dir, user);
  await lchown(dir, user.uid, user.gid);
}

async function ownTree(dir: string, user: AppUser): Promise<void> {
  const entries = await opendir(dir);
  for await (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) await ownTree(path, user);
    await lchown(path, user.uid, user.gid);
  }
}

/** Makes a root-side directory with `mode`, and fixes the mode of one made earlier (older gateways made them 0755). */
async function ensureDir(dir: string, mode: number): Promise<void> {
  await mkdir(dir, { recursive: true, mode });
  const st = await stat(dir);
  if (st.isDirectory() && (st.mode & 0o777) !== mode && st.uid === process.getuid?.()) await chmod(dir, mode);
}
