/**
 * What HTTPS adds to an app's answers (SPEC § Request handling, step 3a): the 308 redirects of
 * `https_redirect` and `canonical_host`, the `Strict-Transport-Security` header of `hsts`, and the
 * HTTP-01 challenge answer. The decisions are made in resolver.ts, for plain requests and upgrades alike;
 * the writers are here.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { AppConfig, HstsConfig } from '../config/schema.ts';

/** Where ACME CAs (and an app's own ACME client) fetch HTTP-01 answers: never redirected. */
import { ACME_CHALLENGE_PREFIX } from '../tls/acme/challenge-path.ts';
export const ACME_CHALLENGE_PATH = ACME_CHALLENGE_PREFIX;

/** What the resolver asks of the ACME manager on cleartext listeners (tls/acme/acme-manager.ts). */
export interface HttpChallengeAnswerer {
  answerHttp(path: string): string | null;
}

/** The value is built once per `hsts` block (config objects are replaced, never changed, on reload). */
const hstsValues = new WeakMap<HstsConfig, string>();

/** `Strict-Transport-Security` for the app's responses over TLS; null: the app sets none. */
export function hstsHeader(app: AppConfig): string | null {
  const hsts = app.hsts;
  if (hsts === null) return null;
  let value = hstsValues.get(hsts);
  if (value === undefined) {
    value = `max-age=${hsts.maxAgeS}${hsts.includeSubdomains ? '; includeSubDomains' : ''}${hsts.preload ? '; preload' : ''}`;
    hstsValues.set(hsts, value);
  }
  return value;
}

/**
 * Where a request for `app` must go instead, or null to serve it here. `host` is the Host it was routed
 * by (port kept), `path` its origin-form target (query kept). `httpsPort`: the first TLS listener's
 * port (null: none, so no https redirect). One redirect does both: http://www.shop.test/x with
 * `https_redirect` and `canonical_host: shop.test` goes straight to https://shop.test/x.
 */
export function redirectTarget(app: AppConfig, tls: boolean, host: string, path: string, httpsPort: number | null): string | null {
  const canonical = app.canonicalHost;
  const toHttps = !tls && app.httpsRedirect && httpsPort !== null;
  if (canonical === null && !toHttps) return null;
  // An ACME CA validating the app's own client, or a renewal of one of its other names, must reach it as asked.
  if (path.startsWith(ACME_CHALLENGE_PATH)) return null;
  const { name, port } = splitHost(host);
  // No Host (HTTP/1.0) to a catch-all app: nowhere to send it, so it is served here.
  if (name === '') return null;
  const moveHost = canonical !== null && name !== canonical;
  if (!moveHost && !toHttps) return null;
  const target = moveHost ? canonical : name;
  if (toHttps) return `https://${target}${httpsPort === 443 ? '' : `:${httpsPort}`}${path}`;
  return `${tls ? 'https' : 'http'}://${target}${port}${path}`;
}

/** The host name (lower case, no trailing dot) and the `:port` suffix ('' when none) of a Host value. */
function splitHost(host: string): { name: string; port: string } {
  let end = host.length;
  // An IPv6 literal keeps its brackets; its colons are not a port.
  const close = host.lastIndexOf(']');
  const colon = host.lastIndexOf(':');
  if (colon > close) end = colon;
  let name = host.slice(0, end).toLowerCase();
  if (name.endsWith('.')) name = name.slice(0, -1);
  return { name, port: host.slice(end) };
}

/** The 308 itself: the method and body are kept by the client (RFC 9110 § 15.4.9). */
export function sendRedirect(req: IncomingMessage, res: ServerResponse, location: string, requestId: string, close: boolean): void {
  if (res.headersSent) return;
  const body = Buffer.from(`Redirecting to ${location}\n`);
  const headers: Record<string, string | number> = {
    location,
    'content-type': 'text/plain; charset=utf-8',
    'content-length': body.length,
    'x-request-id': requestId,
  };
  if (close) headers['connection'] = 'close';
  res.writeHead(308, headers);
  if (req.method === 'HEAD') res.end();
  else res.end(body);
}

/** The same 308 on a WebSocket upgrade's socket (it left the HTTP server), which then closes. */
export function sendRedirectRaw(socket: Socket, location: string, requestId: string): void {
  if (socket.destroyed || !socket.writable) return;
  const body = `Redirecting to ${location}\n`;
  socket.write(
    `HTTP/1.1 308 Permanent Redirect\r\nlocation: ${location}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
  );
  socket.destroySoon();
}

/** The HTTP-01 key authorization (RFC 8555 § 8.3: 200, the bytes alone). */
export function sendChallengeAnswer(req: IncomingMessage, res: ServerResponse, answer: string): void {
  const body = Buffer.from(answer);
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length, 'cache-control': 'no-store' });
  if (req.method === 'HEAD') res.end();
  else res.end(body);
}
