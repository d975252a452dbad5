import { watchFile, unwatchFile, type Stats } from 'node:fs';
import type { Logger } from '../lib/logger.ts';

/**
 * How often the trigger file is stat'ed, how long touches are gathered into one reload, and how soon a
 * refused trigger (a deploy already running) asks again. Touches are only seen at polls, so the window must
 * outlast one poll interval: otherwise a burst of touches that spans a poll boundary is seen twice,
 * debounceMs apart, and gives two reloads. Worst case from touch to reload: pollMs + debounceMs.
 */
export interface ReloadTriggerTiming {
  pollMs: number;
  debounceMs: number;
  retryMs: number;
}

export const RELOAD_TRIGGER_TIMING: Readonly<ReloadTriggerTiming> = Object.freeze({ pollMs: 200, debounceMs: 450, retryMs: 500 });

export interface ReloadTriggerOptions {
  file: string;
  logger: Logger;
  /** Starts the reload; returns false when it cannot start yet (another deploy runs), to be retried. */
  onTrigger: () => boolean;
  /** Test hook: shorter timings, so tests need not wait out the defaults. Keep debounceMs > pollMs. */
  timing?: Partial<ReloadTriggerTiming>;
}

/**
 * Watches `<state_dir>/apps/<app>/<reload_trigger>` (Passenger's restart.txt). A touch (or creation)
 * reloads the app within a second; repeated touches inside the debounce window make one reload. Stat
 * polling rather than inotify: it works for a file that does not exist yet, across renames, and on
 * network filesystems, at the cost of one stat per poll.
 */
export class ReloadTrigger {
  #opts: ReloadTriggerOptions;
  #timing: ReloadTriggerTiming;
  #timer: NodeJS.Timeout | null = null;
  #listener = (curr: Stats, prev: Stats) => this.#changed(curr, prev);
  #started = false;

  constructor(opts: ReloadTriggerOptions) {
    this.#opts = opts;
    this.#timing = { ...RELOAD_TRIGGER_TIMING, ...opts.timing };
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    watchFile(this.#opts.file, { interval: this.#timing.pollMs, persistent: false }, this.#listener);
  }

  #changed(curr: Stats, prev: Stats): void {
    // A removed file (mtime 0) is not a touch.
    if (curr.mtimeMs === 0 || curr.mtimeMs === prev.mtimeMs) return;
    this.#schedule(this.#timing.debounceMs);
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
      this.#schedule(this.#timing.retryMs);
    }
  }

  stop(): void {
    this.#started = false;
    unwatchFile(this.#opts.file, this.#listener);
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
