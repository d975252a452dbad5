/**
 * What a flush purges: each path (changed by a deploy, listed in `cache_flush.paths`, or named by hand)
 * that an enabled rule takes, expanded through that rule's templates. `{path}` is the path without its
 * leading slash, each segment percent-encoded (as exodus-gw's ARLs take it); a template without `{path}`
 * gets the path appended. `{ttl}` is the rule's `ttl`, else what the path's static route's `cache`
 * setting says (max-age), as Akamai writes TTLs (`1d`, `30m`, `10s`).
 */
import type { AppConfig, CacheFlushConfig, CacheFlushRule } from '../config/schema.ts';

/** `cache: immutable`: a year, as static.ts sends it. */
const IMMUTABLE_SECONDS = 31_536_000;

/** The URLs (or ARLs) to purge for `paths`, each once, in order. */
export function flushUrls(app: Pick<AppConfig, 'routes'>, flush: Pick<CacheFlushConfig, 'rules' | 'enable'>, paths: readonly string[]): string[] {
  const rules = flush.rules.filter((r) => flush.enable.includes(r.name)).map((r) => ({ rule: r, includes: r.includes.map((p) => new RegExp(p)), excludes: r.excludes.map((p) => new RegExp(p)) }));
  const out = new Set<string>();
  for (const path of paths) {
    for (const { rule, includes, excludes } of rules) {
      if (includes.length > 0 && !includes.some((re) => re.test(path))) continue;
      if (excludes.some((re) => re.test(path))) continue;
      for (const template of rule.templates) out.add(expand(template, path, ttlOf(rule, app, path)));
    }
  }
  return [...out];
}

function expand(template: string, path: string, ttl: string): string {
  const encoded = path.replace(/^\/+/, '').split('/').map((s) => encodeURIComponent(s)).join('/');
  const withTtl = template.replaceAll('{ttl}', ttl);
  // `{path}` right after the host (`https://cdn.example.com{path}`) still makes a URL: the slash goes back.
  if (withTtl.includes('{path}')) return withTtl.replace(/^(https?:\/\/[^/?#{]+)\{path\}/i, '$1/{path}').replaceAll('{path}', encoded);
  return withTtl.endsWith('/') ? withTtl + encoded : `${withTtl}/${encoded}`;
}

/** The rule's ttl, else the max-age of the static route that serves `path`, else 0. */
function ttlOf(rule: CacheFlushRule, app: Pick<AppConfig, 'routes'>, path: string): string {
  if (rule.ttlSeconds !== null) return akamaiTtl(rule.ttlSeconds);
  let best: AppConfig['routes'][number] | null = null;
  for (const r of app.routes) {
    if (r.static === null) continue;
    const under = r.path === '/' || path === r.path || path.startsWith(r.path + '/');
    if (under && (best === null || r.path.length > best.path.length)) best = r;
  }
  if (best === null || best.cache === null) return akamaiTtl(0);
  if (best.cache === 'immutable') return akamaiTtl(IMMUTABLE_SECONDS);
  const maxAge = /(?:^|[\s,])max-age=(\d+)/i.exec(best.cache);
  return akamaiTtl(maxAge ? Number(maxAge[1]) : 0);
}

/** Seconds as Akamai writes a TTL: the largest whole unit of d, h, m, s. */
export function akamaiTtl(seconds: number): string {
  for (const [unit, size] of [['d', 86_400], ['h', 3_600], ['m', 60]] as const) if (seconds > 0 && seconds % size === 0) return `${seconds / size}${unit}`;
  return `${seconds}s`;
}
