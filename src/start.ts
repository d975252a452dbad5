import { loadConfig } from './config/load.ts';
import { gatewayLogFile, LoggerFactory } from './lib/logger.ts';
import { ConfigError, errorMessage } from './lib/errors.ts';
import { Gateway } from './gateway.ts';
import { CONFIG_OPTIONS, loadOptions, parse } from './cli/options.ts';
import { checkUsers } from './cli/user-checks.ts';
import { resolve } from 'node:path';
import { Successor } from './upgrade/successor.ts';
import { removePidFile } from './upgrade/pid-file.ts';

export const START_USAGE = 'berth start [--config F] [--config-name N] [--env E] [--pid-file F]';

const START_OPTIONS = { ...CONFIG_OPTIONS, 'pid-file': { type: 'string' } } as const;

/**
 * `berth start`: runs the gateway in the foreground until SIGTERM/SIGINT or `berth stop`, then shuts
 * down gracefully and exits 0. A second signal during shutdown forces it: every app process group is
 * killed and the exit status is 1. SIGHUP reloads the config, SIGUSR2 upgrades the gateway (as
 * `berth upgrade` does). Started by an upgrade (upgrade/successor.ts), it takes over from the old gateway.
 */
export async function start(args: string[]): Promise<number> {
  const { values } = parse(args, START_OPTIONS);
  const options = loadOptions(values);
  // Read before anything can fail: a new gateway that cannot start must say so to the old one.
  const successor = Successor.fromEnvironment();
  const pidFile = values['pid-file'] === undefined ? null : resolve(values['pid-file']);
  const config = await loadConfig(options);
  // Refused before anything is touched, as a bad config is (exit 2): see user-checks.ts.
  const users = checkUsers(config);
  if (users.problems.length > 0) throw new ConfigError(users.problems);
  const loggers = new LoggerFactory(config.logLevels);
  // The gateway's own log: stdout, and <state_dir>/logs/berth.log rotated as app logs are.
  loggers.logToFile({ file: gatewayLogFile(config.stateDir) });
  const log = loggers.get('root');
  for (const w of users.warnings) log.warn({ warning: w }, 'control permissions are not enforced against app code');
  const gateway = new Gateway({ config, loggers, loadOptions: options, successor, pidFile });

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
  // SIGUSR2 upgrades, as nginx and gunicorn do: a new gateway from the installed code takes over.
  process.on('SIGUSR2', () => {
    log.info({ signal: 'SIGUSR2' }, 'upgrading');
    void gateway.upgradeOnSignal();
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
  if (pidFile !== null) await removePidFile(pidFile);
  log.info({}, 'gateway stopped');
  loggers.flush();
  return 0;
}
