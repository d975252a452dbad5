/**
 * The state lock: one gateway per state dir. A second `berth start` on the same config would otherwise
 * take the live gateway's app processes for orphans of a crashed one and kill them, before failing to
 * bind its listeners. The lock is taken before anything in the state dir is touched.
 *
 * Node has no flock(2), but SQLite takes POSIX record locks (fcntl) on its files: `<state_dir>/gateway.lock`
 * is opened as an (empty) SQLite database in exclusive locking mode and an exclusive transaction is
 * held for the gateway's lifetime. The kernel drops such a lock when the process ends, however it ends
 * (kill -9 included), and app processes never inherit it, so a lock is never stale and a reused pid
 * can never hold it. `gateway.pid` beside it only names the holder in the refusal; it is checked
 * against the start time in /proc/<pid>/stat so that a reused pid is not named.
 *
 * The control socket is checked too: a gateway from before this lock existed (during an upgrade) holds
 * no lock, but answers on its socket.
 */
import { DatabaseSync } from 'node:sqlite';
import { chmod, lstat, mkdir, open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { acceptsConnections } from '../lib/unix-socket.ts';
import { join } from 'node:path';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';

export const LOCK_FILE = 'gateway.lock';
export const PID_FILE = 'gateway.pid';

/** SQLITE_BUSY: another process holds the lock. */
const SQLITE_BUSY = 5;
/** How long the new gateway of an upgrade waits for the old one to let go of the lock. */
const SUCCESSOR_WAIT_MS = 5_000;

/** What `gateway.pid` holds. */
interface Holder {
  pid: number;
  /** Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, names one process for good. */
  startTime: string | null;
  at: string;
  /** Its control socket, which `berth stop --socket` needs when the refused config names another. */
  controlSocket: string;
}

/** The start time of a live process, or null when it is gone (or /proc is not there). */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? null;
  } catch {
    return null;
  }
}

export class StateLock {
  #db: DatabaseSync | null;
  #pidFile: string;

  constructor(db: DatabaseSync, pidFile: string) {
    this.#db = db;
    this.#pidFile = pidFile;
  }

  /**
   * Takes the lock on `stateDir` (made 0700 when missing), or throws BERTH_E_CONFLICT naming the live
   * gateway. `controlSocket` is refused too when another gateway answers on it. `successor`: the new
   * gateway of an upgrade, to which the old one hands its control socket and then this lock: it waits
   * up to SUCCESSOR_WAIT_MS for the old one to let go, and the socket answering is no refusal.
   */
  static async acquire(stateDir: string, controlSocket: string, opts: { successor?: boolean } = {}): Promise<StateLock> {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    // Same rule as state-access.ts: in a world-writable dir the lock file may be someone else's symlink.
    if (((await stat(stateDir)).mode & 0o002) !== 0) {
      throw new BerthError(ErrorCodes.listen, `the state directory ${stateDir} is world-writable; refusing to use it (chmod o-w ${stateDir}, or set state_dir elsewhere)`);
    }
    const path = join(stateDir, LOCK_FILE);
    const existing = await lstat(path).catch(() => null);
    if (existing && !existing.isFile()) throw new BerthError(ErrorCodes.listen, `the state lock ${path} exists and is not a regular file; refusing to use it`);
    let db: DatabaseSync;
    try {
      // Made 0600 before SQLite opens it (it would use 0644): whoever can read it can lock it too. An
      // existing one is never opened here: closing any descriptor of a file drops every POSIX lock this
      // process holds on it, which would free the lock of a gateway running in this same process.
      if (!existing) await (await open(path, 'wx', 0o600).catch(ignoreExisting))?.close();
      else if ((existing.mode & 0o777) !== 0o600) await chmod(path, 0o600);
      db = new DatabaseSync(path, { timeout: 0 });
    } catch (err) {
      throw new BerthError(ErrorCodes.store, `cannot open the state lock ${path}: ${errorMessage(err)}`, { cause: err });
    }
    const waitUntil = Date.now() + (opts.successor ? SUCCESSOR_WAIT_MS : 0);
    for (;;) {
      try {
        // Exclusive locking mode keeps the lock after the transaction's first statement; the transaction
        // itself is never ended, so the lock lasts until close() or the end of the process.
        db.exec('PRAGMA locking_mode = EXCLUSIVE');
        db.exec('BEGIN EXCLUSIVE');
        break;
      } catch (err) {
        const busy = (err as { errcode?: number }).errcode === SQLITE_BUSY;
        if (busy && Date.now() < waitUntil) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        db.close();
        if (busy) throw await refusal(stateDir, controlSocket);
        throw new BerthError(ErrorCodes.store, `cannot take the state lock ${path}: ${errorMessage(err)}`, { cause: err });
      }
    }
    const lock = new StateLock(db, join(stateDir, PID_FILE));
    try {
      if (!opts.successor && (await gatewaySocket(controlSocket))) {
        throw new BerthError(ErrorCodes.conflict, `another gateway is already running on control socket ${controlSocket}; stop it first (berth stop)`);
      }
      const holder: Holder = { pid: process.pid, startTime: processStartTime(process.pid), at: new Date().toISOString(), controlSocket };
      const tmp = `${lock.#pidFile}.${process.pid}.tmp`;
      await writeFile(tmp, JSON.stringify(holder) + '\n', { mode: 0o600 });
      await rename(tmp, lock.#pidFile);
    } catch (err) {
      await lock.release();
      throw err;
    }
    return lock;
  }

  /** Lets the next gateway start. Idempotent. */
  async release(): Promise<void> {
    const db = this.#db;
    if (!db) return;
    this.#db = null;
    // The pid file goes while the lock is still held, so that it can only be removed by its own writer.
    const mine = await readHolder(this.#pidFile);
    if (mine?.pid === process.pid) await unlink(this.#pidFile).catch(() => {});
    try {
      db.close();
    } catch {
      // Closing drops the lock whatever it says; the process ending would too.
    }
  }
}

/** The refusal, naming the gateway that holds the lock when its pid file still describes it. */
async function refusal(stateDir: string, controlSocket: string): Promise<BerthError> {
  const holder = await readHolder(join(stateDir, PID_FILE));
  const live = holder && (holder.startTime === null || processStartTime(holder.pid) === holder.startTime);
  const who = live ? `another gateway (pid ${holder.pid}, started ${holder.at})` : 'another gateway';
  const socket = (live && holder.controlSocket) || controlSocket;
  return new BerthError(ErrorCodes.conflict, `${who} is already running on control socket ${socket} with state dir ${stateDir}; stop it first (berth stop), or use another state_dir`, {
    details: { pid: live ? holder.pid : null, stateDir, controlSocket: socket },
  });
}

function ignoreExisting(err: NodeJS.ErrnoException): null {
  if (err.code === 'EEXIST') return null;
  throw err;
}

async function readHolder(file: string): Promise<Holder | null> {
  try {
    const h = JSON.parse(await readFile(file, 'utf8')) as Holder;
    return Number.isInteger(h.pid) && h.pid > 0 ? h : null;
  } catch {
    return null;
  }
}

/**
 * Whether a gateway of this user answers on the control socket `path`. A symlink, another file or
 * another user's socket is no gateway of ours: the control API refuses to start on it, naming why.
 */
async function gatewaySocket(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => null);
  if (!st?.isSocket() || st.uid !== process.getuid?.()) return false;
  return acceptsConnections(path);
}
