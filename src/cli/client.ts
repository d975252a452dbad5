/**
 * The CLI's side of the control API: JSON requests over the control unix socket, or over HTTP(S) to a
 * remote gateway's `control.listen` (`--url`, with the bearer token from BERTH_TOKEN). Every verb except
 * `start` and `check` is a thin client of this.
 */
import { request as httpRequest, type ClientRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { userInfo } from 'node:os';
import { BerthError, errorCodeFrom, errorMessage, ErrorCodes } from '../lib/errors.ts';
import { LineSplitter } from '../supervisor/line-splitter.ts';

/** A streamed answer being read: see ControlClient.stream. */
export interface Stream {
  done: Promise<void>;
  /** Closes the stream (on the gateway, closing ends what it streams: a run is killed). */
  abort(): void;
}

export interface StreamOptions {
  /** A JSON request body. */
  body?: string;
  /** The error to reject with when the connection fails. */
  lost?: (err: NodeJS.ErrnoException) => Error;
}

/** The person running the CLI, for the audit log. */
export function cliUser(): string {
  try {
    return process.env.BERTH_USER ?? userInfo().username;
  } catch {
    return 'unknown';
  }
}

/** A remote gateway: its control URL and the bearer token (null: none, e.g. an auth proxy adds identity). */
export interface RemoteTarget {
  url: string;
  token?: string | null;
}

/** Parses a control URL: http or https, no credentials, no query; a path is a prefix (behind a proxy). */
export function parseControlUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new BerthError(ErrorCodes.badRequest, `--url expects http://host:port, got "${text}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new BerthError(ErrorCodes.badRequest, `--url must be http:// or https://, got "${text}"`);
  if (url.username || url.password) throw new BerthError(ErrorCodes.badRequest, '--url must not carry credentials: put the token in BERTH_TOKEN');
  if (url.search || url.hash) throw new BerthError(ErrorCodes.badRequest, `--url must not have a query or fragment, got "${text}"`);
  return url;
}

export class ControlClient {
  /** The control socket path; empty when talking to a URL. */
  readonly socket: string;
  /** The remote control URL, or null on the socket. */
  readonly url: URL | null;
  #token: string | null;

  /** `socket`: a control socket path; or a remote gateway's URL and token. */
  constructor(target: string | RemoteTarget) {
    if (typeof target === 'string') {
      this.socket = target;
      this.url = null;
      this.#token = null;
    } else {
      this.socket = '';
      this.url = parseControlUrl(target.url);
      this.#token = target.token ?? null;
    }
  }

  /** Where the gateway is, for messages. */
  get where(): string {
    return this.url ? this.url.origin + this.url.pathname.replace(/\/$/, '') : this.socket;
  }

  /**
   * Starts one request with the right transport, identity and path; `onResponse` is called with the
   * response as `http.request` would. For streaming endpoints (deploy follow, run, logs, events).
   */
  request(method: string, path: string, onResponse: (res: IncomingMessage) => void, headers: Record<string, string | number> = {}): ClientRequest {
    const opts: RequestOptions = { method, headers: { 'x-berth-user': cliUser(), ...headers } };
    let req: ClientRequest;
    if (this.url) {
      const prefix = this.url.pathname.replace(/\/$/, '');
      opts.host = this.url.hostname.replace(/^\[|\]$/g, '');
      opts.port = this.url.port || undefined;
      opts.path = prefix + path;
      if (this.#token !== null) opts.headers = { ...opts.headers, authorization: `Bearer ${this.#token}` };
      req = (this.url.protocol === 'https:' ? httpsRequest : httpRequest)(opts, onResponse);
    } else {
      opts.socketPath = this.socket;
      opts.path = path;
      req = httpRequest(opts, onResponse);
    }
    return req;
  }

  /**
   * Opens a streamed answer (NDJSON: deploy follow, run, logs) and calls `onLine` for each line as it
   * arrives, whole even when a chunk ends inside a UTF-8 character. `done` resolves when the gateway ends
   * the stream or `abort()` is called, and rejects with the API's error for an answer other than 200,
   * with what `onLine` threw (the stream is then closed), or with `lost(err)` when the connection fails
   * (default: `unreachable`).
   */
  stream(method: string, path: string, onLine: (line: string) => void, opts: StreamOptions = {}): Stream {
    let aborted = false;
    let req!: ClientRequest;
    let settle!: (err?: unknown) => void;
    const done = new Promise<void>((resolve, reject) => {
      let settled = false;
      settle = (err?: unknown) => {
        if (settled) return;
        settled = true;
        if (err === undefined) resolve();
        else reject(err);
      };
      const headers: Record<string, string | number> = {};
      if (opts.body !== undefined) Object.assign(headers, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(opts.body) });
      req = this.request(
        method,
        path,
        (res) => {
          if (res.statusCode !== 200) {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => settle(errorFromAnswer(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'))));
            return;
          }
          const lines = new LineSplitter((line) => {
            if (!settled) onLine(line);
          });
          const fail = (err: unknown) => {
            settle(err);
            req.destroy();
          };
          res.on('data', (c: Buffer) => {
            try {
              lines.push(c);
            } catch (err) {
              fail(err);
            }
          });
          res.on('end', () => {
            try {
              lines.end();
              settle();
            } catch (err) {
              fail(err);
            }
          });
          res.on('error', (err) => settle(aborted ? undefined : err));
        },
        headers,
      );
      req.on('error', (err: NodeJS.ErrnoException) => settle(aborted ? undefined : (opts.lost ?? ((e) => this.unreachable(e)))(err)));
      req.end(opts.body);
    });
    const abort = () => {
      aborted = true;
      settle();
      req.destroy();
    };
    return { done, abort };
  }

  /** A transport error as the CLI reports it. */
  unreachable(err: NodeJS.ErrnoException): BerthError {
    if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
      const hint = this.url ? 'is it running, and is control.listen set?' : 'is it running? (start it with `berth start`)';
      return new BerthError(ErrorCodes.unavailable, `cannot reach the gateway on ${this.where}: ${hint}`, { cause: err });
    }
    return new BerthError(ErrorCodes.unavailable, `control API request failed: ${errorMessage(err)}`, { cause: err });
  }

  /** Sends one request and returns the parsed JSON body; API errors are thrown as BerthError. */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = this.request(
        method,
        path,
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        },
        payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {},
      );
      req.on('error', (err: NodeJS.ErrnoException) => reject(this.unreachable(err)));
      req.end(payload);
    });
    if (status >= 400) throw errorFromAnswer(status, text);
    try {
      return (text === '' ? {} : JSON.parse(text)) as T;
    } catch {
      throw new BerthError(ErrorCodes.internal, `the gateway answered ${status} with a body that is not JSON`);
    }
  }
}

/** The error an API answer of 400 or more carries (`{"error": {code, message, details}}`), or a plain one. */
export function errorFromAnswer(status: number, text: string): BerthError {
  let e: { code?: unknown; message?: unknown; details?: unknown } | undefined;
  try {
    e = (JSON.parse(text) as { error?: typeof e } | null)?.error;
  } catch {
    // Not JSON: fall through to the plain error.
  }
  if (!e || typeof e.message !== 'string') return new BerthError(ErrorCodes.internal, `the gateway answered ${status}`);
  const details = e.details && typeof e.details === 'object' ? { details: e.details as Record<string, unknown> } : undefined;
  return new BerthError(errorCodeFrom(e.code), e.message, details);
}
