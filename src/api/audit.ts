/**
 * The audit log: who changed what, through which channel, and how it ended. A change is written as
 * `pending` before it acts and finished after, so even a change that took the gateway down shows.
 * Writing the audit row must never be the reason a change fails: store errors are logged, not thrown.
 * Targets and details are redacted (src/lib/redact.ts) before they are logged or stored, and again when
 * read: a deploy's target is its request body, whose source URL may carry credentials.
 */
import type { Logger } from '../lib/logger.ts';
import { errorMessage, httpStatusFor } from '../lib/errors.ts';
import { redactNullable } from '../lib/redact.ts';
import type { AuditChannel, AuditFilter, AuditOutcome, AuditRecord, Store } from '../store/store.ts';

export interface AuditStart {
  user: string;
  channel: AuditChannel;
  action: string;
  app: string | null;
  target?: string | null;
  detail?: string | null;
}

/** How a change ended, as its audit row records it. */
export interface AuditEnd {
  outcome: Exclude<AuditOutcome, 'pending'>;
  detail?: string | null;
}

/** The part of the audit log a change writes through: what `audited` needs. */
export type AuditWriter = Pick<Audit, 'begin' | 'finish'>;

/**
 * Outcome of a change that did not happen. A 4xx is a refusal (no credentials, no right, a bad or late
 * or oversized body, a conflict, an unknown app); anything else is a failure.
 */
export function outcomeFor(err: unknown): 'refused' | 'failed' {
  const status = httpStatusFor(err);
  return status >= 400 && status < 500 ? 'refused' : 'failed';
}

/**
 * A change with its audit row, the sequence every audited change follows: the row is written `pending`
 * before `act` runs, so a change that takes the gateway down still shows; then it is finished with what
 * `end` makes of act's result. When act throws, the row is finished with `failed(err)` (default
 * `outcomeFor`) and the error's message, and the error is rethrown. When `end` answers with a promise
 * (work that goes on after the reply, such as a deploy answered 202), the result is returned at once
 * and the row is finished when that promise settles.
 */
export async function audited<T>(
  audit: AuditWriter,
  start: AuditStart,
  act: () => T | Promise<T>,
  end: (result: T) => AuditEnd | Promise<AuditEnd>,
  failed: (err: unknown) => Exclude<AuditOutcome, 'pending'> = outcomeFor,
): Promise<T> {
  const id = await audit.begin(start);
  let result: T;
  try {
    result = await act();
  } catch (err) {
    await audit.finish(id, failed(err), errorMessage(err));
    throw err;
  }
  const ended = end(result);
  if (ended instanceof Promise) {
    void ended.then(
      (e) => audit.finish(id, e.outcome, e.detail ?? null),
      (err) => audit.finish(id, 'failed', errorMessage(err)),
    );
  } else {
    await audit.finish(id, ended.outcome, ended.detail ?? null);
  }
  return result;
}

/** What a deploy, rollback or reload that ran to its end says in its audit row. */
export function deployEnd(d: { id: string; state: string; releaseId: string | null; failedStep: string | null; error: string | null }): AuditEnd & { outcome: 'ok' | 'failed' } {
  if (d.state === 'succeeded') return { outcome: 'ok', detail: `${d.id}: release ${d.releaseId}` };
  return { outcome: 'failed', detail: `${d.id}: ${d.state}${d.failedStep ? ` at ${d.failedStep}` : ''}: ${d.error ?? ''}` };
}

export class Audit {
  #store: () => Store | null;
  #log: Logger;

  /** `store` is read on each call: the gateway opens it after building this. */
  constructor(store: () => Store | null, logger: Logger) {
    this.#store = store;
    this.#log = logger;
  }

  /** Records a change about to happen; returns the row id for finish(), or 0 when it could not be written. */
  async begin(e: AuditStart): Promise<number> {
    return this.#add(e, 'pending', false);
  }

  async finish(id: number, outcome: Exclude<AuditOutcome, 'pending'>, detail?: string | null): Promise<void> {
    const store = this.#store();
    if (!store || id === 0) return;
    try {
      await store.finishAudit(id, outcome, redactNullable(detail ?? null), new Date().toISOString());
    } catch (err) {
      this.#log.error({ id, outcome, err: errorMessage(err) }, 'cannot finish audit row');
    }
  }

  /** A change recorded in one go (it already happened, or was refused before acting). */
  async record(e: AuditStart & { outcome: Exclude<AuditOutcome, 'pending'> }): Promise<number> {
    return this.#add(e, e.outcome, true);
  }

  async list(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    const store = this.#store();
    if (!store) return [];
    return (await store.listAudit(filter)).map((r) => ({ ...r, target: redactNullable(r.target), detail: redactNullable(r.detail) }));
  }

  async #add(e: AuditStart, outcome: AuditOutcome, finished: boolean): Promise<number> {
    const store = this.#store();
    const at = new Date().toISOString();
    const target = redactNullable(e.target ?? null);
    this.#log.info({ user: e.user, channel: e.channel, action: e.action, app: e.app, target, outcome }, 'audit');
    if (!store) return 0;
    try {
      return await store.addAudit({
        at,
        user: e.user,
        channel: e.channel,
        action: e.action,
        app: e.app,
        target,
        outcome,
        detail: redactNullable(e.detail ?? null),
        finishedAt: finished ? at : null,
      });
    } catch (err) {
      this.#log.error({ action: e.action, err: errorMessage(err) }, 'cannot write audit row');
      return 0;
    }
  }
}
