/**
 * Akamai EdgeGrid v1 request signing (EG1-HMAC-SHA256), with node:crypto alone.
 *
 * Every call to an Akamai API (Fast Purge among them) carries an `Authorization` header made of:
 *
 *   authPrefix = `EG1-HMAC-SHA256 client_token=<ct>;access_token=<at>;timestamp=<ts>;nonce=<nonce>;`
 *   header     = authPrefix + `signature=<signature>`
 *
 * where the signature is computed in two steps:
 *
 *   signingKey = base64(HMAC-SHA256(key = client secret, data = timestamp))
 *   signature  = base64(HMAC-SHA256(key = signingKey,   data = dataToSign))
 *
 * and `dataToSign` joins with tabs: the method (upper case), the scheme (`https`), the host (lower case,
 * with its port if any), the path and query, the canonicalized signed headers (none here: Fast Purge needs
 * none), the content hash (base64 SHA-256 of the first `maxBody` bytes of the body, for a POST with a body;
 * empty otherwise) and the authPrefix itself. The timestamp (UTC, `yyyyMMddTHH:mm:ss+0000`) and the nonce
 * make each header good for one request only; Akamai refuses a timestamp too far from its clock.
 *
 * Errors raised here name the field at fault, never a token or the secret.
 */
import { createHash, createHmac, randomUUID } from 'node:crypto';

export interface EdgeGridCredentials {
  host: string;
  clientToken: string;
  clientSecret: string;
  accessToken: string;
}

/** The largest body prefix Akamai hashes for a POST unless told otherwise (Fast Purge's value). */
const DEFAULT_MAX_BODY = 131072;

const pad2 = (n: number): string => String(n).padStart(2, '0');

/** The EdgeGrid timestamp of `date` (default now): `yyyyMMddTHH:mm:ss+0000`, UTC. */
export function edgeGridTimestamp(date: Date = new Date()): string {
  if (Number.isNaN(date.getTime())) throw new Error('EdgeGrid: invalid date for the timestamp');
  return (
    `${String(date.getUTCFullYear()).padStart(4, '0')}${pad2(date.getUTCMonth() + 1)}${pad2(date.getUTCDate())}` +
    `T${pad2(date.getUTCHours())}:${pad2(date.getUTCMinutes())}:${pad2(date.getUTCSeconds())}+0000`
  );
}

/** A value put in the header's `key=value;` list: non-empty, no whitespace, no `;`. Errors name the field only. */
function checkField(name: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') throw new Error(`EdgeGrid: ${name} is missing`);
  if (/[\s;]/.test(value)) throw new Error(`EdgeGrid: ${name} holds whitespace or ';'`);
  return value;
}

const hmacBase64 = (key: string, data: string): string => createHmac('sha256', key).update(data, 'utf8').digest('base64');

/**
 * Authorization header value for one request. `timestamp` (yyyyMMddTHH:mm:ss+0000, UTC) and `nonce` are
 * made when left out (tests pass fixed ones). maxBody default 131072. No headers are signed (Fast Purge
 * needs none).
 */
export function edgeGridAuthorization(
  req: { method: string; url: string; body: string },
  creds: EdgeGridCredentials,
  opts: { timestamp?: string; nonce?: string; maxBody?: number } = {},
): string {
  const clientToken = checkField('client token', creds?.clientToken);
  const accessToken = checkField('access token', creds?.accessToken);
  if (typeof creds.clientSecret !== 'string' || creds.clientSecret === '') throw new Error('EdgeGrid: client secret is missing');
  const timestamp = checkField('timestamp', opts.timestamp ?? edgeGridTimestamp());
  const nonce = checkField('nonce', opts.nonce ?? randomUUID());
  const maxBody = opts.maxBody ?? DEFAULT_MAX_BODY;
  if (!Number.isInteger(maxBody) || maxBody < 0) throw new Error('EdgeGrid: maxBody must be a non-negative integer');
  if (typeof req.method !== 'string' || req.method === '') throw new Error('EdgeGrid: request method is missing');

  let url: URL;
  try {
    url = new URL(req.url);
  } catch {
    // The URL is not a credential, but keep the message plain all the same.
    throw new Error('EdgeGrid: request URL is not a valid absolute URL');
  }

  const method = req.method.toUpperCase();
  const body = req.body ?? '';
  let contentHash = '';
  if (method === 'POST' && body.length > 0) {
    const bytes = Buffer.from(body, 'utf8');
    contentHash = createHash('sha256').update(bytes.subarray(0, maxBody)).digest('base64');
  }

  const authPrefix = `EG1-HMAC-SHA256 client_token=${clientToken};access_token=${accessToken};timestamp=${timestamp};nonce=${nonce};`;
  const dataToSign = [
    method,
    url.protocol.replace(/:$/, ''),
    url.host.toLowerCase(),
    url.pathname + url.search,
    '', // canonicalized headers: none are signed
    contentHash,
    authPrefix,
  ].join('\t');

  const signingKey = hmacBase64(creds.clientSecret, timestamp);
  const signature = hmacBase64(signingKey, dataToSign);
  return `${authPrefix}signature=${signature}`;
}
