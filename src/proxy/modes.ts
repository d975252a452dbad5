/**
 * Live modes (SPEC § Modes): `normal`, `maintenance` and `read-only`, per app, switched by rebuilding the
 * routing table. A request reads its app's mode from the table entry it matched on arrival, so a switch
 * applies from the next request on and never changes the answer to one already in flight.
 *
 * - maintenance: every request gets 503 with Retry-After and the maintenance page (the app's own
 *   `pages.maintenance` from the pinned release, else a built-in page showing the operator's message), or
 *   JSON when the client prefers it. Static routes are still served, so the page's CSS and images load.
 *   The app's instances keep running, so switching back is instant.
 * - read-only: writes get 503 with `X-Berth-Mode: read-only` and the read-only page (`pages.read_only`) or
 *   JSON. A write is any method that is not safe in the sense of RFC 9110 § 9.2.1 (so POST, PUT, PATCH,
 *   DELETE, and also WebDAV's and any other unknown method). Safe methods pass, and the proxy adds
 *   `X-Berth-Mode: read-only` to the request to the app and to its response, so the app can hide its
 *   write buttons. WebSocket upgrades (GET) pass.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { ModeState, AppEntry } from './router.ts';
import type { AppPage, ErrorPages, ErrorResponse } from './error-pages.ts';

/** Retry-After (seconds) in maintenance when the operator gave none. */
export const DEFAULT_MAINTENANCE_RETRY_AFTER_S = 60;

/** Methods that do not change anything (RFC 9110 § 9.2.1): they pass in read-only mode. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/** Whether a method is safe (passes in read-only mode). */
export function isSafeMethod(method: string | undefined): boolean {
  return method !== undefined && SAFE_METHODS.has(method);
}

/** Applies an app's mode to requests; one per proxy. */
export class Modes {
  #pages: ErrorPages;

  constructor(pages: ErrorPages) {
    this.#pages = pages;
  }

  /**
   * Whether the mode turns this request away: in maintenance everything but static routes, in read-only
   * every unsafe method (static routes included: they only read anyway).
   */
  refuses(mode: ModeState, method: string | undefined, isStatic: boolean): boolean {
    switch (mode.mode) {
      case 'normal':
        return false;
      case 'maintenance':
        return !isStatic;
      default:
        return !isSafeMethod(method);
    }
  }

  /** The status a refused request gets (always 503); for access logs. */
  readonly status = 503;

  /** Sends the mode's 503 (its page, the built-in page, or JSON). */
  send(req: IncomingMessage, res: ServerResponse, app: AppEntry, requestId: string, close: boolean): void {
    this.#pages.send(req, res, this.#response(app, requestId, close));
  }

  /** The same 503 on a socket that left the HTTP server (a WebSocket upgrade in maintenance). */
  sendRaw(req: IncomingMessage, socket: Socket, app: AppEntry, requestId: string): void {
    this.#pages.sendRaw(req, socket, this.#response(app, requestId, true));
  }

  #response(app: AppEntry, requestId: string, close: boolean): ErrorResponse {
    const m = app.mode;
    const maintenance = m.mode === 'maintenance';
    const file = maintenance ? app.config.pages.maintenance : app.config.pages.readOnly;
    // The page of the generation the request would have been pinned to: the release now serving.
    const gen = app.generation;
    const page: AppPage | null = file !== null && gen !== null ? { releaseDir: gen.releaseDir, file } : null;
    return {
      status: 503,
      reason: maintenance ? 'maintenance' : 'read-only',
      retryAfter: m.retryAfter ?? (maintenance ? DEFAULT_MAINTENANCE_RETRY_AFTER_S : null),
      requestId,
      page,
      close,
      message: m.message,
      mode: m.mode,
      allow: null,
    };
  }
}
