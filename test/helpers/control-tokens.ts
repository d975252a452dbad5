/**
 * The users of the control API tests: three bearer tokens with their roles, and the call-context header
 * an authenticating proxy in front of the TCP control API would set.
 */
import { hashToken } from '../../src/api/auth.ts';

/** The call-context header the tests configure (`control.call_context_header`). */
export const CONTEXT_HEADER = 'X-Auth-Context';

/** Bearer tokens: alice is a deployer, vic a viewer, root an admin. */
export const TOKENS = { alice: 'alice-token-1', vic: 'viewer-token-1', root: 'admin-token-1' };

/** `control.tokens` for TOKENS, hashed as berth.yaml holds them. */
export function controlTokens(): Record<string, { hash: string; roles: string[] }> {
  return {
    alice: { hash: hashToken(TOKENS.alice), roles: ['deployer'] },
    vic: { hash: hashToken(TOKENS.vic), roles: ['viewer'] },
    root: { hash: hashToken(TOKENS.root), roles: ['admin'] },
  };
}

/** A call-context header value: the base64 of `value` as JSON, or of a string as it is. */
export function b64(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64');
}
