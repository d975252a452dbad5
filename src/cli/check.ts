import { loadConfig } from '../config/load.ts';
import { formatCheckReport } from '../config/describe.ts';
import { CONFIG_OPTIONS, loadOptions, parse } from './options.ts';

export const CHECK_USAGE = 'berth check [--config F] [--config-name N] [--env E] [--json]';

/** `berth check`: validate the config; print routes and DB budgets. A bad config throws ConfigError (exit 2). */
export async function check(args: string[]): Promise<number> {
  const { values } = parse(args, { ...CONFIG_OPTIONS, json: { type: 'boolean', default: false } });
  const config = await loadConfig(loadOptions(values));
  if (values.json) process.stdout.write(JSON.stringify({ ok: true, config }, null, 2) + '\n');
  else process.stdout.write(formatCheckReport(config) + '\n');
  return 0;
}
