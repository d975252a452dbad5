/**
 * `berth upgrade`: the gateway starts a new gateway from the installed code and hands it its listeners
 * and running apps (upgrade/predecessor.ts); exit 0 once the new one serves, which is then checked
 * through the control socket (the new gateway answers on it). Any failure leaves the old gateway
 * serving, and exits 1 with its reason.
 */
import type { GatewayStatus } from '../api/wire.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import type { UpgradeResult } from '../upgrade/predecessor.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const UPGRADE_USAGE = 'berth upgrade [--wait S] [--json] [--socket PATH | --url URL | --config F]';

const OPTIONS = { ...CLIENT_OPTIONS, wait: { type: 'string' } } as const;

export async function upgrade(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, OPTIONS, true);
  if (positionals.length > 0) throw new UsageError('expected no arguments: the new gateway runs the code installed now, with the same command line');
  let wait: number | undefined;
  if (values.wait !== undefined) {
    wait = Number(values.wait);
    if (!Number.isFinite(wait) || wait < 0 || wait > 86_400) throw new UsageError(`--wait: expected seconds from 0 to 86400, got "${values.wait}"`);
  }
  const client = await clientFor(values);
  const result = await client.call<UpgradeResult>('POST', '/v1/upgrade', wait === undefined ? {} : { wait_seconds: wait });
  // The control socket is the new gateway's now: it must say so.
  const status = await client.call<GatewayStatus>('GET', '/v1/status');
  if (status.pid !== result.to.pid) {
    throw new BerthError(ErrorCodes.upgrade, `the upgrade said pid ${result.to.pid} took over, but pid ${status.pid} answers the control API`);
  }
  if (values.json) process.stdout.write(JSON.stringify({ ...result, status: { pid: status.pid, version: status.version } }, null, 2) + '\n');
  else process.stdout.write(`upgraded: pid ${result.from.pid} (berth ${result.from.version}) handed over to pid ${result.to.pid} (berth ${result.to.version}); the old gateway drains and exits\n`);
  return 0;
}
