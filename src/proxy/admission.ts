/**
 * Admission control for one app's process pool (`app/process`), across all of its generations.
 *
 * At most `limit` (instances x concurrency) requests are in flight at once, which is what keeps an app
 * inside its database connection budget during a deploy, when the old and new generations both serve.
 * Each instance is also held to its own concurrency, because a waiter only proceeds when its pinned
 * generation's pool can `pick()` an instance (pick skips full ones). A request with session affinity
 * (affinity.ts) waits for its own instance's slot instead, keeping its place while others go ahead.
 *
 * Waiters queue FIFO in an intrusive doubly linked list: the request object is the node, so queueing
 * allocates nothing and a client that goes away leaves in O(1). There is no timer per request: the proxy
 * calls `sweep()` from one coarse interval timer to expire waiters and to pick up instances that became
 * ready, and `leave()` re-pumps whenever a request of this pool ends.
 *
 * With proxy worker threads (`proxy.workers`), the active count and the number of waiters live in the
 * gateway's shared cells (lib/shared-cells.ts): a request takes its place under the limit with a
 * compare-and-swap, so the limit holds across threads. Each thread queues its own waiters (FIFO within
 * the thread; a newcomer waits while any thread has waiters). A thread that frees a slot while other
 * threads have waiters bumps the pool's wake sequence, and a thread with waiters listens for that
 * (Atomics.waitAsync), so its queue moves as soon as a slot frees up anywhere.
 */
import { channel } from 'node:diagnostics_channel';
import { A_ACTIVE, A_SEQ, A_WAITERS, HA_ACTIVE, HA_WAITERS, addBelow, type SharedCells } from '../lib/shared-cells.ts';
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

/** Most a thread with waiters listens for another thread's wake before it looks again (its coarse sweep also pumps). */
const WAKE_WAIT_MS = 1_000;

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
  /**
   * The one instance it may start on (session affinity); null: any of its pool. Such a waiter is never
   * turned away for its pool having no instance left: `acquire` sends it elsewhere first.
   */
  readonly affine: Upstream | null;
  /**
   * Reserves a slot of the instance it may start on now (`pool.acquire()`, or its affine instance's
   * while that one is ready; once it is not, the request leaves its affinity and takes any); null when
   * none is free.
   */
  acquire(): Upstream | null;
  /** The request may start on `upstream`, one of whose slots is reserved for it: it must call `upstream.begin(true)` before returning. */
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
  /** This thread's waiters. */
  #depth = 0;
  #head: Waiter | null = null;
  #tail: Waiter | null = null;
  #pumping = false;
  #again = false;
  /** The cells of the count (shared, or this admission's own), and where in them. */
  #i32: Int32Array;
  #at: number;
  /** Where this thread's shares of the counts are kept (for a worker thread that dies); -1: none. */
  #held: number;
  #cells: SharedCells | null;
  /** A wait for another thread's wake is pending. */
  #listening = false;

  /** `cells`: the gateway's shared cells (the count is then global across proxy threads); null: a count of its own. */
  constructor(app: string, process: string, limits: AdmissionLimits, cells: SharedCells | null = null) {
    this.app = app;
    this.process = process;
    this.limit = limits.limit;
    this.queueMax = limits.queueMax;
    this.queueTimeoutMs = limits.queueTimeoutMs;
    const slot = cells === null ? -1 : cells.admissionSlot(`${app}/${process}`);
    if (slot < 0) {
      this.#i32 = new Int32Array(4);
      this.#at = 0;
      this.#held = -1;
      this.#cells = null;
    } else {
      this.#i32 = cells!.i32;
      this.#at = cells!.admission(slot);
      this.#held = cells!.heldAdmission(cells!.thread, slot);
      this.#cells = cells;
    }
  }

  /** Requests admitted and not yet finished, across the proxy's threads. */
  get active(): number {
    return Atomics.load(this.#i32, this.#at + A_ACTIVE);
  }

  /** Requests waiting in the queue, across the proxy's threads. */
  get depth(): number {
    return Atomics.load(this.#i32, this.#at + A_WAITERS);
  }

  /** One more active request, if the limit allows (compare and swap against the other threads). */
  #take(): boolean {
    return this.#hold(A_ACTIVE, HA_ACTIVE, this.limit);
  }

  /** One more in the pool's count `cell` if below `limit`, and in this thread's share of it (`held`). */
  #hold(cell: number, held: number, limit: number): boolean {
    if (!addBelow(this.#i32, this.#at + cell, limit)) return false;
    if (this.#held >= 0) Atomics.add(this.#i32, this.#held + held, 1);
    return true;
  }

  #unhold(cell: number, held: number): void {
    if (this.#held >= 0) Atomics.sub(this.#i32, this.#held + held, 1);
    Atomics.sub(this.#i32, this.#at + cell, 1);
  }

  /** Gives back a place taken by #take(); wakes other threads' waiters when there are any. */
  #give(): void {
    const i32 = this.#i32;
    this.#unhold(A_ACTIVE, HA_ACTIVE);
    if (this.#cells !== null && Atomics.load(i32, this.#at + A_WAITERS) > this.#depth) {
      Atomics.add(i32, this.#at + A_SEQ, 1);
      Atomics.notify(i32, this.#at + A_SEQ);
    }
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
    // Only when nobody waits (in any thread), so a newcomer never overtakes the queue.
    if (Atomics.load(this.#i32, this.#at + A_WAITERS) === 0 && this.#take()) {
      const upstream = w.acquire();
      if (upstream !== null) {
        if (admissionChannel.hasSubscribers) admissionChannel.publish({ admission: this, outcome: 'admitted', waitMs: 0 });
        w.admit(upstream);
        return;
      }
      this.#give();
    }
    // Off the fast path: only a request that found no free instance asks whether any can come back.
    if (!w.pool.serviceable()) {
      if (admissionChannel.hasSubscribers) admissionChannel.publish({ admission: this, outcome: 'no-healthy-instance', waitMs: 0 });
      w.reject('no-healthy-instance');
      return;
    }
    // A place in the queue, counted across threads: `queue.max` bounds the pool's waiters, not each thread's.
    if (!this.#hold(A_WAITERS, HA_WAITERS, this.queueMax)) {
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
    if (this.#cells !== null && this.#cells.threads > 1) this.#listen();
    // The waiter ahead waits for its own instance (affinity) while the budget has room: this one may be
    // able to start now on another, rather than at the next request's end or sweep.
    if (this.#head !== w && this.#head!.affine !== null && Atomics.load(this.#i32, this.#at + A_ACTIVE) < this.limit) this.pump();
  }

  /** An admitted request finished (response done or failed): frees its slot and admits the next. */
  leave(): void {
    this.#give();
    if (this.#depth > 0) this.pump();
  }

  /**
   * While this thread has waiters, wait for another thread to free a slot (its leave() bumps the wake
   * sequence), then pump. Bounded, so nothing waits on a wake that never comes; the sweep pumps too.
   */
  #listen(): void {
    if (this.#listening) return;
    const seq = this.#at + A_SEQ;
    const wait = Atomics.waitAsync(this.#i32, seq, Atomics.load(this.#i32, seq), WAKE_WAIT_MS);
    if (!wait.async) {
      queueMicrotask(() => this.#woken());
      this.#listening = true;
      return;
    }
    this.#listening = true;
    void wait.value.then(() => this.#woken());
  }

  #woken(): void {
    this.#listening = false;
    if (this.#depth === 0) return;
    this.pump();
    if (this.#depth > 0) this.#listen();
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
      // A waiter for one instance goes elsewhere when that one leaves (acquire), whatever its pool's state.
      if (w.pool !== checked && w.affine === null) {
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
        while (w !== null) {
          const next = w.next;
          if (w.pool !== exhausted) {
            if (!this.#take()) break;
            const upstream = w.acquire();
            if (upstream === null) {
              this.#give();
              // Only its own instance was full: others of the pool may still take the waiters behind.
              if (w.affine === null) exhausted = w.pool;
            } else {
              this.#unlink(w);
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
    this.#unhold(A_WAITERS, HA_WAITERS);
  }
}
