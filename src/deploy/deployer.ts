/**
 * The deploy step machine (SPEC § Deploys, rollbacks, reloads). A deploy belongs to the gateway, not to
 * the client that asked for it: it runs to the end whoever is watching. One runs per app at a time.
 *
 * Order, after kamal-proxy's DeployService: start the new generation, wait until it is healthy, switch
 * the routing pointer, drain the old generation, stop it. Anything that fails before the switch stops
 * the new generation and leaves the old one serving untouched.
 */
import { join } from 'node:path';
import type { AppConfig } from '../config/schema.ts';
import { buildManifest, changedPaths, manifestOf, saveManifest } from '../flush/manifest.ts';
import { flushUrls } from '../flush/flush-plan.ts';
import type { Logger } from '../lib/logger.ts';
import { BerthError, errorMessage, ErrorCodes } from '../lib/errors.ts';
import { redactNullable, redactText } from '../lib/redact.ts';
import type { DeployEvent, DeployRecord, Store } from '../store/store.ts';
import type { Supervisor, Generation } from '../supervisor/supervisor.ts';
import { COMMAND_TIMEOUT_MS, Deploy, fetchSourceOf, FLEET_USER, type DeployableApp, type DeployHost, type DeployLocks, type DeployRequest, type DeployStep } from './deploy.ts';
import { resolveProcesses } from './procfile.ts';
import { runCommand } from './command-runner.ts';
import { appEnv, commandVars } from '../supervisor/app-env.ts';
import { gatewayUser, type AppUser } from '../supervisor/app-user.ts';
import { ownRelease, prepareAppDirs } from '../supervisor/state-access.ts';

// The deploy itself and what it is asked (deploy.ts), for whoever drives a deployer.
export * from './deploy.ts';

/** After the drain deadline, how long WebSockets closed with 1001 get to finish closing before stop_old. */
const UPGRADE_CLOSE_WAIT_MS = 1_000;
/**
 * A draining generation that served a request of a cookie-affinity route this recently is not done,
 * even with nothing in flight: that client's next request (a long poll's next poll, a page's next
 * click) comes back to it (proxy/affinity.ts). Always within `timeouts.drain`.
 */
export const AFFINITY_LINGER_MS = 5_000;
/** Deploys kept in memory for `GET /v1/deploys/:id` after they finish (older ones come from the store). */
const RECENT_LIMIT = 100;

class StepFailure extends Error {
  readonly step: DeployStep;
  readonly tail: string[];
  constructor(step: DeployStep, message: string, tail: string[] = [], cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.step = step;
    this.tail = tail;
  }
}

export interface DeployerOptions {
  host: DeployHost;
  store: Store;
  supervisor: Supervisor;
  logger: Logger;
  stateDir: string;
  /** The gateway's environment; only its pass-through list reaches build and release commands (app-env.ts). */
  baseEnv?: Record<string, string | undefined>;
  /** Who runs an app's build and release commands and owns its new releases (app-user.ts). Default: the gateway's user. */
  appUser?: (app: AppConfig) => AppUser;
  /** A fleet's deploy locks; without them the deployer's own map is the only lock. */
  locks?: DeployLocks;
}

export class Deployer {
  #host: DeployHost;
  #store: Store;
  #supervisor: Supervisor;
  #log: Logger;
  #stateDir: string;
  #baseEnv: Record<string, string | undefined>;
  #appUser: (app: AppConfig) => AppUser;
  #locks: DeployLocks | null;
  /** Apps whose `start` is taking the fleet lock. */
  #starting = new Set<string>();
  #running = new Map<string, Deploy>();
  #recent = new Map<string, Deploy>();
  /** Every deploy's whole run, up to its last store write (which comes after `done` resolves). */
  #work = new Set<Promise<void>>();
  #stopping = false;

  constructor(opts: DeployerOptions) {
    this.#host = opts.host;
    this.#store = opts.store;
    this.#supervisor = opts.supervisor;
    this.#log = opts.logger;
    this.#stateDir = opts.stateDir;
    this.#baseEnv = opts.baseEnv ?? process.env;
    this.#appUser = opts.appUser ?? gatewayUser;
    this.#locks = opts.locks ?? null;
  }

  /** The deploy running for an app now, if any. */
  running(app: string): Deploy | undefined {
    return this.#running.get(app);
  }

  /** A deploy by id: from memory while recent, else from the store. */
  async get(id: string): Promise<{ deploy: DeployRecord; events: DeployEvent[]; live: Deploy | null } | null> {
    const live = this.#recent.get(id);
    // A finished deploy may still gain events (its cache flush's attempts, written by the flusher): the store has them all.
    if (live && live.state !== 'running') {
      const stored = await this.#store.listDeployEvents(id).catch(() => []);
      return { deploy: live.record(), events: stored.length >= live.events.length ? stored : live.events, live };
    }
    if (live) return { deploy: live.record(), events: live.events, live };
    const deploy = await this.#store.getDeploy(id);
    if (!deploy) return null;
    return { deploy, events: await this.#store.listDeployEvents(id), live: null };
  }

  /**
   * A deploy, rollback or reload asked for by someone (the control API, a first deploy): in a fleet it
   * takes the app's fleet-wide lock first, so it is the fleet's one change of the app, and its outcome
   * becomes every node's desired state. Then as `begin`. Throws as `begin` does, and 409 naming the node
   * whose deploy holds the lock.
   */
  async start(app: string, req: DeployRequest): Promise<Deploy> {
    const held = this.#host.held?.() ?? null;
    if (held !== null) throw new BerthError(ErrorCodes.conflict, held);
    const locks = this.#locks;
    if (!locks) return this.begin(app, req);
    this.#checkFree(app);
    const target = this.#host.deployable(app);
    if (!target) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
    this.#starting.add(app);
    let token: string;
    try {
      token = await locks.acquire(app);
    } finally {
      this.#starting.delete(app);
    }
    try {
      await this.#fleetCheck(app, req, target);
      return this.begin(app, { ...req, fleet: true, lockToken: token });
    } catch (err) {
      locks.release(app, token);
      throw err;
    }
  }

  /**
   * What a fleet refuses once the lock is held: a first release when the fleet has one by now, and a
   * reload on a node that does not serve the fleet's release (it would reload the wrong one).
   */
  async #fleetCheck(app: string, req: DeployRequest, target: DeployableApp): Promise<void> {
    if (!req.firstRelease && req.kind !== 'reload') return;
    let desired: string | null;
    try {
      desired = (await this.#store.getAppState(app))?.activeRelease ?? null;
    } catch (err) {
      throw new BerthError(ErrorCodes.unavailable, `cannot read the fleet's state of ${app}: ${errorMessage(err)}; nothing was changed`, { cause: err });
    }
    if (req.firstRelease && desired !== null) throw new BerthError(ErrorCodes.conflict, `the fleet has a release of ${app} now: ${desired}`);
    const here = target.active?.releaseId ?? null;
    if (req.kind === 'reload' && desired !== null && here !== desired) {
      throw new BerthError(ErrorCodes.conflict, `this node serves release ${here ?? 'none'} of ${app}, not the fleet's ${desired}: it has not converged; reload from a node that has, or wait`);
    }
  }

  /**
   * Starts a deploy, rollback or reload on this node and returns at once; the work goes on in the
   * gateway. Throws 404 for an unknown app and 409 (with the running deploy's id) when one is already
   * running.
   */
  begin(app: string, req: DeployRequest): Deploy {
    if (this.#stopping) throw new BerthError(ErrorCodes.unavailable, 'the gateway is shutting down');
    const target = this.#host.deployable(app);
    if (!target) throw new BerthError(ErrorCodes.notFound, `no app named "${app}"`);
    if (!req.fleet) this.#checkFree(app);
    const running = this.#running.get(app);
    if (running) {
      throw new BerthError(ErrorCodes.conflict, `a ${running.kind} of ${app} is already running: ${running.id}`, { details: { running: running.id } });
    }
    if (target.booting && !req.boot) throw new BerthError(ErrorCodes.conflict, `app ${app} is still starting; try again when it serves`);
    if (req.kind === 'deploy' && !req.source && !target.config.source) {
      throw new BerthError(ErrorCodes.badRequest, `app ${app} has no source configured; name one: berth deploy ${app} <source>`);
    }
    const deploy = new Deploy(app, req);
    deploy.node = this.#store.node;
    this.#running.set(app, deploy);
    this.#recent.set(deploy.id, deploy);
    if (this.#recent.size > RECENT_LIMIT) this.#recent.delete(this.#recent.keys().next().value!);
    const work: Promise<void> = this.#run(deploy, target).finally(() => {
      this.#unlock(deploy);
      this.#work.delete(work);
    });
    this.#work.add(work);
    return deploy;
  }

  /** Throws 409 when a deploy of the app runs here or is being started. */
  #checkFree(app: string): void {
    const running = this.#running.get(app);
    if (running) throw new BerthError(ErrorCodes.conflict, `a ${running.kind} of ${app} is already running: ${running.id}`, { details: { running: running.id } });
    if (this.#starting.has(app)) throw new BerthError(ErrorCodes.conflict, `a deploy of ${app} is being started`);
  }

  /**
   * Refuses new deploys and waits, up to `deadlineMs`, for running ones to end and record their end
   * (gateway shutdown). Can be called again to wait longer.
   */
  async stop(deadlineMs: number): Promise<void> {
    this.#stopping = true;
    // A build or release command must not hold a shutdown up: it is killed, and the deploy fails.
    for (const d of this.#running.values()) d.abort.abort();
    await Promise.race([Promise.allSettled([...this.#work]), new Promise((r) => setTimeout(r, deadlineMs).unref())]);
  }

  /**
   * On start: deploys a killed gateway left running are marked `interrupted`: this node's, and those
   * that name no node (recorded before deploys named theirs). Another node's running deploy is its own.
   */
  async recoverInterrupted(): Promise<string[]> {
    const stale = (await this.#store.listDeploys({ state: 'running', limit: 1000 })).filter((d) => d.node == null || d.node === this.#store.node);
    for (const d of stale) {
      await this.#store.updateDeploy(d.id, { state: 'interrupted', finishedAt: new Date().toISOString(), error: 'the gateway stopped while this ran' });
      if (d.kind === 'deploy' && d.releaseId && d.user === FLEET_USER) {
        // A release this node was making to follow the fleet may be half built: it goes, and is made again.
        await this.#host.deployable(d.app)?.releases.discard(d.releaseId).catch(() => {});
      } else if (d.kind === 'deploy' && d.releaseId) {
        const rel = await this.#store.getRelease(d.app, d.releaseId);
        if (rel && (rel.state === 'building' || rel.state === 'ready')) await this.#store.setReleaseState(d.app, d.releaseId, 'failed');
      }
      this.#log.warn({ deploy: d.id, app: d.app, kind: d.kind }, 'deploy interrupted by a gateway stop');
    }
    return stale.map((d) => d.id);
  }

  async #run(deploy: Deploy, target: DeployableApp): Promise<void> {
    const app = target.config;
    const log = this.#log.child({ app: app.name, deploy: deploy.id, kind: deploy.kind });
    const old = target.active;
    deploy.previousRelease = old?.releaseId ?? null;
    let gen: Generation | null = null;
    let switched = false;
    let madeRelease: string | null = null;
    log.info({ source: deploy.source }, 'deploy started');
    try {
      await this.#store.createDeploy(deploy.record());
      let release: { id: string; dir: string };
      if (deploy.kind === 'deploy') {
        const source = fetchSourceOf(deploy) ?? app.source!;
        deploy.source = redactText(source);
        const prepared = await this.#step(deploy, 'prepare', async () => {
          const user = this.#appUser(app); // an unknown user or group fails the deploy here, naming it
          await prepareAppDirs(target.releases.appDir, user, app.shared);
          const follow = deploy.follow;
          const r = await target.releases.prepare(source, follow?.releaseId ? { id: follow.releaseId, revision: follow.revision ?? null } : undefined);
          await ownRelease(r.dir, user);
          return { value: r, message: `release ${r.id} from ${r.source}` };
        });
        madeRelease = prepared.id;
        deploy.releaseId = prepared.id;
        await this.#store.updateDeploy(deploy.id, { releaseId: prepared.id, source: deploy.source });
        await this.#step(deploy, 'link', async () => {
          await target.releases.linkShared(prepared);
          return { value: undefined, message: app.shared.length ? `linked ${app.shared.join(', ')}` : 'nothing shared' };
        });
        release = { id: prepared.id, dir: prepared.dir };
        await this.#step(deploy, 'build', async () => {
          if (!app.build) return { value: undefined, status: 'skipped', message: 'no build command' };
          await this.#command(deploy, 'build', app.build, app, release);
          return { value: undefined, message: app.build };
        });
      } else {
        release = await this.#pickRelease(deploy, target);
        deploy.releaseId = release.id;
        await this.#store.updateDeploy(deploy.id, { releaseId: release.id });
      }
      // A release's static manifest is made once its build ran (which may make the assets), while it is
      // prepared, so the flush step after the switch only compares: hashing never waits there.
      if (deploy.kind === 'deploy' && app.cacheFlush) {
        await buildManifest(app, release.dir)
          .then((m) => saveManifest(target.releases.appDir, release.id, m))
          .catch((err) => log.warn({ err: errorMessage(err) }, 'static manifest not made; the flush step makes it'));
      }
      const procfile = await this.#step(deploy, 'release', async () => {
        const resolved = await resolveProcesses(app, release.dir, target.scale);
        if (!resolved.release) return { value: resolved, status: 'skipped', message: 'no release command' };
        await this.#command(deploy, 'release', resolved.release, app, release);
        return { value: resolved, message: resolved.release };
      });
      // The first start of an app skips wait_healthy: its instances restart with backoff while it serves.
      // Any other waits for its generation, which fails at the first exit rather than at startup_timeout.
      const waits = !(deploy.boot && !old);
      gen = await this.#step(deploy, 'start', async () => {
        const g = this.#supervisor.startGeneration(app, release, procfile.processes, { failOnExit: waits });
        const count = g.instances.length;
        return { value: g, message: `generation ${g.id}: ${count} instance${count === 1 ? '' : 's'}` };
      });
      const started = gen;
      await this.#step(deploy, 'wait_healthy', async () => {
        if (!waits) return { value: undefined, status: 'skipped', message: 'first start: the app serves as its instances become ready' };
        try {
          await started.waitReady();
        } catch (err) {
          const tail = err instanceof BerthError && Array.isArray(err.details?.logTail) ? (err.details.logTail as string[]) : [];
          throw new StepFailure('wait_healthy', errorMessage(err), tail, err);
        }
        return { value: undefined, message: 'every instance is ready' };
      });
      await this.#step(deploy, 'switch', async () => {
        // A slow follow (a long build) may be overtaken: the fleet moved on, so this release is not switched to.
        if (deploy.follow && deploy.kind !== 'reload') {
          const now = (await this.#store.getAppState(app.name))?.activeRelease ?? null;
          if (now !== release.id) throw new StepFailure('switch', `the fleet moved on to release ${now ?? 'none'} while this node made ${release.id}`);
        }
        this.#host.switchTo(app.name, started);
        switched = true;
        return { value: undefined, message: old ? `${old.releaseId} -> ${release.id}` : `now serving ${release.id}` };
      });
    } catch (err) {
      // Cleaned up before the deploy is reported failed, so whoever watches it sees the end state.
      if (gen) await this.#supervisor.stopGeneration(gen).catch((e) => log.error({ err: errorMessage(e) }, 'cannot stop the failed generation'));
      // A release this node made to follow the fleet is the fleet's: one node failing to make it says nothing
      // of it. Its directory goes (it may be half built), so that a retry, or a restart, makes it again.
      if (madeRelease && deploy.follow) await target.releases.discard(madeRelease).catch((e) => log.error({ err: errorMessage(e) }, 'cannot remove the release this node failed to make'));
      else if (madeRelease && this.#records(deploy)) await target.releases.markFailed(madeRelease).catch(() => {});
      await this.#fail(deploy, err, log);
      return;
    }
    // After the switch the new release serves; later steps are recorded but cannot undo the switch.
    const releaseId = deploy.releaseId!;
    try {
      await this.#step(deploy, 'current', async () => {
        await target.releases.activate(releaseId);
        if (deploy.follow) {
          this.#host.reloaded?.(app.name, deploy.follow.reloads);
          return { value: undefined, message: `current -> releases/${releaseId} (following the fleet)` };
        }
        // A reload asked of the fleet is counted, and every node that counts fewer reloads its app; the
        // release stays the fleet's.
        if (deploy.kind === 'reload' && deploy.fleet) {
          this.#host.reloaded?.(app.name, await this.#store.requestReload(app.name));
          return { value: undefined, message: `current -> releases/${releaseId} (reload ${releaseId} on every node)` };
        }
        if (!this.#records(deploy)) return { value: undefined, message: `current -> releases/${releaseId} (this node only)` };
        await this.#store.setActiveRelease(app.name, releaseId);
        await this.#store.setReleaseState(app.name, releaseId, 'active');
        await this.#markPrevious(app.name, releaseId);
        return { value: undefined, message: `current -> releases/${releaseId}` };
      });
      if (old) {
        const cut = await this.#step(deploy, 'drain', async () => {
          const deadline = Date.now() + app.timeouts.drainMs;
          let left = await old.idleWithin(app.timeouts.drainMs);
          // Clients an affinity cookie pins to it come back between their requests: while one did
          // lately, it is not done (up to the deadline).
          for (let quiet = affinityQuietIn(old); left === 0 && quiet > 0 && Date.now() < deadline; quiet = affinityQuietIn(old)) {
            await delay(Math.min(quiet, deadline - Date.now()));
            left = await old.idleWithin(Math.max(0, deadline - Date.now()));
          }
          // From here on no request goes to it by affinity: those sessions start again on the new one.
          this.#host.drained?.(app.name, old);
          // WebSockets never end by themselves: at the deadline they are told to go away (1001).
          const closed = left > 0 && this.#host.closeUpgrades ? this.#host.closeUpgrades(old) : 0;
          if (closed > 0) left = await old.idleWithin(UPGRADE_CLOSE_WAIT_MS);
          const ws = closed > 0 ? `${closed} WebSocket(s) closed with 1001` : '';
          const message =
            left === 0 ? (closed > 0 ? `${old.id} drained at the deadline: ${ws}` : `${old.id} drained`) : `drain timeout: ${ws ? `${ws}, ` : ''}${left} request(s) still in flight will be cut`;
          return { value: left, message };
        });
        if (cut > 0) log.warn({ generation: old.id, inFlight: cut }, 'requests cut at drain deadline');
        await this.#step(deploy, 'stop_old', async () => {
          await this.#supervisor.stopGeneration(old);
          return { value: undefined, message: `${old.id} stopped` };
        });
      } else {
        await this.#skip(deploy, 'drain', 'no previous generation');
        await this.#skip(deploy, 'stop_old', 'no previous generation');
      }
      await this.#step(deploy, 'flush', () => this.#flush(deploy, target, old, releaseId));
      await this.#step(deploy, 'prune', async () => {
        const previous = old && old.releaseId !== releaseId ? old.releaseId : await this.#previousGood(app.name, releaseId);
        const pruned = await target.releases.prune(releaseId, previous, { record: this.#records(deploy) });
        // What a rollback would pick may have been pruned: the label follows it.
        if (pruned.length > 0 && this.#records(deploy)) await this.#markPrevious(app.name, releaseId);
        return { value: undefined, message: pruned.length ? `pruned ${pruned.join(', ')}` : 'nothing to prune' };
      });
      await this.#step(deploy, 'record', async () => ({ value: undefined, message: 'recorded' }));
      this.#unlock(deploy);
      deploy.finish('succeeded');
      await this.#store.updateDeploy(deploy.id, { state: 'succeeded', finishedAt: deploy.finishedAt });
      log.info({ release: releaseId, follow: deploy.follow !== null }, 'deploy succeeded');
    } catch (err) {
      // The switch happened: the deploy is done for traffic, so what failed after it is recorded. The old
      // generation still gets no new requests: drain and stop it anyway rather than leave it running.
      log.error({ err: errorMessage(err) }, 'deploy step after the switch failed');
      if (old && old.state !== 'stopping' && old.state !== 'stopped') {
        await old.idleWithin(app.timeouts.drainMs);
        this.#host.drained?.(app.name, old);
        await this.#supervisor.stopGeneration(old).catch((e) => log.error({ err: errorMessage(e) }, 'cannot stop the old generation'));
      }
      await this.#fail(deploy, err, log);
    }
  }

  /**
   * The `flush` step: the paths the switch changed (the old and new releases' static manifests, and
   * `cache_flush.paths`) become URLs through the enabled rules, and a flush of them is queued; it runs in
   * the background. Nothing here fails the deploy: a flush that cannot be queued is said and skipped.
   */
  async #flush(deploy: Deploy, target: DeployableApp, old: Generation | null, releaseId: string): Promise<{ value: undefined; message: string; status?: 'skipped' }> {
    const app = target.config;
    const flush = app.cacheFlush;
    const skip = (message: string) => ({ value: undefined, status: 'skipped' as const, message });
    if (!flush) return skip('no cache_flush config');
    if (deploy.follow) return skip('the fleet\'s deploy flushes the cache');
    if (!this.#records(deploy)) return skip('a change of this node alone: nothing the CDN serves changed');
    if (deploy.kind === 'reload') return skip('a reload changes no file');
    if (!this.#host.flush) return skip('this gateway has no flusher');
    try {
      const appDir = target.releases.appDir;
      const dir = await target.releases.dirOf(releaseId);
      if (!dir) return skip(`release ${releaseId} is gone from disk`);
      const after = await manifestOf(app, appDir, releaseId, dir);
      const before = old && old.releaseId !== releaseId ? await manifestOf(app, appDir, old.releaseId, old.releaseDir) : null;
      const changed = before ? changedPaths(before, after) : [];
      const urls = flushUrls(app, flush, [...new Set([...changed, ...flush.paths])]);
      const what = `${changed.length} changed path(s)${flush.paths.length ? ` and ${flush.paths.length} listed in cache_flush.paths` : ''}`;
      if (urls.length === 0) return skip(`${what}: no URL to purge (rules enabled: ${flush.enable.join(', ') || 'none'})`);
      // Its first attempt waits for the deploy's end: the deploy's own events come first.
      const id = await this.#host.flush({ app: app.name, deployId: deploy.id, urls, user: deploy.user, after: deploy.done }, flush);
      return { value: undefined, message: `${what} -> ${urls.length} URL(s): flush ${id} queued` };
    } catch (err) {
      this.#log.error({ app: app.name, deploy: deploy.id, err: errorMessage(err) }, 'cache flush not queued');
      return skip(`cache flush not queued: ${errorMessage(err)}`);
    }
  }

  /**
   * Lets the next deploy of the app start. Done before a deploy is reported finished, so a client that
   * follows one deploy to its end and starts the next at once is not refused with 409.
   */
  #unlock(deploy: Deploy): void {
    if (this.#running.get(deploy.app) !== deploy) return;
    this.#running.delete(deploy.app);
    if (deploy.fleet && deploy.lockToken !== null) this.#locks?.release(deploy.app, deploy.lockToken);
  }

  /**
   * Whether the deploy writes its release's rows and the app's active release. In a fleet only a deploy
   * that holds the fleet lock does: one that follows the fleet, or one this node alone asked for (a
   * config reload, a reload trigger), serves its release here without making it the fleet's.
   */
  #records(deploy: Deploy): boolean {
    return !deploy.follow && (this.#locks === null || deploy.fleet);
  }

  async #pickRelease(deploy: Deploy, target: DeployableApp): Promise<{ id: string; dir: string }> {
    const app = target.config.name;
    // A fleet's rollback goes back from the fleet's release, which this node may not serve yet.
    const fleetActive = deploy.fleet ? ((await this.#store.getAppState(app))?.activeRelease ?? null) : null;
    const active = fleetActive ?? target.active?.releaseId ?? (await this.#store.getAppState(app))?.activeRelease ?? null;
    let id: string | null;
    if (deploy.kind === 'reload') {
      id = active;
      if (!id) throw new StepFailure('release', `app ${app} has no active release to reload`);
    } else {
      id = deploy.requested;
      if (!id) {
        id = await this.#previousGood(app, active);
        if (!id) throw new StepFailure('release', `app ${app} has no previous good release to roll back to`);
      }
    }
    const record = await this.#store.getRelease(app, id);
    const dir = await target.releases.dirOf(id);
    // A failed release keeps its state once pruned (ReleaseStore.prune); say both. A node following the
    // fleet goes where the fleet went.
    if (deploy.kind === 'rollback' && record?.state === 'failed' && !deploy.follow) throw new StepFailure('release', `release ${id} of ${app} failed${dir ? '' : ' and was pruned'}; it cannot be rolled back to`);
    if (!dir) throw new StepFailure('release', `release ${id} of ${app} does not exist${record?.state === 'pruned' ? ' (pruned)' : ''}`);
    return { id, dir };
  }

  /**
   * Labels `previous` the one release a rollback would go back to (#previousGood), and no other: the
   * release labelled before goes back to `ready`, and so does any `active` row but the active release.
   */
  async #markPrevious(app: string, activeId: string): Promise<void> {
    const target = await this.#previousGood(app, activeId);
    for (const r of await this.#store.listReleases(app)) {
      if (r.id === target) {
        if (r.state !== 'previous') await this.#store.setReleaseState(app, r.id, 'previous');
      } else if (r.state === 'previous' || (r.state === 'active' && r.id !== activeId)) {
        await this.#store.setReleaseState(app, r.id, 'ready');
      }
    }
  }

  /** The newest release before `current` that did not fail and still exists. */
  async #previousGood(app: string, current: string | null): Promise<string | null> {
    // Newest first by creation time. Two ids made in the same second do not sort by time (the random
    // suffix decides), so what is older than `current` is what comes after it here, not a smaller id.
    const releases = await this.#store.listReleases(app);
    const at = current === null ? -1 : releases.findIndex((r) => r.id === current);
    for (const r of releases.slice(at + 1)) {
      if (r.id === current || r.state === 'failed' || r.state === 'pruned' || r.state === 'building') continue;
      return r.id;
    }
    return null;
  }

  async #command(deploy: Deploy, step: 'build' | 'release', command: string, app: AppConfig, release: { id: string; dir: string }): Promise<void> {
    const user = this.#appUser(app);
    const env = appEnv(this.#baseEnv, { app, user, vars: commandVars(app, release.id) });
    const res = await runCommand({
      command,
      cwd: release.dir,
      env,
      user,
      timeoutMs: COMMAND_TIMEOUT_MS,
      logFile: join(this.#stateDir, 'apps', app.name, 'logs', `deploy-${deploy.id}.log`),
      signal: deploy.abort.signal,
    });
    if (deploy.abort.signal.aborted) throw new StepFailure(step, `${step} command stopped: the gateway is shutting down`, res.tail);
    if (res.timedOut) throw new StepFailure(step, `${step} command timed out after ${COMMAND_TIMEOUT_MS / 60_000} minutes: ${command}`, res.tail);
    if (res.code !== 0) throw new StepFailure(step, `${step} command exited with ${res.code ?? res.signal}: ${command}`, res.tail);
  }

  async #step<T>(deploy: Deploy, step: DeployStep, fn: () => Promise<{ value: T; message: string; status?: 'succeeded' | 'skipped' }>): Promise<T> {
    const at = new Date();
    const started = performance.now();
    await this.#event(deploy, { step, status: 'started', at: at.toISOString(), durationMs: null, message: null });
    try {
      const { value, message, status } = await fn();
      await this.#event(deploy, { step, status: status ?? 'succeeded', at: new Date().toISOString(), durationMs: Math.round(performance.now() - started), message });
      return value;
    } catch (err) {
      const failure = err instanceof StepFailure ? err : new StepFailure(step, errorMessage(err), [], err);
      await this.#event(deploy, { step, status: 'failed', at: new Date().toISOString(), durationMs: Math.round(performance.now() - started), message: failure.message, lines: failure.tail });
      throw failure;
    }
  }

  async #skip(deploy: Deploy, step: DeployStep, message: string): Promise<void> {
    await this.#event(deploy, { step, status: 'skipped', at: new Date().toISOString(), durationMs: 0, message });
  }

  async #event(deploy: Deploy, e: Omit<DeployEvent, 'deployId' | 'seq'>): Promise<void> {
    // Messages and output lines can quote the source (git echoes its URL): never with its credentials.
    const event: DeployEvent = { deployId: deploy.id, seq: deploy.events.length + 1, ...e, message: redactNullable(e.message) };
    if (e.lines) event.lines = e.lines.map((l) => redactText(l));
    deploy.emit(event);
    try {
      await this.#store.addDeployEvent(event);
    } catch (err) {
      this.#log.error({ deploy: deploy.id, err: errorMessage(err) }, 'cannot record deploy event');
    }
  }

  async #fail(deploy: Deploy, err: unknown, log: Logger): Promise<void> {
    const failure = err instanceof StepFailure ? err : null;
    deploy.failedStep = failure?.step ?? null;
    deploy.error = redactText(errorMessage(err));
    deploy.logTail = (failure?.tail ?? []).map((l) => redactText(l));
    this.#unlock(deploy);
    deploy.finish('failed');
    log.error({ step: deploy.failedStep, err: deploy.error }, 'deploy failed');
    await this.#store
      .updateDeploy(deploy.id, { state: 'failed', finishedAt: deploy.finishedAt, failedStep: deploy.failedStep, error: deploy.error, logTail: deploy.logTail })
      .catch((e) => log.error({ err: errorMessage(e) }, 'cannot record deploy failure'));
  }
}

/** Milliseconds until AFFINITY_LINGER_MS have passed since a cookie-affinity request last ended on `gen`; 0: quiet already. */
function affinityQuietIn(gen: Generation): number {
  let last = 0;
  for (const inst of gen.instances) if (inst.lastAffineAt > last) last = inst.lastAffineAt;
  return last === 0 ? 0 : Math.max(0, last + AFFINITY_LINGER_MS - Date.now());
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
