/**
 * Static routes (`{ path: /static, static: public, cache: immutable, cors: "*" }`): files from a directory
 * of the release the request is pinned to, so a page and its assets come from one release even while a
 * deploy switches the app.
 *
 * - Validators: a strong ETag from size and mtime (per encoding) and Last-Modified; If-None-Match,
 *   If-Modified-Since, If-Match, If-Unmodified-Since and If-Range are honoured (RFC 9110 § 13).
 * - Range: one `bytes=` range gives 206 with Content-Range, an unsatisfiable one 416. Several ranges are
 *   answered with the whole file (200), which RFC 9110 § 14.2 allows and which spares us multipart bodies.
 * - Precompressed siblings: `app.css.br` or `app.css.gz` next to `app.css` is sent, with Content-Encoding,
 *   when the client accepts that encoding (br preferred). Every file answer carries `Vary: Accept-Encoding`.
 * - `cache: immutable` sends `Cache-Control: public, max-age=31536000, immutable`; another `cache` value is
 *   sent as written; without one, `public, max-age=0, must-revalidate`, so browsers revalidate (cheaply,
 *   with 304s) instead of guessing a freshness lifetime from Last-Modified and keeping old assets after a
 *   deploy.
 * - Index files: a path ending in `/` serves that directory's `index.html`; a directory without the slash
 *   is redirected (301) to the slash, so relative links in the index resolve. There are no listings. The
 *   Location is the request path with runs of `/` collapsed, so `//evil.example` (which a browser reads
 *   as another host) can never come out; a Location that would still start with `//` or `/\` gives 404.
 * - Safety: every request path is decoded once, and any `.` or `..` segment, encoded slash or backslash,
 *   NUL, malformed escape or dot-file segment (except `.well-known`) gives 404. The static directory's
 *   real path must lie inside the release's real path (or the app's `shared` dir, for a shared entry),
 *   checked once per release and route and cached. Each file is judged on the file actually opened
 *   (src/lib/contained-file.ts: its real path, from the open descriptor, must lie inside the static
 *   directory), so a symlink leaving it, even one swapped in after a check, gives 404. Only regular files
 *   are opened, so a FIFO or device node can never block a request or be touched.
 * - Files are streamed (fs.createReadStream), never read whole into memory.
 */
import { close, createReadStream, type ReadStream } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { channel } from 'node:diagnostics_channel';
import { basename, dirname, join, extname } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Stats } from 'node:fs';
import type { Mode, RouteConfig } from '../config/schema.ts';
import type { GenerationView } from '../supervisor/types.ts';
import type { ErrorPages, ErrorReason } from './error-pages.ts';
import { openContained, openContainedSync } from '../lib/contained-file.ts';

/** One `{ file }` per file opened for a response; published only while someone subscribes. */
export const staticChannel = channel('berth:proxy:static');

export interface StaticFileEvent {
  /** The real path of the file opened. */
  readonly file: string;
}

export const IMMUTABLE_CACHE_CONTROL = 'public, max-age=31536000, immutable';
export const DEFAULT_STATIC_CACHE_CONTROL = 'public, max-age=0, must-revalidate';
const INDEX_FILE = 'index.html';
/** Real paths of static roots kept; bounded by generations x static routes, so this is plenty. */
const ROOT_CACHE_SIZE = 64;
/** Retry-After (seconds) when the gateway is out of file descriptors or similar. */
const BUSY_RETRY_AFTER_S = 1;

/** File extensions the gateway knows; anything else is application/octet-stream. */
const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.cjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.webmanifest': 'application/manifest+json',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.csv': 'text/csv; charset=utf-8',
  '.xml': 'application/xml',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.avif': 'image/avif',
  '.ico': 'image/x-icon',
  '.bmp': 'image/bmp',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.otf': 'font/otf',
  '.eot': 'application/vnd.ms-fontobject',
  '.wasm': 'application/wasm',
  '.pdf': 'application/pdf',
  '.zip': 'application/zip',
  '.gz': 'application/gzip',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
  '.wav': 'audio/wav',
};

/** The Content-Type for a file name, from the built-in extension map. */
export function contentType(file: string): string {
  return CONTENT_TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream';
}

/** One static request, as the proxy hands it over. */
export interface StaticRequest {
  req: IncomingMessage;
  res: ServerResponse;
  route: RouteConfig;
  /** The generation the request is pinned to: files come from its release. */
  generation: GenerationView;
  /** Origin-form request target, query included. */
  path: string;
  requestId: string;
  /** The app's mode, sent as X-Berth-Mode when it is not `normal`. */
  mode: Mode;
  /** Send `Connection: close` (the gateway is stopping). */
  close: boolean;
}

/** A file chosen for a response, open: whoever ends the response closes `fd`. */
interface Chosen {
  /** Real path of the file opened. */
  file: string;
  fd: number;
  /** The file the client asked for: its name gives the Content-Type, whatever the encoding. */
  asked: string;
  stats: Stats;
  encoding: 'br' | 'gzip' | null;
}

type Found = { kind: 'file'; file: string; fd: number; stats: Stats } | { kind: 'redirect' } | { kind: 'missing' } | { kind: 'busy' };

const MISSING: Found = { kind: 'missing' };
const REDIRECT: Found = { kind: 'redirect' };
const BUSY: Found = { kind: 'busy' };

/** The static file server of one proxy. */
export class Static {
  #pages: ErrorPages;
  /** `<releaseDir>\0<static dir>` -> its real path, or null when it does not exist or leaves the release. */
  #roots = new Map<string, string | null>();

  constructor(pages: ErrorPages) {
    this.#pages = pages;
  }

  /**
   * Answers one request from the pinned release's static directory. Resolves with the status sent (499
   * when the client went away first) once the response is over, so the caller can log it.
   */
  async serve(r: StaticRequest): Promise<number> {
    try {
      return await this.#serve(r);
    } catch {
      // Nothing here should throw; if something does, the client gets a cut connection, not a hang.
      r.res.destroy();
      return 500;
    }
  }

  async #serve(r: StaticRequest): Promise<number> {
    const { req, res } = r;
    const method = req.method;
    if (method !== 'GET' && method !== 'HEAD') {
      if (method === 'OPTIONS') return this.#options(r);
      return this.#error(r, 405, 'method-not-allowed', null);
    }
    const found = await this.#find(r);
    if (found.kind === 'missing') return this.#error(r, 404, 'not-found', null);
    if (found.kind === 'busy') return this.#error(r, 503, 'static-unavailable', BUSY_RETRY_AFTER_S);
    if (found.kind === 'redirect') return this.#redirect(r);
    const chosen = this.#encoding(r, found.file, found.fd, found.stats);
    try {
      return this.#send(r, chosen);
    } catch (err) {
      close(chosen.fd, noop);
      throw err;
    }
  }

  /** The file for the request, opened, or why there is none. Never throws. */
  async #find(r: StaticRequest): Promise<Found> {
    const rel = relativePath(r.path, r.route.path);
    if (rel === null) return MISSING;
    const root = await this.#root(r.generation.releaseDir, r.route.static!);
    if (root === null) return MISSING;
    const roots = [root];
    try {
      let found = openContainedSync(rel.path === '' ? root : join(root, rel.path), roots);
      if (found.kind === 'directory') {
        if (!rel.dir) return REDIRECT;
        found = openContainedSync(join(found.real, INDEX_FILE), roots);
      } else if (found.kind === 'file' && rel.dir) {
        // `file.css/` names a directory that is not there.
        close(found.fd, noop);
        return MISSING;
      }
      return found.kind === 'file' ? { kind: 'file', file: found.real, fd: found.fd, stats: found.stats } : MISSING;
    } catch (err) {
      return isBusy(err) ? BUSY : MISSING;
    }
  }

  /**
   * The real path of a release's static directory, cached (releases do not move); null when it does not
   * exist, is not a directory, or resolves outside the release (a symlink to /etc), except into the
   * app's `shared` dir, where berth's own links for `shared` entries lead.
   */
  async #root(releaseDir: string, dir: string): Promise<string | null> {
    const key = releaseDir + '\0' + dir;
    const cached = this.#roots.get(key);
    if (cached !== undefined) return cached;
    const real = await containedRoot(releaseDir, dir);
    if (this.#roots.size >= ROOT_CACHE_SIZE) this.#roots.delete(this.#roots.keys().next().value!);
    this.#roots.set(key, real);
    return real;
  }

  /** A precompressed sibling the client accepts (br first), else the file itself. */
  #encoding(r: StaticRequest, file: string, fd: number, stats: Stats): Chosen {
    const accept = r.req.headers['accept-encoding'];
    if (accept === undefined) return { file, fd, asked: file, stats, encoding: null };
    // Cached by #find, which ran first for this request.
    const root = this.#roots.get(r.generation.releaseDir + '\0' + r.route.static!);
    if (!root) return { file, fd, asked: file, stats, encoding: null };
    for (const [encoding, suffix] of SIBLINGS) {
      if (!acceptsEncoding(accept, encoding)) continue;
      try {
        const sibling = openContainedSync(file + suffix, [root]);
        if (sibling.kind === 'file') {
          close(fd, noop);
          return { file: sibling.real, fd: sibling.fd, asked: file, stats: sibling.stats, encoding };
        }
      } catch {
        // No usable sibling: try the next encoding.
      }
    }
    return { file, fd, asked: file, stats, encoding: null };
  }

  #send(r: StaticRequest, chosen: Chosen): Promise<number> {
    const { req, res, route } = r;
    const { stats } = chosen;
    const size = stats.size;
    const mtime = Math.floor(stats.mtimeMs / 1000) * 1000;
    const etag = `"${size.toString(16)}-${Math.floor(stats.mtimeMs).toString(16)}${chosen.encoding === null ? '' : chosen.encoding === 'br' ? '-br' : '-gz'}"`;
    const headers: Record<string, string | number> = {
      etag,
      'last-modified': new Date(mtime).toUTCString(),
      'cache-control': route.cache === null ? DEFAULT_STATIC_CACHE_CONTROL : route.cache === 'immutable' ? IMMUTABLE_CACHE_CONTROL : route.cache,
      vary: 'Accept-Encoding',
      'x-request-id': r.requestId,
    };
    if (route.cors !== null) headers['access-control-allow-origin'] = route.cors;
    if (r.mode !== 'normal') headers['x-berth-mode'] = r.mode;
    if (r.close) headers['connection'] = 'close';

    const h = req.headers;
    const ifMatch = h['if-match'];
    const ifUnmodified = h['if-unmodified-since'];
    if (ifMatch !== undefined ? !matchesEtag(ifMatch, etag, true) : ifUnmodified !== undefined && isAfter(mtime, ifUnmodified)) {
      close(chosen.fd, noop);
      return finish(res, 412, headers);
    }
    const ifNoneMatch = h['if-none-match'];
    const ifModified = h['if-modified-since'];
    if (ifNoneMatch !== undefined ? matchesEtag(ifNoneMatch, etag, false) : ifModified !== undefined && !isAfter(mtime, ifModified, true)) {
      close(chosen.fd, noop);
      return finish(res, 304, headers);
    }

    headers['content-type'] = contentType(chosen.asked);
    headers['accept-ranges'] = 'bytes';
    headers['x-content-type-options'] = 'nosniff';
    if (chosen.encoding !== null) headers['content-encoding'] = chosen.encoding;

    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = h.range;
    if (range !== undefined && req.method === 'GET' && ifRangeHolds(h['if-range'] as string | undefined, etag, mtime)) {
      const parsed = parseRange(range, size);
      if (parsed === 'unsatisfiable') {
        headers['content-range'] = `bytes */${size}`;
        headers['content-length'] = 0;
        close(chosen.fd, noop);
        return finish(res, 416, headers);
      }
      if (parsed !== null) {
        start = parsed.start;
        end = parsed.end;
        status = 206;
        headers['content-range'] = `bytes ${start}-${end}/${size}`;
      }
    }
    headers['content-length'] = end - start + 1;
    // The client may have gone while the file was looked up: then there is nobody to stream to.
    if (res.destroyed) {
      close(chosen.fd, noop);
      return Promise.resolve(499);
    }
    res.writeHead(status, headers);
    if (req.method === 'HEAD' || size === 0) {
      close(chosen.fd, noop);
      res.end();
      return closed(res, status);
    }
    if (staticChannel.hasSubscribers) staticChannel.publish({ file: chosen.file } satisfies StaticFileEvent);
    // Read from the descriptor that was checked, never by path again; the stream closes it.
    const stream = createReadStream(chosen.file, { fd: chosen.fd, start, end });
    stream.on('error', onStreamError);
    (stream as StreamWithResponse).res = res;
    res.once('close', () => stream.destroy());
    stream.pipe(res);
    return closed(res, status);
  }

  #options(r: StaticRequest): Promise<number> {
    const headers: Record<string, string | number> = { allow: ALLOW, 'x-request-id': r.requestId };
    if (r.route.cors !== null) {
      headers['access-control-allow-origin'] = r.route.cors;
      headers['access-control-allow-methods'] = ALLOW;
      const asked = r.req.headers['access-control-request-headers'];
      if (asked !== undefined) headers['access-control-allow-headers'] = asked;
      headers['access-control-max-age'] = 86_400;
    }
    if (r.close) headers['connection'] = 'close';
    return finish(r.res, 204, headers);
  }

  #redirect(r: StaticRequest): Promise<number> {
    const q = r.path.indexOf('?');
    // `//sub` is the directory `sub` here, but a Location of `//sub/` is the host `sub` to a browser.
    const path = (q < 0 ? r.path : r.path.slice(0, q)).replace(/\/{2,}/g, '/');
    if (!isLocalPath(path)) return this.#error(r, 404, 'not-found', null);
    const location = q < 0 ? path + '/' : path + '/' + r.path.slice(q);
    const headers: Record<string, string | number> = { location, 'content-length': 0, 'cache-control': 'no-cache', 'x-request-id': r.requestId };
    if (r.close) headers['connection'] = 'close';
    return finish(r.res, 301, headers);
  }

  #error(r: StaticRequest, status: number, reason: ErrorReason, retryAfter: number | null): Promise<number> {
    this.#pages.send(r.req, r.res, {
      status,
      reason,
      retryAfter,
      requestId: r.requestId,
      page: null,
      close: r.close,
      mode: r.mode === 'normal' ? null : r.mode,
      allow: status === 405 ? ALLOW : null,
    });
    return closed(r.res, status);
  }
}

const ALLOW = 'GET, HEAD, OPTIONS';
const SIBLINGS: readonly (readonly ['br' | 'gzip', string])[] = [
  ['br', '.br'],
  ['gzip', '.gz'],
];

interface StreamWithResponse extends ReadStream {
  res?: ServerResponse;
}

/** A read error mid-response: the only honest signal left is to cut the connection. */
function onStreamError(this: StreamWithResponse): void {
  this.res?.destroy();
}

function finish(res: ServerResponse, status: number, headers: Record<string, string | number>): Promise<number> {
  if (status === 304 || status === 204) {
    // Neither may carry Content-Length (RFC 9110 § 8.6); 304 keeps only the validators and caching headers.
    delete headers['content-length'];
  } else headers['content-length'] ??= 0;
  res.writeHead(status, headers);
  res.end();
  return closed(res, status);
}

/** Resolves with `status` once the response is over, or 499 when the client left before it was sent. */
function closed(res: ServerResponse, status: number): Promise<number> {
  if (res.writableFinished) return Promise.resolve(status);
  // Already closed: 'close' will not come again.
  if (res.destroyed) return Promise.resolve(499);
  return new Promise((resolve) => res.once('close', () => resolve(res.writableFinished ? status : 499)));
}

function noop(): void {}

/** A path that a browser reads as a path on this host: one `/`, then not another `/` or a `\`. */
function isLocalPath(path: string): boolean {
  if (path.charCodeAt(0) !== 0x2f /* / */) return false;
  const c = path.charCodeAt(1);
  return c !== 0x2f && c !== 0x5c /* \ */;
}

/**
 * The real path of `<releaseDir>/<dir>` when it is a directory inside the release (or inside the app's
 * `shared` dir, `<releaseDir>/../../shared`, where berth links `shared` entries); else null.
 */
async function containedRoot(releaseDir: string, dir: string): Promise<string | null> {
  try {
    const release = await realpath(releaseDir);
    const found = await openContained(join(release, dir), [release, ...(await sharedDirOf(release))]);
    return found.kind === 'directory' ? found.real : null;
  } catch {
    return null;
  }
}

/** The app's real `shared` dir for a release at `<appDir>/releases/<id>`, when there is one. */
async function sharedDirOf(release: string): Promise<string[]> {
  const releases = dirname(release);
  if (basename(releases) !== 'releases') return [];
  return realpath(join(dirname(releases), 'shared')).then(
    (p) => [p],
    () => [],
  );
}

function isBusy(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EMFILE' || code === 'ENFILE' || code === 'EAGAIN';
}

/**
 * The path below the route's prefix, decoded and checked segment by segment; null for anything that
 * could step outside the directory or is not a plain name. `dir`: it ends with `/` (or is the route
 * itself with a trailing slash), so an index is wanted.
 */
export function relativePath(target: string, prefix: string): { path: string; dir: boolean } | null {
  let end = target.indexOf('?');
  if (end < 0) end = target.length;
  const hash = target.indexOf('#');
  if (hash >= 0 && hash < end) end = hash;
  const raw = target.slice(prefix === '/' ? 0 : prefix.length, end);
  if (raw === '') return { path: '', dir: false };
  if (raw.charCodeAt(0) !== 0x2f /* / */) return null;
  // Encoded separators would let one decoded segment span two: refuse them before decoding.
  if (/%(2f|5c)|\\/i.test(raw)) return null;
  let decoded: string;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    return null;
  }
  if (decoded.indexOf('\0') >= 0 || decoded.indexOf('\\') >= 0) return null;
  const parts = decoded.split('/');
  const names: string[] = [];
  for (let i = 0; i < parts.length; i++) {
    const s = parts[i];
    if (s === '') continue;
    if (s.charCodeAt(0) === 0x2e /* . */ && !(s === '.well-known' && i < parts.length - 1)) return null;
    names.push(s);
  }
  return { path: names.join('/'), dir: decoded.endsWith('/') };
}

/** Whether an Accept-Encoding header accepts `encoding` (q > 0; `*` counts). */
export function acceptsEncoding(header: string | string[], encoding: string): boolean {
  const value = Array.isArray(header) ? header.join(',') : header;
  let star = false;
  for (const part of value.split(',')) {
    const [name, ...params] = part.split(';');
    const n = name.trim().toLowerCase();
    if (n !== encoding && n !== '*') continue;
    let q = 1;
    for (const p of params) {
      const [k, v] = p.split('=');
      if (k.trim().toLowerCase() === 'q') q = Number(v);
    }
    const ok = Number.isFinite(q) && q > 0;
    if (n === encoding) return ok;
    star = ok;
  }
  return star;
}

/** If-Match (strong comparison) / If-None-Match (weak comparison) against our ETag; `*` matches. */
function matchesEtag(header: string, etag: string, strong: boolean): boolean {
  if (header.trim() === '*') return true;
  for (const part of header.split(',')) {
    let tag = part.trim();
    if (tag.startsWith('W/')) {
      if (strong) continue;
      tag = tag.slice(2);
    }
    if (tag === etag) return true;
  }
  return false;
}

/**
 * Whether the file (mtime in whole seconds) is newer than an HTTP date. An unparsable date: false, so the
 * header is ignored (`unparsableMeansNewer` flips that for If-Modified-Since, where ignoring means 200).
 */
function isAfter(mtime: number, date: string, unparsableMeansNewer = false): boolean {
  const t = Date.parse(date);
  if (Number.isNaN(t)) return unparsableMeansNewer;
  return mtime > t;
}

/** If-Range: the Range applies only when the validator still matches (a strong ETag or the exact date). */
function ifRangeHolds(header: string | undefined, etag: string, mtime: number): boolean {
  if (header === undefined) return true;
  const v = header.trim();
  if (v.startsWith('"')) return v === etag;
  if (v.startsWith('W/')) return false;
  const t = Date.parse(v);
  return !Number.isNaN(t) && t === mtime;
}

/**
 * One `bytes=` range against a file of `size` bytes: the inclusive span, 'unsatisfiable' (416), or null
 * when the header is malformed, not in bytes, or names several ranges (then the whole file is sent).
 */
export function parseRange(header: string, size: number): { start: number; end: number } | 'unsatisfiable' | null {
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (m === null) return null;
  const [, a, b] = m;
  if (a === '' && b === '') return null;
  let start: number;
  let end: number;
  if (a === '') {
    const suffix = Number(b);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return null;
    if (start >= size) return 'unsatisfiable';
  }
  return { start, end };
}
