/**
 * The request headers an instance gets, for proxied requests and WebSocket upgrades alike: the
 * client's headers minus hop-by-hop ones (and those `Connection` names), plus the forwarding headers
 * of SPEC § Request handling step 8.
 */
import type { Upstream } from '../supervisor/types.ts';

/** Request headers never passed on: hop-by-hop ones, and those the proxy sets itself. */
const DROP_REQUEST = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  // Node has already answered `Expect: 100-continue` by reading the body; undici refuses the header.
  'expect',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-request-id',
  'x-request-start',
  'x-berth-release',
  // Set by the proxy in read-only mode; a client must not be able to claim it.
  'x-berth-mode',
]);

/**
 * A flat [name, value, ...] list, as undici takes it. Positional arguments rather than an options
 * object: this runs once per request and allocates only the list it returns.
 */
export function upstreamRequestHeaders(
  raw: readonly string[],
  socketAddress: string,
  trustedProxyCount: number,
  requestId: string,
  arrivedAt: number,
  releaseId: string,
  host: string,
  readOnly: boolean,
): string[] {
  const out: string[] = [];
  let connection: string | null = null;
  let forwardedFor: string | null = null;
  let forwardedProto: string | null = null;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const lower = name.toLowerCase();
    if (DROP_REQUEST.has(lower)) {
      if (lower === 'connection') connection = connection === null ? raw[i + 1] : `${connection},${raw[i + 1]}`;
      else if (lower === 'x-forwarded-for') forwardedFor = forwardedFor === null ? raw[i + 1] : `${forwardedFor}, ${raw[i + 1]}`;
      else if (lower === 'x-forwarded-proto' && forwardedProto === null) forwardedProto = raw[i + 1];
      continue;
    }
    out.push(name, raw[i + 1]);
  }
  if (connection !== null) dropConnectionTokens(out, connection);
  out.push(
    'x-forwarded-for',
    forwardedFor === null ? socketAddress : `${forwardedFor}, ${socketAddress}`,
    'x-forwarded-proto',
    trustedProxyCount > 0 && forwardedProto !== null ? forwardedProto : 'http',
    'x-request-id',
    requestId,
    'x-request-start',
    `t=${arrivedAt}`,
    'x-berth-release',
    releaseId,
  );
  if (host !== '') out.push('x-forwarded-host', host);
  // The mode as of arrival (the table entry this request pinned), so the app can hide its write buttons.
  if (readOnly) out.push('x-berth-mode', 'read-only');
  return out;
}

/** Removes from a flat header list the headers a `Connection` header names (they are hop-by-hop too). */
function dropConnectionTokens(out: string[], connection: string): void {
  const names = new Set<string>();
  for (const token of connection.split(',')) {
    const t = token.trim().toLowerCase();
    if (t !== '' && t !== 'close' && t !== 'keep-alive') names.add(t);
  }
  if (names.size === 0) return;
  let w = 0;
  for (let r = 0; r < out.length; r += 2) {
    if (names.has(out[r].toLowerCase())) continue;
    out[w++] = out[r];
    out[w++] = out[r + 1];
  }
  out.length = w;
}

/** `web.0`, for logs. */
export function instanceName(up: Upstream | null): string | null {
  return up === null ? null : `${up.process}.${up.index}`;
}
