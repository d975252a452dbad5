/** RFC 1035 host names of two labels or more, the last starting with a letter (so never an IPv4 literal). */
const DNS_NAME_RE = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Whether a CA can validate `host` (lower-case, no trailing dot) by HTTP-01 or TLS-ALPN-01: one concrete
 * name, no wildcard, not an IP address. Names a client sends in SNI are checked with it before anything
 * is asked or ordered.
 */
export function isDnsName(host: string): boolean {
  return DNS_NAME_RE.test(host);
}
