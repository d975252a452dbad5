/**
 * Where HTTP-01 answers live (RFC 8555 §8.3), and the token a request path names there. The gateway's
 * ACME manager answers from its issuer's pending challenges; a proxy worker thread answers from the
 * copy the main thread sends it (proxy/worker-thread.ts). Tokens are base64url.
 */
export const ACME_CHALLENGE_PREFIX = '/.well-known/acme-challenge/';
const TOKEN_RE = /^[A-Za-z0-9_-]{1,256}$/;

/** The token of a challenge URL path (query ignored), or null when `path` is no such URL. */
export function challengeToken(path: string): string | null {
  if (!path.startsWith(ACME_CHALLENGE_PREFIX)) return null;
  const end = path.indexOf('?');
  const token = path.slice(ACME_CHALLENGE_PREFIX.length, end === -1 ? undefined : end);
  return TOKEN_RE.test(token) ? token : null;
}
