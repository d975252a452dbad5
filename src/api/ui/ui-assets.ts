/**
 * The dashboard's static files: one HTML page, one script, one stylesheet, read once when the control
 * API is built and served from memory with an ETag. They carry no data (the page reads everything from
 * the API with the caller's credentials), so they are served without auth, like a login page.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * How the page's caller logs in, told to the page before it asks the API anything (so it never has to
 * provoke a 401 to find out): `none` on the socket, `token` on TCP, `token-or-proxy` on TCP when an
 * auth proxy in front may already have set the call-context header.
 */
export type LoginKind = 'none' | 'token' | 'token-or-proxy';

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

/** URL path -> file in this directory. */
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/ui/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

/**
 * Everything comes from this origin and nothing is inlined, so a value shown on the page (an app name,
 * a log message) can never run as script.
 */
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

export class UiAssets {
  #assets = new Map<string, Asset>();

  constructor(dir: URL = new URL('./', import.meta.url)) {
    for (const [path, { file, type }] of Object.entries(FILES)) {
      const body = readFileSync(new URL(file, dir));
      this.#assets.set(path, { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` });
    }
  }

  /** The URL paths served. */
  get paths(): string[] {
    return [...this.#assets.keys()];
  }

  /** Answers a GET or HEAD for a dashboard file; returns false (doing nothing) for anything else. */
  serve(req: IncomingMessage, res: ServerResponse, pathname: string, login: LoginKind): boolean {
    if (req.method !== 'GET' && req.method !== 'HEAD') return false;
    if (pathname === '/ui/session.json') {
      const body = JSON.stringify({ login });
      res.writeHead(200, { ...SECURITY_HEADERS, 'cache-control': 'no-store', 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
      return true;
    }
    const asset = this.#assets.get(pathname === '/index.html' ? '/' : pathname);
    if (!asset) return false;
    // Revalidated on every load: a gateway upgrade must not leave an old script talking to a new API.
    const headers = { ...SECURITY_HEADERS, 'cache-control': 'no-cache', etag: asset.etag };
    if (req.headers['if-none-match'] === asset.etag) {
      res.writeHead(304, headers);
      res.end();
      return true;
    }
    res.writeHead(200, { ...headers, 'content-type': asset.type, 'content-length': asset.body.length });
    res.end(req.method === 'HEAD' ? undefined : asset.body);
    return true;
  }
}
