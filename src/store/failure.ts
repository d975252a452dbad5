/**
 * How a failed database call becomes a BerthError, the same for every backend. A backend only says which
 * kind of fault it was (from SQLite's extended result codes, or PostgreSQL's SQLSTATE); the constraint
 * violations a caller can cause become BERTH_E_CONFLICT / BERTH_E_NOT_FOUND when the call expects them,
 * and anything else the database refuses is BERTH_E_STORE.
 */
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';

/** duplicate: a primary key or unique constraint. missing-parent: a foreign key. */
export type Fault = 'duplicate' | 'missing-parent' | 'other';

/** The messages for the faults a call expects; a fault it does not expect is a plain BERTH_E_STORE. */
export interface FaultMessages {
  duplicate?: string;
  missingParent?: string;
}

/** The BerthError for `err`, thrown while the store tried to `action` (e.g. "create deploy"). */
export function failure(action: string, err: unknown, fault: Fault, messages: FaultMessages = {}): BerthError {
  if (fault === 'duplicate' && messages.duplicate !== undefined) return new BerthError(ErrorCodes.conflict, messages.duplicate, { cause: err });
  if (fault === 'missing-parent' && messages.missingParent !== undefined) return new BerthError(ErrorCodes.notFound, messages.missingParent, { cause: err });
  return new BerthError(ErrorCodes.store, `store: cannot ${action}: ${errorMessage(err)}`, { cause: err });
}
