/**
 * `berth reload-config`: asks the gateway to re-read its config file (as SIGHUP does) and prints what
 * changed. A config the gateway refuses changes nothing; its problems are printed and the exit status
 * is 2, as for `berth check`.
 */
import type { ConfigReloadResult } from '../api/wire.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const RELOAD_CONFIG_USAGE = 'berth reload-config [--json] [--socket PATH | --url URL | --config F]';

export async function reloadConfig(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, CLIENT_OPTIONS, true);
  if (positionals.length > 0) throw new UsageError('expected no arguments: the gateway re-reads the file it started with');
  const client = await clientFor(values);
  let result: ConfigReloadResult;
  try {
    result = await client.call<ConfigReloadResult>('POST', '/v1/config/reload', {});
  } catch (err) {
    if (!(err instanceof BerthError) || err.code !== ErrorCodes.config) throw err;
    if (values.json) process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) } }, null, 2) + '\n');
    else process.stderr.write(`berth reload-config: ${err.message}\n`);
    return 2;
  }
  if (values.json) {
    process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    return 0;
  }
  const lines = [`config reloaded from ${result.config}${result.environment ? ` (env ${result.environment})` : ''}`];
  for (const r of result.reloaded) lines.push(`  reload   ${r.app}${r.deploy ? ` (${r.deploy}; follow with berth history ${r.app})` : ' (starts once its running deploy ends)'}`);
  for (const a of result.added) lines.push(`  added    ${a}`);
  for (const a of result.removed) lines.push(`  removed  ${a} (draining, then stopped)`);
  for (const a of result.updated) lines.push(`  updated  ${a}`);
  if (lines.length === 1) lines.push('  no app changed');
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}
