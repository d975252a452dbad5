/**
 * `berth mode <app> normal|maintenance|read-only [--message M] [--retry-after S]`: switches an app's mode
 * live. It applies from the gateway's next request, is saved in the state store, and shows in `status`
 * and `routes`.
 */
import { MODES } from '../config/schema.ts';
import { CLIENT_OPTIONS, clientFor, parse, UsageError } from './options.ts';

export const MODE_USAGE = 'berth mode <app> normal|maintenance|read-only [--message M] [--retry-after S] [--json] [--socket PATH | --url URL | --config F]';

interface ModeResult {
  app: string;
  mode: string;
  message: string | null;
  retryAfter: number | null;
  was: string;
}

export async function mode(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { ...CLIENT_OPTIONS, message: { type: 'string', short: 'm' }, 'retry-after': { type: 'string' } }, true);
  if (positionals.length !== 2) throw new UsageError('expected an app name and a mode');
  const [app, wanted] = positionals;
  if (!(MODES as readonly string[]).includes(wanted)) throw new UsageError(`unknown mode "${wanted}": expected ${MODES.join(', ')}`);
  const body: { mode: string; message?: string; retry_after?: number } = { mode: wanted };
  if (values.message !== undefined) body.message = values.message;
  const raw = values['retry-after'];
  if (raw !== undefined) {
    if (!/^\d+$/.test(raw)) throw new UsageError(`--retry-after expects a whole number of seconds, got "${raw}"`);
    body.retry_after = Number(raw);
  }
  if (wanted === 'normal' && (body.message !== undefined || body.retry_after !== undefined)) {
    throw new UsageError('--message and --retry-after only apply to maintenance and read-only');
  }
  const client = await clientFor(values);
  const result = await client.call<ModeResult>('PUT', `/v1/apps/${encodeURIComponent(app)}/mode`, body);
  if (values.json) {
    process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    return 0;
  }
  const extra = [result.message ? `message "${result.message}"` : '', result.retryAfter !== null ? `Retry-After ${result.retryAfter}s` : ''].filter(Boolean).join(', ');
  const change = result.was === result.mode ? `${app} stays in ${result.mode}` : `${app}: ${result.was} -> ${result.mode}`;
  process.stdout.write(`${change}${extra ? ` (${extra})` : ''}\n`);
  return 0;
}
