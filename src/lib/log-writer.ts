import { closeSync, constants, lstatSync, mkdirSync, openSync, writeSync, type Stats } from 'node:fs';
import { lstat, mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { errorMessage } from './errors.ts';
import type { Logger } from 'pino';

/** Log files (each app process type's, and the gateway's own) rotate at this size; this many rotated files are kept. */
export const DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024;
export const DEFAULT_LOG_KEEP_FILES = 3;

/** Lines waiting for the disk beyond this many bytes are dropped (and counted) rather than kept. */
export const MAX_PENDING_BYTES = 8 * 1024 * 1024;

/** A new log file is readable by berth's user alone; a directory the writer makes, likewise. */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
/** Appends, creates, and never follows a symlink planted where the file should be. */
const OPEN_FLAGS = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW;

export interface LogWriterOptions {
  /** Absolute path, e.g. `<stateDir>/apps/<app>/logs/web.log`. */
  file: string;
  /** Rotate before a write would take the file past this size; 0 turns rotation off. */
  maxBytes?: number;
  /** Rotated files kept: `web.log.1` (newest) to `web.log.<keepFiles>`. */
  keepFiles?: number;
  /** Told once when the file cannot be written, and once when it can be again. */
  logger?: Logger;
}

/**
 * Appends lines to one log file without blocking the event loop: `write()` only queues, and one async
 * loop writes everything queued since its last write in a single call, so a chatty writer costs one
 * syscall per batch instead of one per line. The file is rotated by size: `web.log` -> `web.log.1` ->
 * ... -> `web.log.<keepFiles>`, the oldest dropped. Used for each app process type's log (shared by its
 * instances) and for the gateway's own log (lib/logger.ts).
 *
 * The file's directory must be berth's own: a symlink there, a directory of another user's, or one that
 * others may write is refused (named in the error logged), since a swapped path could make berth append
 * to a file it should never touch.
 */
export class LogWriter {
  readonly file: string;
  readonly maxBytes: number;
  readonly keepFiles: number;
  #log: Logger | null;
  #pending: string[] = [];
  #pendingBytes = 0;
  #dropped = 0;
  #fh: FileHandle | null = null;
  #size = 0;
  #draining: Promise<void> | null = null;
  #failing = false;

  constructor(opts: LogWriterOptions) {
    this.file = opts.file;
    this.maxBytes = opts.maxBytes ?? DEFAULT_LOG_MAX_BYTES;
    this.keepFiles = opts.keepFiles ?? DEFAULT_LOG_KEEP_FILES;
    this.#log = opts.logger ?? null;
  }

  /** Queues one or more whole lines; `text` must end with a newline. */
  write(text: string): void {
    const bytes = Buffer.byteLength(text);
    if (this.#pendingBytes + bytes > MAX_PENDING_BYTES) {
      this.#dropped++;
      return;
    }
    this.#pending.push(text);
    this.#pendingBytes += bytes;
    this.#draining ??= this.#drain();
  }

  /** Resolves once every line queued so far is written (or given up on after a write error). */
  async flush(): Promise<void> {
    while (this.#draining) await this.#draining;
  }

  /**
   * Writes the lines still queued synchronously, for a process about to exit (an async write would never
   * happen). A batch already on its way to the disk may land after them. Never throws.
   */
  flushSync(): void {
    if (this.#pending.length === 0) return;
    const chunk = this.#pending.join('');
    this.#pending = [];
    this.#pendingBytes = 0;
    try {
      const dir = dirname(this.file);
      mkdirSync(dir, { recursive: true, mode: DIR_MODE });
      const problem = ownDirProblem(dir, lstatSync(dir));
      if (problem) throw new Error(problem);
      const fd = openSync(this.file, OPEN_FLAGS, FILE_MODE);
      try {
        writeSync(fd, chunk);
        this.#size += Buffer.byteLength(chunk);
      } finally {
        closeSync(fd);
      }
    } catch {
      // The process is on its way out; the lines went to stdout as well.
    }
  }

  /** Flushes and closes the file. A later write opens it again. */
  async close(): Promise<void> {
    await this.flush();
    const fh = this.#fh;
    this.#fh = null;
    await fh?.close().catch(() => {});
  }

  async #drain(): Promise<void> {
    // Lines written in the same turn of the event loop (a burst of output) go out in one write.
    await new Promise<void>((resolve) => setImmediate(resolve));
    try {
      while (this.#pending.length > 0) {
        let chunk = this.#pending.length === 1 ? this.#pending[0] : this.#pending.join('');
        let bytes = this.#pendingBytes;
        this.#pending = [];
        this.#pendingBytes = 0;
        if (this.#dropped > 0) {
          const note = `${new Date().toISOString()} berth dropped ${this.#dropped} lines: the log file could not keep up\n`;
          this.#dropped = 0;
          chunk = note + chunk;
          bytes += Buffer.byteLength(note);
        }
        try {
          await this.#append(chunk, bytes);
          if (this.#failing) this.#log?.info({ file: this.file }, 'log file writable again');
          this.#failing = false;
        } catch (err) {
          // A log line is worth less than what the gateway serves: drop this batch, retry with the next.
          if (!this.#failing) this.#log?.error({ file: this.file, err: errorMessage(err) }, 'cannot write log file');
          this.#failing = true;
          const fh = this.#fh;
          this.#fh = null;
          await fh?.close().catch(() => {});
        }
      }
    } finally {
      this.#draining = null;
    }
  }

  async #append(chunk: string, bytes: number): Promise<void> {
    if (this.#fh === null) await this.#open();
    if (this.maxBytes > 0 && this.#size > 0 && this.#size + bytes > this.maxBytes) await this.#rotate();
    await this.#fh!.write(chunk);
    this.#size += bytes;
  }

  async #open(): Promise<void> {
    const dir = dirname(this.file);
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
    const problem = ownDirProblem(dir, await lstat(dir));
    if (problem) throw new Error(problem);
    const fh = await open(this.file, OPEN_FLAGS, FILE_MODE);
    this.#size = (await fh.stat()).size;
    this.#fh = fh;
  }

  async #rotate(): Promise<void> {
    await this.#fh?.close();
    this.#fh = null;
    if (this.keepFiles <= 0) {
      await rm(this.file, { force: true });
    } else {
      for (let k = this.keepFiles - 1; k >= 1; k--) await renameIfExists(`${this.file}.${k}`, `${this.file}.${k + 1}`);
      await renameIfExists(this.file, `${this.file}.1`);
    }
    await this.#open();
  }
}

/** Why `dir` (lstat'ed) is no place for a log file, naming the fix; null for a real directory of berth's user that nobody else may write. */
function ownDirProblem(dir: string, st: Stats): string | null {
  if (!st.isDirectory()) return `${dir} is not a directory (a symlink?); refusing to write a log file there`;
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) return `${dir} belongs to uid ${st.uid}, not to berth's user (uid ${uid}); refusing to write a log file there`;
  if ((st.mode & 0o022) !== 0) return `${dir} is writable by others (mode ${(st.mode & 0o777).toString(8)}); refusing to write a log file there (chmod go-w ${dir})`;
  return null;
}

async function renameIfExists(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
