/**
 * The cache flushes a gateway owns (SPEC § Cache flush). A deploy's `flush` step, or `berth flush`,
 * queues one: its URLs go into the store as a pending flush, and the flusher sends them in the
 * background, so a flush never delays or fails the deploy. An attempt that leaves URLs to try again (a
 * 429, a 5xx, no answer) is followed by another after an exponential backoff with jitter, or after the
 * CDN's `Retry-After` when that is longer, until `cache_flush.retry_for` has passed; a refusal for good
 * ends it. Pending flushes outlive the gateway: the next start resumes them.
 *
 * Each attempt and the outcome are recorded as `flush` events of the deploy (when a deploy queued it),
 * and the outcome as a `flush` row of the audit log, which `berth history` shows. Missing Fast Purge
 * credentials skip a flush with one log line: that is not an error.
 */
import { timeSortedId } from '../lib/ids.ts';
import type { BerthConfig, CacheFlushConfig } from '../config/schema.ts';
import type { Logger } from '../lib/logger.ts';
import { errorMessage } from '../lib/errors.ts';
import { redactText } from '../lib/redact.ts';
import type { AuditOutcome, DeployEvent, FlushRecord, Store } from '../store/store.ts';
import type { AuditStart } from '../api/audit.ts';
import { akamaiProvider, fastPurgeCredentials, httpProvider, type FlushProvider } from './providers.ts';

export interface FlusherOptions {
  store: Store;
  config: () => BerthConfig;
  audit: { record(e: AuditStart & { outcome: Exclude<AuditOutcome, 'pending'> }): Promise<number> };
  logger: Logger;
  /** Where Fast Purge credentials are read (default process.env). */
  environ?: Record<string, string | undefined>;
  /** Counted URLs: purged, or given up on. */
  onUrls?: (app: string, outcome: 'purged' | 'failed', count: number) => void;
  /** The first retry's delay (it doubles, up to maxMs); tests shorten it. */
  backoff?: { minMs?: number; maxMs?: number };
}

export interface FlushRequest {
  app: string;
  deployId: string | null;
  urls: string[];
  user: string | null;
  /** The first attempt waits for this (the deploy's end, so its events keep their order). */
  after?: Promise<unknown>;
}

const BACKOFF_MIN_MS = 1_000;
/** After the store failed an attempt (or the listing at start), when to look again. */
const STORE_RETRY_MS = 5_000;
const BACKOFF_MAX_MS = 5 * 60_000;

export class Flusher {
  #opts: FlusherOptions;
  #log: Logger;
  #timers = new Map<string, NodeJS.Timeout>();
  #running = new Map<string, Promise<void>>();
  #abort = new AbortController();
  #stopped = false;

  constructor(opts: FlusherOptions) {
    this.#opts = opts;
    this.#log = opts.logger;
  }

  /** Resumes the flushes a stopped (or killed) gateway left pending. Never throws. */
  async start(): Promise<void> {
    try {
      const pending = await this.#opts.store.listPendingFlushes();
      for (const f of pending) this.#schedule(f.id, Date.parse(f.nextAt) - Date.now());
      if (pending.length > 0) this.#log.info({ flushes: pending.map((f) => f.id) }, 'resuming cache flushes');
    } catch (err) {
      this.#log.error({ err: errorMessage(err), retryInMs: STORE_RETRY_MS }, 'cannot read pending cache flushes; trying again');
      if (this.#stopped) return;
      const timer = setTimeout(() => {
        this.#timers.delete('');
        void this.start();
      }, STORE_RETRY_MS);
      timer.unref();
      this.#timers.set('', timer);
    }
  }

  /** Queues a flush and starts it at once; returns its record. Throws BERTH_E_STORE when it cannot be kept. */
  async enqueue(req: FlushRequest, config: CacheFlushConfig): Promise<FlushRecord> {
    const now = new Date();
    const flush: FlushRecord = {
      id: newFlushId(now),
      app: req.app,
      deployId: req.deployId,
      provider: config.provider,
      urls: req.urls,
      done: [],
      state: 'pending',
      attempts: 0,
      nextAt: now.toISOString(),
      giveUpAt: new Date(now.getTime() + config.retryForMs).toISOString(),
      error: null,
      user: req.user,
      createdAt: now.toISOString(),
      finishedAt: null,
    };
    await this.#opts.store.createFlush(flush);
    this.#log.info({ app: req.app, flush: flush.id, deploy: req.deployId, urls: req.urls.length }, 'cache flush queued');
    if (req.after) void req.after.then(() => this.#schedule(flush.id, 0), () => this.#schedule(flush.id, 0));
    else this.#schedule(flush.id, 0);
    return flush;
  }

  /** Stops attempting (requests under way are aborted; their URLs stay pending for the next start). */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    this.#abort.abort();
    await Promise.allSettled([...this.#running.values()]);
  }

  #schedule(id: string, inMs: number): void {
    // An attempt schedules the next one while it still runs: the timer is what keeps one per flush.
    if (this.#stopped || this.#timers.has(id)) return;
    const timer = setTimeout(() => {
      this.#timers.delete(id);
      if (this.#running.has(id)) return;
      const run = this.#attempt(id)
        .catch((err) => {
          // The store (or something else) failed mid-attempt: the flush stays pending and is tried again.
          this.#log.error({ flush: id, err: errorMessage(err), retryInMs: STORE_RETRY_MS }, 'cache flush attempt failed');
          this.#running.delete(id);
          this.#schedule(id, STORE_RETRY_MS);
        })
        .finally(() => this.#running.delete(id));
      this.#running.set(id, run);
    }, Math.max(0, inMs));
    timer.unref();
    this.#timers.set(id, timer);
  }

  async #attempt(id: string): Promise<void> {
    const store = this.#opts.store;
    const f = await store.getFlush(id);
    if (!f || f.state !== 'pending' || this.#stopped) return;
    const log = this.#log.child({ app: f.app, flush: f.id });
    const config = this.#opts.config().apps[f.app]?.cacheFlush ?? null;
    if (!config) return this.#finish(f, 'failed', `app ${f.app} no longer has cache_flush`, 0);
    const provider = this.#provider(f, config);
    if (typeof provider === 'string') {
      log.warn({ reason: provider }, 'cache flush skipped');
      return this.#finish(f, 'skipped', provider, 0);
    }
    const purged = new Set(f.done);
    const remaining = f.urls.filter((u) => !purged.has(u));
    const attempts = f.attempts + 1;
    const outcome = await provider.send(remaining, this.#abort.signal);
    const done = [...f.done, ...outcome.done];
    if (outcome.done.length > 0) this.#opts.onUrls?.(f.app, 'purged', outcome.done.length);
    const progress = { ...f, done, attempts };
    if (outcome.failed.length === 0 && outcome.retry.length === 0) {
      return this.#finish(progress, 'succeeded', `attempt ${attempts}: every URL purged (${done.length})`, 0);
    }
    if (this.#stopped && outcome.failed.length === 0) {
      // Cut by a stop: the rest is tried at the next start, and this attempt does not count.
      await store.updateFlush(f.id, { done, nextAt: new Date().toISOString() });
      return;
    }
    const left = outcome.failed.length + outcome.retry.length;
    const firstError = (outcome.failed[0] ?? outcome.retry[0])!;
    // A purge URL may carry a key (`?key=...`): what is logged, stored and shown never does.
    const summary = redactText(`attempt ${attempts}: ${outcome.done.length} of ${remaining.length} URL(s) purged, ${left} not (${firstError.error}, e.g. ${firstError.url})`);
    if (outcome.failed.length > 0) return this.#finish(progress, 'failed', `${summary}; refused for good`, left);
    const wait = Math.max(backoff(attempts, this.#opts.backoff), outcome.retryAfterMs ?? 0);
    if (Date.now() + wait > Date.parse(f.giveUpAt)) return this.#finish(progress, 'failed', `${summary}; gave up: retry_for has passed`, left);
    const nextAt = new Date(Date.now() + wait).toISOString();
    await store.updateFlush(f.id, { done, attempts, nextAt, error: summary });
    await this.#event(f, 'failed', `${summary}; next attempt in ${Math.ceil(wait / 1000)}s`);
    log.warn({ attempts, left, retryInMs: wait, err: firstError.error }, 'cache flush attempt failed; retrying');
    this.#schedule(f.id, wait);
  }

  /** The provider for a flush, or why it cannot be sent (missing credentials). */
  #provider(f: FlushRecord, config: CacheFlushConfig): FlushProvider | string {
    if (f.provider === 'http') return httpProvider(config);
    const { credentials, missing } = fastPurgeCredentials(this.#opts.environ ?? process.env, this.#opts.config().environment);
    if (!credentials) return `no Fast Purge credentials: set ${missing.join(', ')}`;
    return akamaiProvider(config, credentials);
  }

  async #finish(f: FlushRecord, state: 'succeeded' | 'failed' | 'skipped', message: string, failedUrls: number): Promise<void> {
    const finishedAt = new Date().toISOString();
    await this.#opts.store.updateFlush(f.id, { state, done: f.done, attempts: f.attempts, error: state === 'succeeded' ? null : message, finishedAt });
    if (failedUrls > 0) this.#opts.onUrls?.(f.app, 'failed', failedUrls);
    await this.#event(f, state, message);
    const outcome = state === 'succeeded' ? 'ok' : state === 'skipped' ? 'refused' : 'failed';
    await this.#opts.audit.record({ user: f.user ?? 'cache-flush', channel: 'internal', action: 'flush', app: f.app, target: f.id, outcome, detail: redactText(`${f.id}: ${state}: ${message}`) }).catch(() => {});
    const fields = { app: f.app, flush: f.id, attempts: f.attempts, urls: f.urls.length };
    if (state === 'failed') this.#log.error({ ...fields, err: message }, 'cache flush failed');
    else if (state === 'succeeded') this.#log.info(fields, 'cache flush done');
  }

  /** A `flush` event of the deploy the flush follows (none for a manual flush). Never throws. */
  async #event(f: FlushRecord, status: DeployEvent['status'], message: string): Promise<void> {
    if (f.deployId === null) return;
    const store = this.#opts.store;
    for (let tries = 0; tries < 3; tries++) {
      try {
        const seq = (await store.listDeployEvents(f.deployId)).length + 1;
        await store.addDeployEvent({ deployId: f.deployId, seq, step: 'flush', status, at: new Date().toISOString(), durationMs: null, message: redactText(`${f.id}: ${message}`) });
        return;
      } catch (err) {
        if (tries === 2) this.#log.warn({ flush: f.id, err: errorMessage(err) }, 'cannot record the flush event');
      }
    }
  }
}

/** Flush ids sort by time like deploy ids, with an `f` in front. */
export function newFlushId(now = new Date()): string {
  return timeSortedId('f', now);
}

/** The delay before attempt `attempts + 1`: doubling from minMs, at most maxMs, with jitter (half to all of it). */
function backoff(attempts: number, opts: FlusherOptions['backoff'] = {}): number {
  const min = opts.minMs ?? BACKOFF_MIN_MS;
  const max = opts.maxMs ?? BACKOFF_MAX_MS;
  const full = Math.min(max, min * 2 ** (attempts - 1));
  return Math.round(full / 2 + Math.random() * (full / 2));
}
