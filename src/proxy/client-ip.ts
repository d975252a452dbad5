/**
 * Finding the client's address behind a chain of proxies.
 *
 * The chain is the `X-Forwarded-For` entries followed by the socket peer. With `trusted_proxy_count` N,
 * the N hops nearest to us are our own proxies, so the client is the entry N places left of the socket
 * peer: the rightmost one no trusted proxy vouched for. Entries further left were written by the client
 * (or by proxies it chose) and never win, however many it sends. When the chain is shorter than N + 1
 * the leftmost entry is the best we have.
 */
import type { Socket } from 'node:net';

/** What a unix-socket listener reports as the peer address (as nginx does: there is no IP). */
export const UNIX_PEER = 'unix:';

/**
 * The client IP for one request.
 * @param forwardedFor the `X-Forwarded-For` header (Node joins repeated headers with ", ")
 * @param socketAddress the socket peer's address, from `socketAddress()`
 * @param trustedProxyCount how many hops nearest to us are trusted proxies
 */
export function clientIp(forwardedFor: string | undefined, socketAddress: string, trustedProxyCount: number): string {
  if (trustedProxyCount <= 0 || forwardedFor === undefined || forwardedFor.length === 0) return socketAddress;
  // Walk entries right to left without splitting: `skip` counts the trusted hops still to pass over,
  // the socket peer being the first of them.
  let skip = trustedProxyCount - 1;
  let end = forwardedFor.length;
  let leftmost = socketAddress;
  while (end > 0) {
    const comma = forwardedFor.lastIndexOf(',', end - 1);
    const entry = forwardedFor.slice(comma + 1, end).trim();
    end = comma < 0 ? 0 : comma;
    if (entry.length === 0) continue;
    if (skip === 0) return normalizeAddress(entry);
    skip--;
    leftmost = entry;
  }
  return leftmost === socketAddress ? socketAddress : normalizeAddress(leftmost);
}

/** The peer address of a client socket, IPv4-mapped IPv6 shortened to IPv4; `unix:` for unix sockets. */
export function socketAddress(socket: Socket): string {
  const addr = socket.remoteAddress;
  if (addr === undefined) return UNIX_PEER;
  return addr.startsWith('::ffff:') && addr.indexOf('.') > 0 ? addr.slice(7) : addr;
}

/** `[::1]:443` -> `::1`, `1.2.3.4:80` -> `1.2.3.4`, `::ffff:1.2.3.4` -> `1.2.3.4`; anything else as is. */
function normalizeAddress(entry: string): string {
  if (entry.charCodeAt(0) === 0x5b /* [ */) {
    const close = entry.indexOf(']');
    return close > 0 ? entry.slice(1, close) : entry;
  }
  const colon = entry.indexOf(':');
  if (colon > 0 && entry.indexOf(':', colon + 1) < 0) return entry.slice(0, colon);
  if (entry.startsWith('::ffff:') && entry.indexOf('.') > 0) return entry.slice(7);
  return entry;
}
