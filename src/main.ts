/**
 * Entry point of the `berth` command: parses the verb and hands over to src/cli/<verb>.ts.
 * Exit status: 0 success, 1 runtime failure, 2 bad arguments or bad config.
 */
import { ConfigError, BerthError, errorMessage, formatProblems } from './lib/errors.ts';
import { VERSION } from './lib/version.ts';
import { UsageError } from './cli/options.ts';
import { start, START_USAGE } from './start.ts';
import { check, CHECK_USAGE } from './cli/check.ts';
import { init, INIT_USAGE } from './cli/init.ts';
import { status, STATUS_USAGE } from './cli/status.ts';
import { routes, ROUTES_USAGE } from './cli/routes.ts';
import { certs, CERTS_USAGE } from './cli/certs.ts';
import { stop, STOP_USAGE } from './cli/stop.ts';
import { deploy, DEPLOY_USAGE, rollback, ROLLBACK_USAGE, reload, RELOAD_USAGE } from './cli/deploy.ts';
import { releases, RELEASES_USAGE } from './cli/releases.ts';
import { history, HISTORY_USAGE } from './cli/history.ts';
import { mode, MODE_USAGE } from './cli/mode.ts';
import { run, RUN_USAGE } from './cli/run.ts';
import { logs, LOGS_USAGE } from './cli/logs.ts';
import { tasks, TASKS_USAGE } from './cli/tasks.ts';
import { token, TOKEN_USAGE } from './cli/token.ts';
import { reloadConfig, RELOAD_CONFIG_USAGE } from './cli/reload-config.ts';
import { dashboard, DASHBOARD_USAGE } from './cli/dashboard.ts';
import { flush, FLUSH_USAGE } from './cli/flush.ts';
import { scale, SCALE_USAGE } from './cli/scale.ts';
import { completion, COMPLETION_USAGE } from './cli/completion.ts';
import { upgrade, UPGRADE_USAGE } from './cli/upgrade.ts';

type Verb = (args: string[]) => Promise<number>;

const VERBS: Record<string, { run: Verb; usage: string; summary: string }> = {
  start: { run: start, usage: START_USAGE, summary: 'run the gateway in the foreground' },
  check: { run: check, usage: CHECK_USAGE, summary: 'validate the config; print routes and DB budgets' },
  init: { run: init, usage: INIT_USAGE, summary: 'write a commented berth.yaml for the app in a directory (Procfile, Node.js or Python), asking nothing' },
  status: { run: status, usage: STATUS_USAGE, summary: 'apps, modes, releases and instances' },
  ls: { run: status, usage: STATUS_USAGE.replace('berth status', 'berth ls'), summary: 'the same as status (as pm2 ls)' },
  routes: { run: routes, usage: ROUTES_USAGE, summary: 'host, path, target and mode of every route' },
  certs: { run: certs, usage: CERTS_USAGE, summary: 'each TLS host: certificate source, issuer, expiry, next renewal' },
  deploy: { run: deploy, usage: DEPLOY_USAGE, summary: 'deploy a new release with live progress; exit 0 when it serves' },
  rollback: { run: rollback, usage: ROLLBACK_USAGE, summary: 'go back to the previous good release (or the one named)' },
  reload: { run: reload, usage: RELOAD_USAGE, summary: 'restart the app on its active release with zero downtime' },
  releases: { run: releases, usage: RELEASES_USAGE, summary: 'id, created, state and source of each release' },
  history: { run: history, usage: HISTORY_USAGE, summary: 'every change (deploys, modes, runs, task runs...) with who and the outcome' },
  stop: { run: stop, usage: STOP_USAGE, summary: 'graceful shutdown: drain, stop every app, exit' },
  upgrade: { run: upgrade, usage: UPGRADE_USAGE, summary: 'hand the listeners and running apps to a new gateway from the installed code (as SIGUSR2 does)' },
  flush: { run: flush, usage: FLUSH_USAGE, summary: 'purge the CDN cache of paths (default: every static path) through cache_flush' },
  mode: { run: mode, usage: MODE_USAGE, summary: 'switch an app to normal, maintenance or read-only, live' },
  scale: { run: scale, usage: SCALE_USAGE, summary: 'set how many instances of a process type run, live; kept over the config until <type>=config' },
  run: { run, usage: RUN_USAGE, summary: 'a one-off process in the active release; its output streams, its exit code is ours' },
  logs: { run: logs, usage: LOGS_USAGE, summary: 'process logs merged by time; -f follows across deploys' },
  tasks: { run: tasks, usage: TASKS_USAGE, summary: 'schedule entries with next and last run; --runs lists runs' },
  'reload-config': { run: reloadConfig, usage: RELOAD_CONFIG_USAGE, summary: 're-read the config and apply it live (as SIGHUP does)' },
  dashboard: { run: dashboard, usage: DASHBOARD_USAGE, summary: 'open the web dashboard through a local proxy and print its URL' },
  token: { run: token, usage: TOKEN_USAGE, summary: 'hash a control API token from stdin, or make a new one' },
  completion: { run: (args) => Promise.resolve(completion(args, VERBS)), usage: COMPLETION_USAGE, summary: 'a bash or zsh completion script, made from these verbs' },
};

function usage(): string {
  return [
    `berth ${VERSION}: a zero-downtime application gateway`,
    '',
    'usage:',
    ...Object.values(VERBS).flatMap((v) => [`  ${v.usage}`, `      ${v.summary}`]),
    '',
    'The config file is --config F, else $BERTH_CONFIG, else configs/<N>.yaml for --config-name N (or $BERTH_CONFIG_NAME), else ./berth.yaml.',
    'Client verbs reach the gateway on its control socket: --socket PATH, else $BERTH_CONTROL_SOCKET, else the config\'s.',
    'A remote gateway: --url http://host:port (its control.listen) with the token in $BERTH_TOKEN.',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === undefined || verb === 'help' || verb === '--help' || verb === '-h') {
    process.stdout.write(usage() + '\n');
    return verb === undefined ? 2 : 0;
  }
  if (verb === '--version' || verb === 'version') {
    process.stdout.write(`berth ${VERSION}\n`);
    return 0;
  }
  const entry = VERBS[verb];
  if (!entry) {
    process.stderr.write(`berth: unknown command "${verb}"\n\n${usage()}\n`);
    return 2;
  }
  // Words after `--` belong to the command `berth run` runs (`berth run app -- ls -h`), not to us.
  const own = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (own.includes('--help') || own.includes('-h')) {
    process.stdout.write(`usage: ${entry.usage}\n`);
    return 0;
  }
  try {
    return await entry.run(rest);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`berth: invalid config\n${formatProblems(err.problems)}\n`);
      return 2;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`berth ${verb}: ${err.message}\nusage: ${entry.usage}\n`);
      return 2;
    }
    const code = err instanceof BerthError ? ` [${err.code}]` : '';
    process.stderr.write(`berth ${verb}: ${errorMessage(err)}${code}\n`);
    return 1;
  }
}

const code = await main(process.argv.slice(2));
// Done (for `start`: the gateway has stopped and flushed its logs); do not linger on open handles.
process.exit(code);
