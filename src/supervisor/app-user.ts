/**
 * Which OS user every process of an app runs as (Passenger's user switching): instances, scheduled
 * tasks, one-off runs and build/release commands.
 *
 * - berth runs as root: the app's `user` (and `group`), else the owner of its `source` when that path
 *   is on this machine (a directory or a tarball), else `default_user`. A source that root owns falls
 *   back to `default_user` too, so an app runs as root only when `user: root` is written.
 * - berth is not root: it cannot switch, so every app runs as berth's own user; `user` and `group` are
 *   not used (the gateway warns at start, and `berth check` refuses permissions it cannot enforce).
 *
 * Names are looked up in /etc/passwd and /etc/group first, then with `getent` (NSS: LDAP, sssd...).
 * Lookups are synchronous: they run when an instance or a task is spawned, so a user created or removed
 * after start is seen at the next spawn; getent answers are cached briefly.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import type { AppConfig } from '../config/schema.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';

/**
 * An unknown user or group is a config problem (422 on the control API): it fails the deploy, the
 * one-off run or the config check, with a message naming the key and the name.
 */
export const USER_ERROR = ErrorCodes.config;

/** One resolved identity. */
export interface AppUser {
  /** User name, or the numeric id as text when the user database has no entry for it. */
  name: string;
  uid: number;
  gid: number;
  /** Group name (or numeric text) of `gid`. */
  group: string;
  /** The user's home directory from the user database; `/` when it has none. */
  home: string;
  /** True when processes are spawned with uid/gid: berth is root and the app's user is not. */
  switches: boolean;
  /** How the user was chosen, for `berth check`, logs and messages. */
  from: 'user' | 'source-owner' | 'default-user' | 'gateway';
}

/** Spawn options that make a child run as `user`; empty when nothing switches. */
export function spawnIdentity(user: AppUser): { uid?: number; gid?: number } {
  // libuv clears supplementary groups (setgroups(0)) before setgid/setuid: the child keeps none of
  // root's groups, only `gid` (the app's `group`, else the user's primary group).
  return user.switches ? { uid: user.uid, gid: user.gid } : {};
}

/** Whether this process can run apps as other users. */
export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

interface GroupEntry {
  name: string;
  gid: number;
}

const NUMERIC_RE = /^\d+$/;
/** How long a getent answer is reused: NSS lookups can be slow, and a spawn must not wait on one each time. */
const GETENT_CACHE_MS = 60_000;
const getentCache = new Map<string, { at: number; line: string | null }>();

/**
 * The user every process of `app` runs as. Throws BerthError USER_ERROR naming the app and the user or
 * group when one does not exist.
 */
export function resolveAppUser(app: AppConfig, defaultUser: string, root: boolean = isRoot()): AppUser {
  if (!root) return gatewayUser();
  const key = `apps.${app.name}`;
  let entry: PasswdEntry;
  let from: AppUser['from'];
  if (app.user !== null) {
    entry = needUser(app.user, `${key}.user`, app.group !== null);
    from = 'user';
  } else {
    const owner = sourceOwner(app.source);
    if (owner !== null && owner.uid !== 0) {
      entry = lookupUser(String(owner.uid)) ?? { name: String(owner.uid), uid: owner.uid, gid: owner.gid, home: '/' };
      from = 'source-owner';
    } else {
      entry = needUser(defaultUser, `default_user (for ${key}, whose source ${owner === null ? 'is not a path on this machine' : 'belongs to root'})`, app.group !== null);
      from = 'default-user';
      if (entry.uid === 0) {
        throw new BerthError(USER_ERROR, `default_user ${defaultUser} is root: an app runs as root only when it says so (${key}.user: root)`);
      }
    }
  }
  let gid = entry.gid;
  if (app.group !== null) {
    const g = lookupGroup(app.group);
    // A numeric gid the database does not know is still a group, as a numeric uid is a user.
    if (!g && !NUMERIC_RE.test(app.group)) throw new BerthError(USER_ERROR, `${key}.group: no group named ${JSON.stringify(app.group)} on this system`);
    gid = g ? g.gid : Number(app.group);
  } else if (gid < 0) {
    throw new BerthError(USER_ERROR, `${key}.user: ${entry.name} is not in the user database, so it has no primary group; set ${key}.group`);
  }
  const group = lookupGroup(String(gid))?.name ?? String(gid);
  return { name: entry.name, uid: entry.uid, gid, group, home: entry.home, switches: entry.uid !== 0, from };
}

/** berth's own user, which apps share when berth is not root. */
export function gatewayUser(): AppUser {
  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;
  let name = String(uid);
  let home = process.env.HOME ?? '/';
  try {
    const info = userInfo();
    name = info.username;
    home = info.homedir || home;
  } catch {
    // No passwd entry for our uid (a container's arbitrary uid): the numbers will do.
  }
  return { name, uid, gid, group: lookupGroup(String(gid))?.name ?? String(gid), home, switches: false, from: 'gateway' };
}

/** The owner of a source path that exists on this machine; null for a git URL or a missing path. */
function sourceOwner(source: string | null): { uid: number; gid: number } | null {
  if (source === null) return null;
  try {
    const st = statSync(source.trim());
    return st.isDirectory() || st.isFile() ? { uid: st.uid, gid: st.gid } : null;
  } catch {
    return null;
  }
}

/**
 * A user by name or numeric id. A numeric id the database does not know is still a user (containers
 * run arbitrary uids), with no home; its primary group is unknown (-1) unless `groupGiven`.
 */
function needUser(nameOrId: string, what: string, groupGiven: boolean): PasswdEntry {
  const found = lookupUser(nameOrId);
  if (found) return found;
  if (NUMERIC_RE.test(nameOrId)) {
    if (!groupGiven) throw new BerthError(USER_ERROR, `${what}: uid ${nameOrId} is not in the user database; give a group too`);
    return { name: nameOrId, uid: Number(nameOrId), gid: -1, home: '/' };
  }
  throw new BerthError(USER_ERROR, `${what}: no user named ${JSON.stringify(nameOrId)} on this system`);
}

/** A user from /etc/passwd, else from `getent passwd`; null when unknown. */
export function lookupUser(nameOrId: string): PasswdEntry | null {
  return findEntry('/etc/passwd', 'passwd', nameOrId, 7, (f) => {
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(gid)) return null;
    return { name: f[0], uid, gid, home: f[5] || '/' };
  });
}

/** A group from /etc/group, else from `getent group`; null when unknown. */
export function lookupGroup(nameOrId: string): GroupEntry | null {
  return findEntry('/etc/group', 'group', nameOrId, 3, (f) => {
    const gid = Number(f[2]);
    return Number.isSafeInteger(gid) ? { name: f[0], gid } : null;
  });
}

/**
 * The entry `key` names in a passwd or group database, built from its fields by `entry`: the line whose
 * name (field 1) is `key`, or for a numeric key whose id (field 3 in both files) is that number. Lines
 * with fewer than `minFields` fields are skipped.
 */
function findEntry<T>(file: string, db: 'passwd' | 'group', key: string, minFields: number, entry: (fields: string[]) => T | null): T | null {
  const numeric = NUMERIC_RE.test(key);
  const match = (line: string): T | null => {
    const f = line.split(':');
    if (f.length < minFields) return null;
    if (numeric ? f[2] !== String(Number(key)) : f[0] !== key) return null;
    return entry(f);
  };
  try {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      const found = match(line);
      if (found) return found;
    }
  } catch {
    // No such file (a minimal container): getent may still know.
  }
  const line = getent(db, key);
  return line === null ? null : match(line);
}

function getent(db: 'passwd' | 'group', key: string): string | null {
  const cacheKey = `${db}\0${key}`;
  const cached = getentCache.get(cacheKey);
  if (cached && Date.now() - cached.at < GETENT_CACHE_MS) return cached.line;
  let line: string | null = null;
  try {
    // `--` so that no key is ever read as an option; names are validated by the config loader anyway.
    line = execFileSync('getent', [db, '--', key], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5_000 }).split('\n')[0] || null;
  } catch {
    line = null; // exit 2: not found; ENOENT: no getent
  }
  getentCache.set(cacheKey, { at: Date.now(), line });
  return line;
}
