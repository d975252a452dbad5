import { channel } from 'node:diagnostics_channel';
import type { Logger } from '../lib/logger.ts';
import type { AffinityOutcome } from './affinity.ts';

/**
 * One message per proxied request, published where its access-log line is written (the request is over:
 * response sent or client gone). Metrics subscribe to it; publishers check `hasSubscribers` first.
 */
export const requestChannel = channel('berth:proxy:request');

/**
 * What `requestChannel` carries: the request object itself (the proxy's Forward), so publishing
 * allocates nothing. Read it synchronously in the subscriber; it is not yours to keep.
 */
export interface CompletedRequest {
  readonly app: { readonly name: string };
  /** The route it matched; its identity is stable until the config changes. */
  readonly route: { readonly path: string };
  /** Status sent to the client; 499 when the client went away first. */
  readonly status: number;
  /** performance.now() at arrival. */
  readonly start: number;
  /** How session affinity placed it (hit, miss, repin); null or absent when its route has none. */
  readonly affinity?: AffinityOutcome | null;
}

/** One access-log line. Always the same fields in the same order, so every line has one shape. */
export interface AccessLogLine {
  app: string | null;
  method: string;
  path: string;
  status: number;
  durationMs: number;
  requestId: string;
  release: string | null;
  /** `web.0`; null when no instance was chosen. */
  instance: string | null;
  clientIp: string;
  /** How session affinity placed it (affinity.ts: hit, miss, repin); null when its route has none. */
  affinity: AffinityOutcome | null;
}

/**
 * Writes the `request` line for a request the proxy handled (not for gateway endpoints). Callers check
 * `logger.isLevelEnabled('info')` first, so a quiet proxy builds nothing. Status 499 means the client went
 * away before a response was sent (the nginx convention).
 */
export function accessLog(logger: Logger, line: AccessLogLine): void {
  logger.info(line, 'request');
}

/** Milliseconds since `start` (a performance.now() value), to 0.1ms. */
export function elapsedMs(start: number): number {
  return Math.round((performance.now() - start) * 10) / 10;
}
