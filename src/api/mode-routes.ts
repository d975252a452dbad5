/**
 * `PUT /v1/apps/:app/mode` with `{mode, message?, retry_after?}`: switches an app's mode live (SPEC
 * § Modes). Audited as `mode`, with the caller, the body and the switch made.
 *
 * A body that is not the right shape (not an object, a wrong type, an unknown key, no mode) is a 400; a
 * well-formed one that asks for something impossible (an unknown mode, a negative or huge retry_after, a
 * message with `normal`) is a 422.
 */
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { MODES, type Mode } from '../config/schema.ts';
import type { Control } from './control.ts';
import type { RouteTable } from './request.ts';

/** Longest mode message: it is shown on a page, not stored as a document. */
export const MAX_MODE_MESSAGE = 500;
/** Largest retry_after, in seconds (a week). */
export const MAX_RETRY_AFTER_S = 7 * 86_400;

const KEYS = new Set(['mode', 'message', 'retry_after']);

export interface ModeRequest {
  mode: Mode;
  message: string | null;
  retryAfter: number | null;
}

/** Validates a mode request body; throws BERTH_E_BAD_REQUEST (400) or BERTH_E_UNPROCESSABLE (422). */
export function parseModeRequest(body: unknown): ModeRequest {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BerthError(ErrorCodes.badRequest, 'request body must be a JSON object: {"mode": ..., "message"?: ..., "retry_after"?: ...}');
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) {
    if (!KEYS.has(key)) throw new BerthError(ErrorCodes.badRequest, `unknown key "${key}": expected mode, message, retry_after`);
  }
  const mode = b.mode;
  if (mode === undefined || mode === null) throw new BerthError(ErrorCodes.badRequest, `"mode" is required: one of ${MODES.join(', ')}`);
  if (typeof mode !== 'string') throw new BerthError(ErrorCodes.badRequest, `"mode" must be a string: one of ${MODES.join(', ')}`);
  if (!(MODES as readonly string[]).includes(mode)) throw new BerthError(ErrorCodes.unprocessable, `unknown mode "${mode}": expected ${MODES.join(', ')}`);
  const message = b.message ?? null;
  if (message !== null && typeof message !== 'string') throw new BerthError(ErrorCodes.badRequest, '"message" must be a string');
  const retryAfter = b.retry_after ?? null;
  if (retryAfter !== null && typeof retryAfter !== 'number') throw new BerthError(ErrorCodes.badRequest, '"retry_after" must be a number of seconds');
  if (message !== null) {
    if (message.trim() === '') throw new BerthError(ErrorCodes.unprocessable, '"message" must not be empty (leave it out for the default text)');
    if (message.length > MAX_MODE_MESSAGE) throw new BerthError(ErrorCodes.unprocessable, `"message" is ${message.length} characters; at most ${MAX_MODE_MESSAGE}`);
  }
  if (retryAfter !== null && !(Number.isInteger(retryAfter) && retryAfter >= 0 && retryAfter <= MAX_RETRY_AFTER_S)) {
    throw new BerthError(ErrorCodes.unprocessable, `"retry_after" must be a whole number of seconds from 0 to ${MAX_RETRY_AFTER_S}, got ${retryAfter}`);
  }
  if (mode === 'normal' && (message !== null || retryAfter !== null)) {
    throw new BerthError(ErrorCodes.unprocessable, '"message" and "retry_after" only apply to maintenance and read-only');
  }
  return { mode: mode as Mode, message, retryAfter };
}

/** Registers the mode endpoint. */
export function registerModeRoutes(routes: RouteTable, gateway: Control): void {
  routes.add(
    'PUT',
    '/v1/apps/:app/mode',
    async (p, _url, body, _req, _res, ctx) => {
      const was = gateway.appStatus(p.app);
      if (!was) throw new BerthError(ErrorCodes.notFound, `no app named "${p.app}"`);
      const input = parseModeRequest(body);
      const state = await gateway.setMode(p.app, input.mode, { message: input.message, retryAfter: input.retryAfter }, { user: ctx.user });
      return {
        status: 200,
        body: { app: p.app, mode: state.mode, message: state.message, retryAfter: state.retryAfter, was: was.mode },
        audit: { target: `${was.mode} -> ${state.mode}` },
      };
    },
    { action: 'mode' },
  );
}
