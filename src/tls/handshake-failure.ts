/**
 * Failed TLS handshakes, counted by reason (`berth_tls_handshake_failures_total{reason}`) and logged at
 * debug: scanners and old clients fail handshakes all day, so a line each at info would be a flood, but
 * a count by reason shows a misconfiguration (every client refused for `unknown-name`) at once.
 */
import { channel } from 'node:diagnostics_channel';

export type HandshakeFailureReason = 'protocol-version' | 'unknown-name' | 'no-application-protocol' | 'no-shared-cipher' | 'timeout' | 'reset' | 'other';

/** Every reason, so the metric lists each (0 included) from the start. */
export const HANDSHAKE_FAILURE_REASONS: readonly HandshakeFailureReason[] = ['protocol-version', 'unknown-name', 'no-application-protocol', 'no-shared-cipher', 'timeout', 'reset', 'other'];

/** One `{ reason }` per failed handshake on a TLS listener; published only while someone subscribes. */
export const handshakeFailureChannel = channel('berth:tls:handshake-failure');

/** Set on a socket whose SNI found no certificate (handshake-router.ts): its failure is `unknown-name`. */
export const NO_CERTIFICATE = Symbol('berth.noCertificate');

/** Why a handshake failed, from node's error (and whether SNI found no certificate for it). */
export function handshakeFailureReason(err: NodeJS.ErrnoException, noCertificate: boolean): HandshakeFailureReason {
  const code = err.code ?? '';
  const text = `${code} ${err.message}`;
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT' || /handshake timeout/i.test(text)) return 'timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE') return 'reset';
  if (noCertificate) return 'unknown-name';
  if (/UNSUPPORTED_PROTOCOL|WRONG_VERSION_NUMBER|VERSION_TOO_LOW|PROTOCOL_VERSION|NO_PROTOCOLS_AVAILABLE/i.test(text)) return 'protocol-version';
  if (/NO_APPLICATION_PROTOCOL|no application protocol/i.test(text)) return 'no-application-protocol';
  if (/NO_SHARED_CIPHER|NO_SUITABLE_SIGNATURE|no shared cipher/i.test(text)) return 'no-shared-cipher';
  return 'other';
}
