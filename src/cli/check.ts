import { loadConfig } from '../config/load.ts';
import { formatCheckReport } from '../config/describe.ts';
import { ConfigError } from '../lib/errors.ts';
import { CONFIG_OPTIONS, loadOptions, parse } from './options.ts';
import { sharedWarnings } from './shared-checks.ts';
import { checkUsers } from './user-checks.ts';
import { checkCertificates } from './certificate-checks.ts';

export const CHECK_USAGE = 'berth check [--config F] [--config-name N] [--env E] [--json]';

/**
 * `berth check`: validate the config; print routes and DB budgets. A bad config throws ConfigError
 * (exit 2), and so do app users that do not exist (berth root) and permissions that cannot be enforced
 * against app code (berth not root; a warning with control.permissions_unenforced_ok), and certificate
 * files the gateway would refuse (certificate-checks.ts). `shared` entries missing from the state dir are
 * warnings (exit 0): the config is valid, but a deploy would fail.
 */
export async function check(args: string[]): Promise<number> {
  const { values } = parse(args, { ...CONFIG_OPTIONS, json: { type: 'boolean', default: false } });
  const config = await loadConfig(loadOptions(values));
  const users = checkUsers(config);
  const certificates = await checkCertificates(config);
  const problems = [...users.problems, ...certificates.problems];
  if (problems.length > 0) throw new ConfigError(problems);
  const warnings = [...users.warnings, ...sharedWarnings(config), ...certificates.warnings.map((w) => `certificate: ${w}`)];
  for (const w of warnings) process.stderr.write(`berth check: warning: ${w}\n`);
  if (values.json) process.stdout.write(JSON.stringify({ ok: true, warnings, config }, null, 2) + '\n');
  else process.stdout.write(formatCheckReport(config) + '\n');
  return 0;
}
