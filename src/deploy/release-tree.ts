/**
 * A release tree's limits and checks: the budget that counts entries and bytes against
 * `max_release_size` and `max_release_files` while a source is copied or listed, the walk that refuses a
 * tree with a link resolving outside it, and the content hash that names a release's files.
 */

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink, realpath, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, sep } from 'node:path';
import { DEFAULT_MAX_RELEASE_BYTES, DEFAULT_MAX_RELEASE_FILES } from '../config/schema.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';

/** How much a release may hold (`max_release_size`, `max_release_files`). */
export interface ReleaseLimits {
  maxBytes: number;
  /** Files, directories and links, each counting one. */
  maxFiles: number;
}

export const DEFAULT_RELEASE_LIMITS: ReleaseLimits = { maxBytes: DEFAULT_MAX_RELEASE_BYTES, maxFiles: DEFAULT_MAX_RELEASE_FILES };

/** More hops than this while resolving a symlink is a loop. */
const MAX_LINK_HOPS = 40;

export function releaseError(message: string, cause?: unknown): BerthError {
  return new BerthError(ErrorCodes.release, message, cause === undefined ? undefined : { cause });
}

/** Counts what goes into a release and throws, naming the limit, as soon as one is passed. */
export class ReleaseBudget {
  bytes = 0;
  files = 0;
  readonly #limits: ReleaseLimits;
  readonly #what: string;

  constructor(limits: ReleaseLimits, what: string) {
    this.#limits = limits;
    this.#what = what;
  }

  /** One entry (file, directory or link) of `bytes` bytes. */
  add(bytes: number): void {
    this.files++;
    this.bytes += bytes;
    if (this.files > this.#limits.maxFiles) {
      throw releaseError(`${this.#what} holds more than ${this.#limits.maxFiles} files and directories: over the limit max_release_files (${this.#limits.maxFiles})`);
    }
    if (this.bytes > this.#limits.maxBytes) {
      throw releaseError(`${this.#what} holds more than ${formatBytes(this.#limits.maxBytes)}: over the limit max_release_size (${this.#limits.maxBytes} bytes)`);
    }
  }
}

export function formatBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1 && Number.isInteger(v / 1024)) {
    v /= 1024;
    u++;
  }
  return `${v} ${units[u]}`;
}

/** Bytes read and written at a time when a file is copied. */
const COPY_CHUNK = 1024 * 1024;

/** Copies the first `size` bytes of `from` (fewer if it shrank meanwhile) to `to`. */
export async function copyBytes(from: FileHandle, to: FileHandle, size: number): Promise<void> {
  if (size === 0) return;
  const buf = Buffer.allocUnsafe(Math.min(size, COPY_CHUNK));
  let pos = 0;
  while (pos < size) {
    const { bytesRead } = await from.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) return;
    let written = 0;
    while (written < bytesRead) written += (await to.write(buf, written, bytesRead - written)).bytesWritten;
    pos += bytesRead;
  }
}

/**
 * Walks a prepared tree and throws BERTH_E_RELEASE when a symlink resolves (physically, following
 * other links, even when dangling) outside it, or an entry is not a file, directory or symlink. With
 * `limits`, also counts entries and bytes as they are on disk and throws naming the limit passed.
 */
export async function verifyTree(dir: string, what: string, limits?: ReleaseLimits): Promise<void> {
  const root = await realpath(dir);
  const budget = limits ? new ReleaseBudget(limits, what) : null;
  const walk = async (abs: string): Promise<void> => {
    for (const entry of await readdir(abs, { withFileTypes: true })) {
      const p = join(abs, entry.name);
      if (entry.isDirectory()) {
        budget?.add(0);
        await walk(p);
      } else if (entry.isSymbolicLink()) {
        budget?.add(0);
        if ((await resolveInside(root, p)) === null) {
          throw releaseError(`${what}: symlink "${relative(root, p)}" -> "${await readlink(p)}" escapes the release dir`);
        }
      } else if (entry.isFile()) {
        budget?.add(budget ? (await lstat(p)).size : 0);
      } else throw releaseError(`${what}: "${relative(root, p)}" is not a file, directory or symlink`);
    }
  };
  await walk(root);
}

/**
 * Resolves `path` (inside the real directory `root`) component by component the way the kernel would,
 * following symlinks, and returns the result, or null when it leaves `root`, goes through an absolute
 * link, or loops. Components that do not exist are taken literally, so a dangling link is judged by
 * where it would point.
 */
async function resolveInside(root: string, path: string): Promise<string | null> {
  const stack: string[] = [];
  const pending = relative(root, path).split(sep).reverse();
  let hops = 0;
  while (pending.length > 0) {
    const part = pending.pop()!;
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (stack.length === 0) return null;
      stack.pop();
      continue;
    }
    const abs = join(root, ...stack, part);
    let isLink = false;
    try {
      isLink = (await lstat(abs)).isSymbolicLink();
    } catch {
      // Missing: nothing to follow.
    }
    if (!isLink) {
      stack.push(part);
      continue;
    }
    if (++hops > MAX_LINK_HOPS) return null;
    const target = await readlink(abs);
    if (isAbsolute(target)) return null;
    for (const t of target.split('/').reverse()) pending.push(t);
  }
  return join(root, ...stack);
}

/**
 * A sha256 over the tree's content: each entry's type, relative path, and content hash (files, with the
 * executable bit) or target (symlinks), in sorted order. A top-level REVISION file is left out, since it
 * is what this hash gets written to.
 */
export async function treeHash(dir: string): Promise<string> {
  const root = await realpath(dir);
  const hash = createHash('sha256');
  const walk = async (abs: string, rel: string): Promise<void> => {
    const names = (await readdir(abs)).sort();
    for (const name of names) {
      const r = rel === '' ? name : `${rel}/${name}`;
      if (r === 'REVISION') continue;
      const p = join(abs, name);
      const st = await lstat(p);
      if (st.isDirectory()) {
        hash.update(`d\0${r}\0`);
        await walk(p, r);
      } else if (st.isSymbolicLink()) {
        hash.update(`l\0${r}\0${await readlink(p)}\0`);
      } else if (st.isFile()) {
        hash.update(`f${st.mode & 0o111 ? 'x' : ''}\0${r}\0${await fileHash(p)}\0`);
      }
    }
  };
  await walk(root, '');
  return hash.digest('hex');
}

async function fileHash(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function isInside(dir: string, path: string): boolean {
  const r = relative(dir, path);
  return r === '' || (r !== '..' && !r.startsWith(`..${sep}`) && !isAbsolute(r));
}
