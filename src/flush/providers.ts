/**
 * Where a flush's URLs go. `http`: one request per URL (PURGE by default) to the URL itself, a few at a
 * time. `akamai`: Fast Purge v3 (`POST /ccu/v3/<action>/<url|arl>/<network>`), EdgeGrid-signed, in
 * batches within its 50,000-byte body limit. Each says, per URL, done, to try again (a 429, a 5xx, no
 * answer) or failed for good (any other refusal), and how long the CDN asked it to wait.
 */
import type { CacheFlushConfig } from '../config/schema.ts';
import { errorMessage } from '../lib/errors.ts';
import { edgeGridAuthorization, type EdgeGridCredentials } from './edgegrid.ts';

export interface FlushOutcome {
  done: string[];
  /** Worth another attempt (429, 5xx, a timeout or a connection failure). */
  retry: { url: string; error: string }[];
  /** Refused for good (a 4xx other than 404, 408 and 429). */
  failed: { url: string; error: string }[];
  /** The longest `Retry-After` the CDN sent, in ms; null when it sent none. */
  retryAfterMs: number | null;
}

export interface FlushProvider {
  send(urls: readonly string[], signal: AbortSignal): Promise<FlushOutcome>;
}

/** Fast Purge v3 refuses a body over 50,000 bytes. */
export const FAST_PURGE_MAX_BODY = 50_000;
const CREDENTIAL_PARTS = ['HOST', 'CLIENT_TOKEN', 'CLIENT_SECRET', 'ACCESS_TOKEN'] as const;

/**
 * The Fast Purge credentials of the environment: `BERTH_FASTPURGE_{HOST,CLIENT_TOKEN,CLIENT_SECRET,
 * ACCESS_TOKEN}_<ENV>` (`<ENV>` the config's environment, upper-cased, other characters as `_`), or the
 * same names without the suffix when no environment is chosen. `missing` names the variables not set.
 */
export function fastPurgeCredentials(environ: Record<string, string | undefined>, environment: string | null): { credentials: EdgeGridCredentials | null; missing: string[] } {
  const suffix = environment === null ? '' : `_${environment.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
  const names = CREDENTIAL_PARTS.map((p) => `BERTH_FASTPURGE_${p}${suffix}`);
  const values = names.map((n) => environ[n]?.trim() ?? '');
  const missing = names.filter((_, i) => values[i] === '');
  if (missing.length > 0) return { credentials: null, missing };
  const [host, clientToken, clientSecret, accessToken] = values as [string, string, string, string];
  return { credentials: { host, clientToken, clientSecret, accessToken }, missing: [] };
}

export function httpProvider(config: Pick<CacheFlushConfig, 'method' | 'headers' | 'concurrency' | 'timeoutMs'>): FlushProvider {
  return {
    async send(urls, signal) {
      const out: FlushOutcome = { done: [], retry: [], failed: [], retryAfterMs: null };
      let next = 0;
      const worker = async () => {
        while (next < urls.length && !signal.aborted) {
          const url = urls[next++]!;
          try {
            const res = await fetch(url, { method: config.method, headers: config.headers, signal: AbortSignal.any([signal, AbortSignal.timeout(config.timeoutMs)]), redirect: 'manual' });
            await res.body?.cancel().catch(() => {});
            judge(out, [url], res.status, res.headers.get('retry-after'));
          } catch (err) {
            out.retry.push({ url, error: errorMessage(err) });
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(config.concurrency, urls.length) }, worker));
      // Aborted (the gateway stops): what was not sent is tried at the next start.
      for (const url of urls.slice(next)) out.retry.push({ url, error: 'not sent: the gateway stopped' });
      return out;
    },
  };
}

export function akamaiProvider(config: Pick<CacheFlushConfig, 'action' | 'network' | 'timeoutMs'>, credentials: EdgeGridCredentials): FlushProvider {
  // A host written as a URL (http://127.0.0.1:8080, for a local test server) is used as it is.
  const base = /^https?:\/\//i.test(credentials.host) ? credentials.host.replace(/\/+$/, '') : `https://${credentials.host.replace(/\/+$/, '')}`;
  return {
    async send(urls, signal) {
      const out: FlushOutcome = { done: [], retry: [], failed: [], retryAfterMs: null };
      const byKind = { url: urls.filter((u) => /^https?:\/\//i.test(u)), arl: urls.filter((u) => !/^https?:\/\//i.test(u)) };
      for (const [kind, objects] of Object.entries(byKind)) {
        for (const batch of batches(objects)) {
          if (signal.aborted) {
            out.retry.push(...batch.map((url) => ({ url, error: 'not sent: the gateway stopped' })));
            continue;
          }
          const url = `${base}/ccu/v3/${config.action}/${kind}/${config.network}`;
          const body = JSON.stringify({ objects: batch });
          try {
            const res = await fetch(url, {
              method: 'POST',
              headers: { 'content-type': 'application/json', authorization: edgeGridAuthorization({ method: 'POST', url, body }, credentials) },
              body,
              signal: AbortSignal.any([signal, AbortSignal.timeout(config.timeoutMs)]),
            });
            const text = await res.text().catch(() => '');
            judge(out, batch, res.status, res.headers.get('retry-after'), problemDetail(text));
          } catch (err) {
            out.retry.push(...batch.map((u) => ({ url: u, error: errorMessage(err) })));
          }
        }
      }
      return out;
    },
  };
}

/** Objects in batches whose JSON body stays within Fast Purge's limit (one object over it goes alone, and is refused). */
export function batches(objects: readonly string[], maxBody = FAST_PURGE_MAX_BODY): string[][] {
  const out: string[][] = [];
  let current: string[] = [];
  const empty = Buffer.byteLength('{"objects":[]}');
  let size = empty;
  for (const o of objects) {
    // Bytes, as the limit is: a template may hold non-ASCII text.
    const bytes = Buffer.byteLength(JSON.stringify(o));
    if (current.length > 0 && size + bytes + 1 > maxBody) {
      out.push(current);
      current = [];
      size = empty;
    }
    size += bytes + (current.length > 0 ? 1 : 0);
    current.push(o);
  }
  if (current.length > 0) out.push(current);
  return out;
}

/** Sorts URLs by the answer they got: 2xx (and 404: nothing cached) done; 408, 429, 5xx again; the rest failed. */
function judge(out: FlushOutcome, urls: readonly string[], status: number, retryAfter: string | null, detail = ''): void {
  const error = `HTTP ${status}${detail ? `: ${detail}` : ''}`;
  if ((status >= 200 && status < 300) || status === 404) out.done.push(...urls);
  else if (status === 408 || status === 429 || status >= 500) out.retry.push(...urls.map((url) => ({ url, error })));
  else out.failed.push(...urls.map((url) => ({ url, error })));
  const wait = retryAfterMs(retryAfter);
  if (wait !== null) out.retryAfterMs = Math.max(out.retryAfterMs ?? 0, wait);
}

/** `Retry-After` as seconds or an HTTP date, in ms; null when absent or unreadable. Capped at an hour. */
export function retryAfterMs(value: string | null, now = Date.now()): number | null {
  if (value === null || value.trim() === '') return null;
  const seconds = Number(value.trim());
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - now;
  return Number.isFinite(ms) ? Math.min(Math.max(0, ms), 3_600_000) : null;
}

/** Fast Purge's problem `detail` (or `title`), short; never the request. */
function problemDetail(text: string): string {
  try {
    const body = JSON.parse(text) as { detail?: unknown; title?: unknown };
    const d = typeof body.detail === 'string' ? body.detail : typeof body.title === 'string' ? body.title : '';
    return d.slice(0, 200);
  } catch {
    return '';
  }
}
