/**
 * Request ids: an incoming `X-Request-Id` is kept when it looks like an id (so a trace started upstream
 * of berth continues), else a new one is made. New ids are a random per-process prefix plus a counter:
 * unique without a random draw per request.
 */
import { randomBytes } from 'node:crypto';

const MAX_LENGTH = 200;
const PREFIX = randomBytes(6).toString('hex') + '-';
let counter = 0;

/** The id for a request: `incoming` when valid (1-200 chars of `A-Za-z0-9._:-/+=`), else a new one. */
export function requestId(incoming: string | undefined): string {
  if (incoming !== undefined && isValidRequestId(incoming)) return incoming;
  counter = (counter + 1) % Number.MAX_SAFE_INTEGER;
  return PREFIX + counter.toString(36);
}

/** Whether a client-supplied id is safe to pass on and log: short, and only id-like characters. */
export function isValidRequestId(id: string): boolean {
  const n = id.length;
  if (n === 0 || n > MAX_LENGTH) return false;
  for (let i = 0; i < n; i++) {
    const c = id.charCodeAt(i);
    const ok =
      (c >= 0x61 && c <= 0x7a) || // a-z
      (c >= 0x41 && c <= 0x5a) || // A-Z
      (c >= 0x2d && c <= 0x3a) || // - . / 0-9 :
      c === 0x5f || // _
      c === 0x2b || // +
      c === 0x3d; // =
    if (!ok) return false;
  }
  return true;
}
