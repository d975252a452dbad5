/**
 * `health_file`: a file touched every HEALTH_FILE_INTERVAL_MS while the gateway runs, so a container
 * platform that can only probe files can tell a live gateway from a hung or dead one.
 */
import { utimes, writeFile } from 'node:fs/promises';
import { HEALTH_FILE_INTERVAL_MS } from '../config/schema.ts';
import { errorMessage } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';

export class HealthFile {
  #log: Logger;
  #timer: NodeJS.Timeout | null = null;

  constructor(logger: Logger) {
    this.#log = logger;
  }

  /** Touches `file` now and on every interval, replacing any file touched before; null: touches none. */
  start(file: string | null): void {
    this.stop();
    if (!file) return;
    const touch = async () => {
      try {
        const now = new Date();
        await utimes(file, now, now).catch(async () => writeFile(file, ''));
      } catch (err) {
        this.#log.warn({ file, err: errorMessage(err) }, 'cannot touch health file');
      }
    };
    void touch();
    this.#timer = setInterval(touch, HEALTH_FILE_INTERVAL_MS);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}
