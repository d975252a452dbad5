import { createServer } from 'node:net';
import { createHash } from 'node:crypto';
import { chmod, chown, link, lstat, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { AppUser } from './app-user.ts';

/**
 * The longest unix socket path we hand out, in bytes. sun_path holds 108 bytes on Linux and 104 on
 * macOS, both including the terminating NUL; staying under the smaller keeps one rule everywhere.
 */
export const MAX_SOCKET_PATH_BYTES = 103;

/** How many recently handed-out ports are never handed out again (see `port()`). */
const RECENT_PORTS = 64;
const PORT_ATTEMPTS = 8;

/**
 * Addresses for instances: a fresh loopback port, or a fresh unix socket path, for every (re)start.
 * A fresh address per start means a restarted instance never collides with a leftover of its previous
 * process, and the proxy never confuses the two.
 */
export class Ports {
  /** Where sockets go when the path fits: `<stateDir>/sockets`. */
  readonly socketDir: string;
  /**
   * Where sockets go when `<stateDir>/sockets/<name>` would be too long for a unix socket path: a
   * private dir under the system temp dir, named by a hash of the state dir so gateways do not share it.
   */
  readonly fallbackDir: string;
  #n = 0;
  #recent: number[] = [];

  constructor(stateDir: string) {
    this.socketDir = join(stateDir, 'sockets');
    this.fallbackDir = join(tmpdir(), `berth-${shortHash(stateDir)}`);
  }

  /**
   * A free loopback TCP port: binds 127.0.0.1:0, reads the port and closes. Another process could take
   * the port before the app binds it; the kernel hands out ephemeral ports in a rotating order, so that
   * is rare, and an app that fails to bind just exits and is restarted on another port. Ports handed
   * out recently are skipped so two instances starting together never get the same one.
   */
  async port(): Promise<number> {
    for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
      const port = await bindAndClose();
      if (this.#recent.includes(port)) continue;
      this.#recent.push(port);
      if (this.#recent.length > RECENT_PORTS) this.#recent.shift();
      return port;
    }
    throw new BerthError(ErrorCodes.spawn, `no free loopback port after ${PORT_ATTEMPTS} attempts`);
  }

  /**
   * A socket path for one start of one instance, unique within this gateway's life: its directory is
   * created and any stale file at the path removed, so the app can bind it at once. An app that runs as
   * another user (berth is root) binds in a directory of its own, `<dir>/<app>/`, owned by that user and
   * closed to everyone else: no other app can take or replace its socket names, and it can take no
   * other app's.
   */
  async socket(app: string, proc: string, index: number, user: AppUser | null = null): Promise<string> {
    const sub = user?.switches ? app : null;
    const path = this.socketPath(app, proc, index, sub);
    const dir = path.slice(0, path.lastIndexOf('/'));
    const base = sub === null ? dir : dir.slice(0, dir.lastIndexOf('/'));
    if (base === this.fallbackDir) await this.#privateDir(base, sub !== null);
    else {
      await mkdir(base, { recursive: true });
      // The app user must pass through to its own directory; nothing here is listed or written by others.
      if (sub !== null) await chmod(base, 0o711);
    }
    if (sub !== null && user) {
      await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      const st = await lstat(dir);
      if (!st.isDirectory()) throw new BerthError(ErrorCodes.spawn, `socket dir ${dir} is not a directory`);
      await chown(dir, user.uid, user.gid);
      await chmod(dir, 0o700);
    }
    await rm(path, { force: true });
    return path;
  }

  /** The path `socket()` would use, without touching the file system (`sub`: the app's own directory). */
  socketPath(app: string, proc: string, index: number, sub: string | null = null): string {
    const name = `${app}.${proc}.${index}.${++this.#n}.sock`;
    const inDir = (dir: string) => (sub === null ? dir : join(dir, sub));
    const preferred = join(inDir(this.socketDir), name);
    if (Buffer.byteLength(preferred) <= MAX_SOCKET_PATH_BYTES) return preferred;
    const fallback = join(inDir(this.fallbackDir), name);
    if (Buffer.byteLength(fallback) <= MAX_SOCKET_PATH_BYTES) return fallback;
    // Long app or process names: the names are hashed, the counter keeps it unique.
    const hashed = `${shortHash(`${app}.${proc}.${index}`)}.${this.#n}.sock`;
    return join(sub === null ? this.fallbackDir : join(this.fallbackDir, shortHash(sub)), hashed);
  }

  /**
   * The socket an app bound at `path` (in its own directory, from `socket()` with a user), pinned where
   * only berth can write: a hard link in the root-owned directory above, used for probes and traffic.
   * The app owns its directory, so it could replace its socket by a symlink to a socket it may not use
   * itself (the control socket) and have berth, as root, connect there for it; a hard link made here
   * names the inode the app bound, and link(2) links a symlink itself, never its target. Returns null
   * while `path` is not a socket that `uid` owns (not bound yet, or something else).
   */
  async pin(path: string, uid: number): Promise<string | null> {
    const pinned = join(dirname(dirname(path)), basename(path));
    await rm(pinned, { force: true });
    try {
      await link(path, pinned);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    const st = await lstat(pinned);
    if (st.isSocket() && st.uid === uid) return pinned;
    await rm(pinned, { force: true });
    return null;
  }

  /** Removes a socket file after its process has gone. */
  async release(path: string): Promise<void> {
    await rm(path, { force: true });
  }

  /**
   * The temp dir is shared with other users: refuse one that someone else made (or a symlink). It is
   * 0700, or 0711 when app users must pass through it to their own directories.
   */
  async #privateDir(dir: string, traversable: boolean): Promise<void> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const st = await lstat(dir);
    const uid = process.getuid?.();
    if (!st.isDirectory() || (uid !== undefined && st.uid !== uid)) {
      throw new BerthError(ErrorCodes.spawn, `socket dir ${dir} is not a directory owned by this user`);
    }
    if (traversable && (st.mode & 0o777) !== 0o711) await chmod(dir, 0o711);
  }
}

function bindAndClose(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new BerthError(ErrorCodes.spawn, 'could not read a bound port'))));
    });
  });
}

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}
