import { loadConfig } from './config/load.ts';
import { LoggerFactory } from './lib/logger.ts';
import { ConfigError, errorMessage } from './lib/errors.ts';
import { Gateway } from './gateway.ts';
import { CONFIG_OPTIONS, loadOptions, parse } from './cli/options.ts';
import { checkUsers } from './cli/user-checks.ts';

export const START_USAGE = 'berth start [--config F] [--config-name N] [--env E]';

/**
 * `berth start`: runs the gateway in the foreground until SIGTERM/SIGINT or `berth stop`, then shuts
 * down gracefully and exits 0. A second signal during shutdown forces it: every app process group is
 * killed and the exit status is 1. SIGHUP reloads the config.
 */
export async function start(args: string[]): Promise<number> {
  const { values } = parse(args, CONFIG_OPTIONS);
  const options = loadOptions(values);
  const config = await loadConfig(options);
  // Refused before anything is touched, as a bad config is (exit 2): see user-checks.ts.
  const users = checkUsers(config);
  if (users.problems.length > 0) throw new ConfigError(users.problems);
  const loggers = new LoggerFactory(config.logLevels);
  const log = loggers.get('root');
  for (const w of users.warnings) log.warn({ warning: w }, 'control permissions are not enforced against app code');
  const gateway = new Gateway({ config, loggers, loadOptions: options });

  // Whatever happens, no app process may outlive the gateway.
  process.once('exit', () => gateway.destroy());
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      log.info({ signal }, 'shutting down');
      void gateway.stop();
    } else {
      log.warn({ signal }, 'forced shutdown');
      gateway.destroy();
      loggers.flush();
      process.exit(1);
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // SIGHUP re-reads the config (as `berth reload-config` does); a bad one is logged and changes nothing.
  process.on('SIGHUP', () => {
    log.info({ signal: 'SIGHUP' }, 'reloading config');
    void gateway.reloadConfigOnSignal();
  });
  process.on('uncaughtException', (err) => {
    log.fatal({ err: errorMessage(err), stack: err.stack }, 'uncaught exception');
    gateway.destroy(err);
    loggers.flush();
    process.exit(1);
  });

  const stopped = new Promise<void>((resolve) => gateway.onStopped(resolve));
  try {
    await gateway.start();
  } catch (err) {
    log.fatal({ err: errorMessage(err) }, 'gateway failed to start');
    loggers.flush();
    process.stderr.write(`berth: ${errorMessage(err)}\n`);
    return 1;
  }
  await stopped;
  log.info({}, 'gateway stopped');
  loggers.flush();
  return 0;
}
