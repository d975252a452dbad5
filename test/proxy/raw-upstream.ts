/**
 * A raw recording upstream for protocol tests: a TCP server on 127.0.0.1:0 that keeps every byte each
 * connection sent, parses requests out of them with a deliberately strict HTTP/1.1 parser (no bare LF,
 * no obs-fold, no control characters, one Content-Length of digits or exactly `Transfer-Encoding:
 * chunked`, never both), and answers each well-framed request through `respond`. What it parses is what
 * an app behind berth would see; anything it cannot parse unambiguously is recorded as `garbage`.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import type { UpstreamAddress } from '../../src/supervisor/types.ts';

export interface RecordedRequest {
  /** Arrival order across the whole upstream, from 1. */
  id: number;
  conn: number;
  method: string;
  target: string;
  /** In order, names as sent. */
  headers: [string, string][];
  body: Buffer;
}

export interface RawConn {
  id: number;
  socket: Socket;
  /** Every byte received, in order. */
  received: Buffer;
  /** Bytes not yet parsed into a request. */
  pending: Buffer;
  requests: RecordedRequest[];
  /** Why the rest of this connection's bytes could not be parsed; null while they could. */
  garbage: string | null;
  /** The upstream answered 101: later bytes are tunnel bytes, recorded but not parsed. */
  tunnel: boolean;
  closed: boolean;
}

/** What to answer a request: bytes to write, and whether to close afterwards. null: say nothing. */
export type Responder = (req: RecordedRequest, conn: RawConn) => { data: string | Buffer; close?: boolean; tunnel?: boolean } | null;

export function header(req: RecordedRequest, name: string): string | undefined {
  const lower = name.toLowerCase();
  for (const [n, v] of req.headers) if (n.toLowerCase() === lower) return v;
  return undefined;
}

export function headerAll(req: RecordedRequest, name: string): string[] {
  const lower = name.toLowerCase();
  return req.headers.filter(([n]) => n.toLowerCase() === lower).map(([, v]) => v);
}

/** A plain 200 naming the request it answers: `seen <id> <method> <target>`. */
export const seenResponder: Responder = (req) => {
  const body = `seen ${req.id} ${req.method} ${req.target}`;
  return { data: `HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-seen: ${req.id}\r\n\r\n${body}` };
};

export class RawUpstream {
  readonly server: Server;
  port = 0;
  address: UpstreamAddress = { kind: 'tcp', host: '127.0.0.1', port: 0 };
  readonly conns: RawConn[] = [];
  readonly requests: RecordedRequest[] = [];
  respond: Responder;
  #nextId = 0;

  constructor(respond: Responder = seenResponder) {
    this.respond = respond;
    this.server = createServer((socket) => this.#accept(socket));
  }

  static async start(t: TestContext, respond?: Responder): Promise<RawUpstream> {
    const u = new RawUpstream(respond);
    t.after(() => u.close());
    await new Promise<void>((r) => u.server.listen(0, '127.0.0.1', r));
    u.port = (u.server.address() as AddressInfo).port;
    u.address = { kind: 'tcp', host: '127.0.0.1', port: u.port };
    return u;
  }

  /** Every byte received on every connection, connection after connection. */
  allBytes(): Buffer {
    return Buffer.concat(this.conns.map((c) => c.received));
  }

  close(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    return new Promise((r) => (this.server.listening ? this.server.close(() => r()) : r()));
  }

  #accept(socket: Socket): void {
    const conn: RawConn = { id: this.conns.length + 1, socket, received: Buffer.alloc(0), pending: Buffer.alloc(0), requests: [], garbage: null, tunnel: false, closed: false };
    this.conns.push(conn);
    socket.on('error', () => {});
    socket.on('close', () => (conn.closed = true));
    socket.on('data', (chunk: Buffer) => {
      conn.received = Buffer.concat([conn.received, chunk]);
      if (conn.garbage !== null || conn.tunnel) return;
      conn.pending = Buffer.concat([conn.pending, chunk]);
      for (;;) {
        const parsed = parseRequest(conn.pending);
        if (parsed === null) return;
        if ('error' in parsed) {
          conn.garbage = parsed.error;
          socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
          return;
        }
        conn.pending = conn.pending.subarray(parsed.used);
        const req: RecordedRequest = { id: ++this.#nextId, conn: conn.id, method: parsed.method, target: parsed.target, headers: parsed.headers, body: parsed.body };
        conn.requests.push(req);
        this.requests.push(req);
        const answer = this.respond(req, conn);
        if (answer !== null && !socket.destroyed) {
          if (answer.close) socket.end(answer.data);
          else socket.write(answer.data);
          if (answer.tunnel) {
            conn.tunnel = true;
            return;
          }
        }
      }
    });
  }
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// Field values: visible ASCII, obs-text, spaces and tabs; no other control character.
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

type Parsed = { used: number; method: string; target: string; headers: [string, string][]; body: Buffer } | { error: string };

/**
 * One request from the start of `buf`: null when more bytes are needed. Strict on purpose: what it
 * accepts has exactly one meaning.
 */
export function parseRequest(buf: Buffer): Parsed | null {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) {
    if (buf.length > 0 && (buf.indexOf('\n\n') >= 0 || /[^\r]\n/.test(buf.toString('latin1', 0, Math.min(buf.length, 65536))))) return { error: 'bare LF' };
    return buf.length > 65536 ? { error: 'head too large' } : null;
  }
  const head = buf.toString('latin1', 0, end);
  const lines = head.split('\r\n');
  for (const l of lines) if (l.includes('\n') || l.includes('\r')) return { error: 'bare LF or CR' };
  const m = /^([A-Z]+) (\S+) HTTP\/1\.1$/.exec(lines[0]);
  if (m === null) return { error: `bad request line ${JSON.stringify(lines[0])}` };
  const headers: [string, string][] = [];
  for (let i = 1; i < lines.length; i++) {
    const l = lines[i];
    if (l.startsWith(' ') || l.startsWith('\t')) return { error: 'obs-fold' };
    const colon = l.indexOf(':');
    if (colon <= 0) return { error: `bad header line ${JSON.stringify(l)}` };
    const name = l.slice(0, colon);
    const value = l.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (!TOKEN.test(name)) return { error: `bad header name ${JSON.stringify(name)}` };
    if (!FIELD_VALUE.test(value)) return { error: `bad header value ${JSON.stringify(value)}` };
    headers.push([name, value]);
  }
  const te = headers.filter(([n]) => n.toLowerCase() === 'transfer-encoding');
  const cl = headers.filter(([n]) => n.toLowerCase() === 'content-length');
  let at = end + 4;
  if (te.length > 0) {
    if (te.length > 1 || te[0][1].toLowerCase() !== 'chunked') return { error: `ambiguous transfer-encoding ${JSON.stringify(te)}` };
    if (cl.length > 0) return { error: 'transfer-encoding with content-length' };
    const chunks: Buffer[] = [];
    for (;;) {
      const lineEnd = buf.indexOf('\r\n', at);
      if (lineEnd < 0) return null;
      const sizeLine = buf.toString('latin1', at, lineEnd);
      const sm = /^([0-9a-fA-F]+)(;[^\r\n]*)?$/.exec(sizeLine);
      if (sm === null) return { error: `bad chunk size ${JSON.stringify(sizeLine)}` };
      const size = parseInt(sm[1], 16);
      at = lineEnd + 2;
      if (size === 0) {
        // No trailers expected from a proxy; the terminating empty line.
        if (buf.length < at + 2) return null;
        if (buf[at] !== 0x0d || buf[at + 1] !== 0x0a) return { error: 'trailer or bad chunked end' };
        at += 2;
        break;
      }
      if (buf.length < at + size + 2) return null;
      chunks.push(buf.subarray(at, at + size));
      if (buf[at + size] !== 0x0d || buf[at + size + 1] !== 0x0a) return { error: 'bad chunk end' };
      at += size + 2;
    }
    return { used: at, method: m[1], target: m[2], headers, body: Buffer.concat(chunks) };
  }
  let length = 0;
  if (cl.length > 0) {
    if (cl.length > 1 || !/^[0-9]+$/.test(cl[0][1])) return { error: `ambiguous content-length ${JSON.stringify(cl)}` };
    length = Number(cl[0][1]);
  }
  if (buf.length < at + length) return null;
  return { used: at + length, method: m[1], target: m[2], headers, body: buf.subarray(at, at + length) };
}

// ---- the client side ------------------------------------------------------------------------------

/** The header lines (CRLF-ended) that make a GET a WebSocket upgrade (RFC 6455 § 4.1). */
export const WS_HEAD = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n';

export interface RawResponse {
  status: number;
  headers: [string, string][];
  body: Buffer;
}

export interface Exchange {
  responses: RawResponse[];
  /** The server closed the connection (before the timeout). */
  closed: boolean;
  /** Every byte the server sent. */
  raw: Buffer;
  /** Bytes after the last whole response (e.g. tunnel bytes after a 101). */
  rest: Buffer;
}

/**
 * Sends `data` on a fresh connection to 127.0.0.1:`port`, then reads responses until `expect` of them
 * have arrived (resolving then), the server closes, or `timeoutMs` passes; the socket is destroyed at the
 * end. `after` is called with the socket once the first response is complete (to send more).
 */
export function exchange(port: number, data: string | Buffer, opts: { expect?: number; timeoutMs?: number; after?: (s: Socket) => void } = {}): Promise<Exchange> {
  const expect = opts.expect ?? 1;
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let raw = Buffer.alloc(0);
    let closed = false;
    let done = false;
    let afterCalled = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const { responses, rest } = parseResponses(raw);
      resolve({ responses, closed, raw, rest });
    };
    const timer = setTimeout(finish, opts.timeoutMs ?? 2_000);
    socket.on('error', () => {});
    socket.on('connect', () => socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data));
    socket.on('data', (c: Buffer) => {
      raw = Buffer.concat([raw, c]);
      const { responses } = parseResponses(raw);
      if (!afterCalled && opts.after && responses.length >= 1) {
        afterCalled = true;
        opts.after(socket);
      }
      if (responses.length >= expect && !opts.after) finish();
    });
    socket.on('close', () => {
      closed = true;
      finish();
    });
  });
}

/** Whole responses from the start of `buf` (a server's side of one connection); `rest` is what follows. */
export function parseResponses(buf: Buffer): { responses: RawResponse[]; rest: Buffer } {
  const responses: RawResponse[] = [];
  let at = 0;
  for (;;) {
    const end = buf.indexOf('\r\n\r\n', at);
    if (end < 0) break;
    const lines = buf.toString('latin1', at, end).split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
    if (m === null) break;
    const status = Number(m[1]);
    const headers: [string, string][] = lines.slice(1).map((l) => {
      const c = l.indexOf(':');
      return [l.slice(0, c), l.slice(c + 1).trim()];
    });
    const get = (n: string) => headers.find(([k]) => k.toLowerCase() === n)?.[1];
    let p = end + 4;
    let body: Buffer = Buffer.alloc(0);
    if (status === 101) {
      responses.push({ status, headers, body });
      at = p;
      break;
    }
    if (status < 200 || status === 204 || status === 304) {
      // no body
    } else if (get('transfer-encoding')?.toLowerCase() === 'chunked') {
      const parts: Buffer[] = [];
      let ok = false;
      for (;;) {
        const le = buf.indexOf('\r\n', p);
        if (le < 0) break;
        const size = parseInt(buf.toString('latin1', p, le), 16);
        if (Number.isNaN(size)) break;
        if (size === 0) {
          if (buf.length < le + 4) break;
          p = le + 4;
          ok = true;
          break;
        }
        if (buf.length < le + 2 + size + 2) break;
        parts.push(buf.subarray(le + 2, le + 2 + size));
        p = le + 2 + size + 2;
      }
      if (!ok) break;
      body = Buffer.concat(parts);
    } else if (get('content-length') !== undefined) {
      const n = Number(get('content-length'));
      if (buf.length < p + n) break;
      body = buf.subarray(p, p + n);
      p += n;
    } else {
      // Delimited by the close: whatever came.
      body = buf.subarray(p);
      p = buf.length;
    }
    responses.push({ status, headers, body });
    at = p;
  }
  return { responses, rest: buf.subarray(at) };
}

export function responseHeader(r: RawResponse, name: string): string | undefined {
  const lower = name.toLowerCase();
  return r.headers.find(([k]) => k.toLowerCase() === lower)?.[1];
}
