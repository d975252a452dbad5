/**
 * `berth upgrade` (or SIGUSR2), the old gateway's side: starts a new gateway from the installed code and
 * hands it everything, with no connection refused and no app restarted (handover.ts has the order).
 *
 * Before: the config on disk must be the one in effect (else the new gateway would serve another one
 * unasked), and whatever cannot be handed over while it runs must end first: deploys, app boots and
 * task runs (waited for, up to the caller's timeout). From then on changes are held back: the control
 * API, reload triggers and config reloads answer 409, scheduled runs wait (the new gateway runs them).
 *
 * If the new gateway exits, says it failed, or does not answer its health lane through its private
 * probe listener, it is ended and this gateway carries on as if nothing happened: its listeners never
 * stopped accepting, its instances are thawed, held-back scheduled runs run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import type { Server as NetServer, Socket } from 'node:net';
import type { BerthConfig } from '../config/schema.ts';
import { loadConfig, type LoadOptions } from '../config/load.ts';
import { BerthError, ConfigError, errorMessage, ErrorCodes, formatProblems } from '../lib/errors.ts';
import type { Logger } from '../lib/logger.ts';
import { VERSION } from '../lib/version.ts';
import { planReload } from '../gateway/reload-plan.ts';
import type { Generation, Supervisor } from '../supervisor/supervisor.ts';
import { isMessage, Mailbox, pipeKey, send, UPGRADE_ENV, type HandoverState, type ListenerKind } from './handover.ts';

/** How long the new gateway may take to adopt everything and answer `ready`. */
export const READY_TIMEOUT_MS = 60_000;
/** How long it may take to serve the sockets once it has them. */
const COMMIT_TIMEOUT_MS = 20_000;
/** How long a new gateway told to abort gets to exit before SIGKILL. */
const ABORT_WAIT_MS = 10_000;
/** How long the wait for deploys, boots and task runs lasts when the caller names none. */
export const DEFAULT_UPGRADE_WAIT_MS = 300_000;
const BUSY_POLL_MS = 200;

export interface UpgradeResult {
  from: { pid: number; version: string };
  to: { pid: number; version: string };
}

/** What the old gateway gives the upgrade. */
export interface PredecessorHost {
  state(): string;
  config(): BerthConfig;
  loadOptions: LoadOptions;
  /** What runs that cannot be handed over (deploys, boots, task runs), in words; empty when nothing. */
  busy(): string[];
  /** Each app's active generation: what the new gateway adopts. */
  activeGenerations(): Generation[];
  supervisor: Supervisor;
  /** Every listening socket: the front door's by address text, and the control API's. */
  listeningSockets(): { front: Map<string, NetServer>; control: NetServer | null; controlTcp: NetServer | null };
  /** Lets go of the state lock, for the new gateway to take; `retakeLock` when the upgrade failed. */
  releaseLock(): Promise<void>;
  retakeLock(): Promise<void>;
  /** Scheduled runs due since `since` run now (the upgrade failed, they were held back). */
  catchUp(since: Date): void;
  /** The new gateway serves now: this one stops accepting, leaves the instances running, drains and exits. */
  retire(): void;
  logger: Logger;
}

export class Predecessor {
  #host: PredecessorHost;
  #log: Logger;
  /** Set while an upgrade runs: why changes are held back. */
  #held: string | null = null;

  constructor(host: PredecessorHost) {
    this.#host = host;
    this.#log = host.logger;
  }

  /** Why no change may start now, or null: what the deployer, scheduler, config reload and API ask. */
  get held(): string | null {
    return this.#held;
  }

  /** Runs the upgrade; resolves once the new gateway serves. Throws (and changes nothing) when it cannot. */
  async run(opts: { waitMs?: number } = {}): Promise<UpgradeResult> {
    if (this.#held !== null) throw new BerthError(ErrorCodes.conflict, 'an upgrade is already under way');
    if (this.#host.state() !== 'running') throw new BerthError(ErrorCodes.unavailable, `the gateway is ${this.#host.state()}`);
    if (process.pid === 1) {
      throw new BerthError(ErrorCodes.conflict, 'berth runs as PID 1 (the init of a container): the container would end with it; upgrade by replacing the container instead');
    }
    await this.#checkConfig();
    const since = new Date();
    this.#held = 'the gateway is upgrading itself: try again in a moment';
    let committed = false;
    try {
      await this.#waitIdle(opts.waitMs ?? DEFAULT_UPGRADE_WAIT_MS);
      const result = await this.#handOver(since);
      committed = true;
      return result;
    } finally {
      if (!committed) {
        this.#held = null;
        this.#host.catchUp(since);
      }
    }
  }

  /** The file must say what runs: an upgrade applies no config change by the way. */
  async #checkConfig(): Promise<void> {
    let next: BerthConfig;
    try {
      next = await loadConfig(this.#host.loadOptions);
    } catch (err) {
      const why = err instanceof ConfigError ? formatProblems(err.problems) : errorMessage(err);
      throw new BerthError(ErrorCodes.conflict, `not upgrading: the config file no longer loads, and the new gateway would read it:\n${why}`);
    }
    const plan = planReload(this.#host.config(), next);
    const changed = [...plan.problems.map((p) => p.path), ...plan.added.map((a) => `added app ${a}`), ...plan.removed.map((a) => `removed app ${a}`), ...[...plan.reloaded, ...plan.updated].map((a) => `app ${a}`)];
    if (changed.length > 0) {
      throw new BerthError(ErrorCodes.conflict, `not upgrading: the config file differs from the one in effect (${changed.join(', ')}); apply it first (berth reload-config) or undo the change`);
    }
  }

  async #waitIdle(waitMs: number): Promise<void> {
    const deadline = Date.now() + waitMs;
    let said = '';
    for (;;) {
      const busy = this.#host.busy();
      if (busy.length === 0) return;
      const now = busy.join(', ');
      if (now !== said) this.#log.info({ waitingFor: busy }, 'upgrade waits for what runs to end');
      said = now;
      if (Date.now() >= deadline) throw new BerthError(ErrorCodes.timeout, `not upgrading: still running after ${Math.round(waitMs / 1000)}s: ${now}; try again once it ends`);
      await new Promise((r) => setTimeout(r, BUSY_POLL_MS));
    }
  }

  async #handOver(since: Date): Promise<UpgradeResult> {
    const host = this.#host;
    const child = spawnSuccessor();
    const mail = new Mailbox(child);
    let failure: Error | null = null;
    const ended = new Promise<never>((_, reject) => {
      child.once('error', (err) => reject(new BerthError(ErrorCodes.upgrade, `the new gateway could not start: ${err.message}`)));
      child.once('exit', (code, signal) => reject(new BerthError(ErrorCodes.upgrade, `the new gateway (pid ${child.pid}) exited (${signal ?? `code ${code}`}) before it took over; its log says why`)));
    });
    ended.catch(() => {});
    let lockReleased = false;
    this.#log.info({ pid: child.pid }, 'upgrade: new gateway started');
    try {
      const active = host.activeGenerations();
      const handed = host.supervisor.handOver(active);
      const state: HandoverState = {
        from: { pid: process.pid, version: VERSION },
        heldSince: since.toISOString(),
        generations: handed.map((g) => ({
          app: g.app,
          id: g.id,
          releaseId: g.releaseId,
          releaseDir: g.releaseDir,
          counts: countsOf(active.find((x) => x.id === g.id)!),
          instances: g.instances.map((i) => i.info),
        })),
        pipes: handed.reduce((n, g) => n + 2 * g.instances.length, 0),
      };
      await Promise.race([this.#send(child, handed, state), ended]);
      const ready = await Promise.race([
        mail.take('an answer from the new gateway', READY_TIMEOUT_MS, (m) => (isMessage(m, 'ready') || isMessage(m, 'failed') ? m : undefined)),
        ended,
      ]);
      if (ready.t === 'failed') throw new BerthError(ErrorCodes.upgrade, `the new gateway failed to start: ${ready.error}`);
      await Promise.race([probe(ready.probe, host.config().internalPrefix), ended]);
      this.#log.info({ pid: child.pid, version: ready.version }, 'upgrade: new gateway healthy; handing over the listeners');
      const listeners = await Promise.race([this.#sendListeners(child), ended]);
      await host.releaseLock();
      lockReleased = true;
      await Promise.race([send(child, { t: 'commit', listeners }), ended]);
      await Promise.race([mail.take('the new gateway serving', COMMIT_TIMEOUT_MS, (m) => (isMessage(m, 'committed') ? m : undefined)), ended]);
      child.disconnect();
      child.unref();
      this.#log.info({ pid: child.pid, version: ready.version }, 'upgrade: the new gateway serves; this one drains and exits');
      host.retire();
      return { from: { pid: process.pid, version: VERSION }, to: { pid: child.pid!, version: ready.version } };
    } catch (err) {
      failure = err instanceof BerthError ? err : new BerthError(ErrorCodes.upgrade, `upgrade failed: ${errorMessage(err)}`, { cause: err });
      this.#log.error({ err: failure.message }, 'upgrade failed: this gateway keeps serving');
      await abort(child, failure.message);
      host.supervisor.thaw();
      if (lockReleased) await host.retakeLock();
      throw failure;
    }
  }

  /** The `state` message, then each running instance's pipes. */
  async #send(child: ChildProcess, handed: ReturnType<Supervisor['handOver']>, state: HandoverState): Promise<void> {
    await send(child, { t: 'state', state });
    for (const g of handed) {
      for (const inst of g.instances) {
        const key = pipeKey(g.id, inst.info.process, inst.info.index);
        await send(child, { t: 'pipe', key, stream: 'stdout' }, inst.stdout as Socket);
        await send(child, { t: 'pipe', key, stream: 'stderr' }, inst.stderr as Socket);
      }
    }
  }

  /** Every listening socket; returns how many were sent. */
  async #sendListeners(child: ChildProcess): Promise<number> {
    const { front, control, controlTcp } = this.#host.listeningSockets();
    const all: [ListenerKind, string, NetServer | null][] = [...[...front].map(([key, s]): [ListenerKind, string, NetServer] => ['front', key, s]), ['control', 'socket', control], ['control-tcp', 'tcp', controlTcp]];
    let n = 0;
    for (const [kind, key, server] of all) {
      if (server === null || !server.listening) continue;
      await send(child, { t: 'listener', kind, key }, server);
      n++;
    }
    return n;
  }
}

/** The new gateway: the same command line, from the code installed now, told whom it takes over from. */
function spawnSuccessor(): ChildProcess {
  const entry = process.argv[1];
  return spawn(process.execPath, [...process.execArgv, entry, ...process.argv.slice(2)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, [UPGRADE_ENV]: String(process.pid) },
    // A session of its own: a terminal's Ctrl-C for the old gateway is not for it.
    detached: true,
  });
}

/** The instance count of each process type of a generation. */
function countsOf(gen: Generation): Record<string, number> {
  return Object.fromEntries(Object.values(gen.processes).map((p) => [p.name, p.instances]));
}

/** The new gateway's health lane, through its private probe listener: 200 or the upgrade fails. */
function probe(address: { host: string; port: number }, prefix: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request({ host: address.host, port: address.port, path: `${prefix}/health`, timeout: 5_000, headers: { host: 'localhost' } }, (res) => {
      res.resume();
      if (res.statusCode === 200) resolve();
      else reject(new BerthError(ErrorCodes.upgrade, `the new gateway's health check answered ${res.statusCode}`));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => reject(new BerthError(ErrorCodes.upgrade, `the new gateway's health check failed: ${err.message}`)));
    req.end();
  });
}

/** Tells the new gateway to give back what it adopted and exit; SIGKILL when it does not in time. */
async function abort(child: ChildProcess, reason: string): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await send(child, { t: 'abort', reason }).catch(() => {});
  const timer = setTimeout(() => child.kill('SIGKILL'), ABORT_WAIT_MS);
  await gone;
  clearTimeout(timer);
}
