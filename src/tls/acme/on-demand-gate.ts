/**
 * Who may have a certificate obtained at the first handshake (on-demand TLS): only names the operator's
 * `ask` URL answers 200 for, and never more than the CA's limits can bear, whatever a client sends in SNI.
 * Caddy's `on_demand_tls { ask }` and kamal-proxy's `--tls-on-demand-url` are the models.
 */

import { isDnsName } from './dns-name.ts';

/** How many on-demand orders may start in a minute: Let's Encrypt allows 300 new orders per 3 hours. */
export const ON_DEMAND_PER_MINUTE = 10;
/** How many names may be asked about or ordered at once; a handshake past that is refused, not queued. */
export const ON_DEMAND_IN_FLIGHT = 4;
/** How long a refused or failed name stays refused without asking again. */
export const ON_DEMAND_REFUSED_TTL_MS = 10 * 60_000;
/** An ask URL slower than this refuses. */
export const ON_DEMAND_ASK_TIMEOUT_MS = 5_000;
/** At most this many refused names are remembered (a flood of random names must not grow memory). */
const REFUSED_CACHE_SIZE = 10_000;
const MINUTE_MS = 60_000;

export interface OnDemandLimits {
  perMinute: number;
  inFlight: number;
  refusedTtlMs: number;
  askTimeoutMs: number;
}

/** Why a name was refused, for the log and the tests. */
export type OnDemandRefusal = 'invalid-name' | 'no-ask-url' | 'refused-recently' | 'busy' | 'rate-limited' | 'ask-refused';

export type OnDemandVerdict = { ok: true; release: () => void } | { ok: false; reason: OnDemandRefusal; detail?: string };

export class OnDemandGate {
  #ask: URL | null;
  #limits: OnDemandLimits;
  #now: () => number;
  /** name → when its refusal ends. */
  #refused = new Map<string, number>();
  /** When each order of the last minute started. */
  #started: number[] = [];
  #inFlight = 0;

  constructor(ask: string | null, limits: Partial<OnDemandLimits>, now: () => number) {
    this.#ask = ask ? new URL(ask) : null;
    this.#limits = {
      perMinute: limits.perMinute ?? ON_DEMAND_PER_MINUTE,
      inFlight: limits.inFlight ?? ON_DEMAND_IN_FLIGHT,
      refusedTtlMs: limits.refusedTtlMs ?? ON_DEMAND_REFUSED_TTL_MS,
      askTimeoutMs: limits.askTimeoutMs ?? ON_DEMAND_ASK_TIMEOUT_MS,
    };
    this.#now = now;
  }

  /**
   * Asks whether `name` (lower-case, no trailing dot) may be ordered now. On `ok`, the caller orders and
   * then calls `release()`; the order counts against the minute's budget from now on.
   */
  async admit(name: string): Promise<OnDemandVerdict> {
    // IP literals, bare words and junk never reach the ask URL.
    if (!isDnsName(name)) return { ok: false, reason: 'invalid-name' };
    if (this.#ask === null) return { ok: false, reason: 'no-ask-url' };
    const now = this.#now();
    const until = this.#refused.get(name);
    if (until !== undefined) {
      if (until > now) return { ok: false, reason: 'refused-recently' };
      this.#refused.delete(name);
    }
    if (this.#inFlight >= this.#limits.inFlight) return { ok: false, reason: 'busy' };
    this.#inFlight++;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.#inFlight--;
    };
    try {
      const answer = await this.#askFor(name);
      if (answer !== null) {
        this.refuse(name);
        release();
        return { ok: false, reason: 'ask-refused', detail: answer };
      }
      // Counted when the order starts, after the ask: refused names cost the CA nothing.
      const t = this.#now();
      while (this.#started.length > 0 && this.#started[0] <= t - MINUTE_MS) this.#started.shift();
      if (this.#started.length >= this.#limits.perMinute) {
        release();
        return { ok: false, reason: 'rate-limited' };
      }
      this.#started.push(t);
      return { ok: true, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  /** Refuses `name` without asking for a while (it was refused, or its order failed). */
  refuse(name: string): void {
    this.#refused.delete(name);
    this.#refused.set(name, this.#now() + this.#limits.refusedTtlMs);
    if (this.#refused.size > REFUSED_CACHE_SIZE) this.#refused.delete(this.#refused.keys().next().value!);
  }

  /** Null when the ask URL answered 200; else why not (its status, a timeout, a connection error). */
  async #askFor(name: string): Promise<string | null> {
    const url = new URL(this.#ask!);
    url.searchParams.set('domain', name);
    try {
      const res = await fetch(url, { redirect: 'manual', signal: AbortSignal.timeout(this.#limits.askTimeoutMs) });
      await res.body?.cancel();
      return res.status === 200 ? null : `ask answered ${res.status}`;
    } catch (err) {
      const e = err as { name?: string; cause?: { code?: string } };
      return e.name === 'TimeoutError' ? 'ask timed out' : `ask failed (${e.cause?.code ?? e.name ?? 'error'})`;
    }
  }
}
