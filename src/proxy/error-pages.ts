/**
 * Responses the gateway makes itself: 404 (no route, no file), 429 (rate limit), 503 (maintenance,
 * read-only, admission, no generation yet or a failed start), 502/504 (forwarding), and the few others
 * static files need.
 *
 * A client that prefers JSON gets `{"error":{"status":502,"reason":"...","message"?:"..."}}`; anyone else
 * gets HTML: the app's own page when the caller names one (a regular file of at most 1 MiB whose real path
 * lies inside the pinned release, read once per release), else a small built-in page. Every built-in page has the same
 * design: a headline, one sentence, and the reason and request id in small print. Bodies never echo
 * request data; the only free text is the operator's mode message, which is HTML-escaped.
 *
 * An app page is a template: `{{status}}`, `{{title}}`, `{{message}}`, `{{reason}}`, `{{request_id}}` and
 * `{{retry_after}}` are replaced (HTML-escaped) in it, so a maintenance page can show the operator's
 * message. A page without `{{` is sent as read, byte for byte.
 */
import { resolve, sep } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Mode } from '../config/schema.ts';
import { readContained } from '../lib/contained-file.ts';

/** Why the gateway answered instead of the app; sent as `X-Berth-Reason`. */
export type ErrorReason =
  | 'no-route'
  | 'no-active-generation'
  | 'start-failed'
  | 'no-pool'
  | 'static-unavailable'
  | 'not-found'
  | 'method-not-allowed'
  | 'rate-limited'
  | 'maintenance'
  | 'read-only'
  | 'queue-full'
  | 'queue-timeout'
  | 'no-healthy-instance'
  | 'websocket-limit'
  | 'upstream-unreachable'
  | 'upstream-timeout'
  | 'bad-upstream-response'
  | 'body-too-large'
  | 'body-timeout'
  | 'buffer-failed'
  | 'bad-request'
  | 'stopping';

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  404: 'Not Found',
  408: 'Request Timeout',
  413: 'Content Too Large',
  405: 'Method Not Allowed',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** Headlines that say more than the status line would. */
const HEADLINES: Partial<Record<ErrorReason, string>> = {
  maintenance: 'Down for maintenance',
  'read-only': 'Read-only for now',
};

const EXPLANATIONS: Record<ErrorReason, string> = {
  'no-route': 'No application is configured for this address.',
  'no-active-generation': 'The application is starting. Please try again in a moment.',
  'start-failed': 'The application failed to start.',
  'no-pool': 'The application has no process to serve this address.',
  'static-unavailable': 'Static files are not served here.',
  'not-found': 'There is no file at this address.',
  'method-not-allowed': 'This address only serves files: use GET or HEAD.',
  'rate-limited': 'Too many requests from your address. Please slow down and try again shortly.',
  maintenance: 'The site is down for maintenance. Please check back soon.',
  'read-only': 'The site is read-only for the moment, so changes cannot be saved. Please try again later.',
  'queue-full': 'The application is busy. Please try again in a moment.',
  'queue-timeout': 'The application is busy. Please try again in a moment.',
  'no-healthy-instance': 'The application is not running right now. Please try again in a moment.',
  'websocket-limit': 'The application has too many open connections. Please try again in a moment.',
  'upstream-unreachable': 'The application could not be reached.',
  'upstream-timeout': 'The application did not answer in time.',
  'bad-upstream-response': 'The application sent an answer the gateway cannot relay.',
  'body-too-large': 'The request body is larger than this application accepts.',
  'body-timeout': 'The request body was not sent in time.',
  'buffer-failed': 'The gateway could not hold the request body. Please try again in a moment.',
  'bad-request': 'The request could not be understood.',
  stopping: 'The gateway is restarting. Please try again in a moment.',
};

/** How many releases' pages stay cached; a few generations live at once, so this is plenty. */
const PAGE_CACHE_SIZE = 32;
/**
 * The largest app page read: pages are held in memory (up to PAGE_CACHE_SIZE releases' worth), and a
 * release's content is the app's. A larger one is ignored, like a missing one: the built-in page is sent.
 */
const PAGE_MAX_BYTES = 1024 * 1024;

const HTML = 'text/html; charset=utf-8';
const JSON_TYPE = 'application/json';

/** An app page: a path inside the pinned release (`pages.error`, `pages.maintenance`, `pages.read_only`). */
export interface AppPage {
  readonly releaseDir: string;
  readonly file: string;
}

/**
 * The page for a gateway answer in an app's name: every 5xx (502, 504, a 503 from its queue or for no
 * generation) may use its `pages.error` template from `releaseDir`; anything else gets the built-in one.
 */
export function errorPage(status: number, file: string | null, releaseDir: string | null): AppPage | null {
  return status >= 500 && file !== null && releaseDir !== null ? { releaseDir, file } : null;
}

export interface ErrorResponse {
  status: number;
  reason: ErrorReason;
  /** Seconds, for `Retry-After`; null: none. */
  retryAfter: number | null;
  requestId: string | null;
  /** App page to prefer over the built-in HTML; null: built-in. */
  page: AppPage | null;
  /** Send `Connection: close` (the gateway is stopping). */
  close: boolean;
  /** The operator's words (a mode message): shown instead of the built-in explanation. */
  message?: string | null;
  /** Sent as `X-Berth-Mode` (maintenance and read-only answers). */
  mode?: Mode | null;
  /** Sent as `Allow` (405). */
  allow?: string | null;
}

/** A page read from a release: the bytes, and its pieces split at placeholders when it has any. */
interface LoadedPage {
  body: Buffer;
  /** Alternating literal text and placeholder names; null when the page has no placeholder. */
  parts: string[] | null;
}

const PLACEHOLDER = /\{\{\s*(status|title|message|reason|request_id|retry_after)\s*\}\}/;

export class ErrorPages {
  /** `<releaseDir>\0<file>` -> page, or null when the file cannot be read (so it is tried once). */
  #cache = new Map<string, LoadedPage | null>();

  /**
   * Sends a gateway-made error response. Synchronous unless an app page must first be read from disk.
   * Does nothing when the response is already under way or the client is gone.
   */
  send(req: IncomingMessage, res: ServerResponse, e: ErrorResponse): void {
    if (res.headersSent || res.destroyed) return;
    const json = prefersJson(req.headers.accept);
    if (json || e.page === null) {
      writeResponse(res, e, json ? jsonBody(e) : builtInHtml(e), json ? JSON_TYPE : HTML, req.method === 'HEAD');
      return;
    }
    const key = e.page.releaseDir + '\0' + e.page.file;
    const cached = this.#cache.get(key);
    if (cached !== undefined) {
      writeResponse(res, e, render(cached, e), HTML, req.method === 'HEAD');
      return;
    }
    void this.#load(key, e.page).then((page) => writeResponse(res, e, render(page, e), HTML, req.method === 'HEAD'));
  }

  /**
   * The same answer as a raw HTTP/1.1 response on a socket that left the HTTP server (a WebSocket
   * upgrade), followed by closing the socket.
   */
  sendRaw(req: IncomingMessage, socket: Socket, e: ErrorResponse): void {
    if (socket.destroyed || !socket.writable) return;
    const json = prefersJson(req.headers.accept);
    if (json || e.page === null) {
      writeRaw(socket, e, json ? jsonBody(e) : builtInHtml(e), json ? JSON_TYPE : HTML);
      return;
    }
    const key = e.page.releaseDir + '\0' + e.page.file;
    const cached = this.#cache.get(key);
    if (cached !== undefined) {
      writeRaw(socket, e, render(cached, e), HTML);
      return;
    }
    void this.#load(key, e.page).then((page) => writeRaw(socket, e, render(page, e), HTML));
  }

  async #load(key: string, page: AppPage): Promise<LoadedPage | null> {
    let loaded: LoadedPage | null = null;
    const root = resolve(page.releaseDir);
    const file = resolve(root, page.file);
    // The page path comes from config, but a `..` must still not reach outside the release, and neither
    // may a symlink in the release (a page linked to /etc/hostname): the file read must really lie inside.
    if (file.startsWith(root + sep)) {
      const body = await readContained(file, root, PAGE_MAX_BYTES).catch(() => null);
      if (body !== null) loaded = { body, parts: splitTemplate(body) };
    }
    if (this.#cache.size >= PAGE_CACHE_SIZE) this.#cache.delete(this.#cache.keys().next().value!);
    this.#cache.set(key, loaded);
    return loaded;
  }
}

function splitTemplate(body: Buffer): string[] | null {
  if (body.indexOf('{{') < 0) return null;
  const text = body.toString('utf8');
  // With one capture group, split() alternates literal text and placeholder names.
  const parts = text.split(new RegExp(PLACEHOLDER.source, 'g'));
  return parts.length === 1 ? null : parts;
}

function render(page: LoadedPage | null, e: ErrorResponse): Buffer {
  if (page === null) return builtInHtml(e);
  if (page.parts === null) return page.body;
  let out = '';
  const parts = page.parts;
  for (let i = 0; i < parts.length; i++) out += i % 2 === 0 ? parts[i] : escapeHtml(placeholder(parts[i], e));
  return Buffer.from(out);
}

function placeholder(name: string, e: ErrorResponse): string {
  switch (name) {
    case 'status':
      return String(e.status);
    case 'title':
      return headline(e);
    case 'message':
      return e.message ?? EXPLANATIONS[e.reason];
    case 'reason':
      return e.reason;
    case 'request_id':
      return e.requestId ?? '';
    default:
      return e.retryAfter === null ? '' : String(e.retryAfter);
  }
}

function headers(e: ErrorResponse, length: number, type: string): Record<string, string | number> {
  const h: Record<string, string | number> = {
    'content-type': type,
    'content-length': length,
    'cache-control': 'no-store',
    'x-berth-reason': e.reason,
  };
  if (e.retryAfter !== null) h['retry-after'] = e.retryAfter;
  if (e.mode) h['x-berth-mode'] = e.mode;
  if (e.allow) h['allow'] = e.allow;
  if (e.requestId !== null) h['x-request-id'] = e.requestId;
  if (e.close) h['connection'] = 'close';
  return h;
}

function writeResponse(res: ServerResponse, e: ErrorResponse, body: Buffer, type: string, head: boolean): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(e.status, headers(e, body.length, type));
  if (head) res.end();
  else res.end(body);
}

function writeRaw(socket: Socket, e: ErrorResponse, body: Buffer, type: string): void {
  if (socket.destroyed || !socket.writable) return;
  const h = headers(e, body.length, type);
  h['connection'] = 'close';
  let head = `HTTP/1.1 ${e.status} ${TITLES[e.status] ?? 'Error'}\r\n`;
  for (const name in h) head += `${name}: ${h[name]}\r\n`;
  socket.write(Buffer.concat([Buffer.from(head + '\r\n', 'latin1'), body]));
  // Closed once written, whether or not the client closes its side (upgraded sockets allow half-open).
  socket.destroySoon();
}

function jsonBody(e: ErrorResponse): Buffer {
  const error: { status: number; reason: ErrorReason; message?: string } = { status: e.status, reason: e.reason };
  if (e.message) error.message = e.message;
  return Buffer.from(JSON.stringify({ error }));
}

function headline(e: ErrorResponse): string {
  return HEADLINES[e.reason] ?? `${e.status} ${TITLES[e.status] ?? 'Error'}`;
}

function builtInHtml(e: ErrorResponse): Buffer {
  const title = escapeHtml(headline(e));
  const text = escapeHtml(e.message || EXPLANATIONS[e.reason]);
  return Buffer.from(
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">' +
      `<title>${title}</title><style>body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;color:#222}` +
      `h1{font-size:1.5rem}small{color:#777}</style></head><body><h1>${title}</h1><p>${text}</p>` +
      `<small>${e.status} · ${e.reason}${e.requestId ? ` · request ${escapeHtml(e.requestId)}` : ''}</small></body></html>\n`,
  );
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes text for HTML element content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
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
