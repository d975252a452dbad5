/**
 * Opening a file only when it really lies inside a directory (a release, a static root), judged on the
 * file that is actually opened, not on a path checked a moment before: a symlink anywhere on the way, or
 * one swapped in between a check and the open, cannot lead a read outside.
 *
 * On Linux the path is first opened with O_PATH, which resolves it (following links) without opening
 * the file itself (so a link to a device such as /dev/watchdog has no effect), then the kernel's own name
 * for that descriptor (/proc/self/fd/N) is checked against the directory, and only then is that same
 * inode reopened for reading through /proc/self/fd/N (no second path walk). Elsewhere, or without /proc,
 * the path is resolved with realpath, checked, opened with O_NOFOLLOW, and the opened file must be the
 * one that was checked (same device and inode).
 */
import { closeSync, constants, fstatSync, openSync, readlinkSync, realpathSync, statSync, type Stats } from 'node:fs';
import { open, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import { sep } from 'node:path';

/** Linux's O_PATH (not in fs.constants): a descriptor that names a file without opening it. */
const O_PATH = 0o10000000;
const O_CLOEXEC = 0o2000000;
const LINUX = process.platform === 'linux';
/** Set when /proc/self/fd cannot be read: the realpath fallback is used from then on. */
let procUsable = LINUX;

export type Contained =
  /** A regular file, open for reading: the caller closes `handle`. */
  | { kind: 'file'; handle: FileHandle; real: string; stats: Stats }
  /** A directory (not opened). */
  | { kind: 'directory'; real: string; stats: Stats }
  /** Missing, outside the directory, or neither a regular file nor a directory. */
  | { kind: 'none' };

const NONE: Contained = { kind: 'none' };

/** Whether `path` (a real path) is `root` or lies below it (`root` a real path too). */
export function isInsideReal(path: string, root: string): boolean {
  if (path === root) return true;
  if (root === sep) return path.startsWith(sep);
  return path.startsWith(root) && path.charCodeAt(root.length) === 0x2f /* / */;
}

/**
 * Opens `path` for reading when its real path lies inside one of `roots` (real paths) and it is a
 * regular file; reports a directory without opening it. Errors other than "not there" (EMFILE and the
 * like) are thrown, so a caller can tell a busy gateway from a missing file.
 */
export async function openContained(path: string, roots: readonly string[]): Promise<Contained> {
  if (procUsable) {
    let probe: FileHandle;
    try {
      probe = await open(path, O_PATH | O_CLOEXEC);
    } catch (err) {
      if (isMissing(err)) return NONE;
      throw err;
    }
    try {
      let real: string;
      try {
        real = await readlink(`/proc/self/fd/${probe.fd}`);
      } catch {
        procUsable = false;
        return await fallback(path, roots);
      }
      if (!roots.some((r) => isInsideReal(real, r))) return NONE;
      const stats = await probe.stat();
      if (stats.isDirectory()) return { kind: 'directory', real, stats };
      if (!stats.isFile()) return NONE;
      const handle = await open(`/proc/self/fd/${probe.fd}`, constants.O_RDONLY | O_CLOEXEC);
      return { kind: 'file', handle, real, stats };
    } catch (err) {
      if (isMissing(err)) return NONE;
      throw err;
    } finally {
      void probe.close().catch(() => {});
    }
  }
  return fallback(path, roots);
}

async function fallback(path: string, roots: readonly string[]): Promise<Contained> {
  try {
    const real = await realpath(path);
    if (!roots.some((r) => isInsideReal(real, r))) return NONE;
    const st = await stat(real);
    if (st.isDirectory()) return { kind: 'directory', real, stats: st };
    if (!st.isFile()) return NONE;
    const handle = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    const stats = await handle.stat();
    if (stats.dev !== st.dev || stats.ino !== st.ino || !stats.isFile()) {
      await handle.close();
      return NONE;
    }
    return { kind: 'file', handle, real, stats };
  } catch (err) {
    if (isMissing(err)) return NONE;
    throw err;
  }
}

/**
 * Reads a whole file that must lie inside `root`; null when it is missing, outside, not a regular file,
 * or larger than `maxBytes`. For small files berth reads from a release (Procfile, error pages): the
 * release's content is the app's, and a 1 GB "page" must not become 1 GB of the gateway's memory. No
 * more than the size seen at open is read, so a file growing meanwhile cannot pass the bound either.
 */
export async function readContained(path: string, root: string, maxBytes: number = Number.POSITIVE_INFINITY): Promise<Buffer | null> {
  let realRoot: string;
  try {
    realRoot = await realpath(root);
  } catch {
    return null;
  }
  const found = await openContained(path, [realRoot]).catch(() => NONE);
  if (found.kind !== 'file') return null;
  try {
    const size = found.stats.size;
    if (size > maxBytes) return null;
    const buf = Buffer.allocUnsafe(size);
    let n = 0;
    while (n < size) {
      const { bytesRead } = await found.handle.read(buf, n, size - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return n === size ? buf : buf.subarray(0, n);
  } finally {
    await found.handle.close();
  }
}

function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP' || code === 'ENAMETOOLONG' || code === 'EACCES';
}

/** A regular file opened by `openContainedSync`: the caller closes `fd`. */
export type ContainedSync = { kind: 'file'; fd: number; real: string; stats: Stats } | { kind: 'directory'; real: string; stats: Stats } | { kind: 'none' };

const NONE_SYNC: ContainedSync = { kind: 'none' };

/**
 * `openContained` without the thread pool, for the static hot path: the same checks made with a few
 * synchronous metadata calls (nginx opens its files the same way), which costs far less than as many
 * round trips to libuv's thread pool (measured: static throughput halved with the async form). File
 * contents are still read asynchronously by the caller. Throws what is not "missing" (EMFILE...).
 */
export function openContainedSync(path: string, roots: readonly string[]): ContainedSync {
  if (!procUsable) return fallbackSync(path, roots);
  let probe: number;
  try {
    probe = openSync(path, O_PATH | O_CLOEXEC);
  } catch (err) {
    if (isMissing(err)) return NONE_SYNC;
    throw err;
  }
  try {
    let real: string;
    try {
      real = readlinkSync(`/proc/self/fd/${probe}`);
    } catch {
      procUsable = false;
      return fallbackSync(path, roots);
    }
    if (!roots.some((r) => isInsideReal(real, r))) return NONE_SYNC;
    const stats = fstatSync(probe);
    if (stats.isDirectory()) return { kind: 'directory', real, stats };
    if (!stats.isFile()) return NONE_SYNC;
    const fd = openSync(`/proc/self/fd/${probe}`, constants.O_RDONLY | O_CLOEXEC);
    return { kind: 'file', fd, real, stats };
  } catch (err) {
    if (isMissing(err)) return NONE_SYNC;
    throw err;
  } finally {
    closeSync(probe);
  }
}

function fallbackSync(path: string, roots: readonly string[]): ContainedSync {
  try {
    const real = realpathSync(path);
    if (!roots.some((r) => isInsideReal(real, r))) return NONE_SYNC;
    const st = statSync(real);
    if (st.isDirectory()) return { kind: 'directory', real, stats: st };
    if (!st.isFile()) return NONE_SYNC;
    const fd = openSync(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    const stats = fstatSync(fd);
    if (stats.dev !== st.dev || stats.ino !== st.ino || !stats.isFile()) {
      closeSync(fd);
      return NONE_SYNC;
    }
    return { kind: 'file', fd, real, stats };
  } catch (err) {
    if (isMissing(err)) return NONE_SYNC;
    throw err;
  }
}
