/**
 * Config reload (SIGHUP, `berth reload-config`): re-reads the config the way the gateway first read it,
 * plans what changes (reload-plan.ts, pure), refuses the whole reload when the plan has problems, and
 * only then applies it. Routing, limits, modes' pages, auth, log levels and schedules apply at once;
 * apps whose process definitions changed get a zero-downtime reload; new apps boot; removed apps leave
 * the routing table, drain and stop. Listeners stay open.
 *
 * Nothing is applied until everything that can refuse the reload has run: loading validates the file,
 * and the plan lists every restart-only change. What follows in `#apply` cannot throw: it assigns
 * objects made before the first change and hands the new config to components whose setters do not
 * throw on a config that loaded. The app boots, reloads and retirements it starts run on their own and
 * report through status, logs and the audit log: an app that then fails to boot or reload is that
 * app's failure, and undoes nothing else of the reload.
 */
import type { BerthConfig } from '../config/schema.ts';
import { loadConfig, type LoadOptions } from '../config/load.ts';
import type { Logger, LoggerFactory } from '../lib/logger.ts';
import { BerthError, ConfigError, errorMessage, ErrorCodes, type ConfigProblem } from '../lib/errors.ts';
import { budgetProblem, withScale } from '../deploy/scale.ts';
import type { AuditChannel } from '../store/store.ts';
import type { Deploy } from '../deploy/deployer.ts';
import type { Supervisor } from '../supervisor/supervisor.ts';
import { audited, deployEnd, type AuditWriter } from '../api/audit.ts';
import type { ConfigReloadResult } from '../api/wire.ts';
import type { Apps, GatewayLive } from './apps.ts';
import { planReload, reloadSummary, type ReloadPlan } from './reload-plan.ts';

type By = { user: string; channel: AuditChannel };

export interface ConfigReloadOptions {
  live: GatewayLive;
  loadOptions: LoadOptions;
  apps: Apps;
  supervisor: Pick<Supervisor, 'generations' | 'stopGeneration'>;
  audit: AuditWriter;
  loggers: LoggerFactory;
  /**
   * What may still refuse the reload once the plan has no problems (the certificates: every new file
   * read and checked). Throws ConfigError, having changed nothing; resolves having applied its part.
   */
  prepare(next: BerthConfig): Promise<void>;
  /** Makes `next` the config in effect for every component that reads it live. Must not throw. */
  useConfig(next: BerthConfig): void;
}

export class ConfigReload {
  #opts: ConfigReloadOptions;
  #log: Logger;
  #running = false;

  constructor(opts: ConfigReloadOptions) {
    this.#opts = opts;
    this.#log = opts.loggers.get('root');
  }

  /**
   * Reloads the config. An invalid config, or one that changes what only a restart can
   * (RESTART_ONLY_KEYS), throws ConfigError listing every problem, and nothing changes.
   */
  async reload(by: By): Promise<ConfigReloadResult> {
    const state = this.#opts.live.state();
    if (state !== 'running') throw new BerthError(ErrorCodes.unavailable, `the gateway is ${state}`);
    if (this.#running) throw new BerthError(ErrorCodes.conflict, 'a config reload is already running');
    const held = this.#opts.live.held?.() ?? null;
    if (held !== null) throw new BerthError(ErrorCodes.conflict, held);
    this.#running = true;
    try {
      const next = await loadConfig(this.#opts.loadOptions);
      const plan = planReload(this.#opts.live.config(), next);
      const problems = [...plan.problems, ...this.#scaleProblems(next)];
      if (problems.length > 0) throw new ConfigError(problems);
      await this.#opts.prepare(next);
      return this.#apply(next, plan, by);
    } finally {
      this.#running = false;
    }
  }

  /**
   * The new config with the counts `berth scale` set must still fit each app's `db_connections` (the
   * file alone was checked as it loaded). A Procfile app's types are known only from its release: its
   * reload (or next deploy) checks them, and fails naming the override.
   */
  #scaleProblems(next: BerthConfig): ConfigProblem[] {
    const problems: ConfigProblem[] = [];
    for (const app of Object.values(next.apps)) {
      const scale = this.#opts.apps.get(app.name)?.scale ?? {};
      if (app.processes === null || Object.keys(scale).length === 0) continue;
      const problem = budgetProblem(app, withScale(app.processes, scale));
      if (problem === null) continue;
      const set = Object.entries(scale).map(([t, n]) => `${t}=${n}`).join(' ');
      problems.push({ path: `apps.${app.name}.db_connections`, message: `${problem}, with the instance counts set with berth scale (${set}); change them (berth scale ${app.name} <type>=N or <type>=config) or the budget` });
    }
    return problems;
  }

  /** SIGHUP: reload the config; problems are logged (and audited), never thrown. */
  async onSignal(): Promise<void> {
    const by: By = { user: 'SIGHUP', channel: 'internal' };
    await audited(this.#opts.audit, { ...by, action: 'config-reload', app: null }, () => this.reload(by), (r) => ({ outcome: 'ok', detail: r.summary }), (err) =>
      err instanceof BerthError && err.code === ErrorCodes.conflict ? 'refused' : 'failed',
    ).catch((err) => {
      const problems = err instanceof ConfigError ? err.problems : undefined;
      this.#log.error({ err: errorMessage(err), problems }, 'config reload refused; nothing changed');
    });
  }

  #apply(next: BerthConfig, plan: ReloadPlan, by: By): ConfigReloadResult {
    const apps = this.#opts.apps;
    // Made before anything changes: the runtimes of new apps and the release stores of changed ones.
    const fresh = plan.added.map((name) => apps.create(next.apps[name], null));
    const changed = [...plan.reloaded, ...plan.updated].map((name) => ({ rt: apps.get(name)!, config: next.apps[name], releases: apps.releasesOf(next.apps[name]) }));

    for (const name of plan.removed) apps.delete(name);
    for (const rt of fresh) apps.set(rt);
    for (const c of changed) {
      // The deployer reads the app's config when a reload starts: it must be the new one by then.
      c.rt.config = c.config;
      c.rt.releases = c.releases;
    }
    apps.rebuildTable();
    // Before any boot or reload starts: they read the config in effect (default_user, for one).
    this.#opts.useConfig(next);

    for (const name of plan.removed) void this.#retire(name);
    for (const rt of fresh) apps.boot(rt, apps.restoreMode(rt));
    for (const name of plan.retrigger) apps.watchTrigger(name);
    const result: ConfigReloadResult = {
      config: next.file,
      environment: next.environment,
      added: plan.added,
      removed: plan.removed,
      reloaded: plan.reloaded.map((app) => ({ app, deploy: this.#reloadApp(app, by) })),
      updated: plan.updated,
      unchanged: plan.unchanged,
      summary: '',
    };
    result.summary = reloadSummary(result);
    this.#log.info({ added: result.added, removed: result.removed, reloaded: result.reloaded, updated: result.updated }, 'config reloaded');
    return result;
  }

  /**
   * Starts the zero-downtime reload of an app whose process definition changed, audited as a reload by
   * whoever reloaded the config. Returns the deploy id, or null when it waits for a running deploy (or
   * the app's boot) to end first; an app that failed to boot boots again instead.
   */
  #reloadApp(name: string, by: By): string | null {
    const apps = this.#opts.apps;
    const rt = apps.get(name)!;
    if (rt.phase === 'failed' || (!rt.active && !rt.booting)) {
      rt.phase = 'booting';
      rt.error = null;
      // The front door says "starting" again, not "failed to start", while it boots.
      apps.rebuildTable();
      apps.boot(rt);
      return null;
    }
    const config = rt.config;
    const current = () => this.#opts.live.state() === 'running' && apps.get(name)?.config === config;
    const attempt = (): Deploy | null => {
      const deployer = this.#opts.live.deployer();
      if (!current() || !deployer) return null;
      try {
        return deployer.begin(name, { kind: 'reload', user: by.user });
      } catch (err) {
        if (err instanceof BerthError && err.code === ErrorCodes.conflict) return null;
        throw err;
      }
    };
    const audit = (d: Deploy): string => {
      void audited(this.#opts.audit, { ...by, action: 'reload', app: name, target: d.id, detail: 'config reload' }, () => d, () => d.done.then(() => deployEnd(d)));
      return d.id;
    };
    let now: Deploy | null;
    try {
      now = attempt();
    } catch (err) {
      // The config is applied by now: the app's reload not starting is the app's failure, not the reload's.
      this.#log.error({ app: name, err: errorMessage(err) }, 'config reload: app reload failed to start');
      return null;
    }
    if (now) return audit(now);
    // Busy (a deploy runs, or the app still boots): reload once it is free, with the config of this reload.
    void (async () => {
      while (current()) {
        await Promise.race([this.#opts.live.deployer()?.running(name)?.done, new Promise((r) => setTimeout(r, 200))]);
        const d = attempt();
        if (d) {
          audit(d);
          this.#log.info({ app: name, deploy: d.id }, 'config reload: app reload started');
          return;
        }
      }
    })().catch((err) => this.#log.error({ app: name, err: errorMessage(err) }, 'config reload: app reload failed to start'));
    return null;
  }

  /** A removed app: out of the routing table already; its generations drain, then stop. */
  async #retire(name: string): Promise<void> {
    const log = this.#opts.loggers.get('deploy').child({ app: name });
    await this.#opts.live.deployer()?.running(name)?.done;
    const gens = this.#opts.supervisor.generations(name);
    await Promise.all(
      gens.map(async (gen) => {
        // Woken by the generation's last request or WebSocket ending, not by polling; the deadline bounds it.
        await gen.idleWithin(gen.config.timeouts.drainMs);
        await this.#opts.supervisor.stopGeneration(gen);
      }),
    ).catch((err) => log.error({ err: errorMessage(err) }, 'removed app did not stop cleanly'));
    log.info({ generations: gens.length }, 'removed app stopped');
  }
}
