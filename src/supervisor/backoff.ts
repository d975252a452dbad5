import {
  RESTART_BACKOFF_INITIAL_MS,
  RESTART_BACKOFF_MAX_MS,
  RESTART_BACKOFF_RESET_AFTER_MS,
  RESTART_FAILURE_LIMIT,
  RESTART_FAILURE_WINDOW_MS,
} from '../config/schema.ts';

/** The restart policy's numbers. The RESTART_* constants in config/schema.ts are the defaults. */
export interface RestartTiming {
  /** Delay before the first restart after a quick failure. */
  backoffInitialMs: number;
  /** The delay doubles per failure up to this. */
  backoffMaxMs: number;
  /** A process that stayed up this long starts the doubling again from `backoffInitialMs`. */
  resetAfterMs: number;
  /** This many failures within `failureWindowMs` and the instance is crashed for good. */
  failureLimit: number;
  failureWindowMs: number;
}

/** SPEC § Health: from 1s doubling to 60s, reset after 60s up, crashed after 10 failures in 10 minutes. */
export const DEFAULT_RESTART_TIMING: Readonly<RestartTiming> = Object.freeze({
  backoffInitialMs: RESTART_BACKOFF_INITIAL_MS,
  backoffMaxMs: RESTART_BACKOFF_MAX_MS,
  resetAfterMs: RESTART_BACKOFF_RESET_AFTER_MS,
  failureLimit: RESTART_FAILURE_LIMIT,
  failureWindowMs: RESTART_FAILURE_WINDOW_MS,
});

/**
 * The restart policy of one instance slot, as a pure function of the exits it is told about (no
 * timers, no clock of its own), so it can be tested without waiting.
 */
export class Backoff {
  readonly timing: Readonly<RestartTiming>;
  /** Failures since the process last stayed up `resetAfterMs`: the doubling exponent. */
  #streak = 0;
  /** Times of the failures still inside the window, oldest first. */
  #failures: number[] = [];

  constructor(timing: Partial<RestartTiming> = {}) {
    this.timing = { ...DEFAULT_RESTART_TIMING, ...timing };
  }

  /**
   * Records one unexpected exit at `now` (ms) of a process that had been up `upMs`. Returns the delay
   * before the restart, or null when the failure budget is spent and the instance must not restart.
   */
  failure(now: number, upMs: number): number | null {
    const t = this.timing;
    if (upMs >= t.resetAfterMs) this.#streak = 0;
    const since = now - t.failureWindowMs;
    while (this.#failures.length > 0 && this.#failures[0] <= since) this.#failures.shift();
    this.#failures.push(now);
    if (this.#failures.length >= t.failureLimit) return null;
    const delay = Math.min(t.backoffInitialMs * 2 ** this.#streak, t.backoffMaxMs);
    // Once at the cap the exponent has no further effect; stopping it keeps 2 ** n finite forever.
    if (delay < t.backoffMaxMs) this.#streak++;
    return delay;
  }

  /** Failures counted in the current window (as of the last `failure()`). */
  get recentFailures(): number {
    return this.#failures.length;
  }

  /** Forgets every failure. */
  reset(): void {
    this.#streak = 0;
    this.#failures = [];
  }
}
