/**
 * berth's TLS defaults, in one place: every secure context (the listener's own and each certificate's)
 * is built from `tlsContextOptions`, and every TLS listener from `tlsServerOptions`.
 *
 * - TLS 1.2 and 1.3 only. Ciphers stay Node's default list (`tls.DEFAULT_CIPHERS`: AEAD suites first,
 *   forward secrecy only), so a Node upgrade brings its fixes; the server's order wins.
 * - Client-initiated renegotiation is off (TLS 1.2 only has it; it is a CPU lever for a client).
 * - Session resumption: tickets, with keys held by `TicketKeys` and set on the listener's context,
 *   which is where OpenSSL looks them up whichever certificate's context SNI chose. One session id
 *   context for all contexts, so a session made under one context is accepted under the listener's.
 * - OCSP stapling: not done. See the note on `TLS_OCSP_STAPLING`.
 * - ALPN is the caller's (h2 + http/1.1 for `http2.createSecureServer`, http/1.1 for `https`).
 */
import { constants } from 'node:crypto';
import type { SecureContext, SecureContextOptions, TlsOptions } from 'node:tls';

export const TLS_MIN_VERSION = 'TLSv1.2';
/** Ties sessions to berth: a ticket or session id from another program using the same keys is not resumed. */
export const TLS_SESSION_ID_CONTEXT = 'berth';
/** Lifetime of a session ticket, in seconds: nginx's and Node's 5 minutes. */
export const TLS_SESSION_TIMEOUT_SECONDS = 300;
/**
 * How often the ticket key is replaced (as Caddy does). Node holds one key at a time, so tickets issued
 * before a rotation make a full handshake once; with 5-minute tickets that costs a client at most one
 * handshake a rotation, and bounds what a stolen key can decrypt.
 */
export const TLS_TICKET_KEY_ROTATION_MS = 12 * 60 * 60 * 1000;
/** A client that has not finished its handshake by then is dropped (Node's default is 120 s). */
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * Not stapled in this version. Let's Encrypt, the CA ACME points at by default, stopped OCSP in 2025 and
 * its certificates carry no responder; browsers no longer fetch OCSP (CRLite, CRLSets), so stapling would
 * buy little and cost an outbound fetch and cache per certificate. A certificate that demands stapling
 * (the OCSP Must-Staple extension) is reported at load, because clients that honour it would refuse it.
 */
export const TLS_OCSP_STAPLING = false;

/** Options for every secure context berth makes: the listener's and each certificate's. */
export function tlsContextOptions(ticketKeys?: Buffer): SecureContextOptions {
  const options: SecureContextOptions = {
    minVersion: TLS_MIN_VERSION,
    honorCipherOrder: true,
    secureOptions: constants.SSL_OP_NO_RENEGOTIATION,
    sessionIdContext: TLS_SESSION_ID_CONTEXT,
    sessionTimeout: TLS_SESSION_TIMEOUT_SECONDS,
  };
  if (ticketKeys) options.ticketKeys = ticketKeys;
  return options;
}

/** The SNI callback a listener calls per handshake: a context, or null to refuse (no certificate for the name). */
export type SniCallback = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void;

/**
 * Options for `tls.createServer`, `https.createServer` or `http2.createSecureServer`; the caller adds
 * ALPN (and `allowHTTP1`). The listener's own context carries no certificate until
 * `CertificateStore.attach` gives it the default one.
 */
export function tlsServerOptions(SNICallback: SniCallback, ticketKeys: Buffer): TlsOptions {
  return { ...tlsContextOptions(ticketKeys), SNICallback, handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS };
}
