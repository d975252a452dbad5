/**
 * Clients for the gateway's HTTPS listeners in end-to-end tests: node:http2 sessions and HTTP/1.1 over
 * TLS, both verifying the served certificate against the test's CA for the name they send as SNI (no
 * `rejectUnauthorized: false`: a wrong certificate fails the request), and the fingerprint of what a
 * fresh handshake is given. Everything connects to 127.0.0.1; the host name travels as SNI and
 * `:authority` / `Host`, as it would from a browser resolving the name to this machine.
 */
import { connect as http2Connect, type ClientHttp2Session, type IncomingHttpHeaders as H2Headers } from 'node:http2';
import { Agent as HttpsAgent, request as httpsRequest, type RequestOptions } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import type { TestContext } from 'node:test';

export interface H2Result {
  status: number;
  headers: H2Headers;
  body: Buffer;
  text(): string;
  json<T = any>(): T;
}

/** A verified h2 session to 127.0.0.1:`port` with SNI `servername`; closed after the test. */
export async function h2Session(t: Pick<TestContext, 'after'>, port: number, servername: string, ca: string | string[]): Promise<ClientHttp2Session> {
  const session = http2Connect(`https://${servername}:${port}`, {
    createConnection: () => tlsConnect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['h2'] }),
  });
  t.after(() => {
    if (!session.destroyed) session.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    session.once('connect', () => resolve());
    session.once('error', reject);
  });
  // A stream's failure is reported by its request; a late session error must not crash the test runner.
  session.on('error', () => {});
  return session;
}

/** One request on an open h2 session. `authority` defaults to the session's. */
export function h2Request(session: ClientHttp2Session, opts: { path?: string; method?: string; authority?: string; headers?: Record<string, string>; body?: string | Buffer; timeoutMs?: number } = {}): Promise<H2Result> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ':method': opts.method ?? 'GET', ':path': opts.path ?? '/', ...opts.headers };
    if (opts.authority) headers[':authority'] = opts.authority;
    let stream;
    try {
      stream = session.request(headers, { endStream: opts.body === undefined });
    } catch (err) {
      reject(err);
      return;
    }
    const timer = setTimeout(() => stream.close(0x8 /* CANCEL */), opts.timeoutMs ?? 20_000);
    let status = 0;
    let responseHeaders: H2Headers = {};
    const chunks: Buffer[] = [];
    stream.on('response', (h) => {
      responseHeaders = h;
      status = Number(h[':status']);
    });
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      clearTimeout(timer);
      const body = Buffer.concat(chunks);
      resolve({ status, headers: responseHeaders, body, text: () => body.toString('utf8'), json: () => JSON.parse(body.toString('utf8')) });
    });
    stream.on('close', () => {
      clearTimeout(timer);
      if (stream.rstCode !== 0 && status === 0) reject(new Error(`stream reset with code ${stream.rstCode}`));
    });
    stream.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    if (opts.body !== undefined) stream.end(opts.body);
  });
}

export interface TlsHttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  socket: TLSSocket;
  /** SHA-256 fingerprint of the certificate the connection was given (read at the response: a closed socket has none). */
  fingerprint: string;
  json<T = any>(): T;
}

/**
 * One HTTP/1.1 request over TLS (ALPN offers http/1.1 only), verified for `servername`. With `agent`,
 * the request may reuse one of its keep-alive connections; without, a fresh connection is made.
 */
export function h1Tls(port: number, opts: { servername: string; ca: string | string[]; host?: string; path?: string; method?: string; headers?: Record<string, string>; agent?: HttpsAgent; timeoutMs?: number }): Promise<TlsHttpResult> {
  return new Promise((resolve, reject) => {
    // ALPN is a TLS option https passes through to tls.connect, missing from RequestOptions' type.
    const options = {
      host: '127.0.0.1',
      port,
      servername: opts.servername,
      ca: opts.ca,
      ALPNProtocols: ['http/1.1'],
      method: opts.method ?? 'GET',
      path: opts.path ?? '/',
      headers: { host: opts.host ?? opts.servername, ...opts.headers },
      agent: opts.agent ?? false,
    } as RequestOptions;
    const req = httpsRequest(options, (res) => {
      // Taken now: a keep-alive agent detaches the socket from the response once it ends.
      const socket = res.socket as TLSSocket;
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, socket, fingerprint, json: () => JSON.parse(body) }));
      res.on('error', reject);
    });
    req.setTimeout(opts.timeoutMs ?? 20_000, () => req.destroy(new Error('client timeout')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * The SHA-256 fingerprint a fresh handshake for `servername` is given (null: no SNI), without verifying
 * it: the tests compare fingerprints themselves. Rejects when the handshake is refused.
 */
export function servedFingerprint(port: number, servername: string | null): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ...(servername ? { servername } : {}), rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    socket.setTimeout(10_000, () => socket.destroy(new Error('handshake timeout')));
    socket.once('secureConnect', () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.destroy();
      resolve(fingerprint);
    });
    socket.once('error', reject);
  });
}

/** Fingerprints compare as upper-case, colon-separated hex whatever printed them. */
export function sameFingerprint(a: string | undefined | null, b: string | undefined | null): boolean {
  const norm = (s: string | undefined | null) => String(s ?? '').replaceAll(':', '').toUpperCase();
  return a != null && b != null && norm(a) === norm(b);
}

/**
 * A stand-in for a TestContext's `after` for resources shared by the tests of a `describe` block (one
 * gateway for several checks): register clean-ups with `after`, run them in the suite's `after` hook.
 */
export class SharedCleanup {
  #fns: (() => unknown)[] = [];
  after = (fn: () => unknown): void => {
    this.#fns.push(fn);
  };
  /** Runs the clean-ups, last registered first (processes before the temp dir they live in). */
  async run(): Promise<void> {
    for (const fn of this.#fns.splice(0).reverse()) {
      try {
        await fn();
      } catch {
        // one failed clean-up must not leave the others undone
      }
    }
  }
  /** What spawnGateway and tempDir take: they only call `after`. */
  get context(): TestContext {
    return { after: this.after } as unknown as TestContext;
  }
}

export { HttpsAgent };
