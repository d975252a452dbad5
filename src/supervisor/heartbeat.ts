import { stat } from 'node:fs/promises';

/**
 * Watches the heartbeat file of one background worker (SPEC: a worker that does not touch
 * `BERTH_HEARTBEAT_FILE` within `heartbeat_timeout` is restarted). It only reads the file's mtime;
 * what to do about a silent worker is the instance's business, through `onMissed`.
 */
export class Heartbeat {
  readonly file: string;
  readonly timeoutMs: number;
  #onMissed: (silentMs: number) => void;
  #since = 0;
  #timer: NodeJS.Timeout | null = null;
  #active = false;

  constructor(file: string, timeoutMs: number, onMissed: (silentMs: number) => void) {
    this.file = file;
    this.timeoutMs = timeoutMs;
    this.#onMissed = onMissed;
  }

  /** Starts watching; the process must touch the file within the timeout counted from `sinceMs`. */
  start(sinceMs: number): void {
    this.stop();
    this.#since = sinceMs;
    this.#active = true;
    this.#schedule();
  }

  stop(): void {
    this.#active = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #schedule(): void {
    // A quarter of the timeout catches a silent worker at most 25% late, without stat() spinning.
    const every = Math.min(Math.max(Math.floor(this.timeoutMs / 4), 50), 5_000);
    this.#timer = setTimeout(() => void this.#check(), every);
    this.#timer.unref();
  }

  async #check(): Promise<void> {
    this.#timer = null;
    let touched = 0;
    try {
      touched = (await stat(this.file)).mtimeMs;
    } catch {
      // Missing: the worker deleted it, or never touched it; only the start time counts then.
    }
    if (!this.#active) return;
    const silentMs = Date.now() - Math.max(touched, this.#since);
    if (silentMs > this.timeoutMs) {
      this.#active = false;
      this.#onMissed(silentMs);
      return;
    }
    this.#schedule();
  }
}
