/**
 * Deploy locks in the state store (FleetStore.acquireLock), so one app has one deploy, rollback or
 * reload in the whole fleet. A lock whose node stopped, or has been silent longer than `node_timeout`,
 * is free. A lock the store would not let go of (it was unreachable) is let go of at the next heartbeat.
 */
import type { Logger } from '../lib/logger.ts';
import { BerthError, ErrorCodes, errorMessage } from '../lib/errors.ts';
import type { DeployLocks } from '../deploy/deployer.ts';
import type { FleetStore } from '../store/store.ts';

export class FleetDeployLocks implements DeployLocks {
  #store: FleetStore;
  #timeoutMs: () => number;
  #log: Logger;
  /** Locks to let go of once the store answers again. */
  #pending = new Set<string>();

  constructor(store: FleetStore, nodeTimeoutMs: () => number, logger: Logger) {
    this.#store = store;
    this.#timeoutMs = nodeTimeoutMs;
    this.#log = logger;
  }

  async acquire(app: string): Promise<void> {
    const name = lockName(app);
    let holder: string | null;
    try {
      this.#pending.delete(name);
      holder = await this.#store.acquireLock(name, new Date(Date.now() - this.#timeoutMs()).toISOString());
    } catch (err) {
      throw new BerthError(ErrorCodes.unavailable, `cannot take the fleet's deploy lock of ${app}: the state store is unreachable (${errorMessage(err)}); nothing was changed`, { cause: err });
    }
    if (holder !== null) throw new BerthError(ErrorCodes.conflict, `a deploy of ${app} is running on node ${holder}`, { details: { node: holder } });
  }

  release(app: string): void {
    const name = lockName(app);
    this.#store.releaseLock(name).catch((err) => {
      this.#pending.add(name);
      this.#log.warn({ app, err: errorMessage(err) }, 'cannot let go of the deploy lock yet; retrying with the heartbeat');
    });
  }

  /** Lets go of the locks that could not be let go of before; called with each heartbeat. */
  async retry(): Promise<void> {
    for (const name of [...this.#pending]) {
      await this.#store.releaseLock(name);
      this.#pending.delete(name);
    }
  }
}

function lockName(app: string): string {
  return `deploy:${app}`;
}
