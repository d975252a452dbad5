import { watchFile, unwatchFile, type Stats } from 'node:fs';
import type { Logger } from '../lib/logger.ts';

/**
 * How often the trigger file is stat'ed, and how long touches are gathered into one reload. Touches are
 * only seen at polls, so the window must outlast one poll interval: otherwise a burst of touches that
 * spans a poll boundary is seen twice, DEBOUNCE_MS apart, and gives two reloads. Worst case from touch
 * to reload: POLL_MS + DEBOUNCE_MS.
 */
const POLL_MS = 200;
const DEBOUNCE_MS = 450;

export interface ReloadTriggerOptions {
  file: string;
  logger: Logger;
  /** Starts the reload; returns false when it cannot start yet (another deploy runs), to be retried. */
  onTrigger: () => boolean;
}

/**
 * Watches `<state_dir>/apps/<app>/<reload_trigger>` (Passenger's restart.txt). A touch (or creation)
 * reloads the app within a second; repeated touches inside the debounce window make one reload. Stat
 * polling rather than inotify: it works for a file that does not exist yet, across renames, and on
 * network filesystems, at the cost of one stat per POLL_MS.
 */
export class ReloadTrigger {
  #opts: ReloadTriggerOptions;
  #timer: NodeJS.Timeout | null = null;
  #listener = (curr: Stats, prev: Stats) => this.#changed(curr, prev);
  #started = false;

  constructor(opts: ReloadTriggerOptions) {
    this.#opts = opts;
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    watchFile(this.#opts.file, { interval: POLL_MS, persistent: false }, this.#listener);
  }

  #changed(curr: Stats, prev: Stats): void {
    // A removed file (mtime 0) is not a touch.
    if (curr.mtimeMs === 0 || curr.mtimeMs === prev.mtimeMs) return;
    this.#schedule(DEBOUNCE_MS);
  }

  #schedule(ms: number): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#fire(), ms);
    this.#timer.unref();
  }

  #fire(): void {
    this.#timer = null;
    if (!this.#started) return;
    if (!this.#opts.onTrigger()) {
      this.#opts.logger.info({ file: this.#opts.file }, 'reload trigger waiting for the running deploy');
      this.#schedule(500);
    }
  }

  stop(): void {
    this.#started = false;
    unwatchFile(this.#opts.file, this.#listener);
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
