/**
 * Admission control for one app's process pool (`app/process`), across all of its generations.
 *
 * At most `limit` (instances x concurrency) requests are in flight at once, which is what keeps an app
 * inside its database connection budget during a deploy, when the old and new generations both serve.
 * Each instance is also held to its own concurrency, because a waiter only proceeds when its pinned
 * generation's pool can `pick()` an instance (pick skips full ones).
 *
 * Waiters queue FIFO in an intrusive doubly linked list: the request object is the node, so queueing
 * allocates nothing and a client that goes away leaves in O(1). There is no timer per request: the proxy
 * calls `sweep()` from one coarse interval timer to expire waiters and to pick up instances that became
 * ready, and `leave()` re-pumps whenever a request of this pool ends.
 */
import { channel } from 'node:diagnostics_channel';
import type { PoolView, Upstream } from '../supervisor/types.ts';

/**
 * queue-full / queue-timeout: the pool is busy. no-healthy-instance: no instance of the pinned pool is
 * ready or starting (all in backoff or crashed), so waiting could only end in a queue timeout.
 */
export type AdmissionRejection = 'queue-full' | 'queue-timeout' | 'no-healthy-instance';

/** Retry-After (seconds) for a full queue: capacity frees up as soon as any request ends. */
const QUEUE_FULL_RETRY_AFTER_S = 1;
/** Retry-After (seconds) when every instance is in backoff or crashed: a restart takes seconds. */
export const NO_HEALTHY_RETRY_AFTER_S = 5;

/** The Retry-After (seconds) of an admission refusal, for requests and WebSockets alike. */
export function rejectionRetryAfter(reason: AdmissionRejection, queueTimeoutMs: number): number {
  if (reason === 'queue-full') return QUEUE_FULL_RETRY_AFTER_S;
  if (reason === 'no-healthy-instance') return NO_HEALTHY_RETRY_AFTER_S;
  return Math.max(1, Math.ceil(queueTimeoutMs / 1000));
}

/** One `AdmissionEvent` per admission decision; published only while someone subscribes. */
export const admissionChannel = channel('berth:proxy:admission');

export interface AdmissionEvent {
  readonly admission: Admission;
  readonly outcome: 'admitted' | AdmissionRejection;
  /** Time spent in the queue, in ms: 0 when decided on arrival. */
  readonly waitMs: number;
}

/** A request as the queue sees it. The list links live on the request so the queue never allocates. */
export interface Waiter {
  prev: Waiter | null;
  next: Waiter | null;
  /** performance.now() after which a queued waiter gives up. */
  deadline: number;
  queued: boolean;
  /** The pool of the generation the request is pinned to. */
  readonly pool: PoolView;
  /** The request may start on `upstream`; it must call `upstream.begin()` before returning. */
  admit(upstream: Upstream): void;
  /** The request will not be admitted; it is no longer counted here. */
  reject(reason: AdmissionRejection): void;
}

export interface AdmissionLimits {
  /** Most requests in flight at once across generations. */
  limit: number;
  /** Most requests waiting; 0 means no queue. */
  queueMax: number;
  queueTimeoutMs: number;
}

export class Admission {
  readonly app: string;
  readonly process: string;
  limit: number;
  queueMax: number;
  queueTimeoutMs: number;
  #active = 0;
  #depth = 0;
  #head: Waiter | null = null;
  #tail: Waiter | null = null;
  #pumping = false;
  #again = false;

  constructor(app: string, process: string, limits: AdmissionLimits) {
    this.app = app;
    this.process = process;
    this.limit = limits.limit;
    this.queueMax = limits.queueMax;
    this.queueTimeoutMs = limits.queueTimeoutMs;
  }

  /** Requests admitted and not yet finished. */
  get active(): number {
    return this.#active;
  }

  /** Requests waiting in the queue. */
  get depth(): number {
    return this.#depth;
  }

  /** Applies new limits (config reload, scale); a higher limit may admit waiters at once. */
  configure(limits: AdmissionLimits): void {
    this.limit = limits.limit;
    this.queueMax = limits.queueMax;
    this.queueTimeoutMs = limits.queueTimeoutMs;
    if (this.#depth > 0) this.pump();
  }

  /**
   * A new request: admitted now when nobody is waiting, the budget has room and an instance is free;
   * else queued; else rejected with `queue-full`.
   */
  enter(w: Waiter, now: number): void {
    // Only when nobody waits, so a newcomer never overtakes the queue.
    if (this.#depth === 0 && this.#active < this.limit) {
      const upstream = w.pool.pick();
      if (upstream !== null) {
        this.#active++;
        if (admissionChannel.hasSubscribers) admissionChannel.publish({ admission: this, outcome: 'admitted', waitMs: 0 });
        w.admit(upstream);
        return;
      }
    }
    // Off the fast path: only a request that found no free instance asks whether any can come back.
    if (!w.pool.serviceable()) {
      if (admissionChannel.hasSubscribers) admissionChannel.publish({ admission: this, outcome: 'no-healthy-instance', waitMs: 0 });
      w.reject('no-healthy-instance');
      return;
    }
    if (this.#depth >= this.queueMax) {
      if (admissionChannel.hasSubscribers) admissionChannel.publish({ admission: this, outcome: 'queue-full', waitMs: 0 });
      w.reject('queue-full');
      return;
    }
    w.deadline = now + this.queueTimeoutMs;
    w.queued = true;
    w.prev = this.#tail;
    w.next = null;
    if (this.#tail === null) this.#head = w;
    else this.#tail.next = w;
    this.#tail = w;
    this.#depth++;
  }

  /** An admitted request finished (response done or failed): frees its slot and admits the next. */
  leave(): void {
    this.#active--;
    if (this.#depth > 0) this.pump();
  }

  /** A queued request went away (client disconnected): it leaves the queue without an answer. */
  cancel(w: Waiter): void {
    if (w.queued) this.#unlink(w);
  }

  /**
   * Expires waiters past their deadline, turns away those whose pool has no instance left that could
   * serve them (the last one went into backoff or crashed), then admits what can start now. Called by
   * the coarse timer.
   */
  sweep(now: number): void {
    // Deadlines grow along the queue (same timeout, FIFO), so expired waiters are all at the head. A
    // timeout lowered by a config reload is honoured as the older waiters ahead expire.
    let w = this.#head;
    while (w !== null && w.deadline <= now) {
      const next = w.next;
      this.#unlink(w);
      if (admissionChannel.hasSubscribers) this.#publishQueued('queue-timeout', w, now);
      w.reject('queue-timeout');
      w = next;
    }
    if (this.#depth > 0) this.#dropUnserviceable(now);
    if (this.#depth > 0) this.pump();
  }

  /** Waiters whose pinned pool has no ready or starting instance get `no-healthy-instance` now. */
  #dropUnserviceable(now: number): void {
    let checked: PoolView | null = null;
    let w = this.#head;
    while (w !== null) {
      const next = w.next;
      if (w.pool !== checked) {
        if (w.pool.serviceable()) checked = w.pool;
        else {
          this.#unlink(w);
          if (admissionChannel.hasSubscribers) this.#publishQueued('no-healthy-instance', w, now);
          w.reject('no-healthy-instance');
        }
      }
      w = next;
    }
  }

  /**
   * Admits waiters in FIFO order while the budget has room. A waiter whose pool has no free instance is
   * passed over (it keeps its place), so requests pinned to a generation that is still starting do not
   * block those pinned to one that can serve.
   */
  pump(): void {
    // admit() can finish a request synchronously (dispatch failure) and so re-enter via leave(); the outer
    // loop picks up the work instead of iterating a list that changed under it.
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = true;
    try {
      do {
        this.#again = false;
        let exhausted: PoolView | null = null;
        let w = this.#head;
        while (w !== null && this.#active < this.limit) {
          const next = w.next;
          if (w.pool !== exhausted) {
            const upstream = w.pool.pick();
            if (upstream === null) exhausted = w.pool;
            else {
              this.#unlink(w);
              this.#active++;
              if (admissionChannel.hasSubscribers) this.#publishQueued('admitted', w, performance.now());
              w.admit(upstream);
              if (this.#again) break;
            }
          }
          w = next;
        }
      } while (this.#again);
    } finally {
      this.#pumping = false;
    }
  }

  /**
   * The decision about a waiter that was queued. Its queueing time is read back from its deadline rather
   * than stored on every request; a queue timeout changed by a reload meanwhile skews that one figure.
   */
  #publishQueued(outcome: AdmissionEvent['outcome'], w: Waiter, now: number): void {
    const waitMs = now - (w.deadline - this.queueTimeoutMs);
    admissionChannel.publish({ admission: this, outcome, waitMs: waitMs > 0 ? waitMs : 0 });
  }

  #unlink(w: Waiter): void {
    if (w.prev === null) this.#head = w.next;
    else w.prev.next = w.next;
    if (w.next === null) this.#tail = w.prev;
    else w.next.prev = w.prev;
    w.prev = null;
    w.next = null;
    w.queued = false;
    this.#depth--;
  }
}
