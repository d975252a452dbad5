/**
 * Responses the gateway makes itself: 404 for no route, 503 from admission, 502/504 from forwarding.
 *
 * A client that prefers JSON gets `{"error":{"status":502,"reason":"..."}}`; anyone else gets HTML: the
 * app's own error page (`pages.error`, a file inside the pinned release, read once per release) for
 * 502/504 when it has one, else a small built-in page. Bodies never echo request data.
 */
import { readFile } from 'node:fs/promises';
import { resolve, sep } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Why the gateway answered instead of the app; sent as `X-Berth-Reason`. */
export type ErrorReason =
  | 'no-route'
  | 'no-active-generation'
  | 'no-pool'
  | 'static-unavailable'
  | 'queue-full'
  | 'queue-timeout'
  | 'upstream-unreachable'
  | 'upstream-timeout'
  | 'bad-request';

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  404: 'Not Found',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

const EXPLANATIONS: Record<ErrorReason, string> = {
  'no-route': 'No application is configured for this address.',
  'no-active-generation': 'The application is starting. Please try again in a moment.',
  'no-pool': 'The application has no process to serve this address.',
  'static-unavailable': 'Static files are not served here yet.',
  'queue-full': 'The application is busy. Please try again in a moment.',
  'queue-timeout': 'The application is busy. Please try again in a moment.',
  'upstream-unreachable': 'The application could not be reached.',
  'upstream-timeout': 'The application did not answer in time.',
  'bad-request': 'The request could not be understood.',
};

/** How many releases' pages stay cached; a few generations live at once, so this is plenty. */
const PAGE_CACHE_SIZE = 32;

/** The app page to use for a 502/504: a path inside the pinned release. */
export interface AppPage {
  readonly releaseDir: string;
  readonly file: string;
}

export interface ErrorResponse {
  status: number;
  reason: ErrorReason;
  /** Seconds, for `Retry-After`; null: none. */
  retryAfter: number | null;
  requestId: string | null;
  /** App error page to prefer over the built-in HTML; null: built-in. */
  page: AppPage | null;
  /** Send `Connection: close` (the gateway is stopping). */
  close: boolean;
}

export class ErrorPages {
  /** `<releaseDir>\0<file>` -> page body, or null when the file cannot be read (so it is tried once). */
  #cache = new Map<string, Buffer | null>();

  /**
   * Sends a gateway-made error response. Synchronous unless an app page must first be read from disk.
   * Does nothing when the response is already under way or the client is gone.
   */
  send(req: IncomingMessage, res: ServerResponse, e: ErrorResponse): void {
    if (res.headersSent || res.destroyed) return;
    const json = prefersJson(req.headers.accept);
    if (json || e.page === null) {
      write(res, e, json ? jsonBody(e) : builtInHtml(e), json ? 'application/json' : 'text/html; charset=utf-8');
      return;
    }
    const key = e.page.releaseDir + '\0' + e.page.file;
    const cached = this.#cache.get(key);
    if (cached !== undefined) {
      write(res, e, cached ?? builtInHtml(e), 'text/html; charset=utf-8');
      return;
    }
    void this.#load(key, e.page).then((body) => write(res, e, body ?? builtInHtml(e), 'text/html; charset=utf-8'));
  }

  async #load(key: string, page: AppPage): Promise<Buffer | null> {
    let body: Buffer | null = null;
    const root = resolve(page.releaseDir);
    const file = resolve(root, page.file);
    // The page path comes from config, but a `..` must still not reach outside the release.
    if (file.startsWith(root + sep)) body = await readFile(file).catch(() => null);
    if (this.#cache.size >= PAGE_CACHE_SIZE) this.#cache.delete(this.#cache.keys().next().value!);
    this.#cache.set(key, body);
    return body;
  }
}

function write(res: ServerResponse, e: ErrorResponse, body: Buffer, type: string): void {
  if (res.headersSent || res.destroyed) return;
  const headers: Record<string, string | number> = {
    'content-type': type,
    'content-length': body.length,
    'cache-control': 'no-store',
    'x-berth-reason': e.reason,
  };
  if (e.retryAfter !== null) headers['retry-after'] = e.retryAfter;
  if (e.requestId !== null) headers['x-request-id'] = e.requestId;
  if (e.close) headers['connection'] = 'close';
  res.writeHead(e.status, headers);
  res.end(body);
}

function jsonBody(e: ErrorResponse): Buffer {
  return Buffer.from(JSON.stringify({ error: { status: e.status, reason: e.reason } }));
}

function builtInHtml(e: ErrorResponse): Buffer {
  const title = `${e.status} ${TITLES[e.status] ?? 'Error'}`;
  return Buffer.from(
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">' +
      `<title>${title}</title><style>body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;color:#222}` +
      `h1{font-size:1.5rem}small{color:#777}</style></head><body><h1>${title}</h1><p>${EXPLANATIONS[e.reason]}</p>` +
      `<small>${e.reason}${e.requestId ? ` · request ${e.requestId}` : ''}</small></body></html>\n`,
  );
}

/**
 * Whether an Accept header prefers JSON over HTML: JSON (`application/json` or `*+json`) has a higher
 * q-value than HTML, or the same q-value and comes first. No Accept, or `*\/*` alone, means HTML.
 */
export function prefersJson(accept: string | undefined): boolean {
  if (accept === undefined || accept.indexOf('json') < 0) return false;
  let jsonQ = -1;
  let jsonAt = -1;
  let htmlQ = -1;
  let htmlAt = -1;
  const parts = accept.split(',');
  for (let i = 0; i < parts.length; i++) {
    const [type, ...params] = parts[i].split(';');
    const t = type.trim().toLowerCase();
    let q = 1;
    for (const p of params) {
      const [k, v] = p.split('=');
      if (k.trim() === 'q') q = Number(v) || 0;
    }
    if (t === 'application/json' || t.endsWith('+json')) {
      if (q > jsonQ) [jsonQ, jsonAt] = [q, i];
    } else if (t === 'text/html' || t === 'application/xhtml+xml') {
      if (q > htmlQ) [htmlQ, htmlAt] = [q, i];
    }
  }
  if (jsonQ <= 0) return false;
  if (jsonQ !== htmlQ) return jsonQ > htmlQ;
  return jsonAt < htmlAt;
}
