import { channel } from 'node:diagnostics_channel';
import type { HealthConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { probe } from './probe.ts';
import type { UpstreamAddress } from './types.ts';

/** What the ongoing probe needs to know about the instance it watches. */
export interface HealthTarget {
  readonly address: UpstreamAddress | null;
  /** In flight, and none of its requests has been running longer than busy_grace. */
  readonly busy: boolean;
  /** For the probe metrics' labels; an Instance has both. */
  readonly app?: string;
  readonly process?: string;
}

/** ok; failed (counted); busy: failed while the instance was busy, so not counted. */
export type ProbeResult = 'ok' | 'failed' | 'busy';

/** One `ProbeEvent` per ongoing health probe that lands; published only while someone subscribes. */
export const probeChannel = channel('berth:supervisor:probe');

export interface ProbeEvent {
  readonly target: HealthTarget;
  readonly result: ProbeResult;
}

/**
 * Ongoing health of one ready http instance: a probe every `intervalMs`, each bounded by `timeoutMs`,
 * sent straight to the instance (never through the queue). A failed probe counts only when the
 * instance was not busy, at the probe's start nor at its end: a busy instance is slow, not dead, and
 * its probe may simply have waited behind its requests. `unhealthyAfter` counted failures in a row call
 * `onUnhealthy` once and stop the probing; a passing probe resets the count.
 */
export class Health {
  readonly config: HealthConfig;
  #target: HealthTarget;
  #log: Logger;
  #onUnhealthy: (failures: number) => void;
  #failures = 0;
  #timer: NodeJS.Timeout | null = null;
  #active = false;
  /** Bumped by stop(), so a probe in flight when it stopped is ignored when it lands. */
  #epoch = 0;

  constructor(target: HealthTarget, config: HealthConfig, logger: Logger, onUnhealthy: (failures: number) => void) {
    this.#target = target;
    this.config = config;
    this.#log = logger;
    this.#onUnhealthy = onUnhealthy;
  }

  /** Consecutive failed probes that counted. */
  get failures(): number {
    return this.#failures;
  }

  start(): void {
    if (this.#active || this.config.path === null) return;
    this.#active = true;
    this.#failures = 0;
    this.#schedule();
  }

  stop(): void {
    this.#active = false;
    this.#epoch++;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #schedule(delayMs: number = this.config.intervalMs): void {
    this.#timer = setTimeout(() => void this.#tick(), delayMs);
    this.#timer.unref();
  }

  async #tick(): Promise<void> {
    this.#timer = null;
    const address = this.#target.address;
    if (address === null || this.config.path === null) {
      this.#schedule();
      return;
    }
    const epoch = this.#epoch;
    const started = performance.now();
    const busyAtStart = this.#target.busy;
    const ok = await probe(address, this.config.path, this.config.timeoutMs);
    if (epoch !== this.#epoch || !this.#active) return;
    if (probeChannel.hasSubscribers) {
      const result: ProbeResult = ok ? 'ok' : busyAtStart || this.#target.busy ? 'busy' : 'failed';
      probeChannel.publish({ target: this.#target, result } satisfies ProbeEvent);
    }
    if (ok) {
      if (this.#failures > 0) this.#log.info({ failures: this.#failures }, 'health probe passed again');
      this.#failures = 0;
    } else if (busyAtStart || this.#target.busy) {
      this.#log.debug({ path: this.config.path }, 'health probe failed while busy: not counted');
    } else {
      this.#failures++;
      this.#log.warn({ path: this.config.path, failures: this.#failures, unhealthyAfter: this.config.unhealthyAfter }, 'health probe failed');
      if (this.#failures >= this.config.unhealthyAfter) {
        this.stop();
        this.#onUnhealthy(this.#failures);
        return;
      }
    }
    // Probes start every interval (not interval after the last one ended), so a dead instance is found
    // within busy_grace + unhealthy_after x interval + timeout, however long the failing probes take.
    this.#schedule(Math.max(0, this.config.intervalMs - (performance.now() - started)));
  }
}
