/**
 * A fake Akamai Fast Purge v3 API for tests: a real node:http server on 127.0.0.1 (plain http, port 0).
 *
 * It answers `POST /ccu/v3/(invalidate|delete)/(url|arl)/(production|staging)` as Akamai does, after
 * checking the EdgeGrid signature with its OWN verification code (it does not import the signer under
 * test, so a bug there cannot hide itself): tokens must match, the timestamp must be within 5 minutes of
 * now, and the signature must be the one recomputed from the method, scheme `http`, the Host header, the
 * path and the raw body. Then, in order: 401 for a bad signature, 413 for a body over `maxBodyBytes`, 400
 * for a body that is not `{"objects": [strings]}`, 429 (with Retry-After) for the first `throttleFirst`
 * valid requests, 503 for the next `failFirst`, and 201 (the objects count as purged) after that.
 * Every request is recorded.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';

export interface FakeAkamaiCredentials {
  clientToken: string;
  clientSecret: string;
  accessToken: string;
}

export interface FakeAkamaiOptions {
  /** After any throttled ones, this many valid requests get 503. Default 0. */
  failFirst?: number;
  /** The first this many valid requests get 429. Default 0. */
  throttleFirst?: number;
  /** The Retry-After header of a 429, in seconds. Default 1. */
  retryAfterSeconds?: number;
  /** Larger bodies get 413. Default 50000 (Akamai's Fast Purge limit). */
  maxBodyBytes?: number;
}

export interface FakeAkamaiRequest {
  method: string;
  /** Path and query as requested, e.g. `/ccu/v3/invalidate/url/production`. */
  path: string;
  /** The body's `objects` when it parsed, else []. */
  objects: string[];
  authorized: boolean;
  status: number;
}

export interface FakeAkamai {
  /** `http://127.0.0.1:<port>`, no trailing slash. */
  baseUrl: string;
  /** `127.0.0.1:<port>`: what an EdgeGrid `host` would hold. */
  host: string;
  requests: FakeAkamaiRequest[];
  /** Every object of an accepted (201) request, in order. */
  purged(): string[];
  close(): Promise<void>;
}

const PURGE_PATH = /^\/ccu\/v3\/(invalidate|delete)\/(url|arl)\/(production|staging)$/;
/** The body prefix Fast Purge hashes when signing (EdgeGrid max_body). */
const SIGNING_MAX_BODY = 131072;
const CLOCK_SKEW_MS = 5 * 60_000;
/** Bodies are read in full up to this, so a signature over them can be checked; beyond it the connection is dropped. */
const HARD_BODY_LIMIT = 8 * 1024 * 1024;

function readBody(req: IncomingMessage): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > HARD_BODY_LIMIT) over = true;
      else chunks.push(c);
    });
    req.on('end', () => resolve(over ? null : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** `20140321T19:34:21+0000` -> epoch ms, or NaN. */
function parseEdgeGridTimestamp(ts: string): number {
  const m = /^(\d{4})(\d\d)(\d\d)T(\d\d):(\d\d):(\d\d)\+0000$/.exec(ts);
  if (!m) return NaN;
  const [, y, mo, d, h, mi, s] = m.map(Number);
  return Date.UTC(y, mo - 1, d, h, mi, s);
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The verdict on one request's Authorization header; `reason` is for the 401 body (it never holds a secret). */
function verify(req: IncomingMessage, body: Buffer, creds: FakeAkamaiCredentials): { ok: true } | { ok: false; reason: string } {
  const header = req.headers.authorization;
  const scheme = 'EG1-HMAC-SHA256 ';
  if (typeof header !== 'string' || !header.startsWith(scheme)) return { ok: false, reason: 'missing or non-EdgeGrid Authorization header' };
  const fields = new Map<string, string>();
  for (const part of header.slice(scheme.length).split(';')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) return { ok: false, reason: 'malformed Authorization header' };
    fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const clientToken = fields.get('client_token');
  const accessToken = fields.get('access_token');
  const timestamp = fields.get('timestamp');
  const nonce = fields.get('nonce');
  const signature = fields.get('signature');
  if (!clientToken || !accessToken || !timestamp || !nonce || !signature) return { ok: false, reason: 'Authorization header lacks a field' };
  if (!safeEqual(clientToken, creds.clientToken)) return { ok: false, reason: 'unknown client token' };
  if (!safeEqual(accessToken, creds.accessToken)) return { ok: false, reason: 'unknown access token' };
  const at = parseEdgeGridTimestamp(timestamp);
  if (Number.isNaN(at) || Math.abs(Date.now() - at) > CLOCK_SKEW_MS) return { ok: false, reason: 'timestamp missing, malformed or out of the allowed window' };

  // Recompute EG1-HMAC-SHA256 from what arrived.
  const authPrefix = `EG1-HMAC-SHA256 client_token=${clientToken};access_token=${accessToken};timestamp=${timestamp};nonce=${nonce};`;
  const method = (req.method ?? '').toUpperCase();
  const contentHash = method === 'POST' && body.length > 0
    ? createHash('sha256').update(body.subarray(0, SIGNING_MAX_BODY)).digest('base64')
    : '';
  const dataToSign = [method, 'http', (req.headers.host ?? '').toLowerCase(), req.url ?? '', '', contentHash, authPrefix].join('\t');
  const signingKey = createHmac('sha256', creds.clientSecret).update(timestamp).digest('base64');
  const expected = createHmac('sha256', signingKey).update(dataToSign).digest('base64');
  if (!safeEqual(signature, expected)) return { ok: false, reason: 'The signature does not match' };
  return { ok: true };
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Starts the fake; it is closed after the test `t` (or earlier with `close()`). */
export async function startFakeAkamai(t: Pick<TestContext, 'after'>, creds: FakeAkamaiCredentials, opts: FakeAkamaiOptions = {}): Promise<FakeAkamai> {
  const throttleFirst = opts.throttleFirst ?? 0;
  const failFirst = opts.failFirst ?? 0;
  const retryAfterSeconds = opts.retryAfterSeconds ?? 1;
  const maxBodyBytes = opts.maxBodyBytes ?? 50_000;
  const requests: FakeAkamaiRequest[] = [];
  const purged: string[] = [];
  let valid = 0;

  const problem = (status: number, title: string, detail: string, path: string) => ({
    type: `https://problems.luna.akamaiapis.net/-/fake/${status}`,
    title,
    status,
    detail,
    instance: path,
    supportId: randomBytes(4).toString('hex').toUpperCase(),
  });

  const server = createServer((req, res) => {
    void (async () => {
      const method = req.method ?? '';
      const path = req.url ?? '';
      const record: FakeAkamaiRequest = { method, path, objects: [], authorized: false, status: 0 };
      requests.push(record);
      const reply = (status: number, body: unknown, headers?: Record<string, string>): void => {
        record.status = status;
        sendJson(res, status, body, headers);
      };

      const body = await readBody(req);
      if (body === null) {
        record.status = 413;
        res.writeHead(413, { connection: 'close' }).end();
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch {
        parsed = undefined;
      }
      const objects = (parsed as { objects?: unknown } | undefined)?.objects;
      const validObjects = Array.isArray(objects) && objects.every((o) => typeof o === 'string') ? (objects as string[]) : null;
      if (validObjects) record.objects = [...validObjects];

      if (!PURGE_PATH.test(path)) return reply(404, problem(404, 'Not Found', 'No such resource', path));
      if (method !== 'POST') return reply(405, problem(405, 'Method Not Allowed', 'Use POST', path), { allow: 'POST' });

      const verdict = verify(req, body, creds);
      if (!verdict.ok) return reply(401, problem(401, 'Not authorized', verdict.reason, path));
      record.authorized = true;

      if (body.length > maxBodyBytes) return reply(413, problem(413, 'Request Entity Too Large', `The body exceeds ${maxBodyBytes} bytes`, path));
      if (!validObjects) return reply(400, problem(400, 'Bad Request', 'The body must be JSON {"objects": [strings]}', path));

      valid += 1;
      if (valid <= throttleFirst) {
        return reply(429, problem(429, 'Too Many Requests', 'Rate limit exceeded', path), { 'retry-after': String(retryAfterSeconds) });
      }
      if (valid <= throttleFirst + failFirst) return reply(503, problem(503, 'Service Unavailable', 'Try again later', path));

      purged.push(...validObjects);
      reply(201, {
        httpStatus: 201,
        detail: 'Request accepted',
        estimatedSeconds: 5,
        purgeId: randomUUID(),
        supportId: `17PY${randomBytes(6).toString('hex')}`,
      });
    })().catch(() => {
      if (!res.headersSent) res.writeHead(500).end();
      else res.destroy();
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    return closing;
  };
  t.after(close);

  return {
    baseUrl: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    requests,
    purged: () => [...purged],
    close,
  };
}
