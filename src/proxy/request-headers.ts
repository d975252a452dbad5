/**
 * The request headers an instance gets, for proxied requests and WebSocket upgrades alike: the
 * client's headers minus hop-by-hop ones (and those `Connection` names), plus the forwarding headers
 * of SPEC § Request handling step 8.
 */
import type { Upstream } from '../supervisor/types.ts';

/**
 * Headers the proxy sets itself (a client's own copies are dropped or, for `forwarded` from trusted
 * proxies, passed through below).
 */
const PROXY_SET = [
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-real-ip',
  // Only passed on from trusted proxies (see below).
  'forwarded',
  'x-request-id',
  'x-request-start',
  'x-berth-release',
  // Set by the proxy in read-only mode; a client must not be able to claim it.
  'x-berth-mode',
];

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
  // Set from the routing decision (the absolute-form target's authority wins over the header).
  'host',
  ...PROXY_SET,
]);

/**
 * Names a `Connection` header may not remove: the message's framing and target, and every header the
 * proxy sets. `Connection: host` or `Connection: content-length` would otherwise strip what the app
 * needs to read the request (or what tells it who the client is).
 */
const NOT_HOP_BY_HOP = new Set(['host', 'content-length', 'transfer-encoding', ...PROXY_SET]);

/**
 * A flat [name, value, ...] list, as undici (and node:http's client) take it. Positional arguments
 * rather than an options object: this runs once per request and allocates only the list it returns.
 * @param host the Host the request was routed by: the absolute-form target's authority when there
 *   was one (RFC 9112 § 3.2.2), else the Host header; '' when neither (then none is sent).
 * @param clientIp the client IP as the proxy resolved it (rate limits use the same), sent as X-Real-IP.
 * @param underscores keep header names with `_` (`underscores_in_headers`); by default they are
 *   dropped, as nginx does, because CGI-style apps read `X-Foo` and `X_Foo` as the same variable.
 * @param tls the request arrived over TLS: `X-Forwarded-Proto: https` (a trusted proxy's own value wins).
 * @param h2 the request arrived over HTTP/2: its pseudo-headers (`:path`, `:authority`...) are not
 *   headers to an HTTP/1.1 app, and its cookies, which h2 may split into several fields, are joined
 *   into one `Cookie` (RFC 9113 § 8.2.3).
 */
export function upstreamRequestHeaders(
  raw: readonly string[],
  socketAddress: string,
  clientIp: string,
  trustedProxyCount: number,
  underscores: boolean,
  requestId: string,
  arrivedAt: number,
  releaseId: string,
  host: string,
  readOnly: boolean,
  tls: boolean,
  h2: boolean,
): string[] {
  const out: string[] = [];
  let cookie: string | null = null;
  if (host !== '') out.push('host', host);
  let connection: string | null = null;
  let forwardedFor: string | null = null;
  let forwardedProto: string | null = null;
  const trusted = trustedProxyCount > 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    if (!underscores && name.indexOf('_') >= 0) continue;
    const lower = name.toLowerCase();
    if (h2) {
      if (name.charCodeAt(0) === 0x3a /* : */) continue;
      if (lower === 'cookie') {
        cookie = cookie === null ? raw[i + 1] : `${cookie}; ${raw[i + 1]}`;
        continue;
      }
    }
    if (DROP_REQUEST.has(lower)) {
      if (lower === 'connection') connection = connection === null ? raw[i + 1] : `${connection},${raw[i + 1]}`;
      else if (lower === 'x-forwarded-for') forwardedFor = forwardedFor === null ? raw[i + 1] : `${forwardedFor}, ${raw[i + 1]}`;
      else if (lower === 'x-forwarded-proto' && forwardedProto === null) forwardedProto = raw[i + 1];
      // RFC 7239 `Forwarded` is as easy to forge as X-Forwarded-For: only a trusted proxy's is kept.
      else if (lower === 'forwarded' && trusted) out.push(name, raw[i + 1]);
      continue;
    }
    out.push(name, raw[i + 1]);
  }
  if (connection !== null) dropConnectionTokens(out, connection);
  if (cookie !== null) out.push('cookie', cookie);
  out.push(
    'x-forwarded-for',
    forwardedFor === null ? socketAddress : `${forwardedFor}, ${socketAddress}`,
    'x-forwarded-proto',
    trusted && forwardedProto !== null ? forwardedProto : tls ? 'https' : 'http',
    'x-real-ip',
    clientIp,
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
    if (t !== '' && t !== 'close' && t !== 'keep-alive' && !NOT_HOP_BY_HOP.has(t)) names.add(t);
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

/**
 * True when the request carries more than one Host header, in any letter case (RFC 9112 § 3.2: a 400).
 * Node keeps only the first in `req.headers`, so an app behind us could read another one than we routed
 * by. A scan of the raw list without allocating: only 4-letter names are looked at closely.
 */
export function hasDuplicateHost(raw: readonly string[]): boolean {
  let seen = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    if (name.length !== 4) continue;
    if ((name.charCodeAt(0) | 0x20) !== 0x68 || (name.charCodeAt(1) | 0x20) !== 0x6f || (name.charCodeAt(2) | 0x20) !== 0x73 || (name.charCodeAt(3) | 0x20) !== 0x74) continue;
    if (seen) return true;
    seen = true;
  }
  return false;
}

/**
 * Characters a Host may hold (RFC 3986 authority without userinfo: a reg-name or IP literal, then a
 * port): letters, digits, `-._~!$&'()*+,;=%:[]`. Node's parser lets `/`, `\`, `@`, `#`, `?`, spaces and
 * bytes over 0x7f through in a Host header; with a wildcard host rule, `evil.example/.shop.test` would
 * reach shop as its Host, and an app building links from it would link to evil.example.
 */
const HOST_CHAR = new Uint8Array(128);
for (const c of "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:[]") HOST_CHAR[c.charCodeAt(0)] = 1;

/** True when `host` (a Host header or an absolute-form authority; '' when there is none) is a valid authority. */
export function isValidHost(host: string): boolean {
  for (let i = 0; i < host.length; i++) {
    const c = host.charCodeAt(i);
    if (c >= 128 || HOST_CHAR[c] === 0) return false;
  }
  return true;
}

/** `web.0`, for logs. */
export function instanceName(up: Upstream | null): string | null {
  return up === null ? null : `${up.process}.${up.index}`;
}
