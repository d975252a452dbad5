/** When to renew a certificate, and how long to wait after a failed order: pure, so tests need no CA. */

/** Renew when this share of the lifetime has passed: 60 of Let's Encrypt's 90 days, as certbot and Caddy do. */
export const RENEW_AT_FRACTION = 2 / 3;
/**
 * The first retry after a failed order. Let's Encrypt allows 5 failed validations per host an hour, so
 * retries start at 5 minutes and double (5, 10, 20, 40 min...) rather than exhaust that in a burst.
 */
export const ACME_RETRY_MIN_MS = 5 * 60_000;
/** Retries never wait longer than this, so a fixed DNS or firewall is noticed within hours. */
export const ACME_RETRY_MAX_MS = 6 * 60 * 60_000;

export interface RetryPolicy {
  minMs: number;
  maxMs: number;
}

/** The time (ms) at which a certificate valid from `notBefore` to `notAfter` (ms) is renewed. */
export function nextRenewal(notBefore: number, notAfter: number): number {
  return Math.round(notBefore + (notAfter - notBefore) * RENEW_AT_FRACTION);
}

/**
 * How long to wait after the `failures`-th failure in a row: exponential from `minMs`, capped at
 * `maxMs`, then jittered down by up to a half so that many hosts failing together (the CA was down) do
 * not retry in step. `random` is in [0, 1).
 */
export function retryDelay(failures: number, random: () => number, policy: Partial<RetryPolicy> = {}): number {
  const min = policy.minMs ?? ACME_RETRY_MIN_MS;
  const max = Math.max(min, policy.maxMs ?? ACME_RETRY_MAX_MS);
  const exponential = Math.min(max, min * 2 ** Math.min(Math.max(failures, 1) - 1, 30));
  return Math.round(exponential * (1 - random() / 2));
}
