import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const FLUSH_USAGE = 'berth flush <app> [path...] [--json]';

/**
 * `berth flush <app> [path...]`: purges the CDN's cache of the paths named (each starting with `/`),
 * else of every static path of the active release and `cache_flush.paths`, through the app's enabled
 * rules. The flush runs in the gateway; `berth history` shows its outcome.
 */
export async function flush(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, CLIENT_OPTIONS, true);
  if (positionals.length < 1) throw new UsageError('expected an app name, then the paths to flush (or none: every static path)');
  const [app, ...paths] = positionals;
  for (const p of paths) if (!p.startsWith('/')) throw new UsageError(`paths start with "/": got "${p}"`);
  const client = await clientFor(values);
  const res = await client.call<{ id: string; urls: number }>('POST', `/v1/apps/${encodeURIComponent(app!)}/flush`, paths.length > 0 ? { paths } : {});
  if (values.json) process.stdout.write(JSON.stringify(res, null, 2) + '\n');
  else process.stdout.write(`flush ${res.id} queued: ${res.urls} URL(s); its outcome shows in berth history ${app}\n`);
  return 0;
}
