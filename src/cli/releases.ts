import type { ReleaseRecord } from '../store/store.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';
import { formatTable } from './table.ts';

export const RELEASES_USAGE = 'berth releases <app> [--json]';

/** `berth releases <app>`: id, created, state and source of each release, newest first. */
export async function releases(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, CLIENT_OPTIONS, true);
  if (positionals.length !== 1) throw new UsageError('expected one app name');
  const client = await clientFor(values);
  const res = await client.call<{ app: string; active: string | null; releases: ReleaseRecord[] }>('GET', `/v1/apps/${encodeURIComponent(positionals[0])}/releases`);
  if (values.json) {
    process.stdout.write(JSON.stringify(res, null, 2) + '\n');
    return 0;
  }
  if (res.releases.length === 0) {
    process.stdout.write(`${res.app} has no releases yet\n`);
    return 0;
  }
  process.stdout.write(formatTable(['id', 'created', 'state', 'revision', 'source'], res.releases.map((r) => [r.id, r.createdAt, stateLabel(r), r.revision?.slice(0, 12), r.source])) + '\n');
  return 0;
}

/**
 * The state column: a release whose directory was pruned but whose state says more than `pruned` (a
 * failed one) shows both, e.g. `failed, pruned`. A gateway older than `prunedAt` leaves the field out.
 */
export function stateLabel(r: Pick<ReleaseRecord, 'state'> & { prunedAt?: string | null }): string {
  return r.prunedAt != null && r.state !== 'pruned' ? `${r.state}, pruned` : r.state;
}
