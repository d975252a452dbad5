/**
 * Option parsing shared by the CLI verbs. Bad arguments throw UsageError, which main.ts turns into
 * exit status 2 with the usage line of the verb.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BerthError, errorMessage, ErrorCodes } from '../lib/errors.ts';
import { loadConfig, type LoadOptions } from '../config/load.ts';
import { ControlClient, parseControlUrl } from './client.ts';

export class UsageError extends BerthError {
  constructor(message: string) {
    super(ErrorCodes.usage, message);
    this.name = 'UsageError';
  }
}

/** Options every verb that reads the config accepts. */
export const CONFIG_OPTIONS = {
  config: { type: 'string' },
  'config-name': { type: 'string' },
  env: { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

/** Options every client verb accepts. */
export const CLIENT_OPTIONS = {
  ...CONFIG_OPTIONS,
  socket: { type: 'string' },
  url: { type: 'string' },
  json: { type: 'boolean', default: false },
} as const satisfies ParseArgsConfig['options'];

/** util.parseArgs in strict mode, with its errors turned into UsageError. */
export function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O, allowPositionals = false) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals });
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
}

export function loadOptions(values: { config?: string; 'config-name'?: string; env?: string }): LoadOptions {
  return { configPath: values.config, configName: values['config-name'], env: values.env };
}

/**
 * The control client for a verb: `--url` (a remote gateway's control.listen, with BERTH_TOKEN), else
 * `--socket`, else BERTH_URL, else BERTH_CONTROL_SOCKET, else the socket named by the config (found the
 * same way `berth start` finds it).
 */
export async function clientFor(values: { socket?: string; url?: string; config?: string; 'config-name'?: string; env?: string }): Promise<ControlClient> {
  if (values.url !== undefined && values.socket !== undefined) throw new UsageError('give --url or --socket, not both');
  const url = values.url ?? (values.socket === undefined ? process.env.BERTH_URL || undefined : undefined);
  if (url !== undefined) {
    try {
      parseControlUrl(url);
    } catch (err) {
      throw new UsageError(errorMessage(err));
    }
    return new ControlClient({ url, token: process.env.BERTH_TOKEN || null });
  }
  const socket = values.socket ?? process.env.BERTH_CONTROL_SOCKET;
  if (socket) return new ControlClient(socket);
  const config = await loadConfig(loadOptions(values));
  return new ControlClient(config.control.socket);
}
