import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DEFAULT_LOG_KEEP_FILES, DEFAULT_LOG_MAX_BYTES } from '../config/schema.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';

/** Lines waiting for the disk beyond this many bytes are dropped (and counted) rather than kept. */
export const MAX_PENDING_BYTES = 8 * 1024 * 1024;

export interface LogWriterOptions {
  /** Absolute path, e.g. `<stateDir>/apps/<app>/logs/web.log`. */
  file: string;
  /** Rotate before a write would take the file past this size; 0 turns rotation off. */
  maxBytes?: number;
  /** Rotated files kept: `web.log.1` (newest) to `web.log.<keepFiles>`. */
  keepFiles?: number;
  logger?: Logger;
}

/**
 * Appends lines to one log file (one per process type, shared by its instances) without blocking the
 * event loop: `write()` only queues, and one async loop writes everything queued since its last write
 * in a single call, so a chatty app costs one syscall per batch instead of one per line. The file is
 * rotated by size: `web.log` -> `web.log.1` -> ... -> `web.log.<keepFiles>`, the oldest dropped.
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

  /** Queues one line; `line` must end with a newline. */
  write(line: string): void {
    const bytes = Buffer.byteLength(line);
    if (this.#pendingBytes + bytes > MAX_PENDING_BYTES) {
      this.#dropped++;
      return;
    }
    this.#pending.push(line);
    this.#pendingBytes += bytes;
    this.#draining ??= this.#drain();
  }

  /** Resolves once every line queued so far is written (or given up on after a write error). */
  async flush(): Promise<void> {
    while (this.#draining) await this.#draining;
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
          // Output of the app is worth less than the gateway: drop this batch, retry with the next.
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
    await mkdir(dirname(this.file), { recursive: true });
    const fh = await open(this.file, 'a');
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

async function renameIfExists(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
