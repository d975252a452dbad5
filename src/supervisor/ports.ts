import { createServer } from 'node:net';
import { createHash } from 'node:crypto';
import { lstat, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../lib/errors.ts';

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
    throw new BerthError('BERTH_E_SPAWN', `no free loopback port after ${PORT_ATTEMPTS} attempts`);
  }

  /**
   * A socket path for one start of one instance, unique within this gateway's life: its directory is
   * created and any stale file at the path removed, so the app can bind it at once.
   */
  async socket(app: string, proc: string, index: number): Promise<string> {
    const path = this.socketPath(app, proc, index);
    const dir = path.slice(0, path.lastIndexOf('/'));
    if (dir === this.fallbackDir) await this.#privateDir(dir);
    else await mkdir(dir, { recursive: true });
    await rm(path, { force: true });
    return path;
  }

  /** The path `socket()` would use, without touching the file system. */
  socketPath(app: string, proc: string, index: number): string {
    const name = `${app}.${proc}.${index}.${++this.#n}.sock`;
    const preferred = join(this.socketDir, name);
    if (Buffer.byteLength(preferred) <= MAX_SOCKET_PATH_BYTES) return preferred;
    const fallback = join(this.fallbackDir, name);
    if (Buffer.byteLength(fallback) <= MAX_SOCKET_PATH_BYTES) return fallback;
    // Long app or process names: the name is hashed, the counter keeps it unique.
    return join(this.fallbackDir, `${shortHash(`${app}.${proc}.${index}`)}.${this.#n}.sock`);
  }

  /** Removes a socket file after its process has gone. */
  async release(path: string): Promise<void> {
    await rm(path, { force: true });
  }

  /** The temp dir is shared with other users: refuse one that someone else made (or a symlink). */
  async #privateDir(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const st = await lstat(dir);
    const uid = process.getuid?.();
    if (!st.isDirectory() || (uid !== undefined && st.uid !== uid)) {
      throw new BerthError('BERTH_E_SPAWN', `socket dir ${dir} is not a directory owned by this user`);
    }
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
      server.close(() => (port > 0 ? resolve(port) : reject(new BerthError('BERTH_E_SPAWN', 'could not read a bound port'))));
    });
  });
}

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}
